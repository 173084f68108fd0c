"""What a run says is what happened: a finished run says so, notes name where an option came from, numbers read
right, and an export carries no path of the machine that trained it."""
import json
import shutil

import pytest
from safetensors import safe_open

import basinlab
from basinlab.cli import main

SMALL = ["--train-limit", "64", "--val-limit", "32", "-b", "32", "--quiet"]


@pytest.fixture
def one_epoch(tmp_path, no_run_plots):
    assert main(["train", *SMALL, "--epochs", "1", "--results-dir", str(tmp_path / "r"), "--save", "one"]) == 0
    return tmp_path / "r" / "one"


def test_one_epoch_is_singular_and_a_finished_run_says_what_to_do(one_epoch):
    log = (one_epoch / "log.txt").read_text()
    assert ", 1 epoch\n" in log and "1 epochs" not in log
    assert main(["train", "--resume", str(one_epoch), "--quiet"]) == 0
    assert "already complete (1 of 1 epochs); nothing to train: pass --epochs N (more than 1)" in (
        one_epoch / "log.txt").read_text()


def test_one_noise_draw_shows_no_spread(one_epoch, capsys):
    assert main(["evaluate", str(one_epoch), "--noise", "0.01", "--noise-samples", "1", "--limit", "32"]) == 0
    out = capsys.readouterr().out
    assert ", 1 draw)" in out and "+-" not in out
    assert main(["evaluate", str(one_epoch), "--noise", "0.01", "--noise-samples", "2", "--limit", "32"]) == 0
    assert "+-" in capsys.readouterr().out


def test_the_regime_note_names_what_replaced_it_and_where_it_came_from(tmp_path, no_run_plots):
    run = basinlab.train(preset="onlinenorm-cifar10", epochs=1, train_limit=20,
                         val_limit=8, batch_size=10, results_dir=str(tmp_path), save="p", quiet=True,
                         datasets_dir=str(_cifar(tmp_path)))
    log = (run.path / "log.txt").read_text()
    assert "--optimizer SGD, --lr-milestones 100 150 200 in the options (preset onlinenorm-cifar10)" in log
    assert "given" not in log.split("--lr-milestones 100 150 200")[1].split("\n")[0]


def _cifar(tmp_path):
    from tests.test_data import make_cifar10
    make_cifar10(tmp_path / "data" / "cifar-10-batches-py")
    return tmp_path / "data"


USER_MODEL = """
from torch import nn

def tiny(num_classes, dataset):
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, num_classes))
"""


def test_an_export_carries_no_path_of_the_training_machine(tmp_path, no_run_plots):
    models = tmp_path / "code" / "nets.py"
    models.parent.mkdir()
    models.write_text(USER_MODEL)
    assert main(["train", *SMALL, "--epochs", "1", "--model", f"{models}:tiny", "--results-dir",
                 str(tmp_path / "r"), "--save", "u"]) == 0
    export = tmp_path / "r" / "u" / "model.safetensors"
    assert main(["export", str(tmp_path / "r" / "u"), "-o", str(export)]) == 0
    with safe_open(str(export), framework="pt") as handle:
        metadata = handle.metadata()
    assert str(tmp_path) not in json.dumps(metadata)
    assert json.loads(metadata["basinlab_config"])["model"] == "../../code/nets.py:tiny"
    moved = tmp_path / "elsewhere"
    (moved / "a" / "b").mkdir(parents=True)
    shutil.copy(export, moved / "a" / "b" / "model.safetensors")
    (moved / "code").mkdir()
    shutil.copy(models, moved / "code" / "nets.py")
    model = basinlab.load_model(moved / "a" / "b" / "model.safetensors", trust_model_code=True)
    assert model[1].out_features == 10


def test_small_images_in_an_image_folder_are_said_to_be_resized_up(tmp_path):
    import numpy as np

    from basinlab.data import build_loaders
    from tests.test_data import save_image
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            for i in range(2):
                save_image(tmp_path / "imagefolder" / split / cls / f"{i}.png",
                           rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    train, _ = build_loaders("imagefolder", tmp_path, batch_size=2, workers=0)
    assert "the images are 32x32 (the first one) and are resized up to 224x224" in train.size_note()


def test_a_grid_says_its_size_and_an_estimate_and_a_large_one_needs_yes(one_epoch, tmp_path, capsys):
    big = ["landscape", "directions", str(one_epoch), "--alpha", "-1:0.05:1.01", "--beta", "-1:0.05:1.01",
           "-o", str(tmp_path / "grid")]
    assert main(big) == 2
    err = capsys.readouterr().err
    assert "the grid has 1,681 points" in err and "add --yes" in err and not (tmp_path / "grid.csv").exists()
    assert main(["landscape", "directions", str(one_epoch), "--alpha", "0,0.5", "--split", "val", "--limit", "16",
                 "-o", str(tmp_path / "small")]) == 0
    err = capsys.readouterr().err
    assert "landscape: 2 points, each a pass over the val data" in err and "s each, about" in err
