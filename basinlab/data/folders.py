"""Image-folder datasets: {train,val|test}/<class>/... scanned into (file, class index) lists.

The walk reads every image file of a split once, under the class whose folder holds it.

Symbolic links are followed (class folders often link to another disk), but a link is not followed
when it leads back to the split folder or above it, into another class's folder, or to a folder or
file the walk has already read: each such link is skipped with a note (a warning, and a line of the
run's log). Real folders are tracked across the whole split, so no folder is read twice whichever
class reaches it; files reached through a link are tracked by (st_dev, st_ino). Hard links are
separate directory entries (like copies) and each is read.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from basinlab.data.catalog import DATASETS, data_error
from basinlab.data.locate import locate

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
MAX_WARNINGS = 10   # per split: a tree with thousands of stray links gets ten lines and a count


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class SplitWalk:
    """Lists the images of each class folder of one split; `notes` says what was not followed and why."""

    def __init__(self, name: str, split_dir: Path, class_dirs: dict[str, Path], layout: str,
                 top: str = "the split folder"):
        self.name, self.layout, self.top = name, layout, top
        self.split_path, self.split_real = str(split_dir), os.path.realpath(split_dir)
        self.class_real = {cls: os.path.realpath(folder) for cls, folder in class_dirs.items()}
        # Which class a real folder belongs to; when two class folders are the same folder, a plain
        # one wins over a link to it, then the first by name.
        self.owner = {}
        for cls in sorted(class_dirs, key=lambda c: (os.path.islink(class_dirs[c]), c)):
            self.owner.setdefault(self.class_real[cls], cls)
        self.seen_dirs: set[str] = set()
        self.seen_files: dict[tuple[int, int], str] = {}
        self.notes: list[str] = []

    # ------------------------------------------------------------------------------ the walk
    def images(self, cls: str, root: Path) -> list[str]:
        """The image files of class `cls` whose folder is `root`, sorted by path."""
        found: list[str] = []
        stack = [(str(root), True)]
        while stack:
            path, is_root = stack.pop()
            real = os.path.realpath(path)
            problem = self._folder_problem(path, real, cls, is_root)
            if problem:
                self._note(f"{path} {problem}: not followed")
                continue
            self.seen_dirs.add(real)
            tracked = not self._read_plainly(real, cls)   # files here could also be reached another way
            entries, device = self._read_folder(path)
            subfolders = []
            for entry in entries:
                if entry.name.startswith("."):   # hidden files and folders are not part of a dataset
                    continue
                if entry.is_dir():
                    subfolders.append(entry.path)
                elif _is_image(entry.name) and self._take_file(entry, cls, tracked, device):
                    found.append(entry.path)
            stack += [(sub, False) for sub in reversed(subfolders)]   # depth first, in name order
        return sorted(found)

    def _read_folder(self, path: str) -> tuple[list[os.DirEntry], int]:
        """(the folder's entries in name order, its device number)."""
        try:
            with os.scandir(path) as entries:
                return sorted(entries, key=lambda e: e.name), os.stat(path).st_dev
        except OSError as exc:
            raise data_error(self.name, f"cannot list the folder ({type(exc).__name__}: {exc.strerror})", path,
                             self.layout) from None

    def _folder_problem(self, path: str, real: str, cls: str, is_root: bool) -> str | None:
        """Why the folder at `path` (resolving to `real`) must not be read as part of class `cls`."""
        if _inside(self.split_real, real) and path != self.split_path:   # list_images walks the split itself
            return f"links back to {real}, {self.top} or one above it"
        owner = self._owner_of(real)
        if owner not in (None, cls):
            return f"leads into class folder '{owner}' ({real}), whose images are that class's"
        if real in self.seen_dirs:
            return f"leads to {real}, already read"
        if not is_root and os.path.islink(path) and self._read_plainly(real, cls):
            return f"links to {real}, which class '{cls}' reads in its own folder"
        return None

    def _take_file(self, entry: os.DirEntry, cls: str, tracked: bool, device: int) -> bool:
        """Whether an image file entry is read: a link into another class, or to a file read already, is not."""
        if entry.is_symlink():
            real = os.path.realpath(entry.path)
            owner = self._owner_of(real)
            if owner not in (None, cls):
                return self._note(f"{entry.path} leads into class folder '{owner}' ({real}), whose images are "
                                  f"that class's: not followed")
            if owner == cls and self._read_plainly(real, cls):
                return self._note(f"{entry.path} links to {real}, which class '{cls}' reads in its own folder: "
                                  f"not followed")
            try:
                stat = os.stat(entry.path)
            except OSError as exc:
                raise data_error(self.name, f"broken link to {real} ({type(exc).__name__}: {exc.strerror})",
                                 entry.path, self.layout) from None
            key = (stat.st_dev, stat.st_ino)
        elif tracked:
            key = (device, entry.inode())   # a plain entry's inode needs no system call
        else:
            return True   # a plain file in its class's own folder: that folder is read once
        if key in self.seen_files:
            return self._note(f"{entry.path} is the file {self.seen_files[key]}, already read: not read again")
        self.seen_files[key] = entry.path
        return True

    # ------------------------------------------------------------------------------ helpers
    def _owner_of(self, real: str) -> str | None:
        """The class whose folder holds `real` (the innermost one), or None."""
        path = real
        while True:
            if path in self.owner:
                return self.owner[path]
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent

    def _read_plainly(self, real: str, cls: str) -> bool:
        """Whether `real` lies in class `cls`'s own folder where its walk reaches it without a link."""
        root = self.class_real[cls]
        if self._owner_of(real) != cls or not _inside(real, root):
            return False
        relative = os.path.relpath(real, root)
        return relative == "." or not any(part.startswith(".") for part in relative.split(os.sep))

    def _note(self, line: str) -> bool:
        self.notes.append(line)
        if len(self.notes) <= MAX_WARNINGS:
            warnings.warn(line, stacklevel=2)
        return False

    def summary(self) -> list[str]:
        """The notes as log lines: the first MAX_WARNINGS and a count of the rest."""
        rest = len(self.notes) - MAX_WARNINGS
        return self.notes[:MAX_WARNINGS] + ([f"... and {rest} more links not followed"] if rest > 0 else [])


def list_images(folder: Path, name: str = "", layout: str = "a folder of images") -> list[str]:
    """Image files under `folder` (recursively, following links but never around a loop), sorted by path."""
    walk = SplitWalk(name or "images", folder, {"": Path(folder)}, layout, top="the folder being read")
    return walk.images("", Path(folder))


def walk_split(name: str, split_dir: Path, class_dirs: dict[str, Path], layout: str
               ) -> tuple[dict[str, list[str]], list[str]]:
    """({class: its image files}, log lines naming the links not followed) for one split."""
    walk = SplitWalk(name, split_dir, class_dirs, layout)
    found = {cls: walk.images(cls, class_dirs[cls]) for cls in sorted(class_dirs)}
    return found, walk.summary()


# ----------------------------------------------------------------------------------- the scan
@dataclass
class FolderData:
    root: Path
    classes: list[str]                 # class index = position in this sorted list
    train: list[tuple[str, int]]       # (file path, class index)
    val: list[tuple[str, int]]
    notes: dict[str, list[str]] = field(default_factory=dict)   # per split: the links not followed


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _folder_samples(name: str, split_dir: Path, classes: list[str], index: dict[str, int],
                    layout: str) -> tuple[list[tuple[str, int]], list[str]]:
    """((file, class index) of one split, log lines naming the links not followed)."""
    unknown = next((cls for cls in classes if cls not in index), None)
    if unknown is not None:
        raise data_error(name, f"class folder '{unknown}' has no match in train/", split_dir, layout)
    found, notes = walk_split(name, split_dir, {cls: split_dir / cls for cls in classes}, layout)
    samples = [(path, index[cls]) for cls in classes for path in found[cls]]
    if not samples:
        raise data_error(name, "no image files", split_dir, layout)
    return samples, notes


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
    train, train_notes = _folder_samples(name, base / "train", classes, index, layout)
    val, val_notes = _folder_samples(name, val_dir, _class_folders(val_dir), index, layout)
    return FolderData(base, classes, train, val, {"train": train_notes, "val": val_notes})
