"""Training methods: each is a step strategy or a callback, never a copy of the training loop.

    methods/registry.py           the one list of methods and build_method(cfg, world_size, workflow)
    methods/asgd/                 asynchronous SGD: simulated parameter server, delay stability theory
    methods/flat/                 flat minima: SmoothOut / AdaSmoothOut, SAM / ASAM, weight noise
    methods/sharpness_monitor/    --log-sharpness-every: lambda_max during training (a callback)
    methods/lowrank/              --log-lowrank and AdaS's epoch update (a callback)

Importing this package loads nothing else.
"""
