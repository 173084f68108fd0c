"""SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021): the gradient at w + eps applied at w.

    SAM   eps = rho g / ||g||
    ASAM  eps = rho T^2 g / ||T g||,   T = |w| + eta  (elementwise) on the adapted parameters, T = 1 on the rest

ASAM's adapted parameters (--asam-scope): `weights` (default) = those whose name contains "weight" (conv,
linear and norm weights), as the authors' code (SamsungLabs/ASAM) does, so biases get T = 1; `all` = every
parameter, the paper's formula read literally.

Under data parallelism (--sam-perturbation): `local` (default) computes eps on each process from its own
shard's gradient (the first pass runs without all-reduce), as the SAM paper and its authors' code do
("m-sharpness" with m = the per-process batch); the second pass all-reduces as usual, so every process
applies the mean of the perturbed gradients. `global` all-reduces the first pass: one eps for all.

g is the batch gradient at w (first pass). The second pass computes the gradient at w + eps; the
weights are then copied back to w exactly and the optimizer steps with that gradient. Buffers
(BatchNorm running statistics, online-norm state) advance once per batch, from the first pass only:
the second pass starts from the buffers the first pass started from (so online normalisation sees the
same statistics in both passes) and the first pass's buffers are put back after it. Both directions
are scale-invariant in g, so they are computed from the (possibly fp16-scaled) gradients as they are.
With --ghost-batch, both passes accumulate their gradient over the same chunks (ghost batch norm in both).
"""
from __future__ import annotations

import torch

from basinlab.engine.steps import StepResult, StepStrategy, accumulate_gradient, check_ghost_batch, describe_chunks
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


class SharpnessAwareStep(StepStrategy):
    """Two forward/backward passes per update: at w for the direction, at w + eps for the gradient."""

    def __init__(self, rho: float, adaptive: bool = False, eta: float = 0.01, *, ghost_batch: int | None = None,
                 lr_scale: str | None = None, asam_scope: str = "weights", perturbation: str = "local"):
        self.rho, self.adaptive, self.eta, self.asam_scope = float(rho), adaptive, float(eta), asam_scope
        self.perturbation = perturbation
        self.ghost_batch, self.lr_scale = ghost_batch, lr_scale
        self.name = "asam" if adaptive else "sam"
        self._norm_sum = None  # [sum of ||g||, steps] of the current epoch, on the device

    def setup(self, ctx, run) -> None:
        batch = run.batch_size
        check_ghost_batch(self.ghost_batch, batch)
        self._norm_sum = torch.zeros(2, dtype=torch.float64, device=run.device)
        extra = f", eta {self.eta:g}, T = |w| + eta on {self._scope_words()}" if self.adaptive else ""
        run.log(f"step {self.name}: rho {self.rho:g}{extra}; two passes per update, each a "
                f"{describe_chunks(self.ghost_batch, batch)}; buffers (BN running statistics, "
                "online-norm state) advance on the first pass only"
                + (f"; eps per process (--sam-perturbation {self.perturbation})"
                   if ctx.dist.world_size > 1 and self.perturbation == "local" else
                   "; one eps for all processes (--sam-perturbation global)"
                   if ctx.dist.world_size > 1 else ""))

    def lr_factor(self, run) -> float:
        return regime_lr_factor(run, self.lr_scale, self.ghost_batch)

    def train_step(self, ctx, x, y):
        buffers = list(ctx.model.buffers())
        before = [b.clone() for b in buffers]  # the state the second pass starts from as well
        loss, logits = accumulate_gradient(ctx, x, y, self.ghost_batch, sync=self.perturbation == "global")
        if logits is None:
            return StepResult(loss, None, skipped=True)
        named = [(n, p) for n, p in ctx.model.named_parameters() if p.grad is not None]
        params = [p for _, p in named]
        eps, grad_norm = self._perturbation(params, [n for n, _ in named])
        local = self.perturbation == "local" and ctx.dist.active
        finite = bool(torch.isfinite(global_norm(eps)))
        if local:
            finite = ctx.dist.all_true(finite)  # every process takes the same branch
        if not finite:
            if local:
                ctx.dist.average_gradients(params)  # the first pass kept its gradients local
            ctx.optimizer_step()  # overflowed (fp16) or zero gradient: a plain step, the scaler decides
            return StepResult(loss, logits)
        if not self._second_pass(ctx, x, y, params, eps, buffers, before):
            return StepResult(loss, None, skipped=True)
        self._record(ctx, grad_norm)  # before the step: under fp16 the scale it divides by may change in it
        ctx.optimizer_step()
        return StepResult(loss, logits)

    def _perturbation(self, params, names):
        grads = [p.grad for p in params]
        if self.adaptive:
            return asam_perturbation(params, grads, self.rho, self.eta, asam_adapted(names, self.asam_scope))
        return sam_perturbation(grads, self.rho)

    def _scope_words(self) -> str:
        return ("every parameter (--asam-scope all)" if self.asam_scope == "all"
                else "parameters named *weight* (the authors' code; biases T = 1)")

    def _second_pass(self, ctx, x, y, params, eps, buffers, before) -> bool:
        """Gradient at w + eps into .grad, from the buffers the first pass started with; then the weights
        go back to w and the buffers to their values after the first pass."""
        after_first = [b.clone() for b in buffers]
        clean = [p.detach().clone() for p in params]
        with torch.no_grad():
            torch._foreach_add_([p.detach() for p in params], eps)
            for buffer, value in zip(buffers, before):
                buffer.copy_(value)
        ctx.optimizer.zero_grad(set_to_none=True)
        try:
            _, logits = accumulate_gradient(ctx, x, y, self.ghost_batch)
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.detach() for p in params], clean)
                for buffer, value in zip(buffers, after_first):
                    buffer.copy_(value)
        return logits is not None

    def _record(self, ctx, grad_norm: torch.Tensor) -> None:
        grad_norm = ctx.precision.unscaled(grad_norm)  # the norm of the unscaled gradient
        self._norm_sum += torch.stack([grad_norm.double(), grad_norm.new_ones((), dtype=torch.float64)])

    def epoch_metrics(self, run) -> dict:
        total, steps = self._norm_sum.tolist()
        self._norm_sum.zero_()
        return {"sam_grad_norm": total / steps if steps else float("nan")}

    def state_dict(self) -> dict:
        return {"norm_sum": self._norm_sum.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if "norm_sum" in state:
            self._norm_sum.copy_(state["norm_sum"])
