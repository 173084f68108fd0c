"""Working with finished runs: rebuild a model from a checkpoint, evaluate it, export its weights."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .. import data as data_lib
from ..config import FIELDS, make_config
from ..errors import ConfigError
from ..models import create_model
from .checkpoint import load_checkpoint, resolve_checkpoint
from .evaluate import evaluate
from .setup import pick_device, split_model_config


def config_from_state(state: dict):
    values = {k: v for k, v in state["config"].items() if k in FIELDS}
    values.update(preset=None, resume=None)
    return make_config(values)


def model_from_checkpoint(path, device="cpu", which: str = "best.pt"):
    """(model in eval mode, its TrainConfig, the checkpoint dict) from a checkpoint file or run folder."""
    state = load_checkpoint(resolve_checkpoint(path, which), map_location="cpu")
    cfg = config_from_state(state)
    model_config, _ = split_model_config(cfg)
    model = create_model(cfg.model, state["num_classes"], cfg.dataset, **model_config)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg, state


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
        val_limit=limit if split == "val" else None, workers=cfg.data_workers)
    if split == "val":
        return val
    return train.use_evaluation_plan(batch_size) if evaluation else train


def evaluate_checkpoint(path, *, dataset=None, split="val", datasets_dir=None, batch_size=256, limit=None,
                        device="auto", noise=None, noise_type="uniform", noise_adapt="none", noise_samples=1,
                        noise_include_bn=False, seed=0) -> dict:
    """Loss and top-1/top-5 of a checkpoint on a split (train data without augmentation).

    With `noise` (strength A): under fresh weight noise per batch, mean and std over `noise_samples`
    draws (see basinlab.engine.noise.evaluate_under_noise); without it, plain evaluation.
    """
    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size}")
    noise_model = None
    if noise is not None:
        from .noise import EVALUATION_FLAGS, NoiseModel
        noise_model = NoiseModel(noise, noise_type, noise_adapt, flags=EVALUATION_FLAGS)
    dev = pick_device(device)
    model, cfg, _ = model_from_checkpoint(path, dev)
    loader = loader_for(cfg, dataset=dataset, split=split, datasets_dir=datasets_dir, batch_size=batch_size,
                        limit=limit, device=dev)
    criterion = getattr(model, "criterion", None) or nn.CrossEntropyLoss()
    if noise_model is None:
        return evaluate(model, loader, criterion)
    from .noise import evaluate_under_noise
    return evaluate_under_noise(model, loader, criterion, noise_model, samples=noise_samples, seed=seed,
                                include_norm=noise_include_bn)


def export_safetensors(run, output=None, which: str = "best") -> Path:
    """Write the model weights (tensors only) of a run's checkpoint as a .safetensors file."""
    from safetensors.torch import save_file
    checkpoint = resolve_checkpoint(run, f"{which}.pt")
    state = load_checkpoint(checkpoint)
    tensors = {k: v.contiguous() for k, v in state["model"].items() if isinstance(v, torch.Tensor)}
    output = Path(output) if output else checkpoint.parent / "model.safetensors"
    save_file(tensors, str(output), metadata={"model": str(state["config"].get("model")),
                                               "dataset": str(state["config"].get("dataset")),
                                               "num_classes": str(state["num_classes"])})
    return output
