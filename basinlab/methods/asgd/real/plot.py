"""plots/delays.png: each epoch's distribution of measured delays (delays.csv), as a heat map with the mean."""
from __future__ import annotations

from pathlib import Path

from basinlab.utils.figures import new_figure, save_png


def delay_histogram(table):
    """epoch x delay -> the fraction of that epoch's applied gradients with that delay (dropped ones left out)."""
    applied = table[table.status != "dropped"]
    counts = applied.groupby(["epoch", "delay"]).size().unstack(fill_value=0)
    return counts.div(counts.sum(axis=1), axis=0)


def plot_delays(table, path: Path, title: str = "") -> Path:
    import numpy as np
    fractions = delay_histogram(table)
    fig, ax = new_figure(figsize=(7, 4))
    epochs, delays = fractions.index.to_numpy(), fractions.columns.to_numpy()
    full = np.zeros((len(epochs), int(delays.max()) + 1))
    full[:, delays] = fractions.to_numpy()
    image = ax.imshow(full.T, origin="lower", aspect="auto", cmap="viridis",
                      extent=(epochs.min() - 0.5, epochs.max() + 0.5, -0.5, full.shape[1] - 0.5))
    means = (full * np.arange(full.shape[1])).sum(axis=1)
    ax.plot(epochs, means, "w.-", label="mean")
    fig.colorbar(image, ax=ax, label="fraction of the epoch's applied gradients")
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("delay (server updates)")
    ax.legend(loc="upper right")
    ax.set_title(title or "measured delays per epoch (delays.csv)")
    return save_png(fig, path)
