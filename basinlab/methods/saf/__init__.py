"""SAF and MESA (--saf, --mesa; Du et al. 2022): the steps in trajectory.py, SAF's store in store.py, configure in
method.py."""
