"""Hostile data: links that would read an image twice or under another class, IDX headers whose sizes
overflow, splits of different image sizes, and images that fail only when decoded or transformed."""
from __future__ import annotations

import gzip
import os
import struct
import textwrap
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from basinlab.cli import main
from basinlab.data import build_loaders
from basinlab.data.folders import scan_image_folder
from basinlab.data.formats import read_arrays, read_idx
from basinlab.data.transforms import InputTransform
from basinlab.errors import ConfigError, DataError
from tests.test_data import make_tiny, one_line_error, save_image, write_idx


def image_tree(base: Path, classes=("a", "b"), per_class=2, widths=(12,), seed=0) -> Path:
    """train/ and val/ with `per_class` PNGs per class; image k is widths[k % len(widths)] pixels wide."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for cls in classes:
            for k in range(per_class):
                width = widths[k % len(widths)]
                save_image(base / split / cls / f"{k}.png", rng.integers(0, 256, (12, width, 3), dtype=np.uint8))
    return base


def relative(samples, base: Path) -> list[tuple[str, int]]:
    return sorted((os.path.relpath(path, base), label) for path, label in samples)


def scan_quietly(root: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = scan_image_folder("imagefolder", root)
    return folder, [str(w.message) for w in caught]


def note_of(notes: list[str], link: Path) -> str:
    found = [note for note in notes if note.startswith(f"{link} ")]
    assert len(found) == 1, (link, notes)
    return found[0]


# ------------------------------------------------------------------------------ links in image folders
def test_links_into_another_class_or_above_the_split_are_not_followed(tmp_path):
    base = image_tree(tmp_path / "imagefolder")
    train = base / "train"
    links = {train / "a" / "to_b": train / "b", train / "b" / "to_a": train / "a", train / "a" / "to_root": base,
             train / "a" / "to_split": train, train / "a" / "loop": train / "a",
             train / "a" / "b0.png": train / "b" / "0.png"}
    for link, target in links.items():
        link.symlink_to(target)
    folder, warned = scan_quietly(tmp_path)
    assert relative(folder.train, base) == [("train/a/0.png", 0), ("train/a/1.png", 0), ("train/b/0.png", 1),
                                            ("train/b/1.png", 1)]
    notes = folder.notes["train"]
    assert len(notes) == len(links) and warned == notes
    assert "class folder 'b'" in note_of(notes, train / "a" / "to_b")
    assert "class folder 'a'" in note_of(notes, train / "b" / "to_a")
    assert "class folder 'b'" in note_of(notes, train / "a" / "b0.png")
    for above in ("to_root", "to_split"):
        assert "links back" in note_of(notes, train / "a" / above)
    assert str(train / "a") in note_of(notes, train / "a" / "loop")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader, _ = build_loaders("imagefolder", tmp_path, batch_size=2, input_size=8)
    assert loader.num_examples == 4 and loader.subset_notes == notes   # the run's log names every link


def test_a_folder_or_file_reached_twice_is_read_once(tmp_path):
    base = image_tree(tmp_path / "imagefolder")
    train = base / "train"
    shared = tmp_path / "elsewhere" / "shared"
    save_image(shared / "s0.png", np.zeros((8, 8, 3), np.uint8))
    save_image(shared / "s1.png", np.ones((8, 8, 3), np.uint8))
    save_image(tmp_path / "elsewhere" / "c" / "c0.png", np.full((8, 8, 3), 2, np.uint8))
    (train / "a" / "one").symlink_to(shared)
    (train / "a" / "two").symlink_to(shared)
    (train / "b" / "three").symlink_to(shared)                       # another class reaching the same folder
    (train / "b" / "copy.png").symlink_to(shared / "s0.png")         # a file read already through a folder link
    (train / "c").symlink_to(tmp_path / "elsewhere" / "c")           # a class folder on another disk: read
    (base / "val" / "c").mkdir()
    folder, _ = scan_quietly(tmp_path)
    assert relative(folder.train, base) == [
        ("train/a/0.png", 0), ("train/a/1.png", 0), ("train/a/one/s0.png", 0), ("train/a/one/s1.png", 0),
        ("train/b/0.png", 1), ("train/b/1.png", 1), ("train/c/c0.png", 2)]
    notes = folder.notes["train"]
    assert len(notes) == 3 and "already read" in note_of(notes, train / "a" / "two")
    assert "already read" in note_of(notes, train / "b" / "three")
    assert str(train / "a" / "one" / "s0.png") in note_of(notes, train / "b" / "copy.png")


def test_a_class_folder_linking_to_another_class_folder_adds_no_images(tmp_path):
    base = image_tree(tmp_path / "imagefolder", classes=("a",))
    (base / "train" / "b").symlink_to(base / "train" / "a")
    (base / "val" / "b").mkdir()
    folder, _ = scan_quietly(tmp_path)
    assert folder.classes == ["a", "b"]
    assert relative(folder.train, base) == [("train/a/0.png", 0), ("train/a/1.png", 0)]
    assert "class folder 'a'" in note_of(folder.notes["train"], base / "train" / "b")


def test_tiny_imagenet_reads_no_image_under_two_classes(tmp_path):
    base = tmp_path / "tiny-imagenet" / "tiny-imagenet-200"
    make_tiny(base)
    (base / "train" / "n01" / "images" / "more").symlink_to(base / "train" / "n02")
    with pytest.warns(UserWarning, match="class folder 'n02'"):
        arrays = read_arrays("tiny-imagenet", tmp_path)
    assert arrays.train.images.shape[0] == 6 and np.bincount(arrays.train.labels).tolist() == [2, 2, 2]


def test_a_broken_link_is_named_at_setup(tmp_path):
    base = image_tree(tmp_path / "imagefolder")
    broken = base / "train" / "a" / "gone.png"
    broken.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataError) as err:
        scan_image_folder("imagefolder", tmp_path)
    one_line_error(err, "broken link", broken)


# ------------------------------------------------------------------------------------ IDX and splits
def test_idx_sizes_that_overflow_int64_are_one_line_before_reading(tmp_path, capsys):
    folder = tmp_path / "mnist"
    write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    bad = folder / "train-images-idx3-ubyte"
    big = 2**31 - 1
    for dims in [(big, big, big), (2**31, 2**31, 4)]:       # the second's product is 2**64: 0 in int64
        bad.write_bytes(struct.pack(">IIII", 0x0803, *dims) + b"\0" * 100)
        code = main(["train", "--model", "mnist", "--dataset", "mnist", "--datasets-dir", str(tmp_path),
                     "--results-dir", str(tmp_path / "runs"), "--save", "run", "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and "internal error" not in err
        assert str(bad) in err and "x".join(map(str, dims)) in err and "holds 100" in err
        assert not (tmp_path / "runs" / "run").exists()


@pytest.mark.parametrize("gz", [False, True])
def test_an_idx_header_claiming_more_than_the_file_holds_allocates_nothing_for_it(tmp_path, gz):
    path = tmp_path / "train-images-idx3-ubyte"
    payload = struct.pack(">IIII", 0x0803, 1, 46340, 46340) + b"\0" * 100   # 2 GB claimed, under the gzip cap
    if gz:
        path = path.with_suffix(".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as err:
            read_idx(path, name="mnist", kind="images")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line_error(err, "1x46340x46340 = 2147395600 bytes", "holds 100", path)
    assert peak < 16 * 2**20


def test_mnist_splits_of_different_image_sizes_are_refused_at_setup(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    for prefix, n, side in (("train", 8, 28), ("t10k", 4, 32)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, side, side), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    with pytest.raises(DataError) as err:
        build_loaders("mnist", tmp_path, batch_size=4)
    one_line_error(err, "train images are 28x28", folder / "train-images-idx3-ubyte", "val images are 32x32",
                   folder / "t10k-images-idx3-ubyte")


# ------------------------------------------------------------------------ images that fail to decode
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])   # a valid PNG header: Pillow opens it, then fails to decode


def test_a_bad_image_in_the_first_batch_is_refused_when_the_loaders_are_built(tmp_path):
    base = image_tree(tmp_path / "imagefolder", per_class=4)
    train, _ = build_loaders("imagefolder", tmp_path, batch_size=4, input_size=8)
    first = train.dataset.paths[int(next(train.index_batches(0))[1][-1])]
    truncate(Path(first))
    with pytest.raises(DataError) as err:
        build_loaders("imagefolder", tmp_path, batch_size=4, input_size=8, workers=2)
    one_line_error(err, "cannot decode image", first)
    save_image(Path(first), np.zeros((12, 12, 3), np.uint8))
    truncate(base / "val" / "a" / "0.png")                           # the val loader's first batch
    with pytest.raises(DataError) as err:
        build_loaders("imagefolder", tmp_path, batch_size=4, input_size=8)
    one_line_error(err, "cannot decode image", base / "val" / "a" / "0.png")


def picky(image):
    """A per-sample transform that fails on 13-pixel-wide images only."""
    if image.width == 13:
        raise ValueError("cannot take 13-pixel images")
    return image.resize((8, 8))


def flat_for_13(image):
    """A per-sample transform that returns a [H, W] tensor for 13-pixel-wide images only."""
    if image.width == 13:
        return torch.zeros(8, 8)
    return image.resize((8, 8))


def test_a_transform_failing_on_a_later_image_is_one_line_naming_it(tmp_path):
    base = image_tree(tmp_path / "imagefolder", per_class=3)
    later = base / "val" / "b" / "2.png"                               # val batches: [a0 a1 a2 b0] [b1 b2]
    save_image(later, np.zeros((12, 13, 3), np.uint8))
    for workers in (0, 1):
        for transform, error, needle in ((picky, DataError, "input_transform failed on this image"),
                                         (flat_for_13, ConfigError, "input_transform returned a tensor")):
            _, val = build_loaders("imagefolder", tmp_path, batch_size=4, input_size=8, workers=workers)
            val.input_transform = InputTransform(train=None, eval=transform, on_batch=False)
            val.set_sample_transform()                                 # the first batch is fine
            with pytest.raises(error) as err:
                list(val.epoch(0))
            one_line_error(err, needle, later)
            val.close()
            del err  # its traceback holds the epoch's worker iterator: freed now, its worker stops at once


def test_a_transform_giving_images_of_other_shapes_is_refused_naming_both(tmp_path):
    base = image_tree(tmp_path / "imagefolder", widths=(12, 13))
    _, val = build_loaders("imagefolder", tmp_path, batch_size=4, input_size=8)
    val.input_transform = InputTransform(train=None, eval=lambda image: image, on_batch=False)
    with pytest.raises(DataError) as err:
        val.set_sample_transform()
    one_line_error(err, "gave [3, 12, 13]", "[3, 12, 12]", base / "val" / "a" / "0.png", base / "val" / "a" / "1.png")


MODEL_FILE = textwrap.dedent("""
    import torch.nn as nn

    def picky(image):
        if image.width == 13:
            raise ValueError("cannot take 13-pixel images")
        return image

    def net(num_classes, dataset):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                              nn.Linear(16, num_classes))
        model.regime = [{'epoch': 0, 'optimizer': 'SGD', 'lr': 0.05}]
        model.input_transform = INPUT_TRANSFORM
        return model
""")


def train(tmp_path, input_transform="None", *extra):
    model = tmp_path / "nets.py"
    model.write_text(MODEL_FILE.replace("INPUT_TRANSFORM", input_transform))
    return main(["train", "--model", f"{model}:net", "--dataset", "imagefolder", "--datasets-dir",
                 str(tmp_path / "imagefolder"), "--batch-size", "4", "--epochs", "2", "-j", "0",
                 "--results-dir", str(tmp_path / "runs"), "--save", "run", "--quiet", *extra])


def test_a_transform_failing_on_the_first_batch_stops_the_run_at_setup(tmp_path, capsys):
    base = image_tree(tmp_path / "imagefolder")
    save_image(base / "val" / "a" / "1.png", np.zeros((12, 13, 3), np.uint8))
    assert train(tmp_path, "{'train': None, 'eval': picky}") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "input_transform failed" in err and str(base / "val" / "a" / "1.png") in err
    assert not (tmp_path / "runs" / "run").exists()


def test_a_bad_image_mid_run_is_one_line_and_keeps_the_checkpoints(tmp_path, capsys, no_run_plots):
    base = image_tree(tmp_path / "imagefolder", per_class=5)
    (base / "train" / "b" / "4.png").unlink()                          # 9 training images: one left out per epoch
    loader, _ = build_loaders("imagefolder", base, batch_size=4, input_size=8)

    def left_out(seed, epoch):
        loader.seed = seed
        return int(loader.permutation(epoch)[-1])

    seed = next(s for s in range(50) if left_out(s, 0) != left_out(s, 1))
    bad = Path(loader.dataset.paths[left_out(seed, 0)])                # not read in epoch 1, read in epoch 2
    truncate(bad)
    assert train(tmp_path, "None", "--seed", str(seed)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot decode image" in err and str(bad) in err
    run = tmp_path / "runs" / "run"
    assert (run / "last.pt").is_file() and "epoch 1: train loss" in (run / "log.txt").read_text()
