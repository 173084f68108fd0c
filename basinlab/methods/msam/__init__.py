"""Momentum-SAM (Becker, Altrock & Risse 2024): `--msam RHO`.

    method.py      configure(cfg, world_size, workflow): --msam -> MomentumSAMStep
    step.py        MomentumSAMStep: the pass at w - rho v/||v||, the authors' weight decay there, its columns
"""
