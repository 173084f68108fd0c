"""Working with finished runs: rebuild a model from a checkpoint, evaluate it, export its weights."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import basinlab.data as data_lib
from basinlab.config import stored_values, validated_config
from basinlab.data.stream import StreamLoader
from basinlab.engine.checkpoint import MAX_CONFIG_DEPTH, check_layout, load_checkpoint, load_weights, resolve_checkpoint
from basinlab.engine.data_settings import attach_input_transform
from basinlab.engine.setup import (
    attach_data_regime,
    check_model_fits_data,
    make_criterion,
    pick_device,
    split_model_config,
)
from basinlab.errors import CheckpointError, ConfigError
from basinlab.models import create_model, is_user_model
from basinlab.models import trust_model_code as trust_user_model
from basinlab.optim.data_regime import DataRegime
from basinlab.utils.io import atomic_write
from basinlab.utils.schema import shown


def config_from_state(state: dict, path="the checkpoint"):
    """The run's TrainConfig stored in a checkpoint, checked like any other config."""
    values = stored_values(state["config"])
    values.update(preset=None, resume=None)
    values.pop("trust_model_code", None)  # trust is the user's word for this process, never a stored value
    try:
        return validated_config(values)
    except ConfigError as exc:
        raise CheckpointError(f"{path} holds a config basinlab does not accept: {exc}") from None


def model_from_checkpoint(path, device="cpu", which: str = "best.pt", trust_model_code: bool = False):
    """(model in eval mode, its TrainConfig, the checkpoint dict) from a checkpoint file or run folder.

    A user model (file.py:factory) stored in the checkpoint is imported only with `trust_model_code`.
    A file ending in .safetensors is read as an export of `basinlab export` (weights and config only).
    """
    checkpoint = resolve_checkpoint(path, which)
    if checkpoint.suffix.lower() == ".safetensors":
        state = read_safetensors(checkpoint)
    else:
        state = load_checkpoint(checkpoint, map_location="cpu")
    model, cfg = _rebuild(state, checkpoint, device, trust_model_code)
    return model, cfg, state


def _rebuild(state: dict, source: Path, device, trust_model_code: bool):
    """(model in eval mode with the stored weights, its TrainConfig) from a checkpoint-like dict."""
    cfg = config_from_state(state, source)
    if trust_model_code:
        trust_user_model(cfg.model)
    model_config, regime_config = split_model_config(cfg)
    try:
        model = create_model(cfg.model, state["num_classes"], cfg.dataset, **model_config)
    except ConfigError as exc:  # an unknown model, a bad model config, code the user did not trust
        raise ConfigError(f"{source}: {exc}") from None
    attach_data_regime(model, regime_config)  # the run's data regime (input sizes) as it trained with it
    load_weights(model, state, source, f"{cfg.model} for {state['num_classes']} classes")
    return model.to(device).eval(), cfg


def loader_for(cfg, *, dataset=None, split="val", datasets_dir=None, batch_size=256, limit=None, device="cpu",
               training_order: bool = False):
    """A non-augmented loader over one split of the run's (or another) dataset.

    Every example once, in stored order, unless `training_order` (train split only): then the shuffled,
    drop-last batches of the run's training epochs (without augmentation).
    """
    name = dataset or cfg.dataset
    evaluation = split == "val" or not training_order
    train, val = data_lib.build_loaders(
        name, datasets_dir or cfg.datasets_dir or data_lib.default_datasets_dir(),
        batch_size=1 if evaluation else batch_size, eval_batch_size=batch_size, device=device, seed=cfg.seed,
        augment=False, train_limit=limit if split == "train" else None,
        val_limit=limit if split == "val" else None, workers=cfg.data_workers, limit_mode=cfg.limit_mode)
    if split == "val":
        return val
    return train.use_evaluation_plan(batch_size) if evaluation else train


def prepare_evaluation(path, *, dataset=None, split="val", datasets_dir=None, batch_size=256, limit=None,
                       device="auto", trust_model_code: bool = False, full_split: bool = False):
    """(model in eval mode, loader over the split without augmentation, criterion) of a checkpoint.

    Without `limit`, the run's own --val-limit/--train-limit subset (what its records measured), unless
    `full_split` or another dataset is asked for.
    """
    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size}")
    dev = pick_device(device)
    model, cfg, state = model_from_checkpoint(path, dev, trust_model_code=trust_model_code)
    if limit is None and not full_split and dataset in (None, cfg.dataset):
        limit = cfg.val_limit if split == "val" else cfg.train_limit
    loader = loader_for(cfg, dataset=dataset, split=split, datasets_dir=datasets_dir, batch_size=batch_size,
                        limit=limit, device=dev)
    _as_trained(model, cfg.model, loader, max(state.get("epoch", 1) - 1, 0))
    check_model_fits_data(model, loader.input_shape, loader.num_classes, cfg.model, dataset or cfg.dataset,
                          dev)
    criterion = make_criterion(model, cfg, evaluation=True)
    return model, loader, criterion


def _as_trained(model, model_name: str, loader, last_epoch: int) -> None:
    """Measure on the inputs the model was trained for: its input_transform (eval form) and the input size
    and scale size of its data regime's phase at the checkpoint's last epoch."""
    attach_input_transform(model, model_name, [loader])
    settings = DataRegime(getattr(model, "data_regime", None) or []).settings_at(last_epoch)
    loader.set_input_size(settings.get("input_size"))
    if isinstance(loader, StreamLoader) and not loader.train:
        loader.set_scale_size(settings.get("scale_size"))


def export_safetensors(run, output=None, which: str = "best") -> Path:
    """Write the model weights (tensors only) of a run's checkpoint as a .safetensors file, atomically."""
    from safetensors.torch import save
    checkpoint = resolve_checkpoint(run, f"{which}.pt")
    state = load_checkpoint(checkpoint)
    output = Path(output) if output else checkpoint.parent / "model.safetensors"
    if output.exists() and not output.is_file():
        raise ConfigError(f"cannot export to {output}: it exists and is not a regular file; give a file name")
    tensors = _unshared(state["model"])
    config = portable_config(state["config"], output.parent)
    metadata = {"model": str(config.get("model")), "dataset": str(config.get("dataset")),
                "num_classes": str(state["num_classes"]),
                # the whole config: the file alone rebuilds the model (no path of the machine it was made on)
                "basinlab_config": json.dumps(config, default=str)}
    if isinstance(state.get("epoch"), int):
        metadata["epoch"] = str(state["epoch"])  # the data regime's phase the weights were trained in
    blob = save(tensors, metadata=metadata)
    atomic_write(output, lambda fh: fh.write(blob))  # a failed write: WriteError, no file left behind
    return output


# Options that name places on the machine that trained: an export shared elsewhere carries none of them.
MACHINE_PATHS = {"results_dir": "./results", "save": None, "datasets_dir": None, "resume": None}


def portable_config(config: dict, folder: Path) -> dict:
    """The stored config without the training machine's paths; a user model file relative to `folder` (where the
    export is written), so the export and the file can move together."""
    out = {**config, **{key: value for key, value in MACHINE_PATHS.items() if key in config}}
    model = out.get("model")
    if is_user_model(model) and model.rpartition(":")[0].endswith(".py"):
        target, _, factory = model.rpartition(":")
        out["model"] = f"{os.path.relpath(target, folder)}:{factory}"
    return out


def _model_beside(config: dict, folder: Path) -> dict:
    """An export's relative model file, read relative to the export's own folder (see portable_config)."""
    model = config.get("model") if isinstance(config, dict) else None
    target, _, factory = model.rpartition(":") if is_user_model(model) else ("", "", "")
    if target.endswith(".py") and not os.path.isabs(target):
        return {**config, "model": f"{os.path.normpath(folder / target)}:{factory}"}
    return config


def _unshared(tensors: dict) -> dict:
    """Contiguous tensors, tied weights (one tensor under two names) as copies: safetensors refuses shared memory."""
    seen, out = set(), {}
    for name, tensor in tensors.items():
        pointer = tensor.data_ptr()
        out[name] = tensor.clone() if tensor.numel() and pointer in seen else tensor.contiguous()
        seen.add(pointer)
    return out


# What an export's metadata may hold: basinlab writes a config of a few kB, flat but for model_config.
MAX_CONFIG_JSON = 1 << 20  # characters
MAX_DIGITS = 40            # of an integer (a seed fits in 20)
_INTEGER = re.compile(rf"[+-]?[0-9]{{1,{MAX_DIGITS}}}")


def read_safetensors(path) -> dict:
    """A checkpoint-like dict (model tensors, config, num_classes, epoch if stored) from a `basinlab export` file.

    Its metadata passes the checks a checkpoint's does (basinlab.engine.checkpoint.check_layout, then the
    config's option rules when the model is rebuilt); a bad file is one line naming it (CheckpointError).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no safetensors file at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} as safetensors ({_one_line(exc)}); it is truncated, corrupt "
                              f"or not a safetensors file") from None
    if "basinlab_config" not in metadata:
        raise CheckpointError(f"{path} holds no basinlab_config metadata (exported by an older basinlab, or not "
                              f"by basinlab): rebuild from the run folder instead")
    state = {"config": _model_beside(_config_json(metadata["basinlab_config"], path), path.parent)}
    for key in ("num_classes", "epoch"):
        if key in metadata:  # a missing num_classes is named by check_layout
            state[key] = _integer_or_text(metadata[key])
    if "epoch" in state and not (isinstance(state["epoch"], int) and 0 <= state["epoch"] <= 10**9):
        raise CheckpointError(f"{path}: its epoch metadata must be a non-negative integer, got "
                              f"{shown(state['epoch'])}")
    try:
        state["model"] = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read the tensors of {path} ({_one_line(exc)}); it is truncated or "
                              f"corrupt") from None
    check_layout(state, path, kind="safetensors export")
    return state


def model_from_safetensors(path, device="cpu", trust_model_code: bool = False):
    """(model in eval mode, its TrainConfig) from a file written by `basinlab export`."""
    state = read_safetensors(path)
    return _rebuild(state, Path(path), device, trust_model_code)


def _integer_or_text(text: str):
    """An integer written as decimal digits; anything else stays text, for check_layout to name."""
    return int(text) if _INTEGER.fullmatch(text) else text


def _config_json(text: str, path: Path):
    """The exported config: JSON of bounded size and numbers (its nesting and content: check_layout's and the
    config rules')."""
    if len(text) > MAX_CONFIG_JSON:
        raise CheckpointError(f"{path}: its basinlab_config metadata has {len(text):,} characters; an exported "
                              f"config has at most {MAX_CONFIG_JSON:,}")
    try:
        return json.loads(text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)
    except _BadNumber as exc:
        raise CheckpointError(f"{path}: its basinlab_config metadata holds {exc}") from None
    except RecursionError:  # nesting shallower than this is refused by check_layout
        raise CheckpointError(f"{path}: its basinlab_config metadata nests deeper than {MAX_CONFIG_DEPTH} levels; "
                              f"a basinlab config is a mapping of option values") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: its basinlab_config metadata is not valid JSON ({_one_line(exc)}); the "
                              f"file is damaged or was not written by `basinlab export`") from None


class _BadNumber(ValueError):
    """A number in the exported config that no option takes."""


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise _BadNumber(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_DIGITS})")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _BadNumber(f"the number {shown(text, 40)}, beyond the float range")
    return value


def _no_constant(text: str):
    raise _BadNumber(f"{text}, which is not a finite number")


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else type(exc).__name__
