"""Streamed image-folder datasets (imagenet, imagefolder): Pillow decoding in DataLoader workers.

Workers return uint8 crops; the loader normalises on the device (4x less to copy than float).
Each index a worker receives carries (epoch, example, input size), so persistent workers need no
state pushed to them, and the random crop of example i in epoch e comes from a generator seeded
with (seed, e, i): the same images whatever the number of workers.
"""
from __future__ import annotations

import math
import random
import traceback
import weakref
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from basinlab.data.formats import decode_rgb
from basinlab.data.loader import Loader, derive_seed, normalise, normalise_constants
from basinlab.errors import DataError

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)


def random_resized_crop_box(width: int, height: int, rng: random.Random, scale=SCALE,
                            ratio=RATIO) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a crop covering a random area fraction and aspect ratio
    (torchvision's RandomResizedCrop: 10 tries, then a central crop with the ratio clamped)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_transform(image, size: int, rng: random.Random):
    """RandomResizedCrop(size) + horizontal flip, on a Pillow image."""
    from PIL import Image
    left, top, w, h = random_resized_crop_box(image.width, image.height, rng)
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def eval_transform(image, size: int):
    """Resize the shorter side to round(size * 256 / 224), then center-crop size x size."""
    from PIL import Image
    short = round(size * 256 / 224)
    width, height = image.size
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = int(round((new_w - size) / 2)), int(round((new_h - size) / 2))
    return image.crop((left, top, left + size, top + size))


def to_uint8_chw(image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class ImageFileDataset(Dataset):
    """Indexed by (epoch, example, input size); returns (uint8 [3, size, size], label)."""

    def __init__(self, dataset_name: str, samples: list[tuple[str, int]], *, augment: bool, seed: int):
        self.dataset_name = dataset_name
        self.paths = [path for path, _ in samples]
        self.labels = [label for _, label in samples]
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        epoch, i, size = key
        image = decode_rgb(self.paths[i], self.dataset_name)
        if self.augment:
            image = train_transform(image, size, random.Random(derive_seed("sample", self.seed, epoch, i)))
        else:
            image = eval_transform(image, size)
        return to_uint8_chw(image), self.labels[i]


class _PlanSampler(Sampler):
    """Batch sampler replaying the owning loader's plan for the epoch set just before iterating
    (the sampler runs in the main process, so this works with persistent workers)."""

    def __init__(self, loader: StreamLoader):
        # A weak reference: the loader's finalizer holds the DataLoader, which holds this sampler,
        # so a strong reference back would keep the loader (and its workers) alive for ever.
        self.loader = weakref.proxy(loader)
        self.epoch = 0
        self.start_batch = 0

    def __iter__(self):
        # Built eagerly: a lazy generator kept by the DataLoader would hold the loader strongly.
        size = self.loader.input_shape[-1]
        return iter([[(self.epoch, i, size) for i in index.tolist()]
                     for _, index in self.loader.index_batches(self.epoch, self.start_batch)])

    def __len__(self) -> int:
        return max(0, len(self.loader) - self.start_batch)


def _worker_error_line(exc: DataError) -> str:
    """The original one-line message of a DataError re-raised from a worker (which adds a traceback)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if "DataError: " in line:
            return line.split("DataError: ", 1)[1]
    return lines[-1] if lines else "data loading failed"


def _release_workers(dataloader: DataLoader) -> None:
    dataloader._iterator = None   # DataLoader keeps its persistent-worker iterator there (private)


class StreamLoader(Loader):
    """Image files decoded by `workers` processes; see Loader for order and sharding."""

    def __init__(self, dataset_name: str, samples: list[tuple[str, int]], *, num_classes: int, mean, std,
                 batch_size: int, train: bool, augment: bool = True, input_size: int = 224, device="cpu",
                 seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0):
        super().__init__(dataset_name, num_classes=num_classes, num_examples=len(samples),
                         native_shape=(3, input_size, input_size), batch_size=batch_size, train=train,
                         device=device, seed=seed, rank=rank, world_size=world_size)
        self.dataset = ImageFileDataset(dataset_name, samples, augment=train and augment, seed=seed)
        self.scale, self.shift = normalise_constants(mean, std, self.device)
        self.sampler = _PlanSampler(self)
        self.loader = DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            generator=torch.Generator())  # its own generator: iterating must not consume the global RNG
        # When a loader dies inside a reference cycle (an exception's frames, say), the garbage
        # collector closes the workers' queues before the DataLoader can tell them to stop, and
        # each worker then takes 5 s to time out. This finalizer holds the DataLoader, so its
        # workers are stopped while their queues still work.
        self._finalizer = weakref.finalize(self, _release_workers, self.loader)
        self._finalizer.atexit = False

    def close(self) -> None:
        """Stop the worker processes now; a later epoch starts new ones."""
        _release_workers(self.loader)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.epoch, self.sampler.start_batch = epoch, start_batch
        batches = iter(self.loader)
        while (batch := self._next_batch(batches)) is not None:
            images, labels = batch
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            yield normalise(images, self.scale, self.shift), labels

    @staticmethod
    def _next_batch(batches):
        """The next batch, or None at the end; a worker's DataError comes back as its own one line."""
        try:
            return next(batches)
        except StopIteration:
            return None
        except DataError as exc:
            message = _worker_error_line(exc)
            # torch's re-raise leaves a frame <-> exception cycle that would keep the DataLoader
            # alive until a garbage collection, whose teardown then waits 5 s on each worker.
            traceback.clear_frames(exc.__traceback__)
        raise DataError(message)
