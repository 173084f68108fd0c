"""Which simulated worker pushes the next minibatch.

- ``round_robin``: worker i mod N for the i-th push (constant delay: the paper's setting).
- ``random``: uniform over the workers that are ready (not waiting for their group's update).
- ``normal``: event-driven. Each worker's computation takes a time drawn from a normal distribution
  (mean 1, standard deviation ``NORMAL_STD``); the worker that finishes first pushes next. So the
  worker that has been computing (idle for the server) longest is the most likely next, and the
  delays scatter around N/k - 1 instead of being constant.

Workers that pushed into a group that is not complete yet are not ready: they wait for the group's
update (the reference's synchronous groups). Every choice uses the scheduler's own seeded
torch.Generator, saved in checkpoints.
"""
from __future__ import annotations

import math

import torch

from basinlab.choices import WORKER_ORDERS
from basinlab.data.loader import make_generator
from basinlab.errors import ConfigError

SCHEDULES = WORKER_ORDERS  # --worker-order
NORMAL_STD = 0.2          # compute-time spread relative to its mean
_MIN_DURATION = 0.01      # a normal draw can be <= 0; a computation still takes some time


class Scheduler:
    name = "base"

    def __init__(self, workers: int, seed: int):
        self.workers = workers
        self.generator = make_generator("asgd-schedule", self.name, seed)

    def next(self, waiting: set[int]) -> int:
        raise NotImplementedError

    def pulled(self, worker: int) -> None:
        """`worker` received new weights and starts computing."""

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class RoundRobin(Scheduler):
    name = "round_robin"

    def __init__(self, workers: int, seed: int):
        super().__init__(workers, seed)
        self.pushes = 0

    def next(self, waiting):
        worker = self.pushes % self.workers
        self.pushes += 1
        return worker

    def state_dict(self):
        return {**super().state_dict(), "pushes": self.pushes}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.pushes = int(state["pushes"])


class UniformRandom(Scheduler):
    name = "random"

    def next(self, waiting):
        ready = [w for w in range(self.workers) if w not in waiting]
        return ready[int(torch.randint(len(ready), (1,), generator=self.generator))]


class NormalTimes(Scheduler):
    name = "normal"

    def __init__(self, workers: int, seed: int):
        super().__init__(workers, seed)
        self.clock = 0.0
        self.finish = [self._duration() for _ in range(workers)]

    def _duration(self) -> float:
        draw = 1.0 + NORMAL_STD * float(torch.randn((), generator=self.generator, dtype=torch.float64))
        return max(draw, _MIN_DURATION)

    def next(self, waiting):
        worker = min((w for w in range(self.workers) if w not in waiting), key=self.finish.__getitem__)
        self.clock = self.finish[worker]
        self.finish[worker] = math.inf  # busy pushing until it pulls again
        return worker

    def pulled(self, worker):
        self.finish[worker] = self.clock + self._duration()

    def state_dict(self):
        return {**super().state_dict(), "clock": self.clock, "finish": list(self.finish)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.clock = float(state["clock"])
        self.finish = [float(t) for t in state["finish"]]


def make_scheduler(name: str, workers: int, seed: int) -> Scheduler:
    kinds = {cls.name: cls for cls in (RoundRobin, UniformRandom, NormalTimes)}
    if name not in kinds:
        raise ConfigError(f"--worker-order must be one of {', '.join(SCHEDULES)}; got {name!r}")
    return kinds[name](workers, seed)
