"""Data-parallel training with torchrun on this CPU (gloo, 2 processes x 1 thread).

Each job launched costs a few seconds of process start-up: a 2-process epoch started with `basinlab train
--nproc 2` (the one job through that launcher, which adds a process of its own), then with raw torchrun its
resume, a job whose rank 1 fails, one whose rank 1 is killed and its resume, and one SAM step for each
perturbation rule. The reference is one in-process single-process run with the same global batch.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch
import yaml

from basinlab.api import make_config
from basinlab.cli import build_parser, main
from basinlab.engine.distributed import DataParallel, ProcessPlace, check_with_device, select_device
from basinlab.engine.evaluate import evaluate
from basinlab.engine.inspect import loader_for, model_from_checkpoint
from basinlab.engine.launch import argv_from_args, torchrun_command
from basinlab.errors import ConfigError
from basinlab.methods.registry import build_method

pytestmark = pytest.mark.slow

# No BatchNorm and no dropout: then 2 x 32 rows give exactly the gradient of one batch of 64.
# 193 validation digits: rank 0 gets 97 (4 eval batches of <= 32), rank 1 gets 96 (3 batches).
# Contiguous memory format: CPU channels_last convolutions block differently for batches of 32 and
# 64, and that rounding noise (1e-5 after an epoch) would hide what these tests check.
RUN = ["--train-limit", "256", "--val-limit", "193", "-b", "64", "--norm-mode", "none", "--channels-last", "off",
       "--model-config", "{'dropout': 0.0}", "--optimizer", "SGD", "--lr", "0.05", "--seed", "3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 240


def job_environment():
    return {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}


def launch(command, timeout=TIMEOUT):
    start = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, env=job_environment(), timeout=timeout)
    return proc, time.monotonic() - start


class Started:
    """A job started now and waited for later (other work shares the CPU cores with its process start-ups)."""

    def __init__(self, command):
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=job_environment())
        self.done = None

    def wait(self) -> subprocess.CompletedProcess:
        if self.done is None:
            out, err = self.proc.communicate(timeout=TIMEOUT)
            self.done = subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)
        return self.done

    def stop(self) -> None:
        if self.proc.poll() is None:  # a test failed before it waited
            self.proc.kill()
            self.proc.communicate()


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_close_weights(got, want, rtol=1e-5):
    assert got.keys() == want.keys()
    for key in want:
        error = (got[key].double() - want[key].double()).norm() / want[key].double().norm().clamp_min(1e-12)
        assert error < rtol, f"{key}: relative difference {error:.2e}"


@pytest.fixture(scope="module")
def single(tmp_path_factory, no_run_plots_in_module):
    """Two epochs in this process; --save-all keeps the weights after epoch 1 too."""
    folder = tmp_path_factory.mktemp("single")
    assert main(["train", *RUN, "--epochs", "2", "--save-all", "--quiet", "--results-dir", str(folder),
                 "--save", "one"]) == 0
    return folder / "one"


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, request):
    """One epoch with `basinlab train --nproc 2` (not quiet: the log lines must appear once); the single-process
    reference trains in this process meanwhile."""
    folder = tmp_path_factory.mktemp("ddp")
    job = Started([sys.executable, "-m", "basinlab", "train", "--nproc", "2", *RUN, "--epochs", "1",
                   "--results-dir", str(folder), "--save", "two"])
    try:
        request.getfixturevalue("single")
        proc = job.wait()
    finally:
        job.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "two", proc


def test_two_processes_train_the_weights_of_one_process(ddp, single):
    run, _ = ddp
    assert_close_weights(weights(run / "last.pt"), weights(single / "epoch_1.pt"))


def test_sharded_validation_equals_single_process_validation(ddp, single):
    run, _ = ddp
    row = pd.read_csv(run / "results.csv").iloc[0]
    # The same weights evaluated by one process over all 193 digits.
    model, cfg, _ = model_from_checkpoint(run / "last.pt", torch.device("cpu"), which="last.pt")
    loader = loader_for(cfg, split="val", batch_size=64, limit=193, device=torch.device("cpu"))
    assert loader.num_examples == 193
    val = evaluate(model, loader, torch.nn.CrossEntropyLoss())
    assert val["count"] == 193
    assert row["val_loss"] == pytest.approx(val["loss"], rel=1e-6)
    assert row["val_acc1"] == val["acc1"] and row["val_acc5"] == val["acc5"]
    reference = pd.read_csv(single / "results.csv").iloc[0]
    assert row["val_acc1"] == reference["val_acc1"]
    assert row["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-5)
    assert row["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-5)
    assert row["train_acc1"] == reference["train_acc1"]


def test_only_rank_zero_writes_records(ddp):
    run, proc = ddp
    assert list(pd.read_csv(run / "results.csv")["epoch"]) == [1]
    log = (run / "log.txt").read_text()
    assert log.count("epoch 1:") == 1 and log.count("distributed: 2 processes (gloo)") == 1
    assert proc.stdout.count("epoch 1:") == 1, proc.stdout
    assert proc.stdout.count("run folder:") == 1
    assert yaml.safe_load((run / "env.yaml").read_text())["world_size"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["nproc"] is None  # launch detail, not identity
    assert len(list((run / "tensorboard").iterdir())) == 1  # one event file, rank 0's
    assert sorted(p.name for p in run.iterdir() if p.is_file() and p.name != ".lock") == [
        "best.pt", "config.yaml", "env.yaml", "last.pt", "log.txt", "results.csv"]


def test_resume_under_torchrun_continues_the_same_run(ddp, single, tmp_path):
    run = tmp_path / "two"
    shutil.copytree(ddp[0], run)
    command = torchrun_command(2, ["--resume", str(run), "--epochs", "2", "--quiet"])
    proc, _ = launch(command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    frame = pd.read_csv(run / "results.csv")
    assert list(frame["epoch"]) == [1, 2]
    pd.testing.assert_series_equal(frame.iloc[0], pd.read_csv(ddp[0] / "results.csv").iloc[0])
    assert_close_weights(weights(run / "last.pt"), weights(single / "last.pt"))
    assert frame["val_acc1"].iloc[1] == pd.read_csv(single / "results.csv")["val_acc1"].iloc[1]


MISBEHAVING_MODELS = textwrap.dedent("""
    import os, pathlib, signal, time
    import torch
    import torch.nn as nn

    def wait_for_checkpoint(run):
        checkpoint = pathlib.Path(run) / "last.pt"
        while not checkpoint.exists():
            time.sleep(0.05)

    class Rank1Misbehaves(nn.Module):
        # a linear model whose rank-1 copy calls misbehave() at each training forward (not the setup's shape
        # probe, which runs without gradients)
        def __init__(self, num_classes):
            super().__init__()
            self.fc = nn.Linear(28 * 28, num_classes)
            self.calls = 0

        def forward(self, x):
            out = self.fc(x.flatten(1))
            if not self.training or not torch.is_grad_enabled() or os.environ.get("RANK") != "1":
                return out
            self.calls += 1
            return self.misbehave(out)

    class Flaky(Rank1Misbehaves):
        # NaN output at its 2nd training forward, then an exception at its 4th (once rank 0 has written the
        # step checkpoint of the 3rd batch)
        def misbehave(self, out):
            if self.calls == 2:
                return out * float("nan")
            if self.calls == 4:
                wait_for_checkpoint(os.environ["FLAKY_RUN"])
                raise RuntimeError("rank 1 exploded on purpose")
            return out

    class Killed(Rank1Misbehaves):
        # SIGKILLed at its 5th training forward of the first attempt, once rank 0 has written the step
        # checkpoint of the 4th batch; a resumed run trains through
        def misbehave(self, out):
            marker = pathlib.Path(os.environ["KILLED_RUN"] + ".killed")
            if self.calls == 5 and not marker.exists():
                wait_for_checkpoint(os.environ["KILLED_RUN"])
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return out

    def flaky(num_classes, dataset):
        return Flaky(num_classes)

    def killed(num_classes, dataset):
        return Killed(num_classes)
""")


def test_a_killed_rank_ends_the_job_and_the_run_resumes(tmp_path):
    (tmp_path / "killed.py").write_text(MISBEHAVING_MODELS)
    run = tmp_path / "runs" / "killed"
    ENV["KILLED_RUN"] = str(run)
    timeout = 120
    options = ["--model", f"{tmp_path / 'killed.py'}:killed", "--train-limit", "256", "--val-limit", "64", "-b", "32",
               "--optimizer", "SGD", "--lr", "0.1", "--epochs", "2", "--save-every-steps", "2",
               "--dist-timeout", str(timeout), "--quiet"]
    try:
        proc, elapsed = launch(torchrun_command(2, [*options, "--results-dir", str(tmp_path / "runs"),
                                                    "--save", "killed"]), timeout=timeout + 60)
        assert proc.returncode != 0
        assert elapsed < timeout, "the surviving rank waited for the collective timeout"
        assert torch.load(run / "last.pt", weights_only=True)["global_step"] >= 2
        resumed, _ = launch(torchrun_command(2, ["--resume", str(run), *options[:2], "--quiet"]),
                            timeout=timeout + 60)
    finally:
        del ENV["KILLED_RUN"]
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = torch.load(run / "last.pt", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (2, 2 * 256 // 32)
    assert list(pd.read_csv(run / "results.csv")["epoch"]) == [1, 2]


def test_failing_rank_ends_the_job_and_skipped_batches_are_agreed(tmp_path):
    (tmp_path / "flaky.py").write_text(MISBEHAVING_MODELS)
    ENV["FLAKY_RUN"] = str(tmp_path / "runs" / "flaky")
    timeout = 150
    try:
        proc, elapsed = launch(torchrun_command(2, [
            "--model", f"{tmp_path / 'flaky.py'}:flaky", "--train-limit", "256", "--val-limit", "64", "-b", "32",
            "--optimizer", "SGD", "--lr", "0.1", "--epochs", "1", "--nan-policy", "skip", "--save-every-steps", "2",
            "--dist-timeout", str(timeout), "--quiet", "--results-dir", str(tmp_path / "runs"), "--save", "flaky"]),
            timeout=timeout + 60)
    finally:
        del ENV["FLAKY_RUN"]
    assert proc.returncode != 0
    assert "rank 1 exploded on purpose" in proc.stderr
    assert elapsed < timeout, "the surviving rank waited for the collective timeout"
    state = torch.load(tmp_path / "runs" / "flaky" / "last.pt", weights_only=True)
    # Rank 0's own losses were finite: it skipped batch 2 only because rank 1 could not use it.
    assert (state["batch_in_epoch"], state["global_step"], state["nonfinite_skipped"]) == (3, 2, 1)


# ---------------------------------------------------------------------------------------------- refusals
def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_global_batch_not_divisible_by_the_processes_is_refused(capsys, tmp_path):
    code = main(["train", "--nproc", "2", "-b", "63", "--quiet", "--results-dir", str(tmp_path)])
    assert code == 2
    err = one_line_error(capsys)
    assert "--batch-size 63" in err and "world size 2" in err and "multiple of 2" in err
    assert not any(tmp_path.iterdir())  # refused before any process started


def test_inside_torchrun_bad_options_fail_before_joining(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["train", "-b", "45", "--results-dir", str(tmp_path)]) == 2
    assert "world size 2" in one_line_error(capsys)
    assert main(["train", "--server", "asgd", "--results-dir", str(tmp_path)]) == 2
    assert "--server asgd" in one_line_error(capsys)
    assert main(["train", "--nproc", "4", "--results-dir", str(tmp_path)]) == 2
    assert "drop --nproc" in one_line_error(capsys)


def test_device_and_option_checks():
    place = ProcessPlace(rank=1, local_rank=1, world_size=2, local_world_size=2)
    if not torch.cuda.is_available():
        assert select_device("auto", place) == torch.device("cpu")
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
        check_with_device(make_config(sync_bn=True, batch_size=64), 2, torch.device("cpu"))
    with pytest.raises(ConfigError, match="must divide the per-process batch 64/2 = 32"):
        check_with_device(make_config(ghost_batch=12, batch_size=64), 2, torch.device("cpu"))
    check_with_device(make_config(ghost_batch=16, batch_size=64), 2, torch.device("cpu"))
    with pytest.raises(ConfigError, match="would drift apart"):  # each method checks its own options
        build_method(make_config(smoothout=0.01, denoise=False), world_size=2)
    build_method(make_config(ghost_batch=16, smoothout=0.01), world_size=2)  # each rank draws its own noise
    with pytest.raises(ConfigError, match="cannot run in a 2-process job"):
        build_method(make_config(server="asgd", workers=4), world_size=2)
    DataParallel(make_config(server="asgd", workers=4), ProcessPlace())  # one process: fine
    with pytest.raises(ConfigError, match="--dist-timeout"):
        DataParallel(make_config(dist_timeout=0), place)


def test_environment_is_read_and_checked():
    assert ProcessPlace.from_environ({}) == ProcessPlace(0, 0, 1, 1)
    place = ProcessPlace.from_environ({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"})
    got = (place.rank, place.local_rank, place.world_size, place.local_world_size, place.distributed)
    assert got == (3, 1, 4, 2, True)
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        ProcessPlace.from_environ({"WORLD_SIZE": "two"})
    with pytest.raises(ConfigError, match="do not fit"):
        ProcessPlace.from_environ({"RANK": "2", "WORLD_SIZE": "2"})


def test_relaunch_arguments_reproduce_the_options():
    typed = ["train", "--nproc", "2", "-b", "64", "--no-augment", "--sync-bn", "--lr-milestones", "3", "6",
             "--model-config", "{'depth': 20}", "--lr", "0.1", "--config", "x.yaml"]
    args = build_parser().parse_args(typed)
    argv = argv_from_args(args)
    assert "--nproc" not in argv
    again = vars(build_parser().parse_args(["train", *argv]))
    wanted = {k: v for k, v in vars(args).items() if k not in ("nproc", "func")}
    assert {k: v for k, v in again.items() if k != "func"} == wanted
