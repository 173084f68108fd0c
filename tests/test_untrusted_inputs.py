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


# ---------------------------------------------------------------------------------------------- trust itself
# Trust to import model code is the person's word for one process: the command line or a Python keyword. A file
# that grants it to itself (`trust-model-code: true` beside `model: os:system`) is refused on every entry point.
def hostile_yaml(tmp_path, marker, **more):
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump({**attack_config(marker), "trust-model-code": True, **more}))
    return path


@pytest.mark.parametrize("command", [
    ["train", "--config", "{yaml}", "--results-dir", "{tmp}/results"],
    ["lr-range", "--config", "{yaml}", "--num-steps", "2", "-o", "{tmp}/results"],
], ids=["train", "lr-range"])
def test_a_config_file_cannot_grant_itself_trust(tmp_path, command, capsys):
    marker = tmp_path / "code-ran"
    path = hostile_yaml(tmp_path, marker)
    argv = [part.replace("{yaml}", str(path)).replace("{tmp}", str(tmp_path)) for part in command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'trust-model-code' in" in err[0] and "cannot grant trust" in err[0]
    assert not marker.exists() and not (tmp_path / "results").exists()


def test_the_python_api_and_a_sweep_spec_cannot_be_granted_trust_by_their_file(tmp_path, capsys):
    import basinlab
    from basinlab.errors import ConfigError
    marker = tmp_path / "code-ran"
    with pytest.raises(ConfigError, match="cannot grant trust"):
        basinlab.train(str(hostile_yaml(tmp_path, marker)), results_dir=str(tmp_path / "results"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"base": {**attack_config(marker), "trust-model-code": True}, "seeds": [0]}))
    assert main(["sweep", str(spec), "--results-dir", str(tmp_path / "results")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "results").exists()


def test_a_checkpoint_storing_trust_is_not_trusted(poisoned, capsys):
    """A checkpoint whose stored config says trust_model_code: true (as every run trained with the flag stored
    before it stopped being a field) is still refused: the stored key is ignored."""
    run, marker = poisoned
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / name, weights_only=True)
        state["config"]["trust_model_code"] = True
        torch.save(state, run / name)
    for argv in (["train", "--resume", str(run)], ["evaluate", str(run)]):
        assert main(argv) == 2
        assert "names code to import" in capsys.readouterr().err
    import basinlab
    from basinlab.errors import ConfigError
    with pytest.raises(ConfigError, match="names code to import"):
        basinlab.load_model(run / "best.pt")
    assert not marker.exists()


USER_MODEL = """
from torch import nn

def tiny(num_classes, dataset):
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, num_classes))
"""


def test_trust_is_never_stored_and_a_resume_asks_for_it_again(tmp_path, capsys, no_run_plots, monkeypatch):
    from basinlab.models import registry
    monkeypatch.setattr(registry, "_TRUSTED", set())  # what earlier tests named in this process is forgotten
    model_file = tmp_path / "nets.py"
    model_file.write_text(USER_MODEL)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": f"{model_file}:tiny", "train-limit": 64, "val-limit": 32,
                                      "batch-size": 32, "epochs": 1, "quiet": True}))
    results = tmp_path / "results"
    assert main(["train", "--config", str(config), "--results-dir", str(results), "--save", "r"]) == 2
    assert "names code to import" in capsys.readouterr().err and not results.exists()
    assert main(["train", "--config", str(config), "--results-dir", str(results), "--save", "r",
                 "--trust-model-code"]) == 0
    stored = yaml.safe_load((results / "r" / "config.yaml").read_text())
    assert not any("trust" in key for key in stored)
    assert not any("trust" in key for key in torch.load(results / "r" / "last.pt", weights_only=True)["config"])
    assert main(["train", "--resume", str(results / "r"), "--epochs", "2"]) == 2
    assert "names code to import" in capsys.readouterr().err
    assert main(["train", "--resume", str(results / "r"), "--epochs", "2", "--trust-model-code"]) == 0
    import basinlab
    from basinlab.errors import ConfigError
    with pytest.raises(ConfigError, match="names code to import"):
        basinlab.train(str(config), results_dir=str(results), save="p")
    assert basinlab.train(str(config), trust_model_code=True, results_dir=str(results), save="p").history is not None
    with pytest.raises(ConfigError, match="names code to import"):  # the keyword's trust ended with its call
        basinlab.train(str(config), results_dir=str(results), save="q")


def test_a_sweep_passes_the_command_lines_trust_on_to_its_runs(tmp_path, capsys, monkeypatch):
    from basinlab.models import registry
    monkeypatch.setattr(registry, "_TRUSTED", set())
    model_file = tmp_path / "nets.py"
    model_file.write_text(USER_MODEL)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"base": {"model": f"{model_file}:tiny", "train-limit": 64, "val-limit": 32,
                                             "batch-size": 32, "epochs": 1}, "seeds": [0]}))
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--results-dir", str(out)]) == 2
    assert "names code to import" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--results-dir", str(out), "--trust-model-code"]) == 0
    assert (out / "s0" / "last.pt").is_file() or any(out.glob("*/last.pt"))
