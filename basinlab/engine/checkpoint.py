"""Checkpoints that survive crashes and that are safe to open.

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed over the old
file, so a crash at any instant leaves the previous checkpoint readable. Reads use
`torch.load(weights_only=True)`: a checkpoint that needs arbitrary unpickling is refused and no code
in it runs. Each checkpoint carries a SHA-256 of everything it stores (`checksum["state"]`), checked on
load; checkpoints written before it carry one of their model tensors only (`checksum["model"]`), still
checked.
"""
from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from basinlab.config import RESUMABLE, stored_values
from basinlab.errors import CheckpointError, ConfigError
from basinlab.utils.io import atomic_write
from basinlab.utils.schema import shown

CHECKPOINT_NAMES = ("last.pt", "best.pt")


MAX_CONFIG_DEPTH = 16  # a stored config is flat but for model_config (a regime: a list of dicts); refuse more


def tensors_checksum(tensors: dict) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors (sorted by name).

    The checksum of checkpoints written before `state_digest` (model tensors only): kept to check them."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor):
    """The tensor's elements in order as a byte buffer; no copy for a contiguous CPU tensor."""
    tensor = tensor.detach()
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    flat = tensor.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)  # 1-D, whatever the dtype
    return flat.view(torch.uint8).numpy() if flat.numel() else b""


class _Key:
    """A mapping key on the walk of `state_digest` (fed before its value)."""

    def __init__(self, key):
        self.text = _atom(key)


def _atom(value) -> bytes:
    """A plain value as bytes that tell its type and value apart from any other's (length-prefixed)."""
    if isinstance(value, int) and not isinstance(value, bool):
        text = f"int:{value:x}"  # hex: no limit on digits (decimal repr refuses > 4300)
    elif isinstance(value, (set, frozenset)):  # set order changes between processes: sorted
        text = "set:" + ",".join(sorted(_atom(item).decode() for item in value))
    else:
        text = f"{type(value).__name__}:{value!r}"
    data = text.encode("utf-8", "backslashreplace")
    return b"%d:" % len(data) + data


def state_digest(state: Mapping) -> str:
    """SHA-256 over everything `state` holds, in a fixed order: every tensor (dtype, shape, bytes) and every
    plain value, mappings by sorted key, at any depth. Iterative: a deep hostile structure cannot overflow."""
    digest = hashlib.sha256()
    pending = [state]
    while pending:
        item = pending.pop()
        if isinstance(item, _Key):
            digest.update(b"K" + item.text)
        elif isinstance(item, torch.Tensor):
            digest.update(f"T{item.dtype}|{tuple(item.shape)}|".encode())
            digest.update(_tensor_bytes(item))
        elif isinstance(item, Mapping):
            entries = sorted(((_Key(k), v) for k, v in item.items()), key=lambda entry: entry[0].text)
            digest.update(b"M%d|" % len(entries))
            for key, value in reversed(entries):  # popped in sorted order, each key before its value
                pending += [value, key]
        elif isinstance(item, (list, tuple)):
            digest.update(b"L%d|" % len(item))
            pending.extend(reversed(item))
        else:
            digest.update(b"V" + _atom(item))
    return digest.hexdigest()


def sealed(state: dict) -> dict:
    """`state` with its checksum: the SHA-256 of everything else it holds (verified by load_checkpoint)."""
    body = {k: v for k, v in state.items() if k != "checksum"}
    return {**body, "checksum": {"state": state_digest(body)}}


def write_checkpoint(state: dict, path: str | Path) -> None:
    """Write a `sealed` state atomically (a trainer seals once and writes last.pt, best.pt, epoch_k.pt)."""
    atomic_write(path, lambda fh: torch.save(state, fh))


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` atomically with a checksum of everything it holds (verified by load_checkpoint)."""
    write_checkpoint(sealed(state), path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True; refuse anything that would need arbitrary unpickling."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix.lower() == ".safetensors":
        raise CheckpointError(f"{path} is a safetensors export (the weights and config, no optimizer state or "
                              f"position): it cannot be resumed or exported again; give the run folder or its "
                              f"last.pt/best.pt")
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
    check_layout(state, path)
    _check_checksum(state, path)
    return state


def _check_checksum(state: dict, path: Path) -> None:
    """Everything stored against checksum["state"]; older checkpoints: the model tensors against ["model"]."""
    stored = state.get("checksum")
    if not isinstance(stored, dict):
        return  # written by hand or by a basinlab before checksums: nothing to compare with
    if "state" in stored:
        whole = {k: v for k, v in state.items() if k != "checksum"}
        if not _same_digest(stored["state"], state_digest(whole)):
            _corrupt(path, "the tensors and values it stores (weights, optimizer state, config, position)")
    elif "model" in stored and not _same_digest(stored["model"], tensors_checksum(state["model"])):
        _corrupt(path, "its model weights")


def _same_digest(stored, computed: str) -> bool:
    return isinstance(stored, str) and stored == computed


def _corrupt(path: Path, what: str):
    others = " or ".join(name for name in CHECKPOINT_NAMES if name != path.name)
    raise CheckpointError(f"{path} is corrupt: {what} do not match the checksum written with them (a changed or "
                          f"damaged file); use another checkpoint of the run ({others}, or an epoch_K.pt written "
                          f"with --save-all; to resume from one: --resume RUN/best.pt --save NEW)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def check_layout(state, path: Path, kind: str = "checkpoint") -> None:
    """A basinlab checkpoint (or export, `kind`): a dict with the model's tensors, its config (a mapping at most
    MAX_CONFIG_DEPTH deep) and its class count (1 to 1,000,000: a head is allocated for each class)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a basinlab {kind} (it holds a {type(state).__name__}, "
                              f"not a dict with model, config and num_classes)")
    missing = [k for k in ("model", "config", "num_classes") if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a basinlab {kind} (no {', '.join(missing)} entry)")
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise CheckpointError(f"{path}: its 'model' entry is not a state dict of tensors")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: its 'config' entry is a {type(state['config']).__name__}, not a mapping "
                              f"of options")
    if nesting_depth(state["config"]) > MAX_CONFIG_DEPTH:
        raise CheckpointError(f"{path}: its config nests deeper than {MAX_CONFIG_DEPTH} levels; a basinlab config "
                              f"is a mapping of option values")
    classes = state["num_classes"]
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= 1_000_000:
        raise CheckpointError(f"{path}: num_classes must be a positive integer (at most 1000000), got {shown(classes)}")


def nesting_depth(value) -> int:
    """How deep mappings and lists nest in `value` (a scalar: 0), without recursion."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_CONFIG_DEPTH + 1:
            break  # deep enough to refuse; a hostile structure may be far deeper
        if isinstance(item, Mapping):
            pending.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend((v, depth + 1) for v in item)
    return deepest


def load_weights(model, state: dict, path: Path, building: str) -> None:
    """`state`'s tensors into `model`, or one line saying what the checkpoint holds and what was built.

    `building` describes the model this process built, e.g. "mnist for 10 classes".
    """
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        config = state["config"]
        detail = str(exc).strip().splitlines()[1:2] or [""]
        raise CheckpointError(f"{path} holds a {config.get('model')} for {state['num_classes']} classes "
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
