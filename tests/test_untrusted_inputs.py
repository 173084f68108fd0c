"""Nothing named by a checkpoint or a config file runs: the code-from-checkpoint probe, and the like."""
import subprocess
import sys

import pytest
import torch
import yaml

from basinlab.cli import main

ATTACK = {"model": "os:system", "model_config": {"command": "touch {marker}"}}


def attack_config(marker) -> dict:
    return {"model": ATTACK["model"], "model_config": {"command": f"touch {marker}"}, "dataset": "mnist5k"}


@pytest.fixture
def poisoned(tmp_path):
    """A run folder whose checkpoint torch.load(weights_only=True) accepts (plain dicts and strings)."""
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "code-ran"
    state = {"format": "basinlab-checkpoint/1", "config": attack_config(marker), "num_classes": 10, "model": {},
             "epoch": 1, "batch_in_epoch": 0, "global_step": 1}
    for name in ("best.pt", "last.pt"):
        torch.save(state, run / name)
    (run / "config.yaml").write_text(yaml.safe_dump(attack_config(marker)))
    return run, marker


@pytest.mark.parametrize("command", [
    ["evaluate", "{run}"],
    ["sharpness", "{run}", "--measure", "hessian"],
    ["landscape", "directions", "{run}", "--alpha", "0"],
    ["landscape", "interpolate", "{run}", "{run}", "--alpha", "0"],
    ["train", "--resume", "{run}"],
    ["train", "--config", "{run}/config.yaml", "--results-dir", "{run}/../results"],
], ids=["evaluate", "sharpness", "landscape-directions", "landscape-interpolate", "resume", "yaml-config"])
def test_model_code_named_by_a_file_never_runs(poisoned, command, capsys):
    run, marker = poisoned
    argv = [part.replace("{run}", str(run)) for part in command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names code to import" in err[0] and "--trust-model-code" in err[0]
    assert not marker.exists()
    assert not (run.parent / "results").exists() or not any((run.parent / "results").iterdir())


def test_the_probe_in_a_fresh_process_creates_nothing(poisoned):
    run, marker = poisoned
    done = subprocess.run([sys.executable, "-m", "basinlab", "evaluate", str(run)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert not marker.exists()


def test_a_relative_model_path_is_stored_absolute(tmp_path, monkeypatch):
    from basinlab.api import make_config
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text("")
    cfg = make_config(model="nets.py:tiny")
    assert cfg.model == f"{tmp_path / 'nets.py'}:tiny"
