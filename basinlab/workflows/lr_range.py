"""The LR range test on what a train config describes (model, data, optimizer, AMP, grad clipping, method).

The run is built as any run is (basinlab.api.build_run, workflow "lr-range") and set up in a temporary run
folder (deleted afterwards); each sweep step is the run's own step strategy (plain, ghost batches, SmoothOut,
SAM/ASAM), so AMP, channels_last, --grad-clip and the method apply as in training. Methods that cannot mean
the same here (the simulated server, epoch-end measurements) refuse in one line. The optimizer is the one
the config's regime starts with (its momentum, betas, weight decay), with the lr swept.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

from basinlab.config import TrainConfig
from basinlab.tuning.lr_range import LRRangeResult, lr_range_test, plot_lr_range
from basinlab.utils.io import atomic_write_text


class _EpochCycle:
    """Batches of the training loader, epoch after epoch (an iterable that can be iterated again)."""

    def __init__(self, loader):
        self.loader, self.epoch = loader, 0

    def __iter__(self):
        batches = self.loader.epoch(self.epoch, start_batch=0)
        self.epoch += 1
        return iter(batches)


def _run_step(trainer):
    """One step of the run's own strategy; a non-finite loss (skipped, not raised: nan_policy skip) is returned
    for the sweep to record and stop on."""
    def step(model, optimizer, batch):
        x, y = batch
        result = trainer.strategy.train_step(trainer.step_context, x, y)
        # a skipped step changed nothing: its (maybe finite, e.g. SAM's first pass) loss must not count
        return math.nan if result.skipped else result.loss
    return step


def run_lr_range(cfg: TrainConfig, output: str | Path, *, start_lr: float = 1e-7, end_lr: float = 10.0,
                 num_steps: int = 100, smooth: float = 0.98, diverge_factor: float = 4.0) -> LRRangeResult:
    """Sweep, then write ``lr_range.csv``, ``lr_range.png`` and ``lr_range.json`` into ``output``."""
    from basinlab.api import build_run
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="lr-range-", dir=output))
    trainer = build_run(cfg.replace(results_dir=str(scratch), save="setup", quiet=True, resume=None, overwrite=True,
                                    nan_policy="skip"), workflow="lr-range")
    try:
        trainer.setup()
        result = lr_range_test(trainer.model, trainer.optimizer, None, _EpochCycle(trainer.train_loader),
                               start_lr=start_lr, end_lr=end_lr, num_steps=num_steps, smooth=smooth,
                               diverge_factor=diverge_factor, step_fn=_run_step(trainer))
    finally:
        _close(trainer)
        shutil.rmtree(scratch, ignore_errors=True)
    write_lr_range(result, output, cfg, step=trainer.strategy.name)
    return result


def _close(trainer) -> None:
    trainer.close_strategy()
    run = getattr(trainer, "run", None)
    if run is not None:
        run.close()
    if getattr(trainer, "dist", None) is not None:
        trainer.leave_process_group()


def write_lr_range(result: LRRangeResult, output: Path, cfg: TrainConfig, step: str = "plain") -> None:
    atomic_write_text(output / "lr_range.csv", result.to_dataframe().to_csv(index=False))
    plot_lr_range(result, output / "lr_range.png")
    facts = {"suggestions": {k: (v if math.isfinite(v) else None) for k, v in result.suggestions.items()},
             "stop_reason": result.stop_reason, "steps": int(len(result.lrs)), "trimmed": list(result.trimmed),
             "model": cfg.model, "dataset": cfg.dataset, "batch_size": cfg.batch_size, "seed": cfg.seed,
             "step": step}
    atomic_write_text(output / "lr_range.json", json.dumps(facts, indent=2))
