"""The real parameter server (--server asgd|msgd|ssgd --workers N --real): a step strategy whose gradients come
from N worker processes (workers.py, worker.py), so every delay is measured, not scheduled.

The server process runs basinlab's one loop: it holds the model, the regime's optimizer (or msgd's per-worker
momentum), the version counter and the run folder. Each of its steps is one gradient arriving:

    worker w, batch j, read version r  ->  delay = version now - r
    apply it (or hold it for --fixed-delay, or drop it past --max-delay)  ->  version += 1
    reply to w with the weights it computes its next batch on

Data plan: the epoch's batches are the synchronous run's (same seed, same batch size, same augmentation);
live worker i of L takes batches i, i + L, i + 2L, ... So an epoch is len(loader) arrivals.
Sync points (validation, checkpoints): in-flight gradients are received and kept for the next steps, held
ones stay held, and the workers wait; then each goes on from the weights it holds, so a sync point changes no
delay. Checkpoints keep the waiting gradients and each worker's weights, so a resume does the same. The order
in which the workers' gradients arrive is not reproducible (docs/guarantees.md).
"""
from __future__ import annotations

import math

import torch

from basinlab.engine.steps import StepResult, StepStrategy
from basinlab.errors import WorkerLostError
from basinlab.methods.asgd.momentum import ShiftedMomentum
from basinlab.methods.asgd.real.delays import DelayLog
from basinlab.methods.asgd.real.wire import NONFINITE, START, STOP, WEIGHTS, Wire
from basinlab.methods.asgd.real.workers import WorkerPool
from basinlab.methods.asgd.stability import adjusted_lr


class RealServerStep(StepStrategy):
    name = "real-parameter-server"

    def __init__(self, mode: str, workers: int, *, fixed_delay: int | None = None, max_delay: int | None = None,
                 on_worker_loss: str = "continue", threads: int = 1, adjust_lr: bool = False):
        self.mode, self.workers = mode, workers
        self.fixed_delay = 0 if mode == "ssgd" else fixed_delay
        self.group = workers // (self.fixed_delay + 1) if self.fixed_delay is not None else 1
        self.max_delay, self.on_worker_loss = max_delay, on_worker_loss
        self.threads, self.adjust_lr = threads, adjust_lr
        self.pool: WorkerPool | None = None
        self.version = 0
        self.epoch = -1                       # the epoch whose batch plan the workers follow
        self.next_batch: dict[int, int] = {}  # worker -> the next batch of its share of the epoch
        self.stride = workers
        self.computing: set[int] = set()      # workers computing on weights we sent
        self.held: list[int] = []             # workers whose gradient waits (--fixed-delay), in arrival order
        self.early: list[int] = []            # gradients received at a sync point, for the next steps to take
        self.plan_epoch: dict[int, int] = {}  # worker -> the epoch whose share it is working through
        self.paused = True                    # workers wait for START (run start, after every sync point)
        self.delays = DelayLog()

    # ------------------------------------------------------------------------------ setup and end
    def setup(self, ctx, run) -> None:
        self.run = run
        model = ctx.model
        self.params, self.buffers = list(model.parameters()), list(model.buffers())
        self.float_buffers = [b for b in self.buffers if b.is_floating_point()]
        self.int_buffers = [b for b in self.buffers if not b.is_floating_point()]
        self.momentum = ShiftedMomentum(self.params) if self.mode == "msgd" else None
        self.send_wire = Wire(self.params, self.buffers, run.num_classes)
        # the weights message each worker last received: resent after a sync point or a resume (it goes on from
        # the weights it holds), and read by the worker_spread column
        self.last_sent: dict[int, bytes] = {}
        self.wires = {w: Wire(self.params, self.buffers, run.num_classes, run.batch_size)
                      for w in range(self.workers)}
        self.pool = WorkerPool(self.workers, run.log)
        try:
            self.pool.start(self._instructions(run), self.threads)
        except BaseException:   # the trainer closes only a strategy whose setup finished: end what started here
            self.close()
            raise
        rule = (f"every gradient applied exactly {self.fixed_delay} update(s) after it was read, "
                f"{self.group} per update" if self.fixed_delay is not None else "gradients applied on arrival")
        bound = f", older than {self.max_delay} dropped" if self.max_delay is not None else ""
        run.log(f"real parameter server {self.mode}: {self.workers} worker processes on this machine "
                f"({self.threads} thread(s) each), {rule}{bound}; worker logs in {self.pool.folder}")

    def lr_factor(self, run) -> float:
        """--adjust-lr with --fixed-delay D: every lr of the regime x sin(pi/(4D+2)) (as the simulator's)."""
        if not self.adjust_lr:
            return 1.0
        factor = adjusted_lr(1.0, self.fixed_delay)
        run.log(f"--adjust-lr: every lr of the regime scaled by sin(pi/(4d+2)) = {factor:.6g} for the fixed delay "
                f"d={self.fixed_delay}")
        return factor

    def _instructions(self, run) -> dict:
        """What each worker process reads on stdin: the run's resolved config (its model code, if any, was
        trusted to build this process's model), the device and its thread count."""
        from basinlab.config import config_to_yaml
        from basinlab.models import is_user_model
        return {"config": config_to_yaml(run.cfg), "device": run.cfg.device, "threads": self.threads,
                "trust": is_user_model(run.cfg.model)}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close(lambda conn: self.send_wire.send(conn, self.send_wire.pack_weights(STOP, {})))

    # ------------------------------------------------------------------------------ the loop's batches
    def batches(self, loader, epoch: int, start_batch: int):
        """One (None, None) per gradient still to arrive this epoch (its batches are the workers')."""
        if epoch != self.epoch:
            self._plan_epoch(epoch, len(loader))
        self.steps_per_epoch = len(loader)
        while self._still_to_arrive() > 0:
            yield None, None

    def _plan_epoch(self, epoch: int, batches: int) -> None:
        live = self.pool.alive
        if not live:
            raise WorkerLostError(f"no worker process is left: {'; '.join(self.pool.lost.values())}")
        self.epoch, self.stride = epoch, len(live)
        self.next_batch = {w: i for i, w in enumerate(live)}
        self.lost_batches = 0

    def _still_to_arrive(self) -> int:
        return sum(len(range(self.next_batch[w], self.steps_per_epoch, self.stride))
                   for w in self.pool.alive if w in self.next_batch)

    # ------------------------------------------------------------------------------ one arrival
    def train_step(self, ctx, x, y):
        if self.paused:
            self._start_workers()
        worker = self.early.pop(0) if self.early else self.pool.receive_any(self.wires, self.computing)
        if worker is None:
            return self._after_loss()
        self.computing.discard(worker)
        wire = self.wires[worker]
        self.next_batch[worker] += self.stride
        loss = torch.tensor(wire.field("loss"))
        _, _, logits, labels = wire.gradient_views()
        logits, labels = logits.clone(), labels.clone()
        if wire.kind() == NONFINITE:
            ctx.check_loss(loss)  # stops the run, or counts the skip
            self._reply(worker)
            return StepResult(loss, None, skipped=True, target=labels)
        delay = self.version - int(wire.field("version"))
        if self.max_delay is not None and delay > self.max_delay:
            self.delays.add(wire, worker, self.version, "dropped")
            self._reply(worker)
        else:
            self.held.append(worker)
            self._apply_ready(ctx)
        return StepResult(loss, logits, target=labels)

    def _after_loss(self) -> StepResult:
        """A worker died while we waited: stop (--on-worker-loss stop, or none left), or go on without it."""
        lost = [w for w in self.computing if w in self.pool.lost]
        self.computing -= set(lost)
        self.held = [w for w in self.held if w not in self.pool.lost]
        if self.on_worker_loss == "stop" or not self.pool.alive:
            raise WorkerLostError(f"{'; '.join(self.pool.lost.values())}; the run stops (--on-worker-loss "
                                  f"{self.on_worker_loss}); the last checkpoint is kept: resume with basinlab "
                                  f"train --resume {self.run.path}")
        self.run.log(f"real parameter server: going on with {len(self.pool.alive)} worker(s); the lost worker's "
                     f"remaining batches of epoch {self.epoch + 1} are not trained")
        return StepResult(torch.tensor(math.nan), None, skipped=True, target=torch.empty(0, dtype=torch.long))

    def _start_workers(self) -> None:
        """START to every idle worker with batches left: its share's plan, and the weights it last received (it
        goes on from them, as if no sync point had been; at the run's start, the initial weights)."""
        waiting = set(self.held) | set(self.early) | self.computing
        for i, worker in enumerate(self.pool.alive):
            if worker in waiting or self.next_batch.get(worker, self.steps_per_epoch) >= self.steps_per_epoch:
                continue
            plan = {"epoch": self.epoch, "batch": self.next_batch[worker], "stride": self.stride}
            if worker in self.last_sent:
                block = self.send_wire.repack(self.last_sent[worker], START, plan)
            else:
                block = self.send_wire.pack_weights(START, {"version": self._start_version(i), **plan})
            if self.pool.send(worker, self.send_wire, block):
                self._sent(worker, block)
                self.computing.add(worker)
        self.paused = False

    def _start_version(self, i: int) -> int:
        """The version live worker i is told it read. At a --fixed-delay run's very start, the usual convention of
        delayed SGD, x[t] = x[0] for t < 0: group i // k read version i // k - D (the same initial weights), so the
        first updates, too, apply gradients exactly D updates old. Otherwise the current version."""
        if self.fixed_delay is None or self.version or self.epoch or self.delays.written or self.delays.rows:
            return self.version
        return i // self.group - self.fixed_delay

    def _reply(self, worker: int) -> None:
        """The current weights to `worker`; it computes its next batch on them, if its share has one. A worker
        still on another epoch's plan (its gradient waited across the epoch's end, or it is new after a resume)
        gets this epoch's plan with them (START)."""
        kind, plan = WEIGHTS, {}
        if self.plan_epoch.get(worker) != self.epoch:
            kind, plan = START, {"epoch": self.epoch, "batch": self.next_batch[worker], "stride": self.stride}
        block = self.send_wire.pack_weights(kind, {"version": self.version, **plan})
        if not self.pool.send(worker, self.send_wire, block):
            return
        self._sent(worker, block)
        if self.next_batch[worker] < self.steps_per_epoch:
            self.computing.add(worker)

    def _sent(self, worker: int, block) -> None:
        self.last_sent[worker] = bytes(block)
        if self.send_wire.kind() == START:
            self.plan_epoch[worker] = self.epoch

    @torch.no_grad()
    def worker_spread(self) -> float:
        """RMS over the live workers of ||x_worker - x_server|| / ||x_server||: the weights each last received
        against the server's now (the simulator's column; parameters only)."""
        server = torch.cat([p.detach().reshape(-1).float().cpu() for p in self.params])
        live = [w for w in self.pool.alive if w in self.last_sent]
        if not live:
            return math.nan
        total = sum(float((self.send_wire.params_of(self.last_sent[w]) - server).double().square().sum())
                    for w in live)
        return math.sqrt(total / len(live)) / max(float(server.double().norm()), 1e-30)

    # ------------------------------------------------------------------------------ applying gradients
    def _apply_ready(self, ctx, drain: bool = False, reply: bool = True) -> None:
        while True:
            group, status = self._ready_group(drain)
            if not group:
                return
            self._apply(ctx, group, status)
            for worker in group:
                self.held.remove(worker)
                if reply:
                    self._reply(worker)

    def _ready_group(self, drain: bool) -> tuple[list[int], str]:
        """The gradients to apply now and their status. On arrival: the first held one. --fixed-delay D: the k
        gradients read D updates ago; if none is due while batches remain and no worker computes (a worker was
        lost), the k oldest: `warmup`."""
        if not self.held:
            return [], ""
        if drain:
            return self.held[:self.group], "drained"
        if self.fixed_delay is None:
            return self.held[:1], "applied"
        read = {w: int(self.wires[w].field("version")) for w in self.held}
        oldest_first = sorted(self.held, key=lambda w: read[w])
        due = [w for w in oldest_first if read[w] <= self.version - self.fixed_delay]
        if len(due) >= self.group:
            return due[:self.group], "applied"
        if not (self.computing & set(self.pool.alive)) and self._still_to_arrive() > 0:
            return oldest_first[:self.group], "warmup"   # nobody can bring its turn (a worker was lost)
        return [], ""   # at an epoch's end, held gradients wait for the next epoch's updates

    @torch.no_grad()
    def _apply(self, ctx, group: list[int], status: str) -> None:
        for i, worker in enumerate(group):
            grads, buffers, _, _ = self.wires[worker].gradient_views()
            for p, g in zip(self.params, grads):
                if g is None:
                    continue
                if p.grad is None or i == 0:
                    p.grad = g.to(p.device, p.dtype).clone() if p.grad is None else p.grad.copy_(g)
                else:
                    p.grad.add_(g.to(p.device))
            self._take_buffers(i, buffers, worker)
            self.delays.add(self.wires[worker], worker, self.version, status)
        if len(group) > 1:
            torch._foreach_mul_([p.grad for p in self.params if p.grad is not None], 1.0 / len(group))
            if self.float_buffers:
                torch._foreach_mul_(self.float_buffers, 1.0 / len(group))
        with torch.enable_grad():
            if self.momentum is not None:
                ctx.optimizer_step(step=lambda: self.momentum.step(group[0], ctx.optimizer.param_groups))
            else:
                ctx.optimizer_step()
        self.version += 1

    def _take_buffers(self, i: int, pushed, worker: int) -> None:
        """The pushed BatchNorm statistics replace the server's (their mean over a group; integers: the last)."""
        for b, value in zip(self.float_buffers, pushed):
            if i == 0:
                b.copy_(value)
            else:
                b.add_(value.to(b.device))
        self.wires[worker].read_int_buffers_into(self.int_buffers)

    # ------------------------------------------------------------------------------ sync points
    def sync(self, ctx) -> None:
        """Before validation and checkpoints: the gradients in flight are received and kept for the next steps
        (`early`), held ones stay held, and every worker waits; afterwards each goes on from the weights it holds
        (_start_workers). At the end of the run's last epoch the held gradients are applied (`drained`)."""
        if self.paused:
            return
        for worker in sorted(self.computing):
            if self.pool.receive_any(self.wires, {worker}) == worker:
                self.early.append(worker)
        self.computing.clear()
        self.held = [w for w in self.held if w not in self.pool.lost]
        if self.run.epoch + 1 >= self.run.epochs and self._still_to_arrive() == 0:
            self._apply_ready(ctx, drain=True, reply=False)
        self.paused = True

    # ------------------------------------------------------------------------------ records
    def epoch_metrics(self, run) -> dict:
        delays = self.epoch_delays = self.delays.take_epoch()
        if delays.size:
            run.tensorboard.histogram("asgd/delay", delays, run.epoch + 1)
        stats = self.delays.summary(delays)
        return {**stats, "worker_spread": self.worker_spread(), "workers_alive": len(self.pool.alive)}

    def stability_threshold(self, optimizer) -> float:
        """The threshold on lr * lambda_max for this epoch's measured delays (the sharpness monitor's column): the
        empirical one of delayed SGD with the server's momentum driven by them (real/trace.py); NaN for msgd
        with momentum (its per-worker momentum is not simulated there) or an epoch without applied gradients."""
        from basinlab.methods.asgd.real.trace import empirical_threshold
        momentum = float(optimizer.param_groups[0].get("momentum", 0.0) or 0.0)
        delays = getattr(self, "epoch_delays", None)
        if delays is None or not delays.size or (self.mode == "msgd" and momentum):
            return math.nan
        return empirical_threshold(delays, momentum)

    def state_dict(self) -> dict:
        """Taken at sync points: the position, the weights each worker holds, and the gradients waiting (held or
        early) as their messages, so that a resume sends each worker on from where it was."""
        waiting = self.held + self.early
        as_tensor = lambda data: torch.frombuffer(bytearray(data), dtype=torch.uint8)  # noqa: E731
        return {"mode": self.mode, "workers": self.workers, "version": self.version, "epoch": self.epoch,
                "next_batch": dict(self.next_batch), "stride": self.stride, "delays": self.delays.state_dict(),
                "momentum": self.momentum.state_dict() if self.momentum is not None else None,
                "held": list(self.held), "early": list(self.early),
                "waiting": {w: as_tensor(self.wires[w].message()) for w in waiting},
                "last_sent": {w: as_tensor(block) for w, block in self.last_sent.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.version, self.epoch, self.stride = int(state["version"]), int(state["epoch"]), int(state["stride"])
        self.next_batch = {int(w): int(j) for w, j in state["next_batch"].items()}
        self.delays.load_state_dict(state["delays"])
        if self.momentum is not None and state["momentum"] is not None:
            self.momentum.load_state_dict(state["momentum"])
        self.held, self.early = [int(w) for w in state["held"]], [int(w) for w in state["early"]]
        for worker, message in state["waiting"].items():
            self.wires[int(worker)].load_message(message.numpy().tobytes())
        self.last_sent = {int(w): message.numpy().tobytes() for w, message in state["last_sent"].items()}
        self.plan_epoch = {}   # new worker processes: each first message is a START

