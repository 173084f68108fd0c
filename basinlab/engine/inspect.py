"""Working with finished runs: rebuild a model from a checkpoint, evaluate it, export its weights."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

import basinlab.data as data_lib
from basinlab.config import stored_values, validated_config
from basinlab.data.stream import StreamLoader
from basinlab.engine.checkpoint import load_checkpoint, load_weights, resolve_checkpoint
from basinlab.engine.data_settings import attach_input_transform
from basinlab.engine.setup import check_model_fits_data, pick_device, split_model_config
from basinlab.errors import CheckpointError, ConfigError
from basinlab.models import create_model
from basinlab.models import trust_model_code as trust_user_model
from basinlab.optim.data_regime import DataRegime


def config_from_state(state: dict, path="the checkpoint"):
    """The run's TrainConfig stored in a checkpoint, checked like any other config."""
    values = stored_values(state["config"])
    values.update(preset=None, resume=None)
    try:
        return validated_config(values)
    except ConfigError as exc:
        raise CheckpointError(f"{path} holds a config basinlab does not accept: {exc}") from None


def model_from_checkpoint(path, device="cpu", which: str = "best.pt", trust_model_code: bool = False):
    """(model in eval mode, its TrainConfig, the checkpoint dict) from a checkpoint file or run folder.

    A user model (file.py:factory) stored in the checkpoint is imported only with `trust_model_code`.
    """
    checkpoint = resolve_checkpoint(path, which)
    state = load_checkpoint(checkpoint, map_location="cpu")
    model, cfg = _rebuild(state, checkpoint, device, trust_model_code)
    return model, cfg, state


def _rebuild(state: dict, source: Path, device, trust_model_code: bool):
    """(model in eval mode with the stored weights, its TrainConfig) from a checkpoint-like dict."""
    cfg = config_from_state(state, source)
    if trust_model_code:
        trust_user_model(cfg.model)
    model_config, _ = split_model_config(cfg)
    model = create_model(cfg.model, state["num_classes"], cfg.dataset, **model_config)
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
    criterion = getattr(model, "criterion", None) or nn.CrossEntropyLoss()
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
    """Write the model weights (tensors only) of a run's checkpoint as a .safetensors file."""
    from safetensors.torch import save_file
    checkpoint = resolve_checkpoint(run, f"{which}.pt")
    state = load_checkpoint(checkpoint)
    tensors = {k: v.contiguous() for k, v in state["model"].items() if isinstance(v, torch.Tensor)}
    output = Path(output) if output else checkpoint.parent / "model.safetensors"
    save_file(tensors, str(output), metadata={"model": str(state["config"].get("model")),
                                               "dataset": str(state["config"].get("dataset")),
                                               "num_classes": str(state["num_classes"]),
                                               # the whole config: the file alone rebuilds the model
                                               "basinlab_config": json.dumps(state["config"], default=str)})
    return output


def model_from_safetensors(path, device="cpu", trust_model_code: bool = False):
    """(model in eval mode, its TrainConfig) from a file written by `basinlab export`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} as safetensors ({exc})") from None
    if "basinlab_config" not in metadata:
        raise CheckpointError(f"{path} holds no basinlab_config metadata (exported by an older basinlab, or not "
                              f"by basinlab): rebuild from the run folder instead")
    state = {"config": json.loads(metadata["basinlab_config"]), "num_classes": int(metadata["num_classes"]),
             "model": tensors}
    return _rebuild(state, path, device, trust_model_code)
