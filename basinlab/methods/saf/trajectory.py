"""SAF and MESA (Du, Zhou, Feng, Tan & Zhou, "Sharpness-Aware Training for Free", NeurIPS 2022, arXiv:2205.14083),
as the authors' SAF_train.py and MESA_train.py compute them (github.com/AngusDujw/SAF, commit 6e856004c59f):

    loss(w) = L(w) + lambda * tau^2 * mean_i KL( softmax(r_i / tau) || softmax(f(x_i; w) / tau) )

with L the run's criterion (label smoothing included), f the outputs of the training forward and r_i a detached
reference: SAF's r_i is the output example i had in the training forward E epochs ago (--saf-horizon E; the store
of store.py, written with every training forward, this one's included); MESA's r_i is the output of an exponential
moving average of the model (--mesa-decay B; the authors' timm ModelEmaV2: every state_dict entry, parameters and
buffers, becomes B e + (1 - B) w after every optimizer step, from a copy of the model made before the first step;
its forward runs in eval mode, so it uses its own averaged BatchNorm statistics and never touches the trained
model's). The term applies in the epochs after the authors' --kl_start_epoch (5 by default: from the 7th epoch on,
0-based epoch > 5) and, for SAF, once epoch E ago exists; before, the step is a plain one (SAF still stores).

One forward-backward per update; MESA adds one forward of the EMA model without gradients on the steps where the
term applies. State (checkpointed; a resumed run continues bit-exactly mid-epoch): SAF's store, MESA's EMA model,
the epoch's counts behind the results.csv columns.

- Ghost batches (--ghost-batch M): each chunk's loss (its criterion and its trajectory term) is weighted by its
  share of the batch, so the gradient is the batch's; SAF stores each chunk's outputs (normalised on their own).
- Mixed precision: the term is computed in float32 from the logits; fp16's loss scale multiplies the whole loss.
  The EMA updates after every step, a step the GradScaler skips included, as the authors' does.
- Data parallelism: every process's outputs are gathered into every process's store (one all-gather of the batch's
  outputs per step), so each store is the one a single process would hold and rank 0's checkpoint holds every
  process's. MESA's EMA parameters are the same on every process (the parameters are); its buffers average each
  process's own BatchNorm statistics, as the model's buffers are per process.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from basinlab.engine.distributed import summed_over_processes
from basinlab.engine.steps import StepResult, StepStrategy, accumulate_gradient, check_ghost_batch, describe_chunks
from basinlab.methods.saf.store import OutputStore, check_store_fits, local_processes

TRAJECTORY_AFTER_EPOCH = 5  # the authors' --kl_start_epoch: the term applies where epoch (0-based) > 5


def trajectory_loss(logits: torch.Tensor, reference: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * mean over rows of KL(softmax(reference / tau) || softmax(logits / tau)), in float32; the reference
    carries no gradient (the authors' F.kl_div(F.softmax(out / T).log(), F.softmax(ref / T)).sum(-1).mean() T^2)."""
    log_q = F.log_softmax(logits.float() / tau, dim=-1)
    p = F.softmax(reference.detach().float() / tau, dim=-1)
    return F.kl_div(log_q, p, reduction="none").sum(-1).mean() * tau ** 2


class TrajectoryStep(StepStrategy):
    """The step SAF and MESA share: the criterion plus lambda times the trajectory term, one forward-backward."""

    name = "trajectory"

    def __init__(self, weight: float, tau: float, *, ghost_batch: int | None = None,
                 after_epoch: int = TRAJECTORY_AFTER_EPOCH):
        self.weight, self.tau, self.ghost_batch, self.after_epoch = float(weight), float(tau), ghost_batch, after_epoch
        self.counts = {"passes": 0, "updates": 0, "ema_forwards": 0}  # of the current epoch
        self._term_sum = None  # [sum of the trajectory term, steps it applied] of the current epoch, on the device
        self._run = None

    # ------------------------------------------------------------------------------------ the run's frame
    def setup(self, ctx, run) -> None:
        check_ghost_batch(self.ghost_batch, run.batch_size)
        self._run = run
        self._term_sum = torch.zeros(2, dtype=torch.float64, device=run.device)

    def applies(self, epoch: int) -> bool:
        return epoch > self.after_epoch

    def first_epoch(self) -> int:
        """The first epoch (0-based) in which the term applies."""
        return max(self.after_epoch + 1, 0)

    def _words(self, run) -> str:
        return (f"loss + {self.weight:g} x {self.tau:g}^2 x KL at temperature {self.tau:g}, from epoch "
                f"{self.first_epoch() + 1} on (plain steps before); each step a "
                f"{describe_chunks(self.ghost_batch, run.batch_size)}")

    # ------------------------------------------------------------------------------------ one update
    def train_step(self, ctx, x, y):
        epoch = self._run.epoch
        references = self.references(ctx, x, epoch) if self.applies(epoch) else None
        done = self._forward_backward(ctx, x, y, references)
        if done is None:
            return StepResult(self._skipped_loss, None, skipped=True)
        loss, term, logits = done
        self.after_backward(ctx, epoch, logits)
        ctx.optimizer_step()
        self.after_update(ctx)
        self.counts["passes"] += 1
        self.counts["updates"] += 1
        if term is not None:
            self._term_sum += torch.stack([term.double(), torch.ones((), dtype=torch.float64, device=term.device)])
        return StepResult(loss, logits)

    def _forward_backward(self, ctx, x, y, references):
        """The loss's gradient into .grad over the chunks (the engine's accumulate_gradient, the term added to
        each chunk's loss); (criterion, trajectory term or None, logits), or None when the loss is not finite
        (the gradients zeroed, the batch skipped)."""
        terms, extra_loss = [], None
        if references is not None:
            parts = references.split(self.ghost_batch or x.shape[0])

            def extra_loss(index, logits):
                term = trajectory_loss(logits, parts[index], self.tau)
                terms.append(term.detach() * (logits.shape[0] / x.shape[0]))
                return self.weight * term
        loss, logits = accumulate_gradient(ctx, x, y, self.ghost_batch, extra_loss=extra_loss)
        if logits is None:
            self._skipped_loss = loss
            return None
        return loss, (torch.stack(terms).sum() if terms else None), logits

    # ------------------------------------------------------------------------------------ what SAF, MESA add
    def references(self, ctx, x, epoch: int) -> torch.Tensor:
        raise NotImplementedError

    def after_backward(self, ctx, epoch: int, logits: torch.Tensor) -> None:
        """After a finite forward-backward, before the optimizer step."""

    def after_update(self, ctx) -> None:
        """After the optimizer step (taken or skipped by fp16's scaler)."""

    # ------------------------------------------------------------------------------------ records and state
    def epoch_metrics(self, run) -> dict:
        # the term's mean over every process's rows (each rank holds its shard's sum); the counts are every rank's
        counts, (total, applied) = dict(self.counts), summed_over_processes(self._term_sum).tolist()
        self.counts = dict.fromkeys(self.counts, 0)
        self._term_sum.zero_()
        updates = counts["updates"]
        per_step = counts["passes"] / updates if updates else float("nan")
        row = {"passes_per_step": per_step, "trajectory_loss": total / applied if applied else float("nan")}
        words = f"{counts['passes']} forward-backward passes for {updates} updates ({per_step:.4g} per step)"
        if self.name == "mesa":
            row["ema_forwards_per_step"] = counts["ema_forwards"] / updates if updates else float("nan")
            words += f", {counts['ema_forwards']} forwards of the EMA model without gradients"
        term = f"mean trajectory term {total / applied:.4g}" if applied else "trajectory term not applied yet"
        run.log(f"{self.name} epoch {run.epoch + 1}: {words}; {term}")
        return row

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "term_sum": self._term_sum.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.counts = {k: int(v) for k, v in state["counts"].items()}
        self._term_sum.copy_(state["term_sum"])


class SAFStep(TrajectoryStep):
    """SAF: the reference is each example's output --saf-horizon epochs ago, from the per-example store."""

    name = "saf"

    def __init__(self, weight: float, tau: float, horizon: int, *, ghost_batch: int | None = None,
                 after_epoch: int = TRAJECTORY_AFTER_EPOCH):
        super().__init__(weight, tau, ghost_batch=ghost_batch, after_epoch=after_epoch)
        self.horizon = int(horizon)
        self.store: OutputStore | None = None
        self._indices = None

    def applies(self, epoch: int) -> bool:
        return super().applies(epoch) and epoch >= self.horizon  # epoch - E exists

    def first_epoch(self) -> int:
        return max(super().first_epoch(), self.horizon)

    def setup(self, ctx, run) -> None:
        super().setup(ctx, run)
        classes = run.num_classes
        words = check_store_fits(run.train_examples, classes, self.horizon, local_processes(ctx.dist.world_size))
        self.store = OutputStore(run.train_examples, classes, self.horizon)
        run.log(f"step saf: {self._words(run)}; the reference is each example's output {self.horizon} epochs ago "
                f"(--saf-horizon), from a store of {words}" + ("; every process's outputs are gathered into every "
                                                               "process's store" if ctx.dist.active else ""))

    def train_step(self, ctx, x, y):
        self._indices = self._run.batch_examples()
        return super().train_step(ctx, x, y)

    def references(self, ctx, x, epoch):
        indices = self._indices
        copies = x.shape[0] // indices.numel()  # a data regime's duplicates: the batch copy by copy
        return self.store.read(epoch, indices, x.device).repeat(copies, 1)

    def after_backward(self, ctx, epoch, logits):
        indices, outputs = self._indices, logits[: self._indices.numel()]  # the first copy's outputs
        if ctx.dist.active:
            indices, outputs = gather_rows(indices, outputs)
        self.store.write(epoch, indices, outputs)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "store": self.store.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.store.load_state_dict(state["store"])


def gather_rows(indices: torch.Tensor, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's (example indices, outputs) of this batch, in rank order (equal shards: the batch size is a
    multiple of the processes)."""
    import torch.distributed as dist
    outputs = outputs.float().contiguous()
    indices = indices.to(outputs.device)
    all_indices = [torch.empty_like(indices) for _ in range(dist.get_world_size())]
    all_outputs = [torch.empty_like(outputs) for _ in range(dist.get_world_size())]
    dist.all_gather(all_indices, indices)
    dist.all_gather(all_outputs, outputs)
    return torch.cat(all_indices).cpu(), torch.cat(all_outputs)


class MESAStep(TrajectoryStep):
    """MESA: the reference is the output of an exponential moving average of the model (eval mode)."""

    name = "mesa"

    def __init__(self, weight: float, tau: float, decay: float, *, ghost_batch: int | None = None,
                 after_epoch: int = TRAJECTORY_AFTER_EPOCH):
        super().__init__(weight, tau, ghost_batch=ghost_batch, after_epoch=after_epoch)
        self.decay = float(decay)
        self.ema: torch.nn.Module | None = None
        self._model = None

    def setup(self, ctx, run) -> None:
        super().setup(ctx, run)
        self._model = ctx.model
        self.ema = copy.deepcopy(ctx.model).eval().requires_grad_(False)
        run.log(f"step mesa: {self._words(run)}; the reference is the output of the model's exponential moving "
                f"average (decay {self.decay:g}, parameters and buffers, updated after every step; its forward in "
                f"eval mode without gradients: its own BatchNorm statistics, the model's untouched)")

    def references(self, ctx, x, epoch):
        size = self.ghost_batch or x.shape[0]
        with torch.no_grad(), ctx.autocast():
            outputs = [self.ema(ctx.prepare(xc)) for xc in x.split(size)]
        self.counts["ema_forwards"] += 1
        return torch.cat(outputs)

    def after_update(self, ctx) -> None:
        """timm's ModelEmaV2.update: e <- B e + (1 - B) w over the state_dict's values, in order."""
        with torch.no_grad():
            for ema_value, value in zip(self.ema.state_dict().values(), self._model.state_dict().values()):
                ema_value.copy_(self.decay * ema_value + (1.0 - self.decay) * value)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "ema": {k: v.detach().cpu().clone() for k, v in self.ema.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.ema.load_state_dict(state["ema"])
