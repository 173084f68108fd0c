"""A sweep folder's own records: DIR/.sweep/ holds the stored spec, each run's state and the sweep's lock.

- `lock_sweep_folder(DIR)` takes DIR/.sweep/.lock before the sweep writes anything there, so a second sweep on
  the folder is refused having changed nothing. The lock is opened only as a plain file: a `.lock` that is a
  symbolic link, a folder or anything else is refused (basinlab never writes through a link).
- `run_state(DIR, name)` says what happened to a run. A run recorded as done whose results.csv is gone or
  holds no epoch (its folder deleted or emptied) is `missing`: the next sweep trains it again, and the tables
  and the report page leave it out, naming it.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from basinlab.errors import ConfigError, WriteError
from basinlab.records.run_safety import LOCK_FILE, RunLock, lock_holder
from basinlab.utils.io import atomic_write_text

STATE = ".sweep"
SPEC_FILE = "spec.yaml"
RESULTS = "results.csv"


def state_path(results_dir: Path, name: str) -> Path:
    return results_dir / STATE / f"{name}.json"


def has_results(run_folder: Path) -> bool:
    """Whether the run's results.csv is a file with a header and at least one epoch's row."""
    path = run_folder / RESULTS
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return False
    return sum(1 for line in head.splitlines() if line.strip()) >= 2


def run_state(results_dir: Path, name: str) -> dict:
    """{"status": done|failed|running|queued|..., ...} of a run, or pending/interrupted/missing from its folder."""
    path = state_path(results_dir, name)
    state = None
    if path.is_file():
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = None
    if isinstance(state, dict) and isinstance(state.get("status"), str):
        if state["status"] == "done" and not has_results(results_dir / name):
            return {"status": "missing"}
        return state
    if (results_dir / name / "last.pt").is_file():
        return {"status": "interrupted"}
    return {"status": "pending"}


def write_state(results_dir: Path, name: str, state: dict) -> None:
    atomic_write_text(state_path(results_dir, name), json.dumps(state, indent=1))


def forget_run(results_dir: Path, name: str) -> None:
    """Delete a run's state and options files (the run is pending again)."""
    for suffix in (".json", ".yaml"):
        try:
            (results_dir / STATE / f"{name}{suffix}").unlink(missing_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot remove {results_dir / STATE / (name + suffix)}: {exc.strerror}") from None


def warn_stderr(line: str) -> None:
    print(f"basinlab: warning: {line}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- the folder
def check_results_dir(results_dir: Path) -> None:
    """A sweep's results folder is a folder (created where missing), never a file."""
    if results_dir.exists() and not results_dir.is_dir():
        raise ConfigError(f"--results-dir {results_dir} is a file, not a folder; give the folder that holds (or "
                          f"will hold) the sweep's runs")


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


def state_dir(results_dir: Path) -> Path:
    """DIR/.sweep, created where missing; a .sweep that is a link or a file is refused."""
    check_results_dir(results_dir)
    folder = results_dir / STATE
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISDIR(mode):
        what = "a symbolic link" if stat.S_ISLNK(mode) else "a file"
        raise ConfigError(f"{folder} is {what}, not the sweep's own folder; basinlab keeps a sweep's state only "
                          f"in a real folder there: remove it, or give another --results-dir")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"--results-dir {results_dir}: a file stands where a folder must be ({folder} or a "
                          f"folder above it); give another --results-dir") from None
    except OSError as exc:
        raise WriteError(f"cannot create {folder}: {exc.strerror}; give a --results-dir you can write to") from None
    return folder


def check_lock_file(folder: Path) -> Path:
    """DIR/.sweep/.lock is absent or a plain file: a link or a folder there is refused, never followed."""
    path = folder / LOCK_FILE
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise WriteError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path} is {_kind(mode)}, not a sweep's lock file; basinlab opens its lock only as a "
                          f"plain file and never writes through a link: remove it and run the sweep again")
    return path


def lock_sweep_folder(results_dir: Path) -> RunLock:
    """Hold DIR/.sweep/.lock (refused while another sweep holds it); taken before anything is written."""
    folder = state_dir(results_dir)
    path = check_lock_file(folder)
    try:
        return RunLock(folder).acquire()
    except ConfigError:
        holder = lock_holder(folder)
        if holder is None:
            raise
        raise ConfigError(f"another basinlab sweep is running in {results_dir} (process {holder[:32]}); wait for it "
                          f"(see basinlab sweep --status {results_dir})") from None
    except OSError as exc:
        raise WriteError(f"cannot lock {path}: {exc.strerror}; give a --results-dir you can write to") from None


def sweep_running(results_dir: Path) -> bool:
    """Whether a sweep holds the folder's lock (a lock that is not a plain file is held by no sweep)."""
    folder = results_dir / STATE
    try:
        check_lock_file(folder)
    except (ConfigError, WriteError):
        return False
    return lock_holder(folder) is not None


def in_queue(job_id: str) -> bool:
    """Whether Slurm still has the job (pending or running)."""
    if not job_id:
        return False
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())
