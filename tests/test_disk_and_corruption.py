"""A full disk and corrupt checkpoints: one line, a documented exit status, nothing lost."""
import contextlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from basinlab.cli import main
from basinlab.engine.checkpoint import load_checkpoint, save_checkpoint
from basinlab.errors import CheckpointError

TINY = ["--model-config", "{'width': 2, 'hidden': 4}", "--train-limit", "256", "--val-limit", "128", "-b", "64",
        "--quiet"]


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:80]})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` up to the last few bytes."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path, capsys, no_run_plots):
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        run = disk / "results" / "run"
        assert main(["train", *TINY, "--epochs", "1", "--results-dir", str(disk / "results"), "--save", "run"]) == 0
        before = (run / "last.pt").read_bytes()
        filler = fill(disk)
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 4
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "No space left on device" in err[0] and f"--resume {run}" in err[0]
        assert (run / "last.pt").read_bytes() == before  # the previous checkpoint, byte for byte
        assert load_checkpoint(run / "last.pt")["epoch"] == 1
        assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # no temporary file left
        filler.unlink()
        assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
        assert list(pd.read_csv(run / "results.csv")["epoch"]) == [1, 2]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, no_run_plots_in_module):
    """A run folder after one epoch (copy it before changing anything)."""
    folder = tmp_path_factory.mktemp("small")
    assert main(["train", *TINY, "--epochs", "1", "--results-dir", str(folder), "--save", "run"]) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def small_checkpoint(small_run):
    return (small_run / "last.pt").read_bytes()


def test_a_flipped_byte_of_the_optimizer_state_refuses_the_resume(small_run, tmp_path, capsys, no_run_plots):
    run = Path(shutil.copytree(small_run, tmp_path / "run"))
    state = torch.load(run / "last.pt", weights_only=True)
    buffers = [t for entry in state["optimizer"]["state"].values() for t in entry.values() if t.numel() > 1]
    buffer = max(buffers, key=lambda t: t.numel())  # the optimizer's own state (Adam's moments here)
    raw = bytearray((run / "last.pt").read_bytes())
    at = raw.find(buffer.contiguous().view(-1).view(torch.uint8).numpy().tobytes()[:64])
    assert at > 0, "the tensor's bytes are stored as they are"
    raw[at + 21] ^= 0x01
    (run / "last.pt").write_bytes(bytes(raw))
    history = (run / "results.csv").read_bytes()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run / 'last.pt'} is corrupt" in err[0] and "do not match the checksum" in err[0]
    assert "best.pt" in err[0]  # what to use instead
    assert (run / "last.pt").read_bytes() == bytes(raw) and (run / "results.csv").read_bytes() == history


def test_a_checkpoint_with_the_previous_checksum_still_resumes(small_run, tmp_path, no_run_plots):
    """last.pt as basinlab wrote it before the whole-state checksum: a checksum of the model tensors only."""
    from basinlab.engine.checkpoint import tensors_checksum
    run = Path(shutil.copytree(small_run, tmp_path / "run"))
    state = torch.load(run / "last.pt", weights_only=True)
    state["checksum"] = {"model": tensors_checksum(state["model"])}
    torch.save(state, run / "last.pt")
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert list(pd.read_csv(run / "results.csv")["epoch"]) == [1, 2]
    assert set(torch.load(run / "last.pt", weights_only=True)["checksum"]) == {"state"}  # written the new way


def test_every_truncation_of_a_checkpoint_is_refused_in_one_line(small_checkpoint, tmp_path):
    path = tmp_path / "last.pt"
    size = len(small_checkpoint)
    offsets = sorted(set(range(0, size, max(1, size // 400))) | {size - 1})  # ~400 cuts, both ends included
    for cut in offsets:
        path.write_bytes(small_checkpoint[:cut])
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_random_bytes_are_refused_in_one_line(tmp_path):
    rng = np.random.default_rng(20261202)
    path = tmp_path / "last.pt"
    for _ in range(300):
        path.write_bytes(rng.integers(0, 256, size=int(rng.integers(1, 256)), dtype=np.uint8).tobytes())
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("state, words", [
    ({"config": {}, "num_classes": 10}, "no model entry"),
    ({"model": {}, "config": "model: mnist", "num_classes": 10}, "not a mapping of options"),
    ({"model": {}, "config": {}, "num_classes": -3}, "num_classes must be a positive integer"),
    ({"model": {"w": "not a tensor"}, "config": {}, "num_classes": 10}, "not a state dict of tensors"),
    ([1, 2, 3], "holds a list"),
])
def test_foreign_checkpoints_are_refused_in_one_line(tmp_path, state, words):
    path = tmp_path / "foreign.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(path)


def test_a_checkpoint_of_another_architecture_names_both(tmp_path, small_checkpoint, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "best.pt").write_bytes(small_checkpoint)
    state = torch.load(folder / "best.pt", weights_only=True)
    state["config"]["model_config"] = {"width": 3, "hidden": 4}  # the weights were made with width 2
    save_checkpoint(state, folder / "best.pt")  # sealed: the checksum covers the config too
    assert main(["evaluate", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "best.pt holds a mnist for 10 classes that does not fit the mnist for 10 classes" in err
    assert len(err.splitlines()) == 1


def test_a_model_that_does_not_take_the_data_is_refused_before_a_folder_exists(tmp_path, capsys):
    results = tmp_path / "results"
    code = tmp_path / "nets.py"
    code.write_text("import torch.nn as nn\n"
                    "def rgb(num_classes, dataset):\n"
                    "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))\n"
                    "def five(num_classes, dataset):\n"
                    "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))\n")
    assert main(["train", "--model", f"{code}:rgb", "--results-dir", str(results), "--quiet"]) == 2
    assert "does not take the mnist5k images (1x28x28)" in capsys.readouterr().err
    assert main(["train", "--model", f"{code}:five", "--results-dir", str(results), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "gives outputs of shape (5,)" in err and "has 10 classes" in err
    assert not results.exists() or not any(results.iterdir())


def test_unique_default_run_names(tmp_path, no_run_plots):
    for _ in range(2):  # the same second
        assert main(["train", *TINY, "--epochs", "1", "--results-dir", str(tmp_path)]) == 0
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize("garbage", [b"\x00\xff\xfe garbage \x81\n\x02", b"lr,loss\n0.1,2.0\n", b"epoch\none\ntwo\n"],
                         ids=["bytes", "no-epoch-column", "text-epochs"])
def test_a_corrupt_results_csv_is_reported_and_resume_keeps_the_history(tmp_path, capsys, no_run_plots, garbage):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--results-dir", str(tmp_path), "--save", "run"]) == 0
    first = pd.read_csv(run / "results.csv")
    (run / "results.csv").write_bytes(garbage)
    assert main(["plot", str(run), "-o", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "results.csv" in err
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    again = pd.read_csv(run / "results.csv")
    assert list(again["epoch"]) == [1, 2]
    assert again["val_acc1"].iloc[0] == first["val_acc1"].iloc[0]  # epoch 1 from the checkpoint's history
    assert "rewritten from the checkpoint's history" in (run / "log.txt").read_text()


def test_data_bombs_and_link_loops_are_named(tmp_path, monkeypatch):
    import gzip
    import struct

    from PIL import Image

    from basinlab.data.formats import decode_rgb, list_images, read_idx
    from basinlab.errors import DataError
    # an IDX header claiming 60000 x 4096 x 4096 images inside a few bytes of gzip: refused unread
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(struct.pack(">IIII", 0x00000803, 60000, 4096, 4096) + b"\0" * 64))
    with pytest.raises(DataError, match="header claims .* over the"):
        read_idx(bomb, name="mnist", kind="images")
    # an image over Pillow's pixel limit (lowered here) is a decompression bomb, named with its file
    picture = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(picture)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="decompression bomb") as err:
        decode_rgb(picture, "imagefolder")
    assert "big.png" in str(err.value)
    # a symbolic link back up the tree is not followed (each image once, with a warning)
    folder = tmp_path / "train" / "cat"
    folder.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(folder / "a.png")
    (folder / "loop").symlink_to(tmp_path / "train")
    with pytest.warns(UserWarning, match="links back"):
        found = list_images(tmp_path / "train")
    assert [p.rsplit("/", 1)[1] for p in found] == ["a.png"]
