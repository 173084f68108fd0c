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


# ------------------------------------------------------------------------------ the checksum covers everything
def full_state() -> dict:
    """A checkpoint-shaped state with every kind of entry a trainer stores, seeded."""
    gen = torch.Generator().manual_seed(34)
    model = {"w": torch.randn(4, 3, generator=gen), "b": torch.randn(4, generator=gen)}
    return {"format": "basinlab-checkpoint/1", "config": {"lr": 0.1, "model_config": {"width": 2}},
            "num_classes": 10, "model": model,
            "optimizer": {"state": {0: {"momentum_buffer": torch.randn(4, 3, generator=gen)}},
                          "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0, 1]}]},
            "strategy": {"ema": [torch.randn(2, generator=gen)]}, "callbacks": {"swa": {"n": 3}},
            "epoch": 2, "batch_in_epoch": 0, "scaler": {"scale": 65536.0}, "rng": ckpt.rng_state(),
            "history": [{"epoch": 1, "val_loss": 2.3}], "best": {"val_acc1": 12.5}}


def changed(state: dict, where: str) -> dict:
    """`state` with one stored value changed (a tensor: one bit of one byte), the checksum left as written."""
    state = {**state, "optimizer": {**state["optimizer"]}}
    if where == "optimizer":
        buffer = state["optimizer"]["state"][0]["momentum_buffer"].clone()
        buffer.view(-1).view(torch.uint8)[5] ^= 0x01
        state["optimizer"] = {**state["optimizer"], "state": {0: {"momentum_buffer": buffer}}}
    elif where == "rng":
        rng = state["rng"]["torch"].clone()
        rng[100] ^= 0x01
        state["rng"] = {"torch": rng}
    elif where == "strategy":
        state["strategy"] = {"ema": [state["strategy"]["ema"][0] * 2]}
    elif where == "param_groups":
        state["optimizer"]["param_groups"] = [{"lr": 0.1, "betas": (0.9, 0.98), "params": [0, 1]}]
    elif where == "config":
        state["config"] = {"lr": 0.1, "model_config": {"width": 3}}
    elif where == "scaler":
        state["scaler"] = {"scale": 65536}  # an int where a float was stored
    else:
        state[where] = 3
    return state


@pytest.mark.parametrize("where", ["optimizer", "rng", "strategy", "param_groups", "config", "scaler", "epoch"])
def test_the_checksum_covers_every_stored_value(tmp_path, where):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(full_state(), path)
    written = torch.load(path, weights_only=True)
    assert set(written["checksum"]) == {"state"}
    ckpt.load_checkpoint(path)  # as written: accepted
    torch.save(changed(written, where), path)
    with pytest.raises(CheckpointError) as err:
        ckpt.load_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "do not match the checksum" in message
    assert "best.pt" in message and "epoch_K.pt" in message  # what to use instead


def test_the_checksum_does_not_depend_on_order_and_tells_types_apart():
    state = full_state()
    digest = ckpt.state_digest(state)
    assert ckpt.state_digest(dict(reversed(list(state.items())))) == digest
    assert ckpt.state_digest({**state, "best": {"val_acc1": 12.5, "x": None}}) != digest
    values = [1, 1.0, True, "1", [1], (1,), {1: 1}, {"1": 1}, torch.tensor(1), torch.tensor(1.0), torch.tensor([1])]
    assert len({ckpt.state_digest({"v": v}) for v in values}) == len(values) - 1  # a list and a tuple: the same
    assert ckpt.state_digest({"v": 10 ** 5000}) != ckpt.state_digest({"v": 10 ** 5000 + 1})  # no 4300-digit limit


def test_a_checkpoint_of_the_previous_format_is_still_checked_and_loads(tmp_path):
    """Checkpoints written before the whole-state checksum carry a checksum of their model tensors only."""
    path = tmp_path / "last.pt"
    state = full_state()
    torch.save({**state, "checksum": {"model": ckpt.tensors_checksum(state["model"])}}, path)
    assert ckpt.load_checkpoint(path)["epoch"] == 2
    flipped = {**state, "model": {**state["model"], "b": state["model"]["b"] + 1}}
    torch.save({**flipped, "checksum": {"model": ckpt.tensors_checksum(state["model"])}}, path)
    with pytest.raises(CheckpointError, match="its model weights do not match the checksum"):
        ckpt.load_checkpoint(path)
