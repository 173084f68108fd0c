"""Exported .safetensors files are checked like checkpoints: a crafted file's metadata (its config JSON, class
count, epoch) is one line naming the file, exit 2, nothing built or run; an export that cannot be written is one
line, exit 4, no file left behind."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import basinlab
from basinlab.cli import main
from basinlab.config import validated_config
from basinlab.engine.checkpoint import save_checkpoint
from basinlab.errors import BasinlabError
from basinlab.models import create_model
from basinlab.utils import io

TINY_MODEL = {"width": 2, "hidden": 4}


@pytest.fixture(scope="module")
def trained_like(tmp_path_factory):
    """A run folder holding a best.pt of a tiny mnist model (built directly: no training needed here)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("export") / "run"
    config = validated_config({"model_config": TINY_MODEL, "val_limit": 32, "dataset": "mnist5k"}).to_dict()
    model = create_model("mnist", 10, "mnist5k", **TINY_MODEL)
    save_checkpoint({"format": "basinlab-checkpoint/1", "config": config, "num_classes": 10,
                     "model": model.state_dict(), "epoch": 1}, folder / "best.pt")
    return folder, config, model.state_dict()


def export(path: Path, tensors: dict, **metadata) -> Path:
    """A .safetensors file with these tensors and metadata (values as given: crafted ones included)."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def craft(tmp_path, trained_like, *, config=None, text=None, **metadata) -> Path:
    """The tiny model's export with its metadata replaced: `config` (JSON-encoded) or raw `text` as the config."""
    _, base, tensors = trained_like
    fields = {"basinlab_config": text if text is not None else json.dumps(base if config is None else config),
              "num_classes": "10"}
    fields.update(metadata)
    return export(tmp_path / "crafted.safetensors", tensors, **{k: v for k, v in fields.items() if v is not None})


def refused_in_one_line(path: Path, capsys, words: str) -> None:
    """load_model and `basinlab evaluate` both refuse `path`: one line naming it, exit 2."""
    with pytest.raises(BasinlabError) as err:
        basinlab.load_model(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value) and words in str(err.value)
    assert main(["evaluate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and words in lines[0]
    assert "internal error" not in lines[0]


def test_an_export_rebuilds_the_model_and_evaluates_like_its_checkpoint(trained_like, tmp_path, capsys):
    run, _, tensors = trained_like
    out = tmp_path / "m.safetensors"
    assert main(["export", str(run), "-o", str(out)]) == 0
    loaded = basinlab.load_model(out).state_dict()
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--device", "cpu"]) == 0
    from_export = capsys.readouterr().out
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == from_export and "(32 examples)" in from_export


@pytest.mark.parametrize("case, words", [
    (dict(text='{"model": "mnist", "model_config": '), "is not valid JSON"),
    (dict(text="[" * 100_000 + "]" * 100_000), "nests deeper than 16 levels"),  # json.loads would recurse
    (dict(text='{"model_config": ' + '{"a": ' * 40 + "1" + "}" * 41), "nests deeper than 16 levels"),
    (dict(text='{"lr": 1e999}'), "beyond the float range"),
    (dict(text='{"seed": ' + "9" * 5000 + "}"), "an integer of 5000 digits"),
    (dict(text='{"lr": NaN}'), "NaN, which is not a finite number"),
    (dict(text='{"model": "mnist", "pad": "' + "x" * (1 << 21) + '"}'), "an exported config has at most"),
    (dict(text='["model", "mnist"]'), "not a mapping of options"),
    (dict(num_classes="10000000000"), "num_classes must be a positive integer"),
    (dict(num_classes="True"), "num_classes must be a positive integer (at most 1000000), got 'True'"),
    (dict(num_classes="-3"), "num_classes must be a positive integer"),
    (dict(num_classes="0"), "num_classes must be a positive integer"),
    (dict(num_classes="1e3"), "num_classes must be a positive integer"),
    (dict(num_classes=None), "no num_classes entry"),
    (dict(basinlab_config=None), "holds no basinlab_config metadata"),
    (dict(epoch="-1"), "epoch metadata must be a non-negative integer"),
    (dict(config={"model": "nosuchnet", "model_config": TINY_MODEL}), "unknown model 'nosuchnet'"),
    (dict(config={"model": "mnist", "model_config": {"width": "wide"}}), "mnist width must be an integer"),
    (dict(config={"model": "mnist", "epochs": "many"}), "--epochs must be"),
    (dict(config={"model": "mnist", "seed": 10 ** 39}), "--seed must be an integer in"),
    (dict(config={"model": "mnist", "lr": -0.1}), "--lr must be"),
    (dict(config={"model": "mnist", "model_config": {"width": 3, "hidden": 4}}), "does not fit the mnist"),
], ids=["bad-json", "deep-json", "deep-config", "huge-float", "huge-int", "nan", "oversized", "list-config",
        "classes-1e10", "classes-bool", "classes-negative", "classes-zero", "classes-text", "no-classes",
        "no-config", "bad-epoch", "unknown-model", "bad-model-config", "bad-option-type", "seed-1e39",
        "negative-lr",
        "other-architecture"])
def test_crafted_metadata_is_refused_in_one_line(trained_like, tmp_path, capsys, case, words):
    case = dict(case)
    if "basinlab_config" in case:
        path = export(tmp_path / "crafted.safetensors", trained_like[2], num_classes="10")
    else:
        path = craft(tmp_path, trained_like, **case)
    refused_in_one_line(path, capsys, words)


def test_files_that_are_not_safetensors_are_refused_in_one_line(trained_like, tmp_path, capsys):
    good = craft(tmp_path, trained_like).read_bytes()
    path = tmp_path / "bad.safetensors"
    rng = np.random.default_rng(34)
    for cut in (0, 4, 8, 100, len(good) // 2, len(good) - 1):
        path.write_bytes(good[:cut])
        refused_in_one_line(path, capsys, str(path))
    path.write_bytes(rng.integers(0, 256, size=512, dtype=np.uint8).tobytes())
    refused_in_one_line(path, capsys, "cannot read")
    # a header length of 2**62: refused, not allocated
    path.write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    refused_in_one_line(path, capsys, "cannot read")


@pytest.mark.parametrize("trust_key", [None, "trust_model_code", "trust-model-code"])
def test_a_user_model_named_by_an_export_never_runs(trained_like, tmp_path, capsys, trust_key):
    """An export naming `os:system` is refused; a stored trust key (either spelling) is ignored, never honoured."""
    marker = tmp_path / "code-ran"
    config = {"model": "os:system", "model_config": {"command": f"touch {marker}"}, "dataset": "mnist5k"}
    if trust_key:
        config[trust_key] = True
    path = craft(tmp_path, trained_like, config=config)
    refused_in_one_line(path, capsys, "names code to import")
    for argv in (["sharpness", str(path), "--measure", "hessian"],
                 ["landscape", "directions", str(path), "--alpha", "0"],
                 ["landscape", "interpolate", str(path), str(path), "--alpha", "0"]):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "names code to import" in lines[0] and str(path) in lines[0]
    assert main(["train", "--resume", str(path)]) == 2  # weights only: nothing to resume
    assert "safetensors export" in capsys.readouterr().err
    assert not marker.exists()


def test_an_unwritable_export_target_is_one_line_and_leaves_no_file(trained_like, tmp_path, capsys, monkeypatch):
    run = trained_like[0]
    if Path("/proc/self").is_dir():  # a file system that takes no new files
        assert main(["export", str(run), "-o", "/proc/x.safetensors"]) in (2, 4)
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "/proc/x.safetensors" in lines[0] and "internal error" not in lines[0]
        assert not [p for p in Path("/proc").iterdir() if "x.safetensors" in p.name]
    assert main(["export", str(run), "-o", "/dev/null"]) == 2  # not a file to replace
    assert "not a regular file" in capsys.readouterr().err

    def crash(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(io.os, "replace", crash)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", str(run), "-o", str(out / "m.safetensors")]) == 4
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0]
    assert list(out.iterdir()) == []  # no temporary file, no partial export
