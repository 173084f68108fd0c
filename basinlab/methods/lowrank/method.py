"""What `basinlab train` does for this part: `--log-lowrank` and the per-epoch update of AdaS.

:class:`LowRankEpochEnd` runs at every epoch end of every run (it is a no-op unless the run logs
low-rank metrics or trains with AdaS):

- it computes the low-rank metrics of every conv layer once (:func:`basinlab.metrics.lowrank.model_metrics`);
- with ``--log-lowrank`` it rewrites ``<run>/lowrank.csv`` (one row per epoch and conv layer: the
  metrics and the lr the layer trained with) and adds their means to results.csv
  (``lowrank_S_in_mean``, ``lowrank_S_out_mean``, ``lowrank_rank_in_mean``, ``lowrank_rank_out_mean``,
  ``lowrank_cond_in_mean``, ``lowrank_cond_out_mean``) plus autoHyper's ``lowrank_zero_fraction``;
- when the optimizer is :class:`~basinlab.optim.adas.AdaS` it calls ``epoch_step`` with the same
  metrics (no second set of SVDs) and adds ``adas_lr_min/mean/max``: the conv-layer lrs of the
  epoch just trained.

The AdaS update happens before the trainer writes its checkpoint, so a resumed run continues with
the lrs it would have had.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from basinlab.engine.callbacks import Callback
from basinlab.errors import ConfigError
from basinlab.metrics.lowrank import knowledge_gain_zero_fraction, metric_layers, model_metrics
from basinlab.optim.adas import AdaS
from basinlab.utils.io import atomic_write_text

if TYPE_CHECKING:  # pandas takes ~0.2 s to import: loaded where a table is read
    import pandas as pd

LOWRANK_FILE = "lowrank.csv"
MEAN_COLUMNS = ("S_in", "S_out", "rank_in", "rank_out", "cond_in", "cond_out")


METHOD_NAME = "--log-lowrank (low-rank metrics)"


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    """(no step strategy, [the epoch-end callback]) for every run."""
    if workflow == "lr-range" and cfg.log_lowrank:
        raise ConfigError("--log-lowrank logs at the end of epochs, and the LR range test has none (its steps sweep "
                          "the lr); drop it")
    return None, [LowRankEpochEnd(log=bool(cfg.log_lowrank))]


class LowRankEpochEnd(Callback):
    def __init__(self, log: bool):
        self.log = log
        self._warned_no_conv = False

    def on_epoch_end(self, run, row: dict) -> None:
        adas = run.optimizer if isinstance(run.optimizer, AdaS) else None
        if not self.log and adas is None:
            return
        if not metric_layers(run.model):
            self._no_conv(run)
            return
        p = adas.param_groups[0].get("p", 1) if adas is not None and adas.conv_groups() else 1
        metrics = model_metrics(run.model, p=p)
        if self.log:
            self._log(run, row, metrics)
        if adas is not None:
            _adas_step(adas, metrics, row)

    def _no_conv(self, run) -> None:
        if not self._warned_no_conv:
            run.log("low-rank metrics: the model has no conv layer; nothing to measure")
            self._warned_no_conv = True

    def _log(self, run, row: dict, metrics: pd.DataFrame) -> None:
        for name in MEAN_COLUMNS:
            row[f"lowrank_{name}_mean"] = float(np.nanmean(metrics[name].to_numpy(np.float64)))
        row["lowrank_zero_fraction"] = knowledge_gain_zero_fraction(metrics)
        if not run.is_main:
            return
        frame = metrics.assign(lr=layer_lrs(run.model, run.optimizer))
        frame.insert(0, "epoch", row["epoch"])
        append_epoch_rows(run.path / LOWRANK_FILE, frame)
        tb = run.tensorboard
        for name in ("S_in", "S_out", "rank_in", "rank_out"):
            values = metrics[name].to_numpy(np.float64)
            if np.all(np.isfinite(values)):
                tb.histogram(f"lowrank/{name}", values, row["epoch"])


def _adas_step(adas: AdaS, metrics: pd.DataFrame, row: dict) -> None:
    used = adas.layer_lrs()
    row["adas_lr_min"], row["adas_lr_mean"], row["adas_lr_max"] = min(used), float(np.mean(used)), max(used)
    try:
        adas.epoch_step(metrics)
    except ValueError:
        # The model's conv modules and the optimizer's 4-D parameters do not line up one to one
        # (shared or extra 4-D parameters): let AdaS measure its own weights.
        adas.epoch_step(None)


def layer_lrs(model, optimizer) -> list[float]:
    """The lr of the param group holding each conv layer's weight, in model_metrics' row order."""
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return [float(lr_of.get(id(m.weight), math.nan)) for _, _, m in metric_layers(model)]


def append_epoch_rows(path: Path, frame: pd.DataFrame) -> None:
    """Rewrite the CSV with this epoch's rows replacing any rows of this or later epochs.

    A resumed run redoes the interrupted epoch; dropping rows from it on keeps every epoch once.
    """
    import pandas as pd

    epoch = int(frame["epoch"].iloc[0])
    if path.is_file() and path.stat().st_size:
        old = pd.read_csv(path)
        frame = pd.concat([old[old["epoch"] < epoch], frame], ignore_index=True)
    atomic_write_text(path, frame.to_csv(index=False))
