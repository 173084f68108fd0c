"""LookSAM (Liu, Mai, Chen, Hsieh & You, "Towards Efficient and Scalable Sharpness-Aware Minimization", CVPR 2022,
arXiv:2203.02714): the paper's Algorithm 1, SAM's second pass on one step of K and a stored direction between.

    t counts this run's updates from 0; a step with t mod K == 0 is a SAM step:
        g    = grad L(w)                                          first pass
        g_s  = grad L(w + rho g/||g||)                            second pass
        g_v  = g_s - ||g_s|| cos(theta) g/||g||,   cos(theta) = g.g_s / (||g|| ||g_s||)      (stored)
        the optimizer steps with g_s
    every other step:
        g    = grad L(w)                                          the only pass
        the optimizer steps with g + alpha (||g|| / ||g_v||) g_v

So a K-step cycle runs K + 1 forward-backward passes: (2 + (K - 1)) / K per step (1.2 at K = 5). The vectors are
the whole model's (norms and dot product over every parameter with a gradient), as in Algorithm 1, not per layer
(the paper's layer-wise Look-LayerSAM is another method). K = 1 is SAM; alpha = 0 is SAM every K steps with plain
steps between. The optimizer (SGD, momentum, weight decay, Adam, ...) takes the direction as its gradient.

State (checkpointed; a resumed run continues bit-exactly, mid-cycle included): t; g_v (one float32 tensor per
parameter, the unscaled orthogonal component) and ||g_v||; the epoch's sums behind the results.csv columns.
Because t starts at 0 the first step is a SAM step and g_v exists before any step reuses it. g_v = 0 (g_s parallel
to g, the ratio undefined) adds nothing until the next SAM step.

- Buffers (BatchNorm running statistics, online-norm state) advance once per batch, from the first pass: the
  second pass starts from the buffers the first started from and the first pass's buffers are put back after it,
  as in basinlab's SAM.
- Ghost batches (--ghost-batch M): every pass accumulates over the same chunks of M examples; g, g_s, g_v are the
  whole batch's.
- Mixed precision: bf16 autocast changes nothing here (gradients are float32). Under fp16 the gradients are
  scaled by the GradScaler's S, which may change between steps (growth, or halving after an overflow). The
  ascent rho g/||g|| and the projection coefficient g.g_s/||g||^2 do not depend on S; g_v is stored divided by
  the S of its step, and the reuse term alpha ||g|| g_v/||g_v|| takes its scale from the current g alone, so a
  changed S between the SAM step and its reuses changes nothing. A non-finite first pass (overflow) makes a plain
  step (the scaler skips it) and keeps the stored g_v; a non-finite g_s keeps the stored g_v as well.
- Data parallelism: the ascent follows --sam-perturbation's rule (local: each process's eps from its own shard,
  the first pass without all-reduce, as basinlab's SAM; global: from the all-reduced g). g_v is always built from
  all-reduced gradients (g_s, and g averaged after the local eps is taken: one all-reduce more on SAM steps only),
  so every process stores the same g_v: the reuse steps apply one direction everywhere without another
  all-reduce, and rank 0's checkpoint holds every process's state, so a resume is exact. With one process the two
  rules are the same.
"""
from __future__ import annotations

import torch

from basinlab.engine.steps import StepResult, StepStrategy, accumulate_gradient, check_ghost_batch, describe_chunks
from basinlab.methods.flat.sam import global_norm, gradient_at_perturbed_point, sam_perturbation


def orthogonal_component(grad, sam_grad) -> list[torch.Tensor]:
    """g_v = g_s - (g.g_s / ||g||^2) g  (= g_s - ||g_s|| cos(theta) g/||g||): the part of g_s orthogonal to g."""
    dot = torch.stack([torch.dot(a.flatten(), b.flatten()) for a, b in zip(grad, sam_grad)]).sum()
    coefficient = dot / global_norm(grad) ** 2
    return torch._foreach_sub(sam_grad, torch._foreach_mul(grad, coefficient))


class LookSAMStep(StepStrategy):
    """SAM's two passes every K-th update; one pass plus the stored orthogonal component between."""

    name = "looksam"

    def __init__(self, rho: float, k: int = 5, alpha: float = 0.7, *, ghost_batch: int | None = None,
                 perturbation: str = "local"):
        self.rho, self.k, self.alpha = float(rho), int(k), float(alpha)
        self.ghost_batch, self.perturbation = ghost_batch, perturbation
        self.t = 0                     # updates so far: the next is a SAM step when t % k == 0
        self.gv: dict[str, torch.Tensor] | None = None
        self.gv_norm: torch.Tensor | None = None
        self.passes = [0, 0]           # [forward-backward passes, updates] of the current epoch
        self._norm_sum = None          # [sum of ||g||, steps with a finite ||g||] of the current epoch, on the device
        self._device = None

    # ------------------------------------------------------------------------------------ the run's frame
    def setup(self, ctx, run) -> None:
        check_ghost_batch(self.ghost_batch, run.batch_size)
        self._device = run.device
        self._norm_sum = torch.zeros(2, dtype=torch.float64, device=run.device)
        run.log(f"step looksam: rho {self.rho:g}, a SAM step (two passes) every {self.k} steps, one pass between "
                f"with alpha {self.alpha:g} times the stored orthogonal component: {self.expected_passes():.4g} "
                f"forward-backward passes per step; each pass a {describe_chunks(self.ghost_batch, run.batch_size)}; "
                "buffers (BN running statistics, online-norm state) advance on the first pass only"
                + self._processes_words(ctx.dist.world_size))

    def _processes_words(self, world_size: int) -> str:
        if world_size == 1:
            return ""
        ascent = ("eps per process from its own shard" if self.perturbation == "local"
                  else "one eps for all processes")
        return f"; {ascent} (--sam-perturbation {self.perturbation}), one g_v from all-reduced gradients"

    def expected_passes(self) -> float:
        """Forward-backward passes per update over whole cycles: (2 + (K - 1)) / K."""
        return (self.k + 1) / self.k

    # ------------------------------------------------------------------------------------ one update
    def train_step(self, ctx, x, y):
        sam_step = self.t % self.k == 0
        result, passes = (self._sam_step if sam_step else self._reuse_step)(ctx, x, y)
        if not result.skipped:  # a skipped batch is no update: the next batch takes its place in the cycle
            self.t += 1
            self.passes[0] += passes
            self.passes[1] += 1
        return result

    def _sam_step(self, ctx, x, y) -> tuple[StepResult, int]:
        buffers = list(ctx.model.buffers())
        before = [b.clone() for b in buffers]  # the state the second pass starts from as well
        loss, logits = accumulate_gradient(ctx, x, y, self.ghost_batch, sync=self.perturbation == "global")
        if logits is None:
            return StepResult(loss, None, skipped=True), 1
        named = [(n, p) for n, p in ctx.model.named_parameters() if p.grad is not None]
        params = [p for _, p in named]
        eps, _ = sam_perturbation([p.grad for p in params], self.rho)
        local = self.perturbation == "local" and ctx.dist.active
        finite = bool(torch.isfinite(global_norm(eps)))
        if local:
            finite = ctx.dist.all_true(finite)       # every process takes the same branch
            ctx.dist.average_gradients(params)       # g_v and the report use the all-reduced g
        grad = [p.grad.clone() for p in params]
        grad_norm = global_norm(grad)
        if not finite:
            self._record(ctx, grad_norm)
            ctx.optimizer_step()  # overflowed (fp16) or zero gradient: a plain step, the scaler decides
            return StepResult(loss, logits), 1
        if not self._second_pass(ctx, x, y, params, eps, buffers, before):
            return StepResult(loss, None, skipped=True), 2
        self._store_orthogonal(ctx, [n for n, _ in named], grad, [p.grad for p in params])
        self._record(ctx, grad_norm)  # before the step: under fp16 the scale it divides by may change in it
        ctx.optimizer_step()
        return StepResult(loss, logits), 2

    def _second_pass(self, ctx, x, y, params, eps, buffers, before) -> bool:
        """g_s into .grad (all-reduced), from the buffers the first pass started with (see SAM's)."""
        return gradient_at_perturbed_point(ctx, x, y, params, eps, buffers, before, ghost_batch=self.ghost_batch)

    def _store_orthogonal(self, ctx, names, grad, sam_grad) -> None:
        """g_v from g and g_s (the same on every process: both all-reduced), stored unscaled; a non-finite g_s
        (fp16 overflow, a step the scaler skips) keeps the g_v stored before."""
        missing = [i for i, g in enumerate(sam_grad) if g is None]  # no gradient at w + eps: zero there
        sam_grad = [torch.zeros_like(grad[i]) if i in missing else g for i, g in enumerate(sam_grad)]
        with torch.no_grad():
            gv = orthogonal_component(grad, sam_grad)
            norm = global_norm(gv)
            if not bool(torch.isfinite(norm)):
                return
            if float(norm) == 0.0:
                self.gv, self.gv_norm = None, None
                return
            scale = ctx.precision.unscaled(torch.ones((), device=norm.device))  # 1/S under fp16, else 1
            self.gv, self.gv_norm = dict(zip(names, torch._foreach_mul(gv, scale))), norm * scale

    def _reuse_step(self, ctx, x, y) -> tuple[StepResult, int]:
        loss, logits = accumulate_gradient(ctx, x, y, self.ghost_batch)
        if logits is None:
            return StepResult(loss, None, skipped=True), 1
        named = [(n, p) for n, p in ctx.model.named_parameters() if p.grad is not None]
        grad_norm = global_norm([p.grad for _, p in named])
        if self.gv is not None:
            with torch.no_grad():  # g + alpha ||g|| g_v/||g_v||: the scale (fp16's S) is the current g's
                factor = self.alpha * grad_norm / self.gv_norm
                pairs = [(p.grad, self.gv[n]) for n, p in named if n in self.gv]
                torch._foreach_add_([g for g, _ in pairs], torch._foreach_mul([v for _, v in pairs], factor))
        self._record(ctx, grad_norm)
        ctx.optimizer_step()
        return StepResult(loss, logits), 1

    # ------------------------------------------------------------------------------------ records and state
    def _record(self, ctx, grad_norm: torch.Tensor) -> None:
        """||g|| of this update's first pass, unscaled; a non-finite one (fp16 overflow) is left out."""
        grad_norm = ctx.precision.unscaled(grad_norm).double()
        finite = torch.isfinite(grad_norm)
        self._norm_sum += torch.stack([torch.where(finite, grad_norm, 0.0), finite.double()])

    def epoch_metrics(self, run) -> dict:
        passes, updates = self.passes
        total, counted = self._norm_sum.tolist()
        self.passes = [0, 0]
        self._norm_sum.zero_()
        per_step = passes / updates if updates else float("nan")
        run.log(f"looksam epoch {run.epoch + 1}: {passes} forward-backward passes for {updates} updates "
                f"({per_step:.4g} per step; {self.expected_passes():.4g} over whole cycles of {self.k})")
        return {"passes_per_step": per_step, "looksam_grad_norm": total / counted if counted else float("nan")}

    def state_dict(self) -> dict:
        gv = None if self.gv is None else {n: v.cpu() for n, v in self.gv.items()}
        return {"t": self.t, "gv": gv, "gv_norm": None if self.gv_norm is None else self.gv_norm.cpu(),
                "passes": list(self.passes), "norm_sum": self._norm_sum.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.t, self.passes = int(state["t"]), [int(v) for v in state["passes"]]
        self._norm_sum.copy_(state["norm_sum"])
        if state["gv"] is None:
            self.gv, self.gv_norm = None, None
        else:
            self.gv = {n: v.to(self._device) for n, v in state["gv"].items()}
            self.gv_norm = state["gv_norm"].to(self._device)
