"""Step strategies: how one batch becomes one optimizer update.

The trainer owns the loop; a strategy owns the update. Plain SGD is below; SmoothOut, SAM and the
asynchronous parameter server are other strategies built from the same trainer helpers:

    loss, logits = trainer.forward(x, y)       # autocast, criterion
    trainer.check_loss(loss)                   # NaN/inf policy: raise, or False to skip the batch
    trainer.backward(loss)                     # grad scaling under fp16
    trainer.optimizer_step()                   # unscale, clip, step, zero grads
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepResult:
    loss: torch.Tensor            # detached mean loss of the batch
    logits: torch.Tensor | None   # detached outputs for accuracy (None: not counted)
    skipped: bool = False         # non-finite loss under --nan-policy skip


class StepStrategy:
    """Base class: override `train_step`; keep any state that must survive a resume in state_dict."""

    name = "base"

    def setup(self, trainer) -> None:
        """Called once the model, optimizer and loaders exist (also on resume, before load_state_dict)."""

    def train_step(self, trainer, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        raise NotImplementedError

    def epoch_metrics(self, trainer) -> dict:
        """Extra columns for results.csv at the end of an epoch."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PlainStep(StepStrategy):
    """Forward, backward, step: ordinary (mini-batch) SGD with whatever optimizer the regime names."""

    name = "plain"

    def train_step(self, trainer, x, y):
        loss, logits = trainer.forward(x, y)
        if not trainer.check_loss(loss):
            return StepResult(loss.detach(), None, skipped=True)
        trainer.backward(loss)
        trainer.optimizer_step()
        return StepResult(loss.detach(), logits.detach())


STRATEGIES: dict[str, type[StepStrategy]] = {"plain": PlainStep}
