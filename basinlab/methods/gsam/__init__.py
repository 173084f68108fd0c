"""GSAM, surrogate gap guided sharpness-aware minimisation (Zhuang et al., ICLR 2022): `--gsam RHO`.

    method.py      configure(cfg, world_size, workflow): --gsam, --gsam-alpha, --gsam-rho-min -> GSAMStep
    step.py        GSAMStep: the two passes, the surrogate-gap correction, its state and results.csv columns
    rho.py         the radius scheduled with the lr (RhoSchedule) and the run's lr bounds
"""
