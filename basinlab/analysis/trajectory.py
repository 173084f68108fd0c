"""PCA-of-trajectory directions (Li et al. 2018, section 7; loss-landscape's ``plot_trajectory.py``).

The two directions are the first two principal components of the matrix whose rows are ``w_k - w_c``: the
weights after each epoch ``k`` (the run's ``epoch_<k>.pt``, written by ``basinlab train --save-all``) minus
the centre ``w_c`` (the checkpoint the landscape is drawn around, by default the run's final weights). As in
loss-landscape's default (``--dir_type weights``, no ``--ignore``), every parameter enters, biases and
normalisation scales and shifts included, and the BatchNorm running statistics do not; ``exclude_bias_bn``
zeroes the one-dimensional parameters (their ``--ignore biasbn``). The PCA centres the rows (as
scikit-learn's ``PCA``, which they use) and takes the SVD in float64; each direction is a unit vector whose
largest-magnitude entry is positive (a deterministic sign). Each checkpoint is then projected onto the two
directions (their ``project_2D(..., 'cos')``): ``(<w_k - w_c, d_1>, <w_k - w_c, d_2>)``, so the centre sits
at the origin.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from basinlab.engine.inspect import model_from_checkpoint
from basinlab.errors import ConfigError

MIN_CHECKPOINTS = 3  # two principal components of centred rows need at least three of them
EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")
GRID_POINTS = 21     # per axis of the default grid: 21 x 21 = the largest grid run without --yes


@dataclass
class Trajectory:
    """The run's epoch checkpoints, the two unit directions (parameter name -> tensor), the fraction of the
    centred trajectory's variance each explains, and each checkpoint's coordinates along them."""

    epochs: list[int]
    files: list[Path]
    directions: list[dict]
    explained_variance_ratio: list[float]
    coordinates: np.ndarray  # (checkpoints, 2)


def epoch_checkpoints(run) -> list[tuple[int, Path]]:
    """``[(k, run/epoch_<k>.pt), ...]`` by epoch; refused in one line when fewer than MIN_CHECKPOINTS."""
    run = Path(run)
    if not run.is_dir():
        raise ConfigError(f"the trajectory view needs a run folder with its epoch_<k>.pt checkpoints, got the file "
                          f"{run}; pass the run folder (trained with --save-all)")
    found = sorted((int(m.group(1)), path) for path in run.iterdir() if (m := EPOCH_FILE.match(path.name)))
    if len(found) < MIN_CHECKPOINTS:
        raise ConfigError(f"{run} holds {len(found)} epoch checkpoint{'s' if len(found) != 1 else ''} "
                          f"(epoch_<k>.pt); the PCA of a trajectory needs at least {MIN_CHECKPOINTS}: train with "
                          f"--save-all (keeps every epoch's) for {MIN_CHECKPOINTS} epochs or more (or resume the "
                          f"run with --save-all and more --epochs)")
    return found


def _parameters(model, exclude_bias_bn: bool) -> dict:
    """The parameters that enter the PCA, in float64 on the CPU (one-dimensional ones zeroed when excluded)."""
    out = {}
    for name, param in model.named_parameters():
        value = param.detach().to("cpu", torch.float64)
        out[name] = torch.zeros_like(value) if exclude_bias_bn and value.dim() <= 1 else value
    return out


def _flat(params: dict) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in params.values()])


def _unit_directions(rows: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """The first two principal axes of the rows (centred), signs fixed, and their explained variance ratios."""
    centred = rows - rows.mean(dim=0, keepdim=True)
    _, singular, vt = torch.linalg.svd(centred, full_matrices=False)
    variance = singular ** 2
    if len(variance) < 2 or not float(variance[1]) > 1e-24 * float(variance.sum()):
        raise ConfigError("the epoch checkpoints lie on a line or a point (the weights did not move in two "
                          "directions); a PCA plane needs a trajectory that turns")
    axes = vt[:2].clone()
    for axis in axes:
        if axis[axis.abs().argmax()] < 0:
            axis.neg_()
    return axes, [float(v) for v in variance[:2] / variance.sum()]


def trajectory_directions(run, centre_model, *, exclude_bias_bn: bool = False) -> Trajectory:
    """PCA directions of the run's epoch checkpoints around ``centre_model`` (see the module docstring)."""
    found = epoch_checkpoints(run)
    centre = _parameters(centre_model, exclude_bias_bn)
    rows = []
    for _, path in found:
        model, _, _ = model_from_checkpoint(path, "cpu", which=path.name)
        params = _parameters(model, exclude_bias_bn)
        if [(k, v.shape) for k, v in params.items()] != [(k, v.shape) for k, v in centre.items()]:
            raise ConfigError(f"{path} holds another model than the centre checkpoint (its parameters differ); "
                              f"the trajectory must be one run's")
        rows.append(_flat(params) - _flat(centre))
    matrix = torch.stack(rows)
    axes, ratios = _unit_directions(matrix)
    coordinates = (matrix @ axes.T).numpy()
    directions = []
    for axis in axes:
        pieces, start = {}, 0
        for name, value in centre.items():
            pieces[name] = axis[start:start + value.numel()].view_as(value)
            start += value.numel()
        directions.append(pieces)
    return Trajectory([e for e, _ in found], [p for _, p in found], directions, ratios, coordinates)


def on_device(direction: dict, model) -> dict:
    """A direction in the model's parameter dtype and device (for displaced_parameters)."""
    return {name: direction[name].to(param.device, param.dtype) for name, param in model.named_parameters()}


def default_range(values, points: int = GRID_POINTS) -> list[float]:
    """``points`` evenly spaced values covering the coordinates and 0 with a 20 % margin, rounded to 4 digits of
    the step (the same grid on every rerun: a resumable CSV's keys)."""
    low, high = min(0.0, float(np.min(values))), max(0.0, float(np.max(values)))
    span = high - low if high > low else 1.0
    low, high = low - 0.2 * span, high + 0.2 * span
    step = (high - low) / (points - 1)
    digits = max(0, 3 - int(np.floor(np.log10(step))))
    return [round(low + i * step, digits) + 0.0 for i in range(points)]
