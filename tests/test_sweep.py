"""`basinlab sweep`: settings x seeds as ordinary run folders, checked before anything starts, resumable,
summarised as median tables recomputed here from each run's results.csv."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

import basinlab.sweep as sweeps
from basinlab.cli import main
from basinlab.errors import ConfigError
from basinlab.records.results import TIME_COLUMNS
from basinlab.records.run_safety import RunLock, lock_holder

BASE = {"train-limit": 256, "val-limit": 128, "batch-size": 64, "epochs": 1}
SPEC = {"base": BASE, "grid": {"lr": [0.001, 0.003]}, "seeds": [0, 1]}


def write_spec(tmp_path, spec=SPEC, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def swept(finished_sweep, tmp_path_factory):
    """A copy of the session's finished sweep of SPEC (conftest.py: one thread per run), which these tests change."""
    tmp = tmp_path_factory.mktemp("sweep")
    out = tmp / "out"
    shutil.copytree(finished_sweep, out)
    return tmp, out


def test_every_run_is_a_run_folder_named_after_its_setting(swept):
    _, out = swept
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert names == ["lr_0.001-s0", "lr_0.001-s1", "lr_0.003-s0", "lr_0.003-s1"]
    for name in names:
        stored = yaml.safe_load((out / name / "config.yaml").read_text())
        assert stored["seed"] == int(name[-1]) and stored["lr"] == float(name.split("_")[1].split("-")[0])
        assert stored["train-limit"] == 256 and (out / name / "last.pt").is_file()


def test_the_summary_equals_statistics_recomputed_from_each_results_csv(swept):
    _, out = swept
    summary = pd.read_csv(out / "summary.csv").set_index("setting")
    for setting in ("lr_0.001", "lr_0.003"):
        finals, bests, losses = [], [], []
        for seed in (0, 1):
            history = pd.read_csv(out / f"{setting}-s{seed}" / "results.csv")
            finals.append(history["val_acc1"].iloc[-1])
            bests.append(history["val_acc1"].max())
            losses.append(history["val_loss"].iloc[-1])
        row = summary.loc[setting]
        assert row["n"] == 2
        assert row["final_val_acc1_median"] == pytest.approx(sorted(finals)[0] / 2 + sorted(finals)[1] / 2)
        assert row["final_val_acc1_min"] == min(finals) and row["final_val_acc1_max"] == max(finals)
        assert row["final_val_acc1_std"] == pytest.approx(abs(finals[0] - finals[1]) / 2 ** 0.5)  # sample std
        assert row["best_val_acc1_mean"] == pytest.approx(sum(bests) / 2)
        assert row["final_val_loss_median"] == pytest.approx(sum(losses) / 2)
    table = (out / "summary.md").read_text()
    assert table.splitlines()[0].startswith("| lr | n | final val top-1 %") and "| 0.003 | 2/2 |" in table
    assert (out / "summary.png").stat().st_size > 5000
    before = (out / "summary.csv").read_text()
    assert main(["sweep", "--summarize", str(out)]) == 0
    assert (out / "summary.csv").read_text() == before


def test_a_second_sweep_starts_nothing_twice(swept, capsys):
    tmp, out = swept
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/results.csv")}
    assert main(["sweep", str(write_spec(tmp)), "--results-dir", str(out)]) == 0
    assert "(4 done, 0 to run)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/results.csv")} == stamps
    assert main(["sweep", "--status", str(out)]) == 0
    assert "4 done" in capsys.readouterr().out


def test_a_sweep_already_running_in_the_folder_is_refused(swept):
    tmp, out = swept
    lock = RunLock(out / ".sweep").acquire()
    try:
        with pytest.raises(ConfigError, match="another basinlab sweep is running"):
            sweeps.sweep(write_spec(tmp), out)
    finally:
        lock.release()


def test_a_deleted_run_is_named_by_summarize_and_trained_again_by_the_next_sweep(swept, capsys, monkeypatch):
    """The run folder of a finished run is deleted: --summarize names it and summarises the rest; the next sweep
    trains it again (the same run: the same seed and threads give the same results) and nothing else."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread per run, as the session's sweep ran it
    tmp, out = swept
    old = pd.read_csv(out / "lr_0.003-s1" / "results.csv")
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/results.csv") if "lr_0.003-s1" not in str(p)}
    shutil.rmtree(out / "lr_0.003-s1")
    assert main(["sweep", "--summarize", str(out)]) == 0
    assert "(1 of 4): lr_0.003-s1" in capsys.readouterr().err
    assert list(pd.read_csv(out / "summary.csv")["n"]) == [2, 1]
    assert main(["sweep", str(write_spec(tmp)), "--results-dir", str(out), "--jobs", "2"]) == 0
    assert "(3 done, 1 to run)" in capsys.readouterr().out
    new = pd.read_csv(out / "lr_0.003-s1" / "results.csv")
    pd.testing.assert_frame_equal(new.drop(columns=TIME_COLUMNS), old.drop(columns=TIME_COLUMNS), rtol=1e-6)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert list(pd.read_csv(out / "summary.csv")["n"]) == [2, 2]


@pytest.mark.parametrize("spec, message", [
    ({"base": BASE, "grid": {"lrr": [0.1]}}, "unknown option 'lrr' in the sweep spec's grid"),
    ({"base": {**BASE, "seed": 3}}, "'seed' is set by the sweep"),
    ({"base": BASE, "grid": {"lr": 0.1}}, "must be a non-empty list"),
    ({"base": BASE, "grid": {"lr": [0.1, -1.0]}}, "sweep run lr_-1.0-s0: "),
    ({"base": BASE, "seeds": [0, 0]}, "seeds lists a seed twice"),
    ({"base": BASE, "grid": {"lr": [0.1]}, "repeat": 2}, "unknown key 'repeat'"),
    ({"base": {**BASE, "lr": 0.1}, "grid": {"lr": [0.2]}}, "both in base and in grid"),
    ({"base": BASE, "variants": {"sam": {"sam": 0.05}}, "grid": {"sam": [0.1]}}, "both in variant sam and in grid"),
    ({"base": BASE, "variants": {"a b": {}}}, "variants: the name 'a b' must be"),
    ({"base": BASE, "variants": {"sam": {"sam": -1.0}}}, "sweep run sam-s0: "),
    ({"base": BASE, "variants": {"x": {"lrr": 0.1}}}, "unknown option 'lrr' in the sweep spec's variant x"),
    ({"base": BASE, "variants": []}, "variants must be a non-empty mapping"),
    ({"base": {**BASE, "model": "resnet20", "depth": 8}}, "sweep run base-s0: unknown config key 'depth' for model "
                                                          "'resnet20'; allowed: norm, in_channels"),
])
def test_a_bad_spec_is_one_line_before_anything_runs(tmp_path, capsys, spec, message):
    out = tmp_path / "out"
    assert main(["sweep", str(write_spec(tmp_path, spec)), "--results-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("given, jobs, each", [("4", 2, 2), ("1", 2, 1), ("", 1, os.cpu_count()),
                                                ("x", 1, os.cpu_count())])
def test_runs_share_the_threads_the_user_allows(monkeypatch, given, jobs, each):
    from basinlab.sweep.runner import LocalBackend
    monkeypatch.setenv("OMP_NUM_THREADS", given)
    assert LocalBackend(jobs).threads == each


def test_variants_are_named_settings_crossed_with_the_grid(tmp_path):
    """Each variant's options override base's; run names and the tables' first column are the variant's."""
    spec = {"base": {**BASE, "lr": 0.001}, "seeds": [0], "grid": {"momentum": [0.0, 0.9]},
            "variants": {"plain": {}, "fast": {"lr": 0.003, "weight-decay": 1e-4}}}
    planned = sweeps.from_mapping(spec, tmp_path)
    assert [run.name for run in planned.runs] == ["plain__momentum_0.0-s0", "plain__momentum_0.9-s0",
                                                  "fast__momentum_0.0-s0", "fast__momentum_0.9-s0"]
    fast = planned.runs[3].options
    assert fast["lr"] == 0.003 and fast["weight_decay"] == 1e-4 and fast["momentum"] == 0.9
    assert planned.runs[0].options["lr"] == 0.001 and "weight_decay" not in planned.runs[0].options
    assert planned.columns() == ["variant", "momentum"]


def test_a_variant_sweep_runs_and_its_table_has_a_variant_column(tmp_path):
    spec = {"base": BASE, "seeds": [0], "variants": {"sgd": {}, "sam": {"sam": 0.05}}}
    out = tmp_path / "out"
    assert main(["sweep", str(write_spec(tmp_path, spec)), "--results-dir", str(out), "--jobs", "2"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["variant"]) == ["sgd", "sam"] and list(summary["n"]) == [1, 1]
    assert yaml.safe_load((out / "sam-s0" / "config.yaml").read_text())["sam"] == 0.05
    assert "| variant | n |" in (out / "summary.md").read_text()
    assert [name for name, state in sweeps.status(out) if state["status"] == "done"] == ["sgd-s0", "sam-s0"]


def test_a_killed_sweep_resumes_its_runs_exactly(tmp_path, monkeypatch):
    """SIGKILL the sweep mid-run: its run dies with it; the next sweep resumes it from last.pt and ends with
    the weights of a run that was never interrupted."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # every sweep here (and so every run part) uses one thread
    spec = {"base": {**BASE, "epochs": 3, "save-every-steps": 1, "channels-last": "off"}, "grid": {"lr": [0.002]},
            "seeds": [0]}
    path, out = write_spec(tmp_path, spec), tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start_sweep(results_dir):
        return subprocess.Popen([sys.executable, "-m", "basinlab", "sweep", str(path), "--results-dir",
                                 str(results_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # the same sweep never interrupted (the same process layout and threads as the resumed run), on the
    # other CPU core meanwhile
    never_interrupted = start_sweep(tmp_path / "straight")
    try:
        proc = start_sweep(out)
        results = out / "lr_0.002-s0" / "results.csv"
        deadline = time.monotonic() + 120
        while not (results.is_file() and len(pd.read_csv(results)) >= 1) and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while lock_holder(results.parent) is not None and time.monotonic() < deadline:
            time.sleep(0.05)  # the run process gets its SIGKILL when the sweep dies
        assert [s["status"] for _, s in sweeps.status(out)] == ["interrupted"]
        assert main(["sweep", str(path), "--results-dir", str(out)]) == 0
        assert len(pd.read_csv(results)) == 3
        assert never_interrupted.wait(timeout=300) == 0
    finally:
        if never_interrupted.poll() is None:  # the test failed before it waited
            never_interrupted.kill()
            never_interrupted.wait()
    resumed = torch.load(out / "lr_0.002-s0" / "last.pt", weights_only=True)["model"]
    straight = torch.load(tmp_path / "straight" / "lr_0.002-s0" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
