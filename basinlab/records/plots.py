"""PNG plots of runs: loss, top-1 error and lr against epoch; overlays of several runs."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from basinlab.utils.figures import new_figure, save_png

PANELS = (("loss", "loss", ("train_loss", "val_loss")),
          ("error", "top-1 error (%)", ("train_acc1", "val_acc1")),
          ("lr", "learning rate", ("lr",)))


def _log_scale_if_positive(ax, panel: str) -> None:
    """Loss and lr span decades (and one diverging run would flatten the others): log scale when all > 0."""
    values = [y for line in ax.get_lines() for y in line.get_ydata()]
    if panel in ("loss", "lr") and values and min(values) > 0:
        ax.set_yscale("log")


def _series(frame: pd.DataFrame, column: str):
    values = frame[column]
    return 100.0 - values if column.endswith("acc1") else values


def plot_run(frame: pd.DataFrame, folder: str | Path) -> list[Path]:
    """Write loss.png, error.png and lr.png for one run's history."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, ylabel, columns in PANELS:
        fig, ax = new_figure(figsize=(6, 4))
        for column in columns:
            if column in frame and frame[column].notna().any():
                ax.plot(frame["epoch"], _series(frame, column), marker=".", label=column.split("_")[0])
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        _log_scale_if_positive(ax, name)
        ax.grid(alpha=0.3)
        if len(columns) > 1:
            ax.legend()
        path = folder / f"{name}.png"
        save_png(fig, path)
        written.append(path)
    return written


def plot_runs(runs: dict[str, pd.DataFrame], path: str | Path) -> Path:
    """Overlay the curves of several runs (train dashed, validation solid) in one PNG."""
    fig, axes = new_figure(1, 3, figsize=(16, 4.5))
    for label, frame in runs.items():
        for ax, (_, ylabel, columns) in zip(axes, PANELS):
            for column in columns:
                if column not in frame or not frame[column].notna().any():
                    continue
                style = "--" if column.startswith("train") else "-"
                line, = ax.plot(frame["epoch"], _series(frame, column), style,
                                label=f"{label} ({column.split('_')[0]})" if len(columns) > 1 else label)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
    for ax, (name, _, _) in zip(axes, PANELS):
        _log_scale_if_positive(ax, name)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    return save_png(fig, path)
