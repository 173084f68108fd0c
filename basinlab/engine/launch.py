"""`basinlab train --nproc K`: start K processes with torchrun, and the option checks it shares with them.

Kept free of torch imports so that the launching process starts fast and refuses bad options (exit
status 2, one line) before any process exists. The distributed training itself is distributed.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from basinlab.config import FIELDS, TrainConfig
from basinlab.errors import ConfigError

DEFAULT_BATCH = 128  # the trainer's batch size when neither the options nor the model give one


def check_options(cfg: TrainConfig, world_size: int) -> None:
    """Refuse engine options that cannot run (or would silently differ) with `world_size` processes.

    Each method refuses its own options in its `configure(cfg, world_size, workflow)` (basinlab.methods.registry)."""
    if isinstance(cfg.dist_timeout, bool) or not isinstance(cfg.dist_timeout, int) or cfg.dist_timeout <= 0:
        raise ConfigError(f"--dist-timeout must be a positive number of seconds, got {cfg.dist_timeout!r}")
    if cfg.nproc is not None and (isinstance(cfg.nproc, bool) or not isinstance(cfg.nproc, int) or cfg.nproc < 1):
        raise ConfigError(f"--nproc must be a positive integer (processes on this machine), got {cfg.nproc!r}")
    if world_size > 1 and cfg.batch_size is not None:
        check_global_batch(cfg.batch_size, world_size)


def check_global_batch(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        up = -(-batch_size // world_size) * world_size
        raise ConfigError(f"--batch-size {batch_size} is the global batch and must split evenly over the "
                          f"{world_size} processes (world size {world_size}); use a multiple of {world_size}, "
                          f"e.g. {up}")


# ---------------------------------------------------------------------------------------------- --nproc
def record_errors(fn):
    """Under torchrun, write an exception's message to the error file the agent reads, so the job's
    failure summary names its root cause (torchrun otherwise prints only "exitcode: 1")."""
    if "TORCHELASTIC_ERROR_FILE" not in os.environ:
        return fn
    from torch.distributed.elastic.multiprocessing.errors import record
    return record(fn)


def launch_requested(args) -> bool:
    """`basinlab train --nproc K` (K > 1) outside a torchrun job."""
    nproc = getattr(args, "nproc", None)
    if nproc is None or "WORLD_SIZE" in os.environ:
        return False
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"--nproc must be a positive integer (processes on this machine), got {nproc!r}")
    return nproc > 1


def argv_from_args(args) -> list[str]:
    """The `basinlab train` arguments the user typed (argparse suppressed the defaults), minus --nproc."""
    argv = ["--config", str(args.config)] if getattr(args, "config", None) else []
    if getattr(args, "trust_model_code", False) is True:  # the person's word, not a field: passed on as given
        argv.append("--trust-model-code")
    for name, value in vars(args).items():
        if name not in FIELDS or name == "nproc":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def threads_per_process(nproc: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // nproc)


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    # --standalone: a rendezvous on a free local port, so concurrent jobs never collide on 29500.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "basinlab", "train", *argv]


def relaunch_with_torchrun(args, checked_config) -> int:
    """Check the options here (bad input: exit 2 before any process starts), then run torchrun.

    `checked_config(args, world_size)` builds the config and runs the methods' checks for that many processes.
    """
    nproc = args.nproc
    argv = argv_from_args(args)
    without = type(args)(**{k: v for k, v in vars(args).items() if k != "nproc"})
    check_options(checked_config(without, nproc), nproc)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))  # torchrun would force 1
    return run_forwarding_signals(torchrun_command(nproc, argv), env)


def run_forwarding_signals(command: list[str], env: dict) -> int:
    """Run `command`; SIGTERM/SIGINT sent to this process go to it (torchrun then stops its workers)."""
    proc = subprocess.Popen(command, env=env)

    def forward(signum, frame):
        proc.send_signal(signum)
    try:
        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        previous = {}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code
