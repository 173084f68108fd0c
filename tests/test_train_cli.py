"""End-to-end runs of `basinlab train` and friends on the embedded MNIST digits (small slices)."""
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

import basinlab
from basinlab.cli import main

SMALL = ["--train-limit", "256", "--val-limit", "128", "--batch-size", "64", "--quiet"]


def run_cli(*args, cwd=None, check_code=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "basinlab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)
    if check_code is not None:
        assert proc.returncode == check_code, proc.stderr
    return proc


def test_train_writes_a_complete_run_folder(tmp_path):
    code = main(["train", *SMALL, "--epochs", "2", "--results-dir", str(tmp_path), "--save", "run"])
    assert code == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "env.yaml", "log.txt", "results.csv", "last.pt", "best.pt"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    frame = pd.read_csv(run / "results.csv")
    assert list(frame["epoch"]) == [1, 2]
    for column in ("epoch", "lr", "train_loss", "train_acc1", "train_acc5", "val_loss", "val_acc1", "val_acc5",
                   "epoch_time_s", "train_images_per_s", "val_time_s"):
        assert column in frame.columns
    assert frame["val_acc1"].between(0, 100).all() and (frame["train_images_per_s"] > 0).all()
    for png in ("loss.png", "error.png", "lr.png"):
        assert (run / "plots" / png).stat().st_size > 1000
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 100
    env = yaml.safe_load((run / "env.yaml").read_text())
    assert env["torch"] == str(torch.__version__)


def test_python_api_returns_history_and_config_feeds_back(tmp_path, no_run_plots):
    run = basinlab.train(train_limit=256, val_limit=128, batch_size=64, epochs=1, quiet=True,
                         results_dir=str(tmp_path), save="api")
    assert isinstance(run.history, pd.DataFrame) and len(run.history) == 1
    again = basinlab.train(str(run.path / "config.yaml"), save="again", quiet=True)
    # the written config reproduces the run exactly (CPU, same seed)
    cols = ["train_loss", "val_loss", "val_acc1"]
    pd.testing.assert_frame_equal(run.history[cols], again.history[cols])
    loaded = basinlab.load_run(run.path)
    assert loaded.config.model == "mnist" and len(loaded.history) == 1


def test_existing_run_folder_is_never_overwritten(tmp_path, capsys, no_run_plots):
    args = ["train", *SMALL, "--epochs", "1", "--results-dir", str(tmp_path), "--save", "x"]
    assert main(args) == 0
    before = (tmp_path / "x" / "results.csv").read_bytes()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "x" / "results.csv").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


@pytest.mark.parametrize("args,needle", [
    (["--model", "nosuchnet"], "nosuchnet"),
    (["--dataset", "nosuchdata"], "nosuchdata"),
    (["--optimizer", "sgdd"], "sgdd"),
    (["--model-config", "{'regime': [{'epoch': 0, 'lrr': 0.1}]}"], "lrr"),
    (["--model-config", "__import__('os').system('touch PWNED')"], "literal"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "-3"], "--batch-size"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)  # where the literal's command would make PWNED
    assert main(["train", *SMALL, "--results-dir", str(tmp_path), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert not (tmp_path / "PWNED").exists()


def test_bad_input_in_a_fresh_process_is_one_line_exit_2(tmp_path):
    """One case of the test above as `python -m basinlab`: the process's exit status, and its whole stderr is
    the one line (no warning, no traceback)."""
    proc = run_cli("train", *SMALL, "--results-dir", tmp_path, "--model-config", "__import__('os').system('touch "
                   "PWNED')", cwd=tmp_path, check_code=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "literal" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "PWNED").exists()


def test_a_batch_batchnorm_cannot_train_on_is_refused_before_the_run_folder(tmp_path, capsys, no_run_plots):
    """The set-up probe runs train mode on min(batch, 2) blank images: batch 1 is refused, batch 2 trains."""
    args = ["train", "--train-limit", "8", "--val-limit", "8", "--epochs", "1", "--quiet",
            "--results-dir", str(tmp_path)]
    assert main([*args, "--batch-size", "1"]) == 2
    assert "cannot normalise a batch of 1 sample(s)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before any run folder was made
    assert main([*args, "--batch-size", "2", "--save", "two"]) == 0


def test_missing_dataset_folder_names_path_and_layout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "cifar10", "--datasets-dir", str(tmp_path / "none"), "--results-dir",
                 str(tmp_path)]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and str(tmp_path / "none") in line and "data_batch" in line


def test_malformed_yaml_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "malformed YAML" in err and len(err.strip().splitlines()) == 1


def test_evaluate_and_export(tmp_path, capsys, no_run_plots):
    assert main(["train", *SMALL, "--epochs", "1", "--results-dir", str(tmp_path), "--save", "e"]) == 0
    run = tmp_path / "e"
    assert main(["evaluate", str(run / "best.pt"), "--split", "val", "--limit", "128",
                 "--output", str(tmp_path / "eval.csv")]) == 0
    out = capsys.readouterr().out
    assert "val: loss" in out
    evaluated = pd.read_csv(tmp_path / "eval.csv").iloc[0]
    history = pd.read_csv(run / "results.csv").iloc[0]
    assert evaluated["acc1"] == pytest.approx(history["val_acc1"])
    assert evaluated["loss"] == pytest.approx(history["val_loss"])
    # the training split is evaluated whole, in order, with no short batch dropped
    assert main(["evaluate", str(run), "--split", "train", "--limit", "300", "-b", "256"]) == 0
    assert "(300 examples)" in capsys.readouterr().out
    assert main(["export", str(run)]) == 0
    from safetensors.torch import load_file
    weights = load_file(run / "model.safetensors")
    state = torch.load(run / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(weights[k], state[k]) for k in weights) and len(weights) == len(state)


def test_plot_overlays_runs(tmp_path, no_run_plots):
    for name in ("a", "b"):
        assert main(["train", *SMALL, "--epochs", "1", "--results-dir", str(tmp_path), "--save", name,
                     "--seed", str(len(name))]) == 0
    out = tmp_path / "both.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out)]) == 0
    assert out.stat().st_size > 5000


def test_list_names_models_and_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet20", "cifar10_shallow", "mnist5k", "cifar100", "tiny-imagenet"):
        assert name in out


@pytest.mark.parametrize("key", ["num_classes", "dataset"])
def test_the_model_config_cannot_set_what_the_data_decides(tmp_path, capsys, key):
    assert main(["train", *SMALL, "--model-config", f"{{'{key}': 3}}", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"sets '{key}', which comes from the data" in err[0]
    assert not any(tmp_path.iterdir())


def test_a_dry_run_sets_everything_up_and_writes_nothing(tmp_path, capsys):
    assert main(["train", *SMALL, "--epochs", "3", "--results-dir", str(tmp_path), "--save", "d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model mnist:" in out and "data mnist5k:" in out and "dry run: nothing written; the run would be" in out
    assert not any(tmp_path.iterdir())
    assert main(["train", *SMALL, "--ghost-batch", "999", "--results-dir", str(tmp_path), "--dry-run"]) == 2
