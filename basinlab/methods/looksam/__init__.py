"""LookSAM (--looksam, Liu et al. 2022): the step in looksam.py, configure in method.py."""
