"""Exact resume after SIGKILL and SIGTERM, and the non-finite loss policy."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from basinlab.cli import main
from basinlab.records.results import TIME_COLUMNS

# 16 steps per epoch, a checkpoint every 3 steps: kills land mid-epoch.
RUN = ["--train-limit", "512", "--val-limit", "128", "--batch-size", "32", "--epochs", "2", "--quiet",
       "--save-every-steps", "3"]


def start(tmp_path, name, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "basinlab", "train", *RUN, "--results-dir", str(tmp_path),
                             "--save", name, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_checkpoint(proc, path, timeout=180):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint written in time"
        time.sleep(0.02)


def final_weights(run_dir):
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run to compare against, trained on the other CPU core while the first test that asks
    for it starts and stops its own run; reference() waits for it and gives its folder."""
    folder = tmp_path_factory.mktemp("ref")
    proc = start(folder, "ref")

    def finished():
        if proc.returncode is None:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        return folder / "ref"
    yield finished
    if proc.poll() is None:  # a test failed before it waited
        proc.kill()
        proc.wait()


def assert_same_run(run_dir, reference):
    ref_w, got_w = final_weights(reference), final_weights(run_dir)
    assert ref_w.keys() == got_w.keys()
    for key in ref_w:
        assert torch.equal(ref_w[key], got_w[key]), f"{key} differs after resume"
    ref = pd.read_csv(reference / "results.csv").drop(columns=TIME_COLUMNS)
    got = pd.read_csv(run_dir / "results.csv").drop(columns=TIME_COLUMNS)
    assert list(got["epoch"]) == [1, 2]  # each epoch exactly once
    pd.testing.assert_frame_equal(ref, got)


def resume(run_dir):
    # in this process (one thread, as the runs started by start()): the signal is what needs a process of its own
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, reference, no_run_plots):
    proc = start(tmp_path, "killed")
    wait_for_checkpoint(proc, tmp_path / "killed" / "last.pt")
    time.sleep(0.3)  # land somewhere after the checkpoint, mid-step
    proc.kill()
    proc.wait()
    state = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"]) != (2, 0), "run finished before the kill"
    resume(tmp_path / "killed")
    assert_same_run(tmp_path / "killed", reference())


def test_sigterm_writes_resumable_checkpoint(tmp_path, reference, no_run_plots):
    proc = start(tmp_path, "term")
    wait_for_checkpoint(proc, tmp_path / "term" / "last.pt")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "resume with: basinlab train --resume" in err
    state = torch.load(tmp_path / "term" / "last.pt", weights_only=True)
    assert state["batch_in_epoch"] > 0 or state["epoch"] > 0
    resume(tmp_path / "term")
    assert_same_run(tmp_path / "term", reference())


def test_resume_refuses_changed_options(tmp_path, reference, capsys):
    assert main(["train", "--resume", str(reference()), "--lr", "0.5"]) == 2
    assert "--lr cannot change when resuming" in capsys.readouterr().err


NAN_MODEL = '''
import torch, torch.nn as nn

class Fragile(nn.Module):
    """Produces a NaN loss from its {bad}th training forward on (not counting the setup's shape probe,
    which runs without gradients)."""
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(784, num_classes)
        self.calls = 0
    def forward(self, x):
        out = self.fc(x.flatten(1))
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls {op} {bad}:
                out = out * float("nan")
        return out

def fragile(num_classes, dataset):
    return Fragile(num_classes)
'''


def test_nan_loss_stops_with_exit_3_and_keeps_records(tmp_path, capsys):
    model = tmp_path / "fragile.py"
    model.write_text(NAN_MODEL.format(bad=20, op=">="))
    code = main(["train", "--model", f"{model}:fragile", "--train-limit", "512", "--val-limit", "64",
                 "--batch-size", "32", "--epochs", "3", "--quiet", "--results-dir", str(tmp_path), "--save", "nan"])
    assert code == 3
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "epoch 2, step 4 of 16" in err
    run = tmp_path / "nan"
    assert list(pd.read_csv(run / "results.csv")["epoch"]) == [1]
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_nan_policy_skip_counts_batches(tmp_path):
    model = tmp_path / "fragile.py"
    model.write_text(NAN_MODEL.format(bad=5, op="=="))
    code = main(["train", "--model", f"{model}:fragile", "--train-limit", "512", "--val-limit", "64",
                 "--batch-size", "32", "--epochs", "1", "--quiet", "--results-dir", str(tmp_path), "--save", "skip",
                 "--nan-policy", "skip"])
    assert code == 0
    frame = pd.read_csv(tmp_path / "skip" / "results.csv")
    assert frame["nonfinite_skipped"].tolist() == [1]
    assert torch.isfinite(final_weights(tmp_path / "skip")["fc.weight"]).all()


def test_a_resumed_run_keeps_its_preset_in_config_yaml(tmp_path):
    """The preset is a label of the stored options (never applied twice): config.yaml still names it."""
    import yaml
    args = ["train", "--preset", "smoothout-f1-mnist-sb", "--dataset", "mnist5k", "--train-limit", "256",
            "--val-limit", "128", "--quiet", "--results-dir", str(tmp_path), "--save", "p"]
    assert main([*args, "--epochs", "1"]) == 0
    assert main(["train", "--resume", str(tmp_path / "p"), "--epochs", "2", "--quiet"]) == 0
    stored = yaml.safe_load((tmp_path / "p" / "config.yaml").read_text())
    assert stored["preset"] == "smoothout-f1-mnist-sb" and stored["epochs"] == 2 and stored["model"] == "f1"
    assert len(pd.read_csv(tmp_path / "p" / "results.csv")) == 2


def test_each_resume_is_recorded_in_env_yaml_with_its_commit_and_threads(tmp_path):
    """env.yaml keeps what the run started with and gains a `resumes:` entry per resume, so a run whose epochs
    came from several commits names them all; an env.yaml that cannot be read is left alone and the resume goes on."""
    import yaml
    args = ["--model", "fc", "--dataset", "mnist5k", "--train-limit", "64", "--val-limit", "32", "--batch-size",
            "32", "--quiet", "--device", "cpu"]
    env_file = tmp_path / "t" / "env.yaml"
    assert main(["train", *args, "--epochs", "1", "--results-dir", str(tmp_path), "--save", "t"]) == 0
    started = yaml.safe_load(env_file.read_text())
    for epochs in ("2", "3"):
        assert main(["train", "--resume", str(tmp_path / "t"), "--epochs", epochs, "--quiet"]) == 0
    env = yaml.safe_load(env_file.read_text())
    kept = [key for key in started if key != "effective"]   # what the run started with stays as it was
    assert {key: env[key] for key in kept} == {key: started[key] for key in kept}
    assert env["effective"] == {**started["effective"], "epochs": 3}   # this command's, as config.yaml is
    assert [(r["epoch"], r["batch_in_epoch"], r["global_step"]) for r in env["resumes"]] == [(1, 0, 2), (2, 0, 4)]
    for resume in env["resumes"]:
        assert resume["threads"] == torch.get_num_threads() and resume["started"] >= started["started"]
        assert resume.get("git_commit") == started.get("git_commit")
    # a branch (--save NEW from the run's checkpoint) names the commits of the run it continues
    assert main(["train", "--resume", str(tmp_path / "t" / "last.pt"), "--epochs", "4", "--save", "branch",
                 "--results-dir", str(tmp_path), "--quiet"]) == 0
    branch = yaml.safe_load((tmp_path / "branch" / "env.yaml").read_text())
    assert branch["branched_from_commits"] == ([started["git_commit"]] if "git_commit" in started else [])
    assert main(["train", "--resume", str(tmp_path / "t"), "--quiet"]) == 0   # complete: nothing trained
    assert yaml.safe_load(env_file.read_text()) == env                         # and nothing recorded
    env_file.write_text("- not a mapping\n")
    assert main(["train", "--resume", str(tmp_path / "t"), "--epochs", "4", "--quiet"]) == 0
    assert env_file.read_text() == "- not a mapping\n"
    assert "this resume is not recorded in env.yaml" in (tmp_path / "t" / "log.txt").read_text()


def test_resuming_with_another_cpu_thread_count_says_the_run_is_no_longer_exact(tmp_path):
    """The thread count splits a CPU's sums (see trainer_state._note_thread_change): the checkpoint keeps it, and
    a resume with another count says so in the log, with the OMP_NUM_THREADS that would continue exactly."""
    args = ["--model", "fc", "--dataset", "mnist5k", "--train-limit", "64", "--val-limit", "32", "--batch-size",
            "32", "--quiet", "--device", "cpu"]
    threads = torch.get_num_threads()
    other = 2 if threads == 1 else 1
    note = "note: this run trained with"
    assert main(["train", *args, "--epochs", "1", "--results-dir", str(tmp_path), "--save", "t"]) == 0
    assert torch.load(tmp_path / "t" / "last.pt", weights_only=True)["cpu_threads"] == threads
    try:
        torch.set_num_threads(other)
        assert main(["train", "--resume", str(tmp_path / "t"), "--epochs", "2", "--quiet"]) == 0
        assert main(["train", "--resume", str(tmp_path / "t"), "--epochs", "3", "--quiet"]) == 0  # same count
    finally:
        torch.set_num_threads(threads)
    log = (tmp_path / "t" / "log.txt").read_text()
    assert log.count(note) == 1, log
    assert f"{note} {threads} CPU threads and resumes with {other}: its sums split differently" in log
    assert f"OMP_NUM_THREADS={threads} continues it exactly" in log
