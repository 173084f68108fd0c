"""Loss-landscape figures: curves along one direction (interpolation, 1-D directions) and 2-D contours."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from basinlab.utils.figures import new_figure, save_png


def plot_curves(frame, path, *, x: str = "alpha", splits=("train", "val"), marks=(), title: str = "") -> Path:
    """Loss (top) and top-1 accuracy (bottom) against ``x`` for each split; vertical lines at ``marks``."""
    fig, (top, bottom) = new_figure(2, 1, figsize=(6, 6), sharex=True)
    for split in splits:
        style = "-" if split == "train" else "--"
        top.plot(frame[x], frame[f"{split}_loss"], style, marker=".", label=f"{split} loss")
        bottom.plot(frame[x], frame[f"{split}_acc1"], style, marker=".", label=f"{split} top-1")
    for mark in marks:
        for ax in (top, bottom):
            ax.axvline(mark, color="grey", lw=0.8, ls=":")
    if any(v > 0 for line in top.get_lines() for v in line.get_ydata() if math.isfinite(v)):
        top.set_yscale("log")  # the loss spans decades; a curve of nothing but NaN/0 stays linear
    top.set_ylabel("cross-entropy loss")
    bottom.set_ylabel("top-1 accuracy (%)")
    bottom.set_xlabel(x)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        top.set_title(title)
    return save_png(fig, path, dpi=80)


def plot_contours(frame, path, *, splits=("train", "val"), title: str = "", trajectory=None,
                  axis_labels=("alpha", "beta")) -> Path:
    """One panel per split: contours of the loss over (alpha, beta), levels spaced geometrically; with
    ``trajectory`` (columns epoch, alpha, beta) the path of the checkpoints drawn on top, epochs labelled."""
    from matplotlib.colors import BoundaryNorm
    alphas, betas = np.unique(frame["alpha"]), np.unique(frame["beta"])
    fig, axes = new_figure(1, len(splits), figsize=(5.4 * len(splits), 4.4), squeeze=False,
                           layout="constrained")
    for ax, split in zip(axes[0], splits):
        grid = frame.pivot(index="beta", columns="alpha", values=f"{split}_loss").loc[betas, alphas].to_numpy()
        low, high = float(np.nanmin(grid)), float(np.nanmax(grid))
        # geometric levels resolve the basin floor and the walls alike (the loss spans decades)
        levels = np.geomspace(max(low, 1e-8), max(high, low * 1.0001 + 1e-8), 25)
        norm = BoundaryNorm(levels, ncolors=256)
        filled = ax.contourf(alphas, betas, grid, levels=levels, cmap="viridis", norm=norm)
        ax.contour(alphas, betas, grid, levels=levels[::3], colors="white", linewidths=0.5)
        if trajectory is not None:
            _draw_trajectory(ax, trajectory)
        ax.plot([0], [0], "r+", ms=10)
        bar = fig.colorbar(filled, ax=ax, ticks=levels[::4], format="%.3g")
        bar.set_label(f"{split} loss")
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
        ax.set_title(f"{split} loss" + (f" - {title}" if title else ""), fontsize=10)
    return save_png(fig, path, dpi=80)


def _draw_trajectory(ax, trajectory, labels: int = 6) -> None:
    """The checkpoints' path, in epoch order; at most ``labels`` epochs named (the first and last always)."""
    ax.plot(trajectory["alpha"], trajectory["beta"], "-o", color="red", ms=3, lw=1)
    count = len(trajectory)
    for i in sorted(set(np.linspace(0, count - 1, min(labels, count)).round().astype(int))):
        row = trajectory.iloc[i]
        ax.annotate(str(int(row["epoch"])), (row["alpha"], row["beta"]), fontsize=7, color="red",
                    textcoords="offset points", xytext=(3, 3))
