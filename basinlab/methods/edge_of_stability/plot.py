"""sharpness-steps.png: the measured sharpnesses against their edge, over the optimizer steps."""
from __future__ import annotations

import math
from pathlib import Path

from basinlab.utils.figures import new_figure, save_png

CURVES = (("lambda_max", "lambda_max (training loss)", "o"), ("batch_sharpness", "batch sharpness", "s"),
          ("preconditioned_sharpness", "preconditioned sharpness (Adam, lr groups)", "^"))


def plot_sharpness(rows: list[dict], path: Path) -> Path:
    """Each measured sharpness and the threshold over steps, on a log scale where the values allow it."""
    steps = [row["step"] for row in rows]
    fig, ax = new_figure(figsize=(7, 4))
    drawn = []
    for key, label, marker in CURVES:
        values = [row[key] for row in rows]
        if any(not math.isnan(v) for v in values):
            ax.plot(steps, values, marker=marker, markersize=3, label=label)
            drawn.extend(v for v in values if not math.isnan(v))
    edges = [row["threshold"] for row in rows]
    if any(math.isfinite(v) for v in edges):
        ax.plot(steps, edges, color="black", linestyle="--", label="threshold (edge of stability)")
        drawn.extend(v for v in edges if math.isfinite(v))
    if drawn and min(drawn) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("sharpness")
    ax.set_title("sharpness during training against its edge")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path, dpi=80)
    return path
