"""Training methods: each is a step strategy or a callback, never a copy of the training loop.

    methods/registry.py   the one list of methods and build_method(cfg, world_size)
    methods/asgd/         asynchronous SGD: simulated parameter server, delay stability theory
    methods/flat/         flat minima: SmoothOut / AdaSmoothOut, SAM / ASAM, weight noise

The sharpness monitor (basinlab.analysis.monitor) and low-rank logging (basinlab.tuning.method) are
callbacks listed in the registry too. Importing this package loads nothing else.
"""
