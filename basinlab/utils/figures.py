"""Figures drawn without pyplot: a `Figure` on an Agg canvas, so the caller's matplotlib backend (an
inline plot in a notebook, say) is never switched, and no global figure state is kept."""
from __future__ import annotations

from pathlib import Path

from basinlab.utils.io import atomic_write


def new_figure(rows: int = 1, cols: int = 1, **figure_kwargs):
    """(figure, axes) like `plt.subplots`, on a private Agg canvas. Axes: one, or an array for a grid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    squeeze = figure_kwargs.pop("squeeze", True)
    sharex = figure_kwargs.pop("sharex", False)
    fig = Figure(**figure_kwargs)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=squeeze, sharex=sharex)


def save_png(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write `fig` as a PNG atomically (a crash leaves the previous file), creating the folder."""
    path = Path(path)
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight"))
    return path
