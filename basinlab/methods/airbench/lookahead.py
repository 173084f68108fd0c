"""airbench's lookahead (--lookahead-every K): an exponential moving average of the weights that the weights are
reset to every K optimizer steps, with a decay that grows from 0 to 0.95^K over the run.

State semantics: the average `ema` holds every floating-point entry of the model's state_dict (weights and
BatchNorm running statistics, as airbench's LookaheadState does). After optimizer step t, when t % K == 0:
ema <- decay(t) ema + (1 - decay(t)) w, then w <- ema, with decay(t) = 0.95^K (t / T)^3 and T the run's steps
(epochs x the first data phase's steps per epoch). After the last batch of the last epoch the weights take the
average once more with decay 1, i.e. w <- ema (also when --nan-policy skip left steps untaken).
The average starts from the weights at the start of training (airbench starts it before its whitening
initialisation; the difference is a weight of 0.95^5 (5/T)^3, under 1e-6, on the first update). It is
checkpointed, so a resumed run continues exactly.
"""
from __future__ import annotations

import torch

from basinlab.engine.callbacks import Callback


def lookahead_decay(step: int, total: int, every: int) -> float:
    """airbench's alpha_schedule: 0.95^every (step / total)^3."""
    return 0.95 ** every * (step / total) ** 3


class Lookahead(Callback):
    def __init__(self, every: int):
        self.every = every
        self.ema: dict[str, torch.Tensor] = {}
        self.last_step = 0
        self.total = 0

    def setup(self, run) -> None:
        self.total = run.epochs * run.steps_per_epoch
        self.ema = {name: value.detach().clone() for name, value in self._averaged(run.model).items()}

    @staticmethod
    def _averaged(model) -> dict[str, torch.Tensor]:
        return {name: value for name, value in model.state_dict().items() if value.is_floating_point()}

    def on_step_end(self, run, result) -> None:
        step = run.global_step
        if step == self.last_step:   # a skipped batch (--nan-policy skip) took no step
            return
        self.last_step = step
        if step % self.every == 0:
            self._pull(run.model, lookahead_decay(min(step, self.total), self.total, self.every))
        if run.epoch == run.epochs - 1 and run.batch_in_epoch == run.steps_per_epoch:
            self._pull(run.model, 1.0)

    @torch.no_grad()
    def _pull(self, model, decay: float) -> None:
        for name, value in self._averaged(model).items():
            average = self.ema[name]
            average.lerp_(value, 1 - decay)
            value.copy_(average)

    def state_dict(self) -> dict:
        return {"ema": {name: value.cpu() for name, value in self.ema.items()}, "last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state["ema"].items():
            self.ema[name].copy_(value)
        self.last_step = int(state["last_step"])


class LookaheadNotInRangeTest(Callback):
    """--lookahead-every in the LR range test (a preset may carry it): its steps sweep the lr, not a run."""

    def setup(self, run) -> None:
        run.log("--lookahead-every is not used in the LR range test: its average spans a run's steps, and the test's "
                "steps sweep the lr")
