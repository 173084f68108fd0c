"""`basinlab train --log-sharpness-every-steps N`: the edge of stability, measured live.

Every N optimizer steps (and before the first), on the same `--sharpness-batches` training batches each time (the
first batches of epoch 0, no augmentation; BatchNorm on batch statistics, `--hessian-mode train`):
  * lambda_max     the top Hessian eigenvalue of the training loss on those batches (Lanczos, warm-started from
                   the previous measurement's eigenvector: a few products when the Hessian moved little);
  * batch_sharpness  the mean over those batches of g_B^T H_B g_B / ||g_B||^2 (SGD's edge, Andreyev & Beneventano
                   2024); for every optimizer;
  * preconditioned_sharpness  lambda_max(P^-1 H) with Adam's preconditioner (Cohen et al. 2022), and with param
                   groups of different lrs lambda_max(S H), S = lr_g / lr_0 (what the edge then bounds;
                   thresholds.py); NaN for SGD with one lr;
  * threshold      the edge the run's update has on the sharpness it is compared with (thresholds.py): 2/lr for
                   SGD, (2+2b)/lr with momentum, 38/lr for Adam's preconditioned sharpness, the delayed one under
                   --server;
with the products used and the seconds each measurement took, one row per measurement in the run folder's
`sharpness-steps.csv` (drawn in plots/sharpness-steps.png). The rows and the warm-start vectors are checkpointed: a
resumed run writes exactly the rows an uninterrupted one writes. The measurement leaves weights, buffers, gradients
and every random generator as they were (its seconds count in the epoch's time).
"""
from __future__ import annotations

import math
import time

import torch

from basinlab.engine.callbacks import Callback
from basinlab.errors import ConfigError
from basinlab.methods.edge_of_stability import thresholds
from basinlab.utils.checks import check_int
from basinlab.utils.model_state import random_state_kept

METHOD_NAME = "--log-sharpness-every-steps (edge of stability)"
CSV_NAME, PNG_NAME = "sharpness-steps.csv", "sharpness-steps.png"
COLUMNS = ["step", "epoch", "lr", "lambda_max", "batch_sharpness", "preconditioned_sharpness", "threshold",
           "lambda_max_over_threshold", "batch_sharpness_over_threshold", "preconditioned_over_threshold",
           "hvp_count", "seconds", "gradient_seconds"]
SOLVER = {"max_iter": 100, "tol": 1e-3, "method": "lanczos"}


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    """(None, [EdgeOfStability]) when --log-sharpness-every-steps is set, else (None, [])."""
    if cfg.log_sharpness_every_steps is None:
        return None, []
    if workflow == "lr-range":
        raise ConfigError("--log-sharpness-every-steps compares sharpness with the edge of a fixed lr, and the LR "
                          "range test changes the lr at every step; measure a checkpoint with basinlab sharpness")
    every = check_int(cfg.log_sharpness_every_steps, "--log-sharpness-every-steps")
    batches = check_int(cfg.sharpness_batches, "--sharpness-batches")
    return None, [EdgeOfStability(every, batches, seed=cfg.seed, mode=cfg.hessian_mode)]


class EdgeOfStability(Callback):
    """Rows of sharpness-steps.csv every `every` optimizer steps."""

    def __init__(self, every: int, batches: int, *, seed: int = 0, mode: str = "train"):
        self.every, self.batches, self.seed, self.mode = every, batches, seed, mode
        self.data, self.rows, self.starts = None, [], {}

    def setup(self, run) -> None:
        from basinlab.analysis.data import first_training_batches
        with random_state_kept(run.device):
            self.data = first_training_batches(run.cfg, self.batches, run.batch_size, run.device)

    def on_fit_start(self, run) -> None:
        if run.global_step == 0 and not self.rows:
            self.record(run)          # before the first step: where the curve starts
        elif run.is_main:
            self.write(run)           # a resumed run: the file holds exactly the checkpoint's rows

    def on_step_end(self, run, result) -> None:
        if run.global_step % self.every == 0:
            self.record(run)

    def on_fit_end(self, run) -> None:
        if run.is_main and self.rows:
            from basinlab.methods.edge_of_stability.plot import plot_sharpness
            plot_sharpness(self.rows, run.path / "plots" / PNG_NAME)

    def record(self, run) -> None:
        row = self.measure(run)
        self.rows.append(row)
        run.log(f"sharpness at step {row['step']}: " + ", ".join(
            f"{name} {row[name]:.4g}" for name in ("lambda_max", "batch_sharpness", "preconditioned_sharpness",
                                                   "threshold") if not math.isnan(row[name]))
                + f" [{row['hvp_count']} HVPs, {row['seconds']:.2f} s = {row['seconds'] / row['gradient_seconds']:.1f}"
                  f" gradients of the measured batches]")
        if run.is_main:
            self.write(run)

    def measure(self, run) -> dict:
        """One row for the model as it is now (global and CUDA random states restored)."""
        from basinlab.metrics.batch_sharpness import batch_sharpness
        if self.data is None:
            self.setup(run)
        start = time.perf_counter()
        with random_state_kept(run.device):
            top, products = self.top_eigenvalue(run, "lambda_max", None)
            batch = batch_sharpness(run.model, run.criterion, self.data, mode=self.mode)
            products += batch.hvp_count
            preconditioned = math.nan
            # Adam's edge, and an edge with lr groups, bound the preconditioned sharpness only
            only_preconditioned = thresholds.is_preconditioned(run.optimizer)
            trainable = [p for p in run.model.parameters() if p.requires_grad]  # what the Hessian is taken over
            scale = thresholds.preconditioner_scale(run.optimizer, trainable)
            if scale is not None:
                preconditioned, more = self.top_eigenvalue(run, "preconditioned", scale)
                products += more
        seconds = time.perf_counter() - start
        edge = thresholds.threshold(run.optimizer, run.strategy)
        return {"step": run.global_step, "epoch": run.global_step / run.steps_per_epoch, "lr": run.lr,
                "lambda_max": top, "batch_sharpness": batch.value, "preconditioned_sharpness": preconditioned,
                "threshold": edge, "lambda_max_over_threshold": math.nan if only_preconditioned else top / edge,
                "batch_sharpness_over_threshold": math.nan if only_preconditioned else batch.value / edge,
                "preconditioned_over_threshold": preconditioned / edge, "hvp_count": products,
                "seconds": seconds, "gradient_seconds": self.gradient_seconds(run)}

    def top_eigenvalue(self, run, key: str, scale) -> tuple[float, int]:
        from basinlab.metrics.hessian_eigen import hessian_eigenvalues
        found = hessian_eigenvalues(run.model, run.criterion, self.data, seed=self.seed + run.global_step,
                                    mode=self.mode, start=self.starts.get(key), scale=scale, **SOLVER)
        self.starts[key] = [v.detach().clone() for v in found.vectors[0]]
        return float(found.values[0]), found.hvp_count

    def gradient_seconds(self, run) -> float:
        """What one gradient over the measured batches costs now: the unit the measurement's cost is given in."""
        start = time.perf_counter()
        with random_state_kept(run.device):
            from basinlab.metrics.hessian import _measurement_mode
            params = [p for p in run.model.parameters() if p.requires_grad]
            with _measurement_mode(run.model, self.mode), torch.enable_grad():
                for x, y in self.data:
                    torch.autograd.grad(run.criterion(run.model(x), y), params, allow_unused=True)
        return time.perf_counter() - start

    def write(self, run) -> None:
        import pandas as pd

        from basinlab.utils.io import atomic_write_text
        atomic_write_text(run.path / CSV_NAME, pd.DataFrame(self.rows, columns=COLUMNS).to_csv(index=False))

    def state_dict(self) -> dict:
        return {"rows": [dict(row) for row in self.rows], "starts": {k: list(v) for k, v in self.starts.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(row) for row in state.get("rows", [])]
        self.starts = {k: list(v) for k, v in state.get("starts", {}).items()}

