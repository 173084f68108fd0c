"""`configure(cfg)`: the parameter-server step strategy for --server (simulated, or --real worker processes with
their delay log), and the checks of its options."""
from __future__ import annotations

from basinlab.errors import ConfigError
from basinlab.methods.asgd.server import ParameterServerStep, resolve_delay

METHOD_NAME = "--server (asynchronous SGD)"


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    if cfg.server is None:  # its detail options without it were refused with the config (config.check_relations)
        return None, []
    if workflow == "lr-range":
        raise ConfigError(f"--server {cfg.server} cannot run in the LR range test: the test reads each step's loss "
                          f"as the answer to that step's lr, and the server's delayed gradients come from earlier "
                          f"lrs; run the LR range test without --server")
    if cfg.real and (world_size > 1 or (cfg.nproc or 1) > 1):
        raise ConfigError(f"--real runs its server and {cfg.workers} workers as processes of their own: start them "
                          f"yourself (basinlab train ... --real) or as {cfg.workers + 1} torchrun ranks (torchrun "
                          f"--nproc_per_node {cfg.workers + 1} -m basinlab train ... --real), not with --nproc")
    if world_size > 1:
        raise ConfigError(f"--server {cfg.server} simulates its asynchronous workers inside one process and "
                          f"cannot run in a {world_size}-process job; run it without torchrun/--nproc")
    if cfg.nproc is not None and cfg.nproc > 1:
        raise ConfigError(f"--server simulates its {cfg.workers} workers in one process; --nproc {cfg.nproc} is not "
                          f"supported with it (allowed: --nproc 1 or none)")
    if cfg.real:
        return configure_real(cfg)
    if cfg.worker_trace is not None:
        return configure_replay(cfg)
    resolve_delay(cfg.server, cfg.workers, cfg.delay)
    strategy = ParameterServerStep(cfg.server, cfg.workers, cfg.delay, schedule=cfg.worker_order,
                                   adjust_lr=cfg.adjust_lr, seed=cfg.seed)
    return strategy, []


def configure_real(cfg):
    """--real: N worker processes on this machine and the server in this one (real/server.py)."""
    from basinlab.methods.asgd.real.method import real_server
    return real_server(cfg)


def configure_replay(cfg):
    """--worker-trace: the simulator replaying a real run's arrivals, with its own delays.csv."""
    from basinlab.methods.asgd.real.method import DelayFile
    from basinlab.methods.asgd.replay import TraceReplayStep
    if cfg.delay is not None or cfg.worker_order != "round_robin":
        raise ConfigError("--worker-trace sets the order and so the delays; drop --delay and --worker-order")
    strategy = TraceReplayStep(cfg.server, cfg.workers, cfg.worker_trace, adjust_lr=cfg.adjust_lr, seed=cfg.seed)
    return strategy, [DelayFile(strategy)]
