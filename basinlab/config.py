"""The one configuration schema shared by the command line, YAML files and the Python API.

Every option is a field of `TrainConfig`; its metadata gives the command-line flags and help. YAML
keys are the long flag names (`batch-size` or `batch_size`); flags given on the command line override
the file; the resolved config written to a run folder reproduces the run when fed back.
"""
from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from basinlab.errors import ConfigError
from basinlab.utils.checks import check_int, check_number


def opt(default, help, *flags, **argparse_kwargs):
    """A config field with its command-line flags (the long flag is derived from the name)."""
    return field(default=default, metadata={"help": help, "flags": flags, "argparse": argparse_kwargs})


def parse_literal_dict(text: str | dict | None, what: str = "--model-config") -> dict:
    """Parse a Python literal dict like "{'depth': 20}" safely (ast.literal_eval, never eval)."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ConfigError(f"{what} must be a Python literal dict such as \"{{'depth': 20}}\" "
                          f"(literals only: no names, calls or expressions); got {text!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a dict literal such as \"{{'depth': 20}}\"; got {type(value).__name__}")
    return value


@dataclass
class TrainConfig:
    # --- what to train -------------------------------------------------------------------
    model: str = opt("mnist", "model name from `basinlab list`, or path/to/file.py:factory, or package.module:factory",
                     "-a", "--arch")
    model_config: Any = opt(None, "model options as a Python literal dict, e.g. \"{'depth': 20, 'regime': 'fixed', "
                                  "'regime_lr': 0.1}\"")
    depth: int | None = opt(None, "model depth (shorthand for model_config depth)", "-d")
    dataset: str = opt("mnist5k", "dataset name from `basinlab list`")
    datasets_dir: str | None = opt(None, "folder holding <dataset>/ folders (default: $BASINLAB_DATASETS or "
                                         "~/.cache/basinlab/datasets)")
    download: bool = opt(False, "download the dataset with torchvision when it is installed and online")
    train_limit: int | None = opt(None, "train on the first N examples only")
    val_limit: int | None = opt(None, "validate on the first N examples only")
    augment: bool = opt(True, "standard training augmentation of the dataset (--no-augment to disable)")
    preset: str | None = opt(None, "start from a named preset (see `basinlab list`); other options override it")
    # --- optimisation ------------------------------------------------------------------------
    epochs: int | None = opt(None, "number of epochs (default: the model's, else 10)")
    batch_size: int | None = opt(None, "training batch size (global batch in distributed runs; default: the "
                                       "model's, else 128)", "-b")
    eval_batch_size: int | None = opt(None, "validation batch size (default: max(batch size, 256))")
    optimizer: str | None = opt(None, "optimizer name (any torch.optim class); with a model regime, replaces "
                                      "nothing: see README")
    lr: float | None = opt(None, "initial learning rate; rescales a model regime's lr schedule to start here",
                           "--learning-rate")
    momentum: float | None = opt(None, "momentum; replaces the value in every regime phase")
    weight_decay: float | None = opt(None, "weight decay; replaces the value in every regime phase", "--wd")
    lr_milestones: list | None = opt(None, "epochs at which lr is multiplied by --lr-multiplier", nargs="+", type=int)
    lr_multiplier: float = opt(0.1, "lr multiplier at each milestone")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy loss")
    grad_clip: float | None = opt(None, "clip the global gradient norm to this value")
    # --- normalisation -------------------------------------------------------------------------
    norm_mode: str | None = opt(None, "norm layers of conv models: batch|group|layer|instance|online|none", "--norm")
    afwd: float | None = opt(None, "online norm forward decay", "--decay-factor-forward")
    abkw: float | None = opt(None, "online norm backward decay", "--decay-factor-backward")
    ecm: str | None = opt(None, "online norm error compensation: ls|ac|none")
    gn_num_groups: int | None = opt(None, "groups of group norm")
    # --- asynchronous SGD (basinlab.methods.asgd) --------------------------------------------------------
    server: str | None = opt(None, "simulated parameter server: ssgd|asgd|msgd (default: plain training)")
    workers: int = opt(1, "simulated workers of the parameter server", "--workers-num")
    delay: int | None = opt(None, "server delay d in updates (asgd default: workers-1, pure ASGD)")
    schedule: str = opt("round_robin", "which worker computes next: round_robin|random|normal")
    adjust_lr: bool = opt(False, "scale the regime's lr for the delay: eta*sin(pi/(4d+2))")
    # --- flat minima (basinlab.methods.flat.method) --------------------------------------------------------
    smoothout: float | None = opt(None, "SmoothOut noise strength A (weight noise each step)")
    smoothout_noise: str = opt("uniform", "SmoothOut noise: uniform|normal")
    smoothout_adapt: str = opt("none", "SmoothOut noise scale: none|weight|filter (filter = AdaSmoothOut)")
    smoothout_schedule: str = opt("constant", "SmoothOut strength schedule: constant|anneal|tanh")
    smoothout_include_bn: bool = opt(False, "also perturb BatchNorm affine parameters")
    denoise: bool = opt(True, "remove the SmoothOut noise before the optimizer step (--no-denoise keeps it)")
    ghost_batch: int | None = opt(None, "accumulate gradients over chunks of this many samples, one step per batch "
                                        "(ghost batches: each chunk normalised on its own)")
    sam: float | None = opt(None, "SAM with radius rho")
    asam: float | None = opt(None, "ASAM with radius rho")
    asam_eta: float = opt(0.01, "ASAM's eta in T_w = |w| + eta")
    lr_scale_batch: str | None = opt(None, "scale the regime's lr by batch/ghost batch: sqrt|linear")
    # --- measurements during training ---------------------------------------------------------
    log_sharpness_every: int | None = opt(None, "log lambda_max (Hessian) every k epochs")
    log_trace: bool = opt(False, "with --log-sharpness-every, also log the Hessian trace")
    sharpness_batches: int = opt(4, "training batches used by --log-sharpness-every")
    log_lowrank: bool = opt(False, "log low-rank metrics of conv layers each epoch (lowrank.csv)")
    # --- distributed -----------------------------------------------------------------------------
    nproc: int | None = opt(None, "start this many processes with torchrun on this machine")
    sync_bn: bool = opt(False, "convert BatchNorm to SyncBatchNorm in distributed runs")
    dist_timeout: int = opt(300, "seconds before a stuck collective ends a distributed run")
    # --- machine -------------------------------------------------------------------------------
    seed: int = opt(0, "random seed of everything (weights, data order, augmentation, dropout)")
    device: str = opt("auto", "auto|cpu|cuda|cuda:N|mps")
    amp: str = opt("none", "mixed precision on CUDA: none|bf16|fp16")
    channels_last: str = opt("auto", "memory format: auto|on|off (auto: channels_last for conv models where faster)")
    compile: bool = opt(False, "torch.compile the model")
    data_workers: int = opt(4, "data loading processes for streamed (image-folder) datasets", "-j")
    # --- records -------------------------------------------------------------------------------
    results_dir: str = opt("./results", "folder holding run folders")
    save: str | None = opt(None, "run folder name (default: a timestamp)")
    resume: str | None = opt(None, "resume from a run folder or checkpoint file")
    overwrite: bool = opt(False, "replace an existing run folder")
    save_every_steps: int | None = opt(None, "also write last.pt every N optimizer steps")
    save_all: bool = opt(False, "keep epoch_<k>.pt for every epoch")
    nan_policy: str = opt("stop", "on a non-finite loss: stop (exit 3) or skip the batch and count it")
    print_freq: int = opt(0, "also log a line every N steps (0: only per epoch)", "-p")
    quiet: bool = opt(False, "no progress bar")
    debug: bool = opt(False, "show tracebacks")

    # ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

# How `basinlab train --help` groups the options (every field in exactly one group; tests check it).
OPTION_GROUPS = (
    ("general", ("preset", "debug")),
    ("model", ("model", "model_config", "depth")),
    ("data", ("dataset", "datasets_dir", "download", "train_limit", "val_limit", "augment", "data_workers")),
    ("optimisation", ("epochs", "batch_size", "eval_batch_size", "optimizer", "lr", "momentum", "weight_decay",
                      "lr_milestones", "lr_multiplier", "label_smoothing", "grad_clip", "ghost_batch")),
    ("normalisation (norm layers, Online Normalization)", ("norm_mode", "afwd", "abkw", "ecm", "gn_num_groups")),
    ("asynchronous SGD (basinlab.methods.asgd)", ("server", "workers", "delay", "schedule", "adjust_lr")),
    ("flat minima: SmoothOut, SAM, ASAM (basinlab.methods.flat)", (
        "smoothout", "smoothout_noise", "smoothout_adapt", "smoothout_schedule", "smoothout_include_bn", "denoise",
        "sam", "asam", "asam_eta", "lr_scale_batch")),
    ("measurements during training (basinlab.analysis.monitor, basinlab.tuning.method)", (
        "log_sharpness_every", "log_trace", "sharpness_batches", "log_lowrank")),
    ("records", ("results_dir", "save", "resume", "overwrite", "save_every_steps", "save_all", "nan_policy",
                 "print_freq", "quiet")),
    ("machine", ("seed", "device", "amp", "channels_last", "compile", "nproc", "sync_bn", "dist_timeout")),
)
# Options that may change when a run is resumed: they do not change what is computed.
RESUMABLE = {"resume", "overwrite", "quiet", "debug", "save", "results_dir", "epochs", "device", "data_workers",
             "print_freq", "save_every_steps", "save_all", "compile", "nan_policy", "datasets_dir", "nproc",
             "dist_timeout"}


def normalise_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def from_mapping(values: dict, where: str = "config") -> dict:
    """Validate keys of a mapping (YAML file or keyword arguments) and return field-name keys."""
    out = {}
    for key, value in values.items():
        name = normalise_key(str(key))
        if name not in FIELDS:
            close = [n.replace("_", "-") for n in FIELDS if name[:3] in n]
            hint = f" (did you mean: {', '.join(close[:4])}?)" if close else ""
            raise ConfigError(f"unknown option '{key}' in {where}{hint}; see `basinlab train --help` for the "
                              f"allowed options")
        out[name] = value
    return out


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """A YAML file holding a mapping, read with yaml.safe_load (no tags that run code); {} if empty."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"malformed YAML in {path}{at}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values, got {type(data).__name__}")
    return data


def load_yaml(path: str | Path) -> dict:
    """Read a `basinlab train` YAML config into field-name keys (unknown options refused)."""
    return from_mapping(read_yaml_mapping(path), where=str(path))


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check values that do not depend on the model or dataset; normalise model_config to a dict."""
    cfg.model_config = parse_literal_dict(cfg.model_config)
    for name in ("epochs", "batch_size", "eval_batch_size", "train_limit", "val_limit", "save_every_steps",
                 "ghost_batch"):
        check_int(getattr(cfg, name), f"--{name.replace('_', '-')}", optional=True)
    choices = {"amp": ("none", "bf16", "fp16"), "channels_last": ("auto", "on", "off"),
               "nan_policy": ("stop", "skip")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}; "
                              f"got {getattr(cfg, name)!r}")
    if cfg.label_smoothing < 0 or cfg.label_smoothing >= 1:
        raise ConfigError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.grad_clip is not None:
        check_number(cfg.grad_clip, "--grad-clip")
    return cfg


def validated_config(values: dict) -> TrainConfig:
    """A TrainConfig from field-name values, checked by `validate` (presets and resume are the API's:
    basinlab.api.make_config)."""
    return validate(TrainConfig(**values))


def config_to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML with long-flag keys; feeding it back with --config reproduces the run."""
    data = {k.replace("_", "-"): v for k, v in cfg.to_dict().items() if k not in ("resume", "overwrite")}
    return yaml.safe_dump(data, sort_keys=False)
