"""PNG plots of runs, made to be shown in a talk: loss, top-1 error and lr against epoch.

Each figure is titled with the run and its model; epochs are integer ticks; the lr is drawn as the
steps it really takes (each epoch's lr held over that epoch, not a ramp between epochs); overlays of
several runs give each run one colour, train dashed and validation solid. A run trained with -p also
gets loss_steps.png, the loss of every -p step.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from basinlab.utils.figures import new_figure, save_png

if TYPE_CHECKING:  # pandas takes ~0.2 s to import: loaded only where a table is read or built
    import pandas as pd

PANELS = (("loss", "loss", ("train_loss", "val_loss")),
          ("error", "top-1 error (%)", ("train_acc1", "val_acc1")),
          ("lr", "learning rate", ("lr",)))
SPLIT_STYLE = {"train": "--", "val": "-"}


def _log_scale_if_positive(ax, panel: str) -> None:
    """Loss and lr span decades (and one diverging run would flatten the others): log scale when all > 0."""
    values = [y for line in ax.get_lines() for y in line.get_ydata()]
    if panel in ("loss", "lr") and values and min(values) > 0:
        ax.set_yscale("log")


def _integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def _draw(ax, frame: pd.DataFrame, column: str, **style) -> None:
    """One column against epoch; the lr as a staircase: epoch e's lr held over (e-1, e]."""
    if column == "lr":
        epochs = [frame["epoch"].iloc[0] - 1] + frame["epoch"].tolist()
        ax.plot(epochs, [frame["lr"].iloc[0]] + frame["lr"].tolist(), drawstyle="steps-pre", **style)
        return
    values = 100.0 - frame[column] if column.endswith("acc1") else frame[column]
    ax.plot(frame["epoch"], values, marker="." if len(frame) < 40 else None, **style)


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame and frame[column].notna().any()


def plot_run(frame: pd.DataFrame, folder: str | Path, title: str = "",
             steps: pd.DataFrame | None = None) -> list[Path]:
    """Write loss.png, error.png and lr.png (and loss_steps.png given `steps`) for one run's history."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [save_png(panel_figure(frame, panel, title), folder / f"{panel[0]}.png") for panel in PANELS]
    if steps is not None and len(steps):
        written.append(plot_step_loss(frame, steps, folder / "loss_steps.png", title))
    return written


def panel_figure(frame: pd.DataFrame, panel: tuple, title: str = ""):
    """One panel of PANELS for one run: train dashed, validation solid."""
    name, ylabel, columns = panel
    fig, ax = new_figure(figsize=(6, 4))
    for column in columns:
        if _has(frame, column):
            split = column.split("_")[0]
            _draw(ax, frame, column, linestyle=SPLIT_STYLE.get(split, "-"), label=split)
    ax.set_ylabel(ylabel)
    _integer_epochs(ax)
    _log_scale_if_positive(ax, name)
    if len(columns) > 1:
        ax.legend()
    if title:
        ax.set_title(title)
    return fig


def plot_step_loss(frame: pd.DataFrame, steps: pd.DataFrame, path: Path, title: str = "") -> Path:
    """The loss at each -p step (thin) with each epoch's mean train and validation loss (markers)."""
    fig, ax = new_figure(figsize=(7, 4))
    ax.plot(steps["epoch"], steps["loss"], linewidth=0.8, alpha=0.8, label="train (step)")
    for column in ("train_loss", "val_loss"):
        if _has(frame, column):
            ax.plot(frame["epoch"], frame[column], SPLIT_STYLE[column.split("_")[0]], marker="o",
                    label=f"{column.split('_')[0]} (epoch mean)")
    ax.set_ylabel("loss")
    _integer_epochs(ax)
    _log_scale_if_positive(ax, "loss")
    ax.legend()
    if title:
        ax.set_title(title)
    return save_png(fig, path)


def plot_runs(runs: dict[str, pd.DataFrame], path: str | Path, title: str = "") -> Path:
    """Overlay several runs in one PNG: one colour per run, train dashed and validation solid."""
    return save_png(runs_figure(runs, title), path)


def runs_figure(runs: dict[str, pd.DataFrame], title: str = ""):
    """The figure of `plot_runs`: loss, top-1 error and lr panels, every run in its own colour."""
    from matplotlib.lines import Line2D
    fig, axes = new_figure(1, 3, figsize=(16, 4.5))
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for colour, frame in zip(colours, runs.values()):
        for ax, (_, ylabel, columns) in zip(axes, PANELS):
            for column in columns:
                if _has(frame, column):
                    _draw(ax, frame, column, color=colour, linestyle=SPLIT_STYLE.get(column.split("_")[0], "-"))
            ax.set_ylabel(ylabel)
    for ax, (name, _, _) in zip(axes, PANELS):
        _integer_epochs(ax)
        _log_scale_if_positive(ax, name)
    run_keys = [Line2D([], [], color=c, label=label) for c, label in zip(colours, runs)]
    split_keys = [Line2D([], [], color="grey", linestyle=s, label=split) for split, s in SPLIT_STYLE.items()]
    axes[0].legend(handles=run_keys, fontsize=8)
    axes[1].legend(handles=split_keys, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig
