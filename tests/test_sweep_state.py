"""A sweep folder's records under hostile use: the lock is taken before anything is written and is never a link,
an edited spec is refused unless allowed, runs whose results are gone are trained again (and named, not fatal,
by --summarize and report), and bad folders are one line. The runs here are made by a backend that writes
run folders without training (run_sweep decides what to run; tests/test_sweep.py trains for real)."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import basinlab.sweep as sweeps
from basinlab.cli import main
from basinlab.errors import ConfigError
from basinlab.records.results import FIRST_COLUMNS
from basinlab.records.run_safety import RunLock
from basinlab.sweep.changes import same_value, spec_change
from basinlab.sweep.runner import command_for, run_sweep
from basinlab.sweep.state import run_state, write_state

BASE = {"train-limit": 64, "val-limit": 64, "batch-size": 32, "epochs": 1}
SPEC = {"base": BASE, "grid": {"lr": [0.001, 0.003]}, "seeds": [0, 1]}
NAMES = ["lr_0.001-s0", "lr_0.001-s1", "lr_0.003-s0", "lr_0.003-s1"]


def write_spec(folder, spec=SPEC, name="spec.yaml"):
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def fake_run(folder, options, rng, epochs=2):
    """A finished run folder as basinlab train leaves it (config.yaml, results.csv, last.pt), numbers from rng."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in options.items()}))
    rows = {column: rng.uniform(0.1, 90.0, epochs) for column in FIRST_COLUMNS}
    pd.DataFrame({**rows, "epoch": np.arange(1, epochs + 1)})[FIRST_COLUMNS].to_csv(folder / "results.csv",
                                                                                     index=False)
    (folder / "last.pt").write_bytes(b"checkpoint")


class FakeBackend:
    """Records the runs it is asked to run and "trains" each one: a run folder and a done state."""

    def __init__(self, seed=0):
        self.asked, self.commands, self.rng = [], {}, np.random.default_rng(seed)

    def run_all(self, runs, results_dir):
        for run in runs:
            self.asked.append(run.name)
            self.commands[run.name] = command_for(run, results_dir)  # what LocalBackend would run
            fake_run(results_dir / run.name, run.options, self.rng)
            write_state(results_dir, run.name, {"status": "done"})
        return {run.name: {"status": "done"} for run in runs}


def sweep_with(spec, out, backend=None, allow=False):
    lines = []
    backend = backend or FakeBackend()
    run_sweep(sweeps.from_mapping(spec, out), out, backend, lines.append, allow_changed_spec=allow)
    return backend, lines


@pytest.fixture
def done(tmp_path):
    """A sweep folder whose four runs are done."""
    out = tmp_path / "out"
    backend, _ = sweep_with(SPEC, out)
    assert backend.asked == NAMES
    return out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------------------------ the lock
def test_a_refused_second_sweep_has_written_nothing(done, tmp_path, capsys):
    stored = (done / ".sweep" / "spec.yaml").read_bytes()
    other = {**SPEC, "base": {**BASE, "epochs": 3}, "seeds": [0, 1, 2]}
    lock = RunLock(done / ".sweep").acquire()
    try:
        before = sorted(p.name for p in (done / ".sweep").iterdir())
        assert main(["sweep", str(write_spec(tmp_path, other)), "--results-dir", str(done),
                     "--allow-changed-spec"]) == 2
        assert "another basinlab sweep is running" in one_line_error(capsys)
        assert (done / ".sweep" / "spec.yaml").read_bytes() == stored
        assert sorted(p.name for p in (done / ".sweep").iterdir()) == before
    finally:
        lock.release()


def test_a_lock_that_is_a_link_never_touches_its_target(done, tmp_path, capsys):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    (done / ".sweep" / ".lock").unlink()
    (done / ".sweep" / ".lock").symlink_to(victim)
    assert main(["sweep", str(write_spec(tmp_path)), "--results-dir", str(done)]) == 2
    assert "is a symbolic link" in one_line_error(capsys)
    assert victim.read_text() == "keep me\n"
    assert [state["status"] for _, state in sweeps.status(done)] == ["done"] * 4  # and --status reads no link


def test_a_lock_that_is_a_folder_is_one_line(done, tmp_path, capsys):
    (done / ".sweep" / ".lock").unlink()
    (done / ".sweep" / ".lock").mkdir()
    assert main(["sweep", str(write_spec(tmp_path)), "--results-dir", str(done)]) == 2
    assert "is a folder, not a sweep's lock file" in one_line_error(capsys)


def test_a_lock_that_cannot_be_opened_is_a_write_error(tmp_path, monkeypatch, capsys):
    def refused(self, record_pid=True):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(RunLock, "acquire", refused)
    assert main(["sweep", str(write_spec(tmp_path)), "--results-dir", str(tmp_path / "out")]) == 4
    assert "cannot lock" in one_line_error(capsys) and not (tmp_path / "out" / ".sweep" / "spec.yaml").exists()


def test_a_results_folder_that_cannot_be_made_is_a_write_error(tmp_path, monkeypatch, capsys):
    spec = write_spec(tmp_path)

    def refused(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Path, "mkdir", refused)
    assert main(["sweep", str(spec), "--results-dir", str(tmp_path / "out")]) == 4
    err = one_line_error(capsys)
    assert "cannot create" in err and "Permission denied" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_results_folder_is_one_line_exit_4(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert main(["sweep", str(write_spec(tmp_path)), "--results-dir", str(out)]) == 4
        assert "cannot create" in one_line_error(capsys)
    finally:
        out.chmod(0o755)


def test_a_results_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["sweep", str(write_spec(tmp_path)), "--results-dir", str(target)]) == 2
    assert "is a file, not a folder" in one_line_error(capsys)
    assert target.read_text() == "x"


# ------------------------------------------------------------------------------------------ an edited spec
def test_an_edited_spec_is_refused_naming_what_changed(done, tmp_path, capsys):
    stored = (done / ".sweep" / "spec.yaml").read_bytes()
    edited = {**SPEC, "base": {**BASE, "epochs": 3}}
    assert main(["sweep", str(write_spec(tmp_path, edited)), "--results-dir", str(done)]) == 2
    err = one_line_error(capsys)
    assert "epochs 1 -> 3 in 4 runs" in err and "--allow-changed-spec" in err
    assert (done / ".sweep" / "spec.yaml").read_bytes() == stored
    dropped = {**SPEC, "grid": {"lr": [0.001]}}
    assert main(["sweep", str(write_spec(tmp_path, dropped)), "--results-dir", str(done)]) == 2
    assert "2 runs it holds are no longer in the spec (e.g. lr_0.003-s0)" in one_line_error(capsys)


def test_the_same_spec_or_one_that_only_adds_runs_goes_on(done):
    spelled_otherwise = {"seeds": [0, 1], "grid": {"lr": [0.001, 0.003]},
                         "base": {"batch_size": 32, "epochs": 1, "val-limit": 64, "train-limit": 64,
                                  "data-workers": 0}}  # data-workers changes nothing a run computes
    backend, lines = sweep_with(spelled_otherwise, done)
    assert backend.asked == [] and "(4 done, 0 to run)" in lines[-1]
    more = {**SPEC, "grid": {"lr": [0.001, 0.003, 0.01]}, "seeds": [0, 1, 2]}
    backend, _ = sweep_with(more, done)
    assert sorted(backend.asked) == ["lr_0.001-s2", "lr_0.003-s2", "lr_0.01-s0", "lr_0.01-s1", "lr_0.01-s2"]


def test_allowed_the_changed_runs_are_trained_again_and_their_old_folders_kept(done):
    old = (done / "lr_0.003-s1" / "results.csv").read_text()
    edited = {**SPEC, "base": {**BASE, "momentum": 0.5}}
    with pytest.raises(ConfigError, match="momentum unset -> 0.5 in 4 runs"):
        sweep_with(edited, done)
    backend, lines = sweep_with(edited, done, FakeBackend(seed=1), allow=True)
    assert backend.asked == NAMES and "4 changed runs are trained again" in lines[0]
    trashed = sorted((done / ".sweep" / "replaced").iterdir())
    assert len(trashed) == 4 and old in [(p / "results.csv").read_text() for p in trashed]
    assert yaml.safe_load((done / ".sweep" / "spec.yaml").read_text())["base"]["momentum"] == 0.5
    assert not spec_change(sweeps.from_mapping(edited, done), done)


def test_runs_not_begun_may_change_freely(tmp_path):
    out = tmp_path / "out"
    spec = sweeps.from_mapping(SPEC, out)
    out.mkdir()
    (out / ".sweep").mkdir()
    (out / ".sweep" / "spec.yaml").write_text(yaml.safe_dump(spec.as_mapping()))  # killed before any run began
    edited = {**SPEC, "base": {**BASE, "epochs": 2}}
    assert not spec_change(sweeps.from_mapping(edited, out), out)


@pytest.mark.parametrize("old, new, same", [(1, 1.0, True), (True, 1, False), (0.1, 0.1, True),
                                            ([1, 2], [1, 2.0], True), ({"a": 1}, {"a": 2}, False),
                                            (float("nan"), float("nan"), True), ("1", 1, False), ([1], [1, 2], False)])
def test_values_are_compared_as_settings(old, new, same):
    assert same_value(old, new) is same


def test_an_unreadable_stored_spec_is_refused_unless_allowed(done):
    (done / ".sweep" / "spec.yaml").write_text("base: [1, 2\n")
    with pytest.raises(ConfigError, match="4 runs it holds cannot be checked"):
        sweep_with(SPEC, done)
    backend, _ = sweep_with(SPEC, done, allow=True)
    assert backend.asked == NAMES


# ----------------------------------------------------------------------------- runs whose results are gone
def test_a_done_run_without_its_results_is_trained_again(done):
    import shutil
    shutil.rmtree(done / "lr_0.001-s1")
    (done / "lr_0.003-s0" / "results.csv").write_text("epoch,val_acc1\n")  # emptied: no epoch left
    assert run_state(done, "lr_0.001-s1") == {"status": "missing"}
    assert [s["status"] for _, s in sweeps.status(done)] == ["done", "missing", "missing", "done"]
    backend, lines = sweep_with(SPEC, done)
    assert backend.asked == ["lr_0.001-s1", "lr_0.003-s0"] and "2 runs were done but" in lines[0]
    assert [p.name.split("-20")[0] for p in (done / ".sweep" / "replaced").iterdir()] == ["lr_0.003-s0"]  # kept
    assert not any("--resume" in command for command in backend.commands.values())  # from scratch
    assert [s["status"] for _, s in sweeps.status(done)] == ["done"] * 4


def test_summarize_and_report_name_the_missing_runs_and_use_the_rest(done, tmp_path, capsys):
    (done / "lr_0.003-s1" / "results.csv").unlink()
    assert main(["sweep", "--summarize", str(done)]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(1 of 4): lr_0.003-s1" in err
    summary = pd.read_csv(done / "summary.csv").set_index("setting")
    assert summary.loc["lr_0.001", "n"] == 2 and summary.loc["lr_0.003", "n"] == 1
    kept = pd.read_csv(done / "lr_0.003-s0" / "results.csv")
    assert summary.loc["lr_0.003", "final_val_acc1_median"] == kept["val_acc1"].iloc[-1]
    pytest.importorskip("bokeh")
    from basinlab.sweep.report import gather
    notes = []
    runs, tables = gather([done], warn=notes.append)
    assert len(notes) == 1 and "lr_0.003-s1" in notes[0]
    assert sorted(run.name for run in runs) == sorted(set(NAMES) - {"lr_0.003-s1"})
    assert list(tables[0].summary["n"]) == [2, 1]


def test_text_in_a_column_of_numbers_is_one_line_naming_file_and_column(done, tmp_path, capsys):
    path = done / "lr_0.001-s0" / "results.csv"
    frame = pd.read_csv(path).astype({"val_acc1": object})
    frame.loc[1, "val_acc1"] = "ninety"
    frame.to_csv(path, index=False)
    assert main(["sweep", "--summarize", str(done)]) == 2
    err = one_line_error(capsys)
    assert str(path) in err and "column val_acc1 holds text" in err and "'ninety' at epoch 2" in err
    pytest.importorskip("bokeh")
    assert main(["report", str(done / "lr_0.001-s0"), "-o", str(tmp_path / "r.html")]) == 2
    assert "column val_acc1 holds text" in one_line_error(capsys)
    assert not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------------------------------------- the spec
@pytest.mark.parametrize("spec, message", [
    ({"base": {**BASE, "trust-model-code": True}}, "trust-model-code"),
    ({"base": BASE, "grid": {"lr": [10 ** 400]}}, "--lr must be"),
    ({"base": BASE, "grid": {"datasets-dir": ["d" * 300]}}, "a run folder's name at most"),
])
def test_spec_values_the_sweep_cannot_use_are_one_line(tmp_path, capsys, spec, message):
    out = tmp_path / "out"
    assert main(["sweep", str(write_spec(tmp_path, spec)), "--results-dir", str(out)]) == 2
    err = one_line_error(capsys)
    assert message in err and len(err) < 600, err
    assert not out.exists()


def test_state_files_that_are_not_a_state_are_ignored(done):
    (done / ".sweep" / "lr_0.001-s0.json").write_text("[1, 2]")
    assert run_state(done, "lr_0.001-s0") == {"status": "interrupted"}  # its last.pt is there: resumed



def test_the_slurm_backend_without_a_cluster_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    monkeypatch.setattr("basinlab.sweep.slurm.shutil.which", lambda name: None)
    out = tmp_path / "out"
    assert main(["sweep", str(write_spec(tmp_path)), "--results-dir", str(out), "--backend", "slurm"]) == 2
    assert "srun is not on PATH" in one_line_error(capsys) and not out.exists()
