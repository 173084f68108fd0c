"""A run's folder from start to end under races, crashes and hostile files: the lock follows no link, only
--overwrite replaces a run (at any moment of setup), a replaced run survives a killed replacement, a start that
never checkpointed does not block its own command, and a resume never extends a run it was not asked to."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from basinlab.cli import main
from basinlab.engine.trainer import Trainer
from basinlab.records import run_safety
from basinlab.records.run_safety import INTENT, TRASH, RunLock, move_aside

QUICK = ["--train-limit", "128", "--val-limit", "64", "-b", "64", "--epochs", "1", "--quiet"]
NAN = ["--lr", "1e30", "--optimizer", "SGD"]  # a non-finite loss at the first step: no checkpoint is written


def digest(folder):
    """Names and bytes of every file under `folder`, the lock aside."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def results(tmp_path, no_run_plots):
    folder = tmp_path / "results"
    assert main(["train", *QUICK, "--results-dir", str(folder), "--save", "old"]) == 0
    return folder


# ---------------------------------------------------------------------------------------------- the lock
@pytest.mark.parametrize("kind", ["symlink", "hardlink", "folder"])
def test_the_lock_follows_no_link_and_is_only_a_file_of_its_own(results, tmp_path, capsys, kind):
    victim = tmp_path / "precious.txt"
    victim.write_text("do not truncate me")
    lock = results / "old" / ".lock"
    lock.unlink(missing_ok=True)
    {"symlink": lambda: os.symlink(victim, lock), "hardlink": lambda: os.link(victim, lock),
     "folder": lambda: lock.mkdir()}[kind]()
    assert main(["train", "--resume", str(results / "old"), "--epochs", "2"]) == 2
    line = one_line(capsys)
    assert str(lock) in line and ("symbolic link" in line or "other names" in line or "folder" in line)
    assert victim.read_text() == "do not truncate me"


def test_a_sweep_lock_that_is_a_link_truncates_nothing(tmp_path, capsys):
    victim = tmp_path / "precious.txt"
    victim.write_text("do not truncate me")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"base": {"train-limit": 64, "epochs": 1}, "seeds": [0]}))
    (tmp_path / "out" / ".sweep").mkdir(parents=True)
    os.symlink(victim, tmp_path / "out" / ".sweep" / ".lock")
    assert main(["sweep", str(spec), "--results-dir", str(tmp_path / "out")]) == 2
    assert "symbolic link" in one_line(capsys)
    assert victim.read_text() == "do not truncate me"


def test_a_folder_that_cannot_be_made_is_one_line_with_the_right_status(tmp_path, capsys, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(run_safety.os, "mkdir", read_only)
    assert main(["train", *QUICK, "--results-dir", str(tmp_path / "results"), "--save", "r"]) == 4
    assert "Read-only file system" in one_line(capsys)


# ---------------------------------------------------------------------------------------------- setup races
def finish_a_run_during_setup(monkeypatch, donor):
    """Another process finishes a run in our folder while we set up: copy `donor` there after our setup."""
    build = Trainer._build

    def build_then_race(self, resume_state):
        build(self, resume_state)
        shutil.copytree(donor, self.run.path, dirs_exist_ok=True)
    monkeypatch.setattr(Trainer, "_build", build_then_race)


def test_a_run_that_appears_during_setup_is_not_replaced_without_overwrite(results, capsys, monkeypatch):
    before = digest(results / "old")
    finish_a_run_during_setup(monkeypatch, results / "old")
    assert main(["train", *QUICK, "--results-dir", str(results), "--save", "new"]) == 2
    assert "appeared while this run was being set up" in one_line(capsys)
    assert digest(results / "new") == before  # the other run, untouched
    assert not (results / TRASH).exists()


def test_overwrite_replaces_a_run_that_appears_during_setup_as_any_other(results, capsys, monkeypatch):
    finish_a_run_during_setup(monkeypatch, results / "old")
    assert main(["train", *QUICK, "--results-dir", str(results), "--save", "new", "--overwrite", "--seed", "3"]) == 0
    assert "seed: 3" in (results / "new" / "config.yaml").read_text()
    assert not any((results / TRASH).iterdir())  # the replaced run went once the new one checkpointed


# ---------------------------------------------------------------------------------------------- crashes
def test_a_replacement_that_died_gives_the_old_run_back_at_the_next_start(results, capsys):
    """As after SIGKILL between the move to the trash and the first checkpoint: the intent file is there,
    unlocked, and the new folder is a stub. Any later start in that results folder puts the old run back."""
    before = digest(results / "old")
    pending = move_aside(results / "old")
    (results / "old" / "plots").mkdir(parents=True)  # the stub the killed start left
    RunLock(results / "old").acquire().release()
    os.close(pending.fd)  # the process "dies": its lock on the intent goes with it
    assert main(["train", *QUICK, "--results-dir", str(results), "--save", "other", "--seed", "1"]) == 0
    assert digest(results / "old") == before
    assert not any((results / TRASH).iterdir())
    log = (results / "other" / "log.txt").read_text()
    assert f"restored {results / 'old'}" in log


def test_a_replacement_still_running_is_left_alone(results):
    pending = move_aside(results / "old")
    try:
        assert run_safety.recover_trash(results) == []
        assert pending.aside.is_dir() and not (results / "old").exists()
    finally:
        pending.put_back()
    assert (results / "old" / "last.pt").is_file()


def test_an_intent_file_never_points_outside_its_trash(results, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    trash = results / TRASH
    trash.mkdir()
    (trash / "x").mkdir()
    (trash / f"x{INTENT}").write_text(json.dumps({"run": str(elsewhere), "aside": "x"}))
    notes = run_safety.recover_trash(results)
    assert notes and "unreadable" in notes[0]
    assert (elsewhere / "keep.txt").read_text() == "mine" and (trash / "x").is_dir()


@pytest.mark.slow
def test_sigkill_during_an_overwrite_loses_nothing(results, tmp_path):
    before = digest(results / "old")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "basinlab", "train", "--train-limit", "4096", "--val-limit", "64",
                             "-b", "16", "--epochs", "1", "--quiet", "--results-dir", str(results), "--save", "old",
                             "--overwrite"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    new_folder_started = lambda: (any((results / TRASH).glob("*" + INTENT)) and (results / "old" / "log.txt").is_file()
                                  and not (results / "old" / "last.pt").is_file())
    while time.monotonic() < deadline and not new_folder_started():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (results / "old" / "last.pt").exists(), "the kill came after the first checkpoint"
    assert any((results / TRASH).glob("*" + INTENT))
    assert main(["train", *QUICK, "--results-dir", str(results), "--save", "again"]) == 0
    assert digest(results / "old") == before


def test_the_trash_is_beside_the_run_on_its_own_file_system(results, tmp_path, capsys):
    """--save an absolute path elsewhere: the replaced run is moved within its own parent folder (a rename
    across file systems fails with EXDEV)."""
    elsewhere = tmp_path / "disk2"
    assert main(["train", *QUICK, "--results-dir", str(results), "--save", str(elsewhere / "run")]) == 0
    assert main(["train", *QUICK, *NAN, "--results-dir", str(results), "--save", str(elsewhere / "run"),
                 "--overwrite"]) == 3
    capsys.readouterr()
    assert (elsewhere / TRASH).is_dir() and not (results / TRASH).exists()
    assert (elsewhere / "run" / "last.pt").is_file()


# ---------------------------------------------------------------------------------------------- no checkpoint yet
def test_a_start_without_checkpoint_does_not_block_its_own_command(tmp_path, capsys, no_run_plots):
    command = ["train", *QUICK, *NAN, "--results-dir", str(tmp_path / "results"), "--save", "r"]
    assert main(command) == 3
    line = one_line(capsys)
    assert "no checkpoint was written yet" in line and "kept in" not in line
    run = tmp_path / "results" / "r"
    assert "error: NonFiniteLossError: non-finite loss" in (run / "log.txt").read_text()
    assert main(command) == 3  # the same command again: replaced, not "use --resume"
    one_line(capsys)
    assert "replacing an earlier start of this same run" in (run / "log.txt").read_text()
    assert main(["train", "--resume", str(run)]) == 2
    line = one_line(capsys)
    assert "has no checkpoint" in line and f"basinlab train --config {run}/config.yaml" in line
    other = ["train", *QUICK, "--lr", "0.01", "--optimizer", "SGD", "--results-dir", str(tmp_path / "results"),
             "--save", "r"]
    assert main(other) == 2
    line = one_line(capsys)
    assert "stopped before its first checkpoint" in line and "--lr 1e+30 there, 0.01 here" in line
    assert main([*other, "--overwrite"]) == 0
    assert (run / "last.pt").is_file() and not any((tmp_path / "results" / TRASH).iterdir())


# ---------------------------------------------------------------------------------------------- resume targets
def test_resume_with_save_branches_and_leaves_the_run_alone(results, capsys):
    before = digest(results / "old")
    assert main(["train", "--resume", str(results / "old"), "--save", "new", "--epochs", "2", "--quiet"]) == 0
    assert digest(results / "old") == before
    assert "branched_from" in (results / "new" / "env.yaml").read_text()
    assert pd.read_csv(results / "new" / "results.csv")["epoch"].tolist() == [1, 2]
    assert main(["train", "--resume", str(results / "old" / "last.pt"), "--save", "new", "--epochs", "2"]) == 2
    assert "a branch needs a new run folder" in one_line(capsys)


def test_a_moved_run_resumes_where_it_is(results, tmp_path):
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(results / "old", moved)
    assert main(["train", "--resume", str(moved), "--epochs", "2", "--quiet"]) == 0
    assert pd.read_csv(moved / "results.csv")["epoch"].tolist() == [1, 2]
    assert not (results / "old").exists() and "env.yaml" in os.listdir(moved)
    assert "branched_from" not in (moved / "env.yaml").read_text()
    stored = yaml.safe_load((moved / "config.yaml").read_text())
    assert (stored["save"], stored["results-dir"]) == ("renamed", str(moved.parent))


def test_a_log_that_is_a_folder_is_one_line(results, capsys):
    (results / "old" / "log.txt").unlink()
    (results / "old" / "log.txt").mkdir()
    assert main(["train", "--resume", str(results / "old"), "--epochs", "2"]) == 2
    assert "log.txt is not a regular file" in one_line(capsys)


# ---------------------------------------------------------------------------------------------- data regime
def test_a_data_regime_in_the_model_config_is_applied_and_checked(tmp_path, capsys, no_run_plots):
    regime = "{'data_regime': [{'epoch': 0, 'batch_size': 16}, {'epoch': 1, 'batch_size': 32}]}"
    assert main(["train", "--train-limit", "256", "--val-limit", "32", "--epochs", "2", "--quiet",
                 "--model-config", regime, "--results-dir", str(tmp_path / "r"), "--save", "a"]) == 0
    log = (tmp_path / "r" / "a" / "log.txt").read_text()
    assert "data from epoch 1: batch 16" in log and "data from epoch 2: batch 32" in log
    assert main(["train", "--train-limit", "256", "--epochs", "1", "--model-config",
                 "{'data_regime': [{'epoch': 0, 'batch_size': 'x'}]}", "--results-dir", str(tmp_path / "r"),
                 "--save", "b"]) == 2
    assert "'batch_size' must be an integer in [1, 1048576]" in one_line(capsys)
    assert not (tmp_path / "r" / "b").exists()


def test_evaluate_uses_the_data_regime_of_the_model_config(tmp_path, capsys, no_run_plots):
    """The run trained and validated at 20x20 (the model config's data regime); evaluate measures it so too."""
    regime = "{'data_regime': [{'epoch': 0, 'input_size': 20}]}"
    assert main(["train", "--model", "resnet", "-d", "8", "--train-limit", "128", "--val-limit", "64", "-b", "64",
                 "--epochs", "1", "--quiet", "--model-config", regime, "--results-dir", str(tmp_path),
                 "--save", "r"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "r" / "last.pt"), "--limit", "64"]) == 0
    measured = float(capsys.readouterr().out.split("loss ")[1].split()[0])
    assert measured == pytest.approx(pd.read_csv(tmp_path / "r" / "results.csv")["val_loss"][0], abs=1e-4)
