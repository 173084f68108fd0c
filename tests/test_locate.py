"""--datasets-dir as the seeds write it: the dataset's own folder, torchvision's root, or basinlab's layout;
exactly one place may hold the dataset, and the log names the place and layout found."""
import numpy as np
import pytest

from basinlab.cli import main
from basinlab.data import build_loaders
from basinlab.data.locate import locate
from basinlab.errors import DataError
from tests.test_data import (
    make_cifar10,
    make_image_folder,
    make_mnist,
    make_tiny,
    write_cifar_batch,
)

CIFAR10_PLACES = {  # files under DIR -> the layout words in the log
    "cifar10/cifar-10-batches-py": "basinlab's DIR/cifar10/cifar-10-batches-py/",
    "cifar10": "the batches in DIR/cifar10/",
    "cifar-10-batches-py": "the seeds' and torchvision's root: DIR/cifar-10-batches-py/",
    "": "the batches in DIR itself",
}


@pytest.mark.parametrize("where", list(CIFAR10_PLACES))
def test_cifar10_is_found_in_each_layout(tmp_path, where):
    _, train_y, _, test_y = make_cifar10(tmp_path / where)
    place = locate("cifar10", tmp_path)
    assert place.folder == tmp_path / where and CIFAR10_PLACES[where] in place.layout
    train, val = build_loaders("cifar10", tmp_path, batch_size=6)
    assert (train.num_examples, val.num_examples) == (len(train_y), len(test_y))
    assert str(tmp_path / where) in train.source


def test_cifar100_in_torchvisions_root(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 4)):
        write_cifar_batch(tmp_path / "cifar-100-python" / split, rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                          rng.integers(0, 100, n), label_key=b"fine_labels")
    train, val = build_loaders("cifar100", tmp_path, batch_size=2)
    assert (train.num_examples, val.num_examples, train.num_classes) == (10, 4, 100)


@pytest.mark.parametrize("where", ["mnist", "mnist/MNIST/raw", "MNIST/raw", "raw", ""])
def test_mnist_is_found_in_each_layout(tmp_path, where):
    data = make_mnist(tmp_path / where)
    assert locate("mnist", tmp_path).folder == tmp_path / where
    train, _ = build_loaders("mnist", tmp_path, batch_size=4)
    assert train.num_examples == len(data["train"][1])


@pytest.mark.parametrize("where", ["tiny-imagenet/tiny-imagenet-200", "tiny-imagenet", "tiny-imagenet-200", "."])
def test_tiny_imagenet_is_found_in_each_layout(tmp_path, where):
    base = tmp_path / "data"
    make_tiny(base / where)
    assert locate("tiny-imagenet", base).folder == (base / where if where != "." else base)


@pytest.mark.parametrize("name", ["imagenet", "imagefolder"])
def test_a_folder_holding_train_and_val_is_the_dataset_itself(tmp_path, name):
    make_image_folder(tmp_path / "own")  # Online Normalization's ImageNet DIR: DIR/train, DIR/val
    place = locate(name, tmp_path / "own")
    assert place.folder == tmp_path / "own" and "the dataset's own folder" in place.layout
    train, val = build_loaders(name, tmp_path / "own", batch_size=4, input_size=16)
    assert (train.num_examples, val.num_examples, train.num_classes) == (12, 6, 3)


def test_two_copies_are_refused_naming_both(tmp_path):
    make_cifar10(tmp_path / "cifar10" / "cifar-10-batches-py")
    make_cifar10(tmp_path / "cifar-10-batches-py", seed=1)
    with pytest.raises(DataError) as err:
        build_loaders("cifar10", tmp_path, batch_size=6)
    message = str(err.value)
    assert "found in 2 places" in message and "point --datasets-dir at the folder you mean" in message
    assert str(tmp_path / "cifar10" / "cifar-10-batches-py") in message and "\n" not in message
    assert locate("cifar10", tmp_path / "cifar-10-batches-py").folder == tmp_path / "cifar-10-batches-py"


def test_nothing_found_names_every_place_looked(tmp_path):
    with pytest.raises(DataError) as err:
        locate("cifar10", tmp_path)
    message = str(err.value)
    for place in (tmp_path / "cifar10" / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py", tmp_path):
        assert str(place) in message
    assert "no CIFAR batches found" in message and "\n" not in message


def test_the_seed_command_line_on_the_real_cifar10(data_shared_real, tmp_path, capsys):
    """The Online Normalization seed's CIFAR command: DIR is the folder holding cifar-10-batches-py/."""
    seed_dir = data_shared_real / "cifar10"
    assert main(["train", str(seed_dir), "--dataset", "cifar10", "--model", "cifar10_shallow", "--epochs", "1",
                 "--train-limit", "200", "--val-limit", "100", "--batch-size", "50", "--results-dir",
                 str(tmp_path), "--save", "seed"]) == 0
    log = (tmp_path / "seed" / "log.txt").read_text()
    assert f"data found in {seed_dir / 'cifar-10-batches-py'} (the seeds' and torchvision's root" in log


def test_an_image_folder_tree_as_imagenet(data_shared_real):
    """The real CIFAR-10 JPEG tree (train/, test/) given as ImageNet's own folder."""
    train, val = build_loaders("imagenet", data_shared_real / "cifar10-folder", batch_size=10, input_size=32,
                               train_limit=20, val_limit=10)
    assert (train.num_classes, train.num_examples, val.num_examples) == (10, 20, 10)
    assert "the dataset's own folder" in train.source


def test_autohyper_data_is_the_seeds_torchvision_root(data_shared_real, tmp_path, no_run_plots):
    """autoHyper's --data DIR (relative to --root) is torchvision's root: DIR/cifar-10-batches-py/."""
    import yaml
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"dataset": "CIFAR10", "network": "cifar10_shallow", "optimizer": "SGD",
                                      "scheduler": "None", "init_lr": 0.01, "n_trials": 1, "max_epochs": 1,
                                      "mini_batch_size": 50, "train_limit": 100, "val_limit": 50}))
    assert main(["autohyper", "train", "--config", str(config), "--root", str(data_shared_real), "--data",
                 "cifar10", "--output", str(tmp_path / "out"), "--cpu", "--quiet"]) == 0
    logs = list((tmp_path / "out").rglob("log.txt"))
    assert logs and all(f"data found in {data_shared_real / 'cifar10' / 'cifar-10-batches-py'}" in log.read_text()
                        for log in logs)
