"""What step strategies and callbacks may see of a run: a read-only view of the trainer.

They read the model, optimizer, position and records through it, write lines to the log and results through
the methods it offers, and ask the run to stop with `request_stop()`; setting any attribute is an error, so no
method can change the trainer's state behind the loop's back.
"""
from __future__ import annotations

from pathlib import Path


class RunInfo:
    """Read-only: `run.epoch`, `run.model`, `run.log("...")`, ... (see the properties)."""

    __slots__ = ("_trainer",)

    def __init__(self, trainer):
        object.__setattr__(self, "_trainer", trainer)

    def __setattr__(self, name, value):
        raise AttributeError(f"RunInfo is read-only (setting {name!r}); a callback asks the run to stop with "
                             f"run.request_stop(), a strategy scales the lr with its lr_factor()")

    # ------------------------------------------------------------------------------------ what is trained
    @property
    def cfg(self):
        """The run's options (read them; changing them changes nothing that is already built)."""
        return self._trainer.cfg

    @property
    def model(self):
        return self._trainer.model

    @property
    def optimizer(self):
        return self._trainer.optimizer

    @property
    def criterion(self):
        return self._trainer.step_context.criterion

    @property
    def strategy(self):
        return self._trainer.strategy

    @property
    def lr(self) -> float:
        return self._trainer.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------------------------------ where training is
    @property
    def epoch(self) -> int:
        """The epoch being trained (0-based); after on_epoch_end's row is written, the next one."""
        return self._trainer.epoch

    @property
    def epochs(self) -> int:
        return self._trainer.epochs

    @property
    def batch_in_epoch(self) -> int:
        return self._trainer.batch_in_epoch

    @property
    def global_step(self) -> int:
        return self._trainer.global_step

    @property
    def steps_per_epoch(self) -> int:
        return len(self._trainer.train_loader)

    @property
    def batch_size(self) -> int:
        """This process's batch of the current data phase (the global batch / processes)."""
        return self._trainer.train_loader.batch_size

    @property
    def train_examples(self) -> int:
        """How many examples the training set of this run has (every process sees the same count)."""
        return self._trainer.train_loader.num_examples

    @property
    def num_classes(self) -> int:
        """How many classes the training set has (an image folder's are counted from its class folders)."""
        return self._trainer.train_loader.num_classes

    def batch_examples(self):
        """The CPU int64 indices (into the training set, 0 .. train_examples - 1) of this process's rows of the
        batch being trained: what a method that keeps something per example (SAF's stored outputs) keys on.
        Valid inside train_step; the same batch gives the same indices on a resumed run."""
        trainer = self._trainer
        _, indices = next(trainer.train_loader.index_batches(trainer.epoch, trainer.batch_in_epoch))
        return indices

    def regime_settings(self):
        """(epoch, step in the epoch, settings) at every step of the run, in order: the optimizer settings (a
        fresh dict each, 'optimizer', 'lr', ...) the run's regime gives there, with the current data phase's
        steps per epoch. During a strategy's setup, before any lr factor it asks for is applied."""
        trainer = self._trainer
        steps = len(trainer.train_loader)
        for epoch in range(trainer.epochs):
            for step in range(steps):
                yield epoch, step, trainer.regime.settings_at(epoch, step, epoch * steps + step,
                                                              steps_per_epoch=steps)

    # ------------------------------------------------------------------------------------ the machine
    @property
    def device(self):
        return self._trainer.device

    @property
    def world_size(self) -> int:
        return self._trainer.dist.world_size

    @property
    def rank(self) -> int:
        return self._trainer.dist.rank

    @property
    def is_main(self) -> bool:
        """This process writes the records (rank 0)."""
        return self._trainer.run.is_main

    # ------------------------------------------------------------------------------------ records
    @property
    def path(self) -> Path:
        """The run folder (it exists from on_fit_start on; during setup it is only decided)."""
        return self._trainer.run.path

    @property
    def tensorboard(self):
        return self._trainer.run.tensorboard

    def log(self, message: str) -> None:
        """A line for log.txt and the console."""
        self._trainer.log.info(message)

    def request_stop(self) -> None:
        """End training after this epoch (on_epoch_end) or before the first (on_fit_start)."""
        self._trainer.should_stop = True
