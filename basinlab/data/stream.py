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

from basinlab.data.catalog import data_error
from basinlab.data.formats import decode_rgb, one_line
from basinlab.data.loader import Loader, derive_seed, normalise, normalise_constants
from basinlab.data.transforms import image_to_tensor, seeded_rngs
from basinlab.errors import BasinlabError

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


def train_transform(image, size, rng: random.Random):
    """RandomResizedCrop(size) + horizontal flip, on a Pillow image; size N or (height, width)."""
    from PIL import Image
    height, width = (size, size) if isinstance(size, int) else size
    left, top, w, h = random_resized_crop_box(image.width, image.height, rng)
    image = image.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def eval_transform(image, size, scale_size: int | None = None):
    """Resize the shorter side to scale_size (default round(size * 256 / 224)), then center-crop size
    (N or (height, width))."""
    from PIL import Image
    crop_h, crop_w = (size, size) if isinstance(size, int) else size
    short = scale_size or round(max(crop_h, crop_w) * 256 / 224)
    width, height = image.size
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = int(round((new_w - crop_w) / 2)), int(round((new_h - crop_h) / 2))
    return image.crop((left, top, left + crop_w, top + crop_h))


def to_uint8_chw(image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class ImageFileDataset(Dataset):
    """Indexed by (epoch, example, (height, width), copy); returns (uint8 [3, h, w], label), or the
    model's per-sample input_transform's tensor. `copy` numbers the duplicates of an example."""

    def __init__(self, dataset_name: str, samples: list[tuple[str, int]], *, augment: bool, seed: int):
        self.dataset_name = dataset_name
        self.paths = [path for path, _ in samples]
        self.labels = [label for _, label in samples]
        self.augment = augment
        self.seed = seed
        self.scale_size: int | None = None
        self.transform = None   # the model's per-sample input_transform for this split
        self.first_shape: tuple[tuple[int, ...], str] | None = None   # (its output's shape, for which file)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int, tuple[int, int], int]) -> tuple[torch.Tensor, int]:
        epoch, i, size, copy = key
        path = self.paths[i]
        image = decode_rgb(path, self.dataset_name)
        try:
            tensor = self._transform(image, epoch, i, size, copy)
        except BasinlabError as exc:   # the model's transform returned something unusable
            raise type(exc)(f"{exc} (on {path})") from None
        except Exception as exc:  # noqa: BLE001 - whatever a transform raises on this image, name the image
            doer = "the model's input_transform" if self.transform is not None else "the crop and resize"
            raise data_error(self.dataset_name, f"{doer} failed on this image ({one_line(exc)})", path,
                             "an image it can transform") from None
        if self.transform is not None:
            self._check_shape(tuple(tensor.shape), path)
        return tensor, self.labels[i]

    def _check_shape(self, shape: tuple[int, ...], path: str) -> None:
        """The model's transform must give one shape for every image, or batches cannot be stacked."""
        if self.first_shape is None:
            self.first_shape = (shape, path)
        elif shape != self.first_shape[0]:
            raise data_error(self.dataset_name, f"the model's input_transform gave {list(shape)} for this image but "
                             f"{list(self.first_shape[0])} for {self.first_shape[1]}", path,
                             "one shape for every image: resize or crop in the transform")

    def _transform(self, image, epoch: int, i: int, size: tuple[int, int], copy: int) -> torch.Tensor:
        if self.transform is not None:
            with seeded_rngs(derive_seed("sample-transform", self.seed, epoch, i, copy)):
                return image_to_tensor(self.transform(image), "input_transform")
        if self.augment:
            parts = ("sample", self.seed, epoch, i) + ((copy,) if copy else ())  # copy 0: the plain draw
            image = train_transform(image, size, random.Random(derive_seed(*parts)))
        else:
            image = eval_transform(image, size, self.scale_size)
        return to_uint8_chw(image)


class _PlanSampler(Sampler):
    """Batch sampler replaying the owning loader's plan for the epoch set just before iterating
    (the sampler runs in the main process, so this works with persistent workers)."""

    def __init__(self, loader: StreamLoader):
        # A weak reference: the loader's finalizer holds the DataLoader, which holds this sampler,
        # so a strong reference back would keep the loader (and its workers) alive for ever.
        self.loader = weakref.proxy(loader)
        self.epoch = 0
        self.start_batch = 0
        self.stride = 1

    def __iter__(self):
        # Built eagerly: a lazy generator kept by the DataLoader would hold the loader strongly.
        return iter([self.loader.batch_keys(self.epoch, index)
                     for _, index in self.loader.index_batches(self.epoch, self.start_batch, self.stride)])

    def __len__(self) -> int:
        return len(range(self.start_batch, len(self.loader), self.stride))


def _worker_error_line(exc: BasinlabError) -> str:
    """The original one-line message of an error re-raised from a worker (which adds a traceback)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    marker = f"{type(exc).__name__}: "
    for line in reversed(lines):
        if marker in line:
            return line.split(marker, 1)[1]
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

    def set_scale_size(self, size: int | None) -> None:
        """Evaluation resize of the shorter side before the centre crop (data regime's scale_size)."""
        self._settle_workers(self.dataset.scale_size != size)
        self.dataset.scale_size = size

    def set_sample_transform(self) -> None:
        """Hand the model's per-sample input_transform to the dataset the workers hold; a new one is tried
        on the first batch here, so that a transform failing on these images is refused at setup."""
        transform = self.sample_transform()
        if self.dataset.transform is transform:
            return
        self._settle_workers(True)
        self.dataset.transform, self.dataset.first_shape = transform, None
        if transform is not None:
            self.check_first_batch()   # also records the shape every later image must have

    def batch_keys(self, epoch: int, index: torch.Tensor) -> list[tuple]:
        """The dataset keys of one batch: (epoch, example, input size, copy), copy by copy."""
        size = tuple(self.input_shape[-2:])
        copies = self.duplicates if self.train else 1
        return [(epoch, i, size, c) for c in range(copies) for i in index.tolist()]

    def check_first_batch(self) -> None:
        """Decode and transform this rank's first batch here (no worker processes), so that an undecodable
        image or a failing transform stops the run at setup, naming the file, not in the middle of epoch 1."""
        first = next(self.index_batches(0), None)
        for key in self.batch_keys(0, first[1]) if first is not None else []:
            self.dataset[key]   # decoded and transformed, then dropped
        if first is not None and len(first[1]):
            self.first_image_size = decode_rgb(self.dataset.paths[int(first[1][0])], self.dataset.dataset_name).size

    def size_note(self) -> str | None:
        """A log line when the images are smaller than the input they are resized to (e.g. CIFAR-10 as an image
        folder: 32x32 made 224x224), which costs 49x the compute and is easy to miss."""
        width, height = getattr(self, "first_image_size", (0, 0))
        target = tuple(self.input_shape[-2:])
        if not width or (height >= target[0] and width >= target[1]):
            return None
        return (f"data: the images are {width}x{height} (the first one) and are resized up to {target[0]}x{target[1]}, "
                f"the input size of image folders; a model's data_regime input_size (e.g. --model-config "
                f"\"{{'data_regime': [{{'epoch': 0, 'input_size': {height}}}]}}\") trains them at their size")

    def _settle_workers(self, changed: bool) -> None:
        if changed:
            self.close()  # persistent workers hold a copy of the dataset: the next epoch starts new ones

    def epoch(self, epoch: int, start_batch: int = 0, stride: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.epoch, self.sampler.start_batch, self.sampler.stride = epoch, start_batch, stride
        batches = iter(self.loader)
        batch_number = start_batch
        while (batch := self._next_batch(batches)) is not None:
            images, labels = batch
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if images.dtype == torch.uint8:
                images = normalise(images, self.scale, self.shift)
            yield self.finish_batch(images, epoch, batch_number), labels
            batch_number += stride

    @staticmethod
    def _next_batch(batches):
        """The next batch, or None at the end; a worker's DataError or ConfigError comes back as its own line."""
        try:
            return next(batches)
        except StopIteration:
            return None
        except BasinlabError as exc:
            kind, message = type(exc), _worker_error_line(exc)
            # torch's re-raise leaves a frame <-> exception cycle that would keep the DataLoader
            # alive until a garbage collection, whose teardown then waits 5 s on each worker.
            traceback.clear_frames(exc.__traceback__)
        del batches  # the new exception's traceback holds this frame: it must not keep the workers alive
        raise kind(message)
