"""SAF/MESA: see method.py."""
