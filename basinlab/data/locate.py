"""Where a dataset's files are: basinlab's `DIR/<dataset>/` or the folders the seeds and torchvision use.

--datasets-dir DIR may be basinlab's datasets folder (DIR/cifar10/cifar-10-batches-py/, DIR/imagenet/train/)
or the dataset's own folder as the seeds take it: the folder holding cifar-10-batches-py/ or
cifar-100-python/ (torchvision's root, autoHyper's --data), the folder holding train/ and val/
(Online Normalization's ImageNet DIR), the IDX files themselves or torchvision's MNIST/raw/. Every
candidate below is checked; exactly one may hold the dataset, else the error names all that do, so a
run never trains on a copy it did not mean. The log names the place and layout found.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from basinlab.data.catalog import DATASETS, data_error
from basinlab.errors import DataError

MNIST_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
CIFAR_ARCHIVE = {"cifar10": ("cifar-10-batches-py", ["data_batch_1", "test_batch"]),
                 "cifar100": ("cifar-100-python", ["train", "test"])}
TINY_ARCHIVE = "tiny-imagenet-200"


@dataclass(frozen=True)
class Place:
    folder: Path   # the folder the reader opens
    layout: str    # how it was found, for the log

    def describe(self) -> str:
        return f"{self.folder} ({self.layout})"


def _holds_idx(folder: Path) -> bool:
    stems = [stem for pair in MNIST_STEMS.values() for stem in pair]
    return any((folder / stem).is_file() or (folder / f"{stem}.gz").is_file() for stem in stems)


def _holds_cifar(name: str):
    files = CIFAR_ARCHIVE[name][1]
    return lambda folder: any((folder / f).is_file() for f in files)


def _holds_tiny(folder: Path) -> bool:
    return (folder / "wnids.txt").is_file()


def _holds_class_folders(folder: Path) -> bool:
    return (folder / "train").is_dir()


def _candidates(name: str, root: Path) -> list[tuple[Path, str]]:
    """(folder, layout words) in the order they are described; the first entry is basinlab's own layout."""
    if name in TORCHVISION_FOLDER:
        tv = TORCHVISION_FOLDER[name]
        return [(root / name, f"basinlab's DIR/{name}/"),
                (root / name / tv / "raw", f"torchvision's download in DIR/{name}/{tv}/raw/"),
                (root / tv / "raw", f"torchvision's root: DIR/{tv}/raw/"),
                (root / "raw", "torchvision's dataset folder: DIR/raw/"),
                (root, "the IDX files in DIR itself")]
    if name in CIFAR_ARCHIVE:
        archive = CIFAR_ARCHIVE[name][0]
        return [(root / name / archive, f"basinlab's DIR/{name}/{archive}/"),
                (root / name, f"the batches in DIR/{name}/"),
                (root / archive, f"the seeds' and torchvision's root: DIR/{archive}/"),
                (root, "the batches in DIR itself")]
    if name == "tiny-imagenet":
        return [(root / name / TINY_ARCHIVE, f"basinlab's DIR/{name}/{TINY_ARCHIVE}/"),
                (root / name, f"DIR/{name}/"),
                (root / TINY_ARCHIVE, f"DIR/{TINY_ARCHIVE}/"),
                (root, "wnids.txt, train/, val/ in DIR itself")]
    return [(root / name, f"basinlab's DIR/{name}/train/ and val/"),
            (root, "the dataset's own folder: DIR/train/ and val/")]


def _holds(name: str):
    if name in TORCHVISION_FOLDER:
        return _holds_idx
    if name in CIFAR_ARCHIVE:
        return _holds_cifar(name)
    if name == "tiny-imagenet":
        return _holds_tiny
    return _holds_class_folders


def _missing(name: str) -> str:
    if name in TORCHVISION_FOLDER:
        return "no IDX files found"
    if name in CIFAR_ARCHIVE:
        return "no CIFAR batches found"
    return "no wnids.txt found" if name == "tiny-imagenet" else "no train/ folder found"


def locate(name: str, root: str | Path) -> Place:
    """The one place under `root` that holds dataset `name`; DataError when none or several do."""
    root = Path(root).expanduser()
    candidates = _candidates(name, root)
    holds = _holds(name)
    found = [Place(folder, layout) for folder, layout in candidates if folder.is_dir() and holds(folder)]
    if len(found) > 1:
        places = " and ".join(str(place.folder) for place in found)
        raise DataError(f"dataset '{name}': found in {len(found)} places, {places}; point --datasets-dir at the "
                        f"folder you mean (or remove the other copy)")
    if not found:
        looked = ", ".join(str(folder) for folder, _ in candidates)
        error = data_error(name, _missing(name), f"any of {looked}", DATASETS[name].layout)
        raise DataError(f"{error}; {_how_to_get(name, root)}")
    return found[0]


def _how_to_get(name: str, root: Path) -> str:
    """The end of the nothing-found error: where basinlab looks, and the download command where there is one."""
    elsewhere = "or point --datasets-dir (or $BASINLAB_DATASETS) at the folder that holds it"
    if DATASETS[name].downloadable:
        return (f"get it with `basinlab data download {name} --datasets-dir {shlex.quote(str(root))}` (or "
                f"train with --download), {elsewhere}")
    return f"basinlab cannot download it: place it under {root} by hand, {elsewhere}"
