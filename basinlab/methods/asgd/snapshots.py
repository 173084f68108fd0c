"""Weight snapshots of the simulated parameter server: flat preallocated buffers, copied in place.

A snapshot holds a copy of the model's parameters and buffers in one flat tensor per dtype; each
tensor of the model has a view into it with the same shape and strides (so a channels_last weight
copies as one dense block). Moving weights between the model and a snapshot is one
``torch._foreach_copy_`` per direction: no allocation and no deep copy per step.

:class:`SnapshotPool` keeps the server versions that some worker (or the server) still holds, with
reference counts, and recycles freed snapshots. Under round-robin scheduling exactly d+1 versions are
alive, so the pool never grows past d+1 snapshots (the reference kept N full copies).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _is_dense(t: Tensor) -> bool:
    """True when t's elements fill a block of t.numel() elements without gaps (any dim order)."""
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


class FlatLayout:
    """Where each tensor of a list lives inside one flat buffer per (dtype, device)."""

    def __init__(self, tensors: list[Tensor]):
        self.tensors = list(tensors)
        self.keys: list[tuple] = []
        self.places: list[tuple[int, int]] = []   # (flat index, offset) per tensor
        sizes: list[int] = []
        for t in self.tensors:
            key = (t.dtype, t.device)
            if key not in self.keys:
                self.keys.append(key)
                sizes.append(0)
            index = self.keys.index(key)
            self.places.append((index, sizes[index]))
            sizes[index] += t.numel()
        self.sizes = sizes

    @property
    def nbytes(self) -> int:
        return sum(n * dtype.itemsize for n, (dtype, _) in zip(self.sizes, self.keys))

    def allocate(self) -> list[Tensor]:
        return [torch.empty(n, dtype=dtype, device=device) for n, (dtype, device) in zip(self.sizes, self.keys)]

    def views(self, flats: list[Tensor]) -> list[Tensor]:
        """Views of `flats` shaped (and strided, when dense) like the layout's tensors."""
        out = []
        for t, (index, offset) in zip(self.tensors, self.places):
            block = flats[index][offset:offset + t.numel()]
            out.append(block.as_strided(t.shape, t.stride()) if _is_dense(t) else block.view(t.shape))
        return out


def copy_all(dst: list[Tensor], src: list[Tensor]) -> None:
    if dst:
        torch._foreach_copy_(dst, src)


@dataclass
class Snapshot:
    """One server version: flat storage plus views split into parameters and buffers."""

    flats: list[Tensor]
    params: list[Tensor]
    buffers: list[Tensor]
    refs: int = 0


class SnapshotPool:
    """Server versions still held by someone, by version number, with recycling of freed storage.

    `params` is empty when the delay is 0: every worker then computes on the current weights, which
    the model already holds, so only buffers need a copy.
    """

    def __init__(self, params: list[Tensor], buffers: list[Tensor]):
        self.n_params = len(params)
        self.layout = FlatLayout(list(params) + list(buffers))
        self.live: dict[int, Snapshot] = {}
        self.free: list[Snapshot] = []
        self.peak = 0

    @property
    def snapshot_bytes(self) -> int:
        return self.layout.nbytes

    def _new(self) -> Snapshot:
        if self.free:
            return self.free.pop()
        flats = self.layout.allocate()
        views = self.layout.views(flats)
        return Snapshot(flats, views[:self.n_params], views[self.n_params:])

    def publish(self, version: int, params: list[Tensor], buffers: list[Tensor], refs: int) -> Snapshot:
        """Store a copy of (params, buffers) as `version`, held `refs` times."""
        snap = self._new()
        copy_all(snap.params, params)
        copy_all(snap.buffers, buffers)
        snap.refs = refs
        self.live[version] = snap
        self.peak = max(self.peak, len(self.live))
        return snap

    def release(self, version: int, count: int = 1) -> None:
        snap = self.live[version]
        snap.refs -= count
        if snap.refs <= 0:
            self.free.append(self.live.pop(version))

    def __getitem__(self, version: int) -> Snapshot:
        return self.live[version]

    # ------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"versions": {v: {"flats": s.flats, "refs": s.refs} for v, s in self.live.items()},
                "peak": self.peak}

    def load_state_dict(self, state: dict) -> None:
        self.free.extend(self.live.values())
        self.live = {}
        for version, saved in state["versions"].items():
            snap = self._new()
            copy_all(snap.flats, list(saved["flats"]))
            snap.refs = int(saved["refs"])
            self.live[int(version)] = snap
        self.peak = int(state["peak"])
