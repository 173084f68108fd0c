"""The checks of --real and its options, the real server's step strategy, and the callback writing delays.csv."""
from __future__ import annotations

import os

from basinlab.engine.callbacks import Callback
from basinlab.errors import ConfigError
from basinlab.methods.asgd.real.delays import COLUMNS, CSV_NAME


def check_real(cfg) -> None:
    """Refuse, in one line, what a real server cannot honour."""
    n, mode = cfg.workers, cfg.server
    if cfg.delay is not None:
        raise ConfigError("--delay sets the simulated server's delay; real workers' delays are measured: use "
                          "--fixed-delay D to hold every gradient to delay D, or drop --delay")
    if cfg.worker_order != "round_robin":
        raise ConfigError(f"--worker-order {cfg.worker_order} orders simulated workers; real workers arrive in the "
                          f"order they finish: drop --worker-order with --real")
    if cfg.worker_trace is not None:
        raise ConfigError("--worker-trace replays a real run's order in the simulator; real workers make their own: "
                          "drop --worker-trace or --real")
    if cfg.fixed_delay is not None and cfg.max_delay is not None:
        raise ConfigError("--fixed-delay already bounds every delay; give --fixed-delay or --max-delay, not both")
    if mode == "ssgd" and cfg.fixed_delay not in (None, 0):
        raise ConfigError(f"--server ssgd is synchronous (delay 0); got --fixed-delay {cfg.fixed_delay}: use "
                          f"--server asgd for a delay")
    if cfg.fixed_delay is not None:
        d = cfg.fixed_delay
        if d >= n or n % (d + 1):
            allowed = ", ".join(str(k) for k in range(n) if n % (k + 1) == 0)
            raise ConfigError(f"--fixed-delay {d} with --workers {n}: each update takes the k = N/(D+1) gradients "
                              f"read D updates ago, so D+1 must divide N; allowed for {n} workers: {allowed}")
    if mode == "msgd" and cfg.fixed_delay not in (None, n - 1):
        raise ConfigError(f"--server msgd applies one worker's gradient per update; --fixed-delay must be "
                          f"workers - 1 = {n - 1} or absent, got {cfg.fixed_delay}")
    if cfg.adjust_lr and cfg.fixed_delay is None:
        raise ConfigError("--adjust-lr scales the lr for a delay known before training; real workers' delays are "
                          "measured: give --fixed-delay D, or set --lr from `basinlab stability --delays-from RUN` "
                          "of an earlier run")
    if cfg.amp == "fp16":
        raise ConfigError("--real does not support --amp fp16 (the loss scale would live in N+1 processes); use "
                          "--amp bf16 or none")
    if cfg.sync_bn:
        raise ConfigError("--sync-bn synchronises batch statistics across data-parallel processes; real workers "
                          "push their own (the server keeps the last pushed): drop --sync-bn")


def real_server(cfg):
    """(RealServerStep, [DelayFile]) for a --real config."""
    from basinlab.methods.asgd.real.server import RealServerStep
    check_real(cfg)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // (cfg.workers + 1))
    strategy = RealServerStep(cfg.server, cfg.workers, fixed_delay=cfg.fixed_delay, max_delay=cfg.max_delay,
                              on_worker_loss=cfg.on_worker_loss, threads=threads, adjust_lr=cfg.adjust_lr)
    return strategy, [DelayFile(strategy)]


class DelayFile(Callback):
    """Appends the real server's delay rows to delays.csv at each epoch's end (kept in checkpoints between)."""

    def __init__(self, strategy):
        self.strategy = strategy

    def setup(self, run) -> None:
        self.path = run.path / CSV_NAME

    def on_fit_start(self, run) -> None:
        """A new run starts the file; a resumed one cuts it to the rows its checkpoint had written."""
        written = self.strategy.delays.written
        if written == 0 or not self.path.is_file():
            self.path.write_text(",".join(COLUMNS) + "\n")
            return
        with open(self.path) as f:
            lines = f.readlines()[:written + 1]
        self.path.write_text("".join(lines))

    def on_epoch_end(self, run, row: dict) -> None:
        rows = self.strategy.delays.take_rows()
        with open(self.path, "a") as f:
            f.writelines(",".join(map(str, r)) + "\n" for r in rows)
        if run.is_main:
            self.plot(run)

    def plot(self, run) -> None:
        """plots/delays.png from the whole file (each epoch's distribution)."""
        import pandas as pd

        from basinlab.methods.asgd.real.plot import plot_delays
        table = pd.read_csv(self.path)
        if len(table):
            plot_delays(table, run.path / "plots" / "delays.png", title=f"{run.path.name}: measured delays")
