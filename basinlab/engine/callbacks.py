"""Callbacks: things that run around training (measurements, extra logs), not part of the update."""
from __future__ import annotations


class Callback:
    """Override the hooks you need. `row` is the results.csv row of the epoch: add columns to it."""

    def on_fit_start(self, trainer) -> None: ...

    def on_epoch_start(self, trainer, epoch: int) -> None: ...

    def on_step_end(self, trainer, result) -> None: ...

    def on_epoch_end(self, trainer, row: dict) -> None: ...

    def on_fit_end(self, trainer) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...
