"""Shifted momentum (--server msgd): every worker keeps its own momentum buffer at the server.

    x[t+1] = x[t] - lr * v_w,   v_w = gamma * v_w + (1 - dampening) * (g + wd * x)

with w the worker whose gradient g is applied. Under round-robin delay d = N - 1 this is the paper's
x[t+1] = x[t] - lr*grad(x[t-d]) + gamma*(x[t-d] - x[t-d-1]). The simulated server (server.py) and the real one
(real/server.py) both use it; the buffers live in one flat tensor per worker.
"""
from __future__ import annotations

import torch
from torch import Tensor

from basinlab.errors import ConfigError
from basinlab.methods.asgd.snapshots import FlatLayout, copy_all


class ShiftedMomentum:
    def __init__(self, params):
        self.params = list(params)
        self.param_index = {id(p): i for i, p in enumerate(self.params)}
        self.layout = FlatLayout(self.params)
        self.buffers: dict[int, list[Tensor]] = {}   # worker -> flat momentum storage
        self._views: dict[int, list[Tensor]] = {}

    @torch.no_grad()
    def step(self, worker: int, param_groups) -> None:
        """x -= lr * v_w with worker w's own buffer v_w = gamma v_w + (1 - dampening) (g + wd x).

        Weight decay uses the server's current weights. A worker's first update starts its buffer at
        the gradient (as torch.optim.SGD does), so the recursion starts with x[-1] = x[0].
        """
        for group in param_groups:
            if group.get("nesterov"):
                raise ConfigError("--server msgd implements shifted heavy-ball momentum; the regime sets nesterov: "
                                  "remove it (allowed: lr, momentum, dampening, weight_decay)")
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group.get("weight_decay", 0):
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            gamma = group.get("momentum", 0.0)
            if gamma:
                fresh = worker not in self.buffers
                buffers = self._worker_buffers(worker, params)
                torch._foreach_mul_(buffers, gamma)
                torch._foreach_add_(buffers, grads, alpha=1.0 if fresh else 1.0 - group.get("dampening", 0.0))
                grads = buffers
            torch._foreach_add_(params, grads, alpha=-group["lr"])

    def _worker_buffers(self, worker: int, params: list[Tensor]) -> list[Tensor]:
        if worker not in self.buffers:
            flats = self.layout.allocate()
            for flat in flats:
                flat.zero_()
            self._keep(worker, flats)
        views = self._views[worker]
        return [views[self.param_index[id(p)]] for p in params]

    def _keep(self, worker: int, flats: list[Tensor]) -> None:
        self.buffers[worker] = flats
        self._views[worker] = self.layout.views(flats)

    def nbytes(self, workers: int) -> int:
        return self.layout.nbytes * workers

    def state_dict(self) -> dict:
        return dict(self.buffers)

    def load_state_dict(self, state: dict) -> None:
        self.buffers, self._views = {}, {}
        for worker, flats in state.items():
            mine = self.layout.allocate()
            copy_all(mine, list(flats))
            self._keep(int(worker), mine)
