"""Run folders: what --overwrite may replace, the lock, and the old run kept until the new one has a checkpoint."""
import hashlib
import os

import pandas as pd
import pytest

from basinlab.cli import main
from basinlab.records.run_safety import RunLock

QUICK = ["--train-limit", "128", "--val-limit", "64", "-b", "64", "--epochs", "1", "--quiet"]


def digest(folder):
    """Every file under `folder` (names and bytes) except the lock."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != ".lock":
            h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


@pytest.fixture
def results(tmp_path, no_run_plots):
    folder = tmp_path / "results"
    assert main(["train", *QUICK, "--results-dir", str(folder), "--save", "old"]) == 0
    return folder


@pytest.mark.parametrize("save, words", [
    (".", "names the results folder"),
    ("..", "names the results folder"),
    ("../elsewhere", "leads outside --results-dir"),
    ("x" * 300, "at most 255 bytes"),
])
def test_names_that_could_land_elsewhere_are_refused(results, capsys, save, words):
    before = digest(results.parent)
    assert main(["train", *QUICK, "--results-dir", str(results), "--save", save, "--overwrite"]) == 2
    assert words in capsys.readouterr().err
    assert digest(results.parent) == before  # nothing deleted, nothing created


def test_overwrite_refuses_what_is_not_a_run(results, tmp_path, capsys):
    unrelated = tmp_path / "thesis"
    unrelated.mkdir()
    (unrelated / "chapter1.tex").write_text("precious")
    assert main(["train", *QUICK, "--results-dir", str(results), "--save", str(unrelated), "--overwrite"]) == 2
    assert "is not a basinlab run" in capsys.readouterr().err
    assert (unrelated / "chapter1.tex").read_text() == "precious"
    (results / "notes.txt").write_text("a file")
    assert main(["train", *QUICK, "--results-dir", str(results), "--save", "notes.txt"]) == 2
    assert "is a file" in capsys.readouterr().err
    link = results / "link"
    os.symlink(results / "old", link)
    assert main(["train", *QUICK, "--results-dir", str(results), "--save", "link", "--overwrite"]) == 2
    assert "symbolic link" in capsys.readouterr().err


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(results, capsys):
    old = digest(results / "old")
    # a new run that stops at its first step (non-finite loss): the old run comes back, byte for byte
    assert main(["train", *QUICK, "--results-dir", str(results), "--save", "old", "--overwrite",
                 "--lr", "1e30", "--optimizer", "SGD"]) == 3
    assert digest(results / "old") == old
    # a new run that succeeds: the old one is gone, trash included
    assert main(["train", *QUICK, "--results-dir", str(results), "--save", "old", "--overwrite", "--seed", "7"]) == 0
    assert "seed: 7" in (results / "old" / "config.yaml").read_text()
    assert not any((results / ".trash").iterdir())


def test_a_run_being_trained_is_locked(results, capsys):
    lock = RunLock(results / "old").acquire()
    try:
        assert main(["train", "--resume", str(results / "old"), "--epochs", "2", "--quiet"]) == 2
        assert f"being trained by process {os.getpid()}" in capsys.readouterr().err
        assert main(["train", *QUICK, "--results-dir", str(results), "--save", "old", "--overwrite"]) == 2
        assert f"being trained by process {os.getpid()}" in capsys.readouterr().err
    finally:
        lock.release()
    assert main(["train", "--resume", str(results / "old"), "--epochs", "2", "--quiet"]) == 0


def test_resuming_an_earlier_checkpoint_never_rewrites_the_run(tmp_path, capsys, no_run_plots):
    results = tmp_path / "results"
    assert main(["train", *QUICK[:-3], "--epochs", "3", "--save-all", "--quiet", "--results-dir", str(results),
                 "--save", "run"]) == 0
    before = digest(results / "run")
    assert main(["train", "--resume", str(results / "run" / "epoch_1.pt"), "--quiet"]) == 2
    assert "add --save NEW to branch" in capsys.readouterr().err
    assert main(["train", "--resume", str(results / "run" / "epoch_1.pt"), "--save", "branch", "--quiet"]) == 0
    assert digest(results / "run") == before  # the original run, byte for byte
    branch = results / "branch"
    assert "branched_from" in (branch / "env.yaml").read_text()
    original = pd.read_csv(results / "run" / "results.csv")
    again = pd.read_csv(branch / "results.csv")
    assert list(again["epoch"]) == [1, 2, 3]
    assert again["val_loss"].tolist() == original["val_loss"].tolist()  # deterministic: the same epochs again


def test_stale_temporary_files_are_removed_on_resume(results):
    stale = results / "old" / ".last.pt.k3j2.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(results / "old"), "--epochs", "2", "--quiet"]) == 0
    assert not stale.exists()


def test_a_bit_flip_in_the_weights_is_detected(results, capsys):
    import torch
    state = torch.load(results / "old" / "last.pt", weights_only=True)
    name, tensor = max(state["model"].items(), key=lambda kv: kv[1].numel())
    raw = (results / "old" / "last.pt").read_bytes()
    at = raw.find(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()[:64])
    assert at > 0, "the tensor's bytes are stored as they are"
    flipped = bytearray(raw)
    flipped[at + 40] ^= 0x01
    (results / "old" / "last.pt").write_bytes(bytes(flipped))
    assert main(["train", "--resume", str(results / "old"), "--epochs", "2", "--quiet"]) == 2
    assert "do not match the checksum" in capsys.readouterr().err
