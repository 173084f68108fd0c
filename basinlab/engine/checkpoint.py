"""Checkpoints that survive crashes and that are safe to open.

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed over the old
file, so a crash at any instant leaves the previous checkpoint readable. Reads use
`torch.load(weights_only=True)`: a checkpoint that needs arbitrary unpickling is refused and no code
in it runs.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError

CHECKPOINT_NAMES = ("last.pt", "best.pt")


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> None:
    """Call write(file_object) on a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; records are for collaborators too
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


def save_checkpoint(state: dict, path: str | Path) -> None:
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True; refuse anything that would need arbitrary unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise CheckpointError(f"refusing to load {path}: it needs arbitrary unpickling, which could run code "
                              f"({first[:160]}); only tensors and plain data are accepted") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a basinlab checkpoint (expected a dict with a 'model' entry)")
    return state


def resolve_checkpoint(path: str | Path, name: str = "last.pt") -> Path:
    """A run folder resolves to its last checkpoint (the reference wrongly loaded model_best)."""
    path = Path(path)
    if path.is_dir():
        candidate = path / name
        if not candidate.is_file():
            raise CheckpointError(f"no {name} in run folder {path} (expected a folder written by `basinlab train`)")
        return candidate
    if not path.is_file():
        raise CheckpointError(f"no run folder or checkpoint at {path}")
    return path


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
