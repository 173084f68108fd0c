"""A model's requests of the data, applied to the loaders: its data regime by epoch and its input_transform.

Every data-regime key is either applied or refused at setup with one line (data/transforms.py says what
each means); the log gives the data regime and, at each phase, the batch the steps really see.
"""
from __future__ import annotations

from basinlab.data.catalog import PAD_CROP_FLIP
from basinlab.data.memory import MemoryLoader
from basinlab.data.stream import StreamLoader
from basinlab.data.transforms import Cutout, InputTransform, as_height_width
from basinlab.errors import ConfigError
from basinlab.optim.data_regime import DataRegime


def attach_input_transform(model, model_name: str, loaders) -> str | None:
    """Give the loaders the model's input_transform; returns a log line when it has one."""
    transform = InputTransform.from_model(getattr(model, "input_transform", None), model_name)
    for loader in loaders:
        loader.input_transform = transform
        if isinstance(loader, StreamLoader):
            loader.set_sample_transform()
    if transform is None:
        return None
    splits = " and ".join(s for s in ("train", "eval") if getattr(transform, s) is not None) or "no split"
    form = "on batches, after basinlab's augmentation" if transform.on_batch else \
        "per image (the seed's form), replacing basinlab's augmentation"
    return f"input_transform from model {model_name}: {splits}, {form}"


def check_data_regime(regime: DataRegime, train_loader, val_loader, flag_batch: bool) -> None:
    """Refuse, before anything runs, a data regime some phase of which could not be applied."""
    for epoch in regime.epochs:
        settings = regime.settings_at(epoch)
        where = f"data regime (epoch {epoch})"
        if settings.get("autoaugment"):
            raise ConfigError(f"{where}: autoaugment is not implemented in basinlab; drop it, or give the model an "
                              f"input_transform with torchvision.transforms.AutoAugment")
        if "cutout" in settings:
            Cutout.from_setting(settings["cutout"], where)
        if "scale_size" in settings:
            _check_scale_size(settings, val_loader, where)
        if "batch_size" in settings and not flag_batch:
            _check_batch(train_loader, settings["batch_size"], where)
        if "translate" in settings or "flip" in settings:
            _check_augmentation(settings, train_loader, where)


def _check_augmentation(settings: dict, loader, where: str) -> None:
    if not isinstance(loader, MemoryLoader):
        raise ConfigError(f"{where}: translate and flip change the in-memory crop-and-flip augmentation; "
                          f"'{loader.dataset_name}' is read from image files: drop them from the data regime")
    if loader.sample_transform() is not None:
        raise ConfigError(f"{where}: translate and flip change basinlab's crop-and-flip augmentation, which the "
                          f"model's per-image input_transform replaces; drop one of them")
    side = min(loader.native_shape[1:])
    if settings.get("translate", 0) >= side:
        raise ConfigError(f"{where}: translate {settings['translate']} must be smaller than the images' side "
                          f"({side} pixels) for reflect padding")


def _check_scale_size(settings: dict, val_loader, where: str) -> None:
    if not isinstance(val_loader, StreamLoader):
        raise ConfigError(f"{where}: scale_size resizes image-folder images before the centre crop; "
                          f"'{val_loader.dataset_name}' is held in memory at its own size: use input_size")
    size = as_height_width(settings.get("input_size"), f"{where}: input_size") or val_loader.native_shape[1:]
    if settings["scale_size"] < max(size):
        raise ConfigError(f"{where}: scale_size {settings['scale_size']} is smaller than the crop "
                          f"{size[0]}x{size[1]}; it must be at least {max(size)}")


def _check_batch(loader, batch_size, where: str) -> None:
    before = loader.batch_size
    try:
        loader.batch_size = batch_size   # the loader's own checks: divisible by the world size, not too big
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    finally:
        loader._batch_size = before


def apply_data_settings(settings: dict, train_loader, val_loader, *, flag_batch: bool,
                        flag_eval_batch: bool) -> None:
    """The accumulated settings of the current phase (options given as flags win over the regime)."""
    if "batch_size" in settings and not flag_batch:
        train_loader.batch_size = settings["batch_size"]
    if "eval_batch_size" in settings and not flag_eval_batch:
        val_loader.batch_size = settings["eval_batch_size"]
    for loader in (train_loader, val_loader):
        loader.set_input_size(settings.get("input_size"))
    if isinstance(val_loader, StreamLoader):
        val_loader.set_scale_size(settings.get("scale_size"))
    cutout = settings.get("cutout")
    train_loader.cutout = Cutout.from_setting(cutout, "data regime") if cutout is not None else None
    train_loader.duplicates = settings.get("duplicates", 1)
    if isinstance(train_loader, MemoryLoader):
        train_loader.set_augmentation(settings.get("translate"), settings.get("flip", "random"))


def describe_phase(train_loader, val_loader) -> str:
    """What a training step of the current phase really gets (the log line's text)."""
    _, height, width = train_loader.input_shape
    parts = [f"batch {train_loader.batch_size}"]
    if train_loader.duplicates > 1:
        parts[0] += f" x {train_loader.duplicates} duplicates = {train_loader.images_per_batch} images per step"
    parts.append(f"input {height}x{width}")
    if getattr(train_loader, "augmentation", None) == PAD_CROP_FLIP:
        shift = "crop 4px (zero padding)" if train_loader.translate is None else \
            f"translate {train_loader.translate}px (reflect padding)"
        parts.append(f"{shift}, flip {train_loader.flip}")
    elif isinstance(train_loader, MemoryLoader) and (train_loader.translate, train_loader.flip) != (None, "random"):
        parts.append("no augmentation (this dataset has none, or --no-augment: translate and flip do not apply)")
    if train_loader.cutout is not None:
        parts.append(f"cutout {train_loader.cutout.holes} x {train_loader.cutout.length}px")
    parts.append(f"eval batch {val_loader.batch_size}")
    return ", ".join(parts)
