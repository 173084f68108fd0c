"""The option statements: every option of `basinlab train` (a field of `TrainConfig`) declared in one `opt(...)`,
and the tables derived from them (rules, help groups, texts for unset options, what a resume may change, legacy
values, old spellings). Adding an option is one statement here; its checks follow from it (basinlab.config).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from basinlab.choices import (
    AMP_MODES,
    ASAM_SCOPES,
    CHANNELS_LAST_MODES,
    ECM_MODES,
    EVAL_AMP_MODES,
    HESSIAN_MODES,
    LIMIT_MODES,
    LOSSES,
    LR_SCALINGS,
    NAN_POLICIES,
    NOISE_SCALES,
    NOISE_TYPES,
    NORM_MODES,
    SAM_PERTURBATIONS,
    SERVER_MODES,
    STRENGTH_SCHEDULES,
    WD_FILTERS,
    WORKER_LOSS_POLICIES,
    WORKER_ORDERS,
)
from basinlab.utils.schema import Rule

_NO_LEGACY = object()


def opt(default, help, *flags, low=None, high=None, high_open=False, choices=(), item_low=None, group: str,
        owner: str = "engine", unset: str | None = None, needs=(), conflicts=None, legacy=_NO_LEGACY,
        resumable: bool = False, **argparse_kwargs):
    """One option, in one statement.

    `default`, `help`, extra command-line `flags` (the long flag comes from the name); what it accepts:
    range `low`..`high`, `choices` (the type is its annotation; see `RULES`). `group`: its --help group
    (GROUP_TITLES). `owner`: the method folder whose code reads it (methods/<owner>/), else "engine".
    `unset`: what leaving it unset means (its default is None), shown by --help. `needs`: it means something
    only with one of these options given. `conflicts`: {option: why} it cannot run with. `legacy`: its value
    for runs stored before it existed (given only where one of `needs` was used). `resumable`: a resumed run
    may change it (it does not change what is computed).
    """
    limits = {"low": low, "high": high, "high_open": high_open, "choices": tuple(choices), "item_low": item_low}
    if choices:
        argparse_kwargs.setdefault("choices", tuple(choices))
    return field(default=default, metadata={
        "help": help, "flags": flags, "argparse": argparse_kwargs, "limits": limits, "group": group, "owner": owner,
        "unset": unset, "needs": tuple(needs), "conflicts": dict(conflicts or {}), "legacy": legacy,
        "resumable": resumable})


SERVER_OWN_STEP = "the simulated parameter server has its own step; run flat-minima methods without --server"


@dataclass
class TrainConfig:
    # --- general ----------------------------------------------------------------------------------
    preset: str | None = opt(None, "start from a named preset (see `basinlab list`); other options override it",
                             group="general", unset="none")
    debug: bool = opt(False, "show tracebacks",
                      group="general", resumable=True)
    # --- what to train ----------------------------------------------------------------------------
    model: str = opt("mnist", "model name from `basinlab list`, or path/to/file.py:factory, or package.module:factory",
                     "-a", "--arch",
                     group="model")
    model_config: Any = opt(None, "model options as a Python literal dict, e.g. \"{'depth': 20, 'regime': 'fixed', "
                                  "'regime_lr': 0.1}\"",
                            group="model", unset="none: the model's own settings")
    depth: int | None = opt(None, "model depth (shorthand for model_config depth)", "-d",
                            low=1, high=2000,
                            group="model", unset="the model's")
    # --- data -------------------------------------------------------------------------------------
    dataset: str | None = opt(None, "dataset name from `basinlab list`",
                              group="data", unset="the one dataset --datasets-dir holds (refused if it holds none or "
                                                  "several); without a folder mnist5k, 5,000 embedded MNIST digits",
                              legacy="mnist5k")
    datasets_dir: str | None = opt(None, "folder holding <dataset>/ folders, or the dataset's own folder as the "
                                         "seeds take it (holding cifar-10-batches-py/, train/ and val/, MNIST/raw/, "
                                         "...); the log names the layout found (default: $BASINLAB_DATASETS or "
                                         "~/.cache/basinlab/datasets)",
                                   group="data", resumable=True)
    download: bool = opt(False, "fetch the dataset when it is not found (mnist, fashion-mnist, cifar10, cifar100): "
                                "the canonical archives, checksums verified, no torchvision; as `basinlab data "
                                "download`",
                         group="data")
    train_limit: int | None = opt(None, "train on N examples only: a seeded class-stratified subset (see --limit-mode)",
                                  low=1, high=2**31 - 1,
                                  metavar="N", group="data", unset="every example")
    val_limit: int | None = opt(None, "validate on N examples only: a seeded class-stratified subset",
                                low=1, high=2**31 - 1,
                                metavar="N", group="data", unset="every example")
    limit_mode: str = opt("stratified", "how --train-limit/--val-limit choose: stratified (every class in "
                                        "proportion, seeded, nested as N grows) or first (the first N stored)",
                          choices=LIMIT_MODES,
                          group="data", needs=("train_limit", "val_limit"), legacy="first")
    augment: bool = opt(True, "standard training augmentation of the dataset (--no-augment to disable)",
                        group="data")
    data_workers: int = opt(4, "data loading processes for streamed (image-folder) datasets", "-j",
                            low=0, high=256,
                            group="data", resumable=True)
    # --- optimisation -----------------------------------------------------------------------------
    epochs: int | None = opt(None, "number of epochs (default: the model's, else 10)",
                             low=1, high=100_000,
                             group="optimisation", resumable=True)
    batch_size: int | None = opt(None, "training batch size (global batch in distributed runs; default: the "
                                       "model's, else 128)", "-b",
                                 low=1, high=2**20,
                                 group="optimisation")
    eval_batch_size: int | None = opt(None, "validation batch size (default: the data regime's eval_batch_size, "
                                            "else max(batch size, 256): no gradients, so larger batches are cheap)",
                                      low=1, high=2**20,
                                      group="optimisation")
    optimizer: str | None = opt(None, "optimizer name (any torch.optim class); given with a model regime, it "
                                      "replaces that regime by the flags' one-phase regime",
                                group="optimisation", unset="the model regime's, else SGD")
    lr: float | None = opt(None, "initial learning rate; rescales a model regime's lr schedule to start here",
                           "--learning-rate",
                           low=0,
                           group="optimisation", unset="the model regime's, else 0.1")
    momentum: float | None = opt(None, "momentum; replaces the value in every regime phase",
                                 low=0,
                                 group="optimisation", unset="the model regime's, else 0.9 for SGD and NAG")
    weight_decay: float | None = opt(None, "weight decay; replaces the value in every regime phase", "--wd",
                                     low=0,
                                     group="optimisation", unset="the model regime's, else 0")
    wd_filter: str | None = opt(None, "which parameters weight decay applies to: all, or weights (conv and linear "
                                      "weights only, no biases or norm parameters: convNet's regularizer)",
                                choices=WD_FILTERS,
                                group="optimisation",
                                unset="the model regime's (a convNet regularizer: weights), else all", legacy="all")
    lr_milestones: list | None = opt(None, "epochs at which lr is multiplied by --lr-multiplier", nargs="+", type=int,
                                     item_low=0,
                                     metavar="EPOCH", group="optimisation", unset="the model regime's, else none")
    lr_multiplier: float = opt(0.1, "lr multiplier at each milestone",
                               low=0,
                               group="optimisation", needs=("lr_milestones",))
    loss: str = opt("cross-entropy", "the training loss: cross-entropy, or mse (half the squared error to the "
                                      "one-hot labels, summed over classes, mean over examples: Cohen et al.'s "
                                      "square loss)", choices=LOSSES, group="optimisation",
                    conflicts={"label_smoothing": "label smoothing is cross-entropy's"})
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy loss",
                                 low=0, high=1, high_open=True,
                                 group="optimisation")
    grad_clip: float | None = opt(None, "clip the global gradient norm to this value",
                                  low=0,
                                  group="optimisation", unset="no clipping")
    ghost_batch: int | None = opt(None, "accumulate gradients over chunks of this many samples, one step per batch "
                                        "(ghost batches: each chunk normalised on its own)",
                                  low=1, high=2**20,
                                  metavar="M", group="optimisation", unset="off: the whole batch at once")
    # --- normalisation (basinlab.nn) --------------------------------------------------------------
    norm_mode: str | None = opt(None, "norm layers of conv models: batch|group|layer|instance|online|none, or "
                                      "frn|evonorm_s0|gn_ws (batch-independent), evonorm_b0|batchrenorm "
                                      "(docs/methods/norms.md)", "--norm",
                                choices=NORM_MODES,
                                group="norm", unset="the model's (batch for basinlab's conv models)")
    afwd: float | None = opt(None, "online norm forward decay", "--decay-factor-forward",
                             low=0, high=1, high_open=True,
                             group="norm",
                             unset="the Online Normalization reference's for the dataset: 1023/1024 on CIFAR-10 and "
                                   "MNIST-like, 511/512 on CIFAR-100, else 0.999")
    abkw: float | None = opt(None, "online norm backward decay", "--decay-factor-backward",
                             low=0, high=1, high_open=True,
                             group="norm",
                             unset="the reference's for the dataset: 127/128 on CIFAR-10 and MNIST-like, 15/16 on "
                                   "CIFAR-100, else 0.99")
    ecm: str | None = opt(None, "online norm error compensation: ls|ac|none",
                          choices=ECM_MODES,
                          group="norm", unset="ls")
    gn_num_groups: int | None = opt(None, "groups of group norm",
                                    low=1, high=65_536,
                                    group="norm", unset="8 on CIFAR and MNIST-like, else 32")
    # --- asynchronous SGD (basinlab.methods.asgd) -------------------------------------------------
    server: str | None = opt(None, "simulated parameter server: ssgd|asgd|msgd (default: plain training)",
                             choices=SERVER_MODES,
                             group="asgd", owner="asgd", conflicts={"ghost_batch": SERVER_OWN_STEP})
    workers: int = opt(1, "simulated workers of the parameter server", "--workers-num", "--workers_num",
                       low=1, high=4096,
                       group="asgd", owner="asgd", needs=("server",))
    delay: int | None = opt(None, "server delay d in updates (asgd default: workers-1, pure ASGD)",
                            low=0, high=4096,
                            group="asgd", owner="asgd", needs=("server",))
    worker_order: str = opt("round_robin", "which simulated worker computes next (was --schedule)",
                            choices=WORKER_ORDERS,
                            group="asgd", owner="asgd", needs=("server",))
    adjust_lr: bool = opt(False, "scale the regime's lr for the delay: eta*sin(pi/(4d+2))",
                          group="asgd", owner="asgd", needs=("server",))
    real: bool = opt(False, "run the workers as real processes on this machine, their delays measured",
                     group="asgd", owner="asgd", needs=("server",))
    fixed_delay: int | None = opt(None, "real workers: apply each gradient exactly D updates after it was read",
                                  low=0, high=4096, metavar="D",
                                  group="asgd", owner="asgd", needs=("real",), unset="apply on arrival")
    max_delay: int | None = opt(None, "real workers: drop a gradient read more than D updates ago",
                                low=0, high=4096, metavar="D",
                                group="asgd", owner="asgd", needs=("real",), unset="no bound")
    worker_trace: str | None = opt(None, "simulated workers: replay a real run's order (its delays.csv)",
                                   metavar="FILE", group="asgd", owner="asgd", needs=("server",),
                                   unset="--worker-order")
    on_worker_loss: str = opt("continue", "real workers: when one dies, go on with the rest, or stop",
                              choices=WORKER_LOSS_POLICIES,
                              group="asgd", owner="asgd", needs=("real",))
    # --- flat minima (basinlab.methods.flat) ------------------------------------------------------
    smoothout: float | None = opt(None, "SmoothOut noise strength A (weight noise each step)",
                                  low=0, metavar="A",
                                  group="flat", owner="flat", unset="off", conflicts={"server": SERVER_OWN_STEP})
    smoothout_noise: str = opt("uniform", "SmoothOut noise: uniform|normal",
                               choices=NOISE_TYPES,
                               group="flat", owner="flat", needs=("smoothout",))
    smoothout_adapt: str = opt("none", "SmoothOut noise scale: none|weight|filter (filter = AdaSmoothOut)",
                               choices=NOISE_SCALES,
                               group="flat", owner="flat", needs=("smoothout",))
    smoothout_schedule: str = opt("constant", "SmoothOut strength schedule: constant|anneal|tanh",
                                  choices=STRENGTH_SCHEDULES,
                                  group="flat", owner="flat", needs=("smoothout",))
    smoothout_include_bn: bool = opt(False, "also perturb BatchNorm affine parameters",
                                     group="flat", owner="flat", needs=("smoothout",))
    denoise: bool = opt(True, "remove the SmoothOut noise before the optimizer step (--no-denoise keeps it)",
                        group="flat", owner="flat", needs=("smoothout",))
    sam: float | None = opt(None, "SAM with radius rho",
                            low=0,
                            metavar="RHO", group="flat", owner="flat", unset="off",
                            conflicts={"asam": "choose one (ASAM is SAM with adaptive scaling)",
                                       "smoothout": "choose one flat-minima method",
                                       "server": SERVER_OWN_STEP})
    asam: float | None = opt(None, "ASAM with radius rho",
                             low=0,
                             metavar="RHO", group="flat", owner="flat", unset="off",
                             conflicts={"smoothout": "choose one flat-minima method", "server": SERVER_OWN_STEP})
    asam_eta: float = opt(0.01, "ASAM's eta in T_w = |w| + eta",
                          low=0,
                          group="flat", owner="flat", needs=("asam",))
    asam_scope: str = opt("weights", "parameters ASAM scales by T_w: weights (names containing 'weight', as the "
                                     "authors' code; biases get T = 1) or all", choices=ASAM_SCOPES,
                          group="flat", owner="flat", needs=("asam",), legacy="all")
    sam_perturbation: str = opt("local", "SAM/ASAM/GSAM/LookSAM under data parallelism: local = each process's eps "
                                         "from its own shard (the paper's m-sharpness), global = one eps from the "
                                         "all-reduced gradient", choices=SAM_PERTURBATIONS,
                                group="flat", owner="flat", needs=("sam", "asam", "gsam", "looksam"),
                                legacy="global")
    sam_m: int | None = opt(None, "m-sharpness: the ascent direction per micro-batch of M examples, each micro-batch's "
                                  "gradient taken at its own perturbed point, averaged (Andriushchenko & Flammarion "
                                  "2022); M = the batch is SAM as it is", low=1, high=2**20, metavar="M",
                            group="flat", owner="flat", unset="the whole batch: one ascent direction (n-SAM)",
                            needs=("sam", "asam"))
    sam_interval: int = opt(1, "a SAM/ASAM step (two passes) every K optimizer steps, plain steps between",
                            low=1, high=1_000_000, metavar="K", group="flat", owner="flat", needs=("sam", "asam"))
    lr_scale_batch: str | None = opt(None, "scale the regime's lr by batch/ghost batch: sqrt|linear",
                                     choices=LR_SCALINGS,
                                     group="flat", owner="flat", unset="no scaling", needs=("ghost_batch",))
    # --- the SAM family (basinlab.methods.gsam, .msam, .looksam, .saf) ------------------------------------
    gsam: float | None = opt(None, "GSAM (Zhuang et al. 2022): SAM's gradient minus --gsam-alpha times the component "
                                   "of the plain gradient orthogonal to it; rho is the largest radius, scheduled with "
                                   "the lr", low=0, metavar="RHO", group="sam_family", owner="gsam", unset="off")
    gsam_alpha: float = opt(0.4, "GSAM's alpha: how much of the orthogonal component is subtracted", low=0,
                            metavar="A", group="sam_family", owner="gsam", needs=("gsam",))
    gsam_rho_min: float | None = opt(None, "GSAM's radius at the regime's smallest lr (rho falls linearly with the lr "
                                           "from --gsam RHO at its largest)", low=0, metavar="RHO",
                                     group="sam_family", owner="gsam", unset="0", needs=("gsam",))
    msam: float | None = opt(None, "Momentum-SAM (Becker et al. 2024): one pass per step at w - RHO v/||v||, v the SGD "
                                   "momentum (needs SGD with momentum > 0; the authors use 3)", low=0, metavar="RHO",
                             group="sam_family", owner="msam", unset="off")
    looksam: float | None = opt(None, "LookSAM (Liu et al. 2022): SAM's two passes every --looksam-k steps; between "
                                      "them one pass and the stored part of SAM's gradient orthogonal to the plain one",
                                low=0, metavar="RHO", group="sam_family", owner="looksam", unset="off")
    looksam_k: int = opt(5, "LookSAM: a full SAM step every K steps", low=1, high=1_000_000, metavar="K",
                         group="sam_family", owner="looksam", needs=("looksam",))
    looksam_alpha: float = opt(0.7, "LookSAM's alpha: the weight of the stored orthogonal component", low=0,
                               metavar="A", group="sam_family", owner="looksam", needs=("looksam",))
    saf: bool = opt(False, "SAF (Du et al. 2022): the loss plus a trajectory term, the KL divergence from each "
                           "example's outputs --saf-horizon epochs ago (stored per example)",
                    group="sam_family", owner="saf", conflicts={"mesa": "choose one (MESA is SAF with an EMA model)"})
    mesa: bool = opt(False, "MESA (Du et al. 2022): SAF with the outputs of an exponential moving average of the "
                            "model instead of stored ones", group="sam_family", owner="saf")
    saf_lambda: float | None = opt(None, "SAF/MESA: the weight of the trajectory term", low=0, metavar="L",
                                   group="sam_family", owner="saf", unset="the authors': 0.3 for --saf, 0.8 for --mesa",
                                   needs=("saf", "mesa"))
    saf_tau: float = opt(5.0, "SAF/MESA: the softmax temperature of the trajectory term", low=0, metavar="T",
                         group="sam_family", owner="saf", needs=("saf", "mesa"))
    saf_start_epoch: int = opt(5, "SAF/MESA: the trajectory term applies after this epoch, counted from 0 (the "
                                  "authors' --kl_start_epoch: 5 starts it in the 7th epoch)", low=0, high=1_000_000,
                               metavar="E", group="sam_family", owner="saf", needs=("saf", "mesa"))
    saf_horizon: int = opt(3, "SAF: how many epochs back the stored outputs are", low=1, high=10_000, metavar="E",
                           group="sam_family", owner="saf", needs=("saf",))
    mesa_decay: float = opt(0.9998, "MESA: the decay of the model's exponential moving average", low=0, high=1,
                            high_open=True, metavar="B", group="sam_family", owner="saf", needs=("mesa",))
    # --- airbench's training tricks (basinlab.methods.airbench) ---------------------------------------------
    lookahead_every: int | None = opt(None, "airbench's lookahead: every K optimizer steps the weights become an EMA "
                                            "of themselves with decay 0.95^K (t/T)^3, T the run's steps; the last "
                                            "step takes the EMA", low=1, high=1_000_000, metavar="K",
                                      group="optimisation", owner="airbench", unset="off",
                                      conflicts={"server": "a parameter server's snapshots would undo or miscount "
                                                           "its pulls"})
    whiten_bias_epochs: int | None = opt(None, "airbench: train the whitening layer's bias for the first E epochs, "
                                               "then keep it (a model with a `whiten` layer: airbench94)",
                                         low=0, high=1_000_000, metavar="E", group="optimisation", owner="airbench",
                                         unset="always trained")
    # --- measurements during training (basinlab.methods.sharpness_monitor, .lowrank) --------------
    log_sharpness_every: int | None = opt(None, "log lambda_max (Hessian) every k epochs",
                                          low=1, high=1_000_000,
                                          metavar="K", group="measure", owner="sharpness_monitor", unset="never")
    log_sharpness_every_steps: int | None = opt(None, "measure lambda_max, batch sharpness and (Adam) the "
                                                "preconditioned sharpness against their edge every N optimizer "
                                                "steps, in sharpness-steps.csv (the edge of stability, live)",
                                                low=1, high=2**31 - 1, metavar="N", group="measure",
                                                owner="edge_of_stability", unset="never")
    log_trace: bool = opt(False, "with --log-sharpness-every, also log the Hessian trace",
                          group="measure", owner="sharpness_monitor", needs=("log_sharpness_every",))
    hessian_mode: str = opt("train", "with --log-sharpness-every(-steps): the Hessian with BatchNorm on batch "
                                     "statistics "
                                     "(train: what training steps see, which the stability rules assume) or on "
                                     "running statistics (eval)", choices=HESSIAN_MODES,
                            group="measure", owner="sharpness_monitor",
                            needs=("log_sharpness_every", "log_sharpness_every_steps"), legacy="eval")
    sharpness_batches: int = opt(4, "training batches used by --log-sharpness-every(-steps)",
                                 low=1, high=100_000, group="measure", owner="sharpness_monitor",
                                 needs=("log_sharpness_every", "log_sharpness_every_steps"))
    log_lowrank: bool = opt(False, "log low-rank metrics of conv layers each epoch (lowrank.csv)",
                            group="measure", owner="lowrank")
    # --- records ----------------------------------------------------------------------------------
    results_dir: str = opt("./results", "folder holding run folders",
                           group="records", resumable=True)
    save: str | None = opt(None, "run folder name (default: a timestamp); an absolute path is used as it is",
                           "--model-dir",
                           group="records", resumable=True)
    resume: str | None = opt(None, "resume from a run folder or checkpoint file",
                             group="records", unset="a new run", resumable=True)
    overwrite: bool = opt(False, "replace an existing run folder",
                          group="records", resumable=True)
    save_every_steps: int | None = opt(None, "also write last.pt every N optimizer steps",
                                       low=1, high=2**31 - 1,
                                       group="records", unset="only at the end of each epoch", resumable=True)
    save_all: bool = opt(False, "keep epoch_<k>.pt for every epoch",
                         group="records", resumable=True)
    nan_policy: str = opt("stop", "on a non-finite loss: stop (exit 3) or skip the batch and count it",
                          choices=NAN_POLICIES,
                          group="records", resumable=True)
    print_freq: int = opt(0, "log a progress line (loss, top-1, lr, img/s, ETA) every N steps, training and "
                             "validation, to the console and log.txt, and the step's loss to steps.csv "
                             "(plots/loss_steps.png); 0: a bar on a terminal, elsewhere a line every 30 s", "-p",
                          low=0, high=2**31 - 1,
                          group="records", resumable=True)
    quiet: bool = opt(False, "print nothing on the console (log.txt still gets every line)",
                      group="records", resumable=True)
    report: bool = opt(False, "also refresh report.html in the run folder (interactive curves, `basinlab report`; "
                              "needs basinlab[report]) whenever the plots are redrawn",
                       group="records", resumable=True)
    # --- machine and processes --------------------------------------------------------------------
    nproc: int | None = opt(None, "start this many processes with torchrun on this machine",
                            low=1, high=1024,
                            group="machine", unset="one process", resumable=True)
    sync_bn: bool = opt(False, "convert BatchNorm to SyncBatchNorm in distributed runs",
                        group="machine")
    dist_timeout: int = opt(300, "seconds before a stuck collective ends a distributed run",
                            low=1, high=7 * 24 * 3600,
                            group="machine", resumable=True)
    seed: int = opt(0, "random seed of everything (weights, data order, augmentation, dropout)",
                    low=0, high=2**63 - 1,
                    group="machine")
    device: str = opt("auto", "auto|cpu|cuda|cuda:N|mps",
                      group="machine", resumable=True)
    amp: str = opt("none", "mixed precision: bf16 (CUDA, or a CPU with native bfloat16: AVX-512 BF16/AMX), fp16 "
                           "(CUDA), auto (bf16 where the device computes it fast, else none), none (float32, "
                           "bit-reproducible)", choices=AMP_MODES,
                   group="machine")
    eval_amp: str = opt("same", "precision of validation: same as training, or none (float32)",
                        choices=EVAL_AMP_MODES,
                        group="machine", needs=("amp",))
    channels_last: str = opt("auto", "memory format: auto|on|off (auto: channels_last for conv models where faster)",
                             choices=CHANNELS_LAST_MODES,
                             group="machine")
    compile: bool = opt(False, "torch.compile the model",
                        group="machine", resumable=True)

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


RULES = {name: _rule(f) for name, f in FIELDS.items() if field_kind(f.type) is not object}

# How `basinlab train --help` groups the options (each option's `group`; every option in exactly one).
GROUP_TITLES = {
    "general": "general", "model": "model", "data": "data", "optimisation": "optimisation",
    "norm": "normalisation (norm layers, Online Normalization)",
    "asgd": "asynchronous SGD (basinlab.methods.asgd)",
    "flat": "flat minima: SmoothOut, SAM, ASAM (basinlab.methods.flat)",
    "sam_family": "the SAM family: GSAM, Momentum-SAM, LookSAM, SAF and MESA (basinlab.methods.gsam, .msam, "
                  ".looksam, .saf)",
    "measure": "measurements during training (basinlab.methods.sharpness_monitor, basinlab.methods.lowrank)",
    "records": "records", "machine": "machine"}
OPTION_GROUPS = tuple((title, tuple(n for n, f in FIELDS.items() if f.metadata["group"] == key))
                      for key, title in GROUP_TITLES.items())
# What an option left unset means, shown as its default by --help (the field's default is None).
WHEN_UNSET = {n: f.metadata["unset"] for n, f in FIELDS.items() if f.metadata["unset"] is not None}
# Options that may change when a run is resumed: they do not change what is computed.
RESUMABLE = {n for n, f in FIELDS.items() if f.metadata["resumable"]}
# Options added after runs were stored: the value that reproduces what those runs did; a detail option gets
# its legacy value only where its main option was used (else it stays unset).
LEGACY_DEFAULTS = {n: (f.metadata["legacy"], f.metadata["needs"]) for n, f in FIELDS.items()
                   if f.metadata["legacy"] is not _NO_LEGACY}
# Old spellings that keep working, with a one-line note: {old key: new key}.
RENAMED = {"schedule": "worker_order"}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


