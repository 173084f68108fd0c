"""--real under torchrun: N+1 ranks on one machine or many, rank 0 the server and ranks 1..N the workers.

    torchrun --nnodes 2 --nproc_per_node 4 ... -m basinlab train --server asgd --workers 7 --real ...

`claim_rank(cfg)` is asked before a run is built. Outside torchrun, or without --real, it claims nothing. Under
torchrun it returns what this rank runs instead of ordinary data-parallel training:

- rank 0 leaves torchrun's variables behind, so that its trainer is a one-process run (the server). Its
  WorkerPool then publishes the workers' instructions in torchrun's rendezvous store (the resolved config, the
  server's address and a random key) and waits for the N connections, instead of starting processes.
- rank r >= 1 reads those instructions from the store and runs worker r-1 until the server says stop.

The server listens on every interface and is reached as $BASINLAB_SERVER_HOST, or else as this machine's host
name. The key travels through the rendezvous store, which is as open as torchrun's own. When any rank dies,
torchrun's agent ends the job (it does not keep survivors), so --on-worker-loss continue is a single-machine
feature; resume with --resume as usual.
"""
from __future__ import annotations

import json
import os
import socket
from datetime import timedelta

from basinlab.errors import ConfigError

STORE_KEY = "basinlab-real/instructions"
STORE_ENV = "BASINLAB_REAL_STORE"      # set in rank 0 once it is the server: where the rendezvous store is
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                      "ROLE_WORLD_SIZE")
STORE_TIMEOUT_S = 600


def claim_rank(cfg):
    """None (train as usual), or the callable this torchrun rank runs instead (see the module doc)."""
    if not getattr(cfg, "real", False) or "WORLD_SIZE" not in os.environ:
        return None
    from basinlab.engine.distributed import ProcessPlace
    place = ProcessPlace.from_environ()
    if place.world_size != cfg.workers + 1:
        raise ConfigError(f"--real under torchrun runs the server and its {cfg.workers} workers as "
                          f"{cfg.workers + 1} ranks; this job has {place.world_size}: launch --workers + 1 "
                          f"processes in all, or give --workers {place.world_size - 1}")
    address = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT', '29500')}"
    if place.rank == 0:
        return lambda: _become_server(address)
    return lambda: _work(address, place.rank - 1)


def _store(address: str):
    from torch.distributed import TCPStore
    host, port = address.rsplit(":", 1)
    return TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=STORE_TIMEOUT_S))


def _become_server(address: str) -> None:
    for name in TORCHRUN_VARIABLES:
        os.environ.pop(name, None)
    os.environ[STORE_ENV] = address


def serving_ranks() -> bool:
    """Whether this process is rank 0 of a torchrun job serving --real (its workers are the other ranks)."""
    return STORE_ENV in os.environ


def publish(instructions: dict, port: int) -> None:
    """Rank 0's WorkerPool: the workers' instructions into the store, with the address they dial."""
    host = os.environ.get("BASINLAB_SERVER_HOST") or socket.gethostname()
    _store(os.environ[STORE_ENV]).set(STORE_KEY, json.dumps({**instructions, "address": [host, port]}))


def _work(address: str, worker: int) -> int:
    import torch

    from basinlab.methods.asgd.real.worker import serve
    instructions = json.loads(_store(address).get(STORE_KEY))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local, local_rank = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    device = instructions["device"]
    if device in ("auto", "cuda") and torch.cuda.is_available():  # one GPU per rank of this machine, in turn
        device = f"cuda:{local_rank % torch.cuda.device_count()}"
    return serve({**instructions, "worker": worker, "device": device, "threads": max(1, cores // local)})
