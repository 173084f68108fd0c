"""Low-rank metrics per epoch: `--log-lowrank` (lowrank.csv and its means in results.csv) and AdaS's epoch update
on the same metrics.

    method.py      configure(cfg, world_size, workflow) and the LowRankEpochEnd callback

The metrics are basinlab.metrics.lowrank (EVBMF); autoHyper's response Z is their zero-gain fraction.
"""
