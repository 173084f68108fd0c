"""Checkpoints that survive crashes and that are safe to open.

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed over the old
file, so a crash at any instant leaves the previous checkpoint readable. Reads use
`torch.load(weights_only=True)`: a checkpoint that needs arbitrary unpickling is refused and no code
in it runs.
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch

from basinlab.config import RESUMABLE, stored_values
from basinlab.errors import CheckpointError, ConfigError
from basinlab.utils.io import atomic_write
from basinlab.utils.schema import shown

CHECKPOINT_NAMES = ("last.pt", "best.pt")


def tensors_checksum(tensors: dict) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.cpu().contiguous().reshape(-1)  # 1-D views as bytes whatever the dtype
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` atomically with a checksum of its model tensors (verified by load_checkpoint)."""
    state = {**state, "checksum": {"model": tensors_checksum(state["model"])}}
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True; refuse anything that would need arbitrary unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise CheckpointError(f"refusing to load {path}: it needs arbitrary unpickling, which could run code "
                              f"({first[:160]}); only tensors and plain data are accepted") from None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file fails in many ways inside torch.load
        raise CheckpointError(f"cannot read checkpoint {path} ({_first_line(exc)}); it is truncated, corrupt or "
                              f"not a torch checkpoint") from None
    _check_layout(state, path)
    stored = state.get("checksum")
    if isinstance(stored, dict) and "model" in stored and stored["model"] != tensors_checksum(state["model"]):
        raise CheckpointError(f"{path} is corrupt: its model weights do not match the checksum written with them "
                              f"(a changed or damaged file)")
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _check_layout(state, path: Path) -> None:
    """A basinlab checkpoint: a dict with the model's tensors, its config and its class count."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a basinlab checkpoint (it holds a {type(state).__name__}, "
                              f"not a dict with model, config and num_classes)")
    missing = [k for k in ("model", "config", "num_classes") if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a basinlab checkpoint (no {', '.join(missing)} entry)")
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise CheckpointError(f"{path}: its 'model' entry is not a state dict of tensors")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: its 'config' entry is a {type(state['config']).__name__}, not a mapping "
                              f"of options")
    classes = state["num_classes"]
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= 1_000_000:
        raise CheckpointError(f"{path}: num_classes must be a positive integer, got {shown(classes)}")


def load_weights(model, state: dict, path: Path, building: str) -> None:
    """`state`'s tensors into `model`, or one line saying what the checkpoint holds and what was built.

    `building` describes the model this process built, e.g. "mnist for 10 classes".
    """
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        config = state["config"]
        detail = str(exc).strip().splitlines()[1:2] or [""]
        raise CheckpointError(f"{Path(path).name} holds a {config.get('model')} for {state['num_classes']} classes "
                              f"that does not fit the {building} built here ({detail[0].strip()[:160]})") from None


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


def resume_values(given: dict) -> dict:
    """The option values of a resumed run: the checkpoint's config with the given run controls on top.

    Options that change what is computed must not differ from the stored ones (ConfigError).
    """
    stored = load_checkpoint(resolve_checkpoint(given["resume"]))["config"]
    changed = sorted(k for k, v in given.items() if k not in RESUMABLE and stored.get(k) != v)
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ConfigError(f"{flags} cannot change when resuming (the run would not be the same run); "
                          f"allowed on resume: --epochs, --device, --quiet and other run controls")
    values = stored_values(stored)
    # the stored preset stays as a label: its options are already in the stored values (never applied twice)
    values.update(given, overwrite=False)
    return values
