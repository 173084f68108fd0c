"""SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021): the gradient at w + eps applied at w.

    SAM   eps = rho g / ||g||
    ASAM  eps = rho T^2 g / ||T g||,   T = |w| + eta  (elementwise) on the adapted parameters, T = 1 on the rest

ASAM's adapted parameters (--asam-scope): `weights` (default) = those whose name contains "weight" (conv,
linear and norm weights), as the authors' code (SamsungLabs/ASAM) does, so biases get T = 1; `all` = every
parameter, the paper's formula read literally.

m-sharpness (--sam-m M, Andriushchenko & Flammarion 2022): the batch of B is cut into micro-batches of M
examples (the last may be shorter); micro-batch i gets its own eps_i from its own gradient g_i at w, its
gradient is taken at its own w + eps_i, and the update applies sum_i (n_i / B) grad L_i(w + eps_i) at w. Each
micro-batch is forwarded on its own (BatchNorm normalises over it, as in the authors' gradient accumulation);
with --ghost-batch G (M a multiple of G) both passes of a micro-batch run over its chunks of G. M >= the batch
is SAM as it is (one micro-batch: the same code path, the same bits). ASAM's T = |w| + eta is the same for
every micro-batch (w does not move within a step); its eps_i is rho T^2 g_i / ||T g_i||.

--sam-interval K: the SAM/ASAM step on optimizer steps 0, K, 2K, ... of the run (the first included), counted by
the run's global step (so a resumed run keeps the rhythm); the steps between are exactly the plain step
(engine PlainStep with the same --ghost-batch). results.csv's `passes_per_step` is the epoch's forward-backward
passes over the batch per optimizer step: 2 for a SAM step, 1 for a plain one or a fallback, so (K + 1) / K
on average; batches skipped for a non-finite loss count in neither.

Under data parallelism (--sam-perturbation): `local` (default) computes eps on each process from its own
shard's gradient (the first pass runs without all-reduce), as the SAM paper and its authors' code do
("m-sharpness" with m = the per-process batch); the second pass all-reduces as usual, so every process
applies the mean of the perturbed gradients. `global` all-reduces the first pass: one eps for all. With
--sam-m each process cuts its own shard into micro-batches of M (M must divide the per-process batch, so
they are the micro-batches of a single-process run) and runs both passes of each without all-reduce; the
weighted sum is averaged over the processes once, before the step. --sam-m with `global` is refused.

g is the batch gradient at w (first pass). The second pass computes the gradient at w + eps; the
weights are then copied back to w exactly and the optimizer steps with that gradient. Buffers
(BatchNorm running statistics, online-norm state) advance once per chunk, from the first passes only:
each second pass starts from the buffers its first pass started from (so online normalisation sees the
same statistics in both passes) and the first pass's buffers are put back after it. Both directions
are scale-invariant in g, so they are computed from the (possibly fp16-scaled) gradients as they are;
a non-finite direction (fp16 overflow, zero gradient) falls back to the first pass's gradient for that
batch (or micro-batch), and the scaler then decides.
"""
from __future__ import annotations

import torch

from basinlab.engine.distributed import summed_over_processes
from basinlab.engine.steps import (
    PlainStep,
    StepResult,
    StepStrategy,
    accumulate_gradient,
    check_ghost_batch,
    describe_chunks,
)
from basinlab.errors import ConfigError
from basinlab.methods.flat.chunks import regime_lr_factor


def global_norm(tensors) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors))) if tensors else torch.zeros(())


def sam_perturbation(grads, rho: float) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(eps = rho g / ||g||, ||g||) for the list of gradients g."""
    norm = global_norm(grads)
    return torch._foreach_mul(grads, rho / norm), norm


def asam_perturbation(params, grads, rho: float, eta: float,
                      adapted: list[bool] | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(eps = rho T^2 g / ||T g||, ||g||) with T = |w| + eta where `adapted` (default: every parameter),
    else T = 1."""
    adapted = [True] * len(params) if adapted is None else adapted
    chosen = [i for i, flag in enumerate(adapted) if flag]
    scale = torch._foreach_abs([params[i].detach() for i in chosen])
    torch._foreach_add_(scale, eta)
    scaled = list(grads)
    for i, t in zip(chosen, scale):
        scaled[i] = t * grads[i]                         # T g
    norm = global_norm(scaled)
    for i, t in zip(chosen, scale):
        scaled[i] = scaled[i] * t                        # T^2 g
    return torch._foreach_mul(scaled, rho / norm), global_norm(grads)


def asam_adapted(names: list[str], scope: str) -> list[bool]:
    """Which parameters ASAM scales by T = |w| + eta: the authors' `'weight' in name`, or all."""
    return [scope == "all" or "weight" in name for name in names]


def gradient_at_perturbed_point(ctx, x, y, params, eps, buffers, start, *, ghost_batch: int | None = None,
                                sync: bool = True, clean=None) -> bool:
    """The gradient at w + eps into .grad (the first pass's .grad tensors are let go, not overwritten), the pass
    starting from the buffers `start` (their values before the first pass); after it, whatever happened, the
    weights are w again bit for bit (`clean`, copied here unless given) and the buffers what the first pass left.
    False where the loss was not finite (the batch is skipped). The second pass of SAM, ASAM, GSAM and LookSAM."""
    weights = [p.detach() for p in params]
    after_first = [b.clone() for b in buffers]
    clean = [w.clone() for w in weights] if clean is None else clean
    with torch.no_grad():
        torch._foreach_add_(weights, eps)
        for buffer, value in zip(buffers, start):
            buffer.copy_(value)
    ctx.optimizer.zero_grad(set_to_none=True)
    try:
        _, logits = accumulate_gradient(ctx, x, y, ghost_batch, sync=sync)
    finally:
        with torch.no_grad():
            torch._foreach_copy_(weights, clean)
            for buffer, value in zip(buffers, after_first):
                buffer.copy_(value)
    return logits is not None


def check_micro_batch(m: int | None, batch: int, world_size: int) -> None:
    """--sam-m against the (per-process) batch; its relation to --ghost-batch is checked with the config."""
    if m is None:
        return
    if m > batch:
        where = f"the per-process batch {batch}" if world_size > 1 else f"the batch size {batch}"
        raise ConfigError(f"--sam-m {m} is larger than {where}; allowed: 1 to {batch} (equal to it is plain SAM)")
    if world_size > 1 and batch % m:
        raise ConfigError(f"--sam-m {m} must divide the per-process batch {batch} ({world_size} processes) so that "
                          f"each process's micro-batches are those of a single-process run")


def take_gradients(total: dict, params, weight: float) -> None:
    """total[p] += weight * p.grad for each of `params`, then .grad cleared for the next micro-batch."""
    for p in params:
        if p in total:
            total[p].add_(p.grad, alpha=weight)
        else:
            total[p] = p.grad if weight == 1.0 else p.grad.mul_(weight)  # the tensor is ours once .grad is cleared
        p.grad = None


class SharpnessAwareStep(StepStrategy):
    """Two forward/backward passes per update: at w for the direction, at w + eps for the gradient."""

    def __init__(self, rho: float, adaptive: bool = False, eta: float = 0.01, *, ghost_batch: int | None = None,
                 lr_scale: str | None = None, asam_scope: str = "weights", perturbation: str = "local",
                 m: int | None = None, interval: int = 1):
        self.rho, self.adaptive, self.eta, self.asam_scope = float(rho), adaptive, float(eta), asam_scope
        self.perturbation = perturbation
        self.ghost_batch, self.lr_scale = ghost_batch, lr_scale
        self.m, self.interval = m, int(interval)
        self.name = "asam" if adaptive else "sam"
        self._plain = PlainStep(ghost_batch)  # the steps between SAM steps under --sam-interval
        self._norm_sum = None  # [sum of ||g||, SAM steps] of the current epoch, on the device
        self._passes = torch.zeros(2, dtype=torch.float64)  # [forward-backward passes, optimizer steps] of the epoch

    def setup(self, ctx, run) -> None:
        check_ghost_batch(self.ghost_batch, run.batch_size)
        batch = run.batch_size // ctx.dist.world_size  # each process's rows of the (global) batch
        check_micro_batch(self.m, batch, ctx.dist.world_size)
        self._norm_sum = torch.zeros(2, dtype=torch.float64, device=run.device)
        extra = f", eta {self.eta:g}, T = |w| + eta on {self._scope_words()}" if self.adaptive else ""
        run.log(f"step {self.name}: rho {self.rho:g}{extra}; two passes per update, each a "
                f"{describe_chunks(self.ghost_batch, batch)}"
                f"{' per process' if ctx.dist.world_size > 1 else ''}; buffers (BN running statistics, "
                "online-norm state) advance on the first pass only"
                + self._micro_batch_words(batch) + self._interval_words()
                + (f"; eps per process (--sam-perturbation {self.perturbation})"
                   if ctx.dist.world_size > 1 and self.perturbation == "local" else
                   "; one eps for all processes (--sam-perturbation global)"
                   if ctx.dist.world_size > 1 else ""))

    def lr_factor(self, run) -> float:
        return regime_lr_factor(run, self.lr_scale, self.ghost_batch)

    def train_step(self, ctx, x, y):
        if ctx.updates % self.interval:
            result, passes = self._plain.train_step(ctx, x, y), 1.0
        elif self.m is not None and self.m < x.shape[0]:
            result, passes = self._micro_batch_step(ctx, x, y, self.m)
        else:
            result, passes = self._batch_step(ctx, x, y)
        if not result.skipped:
            self._passes += torch.tensor([passes, 1.0], dtype=torch.float64)
        return result

    def _batch_step(self, ctx, x, y) -> tuple[StepResult, float]:
        """SAM/ASAM with one eps for the batch (n-SAM); (result, passes over the batch)."""
        buffers = list(ctx.model.buffers())
        before = [b.clone() for b in buffers]  # the state the second pass starts from as well
        loss, logits = accumulate_gradient(ctx, x, y, self.ghost_batch, sync=self.perturbation == "global")
        if logits is None:
            return StepResult(loss, None, skipped=True), 0.0
        params, eps, grad_norm = self._direction(ctx)
        local = self.perturbation == "local" and ctx.dist.active
        finite = self._finite(ctx, eps)
        if not finite:
            if local:
                ctx.dist.average_gradients(params)  # the first pass kept its gradients local
            ctx.optimizer_step()  # overflowed (fp16) or zero gradient: a plain step, the scaler decides
            return StepResult(loss, logits), 1.0
        if not self._second_pass(ctx, x, y, params, eps, buffers, before):
            return StepResult(loss, None, skipped=True), 0.0
        self._record(ctx, grad_norm)  # before the step: under fp16 the scale it divides by may change in it
        ctx.optimizer_step()
        return StepResult(loss, logits), 2.0

    def _micro_batch_step(self, ctx, x, y, m: int) -> tuple[StepResult, float]:
        """m-SAM: each micro-batch's gradient at its own w + eps_i, weighted by its size; both passes of every
        micro-batch stay local (no all-reduce), the sum is averaged over the processes once."""
        buffers = list(ctx.model.buffers())
        clean = {}  # the weights at w, copied once per step (each second pass returns to them)
        total, losses, outputs, norms, second = {}, [], [], [], 0.0
        for xm, ym in zip(x.split(m), y.split(m)):
            weight = xm.shape[0] / x.shape[0]
            before = [b.clone() for b in buffers]
            loss, logits = accumulate_gradient(ctx, xm, ym, self.ghost_batch, sync=False)
            if logits is None:
                return StepResult(loss, None, skipped=True), 0.0
            losses.append(loss * weight)
            outputs.append(logits)
            params, eps, grad_norm = self._direction(ctx)
            for p in params:
                if p not in clean:
                    clean[p] = p.detach().clone()
            if self._finite(ctx, eps):  # else this micro-batch contributes its gradient at w
                if not self._second_pass(ctx, xm, ym, params, eps, buffers, before,
                                         clean=[clean[p] for p in params], sync=False):
                    return StepResult(loss, None, skipped=True), 0.0
                norms.append(grad_norm * weight)
                second += weight
            take_gradients(total, params, weight)
        for p, grad in total.items():
            p.grad = grad
        ctx.dist.average_gradients(list(total))
        if len(norms) == len(losses):
            self._record(ctx, torch.stack(norms).sum())
        ctx.optimizer_step()
        return StepResult(torch.stack(losses).sum(), torch.cat(outputs)), 1.0 + second

    def _direction(self, ctx):
        """(parameters with a gradient, their eps, ||g||) from the gradients in .grad."""
        named = [(n, p) for n, p in ctx.model.named_parameters() if p.grad is not None]
        params = [p for _, p in named]
        grads = [p.grad for p in params]
        if self.adaptive:
            eps, norm = asam_perturbation(params, grads, self.rho, self.eta,
                                          asam_adapted([n for n, _ in named], self.asam_scope))
        else:
            eps, norm = sam_perturbation(grads, self.rho)
        return params, eps, norm

    def _finite(self, ctx, eps) -> bool:
        finite = bool(torch.isfinite(global_norm(eps)))
        if ctx.dist.active and (self.perturbation == "local" or self.m is not None):
            finite = ctx.dist.all_true(finite)  # every process takes the same branch
        return finite

    def _scope_words(self) -> str:
        return ("every parameter (--asam-scope all)" if self.asam_scope == "all"
                else "parameters named *weight* (the authors' code; biases T = 1)")

    def _micro_batch_words(self, batch: int) -> str:
        if self.m is None or self.m >= batch:
            return ""
        return (f"; m-sharpness: one eps per micro-batch of {self.m} ({-(-batch // self.m)} per batch of {batch}), "
                f"each micro-batch's gradient at its own w + eps, averaged; each micro-batch forwarded on its own")

    def _interval_words(self) -> str:
        if self.interval == 1:
            return ""
        return (f"; a {self.name.upper()} step every {self.interval} optimizer steps (the first included), plain "
                f"steps between: {(self.interval + 1) / self.interval:g} passes per step on average")

    def _second_pass(self, ctx, x, y, params, eps, buffers, before, *, clean=None, sync: bool = True) -> bool:
        return gradient_at_perturbed_point(ctx, x, y, params, eps, buffers, before, ghost_batch=self.ghost_batch,
                                           sync=sync, clean=clean)

    def _record(self, ctx, grad_norm: torch.Tensor) -> None:
        grad_norm = ctx.precision.unscaled(grad_norm)  # the norm of the unscaled gradient
        self._norm_sum += torch.stack([grad_norm.double(), grad_norm.new_ones((), dtype=torch.float64)])

    def epoch_metrics(self, run) -> dict:
        total, steps = summed_over_processes(self._norm_sum).tolist()   # the mean over every process's steps
        passes, updates = self._passes.tolist()
        self._norm_sum.zero_()
        self._passes.zero_()
        return {"sam_grad_norm": total / steps if steps else float("nan"),
                "passes_per_step": passes / updates if updates else float("nan")}

    def state_dict(self) -> dict:
        return {"norm_sum": self._norm_sum.cpu(), "passes": self._passes.clone()}

    def load_state_dict(self, state: dict) -> None:
        if "norm_sum" in state:
            self._norm_sum.copy_(state["norm_sum"])
        if "passes" in state:  # checkpoints before the column: the epoch's count restarts at the resume
            self._passes.copy_(state["passes"])
