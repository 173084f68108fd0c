"""Deterministic, non-augmented batches of a checkpoint's data for measurements.

Measurements read the same data many times (one pass per Hessian-vector product or grid point), so
the batches must be identical on every pass and free of augmentation. Training loaders shuffle per
epoch and drop the last short batch; measuring the *whole* training set therefore uses the evaluation
batch plan (every example once, stored order), while measuring the first N batches uses the training
order of epoch 0 (a seeded random subset: the first N batches the run itself trained on).
"""
from __future__ import annotations

import itertools

import torch

from basinlab.choices import SPLITS
from basinlab.engine.inspect import loader_for
from basinlab.errors import ConfigError
from basinlab.utils.checks import check_int


class MeasurementData:
    """Re-iterable (x, y) batches that look like a basinlab Loader to ``evaluate`` and ``sharpness``.

    ``epoch(e)`` ignores ``e``: a measurement sees the same batches on every pass.
    """

    def __init__(self, source, *, max_batches: int | None = None, num_classes: int | None = None,
                 dtype: torch.dtype | None = None):
        self._source = source            # a Loader (streamed each pass) or a list of batches (in memory)
        self.max_batches = max_batches
        self.num_classes = num_classes
        self.dtype = dtype               # inputs cast to it (a float64 measurement), else as loaded
        self._count = None

    def epoch(self, epoch: int = 0, start_batch: int = 0):
        batches = self._source if isinstance(self._source, list) else self._source.epoch(0)
        batches = itertools.islice(batches, start_batch, self.max_batches)
        return batches if self.dtype is None else ((x.to(self.dtype), y) for x, y in batches)

    def cast(self, dtype: torch.dtype) -> MeasurementData:
        """The same batches with the inputs in `dtype`."""
        return MeasurementData(self._source, max_batches=self.max_batches, num_classes=self.num_classes,
                               dtype=dtype)

    def __iter__(self):
        return iter(self.epoch(0))

    def __len__(self) -> int:
        if isinstance(self._source, list):
            return len(self._source[: self.max_batches])
        return min(len(self._source), self.max_batches or len(self._source))

    @property
    def num_examples(self) -> int:
        if self._count is None:
            self._count = sum(int(y.shape[0]) for _, y in self.epoch(0))
        return self._count

    def in_memory(self, max_bytes: float = 2 * 2**30) -> MeasurementData:
        """The same batches held as tensors (read once), unless they would exceed ``max_bytes``."""
        if isinstance(self._source, list):
            return self
        first = next(iter(self.epoch(0)), None)
        if first is None:
            return self
        per_batch = first[0].element_size() * first[0].numel()
        if per_batch * len(self) > max_bytes:
            return self
        return MeasurementData([(x, y) for x, y in self.epoch(0)], num_classes=self.num_classes)


def check_count(value, name: str) -> int | None:
    """A positive integer count, or None (not given)."""
    return check_int(value, name, optional=True)


def measurement_data(cfg, split: str = "train", *, batch_size: int = 128, batches: int | None = None,
                     limit: int | None = None, dataset: str | None = None, datasets_dir=None,
                     device="cpu", clamp: bool = False) -> MeasurementData:
    """Batches of ``split`` of the run's dataset without augmentation.

    ``limit=N``: N examples of the split, chosen as the run's --limit-mode chooses (class-stratified by
    default; default N: the run's --train-limit or --val-limit, i.e. the examples the run trained or
    validated on). ``batches=N``: the first N batches of those (training split: in the training order of
    epoch 0, seeded by the run's seed: a random subset); ``clamp`` lowers a too large N to the batches
    available instead of refusing it. Without ``batches`` every example is used once.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")
    check_count(batch_size, "--batch-size")
    check_count(batches, "--batches")
    check_count(limit, "--limit")
    if limit is None:  # the run's own data: a run trained on a subset of N examples is measured on it
        limit = cfg.train_limit if split == "train" else cfg.val_limit
    # without --batches: every example once in stored order; with it, the run's epoch-0 training order
    loader = loader_for(cfg, dataset=dataset, split=split, datasets_dir=datasets_dir, batch_size=batch_size,
                        limit=limit, device=device, training_order=batches is not None)
    if split == "train" and batches is not None and batches > len(loader):
        if not clamp:
            raise ConfigError(f"--batches {batches} exceeds the {len(loader)} full training batches of "
                              f"{batch_size} examples")
        batches = len(loader)
    return MeasurementData(loader, max_batches=batches, num_classes=loader.num_classes)


def first_training_batches(cfg, count: int, batch_size: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` training batches of epoch 0 without augmentation, as tensors (for the monitor)."""
    limit = cfg.train_limit
    loader = loader_for(cfg, split="train", batch_size=batch_size, limit=limit, device=device,
                        training_order=True)
    if count > len(loader):
        raise ConfigError(f"--sharpness-batches {count} exceeds the {len(loader)} training batches of "
                          f"{batch_size} examples")
    return list(itertools.islice(loader.epoch(0), count))
