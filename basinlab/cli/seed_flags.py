"""The seeds' command-line flags and what each means in every basinlab command (one table, SEED_FLAGS).

The four seeds are the research codebases basinlab reproduces: convNet.pytorch / At Stability's Edge (`main.py`),
Online Normalization (`cifar10_main.py DIR`), SmoothOut (`main_gbn.py`, `evaluate.py`, `*_sharpness.py`) and
autoHyper (`python -m autohyper train`). A flag typed in a basinlab command that lacks it is answered with its
row's text for that command (basinlab.cli.options.ArgumentParser); docs/seeds.md shows the same table.

A text names the basinlab options of the command it is for, or another command in backticks
(`basinlab evaluate CHECKPOINT`); "no equivalent: ..." says why there is none. tests/test_hints.py checks every
text against every command's parser.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SAME = "same"  # basinlab has the option with this spelling and meaning

# Every basinlab command that takes options (the leaves of the command tree). A row's keyword names a group.
COMMANDS = ("train", "lr-range", "evaluate", "sharpness", "landscape interpolate", "landscape directions",
            "landscape trajectory", "autohyper train", "sweep", "stability", "plot", "export", "report", "list",
            "data download")
_GROUPS = {  # keyword -> commands; a smaller group's text wins over a larger one's
    "train": ("train", "lr-range"),  # the same training options
    "readers": ("evaluate", "sharpness", "landscape interpolate", "landscape directions",  # measure a checkpoint
                "landscape trajectory"),
    "measure": ("sharpness", "landscape interpolate", "landscape directions", "landscape trajectory"),
    "landscape": ("landscape interpolate", "landscape directions", "landscape trajectory"),
    "lr_range": ("lr-range",), "evaluate": ("evaluate",), "sharpness": ("sharpness",),
    "interpolate": ("landscape interpolate",), "directions": ("landscape directions",),
    "trajectory": ("landscape trajectory",),
    "autohyper": ("autohyper train",), "sweep": ("sweep",), "stability": ("stability",), "plot": ("plot",),
    "export": ("export",), "report": ("report",), "download": ("data download",),
}

# The seeds' scripts: the basinlab command each became, its seed, and options that say what the script measured
# (a seed line pasted after `basinlab` is answered with these)
SEED_SCRIPTS = {
    "main.py": ("train", "convNet / At Stability's Edge", ""),
    "main_gbn.py": ("train", "SmoothOut", ""),
    "cifar10_main.py": ("train", "Online Normalization", ""),
    "cifar100_main.py": ("train", "Online Normalization", ""),
    "imagenet_main.py": ("train", "Online Normalization", ""),
    "evaluate.py": ("evaluate", "SmoothOut", ""),
    "measure_sharpness.py": ("sharpness", "SmoothOut", "--measure keskar"),
    "visualize_sharpness.py": ("landscape interpolate", "SmoothOut", ""),
    "visualize2_sharpness.py": ("landscape directions", "SmoothOut", ""),
    "train.py": ("autohyper train", "autoHyper", ""),
    "autohyper": ("autohyper train", "autoHyper", ""),  # python -m autohyper train
}


@dataclass(frozen=True)
class SeedFlag:
    """One seed flag (all its spellings): how many values it takes and its text per basinlab command."""

    spellings: tuple[str, ...]
    values: int | str  # 0, 1 or "+" (one or more)
    metavar: str
    seeds: str
    texts: dict[str, str] = field(default_factory=dict)  # command -> text (SAME: basinlab's own option)
    other: str = ""  # every command not in texts

    def text(self, command: str) -> str:
        return self.texts.get(command, self.other)


def _row(spellings, values, metavar, seeds, *, key=None, train_flag=None, other=None, **by_group) -> SeedFlag:
    """A row; `key` (the train option's name) fills in the sweep, autoHyper, checkpoint and other texts that
    every training option shares, unless given; `train_flag` is what the other text shows (default: the seed's
    spelling where train has it, else the option of `key`, with the metavar)."""
    spellings = (spellings,) if isinstance(spellings, str) else tuple(spellings)
    if key is not None:
        by_group.setdefault("sweep", f"{key}: in the spec's base or grid")
        by_group.setdefault("autohyper", "no equivalent: autoHyper's trainings take their settings from the YAML "
                                         "config (--config)")
        by_group.setdefault("readers", "no equivalent: a training setting, fixed by the checkpoint's run")
        if train_flag is None:
            same = by_group.get("train") == SAME
            train_flag = next(s for s in spellings if s.startswith("--")) if same else "--" + key.replace("_", "-")
            train_flag = f"{train_flag} {metavar}" if values else train_flag
        if other is None:
            other = f"no equivalent: a training option (`basinlab train {train_flag}`)"
    unknown = set(by_group) - set(_GROUPS)
    if unknown:  # a misspelt group would silently never be shown
        raise ValueError(f"seed flag {spellings[0]}: no command group {sorted(unknown)}")
    texts: dict[str, str] = {}
    for group in sorted(by_group, key=lambda g: -len(_GROUPS[g])):
        for command in _GROUPS[group]:
            texts[command] = by_group[group]
    return SeedFlag(spellings, values, metavar, seeds, texts, other or "no equivalent in this command")


CONVNET, ONLINE_NORM, SMOOTHOUT, AUTOHYPER = "convNet", "Online Normalization", "SmoothOut", "autoHyper"
_CHECKPOINT_MODEL = "no equivalent: the checkpoint names its model"
_NORM_LAYERS = "no equivalent: the checkpoint's model has its norm layers"
_POSITIONAL = "give the checkpoint as the positional CHECKPOINT"
_TWO_POSITIONALS = "give the checkpoints as the positionals CHECKPOINT_A CHECKPOINT_B"
_RUN_FOLDER = "no equivalent: evaluate writes no run folder (--output FILE writes its result as CSV)"
_DATA_REGIME = ("the model config's data_regime: --model-config \"{{'data_regime': [{{'epoch': 0, '{key}': "
                "{value}}}]}}\"")


def _data_regime_row(flag, key, value, seeds, readers):
    text = _DATA_REGIME.format(key=key, value=value)
    return _row(flag, 1, value, seeds, train=text, readers=readers,
                autohyper="model_config: {data_regime: [...]} in the YAML config (--config)",
                sweep="model_config: {data_regime: [...]} in the spec's base or grid",
                other="no equivalent: a data_regime key of `basinlab train --model-config DICT`")


ROWS = (
    # ---- convNet.pytorch / At Stability's Edge main.py (also the SmoothOut and Online Normalization scripts)
    _row(("--model", "-a", "--arch"), 1, "NAME", f"{CONVNET}, {SMOOTHOUT}, {ONLINE_NORM}", key="model",
         train=SAME, readers=_CHECKPOINT_MODEL, autohyper="network: in the YAML config (--config)"),
    _row("--model-config", 1, "DICT", CONVNET, key="model_config", train=SAME, readers=_CHECKPOINT_MODEL,
         autohyper="model_config: in the YAML config (--config)"),
    _row(("-d", "--depth"), 1, "D", ONLINE_NORM, key="depth", train=SAME, readers=_CHECKPOINT_MODEL,
         autohyper="network: in the YAML config (ResNet18CIFAR, ResNet34, ...)"),
    _row("--dataset", 1, "NAME", f"{CONVNET}, {SMOOTHOUT}", key="dataset", train=SAME, evaluate=SAME,
         measure="no equivalent: the run's own dataset is measured (its folder: --datasets-dir DIR)",
         autohyper="dataset: in the YAML config (--config)"),
    _row("--datasets-dir", 1, "DIR", CONVNET, key="datasets_dir", train=SAME, readers=SAME, download=SAME,
         autohyper="use --data DIR"),
    _row("--results-dir", 1, "DIR", CONVNET, key="results_dir", train=SAME, sweep=SAME,
         autohyper="use --output DIR", evaluate=_RUN_FOLDER, measure="use -o/--output", stability="use --csv FILE",
         plot="use -o/--output FILE", export="use -o/--output FILE", report="use -o/--output FILE"),
    _row(("--save", "--model-dir"), 1, "NAME", f"{CONVNET}, {ONLINE_NORM}", key="save", train=SAME,
         autohyper="use --output DIR", evaluate=_RUN_FOLDER, measure="use -o/--output", stability="use --csv FILE",
         sweep="use --results-dir DIR", plot="use -o/--output FILE", export="use -o/--output FILE",
         report="use -o/--output FILE"),
    _row(("-b", "--batch-size"), 1, "N", f"{CONVNET}, {SMOOTHOUT}, {ONLINE_NORM}", key="batch_size", train=SAME,
         readers=SAME, autohyper="mini_batch_size: in the YAML config (--config)"),
    _row("--b", 1, "N", SMOOTHOUT, train="use -b/--batch-size N", readers="use -b/--batch-size N",
         autohyper="mini_batch_size: in the YAML config (--config)", sweep="batch_size: in the spec's base or grid",
         other="no equivalent: a batch size is `basinlab train -b N`"),
    _row("--epochs", 1, "N", f"{CONVNET}, {ONLINE_NORM}", key="epochs", train=SAME,
         autohyper="max_epochs: in the YAML config (trial_epochs for the search)",
         evaluate="no equivalent: evaluate measures one checkpoint (a run folder's best.pt, or the file named)",
         measure="no equivalent: it measures one checkpoint of the run (--which best|last)"),
    _row("--eval-batch-size", 1, "N", CONVNET, key="eval_batch_size", train=SAME, readers="use -b/--batch-size N"),
    _row("--optimizer", 1, "NAME", CONVNET, key="optimizer", train=SAME,
         autohyper="optimizer: in the YAML config (--config)"),
    _row(("--lr", "--learning-rate"), 1, "LR", f"{CONVNET}, {ONLINE_NORM}", key="lr", train=SAME,
         autohyper="init_lr: in the YAML config (auto: searched)"),
    _row("--momentum", 1, "M", f"{CONVNET}, {ONLINE_NORM}", key="momentum", train=SAME, stability=SAME,
         autohyper="optimizer_kwargs: {momentum: M} in the YAML config (--config)"),
    _row(("--wd", "--weight-decay"), 1, "W", f"{CONVNET}, {ONLINE_NORM}", key="weight_decay", train=SAME,
         autohyper="optimizer_kwargs: {weight_decay: W} in the YAML config, or --search lr+wd"),
    _row("--lr-milestones", "+", "EPOCH", ONLINE_NORM, key="lr_milestones", train=SAME,
         autohyper="scheduler and scheduler_kwargs: in the YAML config (--config)"),
    _row("--lr-multiplier", 1, "M", ONLINE_NORM, key="lr_multiplier", train=SAME,
         autohyper="scheduler and scheduler_kwargs: in the YAML config (--config)"),
    _row("--label-smoothing", 1, "E", CONVNET, key="label_smoothing", train=SAME,
         autohyper="no equivalent: autoHyper's loss is cross_entropy"),
    _row("--grad-clip", 1, "C", CONVNET, key="grad_clip", train=SAME),
    _row("--seed", 1, "N", f"{CONVNET}, {ONLINE_NORM}", key="seed", train=SAME, evaluate=SAME, sharpness=SAME,
         directions=SAME, autohyper=SAME, interpolate="no equivalent: interpolation draws nothing at random",
         sweep="seeds: in the spec (one run per seed)"),
    _row("--resume", 1, "PATH", f"{CONVNET}, {ONLINE_NORM}, {AUTOHYPER}", key="resume", train=SAME,
         lr_range="--resume is refused: lr-range starts from a fresh model", autohyper=SAME,
         readers=_POSITIONAL, interpolate=_TWO_POSITIONALS,
         sweep="no equivalent: rerun the same command and the sweep goes on where it stopped"),
    _row(("-e", "--evaluate"), 1, "PATH", f"{CONVNET}, {SMOOTHOUT}, {ONLINE_NORM}",
         train="use `basinlab evaluate CHECKPOINT`", readers=_POSITIONAL, interpolate=_TWO_POSITIONALS,
         other="use `basinlab evaluate CHECKPOINT`"),
    _row("--start-epoch", 1, "N", f"{CONVNET}, {ONLINE_NORM}",
         train="use --resume RUN: the epoch to start from is in the run's checkpoint",
         lr_range="no equivalent: lr-range starts from a fresh model",
         autohyper="use --resume FOLDER (or rerun with the same --output)",
         other="no equivalent: a run resumes with `basinlab train --resume RUN`"),
    _row(("-p", "--print-freq"), 1, "N", f"{CONVNET}, {ONLINE_NORM}", key="print_freq", train=SAME),
    _row(("-j", "--workers"), 1, "N", f"{CONVNET}, {ONLINE_NORM}", key="data_workers",
         train="-j is the same, but --workers N here is the simulated A-SGD workers (data loaders: "
               "-j/--data-workers N)",
         autohyper="num_workers: in the YAML config (--config)",
         other="no equivalent: data loaders are `basinlab train -j N`"),
    _row("--device", 1, "DEV", CONVNET, key="device", train=SAME, readers=SAME, autohyper="use --cpu or --gpu N"),
    _row("--dtype", 1, "TYPE", CONVNET, train="use --amp bf16|fp16 (mixed precision, the weights stay float32)",
         autohyper="use --amp bf16|fp16", sharpness="use --float64 for float64",
         evaluate="no equivalent: evaluate has no precision option",
         landscape="no equivalent: the landscape views have no precision option",
         sweep="amp: in the spec's base or grid", other="no equivalent: mixed precision is `basinlab train --amp`"),
    _row(("--local_rank", "--local-rank"), 1, "N", CONVNET,
         train="no equivalent: --nproc N starts torchrun, which gives each process its rank",
         other="no equivalent: only `basinlab train --nproc N` starts several processes"),
    _row("--gpus", 1, "IDS", f"{CONVNET}, {SMOOTHOUT}",
         train="use --device cuda:N for one GPU, or --nproc N for N processes",
         lr_range="use --device cuda:N (one process)", readers="use --device cuda:N", autohyper="use --gpu N",
         sweep="use --gpus-per-run N (with --backend slurm)",
         other="no equivalent: a GPU is `basinlab train --device cuda:N`"),
    _row(("--workers_num", "--workers-num"), 1, "N", CONVNET, key="workers", train=SAME,
         stability="no equivalent: the table is by delay, --delays TAU (pure A-SGD with N workers: delay N-1)",
         other="no equivalent: simulated A-SGD workers are `basinlab train --server asgd --workers N`"),
    _row("--server", 1, "MODE", CONVNET, key="server", train=SAME,
         stability="use --kind standard (asgd: momentum at the server) or shifted (msgd: momentum per worker)"),
    _row("--pretrained", 0, "", ONLINE_NORM,
         other="no equivalent: basinlab trains from scratch (trained weights: basinlab.load_run(RUN).model)"),
    _data_regime_row("--input-size", "input_size", "N", CONVNET,
                     readers="no equivalent: the run's data regime gives the input size"),
    _data_regime_row("--cutout", "cutout", "N", CONVNET, readers="no equivalent: cutout augments training only"),
    _data_regime_row("--duplicates", "duplicates", "M", CONVNET,
                     readers="no equivalent: duplicates multiply training batches only"),
    _row("--autoaugment", 0, "", CONVNET,
         other="no equivalent: basinlab has no AutoAugment (a data_regime's autoaugment key is refused)"),
    # ---- Online Normalization cifar10_main.py / cifar100_main.py / imagenet_main.py
    _row(("--norm-mode",), 1, "NORM", ONLINE_NORM, key="norm_mode", train=SAME, readers=_NORM_LAYERS,
         autohyper="model_config: {norm: NORM} in the YAML config (--config)"),
    _row(("--afwd", "--decay-factor-forward"), 1, "AFWD", ONLINE_NORM, key="afwd", train=SAME, readers=_NORM_LAYERS),
    _row(("--abkw", "--decay-factor-backward"), 1, "ABKW", ONLINE_NORM, key="abkw", train=SAME,
         readers=_NORM_LAYERS),
    _row("--ecm", 1, "ECM", ONLINE_NORM, key="ecm", train=SAME, readers=_NORM_LAYERS),
    _row("--gn-num-groups", 1, "N", ONLINE_NORM, key="gn_num_groups", train=SAME, readers=_NORM_LAYERS),
    _row(("-h", "--help"), 0, "", "all", other=SAME),
    # ---- SmoothOut main_gbn.py, evaluate.py, measure_sharpness.py, visualize*_sharpness.py
    _row("--ss", 1, "A", SMOOTHOUT, key="smoothout", train="use --smoothout A (the SmoothOut noise strength)",
         evaluate="use --noise A (with --noise-include-bn as the seed's evaluate.py)",
         measure="no equivalent: noise at evaluation is `basinlab evaluate CHECKPOINT --noise A`",
         other="no equivalent: SmoothOut is `basinlab train --smoothout A`, noisy evaluation `basinlab evaluate "
               "CHECKPOINT --noise A`"),
    _row("--smoothout", 1, "A", SMOOTHOUT, key="smoothout", train=SAME, evaluate="use --noise A",
         measure="no equivalent: noise at evaluation is `basinlab evaluate CHECKPOINT --noise A`"),
    _row("--mode", 1, "SPLIT", SMOOTHOUT, evaluate="use --split train|val", sharpness="use --split train|val",
         landscape="use --split train|val (one or both)",
         other="no equivalent: the seed's --mode is evaluate.py's split, `basinlab evaluate CHECKPOINT --split "
               "train|val`"),
    _row("--no-augment", 0, "", SMOOTHOUT, key="augment", train=SAME, sweep="augment: false in the spec's base or grid",
         readers="no equivalent: measurements never augment the data"),
    _row("--slave-evaluate", 1, "PATH", SMOOTHOUT, interpolate="give it as the second positional CHECKPOINT_B",
         other="no equivalent: two models are compared by `basinlab landscape interpolate CHECKPOINT_A "
               "CHECKPOINT_B`"),
    _row("--no-visualize_train", 0, "", SMOOTHOUT, landscape="use --split val (the default is both: train val)",
         other="no equivalent: `basinlab landscape directions CHECKPOINT --split val` leaves out training data"),
    _row("--visualize_train", 0, "", SMOOTHOUT, landscape="the default (--split train val)",
         other="no equivalent: `basinlab landscape directions CHECKPOINT --split train val` is the default"),
    _row("--alpha", 1, "RANGE", SMOOTHOUT, landscape=SAME,
         other="no equivalent: `basinlab landscape directions CHECKPOINT --alpha START:STEP:STOP`"),
    _row(("-mb", "--mini-batch-size"), 1, "M", SMOOTHOUT, key="ghost_batch",
         train="use --ghost-batch M (the seed's mini-batch inside a large batch)"),
    _row("--lr_bb_fix", 0, "", SMOOTHOUT, key="lr_scale_batch", train_flag="--lr-scale-batch sqrt",
         sweep="lr_scale_batch: sqrt in the spec's base or grid",
         train="use --lr-scale-batch sqrt"),
    _row("--adapt-type", 1, "TYPE", SMOOTHOUT, key="smoothout_adapt", train="use --smoothout-adapt none|weight|filter",
         evaluate="use --noise-adapt none|weight|filter"),
    _row("--noise-type", 1, "TYPE", SMOOTHOUT, key="smoothout_noise", train="use --smoothout-noise uniform|normal",
         evaluate=SAME),
    _row("--smoothing-type", 1, "TYPE", SMOOTHOUT, key="smoothout_schedule",
         train="use --smoothout-schedule constant|anneal|tanh",
         evaluate="no equivalent: evaluation noise has one strength (--noise A), no schedule"),
    _row("--no-exclude-bn", 0, "", SMOOTHOUT, key="smoothout_include_bn", train="use --smoothout-include-bn",
         sweep="smoothout_include_bn: true in the spec's base or grid",
         evaluate="use --noise-include-bn"),
    _row("--exclude-bn", 0, "", SMOOTHOUT, key="smoothout_include_bn", train_flag="--no-smoothout-include-bn",
         sweep="the default (smoothout_include_bn: false)",
         train="the default (--no-smoothout-include-bn)", evaluate="the default (without --noise-include-bn)"),
    _row(("--denoise", "--no-denoise"), 0, "", SMOOTHOUT, key="denoise", train=SAME,
         evaluate="no equivalent: evaluation removes the noise after every batch"),
    # ---- autoHyper: python -m autohyper train
    _row("--config", 1, "FILE", AUTOHYPER, train=SAME, autohyper=SAME,
         sweep="give the spec as the positional SPEC.yaml",
         other="no equivalent: `basinlab train --config FILE` reads a YAML of options"),
    _row("--data", 1, "DIR", AUTOHYPER, key="datasets_dir", train="use --datasets-dir DIR (or the positional DIR)",
         lr_range="use --datasets-dir DIR", readers="use --datasets-dir DIR", download="use --datasets-dir DIR",
         autohyper=SAME),
    _row("--output", 1, "DIR", AUTOHYPER, train="use --results-dir DIR and --save NAME (the run folder)",
         lr_range=SAME, readers=SAME, autohyper=SAME, plot=SAME, export=SAME, report=SAME,
         stability="use --csv FILE", sweep="use --results-dir DIR",
         other="no equivalent: this command writes nothing"),
    _row("--checkpoint", 1, "DIR", AUTOHYPER, autohyper=SAME,
         train="no equivalent: checkpoints live in the run folder (--results-dir, --save)",
         readers=_POSITIONAL, interpolate=_TWO_POSITIONALS,
         other="no equivalent: checkpoints live in each run folder"),
    _row("--root", 1, "DIR", AUTOHYPER, autohyper=SAME,
         other="no equivalent: paths are relative to the current folder"),
    _row("--save-freq", 1, "N", AUTOHYPER, autohyper=SAME, sweep="save_all: true in the spec's base",
         train="use --save-all (epoch_<k>.pt of every epoch) or --save-every-steps N",
         other="no equivalent: checkpoints are kept by `basinlab train --save-all`"),
    _row("--cpu", 0, "", AUTOHYPER, train="use --device cpu", readers="use --device cpu", autohyper=SAME,
         sweep="device: cpu in the spec's base", other="no equivalent: a device is `basinlab train --device cpu`"),
    _row("--gpu", 1, "N", AUTOHYPER, train="use --device cuda:N", readers="use --device cuda:N", autohyper=SAME,
         sweep="use --gpus-per-run N (with --backend slurm)",
         other="no equivalent: a device is `basinlab train --device cuda:N`"),
    _row("--multiprocessing-distributed", 0, "", AUTOHYPER, train="use --nproc N (torchrun on this machine)",
         autohyper="--multiprocessing-distributed is refused: each training runs in this process",
         other="no equivalent: distributed training is `basinlab train --nproc N`"),
    _row("--dist-url", 1, "URL", AUTOHYPER, train="no equivalent: --nproc N starts torchrun on this machine",
         autohyper="--dist-url is refused: each training runs in this process",
         other="no equivalent: distributed training is `basinlab train --nproc N`"),
    _row("--dist-backend", 1, "NAME", AUTOHYPER,
         train="no equivalent: --nproc N uses gloo on the CPU and nccl on GPUs",
         autohyper="--dist-backend is refused: each training runs in this process",
         other="no equivalent: distributed training is `basinlab train --nproc N`"),
    _row("--world-size", 1, "N", AUTOHYPER, train="use --nproc N (processes on this machine)",
         autohyper="--world-size is refused: each training runs in this process",
         other="no equivalent: distributed training is `basinlab train --nproc N`"),
    _row("--rank", 1, "N", AUTOHYPER, train="no equivalent: --nproc N starts torchrun, which ranks the processes",
         autohyper="--rank is refused: each training runs in this process",
         other="no equivalent: distributed training is `basinlab train --nproc N`"),
)

SEED_FLAGS: dict[str, SeedFlag] = {spelling: row for row in ROWS for spelling in row.spellings}


def _normal(flag: str) -> str:
    return flag.lower().replace("_", "-")


_BY_NORMAL = {_normal(spelling): row for spelling, row in SEED_FLAGS.items()}


def seed_flag(flag: str) -> SeedFlag | None:
    """The row of a seed flag as typed, or with `_` for `-` (`--adapt_type`), or None."""
    return SEED_FLAGS.get(flag) or _BY_NORMAL.get(_normal(flag))


def markdown_table() -> str:
    """The table as Markdown for docs/seeds.md (train's column also holds lr-range's where it differs)."""
    columns = (("train", ("train", "lr-range")), ("evaluate", ("evaluate",)), ("sharpness", ("sharpness",)),
               ("landscape", ("landscape interpolate", "landscape directions", "landscape trajectory")),
               ("autohyper train", ("autohyper train",)), ("sweep", ("sweep",)))
    lines = ["| seed flag | seed | " + " | ".join(name for name, _ in columns) + " | other commands |",
             "|" + "---|" * (len(columns) + 3)]
    for row in ROWS:
        cells = [", ".join(f"`{s}`" for s in row.spellings), row.seeds]
        for _, commands in columns:
            texts = [(command, row.text(command)) for command in commands]
            if len({text for _, text in texts}) == 1:
                cells.append(_cell(texts[0][1]))
            else:
                cells.append("<br>".join(f"{command.split()[-1]}: {_cell(text)}" for command, text in texts))
        cells.append(_cell(row.other))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    if text == SAME:
        return "same"
    return text.replace("|", "\\|")
