"""The sharpness monitor: `--log-sharpness-every k` (lambda_max, lr x lambda_max, the trace, the server's
stability threshold in results.csv during training).

    method.py      configure(cfg, world_size, workflow) and the SharpnessMonitor callback

The measurements themselves are basinlab.metrics (Hessian eigenvalues, trace) on the run's own batches.
"""
