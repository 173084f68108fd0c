"""Measuring the minima a run found: sharpness of checkpoints, loss landscapes, sharpness during training.

* ``basinlab sharpness``: lambda_max / top-k, Hessian trace, spectral density, Keskar epsilon-sharpness
  of a checkpoint (measure.py, on top of basinlab.metrics.sharpness).
* ``basinlab landscape interpolate|directions``: 1-D interpolation between two checkpoints and 1-D/2-D
  filter-normalised random-direction plots (landscape.py).

The sharpness monitor during training (``--log-sharpness-every k``) is a method: basinlab.methods.sharpness_monitor.
"""
