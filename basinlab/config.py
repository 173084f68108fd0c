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
from basinlab.utils.checks import check_number
from basinlab.utils.schema import MAX_TEXT, Rule, check_value, shown


def opt(default, help, *flags, low=None, high=None, high_open=False, choices=(), item_low=None,
        **argparse_kwargs):
    """A config field: its default, help, extra command-line flags (the long flag comes from the name) and
    what it accepts (range `low`..`high`, `choices`; the type is its annotation). See `RULES`."""
    limits = {"low": low, "high": high, "high_open": high_open, "choices": tuple(choices), "item_low": item_low}
    if choices:
        argparse_kwargs.setdefault("choices", tuple(choices))
    return field(default=default, metadata={"help": help, "flags": flags, "argparse": argparse_kwargs,
                                            "limits": limits})


def parse_literal_dict(text: str | dict | None, what: str = "--model-config") -> dict:
    """Parse a Python literal dict like "{'depth': 20}" safely (ast.literal_eval, never eval)."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        return _string_keys(dict(text), what)
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise ConfigError(f"{what} must be a Python literal dict such as \"{{'depth': 20}}\"; got {shown(text)}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ConfigError(f"{what} must be a Python literal dict such as \"{{'depth': 20}}\" "
                          f"(literals only: no names, calls or expressions); got {text!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a dict literal such as \"{{'depth': 20}}\"; got {type(value).__name__}")
    return _string_keys(value, what)


def _string_keys(value: dict, what: str) -> dict:
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{what} keys must be option names (strings), got {shown(bad[0])}")
    return value


@dataclass
class TrainConfig:
    # --- what to train -------------------------------------------------------------------
    model: str = opt("mnist", "model name from `basinlab list`, or path/to/file.py:factory, or package.module:factory",
                     "-a", "--arch")
    model_config: Any = opt(None, "model options as a Python literal dict, e.g. \"{'depth': 20, 'regime': 'fixed', "
                                  "'regime_lr': 0.1}\"")
    depth: int | None = opt(None, "model depth (shorthand for model_config depth)", "-d",
                            low=1, high=2000)
    dataset: str = opt("mnist5k", "dataset name from `basinlab list`")
    datasets_dir: str | None = opt(None, "folder holding <dataset>/ folders, or the dataset's own folder as the "
                                         "seeds take it (holding cifar-10-batches-py/, train/ and val/, MNIST/raw/, "
                                         "...); the log names the layout found (default: $BASINLAB_DATASETS or "
                                         "~/.cache/basinlab/datasets)")
    download: bool = opt(False, "download the dataset with torchvision when it is installed and online")
    train_limit: int | None = opt(None, "train on N examples only: a seeded class-stratified subset (see --limit-mode)",
                                  low=1, high=2**31 - 1)
    val_limit: int | None = opt(None, "validate on N examples only: a seeded class-stratified subset",
                                low=1, high=2**31 - 1)
    limit_mode: str = opt("stratified", "how --train-limit/--val-limit choose: stratified (every class in "
                                        "proportion, seeded, nested as N grows) or first (the first N stored)",
                          choices=("stratified", "first"))
    augment: bool = opt(True, "standard training augmentation of the dataset (--no-augment to disable)")
    preset: str | None = opt(None, "start from a named preset (see `basinlab list`); other options override it")
    # --- optimisation ------------------------------------------------------------------------
    epochs: int | None = opt(None, "number of epochs (default: the model's, else 10)",
                             low=1, high=100_000)
    batch_size: int | None = opt(None, "training batch size (global batch in distributed runs; default: the "
                                       "model's, else 128)", "-b",
                                 low=1, high=2**20)
    eval_batch_size: int | None = opt(None, "validation batch size (default: the data regime's eval_batch_size, "
                                            "else max(batch size, 256): no gradients, so larger batches are cheap)",
                                      low=1, high=2**20)
    optimizer: str | None = opt(None, "optimizer name (any torch.optim class); given with a model regime, it "
                                      "replaces that regime by the flags' one-phase regime")
    lr: float | None = opt(None, "initial learning rate; rescales a model regime's lr schedule to start here",
                           "--learning-rate",
                           low=0)
    momentum: float | None = opt(None, "momentum; replaces the value in every regime phase",
                                 low=0)
    weight_decay: float | None = opt(None, "weight decay; replaces the value in every regime phase", "--wd",
                                     low=0)
    wd_filter: str | None = opt(None, "which parameters weight decay applies to: all, or weights (conv and linear "
                                      "weights only, no biases or norm parameters: convNet's regularizer)",
                                choices=("all", "weights"))
    lr_milestones: list | None = opt(None, "epochs at which lr is multiplied by --lr-multiplier", nargs="+", type=int,
                                     item_low=0)
    lr_multiplier: float = opt(0.1, "lr multiplier at each milestone",
                               low=0)
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy loss",
                                 low=0, high=1, high_open=True)
    grad_clip: float | None = opt(None, "clip the global gradient norm to this value",
                                  low=0)
    # --- normalisation -------------------------------------------------------------------------
    norm_mode: str | None = opt(None, "norm layers of conv models: batch|group|layer|instance|online|none", "--norm",
                                choices=("batch", "group", "layer", "instance", "online", "none"))
    afwd: float | None = opt(None, "online norm forward decay", "--decay-factor-forward",
                             low=0, high=1, high_open=True)
    abkw: float | None = opt(None, "online norm backward decay", "--decay-factor-backward",
                             low=0, high=1, high_open=True)
    ecm: str | None = opt(None, "online norm error compensation: ls|ac|none",
                          choices=("ls", "ac", "none"))
    gn_num_groups: int | None = opt(None, "groups of group norm",
                                    low=1, high=65_536)
    # --- asynchronous SGD (basinlab.methods.asgd) --------------------------------------------------------
    server: str | None = opt(None, "simulated parameter server: ssgd|asgd|msgd (default: plain training)",
                             choices=("ssgd", "asgd", "msgd"))
    workers: int = opt(1, "simulated workers of the parameter server", "--workers-num", "--workers_num",
                       low=1, high=4096)
    delay: int | None = opt(None, "server delay d in updates (asgd default: workers-1, pure ASGD)",
                            low=0, high=4096)
    schedule: str = opt("round_robin", "which worker computes next: round_robin|random|normal",
                        choices=("round_robin", "random", "normal"))
    adjust_lr: bool = opt(False, "scale the regime's lr for the delay: eta*sin(pi/(4d+2))")
    # --- flat minima (basinlab.methods.flat.method) --------------------------------------------------------
    smoothout: float | None = opt(None, "SmoothOut noise strength A (weight noise each step)",
                                  low=0)
    smoothout_noise: str = opt("uniform", "SmoothOut noise: uniform|normal",
                               choices=("uniform", "normal"))
    smoothout_adapt: str = opt("none", "SmoothOut noise scale: none|weight|filter (filter = AdaSmoothOut)",
                               choices=("none", "weight", "filter"))
    smoothout_schedule: str = opt("constant", "SmoothOut strength schedule: constant|anneal|tanh",
                                  choices=("constant", "anneal", "tanh"))
    smoothout_include_bn: bool = opt(False, "also perturb BatchNorm affine parameters")
    denoise: bool = opt(True, "remove the SmoothOut noise before the optimizer step (--no-denoise keeps it)")
    ghost_batch: int | None = opt(None, "accumulate gradients over chunks of this many samples, one step per batch "
                                        "(ghost batches: each chunk normalised on its own)",
                                  low=1, high=2**20)
    sam: float | None = opt(None, "SAM with radius rho",
                            low=0)
    asam: float | None = opt(None, "ASAM with radius rho",
                             low=0)
    asam_eta: float = opt(0.01, "ASAM's eta in T_w = |w| + eta",
                          low=0)
    asam_scope: str = opt("weights", "parameters ASAM scales by T_w: weights (names containing 'weight', as the "
                                     "authors' code; biases get T = 1) or all", choices=("weights", "all"))
    sam_perturbation: str = opt("local", "SAM/ASAM under data parallelism: local = each process's eps from its "
                                         "own shard (the paper's m-sharpness), global = one eps from the "
                                         "all-reduced gradient", choices=("local", "global"))
    lr_scale_batch: str | None = opt(None, "scale the regime's lr by batch/ghost batch: sqrt|linear",
                                     choices=("sqrt", "linear"))
    # --- measurements during training ---------------------------------------------------------
    log_sharpness_every: int | None = opt(None, "log lambda_max (Hessian) every k epochs",
                                          low=1, high=1_000_000)
    log_trace: bool = opt(False, "with --log-sharpness-every, also log the Hessian trace")
    hessian_mode: str = opt("train", "with --log-sharpness-every: the Hessian with BatchNorm on batch statistics "
                                     "(train: what training steps see, which the stability rules assume) or on "
                                     "running statistics (eval)", choices=("train", "eval"))
    sharpness_batches: int = opt(4, "training batches used by --log-sharpness-every",
                                 low=1, high=100_000)
    log_lowrank: bool = opt(False, "log low-rank metrics of conv layers each epoch (lowrank.csv)")
    # --- distributed -----------------------------------------------------------------------------
    nproc: int | None = opt(None, "start this many processes with torchrun on this machine",
                            low=1, high=1024)
    sync_bn: bool = opt(False, "convert BatchNorm to SyncBatchNorm in distributed runs")
    dist_timeout: int = opt(300, "seconds before a stuck collective ends a distributed run",
                            low=1, high=7 * 24 * 3600)
    # --- machine -------------------------------------------------------------------------------
    seed: int = opt(0, "random seed of everything (weights, data order, augmentation, dropout)",
                    low=0, high=2**63 - 1)
    device: str = opt("auto", "auto|cpu|cuda|cuda:N|mps")
    amp: str = opt("none", "mixed precision: bf16 (CUDA, or a CPU with native bfloat16: AVX-512 BF16/AMX), fp16 "
                           "(CUDA), auto (bf16 where the device computes it fast, else none), none (float32, "
                           "bit-reproducible)", choices=("none", "bf16", "fp16", "auto"))
    eval_amp: str = opt("same", "precision of validation: same as training, or none (float32)",
                        choices=("same", "none"))
    channels_last: str = opt("auto", "memory format: auto|on|off (auto: channels_last for conv models where faster)",
                             choices=("auto", "on", "off"))
    compile: bool = opt(False, "torch.compile the model")
    data_workers: int = opt(4, "data loading processes for streamed (image-folder) datasets", "-j",
                            low=0, high=256)
    # --- records -------------------------------------------------------------------------------
    results_dir: str = opt("./results", "folder holding run folders")
    save: str | None = opt(None, "run folder name (default: a timestamp); an absolute path is used as it is",
                           "--model-dir")
    resume: str | None = opt(None, "resume from a run folder or checkpoint file")
    overwrite: bool = opt(False, "replace an existing run folder")
    save_every_steps: int | None = opt(None, "also write last.pt every N optimizer steps",
                                       low=1, high=2**31 - 1)
    save_all: bool = opt(False, "keep epoch_<k>.pt for every epoch")
    nan_policy: str = opt("stop", "on a non-finite loss: stop (exit 3) or skip the batch and count it",
                          choices=("stop", "skip"))
    print_freq: int = opt(0, "log a progress line (loss, top-1, lr, img/s, ETA) every N steps, training and "
                             "validation, to the console and log.txt, and the step's loss to steps.csv "
                             "(plots/loss_steps.png); 0: a bar on a terminal, elsewhere a line every 30 s", "-p",
                          low=0, high=2**31 - 1)
    quiet: bool = opt(False, "print nothing on the console (log.txt still gets every line)")
    report: bool = opt(False, "also refresh report.html in the run folder (interactive curves, `basinlab report`; "
                              "needs basinlab[report]) whenever the plots are redrawn")
    debug: bool = opt(False, "show tracebacks")

    # ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def field_kind(annotation) -> type:
    """bool, int, float, list or str from a field's annotation ('int | None' -> int); Any -> object."""
    name = str(annotation).split("|")[0].strip()
    return {"bool": bool, "int": int, "float": float, "list": list, "str": str}.get(name, object)


def _rule(field) -> Rule:
    optional = field.default is None
    return Rule(field_kind(field.type), optional=optional, **field.metadata["limits"])


# What each option accepts: its annotation's type, None where the default is None, its declared limits.
# What an option left unset means, shown as its default by --help (the field's default is None).
WHEN_UNSET = {
    "model_config": "none: the model's own settings", "depth": "the model's", "train_limit": "every example",
    "val_limit": "every example", "preset": "none", "optimizer": "the model regime's, else SGD",
    "lr": "the model regime's, else 0.1", "momentum": "the model regime's, else 0.9 for SGD and NAG",
    "weight_decay": "the model regime's, else 0",
    "wd_filter": "the model regime's (a convNet regularizer: weights), else all",
    "lr_milestones": "the model regime's, else none",
    "grad_clip": "no clipping", "norm_mode": "the model's (batch for basinlab's conv models)",
    "afwd": "the Online Normalization reference's for the dataset: 1023/1024 on CIFAR-10 and MNIST-like, "
            "511/512 on CIFAR-100, else 0.999",
    "abkw": "the reference's for the dataset: 127/128 on CIFAR-10 and MNIST-like, 15/16 on CIFAR-100, else 0.99",
    "ecm": "ls", "gn_num_groups": "8 on CIFAR and MNIST-like, else 32", "smoothout": "off",
    "ghost_batch": "off: the whole batch at once",
    "sam": "off", "asam": "off", "lr_scale_batch": "no scaling", "log_sharpness_every": "never",
    "nproc": "one process", "resume": "a new run", "save_every_steps": "only at the end of each epoch",
}


RULES = {name: _rule(f) for name, f in FIELDS.items() if field_kind(f.type) is not object}

# How `basinlab train --help` groups the options (every field in exactly one group; tests check it).
OPTION_GROUPS = (
    ("general", ("preset", "debug")),
    ("model", ("model", "model_config", "depth")),
    ("data", ("dataset", "datasets_dir", "download", "train_limit", "val_limit", "limit_mode", "augment",
              "data_workers")),
    ("optimisation", ("epochs", "batch_size", "eval_batch_size", "optimizer", "lr", "momentum", "weight_decay",
                      "wd_filter", "lr_milestones", "lr_multiplier", "label_smoothing", "grad_clip", "ghost_batch")),
    ("normalisation (norm layers, Online Normalization)", ("norm_mode", "afwd", "abkw", "ecm", "gn_num_groups")),
    ("asynchronous SGD (basinlab.methods.asgd)", ("server", "workers", "delay", "schedule", "adjust_lr")),
    ("flat minima: SmoothOut, SAM, ASAM (basinlab.methods.flat)", (
        "smoothout", "smoothout_noise", "smoothout_adapt", "smoothout_schedule", "smoothout_include_bn", "denoise",
        "sam", "asam", "asam_eta", "asam_scope", "sam_perturbation", "lr_scale_batch")),
    ("measurements during training (basinlab.methods.sharpness_monitor, basinlab.methods.lowrank)", (
        "log_sharpness_every", "log_trace", "hessian_mode", "sharpness_batches", "log_lowrank")),
    ("records", ("results_dir", "save", "resume", "overwrite", "save_every_steps", "save_all", "nan_policy",
                 "print_freq", "quiet", "report")),
    ("machine", ("seed", "device", "amp", "eval_amp", "channels_last", "compile", "nproc", "sync_bn", "dist_timeout")),
)
# Options that may change when a run is resumed: they do not change what is computed.
RESUMABLE = {"resume", "overwrite", "quiet", "debug", "save", "results_dir", "epochs", "device", "data_workers",
             "print_freq", "save_every_steps", "save_all", "compile", "nan_policy", "datasets_dir", "nproc",
             "dist_timeout", "report"}


# Options added after runs were stored: the value that reproduces what those runs did.
# A detail option gets its legacy value only where its main option was used (else it stays unset).
LEGACY_DEFAULTS = {"limit_mode": ("first", ()), "wd_filter": ("all", ()), "asam_scope": ("all", ("asam",)),
                   "sam_perturbation": ("global", ("sam", "asam")), "hessian_mode": ("eval", ("log_sharpness_every",))}


def stored_values(stored: dict) -> dict:
    """A stored config's values for today's fields: known keys kept, new ones as the old code behaved."""
    values = {k: v for k, v in stored.items() if k in FIELDS}
    for key, (value, needs) in LEGACY_DEFAULTS.items():
        if not needs or any(values.get(main) is not None for main in needs):
            values.setdefault(key, value)
    return values


def normalise_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


# Trust to import model code is the person's choice for one process, given only on the command line
# (--trust-model-code) or as basinlab.train(..., trust_model_code=True): never a field, never stored. A file
# saying `false` grants nothing (run folders written before this rule hold that line) and is ignored.
TRUST_KEY = "trust_model_code"


def _refuse_granted_trust(key, value, where: str) -> None:
    if value is False or value is None:
        return
    raise ConfigError(f"'{key}' in {where} is refused: a file or a stored run cannot grant trust to import model "
                      f"code; remove the key and, if you trust the model it names, pass --trust-model-code on the "
                      f"command line or trust_model_code=True to basinlab.train()")


def from_mapping(values: dict, where: str = "config") -> dict:
    """Validate keys of a mapping (YAML file or keyword arguments) and return field-name keys."""
    out = {}
    for key, value in values.items():
        name = normalise_key(str(key))
        if name == TRUST_KEY:
            _refuse_granted_trust(key, value, where)
            continue
        if name not in FIELDS:
            close = [n.replace("_", "-") for n in FIELDS if name[:3] in n]
            hint = f" (did you mean: {', '.join(close[:4])}?)" if close else ""
            raise ConfigError(f"unknown option '{key}' in {where}{hint}; see `basinlab train --help` for the "
                              f"allowed options")
        out[name] = value
    return out


MAX_YAML_BYTES = 1 << 20  # a config file is a few hundred bytes; refuse what could exhaust memory


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """A YAML file holding a mapping, read with yaml.safe_load (no tags that run code); {} if empty."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{what} {path} has {path.stat().st_size:,} bytes; a config holds at most "
                          f"{MAX_YAML_BYTES:,}")
    try:
        text = path.read_text()
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text)):
            raise ConfigError(f"{what} {path} uses YAML aliases (*name); write the values out instead")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"malformed YAML in {path}{at}: {getattr(exc, 'problem', exc)}") from None
    except (UnicodeDecodeError, ValueError, RecursionError, MemoryError) as exc:
        # ValueError: an integer literal of over 4300 digits; RecursionError: nesting thousands deep
        raise ConfigError(f"unreadable {what} {path}: {type(exc).__name__}: {shown(str(exc), 120)}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values, got {type(data).__name__}")
    return data


def load_yaml(path: str | Path) -> dict:
    """Read a `basinlab train` YAML config into field-name keys (unknown options refused)."""
    return from_mapping(read_yaml_mapping(path), where=str(path))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every option against its rule (type, range, choices); normalise model_config to a dict.

    The one check of option values, whatever they came from: command line, YAML, Python, a checkpoint.
    Checks that depend on the model, data or method are theirs (at setup, in each method's configure).
    """
    for name, rule in RULES.items():
        setattr(cfg, name, check_value(flag(name), rule, getattr(cfg, name)))
    cfg.model_config = parse_literal_dict(cfg.model_config)
    reserved = sorted(set(cfg.model_config) & {"num_classes", "dataset"})
    if reserved:
        raise ConfigError(f"--model-config sets {reserved[0]!r}, which comes from the data (the dataset's classes, "
                          f"--dataset); remove it from the model config and choose the dataset with --dataset")
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
