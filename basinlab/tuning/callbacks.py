"""Callbacks the autoHyper interface adds to its full trainings: early stopping on the training
loss and a checkpoint kept every N epochs (the seed's --save-freq)."""
from __future__ import annotations

import math
import shutil

from basinlab.engine.callbacks import Callback
from basinlab.errors import ConfigError


class TrainLossEarlyStop(Callback):
    """Stop after ``patience`` consecutive epochs whose training loss did not improve on the best
    so far by more than ``threshold``; ``threshold < 0`` disables it.

    autoHyper's EarlyStop rule: ``loss - best < -threshold`` is an improvement (new best, wait 0),
    anything else waits one more epoch (Keras' ``min_delta`` rule). AdaS's older copy tested
    ``loss - threshold < best``, which only counted epochs where the loss rose.
    Adds ``early_stop_wait`` (epochs without improvement) to results.csv.
    """

    def __init__(self, threshold: float, patience: int):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"early_stop_patience must be an integer >= 1, got {patience!r}")
        self.threshold, self.patience = float(threshold), patience
        self.best, self.wait, self.stopped_at = math.inf, 0, None

    @property
    def enabled(self) -> bool:
        return self.threshold >= 0

    def on_fit_start(self, run) -> None:
        if self.stopped_at is not None:  # resumed from the checkpoint of a run that had stopped
            run.request_stop()

    def on_epoch_end(self, run, row: dict) -> None:
        if not self.enabled:
            return
        loss = float(row["train_loss"])
        if loss < self.best - self.threshold:
            self.best, self.wait = loss, 0
        else:
            self.wait += 1
        row["early_stop_wait"] = self.wait
        if self.wait >= self.patience:
            self.stopped_at = row["epoch"]
            run.request_stop()
            run.log(f"early stop: training loss has not improved by more than {self.threshold:g} "
                             f"for {self.patience} epochs (best {self.best:.4g})")

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait, self.stopped_at = state["best"], state["wait"], state["stopped_at"]


class SaveEvery(Callback):
    """Keep ``epoch_<k>.pt`` (a copy of last.pt) after every k-th epoch, k a multiple of ``every``.

    The reference overwrote one ``trial_<n>.pth.tar`` at epochs 0, 25, 50... (0-based); these are
    the checkpoints after epochs 25, 50, ... (1-based, like results.csv), each kept.
    """

    def __init__(self, every: int):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"--save-freq must be an integer >= 1, got {every!r}")
        self.every = every

    def on_epoch_start(self, run, epoch: int) -> None:
        self._keep(run, epoch)  # last.pt now holds the state after `epoch` epochs

    def on_fit_end(self, run) -> None:
        self._keep(run, run.epoch)

    def _keep(self, run, completed: int) -> None:
        if completed == 0 or completed % self.every or run.batch_in_epoch or not run.is_main:
            return
        last = run.path / "last.pt"
        target = run.path / f"epoch_{completed}.pt"
        if last.is_file() and not target.is_file():
            shutil.copyfile(last, target)


class EchoEpochs(Callback):
    """A line per epoch through `echo` (a full training of autoHyper runs quiet; this says how it goes)."""

    key = "echo"

    def __init__(self, echo, label: str):
        self.echo, self.label = echo, label

    def on_epoch_end(self, run, row: dict) -> None:
        if run.is_main:
            self.echo(f"{self.label} epoch {row['epoch']}/{run.epochs}: train loss {row['train_loss']:.4f}, val "
                      f"top-1 {row['val_acc1']:.2f}%")
