"""Asynchronous SGD (At Stability's Edge; shared/specs/02-async-sgd.md).

    method.py      configure(cfg, world_size, workflow): --server ssgd|asgd|msgd -> ParameterServerStep
    server.py      the simulated parameter server and its step strategy (snapshots.py: the snapshot ring)
    momentum.py    msgd's shifted momentum: one buffer per worker (simulated and real servers)
    real/          --real: the server in the training process, N worker processes, delays.csv
    schedule.py    which worker computes next: round_robin | random | normal
    stability.py   linear stability thresholds of delayed (momentum) SGD; the delay-aware lr rule
    presets.py     the seed's experiments as presets

The `basinlab stability` command is basinlab/cli/asgd.py.
"""
