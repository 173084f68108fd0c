"""`basinlab landscape` on checkpoints: interpolation between two models, random-direction plots, the PCA
directions of a run's trajectory.

Each writes ``<prefix>.csv`` (resumable, see landscape.GridTable), ``<prefix>.json`` (the settings the
points were computed with) and ``<prefix>.png``.
"""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from basinlab.analysis.data import SPLITS, measurement_data
from basinlab.analysis.landscape import (
    GridEvaluator,
    GridTable,
    check_compatible,
    displaced_parameters,
    filter_normalized_direction,
    interpolate_state,
    negative_variance_alphas,
    run_grid,
)
from basinlab.analysis.landscape_plots import plot_contours, plot_curves
from basinlab.analysis.measure import model_and_criterion
from basinlab.analysis.trajectory import default_range, on_device, trajectory_directions
from basinlab.engine.checkpoint import resolve_checkpoint
from basinlab.engine.setup import pick_device
from basinlab.errors import ConfigError


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def check_splits(splits) -> tuple[str, ...]:
    splits = tuple(dict.fromkeys(splits))
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ConfigError(f"--split must be among {', '.join(SPLITS)}; got {', '.join(bad) or 'nothing'}")
    return splits


def split_data(cfg, splits, *, batch_size, limit, datasets_dir, device) -> dict:
    """Every example of each split (or ``limit`` of them, the run's --limit-mode subset), held in memory: read
    once, evaluated often."""
    return {split: measurement_data(cfg, split, batch_size=batch_size, limit=limit, datasets_dir=datasets_dir,
                                    device=device).in_memory() for split in splits}


def recalibration_data(cfg, bn_batches, *, batch_size, limit, datasets_dir, device):
    """The first ``bn_batches`` training batches (training order of epoch 0, no augmentation)."""
    return measurement_data(cfg, "train", batch_size=batch_size, batches=bn_batches, limit=limit,
                            datasets_dir=datasets_dir, device=device, clamp=True).in_memory()


def announce_grid(points: int, splits, quiet: bool) -> None:
    """Before the first point: how many there are (each a pass over the data)."""
    if not quiet:
        print(f"landscape: {points:,} points, each a pass over the {' and '.join(splits)} data; the first point's "
              f"time gives an estimate of the rest", file=sys.stderr, flush=True)


def progress_printer(quiet: bool):
    if quiet:
        return None

    shown = {"step": -1, "started": time.perf_counter(), "estimated": False}

    def show(done: int, total: int) -> None:
        if not shown["estimated"] and done < total:  # the first point's time: an estimate of the rest
            shown["estimated"] = True
            each = (time.perf_counter() - shown["started"]) / max(done, 1)
            print(f"first {done} point{'s' if done != 1 else ''}: {each:.2f} s each, about "
                  f"{_duration(each * (total - done))} for the other {total - done:,}", file=sys.stderr, flush=True)
        step = 100 * done // total  # at most ~100 updates, also when the output is a log file
        if step != shown["step"]:
            shown["step"] = step
            print(f"\r{done}/{total} points", end="\n" if done == total else "", file=sys.stderr, flush=True)
    return show


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _checkpoint_id(path, which: str) -> dict:
    resolved = resolve_checkpoint(path, f"{which}.pt")
    return {"file": str(Path(resolved).resolve()), "sha256": file_digest(Path(resolved))}


def _common_settings(splits, batch_size, limit, bn_recalibrate, bn_batches, device) -> dict:
    return {"splits": list(splits), "batch_size": batch_size, "limit": limit, "device": device.type,
            "bn_recalibrate": bool(bn_recalibrate), "bn_batches": bn_batches if bn_recalibrate else None}


def interpolate_checkpoints(checkpoint_a, checkpoint_b, alphas, *, splits=SPLITS, limit=None, batch_size=256,
                            bn_recalibrate=False, bn_batches=10, which="best", device="auto", datasets_dir=None,
                            output="interpolation", overwrite=False, quiet=False):
    """Loss and top-1 along ``theta(alpha) = (1 - alpha) theta_A + alpha theta_B`` (BN statistics too).

    With ``bn_recalibrate`` the BatchNorm statistics are re-estimated on ``bn_batches`` training
    batches at every alpha. Returns ``(DataFrame, csv path, png path)``.
    """
    splits, dev = check_splits(splits), pick_device(device)
    model, cfg, criterion = model_and_criterion(checkpoint_a, dev, which)
    model_b, _, _ = model_and_criterion(checkpoint_b, dev, which)
    state_a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state_b = {k: v.detach().clone() for k, v in model_b.state_dict().items()}
    check_compatible(state_a, state_b)
    del model_b
    data = split_data(cfg, splits, batch_size=batch_size, limit=limit, datasets_dir=datasets_dir, device=dev)
    recal = (recalibration_data(cfg, bn_batches, batch_size=batch_size, limit=limit, datasets_dir=datasets_dir,
                                device=dev) if bn_recalibrate else None)
    settings = {"view": "interpolate", "a": _checkpoint_id(checkpoint_a, which),
                "b": _checkpoint_id(checkpoint_b, which),
                **_common_settings(splits, batch_size, limit, bn_recalibrate, bn_batches, dev)}
    columns = ["alpha"] + [f"{s}_{m}" for s in splits for m in ("loss", "acc1")]
    output = Path(output)
    table = GridTable(output.with_suffix(".csv"), columns, ["alpha"], settings, overwrite=overwrite)
    keys = [(a,) for a in alphas]
    announce_grid(len(keys), splits, quiet)
    with GridEvaluator(model, criterion, data, recalibrate=recal) as evaluator:
        run_grid(table, keys, lambda key: interpolate_state(state_a, state_b, key[0]), evaluator,
                 progress_printer(quiet))
    frame = table.finish(keys)
    undefined = [] if bn_recalibrate else negative_variance_alphas(state_a, state_b, alphas)
    if undefined:
        print(f"note: interpolated BatchNorm running variances are negative at alpha "
              f"{', '.join(f'{a:g}' for a in undefined)}: those points are NaN; --bn-recalibrate re-estimates "
              f"the statistics at each alpha", file=sys.stderr)
    title = "interpolation A (0) to B (1)" + (", BN recalibrated" if bn_recalibrate else "")
    png = plot_curves(frame, output.with_suffix(".png"), splits=splits, marks=(0.0, 1.0), title=title)
    return frame, table.path, png


def random_directions(checkpoint, alphas, betas=None, *, seed=0, include_bias_bn=False, splits=SPLITS, limit=None,
                      batch_size=256, points_per_pass=1, bn_recalibrate=False, bn_batches=10, which="best",
                      device="auto", datasets_dir=None, output="directions", overwrite=False, quiet=False):
    """Loss and top-1 at ``theta + alpha d1 (+ beta d2)`` with filter-normalised Gaussian directions.

    1-D without ``betas``, else the 2-D grid (alpha outer, beta inner). Resumable from its CSV.
    Returns ``(DataFrame, csv path, png path)``.
    """
    splits, dev = check_splits(splits), pick_device(device)
    if betas is not None and (len(set(alphas)) < 2 or len(set(betas)) < 2):
        raise ConfigError("a 2-D grid needs at least two values of --alpha and of --beta (for the contours)")
    model, cfg, criterion = model_and_criterion(checkpoint, dev, which)
    generator = torch.Generator().manual_seed(int(seed))
    count = 1 if betas is None else 2
    directions = [filter_normalized_direction(model, generator, include_bias_bn=include_bias_bn)
                  for _ in range(count)]
    origin = {name: p.detach().clone() for name, p in model.named_parameters()}
    data = split_data(cfg, splits, batch_size=batch_size, limit=limit, datasets_dir=datasets_dir, device=dev)
    recal = (recalibration_data(cfg, bn_batches, batch_size=batch_size, limit=limit, datasets_dir=datasets_dir,
                                device=dev) if bn_recalibrate else None)
    settings = {"view": f"directions-{count}d", "checkpoint": _checkpoint_id(checkpoint, which), "seed": int(seed),
                "include_bias_bn": bool(include_bias_bn), "points_per_pass": points_per_pass,
                **_common_settings(splits, batch_size, limit, bn_recalibrate, bn_batches, dev)}
    key_names = ["alpha"] if betas is None else ["alpha", "beta"]
    columns = key_names + [f"{s}_{m}" for s in splits for m in ("loss", "acc1")]
    output = Path(output)
    table = GridTable(output.with_suffix(".csv"), columns, key_names, settings, overwrite=overwrite)
    keys = [(a,) for a in alphas] if betas is None else [(a, b) for a in alphas for b in betas]
    announce_grid(len(keys), splits, quiet)
    with GridEvaluator(model, criterion, data, points_per_pass=points_per_pass, recalibrate=recal) as evaluator:
        run_grid(table, keys, lambda key: displaced_parameters(origin, directions, key), evaluator,
                 progress_printer(quiet))
    frame = table.finish(keys)
    title = f"filter-normalised direction{'s' if count == 2 else ''}, seed {seed}"
    if betas is None:
        png = plot_curves(frame, output.with_suffix(".png"), splits=splits, marks=(0.0,), title=title)
    else:
        png = plot_contours(frame, output.with_suffix(".png"), splits=splits, title=title)
    return frame, table.path, png


def trajectory_landscape(run, alphas=None, betas=None, *, exclude_bias_bn=False, splits=SPLITS, limit=None,
                         batch_size=256, points_per_pass=1, bn_recalibrate=False, bn_batches=10, which="last",
                         device="auto", datasets_dir=None, output="trajectory", overwrite=False, quiet=False):
    """Loss and top-1 on the plane of the first two principal components of the run's epoch checkpoints
    (analysis.trajectory), centred at the ``which`` checkpoint; the checkpoints' projections in
    ``<prefix>_trajectory.csv`` (written last) and on the contour plot. Without ``alphas``/``betas`` the grid covers the
    projections (21 x 21). Returns ``(DataFrame, trajectory DataFrame, csv path, png path)``."""
    splits, dev = check_splits(splits), pick_device(device)
    model, cfg, criterion = model_and_criterion(run, dev, which)
    path = trajectory_directions(run, model, exclude_bias_bn=exclude_bias_bn)
    ratios = path.explained_variance_ratio
    points = pd.DataFrame({"epoch": path.epochs, "checkpoint": [p.name for p in path.files],
                           "alpha": path.coordinates[:, 0], "beta": path.coordinates[:, 1],
                           "explained_variance_ratio_1": ratios[0], "explained_variance_ratio_2": ratios[1]})
    alphas = alphas if alphas is not None else default_range(path.coordinates[:, 0])
    betas = betas if betas is not None else default_range(path.coordinates[:, 1])
    output = Path(output)
    if not quiet:
        print(f"PCA of {len(path.epochs)} epoch checkpoints: explained variance {100 * ratios[0]:.1f} % and "
              f"{100 * ratios[1]:.1f} %", file=sys.stderr)
    directions = [on_device(d, model) for d in path.directions]
    origin = {name: p.detach().clone() for name, p in model.named_parameters()}
    data = split_data(cfg, splits, batch_size=batch_size, limit=limit, datasets_dir=datasets_dir, device=dev)
    recal = (recalibration_data(cfg, bn_batches, batch_size=batch_size, limit=limit, datasets_dir=datasets_dir,
                                device=dev) if bn_recalibrate else None)
    settings = {"view": "trajectory", "checkpoint": _checkpoint_id(run, which),
                "trajectory": {p.name: file_digest(p) for p in path.files},
                "exclude_bias_bn": bool(exclude_bias_bn), "points_per_pass": points_per_pass,
                **_common_settings(splits, batch_size, limit, bn_recalibrate, bn_batches, dev)}
    columns = ["alpha", "beta"] + [f"{s}_{m}" for s in splits for m in ("loss", "acc1")]
    table = GridTable(output.with_suffix(".csv"), columns, ["alpha", "beta"], settings, overwrite=overwrite)
    keys = [(a, b) for a in alphas for b in betas]
    announce_grid(len(keys), splits, quiet)
    with GridEvaluator(model, criterion, data, points_per_pass=points_per_pass, recalibrate=recal) as evaluator:
        run_grid(table, keys, lambda key: displaced_parameters(origin, directions, key), evaluator,
                 progress_printer(quiet))
    frame = table.finish(keys)
    points.to_csv(output.with_name(f"{output.name}_trajectory.csv"), index=False)  # once the grid is complete
    png = plot_contours(frame, output.with_suffix(".png"), splits=splits, trajectory=points,
                        title=f"PCA of {len(path.epochs)} epochs",
                        axis_labels=(f"PC1 ({100 * ratios[0]:.1f} %)", f"PC2 ({100 * ratios[1]:.1f} %)"))
    return frame, points, table.path, png
