"""Callbacks: things that run around training (measurements, extra logs, gradient edits), not the update.

Every hook gets `run`, the run's read-only RunInfo (engine/run_info.py): the model, optimizer, position and
records to read, `run.log(...)` to write a line and `run.request_stop()` to end training; a callback changes
the run only through these, the results row it extends, and the gradients it may edit before a step.
A callback's checkpointed state is stored under its `state_key` (class name, plus `key` where a run
has two callbacks of one class), so a resumed run with other or reordered callbacks gives each one
its own state back, as Lightning's `Callback.state_key` does.
"""
from __future__ import annotations


class Callback:
    """Override the hooks you need. `row` is the results.csv row of the epoch: add columns to it."""

    key: str | None = None  # tells apart two callbacks of one class in a checkpoint

    @property
    def state_key(self) -> str:
        name = type(self).__qualname__
        return f"{name}[{self.key}]" if self.key else name

    def setup(self, run) -> None:
        """Model, data and optimizer exist; the run folder does not yet: raise ConfigError here to refuse
        the run before anything is written (e.g. a measurement that needs more batches than there are)."""

    def on_fit_start(self, run) -> None: ...

    def on_epoch_start(self, run, epoch: int) -> None: ...

    def on_before_optimizer_step(self, run, optimizer) -> None:
        """The gradients of this update are final (unscaled, clipped); edit them here if you must."""

    def on_step_end(self, run, result) -> None: ...

    def on_epoch_end(self, run, row: dict) -> None: ...

    def on_fit_end(self, run) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...
