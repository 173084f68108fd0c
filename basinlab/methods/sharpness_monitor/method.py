"""`basinlab train --log-sharpness-every k [--log-trace] [--sharpness-batches N]`.

Every k epochs the top Hessian eigenvalue (and, with --log-trace, the Hutchinson trace) of the training
loss is measured on the first N training batches of epoch 0 without augmentation (the same batches at
every measurement, so the values are comparable across epochs) and added to results.csv as
``lambda_max``, ``lr_times_lambda_max`` (, ``hessian_trace``) and, for a parameter-server run, the
linear stability threshold on ``lr * lambda_max`` for its delay and momentum (``stability_threshold``,
asked of the step strategy: any strategy with a ``stability_threshold(optimizer)`` method gets the column).
Other epochs get NaN in these columns. The Hessian is the training loss's with BatchNorm on each batch's
statistics (``--hessian-mode train``, the default): the function the optimizer's steps differentiate,
which is what the stability rules (lr x lambda_max < 2/(1+momentum), the delay thresholds) are about;
``--hessian-mode eval`` measures the test-time function (running statistics) instead. The measurement
leaves weights, modes, buffers, gradients and every random generator as they were: a run is
bit-identical with and without the monitor.
"""
from __future__ import annotations

import math

from basinlab.engine.callbacks import Callback
from basinlab.errors import ConfigError
from basinlab.utils.checks import check_int
from basinlab.utils.model_state import random_state_kept

LAMBDA_SETTINGS = {"max_iter": 100, "tol": 1e-3, "method": "lanczos"}
TRACE_SETTINGS = {"max_iter": 50, "tol": 1e-2}


METHOD_NAME = "--log-sharpness-every (sharpness monitor)"


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    """(None, [SharpnessMonitor]) when --log-sharpness-every is set, else (None, [])."""
    if cfg.log_sharpness_every is None:  # its detail options without it were refused with the config
        return None, []
    if workflow == "lr-range":
        raise ConfigError("--log-sharpness-every measures at the end of epochs, and the LR range test has none (its "
                          "steps sweep the lr); measure a checkpoint with basinlab sharpness instead")
    every = check_int(cfg.log_sharpness_every, "--log-sharpness-every")
    batches = check_int(cfg.sharpness_batches, "--sharpness-batches")
    return None, [SharpnessMonitor(every, batches, log_trace=cfg.log_trace, seed=cfg.seed, mode=cfg.hessian_mode)]


def server_stability(strategy, optimizer) -> float | None:
    """The strategy's stability threshold on lr * lambda_max (None for a strategy without delays)."""
    threshold = getattr(strategy, "stability_threshold", None)
    return None if threshold is None else threshold(optimizer)


class SharpnessMonitor(Callback):
    """Adds lambda_max (and trace) columns to results.csv every ``every`` epochs."""

    def __init__(self, every: int, batches: int, *, log_trace: bool = False, seed: int = 0, mode: str = "train"):
        self.every, self.batches, self.log_trace, self.seed, self.mode = every, batches, log_trace, seed, mode
        self.data = None

    def columns(self, strategy) -> list[str]:
        names = ["lambda_max", "lr_times_lambda_max"]
        if self.log_trace:
            names.append("hessian_trace")
        if hasattr(strategy, "stability_threshold"):
            names.append("stability_threshold")
        return names

    def setup(self, run) -> None:
        # built once, before the run folder exists (too few batches refuses the run), from the batch size
        # at the start: the same examples at every measurement
        from basinlab.analysis.data import first_training_batches
        with random_state_kept(run.device):
            self.data = first_training_batches(run.cfg, self.batches, run.batch_size,
                                               run.device)

    def on_epoch_end(self, run, row: dict) -> None:
        values = dict.fromkeys(self.columns(run.strategy), math.nan)
        # every rank measures (same weights, same batches): none waits at a collective for rank 0
        if (run.epoch + 1) % self.every == 0:
            values.update(self.measure(run))
            run.log(f"sharpness after epoch {run.epoch + 1}: " +
                             ", ".join(f"{k} {v:.5g}" for k, v in values.items()))
        row.update(values)

    def measure(self, run) -> dict:
        """The columns' values for the model as it is now (global and CUDA RNG states restored)."""
        from basinlab.metrics.sharpness import hessian_trace, lambda_max
        if self.data is None:
            self.setup(run)
        model, criterion = run.model, run.criterion
        with random_state_kept(run.device):
            lam = lambda_max(model, criterion, self.data, seed=self.seed, mode=self.mode, **LAMBDA_SETTINGS)
            out = {"lambda_max": lam, "lr_times_lambda_max": run.lr * lam}
            if self.log_trace:
                out["hessian_trace"] = hessian_trace(model, criterion, self.data, seed=self.seed, mode=self.mode,
                                                     **TRACE_SETTINGS).trace
        threshold = server_stability(run.strategy, run.optimizer)
        if threshold is not None:
            out["stability_threshold"] = threshold
        return out

