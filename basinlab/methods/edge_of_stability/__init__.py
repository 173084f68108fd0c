"""The edge of stability, live: `--log-sharpness-every-steps N` (lambda_max, batch sharpness, Adam's
preconditioned sharpness, each against its threshold, in sharpness-steps.csv during training).

    method.py       configure(cfg, world_size, workflow) and the EdgeOfStability callback
    thresholds.py   each optimizer's edge (2/lr, momentum, Nesterov, Adam's 38/lr, the delayed one)
    plot.py         sharpness-steps.png
"""
