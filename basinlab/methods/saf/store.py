"""SAF's per-example output store: the outputs of every training example over the last E + 1 epochs.

As the authors' `train_logits` (SAF_train.py): a ring of E + 1 slots of float32 outputs, one row per training
example; epoch e writes slot e mod (E + 1) and reads slot (e - E) mod (E + 1), the outputs of epoch e - E. Rows
start at zero (the authors' np.zeros); an example not trained in epoch e - E (the short last batch is dropped)
keeps the older value of its slot, as there. The store lives in host memory (the authors' numpy array) and is
sized and checked against the memory available before the run starts.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from basinlab.errors import ConfigError

MEMINFO = Path("/proc/meminfo")
USABLE_SHARE = 0.75  # of the available host memory: the data, the model and the run need the rest


def available_memory() -> tuple[int | None, str]:
    """(bytes of host memory available now, where that was read); (None, why) where it cannot be known."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available), "psutil.virtual_memory().available"
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, f"MemAvailable in {MEMINFO}"
    except (OSError, ValueError, IndexError):
        pass
    return None, f"neither psutil nor MemAvailable in {MEMINFO}"


def store_bytes(examples: int, classes: int, horizon: int) -> int:
    return examples * classes * (horizon + 1) * 4


def gib(count: int) -> str:
    return f"{count / 2 ** 30:.3g} GiB"


def check_store_fits(examples: int, classes: int, horizon: int, processes: int = 1) -> str:
    """Refuse (one line) a store that would not fit in USABLE_SHARE of the available host memory (`processes`
    on this machine each hold one); else the words that describe it for the log."""
    need = store_bytes(examples, classes, horizon)
    shape = f"{examples} examples x {classes} classes x {horizon + 1} epochs (--saf-horizon {horizon} + 1) x 4 bytes"
    total = need * processes
    each = f" in each of {processes} processes" if processes > 1 else ""
    available, source = available_memory()
    if available is not None and total > USABLE_SHARE * available:
        raise ConfigError(f"--saf stores every training example's outputs: {shape} = {gib(need)}{each}, more than "
                          f"{USABLE_SHARE:.0%} of the {gib(available)} of memory available ({source}); lower "
                          f"--saf-horizon, train on fewer examples (--train-limit), or use --mesa (no store)")
    where = f"{gib(available)} available ({source})" if available is not None else f"memory not checked: {source}"
    return f"{shape} = {gib(need)}{each} ({where})"


def local_processes(world_size: int) -> int:
    """Processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE; else all of them)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    except ValueError:
        return world_size


class OutputStore:
    """The ring of E + 1 epochs of outputs (CPU float32), read and written by example index."""

    def __init__(self, examples: int, classes: int, horizon: int):
        self.horizon = horizon
        self.slots = torch.zeros(horizon + 1, examples, classes)

    def write(self, epoch: int, indices: torch.Tensor, outputs: torch.Tensor) -> None:
        self.slots[epoch % (self.horizon + 1)].index_copy_(0, indices, outputs.detach().float().cpu())

    def read(self, epoch: int, indices: torch.Tensor, device) -> torch.Tensor:
        """The outputs the examples `indices` had in epoch `epoch` - E."""
        return self.slots[(epoch - self.horizon) % (self.horizon + 1)].index_select(0, indices).to(device)

    def state_dict(self) -> dict:
        return {"slots": self.slots}  # saved at once; no copy of what may be gigabytes

    def load_state_dict(self, state: dict) -> None:
        slots = state["slots"]
        if slots.shape != self.slots.shape:
            raise ConfigError(f"the checkpoint's SAF store has shape {tuple(slots.shape)} (epochs, examples, "
                              f"classes) but this run needs {tuple(self.slots.shape)}: resume with the options and "
                              f"data it was started with")
        self.slots.copy_(slots)
