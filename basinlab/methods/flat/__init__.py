"""Flat minima (SmoothOut and its successors; shared/specs/04-smoothout-sharpness.md).

    method.py      configure(cfg, world_size, workflow): --smoothout / --sam / --asam -> a step strategy
    smoothout.py   SmoothOut / AdaSmoothOut over ghost batches (GhostBatchStep)
    sam.py         SAM and ASAM (SharpnessAwareStep)
    noise.py       the weight-noise models, shared with `basinlab evaluate --noise`
    chunks.py      the --lr-scale-batch rule for large batches
    presets.py     the seed's experiments as presets
"""
