"""GSAM: see method.py."""
