"""Momentum-SAM: see method.py."""
