"""A parameter server with N simulated workers in one process (spec 02-async-sgd.md).

One trainer batch is one worker's minibatch. The scheduler picks the worker; the worker computes its
gradient on ITS stale copy of the weights (and BN buffers); the server accumulates k = N/(d+1)
gradients, then takes one step on its current weights; the workers of that group then pull the new
weights. So after warm-up every applied gradient is exactly d server updates stale (round robin).

- ``ssgd``: d = 0, k = N: one step per N minibatches, the mean gradient (large-batch SGD, batch N*b).
- ``asgd``: any d with N divisible by d+1; the default d = N-1 is pure ASGD (k = 1). Momentum, if
  the regime has any, is the optimizer's own (at the server, on current weights).
- ``msgd``: shifted momentum, d+1 = N: every worker keeps its own momentum buffer, so
  x[t+1] = x[t] - lr*grad(x[t-d]) + gamma*(x[t-d] - x[t-d-1]).

BN buffers pushed by the workers replace the server's (k > 1: their mean; integer buffers such as
num_batches_tracked: the last pushed value). The model always holds the SERVER weights between
steps, so validation, checkpoints and any callback see the server.

`ParameterServer` is the core: it works on any list of parameters and buffers with any gradient
computation and update rule (tests drive it on a quadratic). `ParameterServerStep` plugs it into the
trainer.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import Tensor

from basinlab.choices import SERVER_MODES
from basinlab.engine.steps import StepResult, StepStrategy
from basinlab.errors import ConfigError
from basinlab.methods.asgd.momentum import ShiftedMomentum
from basinlab.methods.asgd.schedule import Scheduler, make_scheduler
from basinlab.methods.asgd.snapshots import FlatLayout, SnapshotPool, copy_all
from basinlab.methods.asgd.stability import adjusted_lr, closed_form_threshold, stability_threshold

MODES = SERVER_MODES


def _allowed_delays(workers: int) -> str:
    return ", ".join(str(d) for d in range(workers) if workers % (d + 1) == 0)


def resolve_delay(mode: str, workers, delay=None) -> tuple[int, int]:
    """(delay d, group size k = N/(d+1)) of a server mode; ConfigError for combinations that do not exist."""
    if mode not in MODES:
        raise ConfigError(f"--server must be one of {', '.join(MODES)}; got {mode!r}")
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ConfigError(f"--workers must be an integer >= 1 (simulated workers of --server {mode}); got {workers!r}")
    workers = int(workers)
    if delay is None:
        delay = 0 if mode == "ssgd" else workers - 1
    if isinstance(delay, bool) or not isinstance(delay, numbers.Integral) or delay < 0:
        raise ConfigError(f"--delay must be an integer >= 0 (server updates); got {delay!r}")
    delay = int(delay)
    if mode == "ssgd" and delay != 0:
        raise ConfigError(f"--server ssgd is synchronous (delay 0); got --delay {delay}: use --server asgd for a delay")
    if delay >= workers:
        raise ConfigError(f"--delay {delay} needs at least {delay + 1} workers (got --workers {workers}); "
                          f"allowed delays for {workers} workers: {_allowed_delays(workers)}")
    if workers % (delay + 1):
        raise ConfigError(f"--workers {workers} must be divisible by --delay + 1 = {delay + 1} (k = N/(d+1) gradients "
                          f"per update); allowed delays for {workers} workers: {_allowed_delays(workers)}")
    if mode == "msgd" and delay != workers - 1:
        raise ConfigError(f"--server msgd (shifted momentum) needs --delay = workers - 1 = {workers - 1}; got {delay}")
    return delay, workers // (delay + 1)


class ParameterServer:
    """The simulated server over `params` and `buffers` (tensors the caller computes with in place).

    `step(compute, update)` runs one push: it loads the picked worker's snapshot into the tensors,
    calls ``compute(worker) -> bool`` (leave gradients in ``p.grad``; False: nothing pushed), puts the
    server weights back and, when the group is complete, calls ``update(worker)`` with the mean
    gradient in ``p.grad`` and the server weights in the tensors, then publishes the new version.
    """

    def __init__(self, params, buffers=(), *, mode: str = "asgd", workers: int, delay: int | None = None,
                 schedule: str = "round_robin", seed: int = 0):
        self.mode, self.workers = mode, int(workers)
        self.delay, self.group = resolve_delay(mode, workers, delay)
        self.params, self.buffers = list(params), list(buffers)
        self.float_buffers = [b for b in self.buffers if b.is_floating_point()]
        self.int_buffers = [b for b in self.buffers if not b.is_floating_point()]
        # a Scheduler given as it is: the replay of a real run's order (real/trace.py TraceOrder)
        self.scheduler = schedule if isinstance(schedule, Scheduler) else make_scheduler(schedule, self.workers, seed)
        # with d = 0 every worker computes on the current weights: snapshots need only the buffers
        self.snap_params = self.params if self.delay > 0 else []
        self.pool = SnapshotPool(self.snap_params, self.buffers)
        self.version = 0
        self.worker_version = [0] * self.workers
        with torch.no_grad():
            self.pool.publish(0, self.snap_params, self.buffers, refs=self.workers + 1)
        self.pending: list[int] = []      # workers that pushed into the open group
        self.contributed: list[int] = []  # those of them whose gradient arrived (finite loss)
        self.buffer_sum: list[Tensor] | None = None
        self.int_last: list[Tensor] | None = None
        self.momentum = ShiftedMomentum(self.params)   # msgd: a momentum buffer per worker
        self.delay_counts: dict[int, int] = {}
        self.on_applied = None    # called (worker, version read, version applied to) per applied gradient

    # ------------------------------------------------------------------------------ one push
    def step(self, compute, update) -> tuple[int, bool]:
        """One worker's push; returns (worker, whether the server updated)."""
        worker = self.scheduler.next(set(self.pending))
        held = self.worker_version[worker]
        self._load(held)
        try:
            pushed = bool(compute(worker))
        except BaseException:
            self._restore(held, buffers=True)
            raise
        self._receive(worker, pushed)
        if len(self.pending) < self.group:
            self._restore(held, buffers=True)
            return worker, False
        self._finish_group(held, update, worker)
        return worker, True

    @torch.no_grad()
    def _load(self, version: int) -> None:
        snap = self.pool[version]
        if version != self.version:
            copy_all(self.params, snap.params)
        copy_all(self.buffers, snap.buffers)

    @torch.no_grad()
    def _restore(self, held: int, buffers: bool) -> None:
        current = self.pool[self.version]
        if held != self.version:
            copy_all(self.params, current.params)
        if buffers:
            copy_all(self.buffers, current.buffers)

    @torch.no_grad()
    def _receive(self, worker: int, pushed: bool) -> None:
        self.pending.append(worker)
        if not pushed:
            return
        self.contributed.append(worker)
        if self.group == 1:  # the model's buffers ARE the pushed ones; nothing to keep aside
            return
        if self.buffer_sum is None:
            self.buffer_sum = [torch.empty_like(b) for b in self.float_buffers]
            self.int_last = [torch.empty_like(b) for b in self.int_buffers]
        if len(self.contributed) == 1:
            copy_all(self.buffer_sum, self.float_buffers)
        elif self.float_buffers:
            torch._foreach_add_(self.buffer_sum, self.float_buffers)
        copy_all(self.int_last, self.int_buffers)

    def _finish_group(self, held: int, update, worker: int) -> None:
        arrived = len(self.contributed)
        self._server_buffers(held, arrived)
        for w in self.contributed:
            stale = self.version - self.worker_version[w]
            self.delay_counts[stale] = self.delay_counts.get(stale, 0) + 1
            if self.on_applied is not None:
                self.on_applied(w, self.worker_version[w], self.version)
        if arrived:
            grads = [p.grad for p in self.params if p.grad is not None]
            if arrived > 1 and grads:
                with torch.no_grad():
                    torch._foreach_mul_(grads, 1.0 / arrived)
            update(worker)
        self._publish()

    @torch.no_grad()
    def _server_buffers(self, held: int, arrived: int) -> None:
        """Server weights back in place; buffers: the pushed ones (k = 1), their mean (k > 1), or unchanged."""
        keep_pushed = arrived and self.group == 1
        self._restore(held, buffers=not keep_pushed)
        if arrived and self.group > 1:
            copy_all(self.float_buffers, self.buffer_sum)
            if self.float_buffers:
                torch._foreach_mul_(self.float_buffers, 1.0 / arrived)
            copy_all(self.int_buffers, self.int_last)

    @torch.no_grad()
    def _publish(self) -> None:
        new = self.version + 1
        for w in self.pending:
            self.pool.release(self.worker_version[w])
        self.pool.release(self.version)
        self.pool.publish(new, self.snap_params, self.buffers, refs=len(self.pending) + 1)
        for w in self.pending:
            self.worker_version[w] = new
            self.scheduler.pulled(w)
        self.version = new
        self.pending, self.contributed = [], []

    # ------------------------------------------------------------------------------ msgd update
    def shifted_momentum_step(self, worker: int, param_groups) -> None:
        """msgd's update with worker `worker`'s own momentum buffer (momentum.py)."""
        self.momentum.step(worker, param_groups)

    # ------------------------------------------------------------------------------ measurements
    def take_delay_counts(self) -> dict[int, int]:
        """Staleness (in server updates) of the gradients applied since the last call: {delay: count}."""
        counts, self.delay_counts = self.delay_counts, {}
        return dict(sorted(counts.items()))

    @torch.no_grad()
    def worker_spread(self) -> float:
        """RMS over workers of ||x_worker - x_server|| / ||x_server||, parameters only (0 when d = 0)."""
        if not self.snap_params:
            return 0.0
        server = self.pool[self.version].params
        server_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(server)).double())
        total = 0.0
        for version in set(self.worker_version):
            if version == self.version:
                continue
            diff = torch._foreach_sub(self.pool[version].params, server)
            dist2 = float(torch.stack(torch._foreach_norm(diff)).double().square().sum())
            total += dist2 * self.worker_version.count(version)
        return math.sqrt(total / self.workers) / max(float(server_norm), 1e-30)

    def memory(self) -> dict:
        """Bytes held beyond the model: snapshots (now and at most), msgd momentum, the group's buffer sum."""
        snap = self.pool.snapshot_bytes
        most = self.delay + 1 if self.scheduler.name == "round_robin" else self.workers + 1
        extra_buffers = sum(b.numel() * b.element_size() for b in self.buffers) if self.group > 1 else 0
        momentum = self.momentum.nbytes(self.workers if self.mode == "msgd" else 0)
        return {"model_bytes": FlatLayout(self.params + self.buffers).nbytes, "snapshot_bytes": snap,
                "snapshots_live": len(self.pool.live), "snapshots_peak": self.pool.peak, "snapshots_max": most,
                "momentum_bytes_max": momentum, "group_buffer_bytes": extra_buffers}

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        mid_group = bool(self.pending)
        return {
            "mode": self.mode, "workers": self.workers, "delay": self.delay,
            "version": self.version, "worker_version": list(self.worker_version),
            "pending": list(self.pending), "contributed": list(self.contributed),
            "pool": self.pool.state_dict(), "scheduler": self.scheduler.state_dict(),
            "grads": [p.grad for p in self.params] if mid_group else None,
            "buffer_sum": self.buffer_sum if mid_group and self.contributed else None,
            "int_last": self.int_last if mid_group and self.contributed else None,
            "momentum": self.momentum.state_dict(), "delay_counts": dict(self.delay_counts),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        saved = (state["mode"], state["workers"], state["delay"])
        if saved != (self.mode, self.workers, self.delay):
            raise ConfigError(f"checkpoint of a server {saved[0]} with {saved[1]} workers and delay {saved[2]} cannot "
                              f"resume as {self.mode} with {self.workers} workers and delay {self.delay}")
        self.version = int(state["version"])
        self.worker_version = [int(v) for v in state["worker_version"]]
        self.pending = [int(w) for w in state["pending"]]
        self.contributed = [int(w) for w in state["contributed"]]
        self.pool.load_state_dict(state["pool"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["grads"] is not None:
            for p, g in zip(self.params, state["grads"]):
                p.grad = None if g is None else g.to(p.device, p.dtype).clone()
        if state["buffer_sum"] is not None:
            self.buffer_sum = [t.to(b.device).clone() for t, b in zip(state["buffer_sum"], self.float_buffers)]
            self.int_last = [t.to(b.device).clone() for t, b in zip(state["int_last"], self.int_buffers)]
        self.momentum.load_state_dict(state["momentum"])
        self.delay_counts = {int(k): int(v) for k, v in state["delay_counts"].items()}


class ParameterServerStep(StepStrategy):
    """The step strategy of --server ssgd|asgd|msgd --workers N [--delay d] [--worker-order ...]."""

    name = "parameter-server"

    def __init__(self, mode: str, workers: int, delay: int | None = None, schedule: str = "round_robin",
                 adjust_lr: bool = False, seed: int = 0):
        self.mode, self.workers, self.schedule = mode, workers, schedule
        self.delay, self.group = resolve_delay(mode, workers, delay)
        self.delay_given = delay is not None
        self.adjust_lr, self.seed = adjust_lr, seed
        make_scheduler(schedule, workers, seed)  # validates the name before any setup work
        self.server: ParameterServer | None = None

    def setup(self, ctx, run) -> None:
        model = ctx.model
        self.server = ParameterServer(model.parameters(), model.buffers(), mode=self.mode, workers=self.workers,
                                      delay=self.delay, schedule=self.schedule, seed=self.seed)
        if self.mode == "msgd":
            self._check_msgd(ctx)
        self._log_setup(ctx, run)

    def lr_factor(self, run) -> float:
        """--adjust-lr: every lr of the regime x sin(pi/(4d+2)) for the delay d."""
        if not self.adjust_lr:
            return 1.0
        factor = adjusted_lr(1.0, self.delay)
        run.log(f"--adjust-lr: every lr of the regime scaled by sin(pi/(4d+2)) = {factor:.6g} for delay d={self.delay}")
        return factor

    def _check_msgd(self, ctx) -> None:
        from basinlab.optim import optimizer_name_of
        name = optimizer_name_of(ctx.optimizer)
        if name != "SGD":
            raise ConfigError(f"--server msgd applies shifted SGD momentum itself; the regime's optimizer is {name}: "
                              f"use an SGD regime (e.g. --optimizer SGD)")
        if ctx.precision.scaler is not None:
            raise ConfigError("--server msgd does not support --amp fp16 (no loss scaling in its own update); "
                              "use --amp bf16 or none")

    def _log_setup(self, ctx, run) -> None:
        s, mem = self.server, self.server.memory()
        how = "given" if self.delay_given else (
            "default for ssgd" if self.mode == "ssgd" else "default: pure ASGD, d = workers - 1")
        run.log(f"parameter server {self.mode}: {self.workers} workers, delay d={s.delay} ({how}), "
                         f"k={s.group} gradient(s) per server update, worker order {self.schedule}; "
                         f"stable eta*lambda_max < {closed_form_threshold(s.delay):.4g} without momentum")
        mib = 2 ** 20
        run.log(f"parameter server memory: snapshots of {mem['snapshot_bytes'] / mib:.2f} MiB each, at most "
                         f"{mem['snapshots_max']} ({mem['snapshots_max'] * mem['snapshot_bytes'] / mib:.1f} MiB) "
                         f"+ msgd momentum {mem['momentum_bytes_max'] / mib:.1f} MiB; "
                         f"model {mem['model_bytes'] / mib:.2f} MiB")
        if self.adjust_lr and self.mode == "asgd":
            momentum = ctx.optimizer.param_groups[0].get("momentum", 0.0)
            if momentum:
                run.log(f"note: --adjust-lr assumes no momentum; with server momentum {momentum:g} the stable "
                                 f"region is smaller (see `basinlab stability`)")

    def train_step(self, ctx, x, y):
        out = {}

        def compute(worker: int) -> bool:
            loss, logits = ctx.forward(x, y)
            out["loss"], out["logits"] = loss.detach(), logits.detach()
            out["pushed"] = ctx.check_loss(loss)
            if out["pushed"]:
                ctx.backward(loss)
            return out["pushed"]

        def update(worker: int) -> None:
            if self.mode == "msgd":
                self._msgd_update(ctx, worker)
            else:
                ctx.optimizer_step()

        self.server.step(compute, update)
        if not out["pushed"]:
            return StepResult(out["loss"], None, skipped=True)
        return StepResult(out["loss"], out["logits"])

    def _msgd_update(self, ctx, worker: int) -> None:
        """The context's optimizer_step with the shifted momentum update in place of optimizer.step()."""
        ctx.optimizer_step(step=lambda: self.server.shifted_momentum_step(worker, ctx.optimizer.param_groups))

    def stability_threshold(self, optimizer) -> float:
        """Linear stability threshold on lr * lambda_max for this run's delay and momentum (NaN: none).

        Delay: 0 for ssgd, else the server's; the momentum is per worker (delayed) for msgd, hence the
        'shifted' polynomial. The sharpness monitor reports it beside lr * lambda_max.
        """
        delay = 0 if self.mode == "ssgd" else self.delay
        momentum = float(optimizer.param_groups[0].get("momentum", 0.0) or 0.0)
        kind = "shifted" if self.mode == "msgd" else "standard"
        try:
            return stability_threshold(delay, momentum, kind)
        except ConfigError:  # e.g. momentum >= 1: no linear stability region to report
            return math.nan

    def epoch_metrics(self, run) -> dict:
        counts = self.server.take_delay_counts()
        applied = sum(counts.values())
        if applied:
            delays = np.repeat(np.fromiter(counts, dtype=np.int64), list(counts.values()))
            run.tensorboard.histogram("asgd/delay", delays, run.epoch + 1)
            mean, most = float(delays.mean()), int(delays.max())
        else:
            mean, most = math.nan, math.nan
        return {"delay_mean": mean, "delay_max": most, "worker_spread": self.server.worker_spread()}

    def state_dict(self) -> dict:
        return self.server.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.server.load_state_dict(state)
