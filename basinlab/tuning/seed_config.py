"""The autoHyper seed's YAML config, read and translated into basinlab training options.

Seed keys (the seed's README and reference code): dataset, network, optimizer, scheduler, init_lr,
early_stop_threshold, early_stop_patience, optimizer_kwargs, scheduler_kwargs, n_trials,
num_workers, max_epochs, loss, mini_batch_size, p. basinlab extensions: trial_epochs (epochs of
one search trial, 5 as the seed), train_limit, val_limit, seed, search_kwargs (options of
:func:`~basinlab.tuning.autohyper_search` or :func:`~basinlab.tuning.autohyper_search_lr_wd`),
model_config (extra model options, e.g. ``{norm: group}``).

Every value is checked here, so a bad config fails before the first trial, with one line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from basinlab.config import read_yaml_mapping
from basinlab.errors import ConfigError
from basinlab.utils.checks import check_int
from basinlab.utils.schema import finite_float, shown

DEFAULTS = {  # the seed's example config ("Suggested Default"), except init_lr and early stopping
    "dataset": "CIFAR10", "network": "ResNet18CIFAR", "optimizer": "AdaM", "scheduler": None,
    "init_lr": "auto", "early_stop_threshold": -1.0, "early_stop_patience": 10,
    "optimizer_kwargs": {}, "scheduler_kwargs": {}, "n_trials": 5, "num_workers": 4, "max_epochs": 100,
    "loss": "cross_entropy", "mini_batch_size": 128, "p": 1,
    "trial_epochs": 5, "train_limit": None, "val_limit": None, "seed": 0, "search_kwargs": {},
    "model_config": {},
}
SEED_KEYS = ("dataset", "network", "optimizer", "scheduler", "init_lr", "early_stop_threshold",
             "early_stop_patience", "optimizer_kwargs", "scheduler_kwargs", "n_trials", "num_workers",
             "max_epochs", "loss", "mini_batch_size", "p")

DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet",
            "tinyimagenet": "tiny-imagenet", "mnist": "mnist"}

# Seed network name -> (basinlab model, model options). The seed's ResNetN is torchvision's
# (ImageNet stem even on CIFAR); ResNetNCIFAR has the 3x3 stride-1 stem.
NETWORKS = {
    **{f"resnet{d}": (f"resnet{d}", {"stem": "imagenet"}) for d in (18, 34, 50, 101, 152)},
    "resnet18cifar": ("resnet18", {"stem": "cifar"}), "resnet34cifar": ("resnet34", {"stem": "cifar"}),
    **{f"vgg{d}": (f"vgg{d}", {}) for d in (11, 13, 16, 19)},
    **{f"vgg{d}_bn": (f"vgg{d}_bn", {}) for d in (11, 13, 16, 19)},
    "vgg16cifar": ("vgg16_bn", {}), "alexnet": ("alexnet", {}),
}
UNSUPPORTED_NETWORKS = ("DenseNet*", "ResNeXt*", "WideResNet50/101", "MobileNetV2", "ShuffleNetV2_*", "SqueezeNet_*",
                        "EfficientNet*", "GoogLeNet", "InceptionV3", "MNASNet_*")

OPTIMIZERS = {"sgd": "SGD", "nag": "NAG", "adam": "Adam", "adagrad": "Adagrad", "rmsprop": "RMSprop",
              "adadelta": "Adadelta", "adabound": "AdaBound", "amsbound": "AMSBound", "adamax": "Adamax",
              "nadam": "NAdam", "radam": "RAdam", "adas": "AdaS", "adamw": "AdamW"}
SCHEDULERS = ("None", "StepLR", "CosineAnnealingWarmRestarts", "OneCycleLR", "AdaS")
ADAS_KEYS = ("beta", "zeta", "p", "min_lr")


@dataclass
class Plan:
    """What every training of one autoHyper config shares; lr (and weight decay) vary."""

    model: str
    model_config: dict
    dataset: str
    optimizer: str
    optimizer_settings: dict
    schedule: dict | None
    init_lrs: list
    n_trials: int
    max_epochs: int
    trial_epochs: int
    batch_size: int
    data_workers: int
    train_limit: int | None
    val_limit: int | None
    seed: int
    early_stop_threshold: float
    early_stop_patience: int
    search_kwargs: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def regime(self, lr: float, weight_decay: float | None = None) -> list[dict]:
        entry = {"epoch": 0, "optimizer": self.optimizer, "lr": float(lr), **self.optimizer_settings}
        if weight_decay is not None:
            entry["weight_decay"] = float(weight_decay)
        if self.schedule is not None:
            entry["schedule"] = dict(self.schedule)
        return [entry]

    def train_options(self, lr: float, weight_decay: float | None, *, epochs: int, seed: int) -> dict:
        """basinlab.train options of one training (run folder, device and data dir are added by the caller)."""
        model_config = {**self.model_config, "regime": self.regime(lr, weight_decay)}
        return {"model": self.model, "model_config": model_config, "dataset": self.dataset,
                "epochs": epochs, "batch_size": self.batch_size, "data_workers": self.data_workers,
                "train_limit": self.train_limit, "val_limit": self.val_limit, "seed": seed}


# ---------------------------------------------------------------------------------------------- reading
def read_seed_config(path: str | Path) -> dict:
    """The YAML mapping (yaml.safe_load) with defaults filled in; unknown keys are refused."""
    data = read_yaml_mapping(path, what="autoHyper config file")
    unknown = [k for k in data if k not in DEFAULTS]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {path}; allowed: {', '.join(DEFAULTS)}")
    return {**DEFAULTS, **data}


def plan_from_config(values: dict) -> Plan:
    """Validate every value and translate the config into a Plan."""
    notes: list[str] = []
    model, model_config = map_network(values["network"])
    model_config = {**model_config, **_mapping(values, "model_config")}
    optimizer, settings = map_optimizer(values["optimizer"], values["scheduler"], _mapping(values, "optimizer_kwargs"),
                                        _mapping(values, "scheduler_kwargs"), values["p"])
    max_epochs = _int(values, "max_epochs", 1)
    schedule = map_scheduler(values["scheduler"], _mapping(values, "scheduler_kwargs"), max_epochs, notes)
    if values["loss"] != "cross_entropy":
        raise ConfigError(f"loss {values['loss']!r} is not supported; allowed: cross_entropy")
    threshold = values["early_stop_threshold"]
    if finite_float(threshold) is None:
        raise ConfigError(f"early_stop_threshold must be a number (< 0 disables early stopping), got "
                          f"{shown(threshold)}")
    return Plan(
        model=model, model_config=model_config, dataset=map_dataset(values["dataset"]), optimizer=optimizer,
        optimizer_settings=settings, schedule=schedule, init_lrs=parse_init_lr(values["init_lr"]),
        n_trials=_int(values, "n_trials", 1), max_epochs=max_epochs, trial_epochs=_int(values, "trial_epochs", 1),
        batch_size=_int(values, "mini_batch_size", 1), data_workers=_int(values, "num_workers", 0),
        train_limit=_optional_int(values, "train_limit"), val_limit=_optional_int(values, "val_limit"),
        seed=_int(values, "seed", 0), early_stop_threshold=float(threshold),
        early_stop_patience=_int(values, "early_stop_patience", 1), search_kwargs=_mapping(values, "search_kwargs"),
        notes=notes)


def _mapping(values: dict, key: str) -> dict:
    value = values[key]
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping such as {{momentum: 0.9}}, got {value!r}")
    return {k: _number(v) for k, v in value.items()}


def _number(value):
    """YAML 1.1 reads 5e-4 (no dot) as a string; such strings are meant as numbers."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# Counts that size loops and allocations: bounded before anything starts (the seed's own configs use far less).
_MAXIMA = {"n_trials": 10_000, "max_epochs": 100_000, "trial_epochs": 100_000, "early_stop_patience": 100_000,
           "mini_batch_size": 2**20, "num_workers": 256, "seed": 2**63 - 1, "train_limit": 2**31 - 1,
           "val_limit": 2**31 - 1}


def _int(values: dict, key: str, minimum: int) -> int:
    return check_int(values[key], key, minimum, maximum=_MAXIMA.get(key))


def _optional_int(values: dict, key: str) -> int | None:
    return None if values[key] is None else _int(values, key, 1)


# ---------------------------------------------------------------------------------------------- names
def _key(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"expected a name, got {name!r}")
    return name.strip().lower()


def map_dataset(name) -> str:
    from basinlab.data import DATASETS as BASINLAB_DATASETS
    key = _key(name)
    if key in DATASETS:
        return DATASETS[key]
    if key in BASINLAB_DATASETS:
        return key
    raise ConfigError(f"dataset {name!r} is not supported; allowed: CIFAR10, CIFAR100, ImageNet, TinyImageNet, MNIST "
                      f"or a basinlab dataset ({', '.join(BASINLAB_DATASETS)})")


def map_network(name) -> tuple[str, dict]:
    from basinlab.models import list_models
    key = _key(name)
    if key in NETWORKS:
        model, options = NETWORKS[key]
        return model, dict(options)
    if key in list_models() or ":" in str(name):
        return (key if key in list_models() else str(name)), {}
    raise ConfigError(f"network {name!r} is not available; allowed: ResNet18/34/50/101/152, ResNet18CIFAR, "
                      f"ResNet34CIFAR, "
                      f"VGG11-19(_BN), VGG16CIFAR, AlexNet or a basinlab model (`basinlab list`); "
                      f"not built: {', '.join(UNSUPPORTED_NETWORKS)}")


def map_optimizer(name, scheduler, optimizer_kwargs: dict, scheduler_kwargs: dict, p) -> tuple[str, dict]:
    """(basinlab optimizer name, param-group settings). scheduler AdaS turns SGD into AdaS."""
    from basinlab.optim import optimizer_spec
    key = _key(name)
    basinlab_name = OPTIMIZERS.get(key, name)
    if basinlab_name in ("AdaBound", "AMSBound"):
        _register_adabound()
    settings = dict(optimizer_kwargs)
    if _scheduler_key(scheduler) == "adas":
        if basinlab_name not in ("SGD", "AdaS"):
            raise ConfigError(f"scheduler AdaS needs optimizer SGD (AdaS sets SGD's per-layer lr), got {name!r}")
        basinlab_name = "AdaS"
        settings.update(scheduler_kwargs)
    if basinlab_name == "AdaS":
        settings.setdefault("p", p)
    spec = optimizer_spec(basinlab_name)  # ConfigError listing the known names
    for k in settings:
        if k not in spec.keys:
            raise ConfigError(f"optimizer_kwargs: {k!r} is not a setting of {spec.name}; "
                              f"allowed: {', '.join(sorted(spec.keys))}")
    return spec.name, settings


def _register_adabound() -> None:
    try:
        import adabound
    except ImportError:
        raise ConfigError("optimizers AdaBound and AMSBound need the `adabound` package (pip install adabound), "
                          "which is not installed") from None
    from basinlab.optim import register_optimizer
    register_optimizer("AdaBound", adabound.AdaBound)
    register_optimizer("AMSBound", adabound.AdaBound, fixed={"amsbound": True})


def _scheduler_key(scheduler) -> str:
    if scheduler is None:
        return "none"
    return _key(scheduler)


def map_scheduler(scheduler, kwargs: dict, max_epochs: int, notes: list) -> dict | None:
    """A regime schedule for the seed's scheduler (None when the lr stays constant or AdaS drives it)."""
    key = _scheduler_key(scheduler)
    if key in ("none", "", "adas"):
        if kwargs and key != "adas":
            raise ConfigError(f"scheduler_kwargs {sorted(kwargs)} given without a scheduler")
        return None
    if key == "steplr":
        _need(kwargs, ("step_size", "gamma"), (), "StepLR")
        return {"name": "step", "step_size": kwargs["step_size"], "gamma": kwargs["gamma"]}
    if key == "cosineannealingwarmrestarts":
        _need(kwargs, ("T_0",), ("T_mult", "eta_min"), "CosineAnnealingWarmRestarts")
        return {"name": "cosine_restarts", "t_0": kwargs["T_0"], "t_mult": kwargs.get("T_mult", 1),
                "end_lr": kwargs.get("eta_min", 0.0)}
    if key == "onecyclelr":
        return _one_cycle(kwargs, max_epochs, notes)
    raise ConfigError(f"scheduler {scheduler!r} is not supported; allowed: {', '.join(SCHEDULERS)}")


def _one_cycle(kwargs: dict, max_epochs: int, notes: list) -> dict:
    _need(kwargs, (), ("pct_start", "anneal_strategy", "div_factor", "final_div_factor", "three_phase",
                       "cycle_momentum"), "OneCycleLR")
    if kwargs.get("cycle_momentum", False):
        raise ConfigError("OneCycleLR: cycle_momentum is not supported (basinlab schedules drive the lr only); "
                          "set cycle_momentum: false")
    if "cycle_momentum" not in kwargs:
        notes.append("OneCycleLR: momentum is not cycled (torch's default cycles it; "
                     "say cycle_momentum: false to silence this)")
    schedule = {"name": "one_cycle", "epochs": max_epochs}
    renamed = {"anneal_strategy": "anneal"}
    for k, v in kwargs.items():
        if k != "cycle_momentum":
            schedule[renamed.get(k, k)] = v
    return schedule


def _need(kwargs: dict, required: tuple, optional: tuple, scheduler: str) -> None:
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise ConfigError(f"scheduler {scheduler} needs scheduler_kwargs {', '.join(missing)}")
    extra = [k for k in kwargs if k not in required + optional]
    if extra:
        allowed = ", ".join(required + optional) or "none"
        raise ConfigError(f"scheduler_kwargs {extra[0]!r} is not supported for {scheduler}; allowed: {allowed}")


def parse_init_lr(value) -> list:
    """init_lr as a list of floats and 'auto'."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError("init_lr must be a number, 'auto' or a non-empty list of those")
    out = []
    for item in items:
        item = _number(item)
        if item == "auto":
            out.append("auto")
        elif item == "sota_auto":
            raise ConfigError("init_lr 'sota_auto' (the reference's random search, which selected on the test set) "
                              "is not supported; use 'auto'")
        elif (finite_float(item) or 0) > 0:
            out.append(finite_float(item))
        else:
            raise ConfigError(f"init_lr entries must be numbers > 0 or 'auto', got {shown(item)}")
    return out
