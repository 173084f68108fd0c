"""--worker-trace RUN/delays.csv: the simulated server replaying the order of a real run's arrivals.

Push i of the simulation is made by the worker of the trace's i-th applied gradient, one gradient per update
(k = 1); like the real server's workers, a simulated worker goes on from the weights it holds across an epoch's
end. So each simulated delay is the trace's: a real run and its simulated twin differ only
in numerics and data order (the simulator's loop feeds batches in plan order). The replay writes its own
delays.csv (age_s empty: no clock) for the comparison. A --fixed-delay trace starts with read versions below 0
(x[t] = x[0] for t < 0); the simulator replays its first D rows with its own start, delays 0..D-1.
"""
from __future__ import annotations

import math

from basinlab.errors import ConfigError
from basinlab.methods.asgd.real.delays import DelayLog
from basinlab.methods.asgd.real.trace import TraceOrder, read_delays
from basinlab.methods.asgd.server import ParameterServer, ParameterServerStep


class TraceReplayStep(ParameterServerStep):
    name = "parameter-server-replay"

    def __init__(self, mode: str, workers: int, trace: str, adjust_lr: bool = False, seed: int = 0):
        super().__init__(mode, workers, None, adjust_lr=adjust_lr, seed=seed)
        if self.group != 1:
            raise ConfigError(f"--worker-trace replays one gradient per update; --server {mode} with {workers} "
                              f"workers averages {self.group}: use --server asgd or msgd")
        self.trace_path = trace
        self.table = read_delays(trace)
        self.delays = DelayLog()

    def setup(self, ctx, run) -> None:
        model = ctx.model
        order = TraceOrder(self.workers, self.seed, self.table)
        self.server = ParameterServer(model.parameters(), model.buffers(), mode=self.mode, workers=self.workers,
                                      delay=self.delay, schedule=order, seed=self.seed)
        self.server.on_applied = lambda worker, read, version: self.delays.add_row(
            run.epoch + 1, run.batch_in_epoch, worker, read, version, math.nan, "applied")
        if self.mode == "msgd":
            self._check_msgd(ctx)
        self._log_setup(ctx, run)
        run.log(f"worker order: replaying the {len(order.order)} applied gradients of {self.trace_path}")

    def epoch_metrics(self, run) -> dict:
        row = super().epoch_metrics(run)
        delays = self.delays.take_epoch()
        stats = self.delays.summary(delays)
        return {**row, "delay_p50": stats["delay_p50"], "delay_p95": stats["delay_p95"]}

