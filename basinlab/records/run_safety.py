"""What keeps a run folder safe: where a new run may go, what may replace what, the lock, and the trash.

- A new run goes inside --results-dir (or to an absolute --save path); never onto a file, the results
  folder itself or a folder above it. Its folder is made by one mkdir, once setup succeeded.
- Only --overwrite replaces a run, and only an empty folder or a basinlab run (it holds config.yaml) that
  no process is training, checked again at the moment of the move. The same command run again also
  replaces a start of it that stopped before its first checkpoint (nothing trained is lost).
- A replaced run is moved into <its parent>/.trash/ (the same file system: a rename) after an intent file
  naming it is written and locked; it is deleted once the new run has written its first checkpoint and
  put back if the new run ends before that. If the process died instead, the next start in that folder
  reads the intent and puts the old run back (or deletes it, if the new run did checkpoint).
- A run folder being trained is locked (an advisory lock on <run>/.lock holding the trainer's pid). Lock
  and intent files are opened without following links and only as regular files.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import os
import secrets
import shutil
import stat
from pathlib import Path

from basinlab.errors import BasinlabError, ConfigError, WriteError
from basinlab.utils.io import fsync_dir

LOCK_FILE = ".lock"
TRASH = ".trash"
INTENT = ".intent"  # <trash>/<aside>.intent: which run a pending replacement moved aside
RUN_MARKER = "config.yaml"  # written into every run folder by basinlab train
MAX_NAME_BYTES = 255  # a folder name, on every common file system
CHECKPOINT_GLOBS = ("last.pt", "best.pt", "epoch_*.pt")
# What a start that never checkpointed can have written: such a folder may be replaced by the trash's recovery.
STUB_ENTRIES = {LOCK_FILE, "plots", "env.yaml", RUN_MARKER, "log.txt", "tensorboard", "results.csv", "steps.csv",
                "report.html"}
# errnos of a failed write (exit 4: free space or permissions are the cure, as for a sweep's folder); any other
# OSError (a path that is a file, a link, missing) is bad input (2)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES, errno.EPERM}


def os_failure(exc: OSError, doing: str, path) -> BasinlabError:
    """One line for an OSError met while `doing` something to `path`: exit 4 for a failed write, else 2."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in WRITE_ERRNOS:
        return WriteError(f"cannot {doing} {path}: {reason}")
    return ConfigError(f"cannot {doing} {path}: {reason} (check the path)")


def default_run_name() -> str:
    """A timestamp plus a random suffix: two runs started in the same second never collide."""
    return dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S") + "-" + secrets.token_hex(2)


def is_run_folder(path: Path) -> bool:
    return (path / RUN_MARKER).is_file()


def has_checkpoint(path: Path) -> bool:
    return any(p.is_file() for pattern in CHECKPOINT_GLOBS for p in path.glob(pattern))


def is_unfinished_start(path: Path) -> bool:
    """A basinlab run that stopped before its first checkpoint and that nobody trains now."""
    return (path.is_dir() and not path.is_symlink() and is_run_folder(path) and not has_checkpoint(path)
            and lock_holder(path) is None)


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


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the half-written files (.<name>.*.tmp) a killed run left; call only while holding the lock."""
    stale = [p for p in folder.glob(".*.tmp") if p.is_file() and not p.is_symlink()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------------------------- the lock
class LockHeld(ConfigError):
    """Another process holds the lock."""


def open_regular_file(path: Path, flags: int, what: str) -> int:
    """os.open with no link followed, refusing anything but a regular file with one name (a hard link to
    another file would let a truncate reach it)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{path} is a symbolic link; basinlab never follows a link for its {what} (it could "
                              f"overwrite the file it points to): remove the link and retry") from None
        if exc.errno == errno.EISDIR:
            raise ConfigError(f"{path} is a folder where basinlab keeps its {what} file; remove it and retry") from None
        raise os_failure(exc, f"open the {what} file", path) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        kind = "has other names (hard links)" if stat.S_ISREG(info.st_mode) else "is not a regular file"
        raise ConfigError(f"{path} {kind}; basinlab writes its {what} only into a file of its own: remove it "
                          f"and retry")
    return fd


class RunLock:
    """An advisory lock on <folder>/.lock held while a process trains the run (POSIX flock)."""

    def __init__(self, path: Path):
        self.path, self.fd = path / LOCK_FILE, None

    def acquire(self, record_pid: bool = True) -> RunLock:
        import fcntl
        fd = open_regular_file(self.path, os.O_RDWR | os.O_CREAT, "lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = _read_pid(self.path)
            raise LockHeld(f"run folder {self.path.parent} is being trained by process {holder} (it holds "
                           f"{self.path}); wait for it, or use --save NAME for a new run") from None
        if record_pid:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            except OSError as exc:
                os.close(fd)
                raise os_failure(exc, "write the lock file", self.path) from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def lock_holder(folder: Path) -> str | None:
    """The pid holding `folder`'s lock, or None when nobody trains it."""
    path = folder / LOCK_FILE
    try:
        os.lstat(path)
    except OSError:
        return None
    try:
        probe = RunLock(folder).acquire(record_pid=False)
    except LockHeld:
        return _read_pid(path)
    probe.release()
    return None


def _read_pid(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return "unknown"
    try:
        text = os.read(fd, 32).decode(errors="replace").strip()
    except OSError:
        text = ""
    finally:
        os.close(fd)
    return text if text.isdigit() else "unknown"


# ---------------------------------------------------------------------------------------------- the trash
class Replacement:
    """An old run moved aside into <parent>/.trash/ while a new run takes its place; its intent file stays
    locked by this process until the replacement is settled (`discard` or `put_back`)."""

    def __init__(self, run: Path, aside: Path, intent: Path, fd: int):
        self.run, self.aside, self.intent, self.fd = run, aside, intent, fd

    def discard(self) -> None:
        """The new run has a checkpoint: the old run goes."""
        shutil.rmtree(self.aside, ignore_errors=True)
        self._settled()

    def put_back(self) -> None:
        """The new run ended before its first checkpoint: its folder goes and the old run returns. If that
        fails, the intent stays for the next start in this folder to settle (recover_trash)."""
        try:
            if os.path.lexists(self.run):
                shutil.rmtree(self.run)
            os.replace(self.aside, self.run)
        except OSError as exc:
            os.close(self.fd)
            raise os_failure(exc, f"put the replaced run back from {self.aside} to", self.run) from None
        self._settled()

    def _settled(self) -> None:
        self.intent.unlink(missing_ok=True)
        os.close(self.fd)


def move_aside(path: Path) -> Replacement:
    """Move the run at `path` into <parent>/.trash/, writing and locking the intent file first."""
    import fcntl
    trash = path.parent / TRASH
    aside = trash / f"{path.name}-{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    intent = trash / (aside.name + INTENT)
    try:
        trash.mkdir(exist_ok=True)
    except OSError as exc:
        raise os_failure(exc, "make the trash folder", trash) from None
    if trash.is_symlink() or not trash.is_dir():
        raise ConfigError(f"{trash} is not a folder of its own (a link or a file); basinlab keeps replaced runs "
                          f"there: remove it and retry")
    fd = open_regular_file(intent, os.O_RDWR | os.O_CREAT | os.O_EXCL, "intent")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"run": path.name, "aside": aside.name, "pid": os.getpid()}).encode())
        os.fsync(fd)
        os.replace(path, aside)
        fsync_dir(trash)
    except OSError as exc:
        os.close(fd)
        intent.unlink(missing_ok=True)
        raise os_failure(exc, "move the replaced run into", trash) from None
    return Replacement(path, aside, intent, fd)


def recover_trash(folder: Path) -> list[str]:
    """Settle the replacements in <folder>/.trash/ whose process died: the old run returns where its
    replacement never checkpointed (or goes, where it did). Returns a line per action, for the log."""
    trash = folder / TRASH
    if trash.is_symlink() or not trash.is_dir():
        return []
    notes = []
    for intent in sorted(trash.glob("*" + INTENT)):
        note = _recover(trash, intent)
        if note:
            notes.append(note)
    return notes


def _recover(trash: Path, intent: Path) -> str | None:
    import fcntl
    try:
        fd = open_regular_file(intent, os.O_RDWR, "intent")
    except BasinlabError:
        return f"note: {intent} is not an intent file basinlab wrote; left as it is"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return None  # its replacement is still running
        run, aside = _read_intent(fd, trash)
        if run is None:
            return f"note: {intent} is unreadable; left as it is"
        return _settle(run, aside, intent)
    finally:
        os.close(fd)


def _read_intent(fd: int, trash: Path) -> tuple[Path | None, Path | None]:
    try:
        info = json.loads(os.read(fd, 4096).decode())
        names = info["run"], info["aside"]
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None, None
    if not all(isinstance(n, str) and n and "/" not in n and "\0" not in n and n not in (".", "..") for n in names):
        return None, None  # only names beside the trash: an intent never points anywhere else
    return trash.parent / names[0], trash / names[1]


def _settle(run: Path, aside: Path, intent: Path) -> str | None:
    if not aside.is_dir():
        intent.unlink(missing_ok=True)
        return None
    if run.is_dir() and not run.is_symlink() and has_checkpoint(run):
        shutil.rmtree(aside, ignore_errors=True)
        intent.unlink(missing_ok=True)
        return f"deleted {aside}: the run it held was replaced by {run}, which has written its checkpoint"
    if os.path.lexists(run):
        if not _is_stub(run) or lock_holder(run) is not None:
            return (f"note: {aside} holds the run that used to be {run}; its replacement wrote no checkpoint, but "
                    f"{run} now holds something else: move it back by hand if you want it")
        shutil.rmtree(run)
    os.replace(aside, run)
    intent.unlink(missing_ok=True)
    return (f"restored {run}: the run that replaced it stopped before its first checkpoint (the process ended), so "
            f"the run it replaced is back")


def _is_stub(path: Path) -> bool:
    """A folder a start left before its first checkpoint: nothing in it but the files a start writes."""
    if path.is_symlink() or not path.is_dir():
        return False
    return not has_checkpoint(path) and all(
        p.name in STUB_ENTRIES or (p.name.startswith(".") and p.name.endswith(".tmp")) for p in path.iterdir())


def differing_options(path: Path, cfg) -> str:
    """The options in which the run stored at `path` differs from `cfg` ("--lr 0.1 there, 0.2 here"), run
    controls (config.RESUMABLE) aside; "" when it is the same run."""
    import yaml

    from basinlab.config import RESUMABLE, config_to_yaml, normalise_key, read_yaml_mapping
    from basinlab.utils.schema import shown
    try:
        stored = {normalise_key(str(k)): v for k, v in read_yaml_mapping(path / RUN_MARKER, "run config").items()}
    except BasinlabError:
        return f"its {RUN_MARKER} is unreadable"
    here = {normalise_key(k): v for k, v in yaml.safe_load(config_to_yaml(cfg)).items()}
    keys = sorted(k for k in set(stored) | set(here) if k not in RESUMABLE and stored.get(k) != here.get(k))
    shown_keys = [f"--{k.replace('_', '-')} {shown(stored.get(k), 40)} there, {shown(here.get(k), 40)} here"
                  for k in keys[:3]]
    return "; ".join(shown_keys) + (f"; and {len(keys) - 3} more" if len(keys) > 3 else "")
