"""Momentum-SAM (Becker, Altrock & Risse 2024): SAM's ascent taken along the optimizer's momentum, one pass per step.

State semantics, up front: between steps (for validation, checkpoints, every callback and the optimizer's
before-step seam) the model holds the unperturbed weights w. The perturbation lives only inside `train_step`,
around the forward-backward pass; the weights are copied back to w exactly before the optimizer steps. (The
authors' optimizer keeps the weights at the perturbed point between steps and moves them back only for
evaluation; the updates are the same.)

Per update, with v the SGD momentum buffer (torch.optim.SGD's 'momentum_buffer', lr-free: v <- mu v + d):

    w~    = w - rho v / (||v|| + 1e-12)             the perturbed point (w itself before the first step: no v yet)
    g     = grad L(w~)                             one forward-backward pass, at w~
    d     = g + wd w~                              L2 weight decay taken at w~, as the authors' step adds it to
                                                   the gradient while the weights are perturbed
    v     <- mu v + d                              torch.optim.SGD's step at w (lr, momentum, clipping as configured)
    w     <- w - lr v

as the authors' optimizer/msam.py (MarlonBecker/MSAM) computes it: the perturbation is along -v (the descent
direction), of length rho whatever the lr, over the global norm of every momentum buffer; the first step (no
momentum yet) is a plain step at w. torch.optim.SGD adds wd w to the gradient; the step adds -wd (w - w~) to
.grad just before it (after unscaling and clipping, where the authors' clipping also acts on g alone), so the
buffer and the update are the authors'. Nesterov and dampening are not part of the authors' rule and are refused,
as are optimizers other than SGD and momentum 0 (no direction to perturb along).

- Buffers (BatchNorm running statistics, online-norm state) advance on the one pass, at w~, as in the authors'
  training loop.
- --ghost-batch: the pass accumulates over chunks of the batch (each normalised on its own).
- fp16: one pass, so the scaler is the plain step's: the gradients are unscaled before the weight-decay term is
  added, and an overflowed step is skipped whole (weights w, momentum unchanged: the next step perturbs the same).
- Data parallelism: the gradients are all-reduced before every step, so every process holds the same momentum
  and therefore the same perturbation: Momentum-SAM's perturbation is global by construction, with no extra
  communication (--sam-perturbation does not apply).
- Resume: the perturbation is a function of the momentum buffer (in the optimizer's checkpointed state) and rho;
  the epoch's pass count for results.csv is in state_dict, so a run resumed mid-epoch is bit-exact.

results.csv: `passes_per_step` (forward-backward passes over the batch per optimizer step: 1.0) and
`msam_momentum_norm` (the mean ||v|| the epoch's perturbations were scaled by; steps without momentum yet count
in neither).
"""
from __future__ import annotations

import torch

from basinlab.engine.steps import StepResult, StepStrategy, accumulate_gradient, check_ghost_batch, describe_chunks
from basinlab.errors import ConfigError
from basinlab.optim.factory import optimizer_spec

ALLOWED = ("SGD with momentum > 0, no Nesterov, no dampening (the authors' MSAM optimizer; their AdamW variant "
           "is not built here)")


def optimizer_problem(name: str, settings: dict) -> str | None:
    """Why the optimizer `name` with these param-group `settings` cannot carry Momentum-SAM, or None."""
    spec = optimizer_spec(name)
    if spec.cls is not torch.optim.SGD:
        return f"the optimizer is {spec.name}"
    settings = {**settings, **spec.fixed}
    if not float(settings.get("momentum") or 0.0) > 0:
        return "its momentum is 0: there is no momentum to perturb along"
    if settings.get("nesterov"):
        return "it uses Nesterov momentum"
    if float(settings.get("dampening") or 0.0) != 0:
        return f"its dampening is {settings['dampening']:g}"
    return None


def refuse(problem: str, where: str) -> ConfigError:
    return ConfigError(f"--msam perturbs along SGD's momentum buffer, and {where} {problem}; allowed: {ALLOWED}: "
                       f"set --optimizer SGD and --momentum (the authors use 0.9), or drop --msam")


def check_regime(run) -> None:
    """Every optimizer setting the run's regime reaches, at every step of its epochs, must be one Momentum-SAM can
    use."""
    seen = set()
    for epoch, step, settings in run.regime_settings():
        name = settings.pop("optimizer")
        key = (name, settings.get("momentum"), settings.get("nesterov"), settings.get("dampening"))
        if key in seen:
            continue
        seen.add(key)
        problem = optimizer_problem(name, settings)
        if problem:
            raise refuse(problem, f"the run's regime at epoch {epoch + 1}, step {step + 1} gives {name}:")


def check_optimizer(optimizer) -> None:
    """The optimizer in use (the regime may replace it): the same rule, on its param groups."""
    if type(optimizer) is not torch.optim.SGD:
        raise refuse(f"is {type(optimizer).__name__}", "the optimizer in use")
    for group in optimizer.param_groups:
        problem = optimizer_problem("SGD", group)
        if problem:
            raise refuse(problem, "the optimizer in use (SGD):")


def momentum_perturbation(optimizer, rho: float):
    """(weights, e, ||v||): the parameters with a momentum buffer, e = rho v / (||v|| + 1e-12) for each (the
    authors' normalisation, 0 for v = 0), and the global norm; ([], [], None) before the first step."""
    params, buffers = [], []
    for group in optimizer.param_groups:
        for p in group["params"]:
            buffer = optimizer.state.get(p, {}).get("momentum_buffer")
            if buffer is not None:
                params.append(p)
                buffers.append(buffer)
    if not buffers:
        return [], [], None
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(buffers)))
    return params, torch._foreach_mul(buffers, rho * (1.0 / (norm + 1e-12))), norm


class MomentumSAMStep(StepStrategy):
    """One forward-backward pass per update, at w - rho v/||v||; the SGD step at w (see the module docstring)."""

    name = "msam"

    def __init__(self, rho: float, *, ghost_batch: int | None = None):
        self.rho, self.ghost_batch = float(rho), ghost_batch
        self._passes = torch.zeros(2, dtype=torch.float64)  # [forward-backward passes, optimizer steps] of the epoch
        self._norm_sum = None  # [sum of ||v||, perturbed steps] on the device (no sync per step)

    def setup(self, ctx, run) -> None:
        check_ghost_batch(self.ghost_batch, run.batch_size)
        check_regime(run)  # first: it names where in the run the regime leaves SGD
        check_optimizer(ctx.optimizer)
        self._norm_sum = torch.zeros(2, dtype=torch.float64, device=run.device)
        batch = run.batch_size // ctx.dist.world_size  # each process's rows of the (global) batch
        run.log(f"step msam: rho {self.rho:g}; one pass per update at w - rho v/||v|| (v: SGD's momentum buffer; "
                f"weight decay taken there, the step at w), a {describe_chunks(self.ghost_batch, batch)}"
                + (" per process; the momentum is the same on every process, so the perturbation is global"
                   if ctx.dist.world_size > 1 else ""))

    def train_step(self, ctx, x, y):
        optimizer = ctx.optimizer
        check_optimizer(optimizer)
        params, eps, norm = momentum_perturbation(optimizer, self.rho)
        weights = [p.detach() for p in params]
        clean = [w.clone() for w in weights]
        if weights:  # none before the first step: a plain step at w
            with torch.no_grad():
                torch._foreach_sub_(weights, eps)
        try:
            loss, logits = accumulate_gradient(ctx, x, y, self.ghost_batch)
        finally:
            if weights:
                with torch.no_grad():
                    torch._foreach_copy_(weights, clean)  # w again, bit for bit
        if logits is None:
            return StepResult(loss, None, skipped=True)
        ctx.optimizer_step(self._step_with_decay_at_perturbed_point(optimizer, params, eps) if eps else None)
        self._passes += 1.0
        if norm is not None:
            self._norm_sum += torch.stack([norm.detach().double(), norm.new_ones((), dtype=torch.float64)])
        return StepResult(loss, logits)

    @staticmethod
    def _step_with_decay_at_perturbed_point(optimizer, params, eps):
        """The optimizer's step after adding -wd e to .grad (unscaled by then): torch's SGD adds wd w, the authors'
        d = g + wd w~ = g + wd w - wd e. Runs only where the step does (fp16: not after an overflow)."""
        real_step = optimizer.step  # the class's step: the fp16 path shadows it while it runs this one
        perturbation = dict(zip(params, eps))

        def step():
            with torch.no_grad():
                for group in optimizer.param_groups:
                    decay = group["weight_decay"]
                    for p in group["params"] if decay else ():
                        e = perturbation.get(p)
                        if e is not None and p.grad is not None:
                            p.grad.add_(e, alpha=-decay)
            real_step()
        return step

    def epoch_metrics(self, run) -> dict:
        passes, updates = self._passes.tolist()
        total, perturbed = self._norm_sum.tolist()
        self._passes.zero_()
        self._norm_sum.zero_()
        return {"passes_per_step": passes / updates if updates else float("nan"),
                "msam_momentum_norm": total / perturbed if perturbed else float("nan")}

    def state_dict(self) -> dict:
        return {"passes": self._passes.clone(), "norm_sum": self._norm_sum.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self._passes.copy_(state["passes"])
        self._norm_sum.copy_(state["norm_sum"])
