"""Checkpoints: atomic writes survive a crash, unsafe pickles are refused without running code."""
import os
import pickle

import pytest
import torch

from basinlab.engine import checkpoint as ckpt
from basinlab.errors import CheckpointError, WriteError
from basinlab.utils import io


def test_roundtrip_keeps_tensors_and_plain_data(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "config": {"lr": 0.1, "m": [1, 2]},
             "num_classes": 10, "rng": ckpt.rng_state()}
    ckpt.save_checkpoint(state, tmp_path / "last.pt")
    back = ckpt.load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert back["epoch"] == 3 and back["config"] == {"lr": 0.1, "m": [1, 2]}


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        io.atomic_write_text(tmp_path / "results.csv", "epoch\n1\n")
    finally:
        os.umask(old)
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == 0o644


def test_crash_between_write_and_rename_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 1, "config": {}, "num_classes": 2}, path)

    def crash(src, dst):
        raise OSError("simulated crash before rename")
    monkeypatch.setattr(io.os, "replace", crash)
    with pytest.raises(WriteError, match="simulated crash before rename.*previous last.pt"):
        ckpt.save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 2, "config": {}, "num_classes": 2}, path)
    monkeypatch.undo()
    back = ckpt.load_checkpoint(path)
    assert back["epoch"] == 1 and torch.equal(back["model"]["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_crash_during_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint({"model": {}, "epoch": 1, "config": {}, "num_classes": 2}, path)

    def half_write(fh):
        fh.write(b"PK\x03\x04 truncated")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        io.atomic_write(path, half_write)
    assert ckpt.load_checkpoint(path)["epoch"] == 1


class _Payload:
    """Unpickling this calls os.system-like code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Payload(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="arbitrary unpickling"):
        ckpt.load_checkpoint(path)
    assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    with open(path, "wb") as fh:
        pickle.dump(_Payload(str(marker)), fh)
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint(path)
    assert not marker.exists()


def test_run_folder_resolves_to_last_not_best(tmp_path):
    for name in ("last.pt", "best.pt"):
        ckpt.save_checkpoint({"model": {}, "name": name}, tmp_path / name)
    assert ckpt.resolve_checkpoint(tmp_path).name == "last.pt"
    with pytest.raises(CheckpointError, match="no run folder or checkpoint"):
        ckpt.resolve_checkpoint(tmp_path / "missing")


def test_not_a_checkpoint(tmp_path):
    torch.save([1, 2, 3], tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a basinlab checkpoint"):
        ckpt.load_checkpoint(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint(tmp_path / "junk.pt")
