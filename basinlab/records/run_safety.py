"""What keeps a run folder safe: where a new run may go, what --overwrite may replace, and the lock.

- A new run goes inside --results-dir (or to an absolute --save path); never onto a file, the results
  folder itself or a folder above it.
- --overwrite replaces only an empty folder or a basinlab run (it holds config.yaml) that no process is
  training; the old run is moved aside into <results-dir>/.trash/ and deleted only once the new run has
  written its first checkpoint (if the new run ends before that, the old one is put back).
- A run folder being trained is locked (an advisory lock on <run>/.lock holding the trainer's pid).
"""
from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
from pathlib import Path

from basinlab.errors import ConfigError

LOCK_FILE = ".lock"
TRASH = ".trash"
RUN_MARKER = "config.yaml"  # written into every run folder by basinlab train
MAX_NAME_BYTES = 255  # a folder name, on every common file system


def default_run_name() -> str:
    """A timestamp plus a random suffix: two runs started in the same second never collide."""
    return dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S") + "-" + secrets.token_hex(2)


def is_run_folder(path: Path) -> bool:
    return (path / RUN_MARKER).is_file()


def new_run_path(results_dir: str, save: str) -> Path:
    """The folder of a new run, after refusing names that could land on something else."""
    path = Path(results_dir) / save
    for part in Path(save).parts:
        if len(part.encode()) > MAX_NAME_BYTES:
            raise ConfigError(f"--save {save[:40]}...: a folder name has at most {MAX_NAME_BYTES} bytes, "
                              f"this one {len(part.encode())}")
    results, target = Path(results_dir).resolve(), path.resolve()
    if target == results or target in results.parents:
        raise ConfigError(f"--save {save} names the results folder {results} itself (or a folder above it); "
                          f"give the run its own name")
    if not Path(save).is_absolute() and results not in target.parents:
        raise ConfigError(f"--save {save} leads outside --results-dir {results}; name a folder inside it, or "
                          f"give an absolute path")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--save {save}: {path} is a file, not a run folder")
    return path


def check_replaceable(path: Path) -> None:
    """Refuse --overwrite of anything but an empty folder or an idle basinlab run."""
    if path.is_symlink():
        raise ConfigError(f"--overwrite: {path} is a symbolic link; basinlab does not replace what it points to "
                          f"(remove the link yourself, or choose another --save)")
    if any(path.iterdir()) and not is_run_folder(path):
        raise ConfigError(f"--overwrite: {path} is not a basinlab run (no {RUN_MARKER}) and not empty; basinlab "
                          f"replaces only its own runs")
    holder = lock_holder(path)
    if holder is not None:
        raise ConfigError(f"--overwrite: run folder {path} is being trained by process {holder}; wait for it or "
                          f"choose another --save")


def move_aside(path: Path, results_dir: str) -> Path:
    """Move an old run into <results-dir>/.trash/ (same file system: a rename); return where it went."""
    trash = Path(results_dir) / TRASH
    trash.mkdir(parents=True, exist_ok=True)
    aside = trash / f"{path.name}-{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    os.replace(path, aside)
    return aside


def put_back(aside: Path, path: Path) -> None:
    """Undo move_aside: the new run's folder (if any) is removed and the old run returns."""
    if path.exists():
        shutil.rmtree(path)
    os.replace(aside, path)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the half-written files (.<name>.*.tmp) a killed run left; call only while holding the lock."""
    stale = [p for p in folder.glob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------------------------- the lock
class RunLock:
    """An advisory lock on <run>/.lock held while a process trains the run (POSIX flock)."""

    def __init__(self, path: Path):
        self.path, self.fd = path / LOCK_FILE, None

    def acquire(self, record_pid: bool = True) -> RunLock:
        import fcntl
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = _read_pid(self.path)
            raise ConfigError(f"run folder {self.path.parent} is being trained by process {holder} (it holds "
                              f"{self.path}); wait for it, or use --save NAME for a new run") from None
        if record_pid:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def lock_holder(folder: Path) -> str | None:
    """The pid holding `folder`'s lock, or None when nobody trains it."""
    path = folder / LOCK_FILE
    if not path.is_file():
        return None
    try:
        probe = RunLock(folder).acquire(record_pid=False)
    except ConfigError:
        return _read_pid(path)
    probe.release()
    return None


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"
