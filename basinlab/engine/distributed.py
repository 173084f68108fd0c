"""Data-parallel training over processes started by torchrun (or `basinlab train --nproc K`).

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE; a run with WORLD_SIZE > 1 is distributed:

- one process per device: gloo on CPU, nccl on CUDA (process LOCAL_RANK uses cuda:LOCAL_RANK);
- `-b` is the global batch: rank r trains on rows [r b/W, (r+1) b/W) of every global batch (the loaders
  shard); DDP averages the per-rank gradients of per-rank mean losses, which with equal shards is the
  gradient of the mean loss over the global batch: the single-process update;
- buffers (BatchNorm running statistics, online-norm state) stay per process while training (no
  collective per step); rank 0's are copied to every rank before each validation, so the model validated
  on all shards is exactly the one rank 0 checkpoints;
- only rank 0 writes (run.py); every rank reads the checkpoint on resume.

`DataParallel` is the trainer's handle: in a single-process run each of its methods does nothing.
"""
from __future__ import annotations

import datetime
import gc
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from basinlab.config import TrainConfig
from basinlab.data.loader import derive_seed
from basinlab.engine.launch import DEFAULT_BATCH, check_global_batch, check_options
from basinlab.engine.setup import pick_device
from basinlab.errors import ConfigError

# Imported before any process group exists, on purpose: torch.distributed.nn.functional binds the group that
# exists when it is first imported (torch._dynamo imports it, e.g. at an optimizer's first param group) into its
# functions' default arguments, so a group started before it is never freed by destroy_process_group. Its gloo
# threads then live until the interpreter exits, where 2 of 151 two-process test jobs aborted ("terminate called
# without an active exception", SIGABRT after every record was written). Imported now, those defaults are None.
# (A PyTorch built without distributed support has no such module, and no group either.)
if dist.is_available():
    import torch.distributed.nn  # noqa: F401


@dataclass(frozen=True)
class ProcessPlace:
    """Where this process sits in the job, from the environment torchrun sets."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environ(cls, environ=None) -> ProcessPlace:
        environ = os.environ if environ is None else environ
        values = {}
        for name, key, default in (("rank", "RANK", 0), ("local_rank", "LOCAL_RANK", 0),
                                   ("world_size", "WORLD_SIZE", 1), ("local_world_size", "LOCAL_WORLD_SIZE", None)):
            text = environ.get(key)
            try:
                values[name] = default if text is None else int(text)
            except ValueError:
                raise ConfigError(f"environment variable {key}={text!r} must be an integer "
                                  f"(torchrun sets it; unset it for a single-process run)") from None
        if values["local_world_size"] is None:
            values["local_world_size"] = values["world_size"]
        place = cls(**values)
        if not (0 <= place.rank < place.world_size and 0 <= place.local_rank < max(place.local_world_size, 1)):
            raise ConfigError(f"RANK {place.rank} / LOCAL_RANK {place.local_rank} do not fit WORLD_SIZE "
                              f"{place.world_size} / LOCAL_WORLD_SIZE {place.local_world_size}; launch with torchrun")
        return place


def summed_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the data-parallel processes (itself in one process): what every rank calls at the same
    point to turn its shard's counters into the run's (a method's epoch columns)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def current_world_size() -> int:
    """Processes in this job (1 outside torchrun): what methods check their options against."""
    return ProcessPlace.from_environ().world_size


# ---------------------------------------------------------------------------------------------- checks
def check_with_device(cfg: TrainConfig, world_size: int, device: torch.device) -> None:
    """Checks that need the resolved batch size and device (inside every process)."""
    batch = cfg.batch_size or DEFAULT_BATCH
    check_global_batch(batch, world_size)
    local = batch // world_size
    if cfg.ghost_batch is not None and local % cfg.ghost_batch:
        raise ConfigError(f"--ghost-batch {cfg.ghost_batch} must divide the per-process batch "
                          f"{batch}/{world_size} = {local} so that ghost batches match a single-process run")
    if cfg.sync_bn and device.type != "cuda":
        raise ConfigError(f"--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on {device.type}); "
                          f"drop --sync-bn: each process then normalises over its {local} samples")


def select_device(name: str, place: ProcessPlace) -> torch.device:
    """auto/cuda -> cuda:LOCAL_RANK when CUDA exists, else CPU; explicit devices are checked."""
    if not place.distributed:
        return pick_device(name)
    if name in ("auto", "cuda") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if place.local_rank >= count:
            raise ConfigError(f"process LOCAL_RANK {place.local_rank} has no GPU: this machine has {count}; "
                              f"start at most {count} processes per machine (--nproc_per_node)")
        return torch.device("cuda", place.local_rank)
    if name == "auto":
        return torch.device("cpu")
    device = pick_device(name)
    if device.type == "mps":
        raise ConfigError("--device mps cannot run a multi-process job (gloo/nccl have no MPS support); "
                          "use --device cpu or run one process")
    if device.type == "cuda" and device.index is not None and place.local_world_size > 1:
        raise ConfigError(f"--device {name} would put all {place.local_world_size} processes of this machine "
                          f"on one GPU; use --device cuda (process LOCAL_RANK takes cuda:LOCAL_RANK)")
    return device


# ---------------------------------------------------------------------------------------------- the handle
class DataParallel:
    """Process group, DDP wrapping and the few collectives the trainer needs."""

    def __init__(self, cfg: TrainConfig, place: ProcessPlace | None = None):
        self.cfg = cfg
        self.place = place or ProcessPlace.from_environ()
        self.owns_group = False
        self.device: torch.device | None = None
        check_options(cfg, self.place.world_size)
        if cfg.nproc is not None and self.place.distributed and cfg.nproc != self.place.world_size:
            raise ConfigError(f"--nproc {cfg.nproc} inside a torchrun job of {self.place.world_size} processes; "
                              f"drop --nproc (torchrun already started the processes)")
        if cfg.nproc is not None and cfg.nproc > 1 and not self.place.distributed:
            raise ConfigError(f"nproc={cfg.nproc} starts processes only from the command line "
                              f"(`basinlab train --nproc {cfg.nproc}`); from Python, launch your script with "
                              f"`torchrun --nproc_per_node {cfg.nproc} script.py`")

    @property
    def active(self) -> bool:
        return self.place.distributed

    @property
    def rank(self) -> int:
        return self.place.rank

    @property
    def world_size(self) -> int:
        return self.place.world_size

    def start(self) -> torch.device:
        """Pick this process's device and join the process group (gloo on CPU, nccl on CUDA)."""
        self.device = select_device(self.cfg.device, self.place)
        if not self.active:
            return self.device
        check_with_device(self.cfg, self.world_size, self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=self.cfg.dist_timeout))
            self.owns_group = True
        elif dist.get_world_size() != self.world_size:
            raise ConfigError(f"the process group already started has {dist.get_world_size()} processes but "
                              f"WORLD_SIZE is {self.world_size}")
        return self.device

    def convert_norms(self, model: torch.nn.Module, log) -> torch.nn.Module:
        """--sync-bn: every layer that normalises with batch statistics takes them over the global batch: BatchNorm
        as SyncBatchNorm, basinlab's own (Batch Renorm, EvoNorm-B0) through their `sync_batch_statistics`."""
        if not self.cfg.sync_bn:
            return model
        if not self.active:
            raise ConfigError("--sync-bn needs a data-parallel run (--nproc N, or torchrun): a single process already "
                              "normalises over the whole batch; drop --sync-bn")
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        count = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
        own = [m for m in converted.modules() if hasattr(m, "sync_batch_statistics")]
        for module in own:
            module.sync_batch_statistics = True
        layers = [f"{count} BatchNorm"] if count else []
        layers += [f"{sum(type(m) is kind for m in own)} {kind.__name__}" for kind in dict.fromkeys(map(type, own))]
        log.info(f"--sync-bn: {', '.join(layers)} layers synchronised across {self.world_size} processes"
                 if layers else "--sync-bn: the model has no layer with batch statistics; nothing to synchronise")
        return converted

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP around the module that trains; buffers are not broadcast each step (see module doc)."""
        if not self.active:
            return model
        self.sync_buffers(model)  # identical start even where DDP's init sync skips buffers
        kwargs = {"device_ids": [self.device.index] if self.device.type == "cuda" else None}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
            kwargs["forward_sync_buffers"] = False   # torch >= 2.13 spelling; still syncs at init
        else:
            kwargs["broadcast_buffers"] = False
        return DistributedDataParallel(model, **kwargs)

    # ------------------------------------------------------------------------------------ collectives
    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Copy rank 0's buffers (BN running statistics, online-norm state) to every rank."""
        if self.active:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.active:
            if self.device is not None and self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def broadcast_object(self, value):
        """Rank 0's `value` on every rank (e.g. a run name taken from the clock)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_true(self, flag: bool) -> bool:
        """True only where `flag` is true on every rank (so all ranks skip a batch together)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item() > 0)

    def average_gradients(self, params) -> None:
        """Mean of each parameter's .grad over the ranks (for gradients computed without DDP's all-reduce)."""
        if not self.active:
            return
        for param in params:
            dist.all_reduce(param.grad)
            param.grad.div_(self.world_size)

    def seed_process_rng(self, seed: int, epoch: int, batch: int) -> None:
        """Distinct, reproducible global RNG streams per rank (dropout masks must not repeat across ranks)."""
        if self.active:
            torch.manual_seed(derive_seed("process-rng", seed, self.rank, epoch, batch))

    def describe(self, batch: int) -> str:
        backend = dist.get_backend() if dist.is_initialized() else "none"
        return (f"distributed: {self.world_size} processes ({backend}), global batch {batch} = "
                f"{batch // self.world_size} per process, {torch.get_num_threads()} threads per process, "
                f"sync-bn {'on' if self.cfg.sync_bn else 'off'}; buffers per process, rank 0's before validation")

    def finish(self) -> None:
        """Wait for rank 0's last records, then leave the process group (if this run started it). The run has
        dropped its DDP wrapper: collected now (it sits in reference cycles), the group is freed when destroyed,
        here or by the script that started it, not at the interpreter's exit, where its gloo threads sometimes
        aborted the process (SIGABRT) after every record was written."""
        if not self.active:
            return
        self.barrier()
        gc.collect()
        if self.owns_group:
            dist.destroy_process_group()
            self.owns_group = False
