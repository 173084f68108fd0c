"""GSAM (Zhuang et al., ICLR 2022): SAM's gradient less alpha times the part of the plain gradient orthogonal to it.

Per update, g the batch gradient at w (first pass) and rho_t the radius at this step's lr (rho.py):

    eps    = rho_t g / ||g||                      adaptive: rho_t |w|^2 g / || |w| g ||  (the authors' adaptive=True:
                                                  ASAM's T = |w| + eta with eta = 0, on every parameter)
    g_p    = the gradient at w + eps (second pass), taken at w
    g_perp = g - (<g, g_p> / ||g_p||^2) g_p       the part of g orthogonal to g_p (all of g where g_p = 0)
    d      = g_p - alpha g_perp                   the optimizer (with its momentum, weight decay) steps with d

as the authors' gsam/gsam.py (juntang-zhuang/GSAM) does, without its 1e-12 in the denominators (a zero ||g||
falls back to a plain step instead).

State semantics, as SAM's (basinlab.methods.flat.sam):
- Buffers (BatchNorm running statistics, online-norm state) advance once per update, from the first pass: the
  second pass starts from the buffers the first started from, and the first pass's buffers are put back after
  it. (The authors zero BatchNorm's momentum for the second pass, which also counts num_batches_tracked twice.)
- The weights are copied back to w exactly after the second pass.
- --ghost-batch: both passes accumulate over the same chunks of the batch.
- fp16: eps, the projection coefficient and d are computed from the gradients as the scaler left them (eps and
  the coefficient do not depend on the scale, d scales with it and is unscaled by the step); ||g|| is reported
  unscaled. A non-finite first pass (overflow) or a zero gradient falls back to a plain step, which the scaler
  skips on overflow. A non-finite second pass makes d non-finite, and the scaler skips that step.
- Data parallelism (--sam-perturbation): `local` (the default) is the authors' rule: each process computes g,
  eps, g_p and d from its own shard (neither pass all-reduces) and d is averaged over the processes once, before
  the step, as their _sync_grad does. `global` all-reduces both passes: one g, one eps, one g_p and one d on
  every process.
- Resume: rho_t depends only on the step's lr (the regime's position, which the checkpoint restores) and the
  run's lr bounds, recomputed from the regime at setup; the epoch's sums for results.csv are in state_dict.

results.csv: `passes_per_step` (forward-backward passes over the batch per optimizer step, averaged over the
epoch: 2, less where steps fell back to one pass; batches skipped for a non-finite loss count in neither, as
SAM's column), `gsam_rho` (the mean rho_t of the epoch's GSAM steps) and `gsam_grad_norm` (their mean ||g||).
"""
from __future__ import annotations

import torch

from basinlab.engine.steps import StepResult, StepStrategy, accumulate_gradient, check_ghost_batch, describe_chunks
from basinlab.errors import ConfigError
from basinlab.methods.flat.sam import asam_perturbation, global_norm, gradient_at_perturbed_point, sam_perturbation
from basinlab.methods.gsam.rho import RhoSchedule, regime_lr, run_lr_bounds

PERTURBATIONS = ("local", "global")


def surrogate_gap_direction(first: list[torch.Tensor], perturbed: list[torch.Tensor], alpha: float) -> None:
    """`perturbed` (g_p) becomes g_p - alpha g_perp in place, g_perp = g - c g_p with c = <g, g_p> / ||g_p||^2
    and g = `first`; that is (1 + alpha c) g_p - alpha g, two in-place operations and no copy."""
    dot = torch.stack([torch.sum(g * gp) for g, gp in zip(first, perturbed)]).sum()
    squared = global_norm(perturbed) ** 2
    coefficient = torch.where(squared > 0, dot / squared, torch.zeros_like(dot))  # g_p = 0: g is all orthogonal
    torch._foreach_mul_(perturbed, 1.0 + alpha * coefficient)
    torch._foreach_add_(perturbed, first, alpha=-alpha)


class GSAMStep(StepStrategy):
    """Two forward-backward passes per update (at w, at w + eps) and the surrogate-gap correction of SAM's
    gradient; see the module's docstring."""

    name = "gsam"

    def __init__(self, rho: float, alpha: float = 0.4, rho_min: float | None = None, *, adaptive: bool = False,
                 ghost_batch: int | None = None, perturbation: str = "local"):
        if perturbation not in PERTURBATIONS:
            raise ConfigError(f"GSAM's perturbation must be one of {', '.join(PERTURBATIONS)}, got {perturbation!r}")
        self.schedule = RhoSchedule(rho, rho_min)
        self.alpha, self.adaptive = float(alpha), bool(adaptive)
        self.ghost_batch, self.perturbation = ghost_batch, perturbation
        self.name = "gsam-adaptive" if adaptive else "gsam"
        self._log = None
        self._sums = None   # [sum of ||g||, GSAM steps] of the epoch, on the device (no sync per step)
        self._rho_sum, self._passes, self._steps = 0.0, 0, 0

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self, ctx, run) -> None:
        check_ghost_batch(self.ghost_batch, run.batch_size)
        self._log = run.log
        self._sums = torch.zeros(2, dtype=torch.float64, device=run.device)
        if self.schedule.rho_min != self.schedule.rho_max:
            self.schedule.fit(*run_lr_bounds(run))
            if self.schedule.constant and self.schedule.min_given:
                raise ConfigError(
                    f"--gsam-rho-min {self.schedule.rho_min:g} is the radius at the regime's smallest lr, but its lr "
                    f"is {self.schedule.bounds[0]:g} at every step of the run: drop --gsam-rho-min (rho stays "
                    f"--gsam {self.schedule.rho_max:g}) or give the regime an lr schedule")
        run.log(f"step {self.name}: {self.schedule.describe()}; alpha {self.alpha:g}"
                + ("; eps = rho |w|^2 g / || |w| g || (adaptive)" if self.adaptive else "")
                + f"; two passes per update, each a {describe_chunks(self.ghost_batch, run.batch_size)}; buffers "
                  "(BN running statistics, online-norm state) advance on the first pass only"
                + (f"; {self._processes_words()}" if ctx.dist.world_size > 1 else ""))

    def _processes_words(self) -> str:
        if self.perturbation == "local":
            return "g, eps, g_p and the GSAM direction per process, averaged before the step (the authors' rule)"
        return "both passes all-reduced: one eps and one GSAM direction for all processes"

    # ------------------------------------------------------------------------------------------------ the step
    def train_step(self, ctx, x, y):
        result, passes = self._gsam_step(ctx, x, y)
        if not result.skipped:
            self._passes += passes
            self._steps += 1
        return result

    def _gsam_step(self, ctx, x, y) -> tuple[StepResult, int]:
        """(the step's result, its forward-backward passes over the batch)."""
        rho = self.schedule.at(regime_lr(ctx.optimizer))
        synced = self.perturbation == "global"
        local = not synced and ctx.dist.active
        buffers = list(ctx.model.buffers())
        start = [b.clone() for b in buffers]  # the state the second pass starts from as well
        loss, logits = accumulate_gradient(ctx, x, y, self.ghost_batch, sync=synced)
        if logits is None:
            return StepResult(loss, None, skipped=True), 0
        params = [p for p in ctx.model.parameters() if p.grad is not None]
        first = [p.grad for p in params]  # kept while the second pass writes new .grad tensors
        eps, grad_norm = self._ascent(params, first, rho)
        finite = bool(torch.isfinite(global_norm(eps)))
        if local:
            finite = ctx.dist.all_true(finite)  # every process takes the same branch
        if not finite:  # overflowed (fp16) or a zero gradient: a plain step, the scaler decides
            if local:
                ctx.dist.average_gradients(params)
            ctx.optimizer_step()
            return StepResult(loss, logits), 1
        if not gradient_at_perturbed_point(ctx, x, y, params, eps, buffers, start, ghost_batch=self.ghost_batch,
                                           sync=synced):
            return StepResult(loss, None, skipped=True), 0
        for p, g in zip(params, first):
            if p.grad is None:  # no gradient at w + eps (not reached by this batch there): g_p = 0
                p.grad = torch.zeros_like(g)
        surrogate_gap_direction(first, [p.grad for p in params], self.alpha)
        if local:
            ctx.dist.average_gradients(params)  # the authors' _sync_grad: the mean of the processes' directions
        self._record(ctx, grad_norm, rho)  # before the step: under fp16 the scale it divides by may change in it
        ctx.optimizer_step()
        return StepResult(loss, logits), 2

    def _ascent(self, params, grads, rho: float):
        """(eps, ||g||)."""
        if self.adaptive:
            return asam_perturbation(params, grads, rho, 0.0)
        return sam_perturbation(grads, rho)

    def _record(self, ctx, grad_norm: torch.Tensor, rho: float) -> None:
        grad_norm = ctx.precision.unscaled(grad_norm)
        self._sums += torch.stack([grad_norm.double(), grad_norm.new_ones((), dtype=torch.float64)])
        self._rho_sum += rho

    # ------------------------------------------------------------------------------------------------ records
    def epoch_metrics(self, run) -> dict:
        norm_sum, gsam_steps = self._sums.tolist()
        row = {"passes_per_step": self._passes / self._steps if self._steps else float("nan"),
               "gsam_rho": self._rho_sum / gsam_steps if gsam_steps else float("nan"),
               "gsam_grad_norm": norm_sum / gsam_steps if gsam_steps else float("nan")}
        self._sums.zero_()
        self._rho_sum, self._passes, self._steps = 0.0, 0, 0
        return row

    def state_dict(self) -> dict:
        return {"sums": self._sums.cpu(), "rho_sum": self._rho_sum, "passes": self._passes, "steps": self._steps,
                "lr_bounds": self.schedule.bounds}

    def load_state_dict(self, state: dict) -> None:
        self._sums.copy_(state["sums"])
        self._rho_sum, self._passes, self._steps = float(state["rho_sum"]), int(state["passes"]), int(state["steps"])
        stored = state.get("lr_bounds")
        if stored is not None and self.schedule.bounds is not None and tuple(stored) != self.schedule.bounds:
            self._log(f"step {self.name}: the regime's lr bounds over the run moved from {stored[0]:g}..{stored[1]:g} "
                      f"to {self.schedule.bounds[0]:g}..{self.schedule.bounds[1]:g} (the run's length changed): rho "
                      f"follows the new bounds from here")
