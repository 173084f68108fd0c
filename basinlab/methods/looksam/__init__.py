"""LookSAM: see method.py."""
