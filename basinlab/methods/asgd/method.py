"""`configure(cfg)`: the parameter-server step strategy for --server, and the checks of its options."""
from __future__ import annotations

from basinlab.errors import ConfigError
from basinlab.methods.asgd.schedule import SCHEDULES
from basinlab.methods.asgd.server import ParameterServerStep, resolve_delay

METHOD_NAME = "--server (asynchronous SGD)"


def _refuse_without_server(cfg) -> None:
    """Server options without --server would silently do nothing: say so."""
    given = []
    if cfg.workers != 1:
        given.append(f"--workers {cfg.workers}")
    if cfg.delay is not None:
        given.append(f"--delay {cfg.delay}")
    if cfg.adjust_lr:
        given.append("--adjust-lr")
    if cfg.schedule != "round_robin":
        given.append(f"--schedule {cfg.schedule}")
    if given:
        raise ConfigError(f"{', '.join(given)} need(s) --server ssgd|asgd|msgd (without --server training is plain "
                          f"single-worker SGD)")


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    if cfg.server is None:
        _refuse_without_server(cfg)
        return None, []
    if workflow == "lr-range":
        raise ConfigError(f"--server {cfg.server} cannot run in the LR range test: the test reads each step's loss "
                          f"as the answer to that step's lr, and the server's delayed gradients come from earlier "
                          f"lrs; run the LR range test without --server")
    if world_size > 1:
        raise ConfigError(f"--server {cfg.server} simulates its asynchronous workers inside one process and "
                          f"cannot run in a {world_size}-process job; run it without torchrun/--nproc")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}; got {cfg.schedule!r}")
    resolve_delay(cfg.server, cfg.workers, cfg.delay)
    if cfg.nproc is not None and cfg.nproc > 1:
        raise ConfigError(f"--server simulates its {cfg.workers} workers in one process; --nproc {cfg.nproc} is not "
                          f"supported with it (allowed: --nproc 1 or none)")
    strategy = ParameterServerStep(cfg.server, cfg.workers, cfg.delay, schedule=cfg.schedule,
                                   adjust_lr=cfg.adjust_lr, seed=cfg.seed)
    return strategy, []
