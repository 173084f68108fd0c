"""Turning a config into the pieces of a run: device, model options, regime, criterion."""
from __future__ import annotations

import torch
import torch.nn as nn

from basinlab.config import TrainConfig
from basinlab.errors import ConfigError
from basinlab.nn.losses import loss_module
from basinlab.nn.norms import BATCH_ONE_MODES
from basinlab.optim import Regime, one_phase_regime, regime_from_model_config
from basinlab.utils.model_state import model_state_kept, random_state_kept

REGIME_KEYS = ("regime", "data_regime")


def pick_device(name: str) -> torch.device:
    """auto: CUDA, else Apple MPS, else CPU. An explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps; got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}: MPS is not available on this machine")
    return device


def prefers_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether channels_last is the faster memory format for this model on this device.

    Measured (benchmarks/throughput.py and a per-model check): conv models gain 1.05-1.8x on CPU
    (MKL-DNN) and on CUDA (tensor cores), except OnlineNorm models on CPU (0.75x: its per-sample
    statistics read the tensor channel-major).
    """
    if device.type not in ("cpu", "cuda") or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    from basinlab.nn.online_norm import OnlineNorm2d
    return device.type == "cuda" or not any(isinstance(m, OnlineNorm2d) for m in model.modules())


def norm_config(cfg: TrainConfig) -> dict | None:
    """The `norm` model option from --norm-mode/--afwd/--abkw/--ecm/--gn-num-groups, if any is given."""
    given = {"mode": cfg.norm_mode, "afwd": cfg.afwd, "abkw": cfg.abkw, "ecm": cfg.ecm,
             "gn_groups": cfg.gn_num_groups}
    given = {k: v for k, v in given.items() if v is not None}
    return given or None


# Norm options and the one mode that reads each (the seeds' presets carry them for every mode, so only an
# option the person asked for is checked).
_NORM_DETAILS = {"afwd": ("online",), "abkw": ("online",), "ecm": ("online",),
                 "gn_num_groups": ("group", "gn_ws", "evonorm_s0")}


def check_norm_options(cfg: TrainConfig, asked) -> None:
    """Refuse a norm option the person asked for (`asked`: the option names given) that the run's norm mode
    never reads, e.g. --afwd without online normalization."""
    given = cfg.model_config.get("norm") if isinstance(cfg.model_config, dict) else None
    mode = cfg.norm_mode or (given if isinstance(given, str) else (given or {}).get("mode", "batch"))
    for name in sorted(set(asked) & set(_NORM_DETAILS)):
        readers = _NORM_DETAILS[name]
        if mode not in readers:
            flag, modes = "--" + name.replace("_", "-"), " or ".join(readers)
            raise ConfigError(f"{flag} is read by --norm-mode {modes} only, and this run's norm mode is {mode}; add "
                              f"--norm-mode {readers[0]} or drop {flag}")


def split_model_config(cfg: TrainConfig) -> tuple[dict, dict]:
    """Separate the model's own options from regime options ('regime', 'regime_*', 'data_regime')."""
    model_config, regime_config = {}, {}
    for key, value in cfg.model_config.items():
        target = regime_config if key in REGIME_KEYS or key.startswith("regime_") else model_config
        target[key] = value
    if cfg.depth is not None:
        model_config["depth"] = cfg.depth
    norm = norm_config(cfg)
    if norm is not None:
        base = model_config.get("norm") or {}
        base = {"mode": base} if isinstance(base, str) else (base.to_dict() if hasattr(base, "to_dict") else dict(base))
        model_config["norm"] = {**base, **norm}
    return model_config, regime_config


def attach_data_regime(model: nn.Module, regime_config: dict) -> None:
    """A `data_regime` in the model config replaces the model's own (as a model file's would be read)."""
    if "data_regime" in regime_config:
        model.data_regime = regime_config.pop("data_regime")


def build_regime(cfg: TrainConfig, model: nn.Module, regime_config: dict) -> tuple[Regime, list[str]]:
    """The optimisation regime of a run and log lines saying where it came from and what overrode it.

    Order: the model config's regime keys, else the model's own `regime`, else the command-line flags.
    Explicit --lr/--momentum/--wd override a model regime (and the log says so). --optimizer or
    --lr-milestones replace a model regime by the one-phase regime the flags describe.
    """
    source = "the model config" if regime_config else f"model {cfg.model}"
    regime = regime_from_model_config(dict(regime_config), default=getattr(model, "regime", None))
    if regime is not None and (cfg.optimizer is not None or cfg.lr_milestones is not None):
        given = ", ".join(f"{flag} {value if not isinstance(value, list) else ' '.join(map(str, value))}"
                          for flag, value in (("--optimizer", cfg.optimizer), ("--lr-milestones", cfg.lr_milestones))
                          if value is not None)
        origin = f"the options (preset {cfg.preset})" if cfg.preset else "the options"
        notes = [f"{given} in {origin}: the regime of {source} is replaced by the one-phase regime they describe"]
        regime, source = None, origin
    else:
        notes = []
    if regime is None:
        optimizer = cfg.optimizer or "SGD"
        momentum = cfg.momentum if cfg.momentum is not None else (0.9 if optimizer.upper() in ("SGD", "NAG") else None)
        regime = one_phase_regime(optimizer=optimizer, lr=cfg.lr if cfg.lr is not None else 0.1,
                                  momentum=momentum, weight_decay=cfg.weight_decay or 0.0,
                                  milestones=cfg.lr_milestones, multiplier=cfg.lr_multiplier)
        return regime, notes + ["regime from the command line flags"]
    regime, changes = regime.overridden(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return regime, notes + [f"regime from {source}"] + [f"override: {line}" for line in changes]


def make_criterion(model: nn.Module, cfg=None, *, evaluation: bool = False) -> nn.Module:
    """The run's loss: the model's own `criterion` where it brings one, else `--loss` (cross-entropy with the run's
    label smoothing in training; none in evaluation). A model with its own criterion refuses another --loss."""
    loss = getattr(cfg, "loss", "cross-entropy") or "cross-entropy"
    criterion = getattr(model, "criterion", None)
    if criterion is not None:
        if loss != "cross-entropy":
            raise ConfigError(f"--loss {loss}: this model brings its own criterion "
                              f"({type(criterion).__name__}); drop --loss")
        return criterion
    smoothing = 0.0 if evaluation else getattr(cfg, "label_smoothing", 0.0) or 0.0
    return loss_module(loss, smoothing)


def check_model_fits_data(model: nn.Module, input_shape, num_classes: int, model_name: str, dataset: str,
                          device: torch.device, smallest_batch: int | None = None) -> None:
    """Forward blank images through the model before anything is written: two in eval mode (it must take
    the dataset's images and give one output per class) and, for training, min(`smallest_batch`, 2) in train
    mode (BatchNorm cannot normalise one value per channel: that fails with 1 sample and never with 2, so a
    whole batch would only cost a forward pass at start-up). Weights, buffers, modes and the global random
    state are left as they were."""
    shape = "x".join(map(str, input_shape))
    try:
        with model_state_kept(model), torch.no_grad(), random_state_kept(device):
            model.eval()
            out = model(torch.zeros(2, *input_shape, device=device))
            if smallest_batch is not None:
                model.train()
                _train_mode_probe(model, min(smallest_batch, 2), input_shape, model_name, device)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model {model_name} does not take the {dataset} images ({shape}): {first}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != num_classes:
        got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model {model_name} gives outputs of shape {got} for the {dataset} images ({shape}); "
                          f"the dataset has {num_classes} classes: build it for num_classes (its factory gets "
                          f"num_classes={num_classes})")


def _train_mode_probe(model, batch: int, input_shape, model_name: str, device) -> None:
    try:
        model(torch.zeros(batch, *input_shape, device=device))
    except ValueError as exc:
        if "more than 1 value per channel" not in str(exc):
            raise
        working = ", ".join(m for m in BATCH_ONE_MODES if m != "none")
        raise ConfigError(f"model {model_name} has norm layers that use batch statistics (batch, evonorm_b0, "
                          f"batchrenorm) and cannot normalise a batch of {batch} sample(s) in training; use a batch "
                          f"(and --ghost-batch chunks) of at least 2, or --norm-mode {working}") from None


def build_data_and_model(cfg: TrainConfig, device: torch.device, dist, log):
    """(train loader, val loader, model on `device`, data regime, note on the input transform) of `cfg`: the one
    way a run's data and model are made, in the trainer and in a real parameter server's worker processes."""
    import basinlab.data as data_lib
    from basinlab.engine.data_settings import attach_input_transform, check_data_regime
    from basinlab.models import create_model
    from basinlab.optim import DataRegime
    model_config, regime_config = split_model_config(cfg)
    train_loader, val_loader = data_lib.build_loaders(
        cfg.dataset, cfg.datasets_dir or data_lib.default_datasets_dir(),
        batch_size=cfg.batch_size or 128, eval_batch_size=cfg.eval_batch_size or max(cfg.batch_size or 128, 256),
        device=device, seed=cfg.seed, train_limit=cfg.train_limit, val_limit=cfg.val_limit, workers=cfg.data_workers,
        augment=cfg.augment, download=cfg.download, rank=dist.rank, world_size=dist.world_size,
        limit_mode=cfg.limit_mode)
    model = dist.convert_norms(create_model(cfg.model, train_loader.num_classes, cfg.dataset, **model_config), log)
    model.to(device)
    init_note = init_from_data(model, train_loader)
    transform_note = attach_input_transform(model, cfg.model, (train_loader, val_loader))
    attach_data_regime(model, regime_config)
    data_regime = DataRegime(getattr(model, "data_regime", None) or [])
    check_data_regime(data_regime, train_loader, val_loader, flag_batch=cfg.batch_size is not None)
    notes = "; ".join(note for note in (init_note, transform_note) if note) or None
    return train_loader, val_loader, model, data_regime, notes


def init_from_data(model: nn.Module, train_loader) -> str | None:
    """A model that initialises layers from data (`init_from_data(images)`, e.g. airbench94's whitening layer)
    gets its first `data_init_examples` training images, normalised and not augmented, in stored order: the same
    images on every rank and in every run of a seed. A resumed run's checkpoint then replaces the result."""
    init = getattr(model, "init_from_data", None)
    if init is None:
        return None
    count = min(int(getattr(model, "data_init_examples", train_loader.num_examples)), train_loader.num_examples)
    return init(train_loader.examples(count))
