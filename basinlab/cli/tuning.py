"""`basinlab autohyper train ...` (the autoHyper seed's command line) and `basinlab lr-range ...`."""
from __future__ import annotations

import argparse
from pathlib import Path

from basinlab.choices import AMP_MODES
from basinlab.cli.options import SEED, integer, number, output_folder
from basinlab.errors import ConfigError
from basinlab.utils.schema import shown

DISTRIBUTED_FLAGS = ("--multiprocessing-distributed", "--dist-url", "--dist-backend", "--world-size", "--rank")


def add_commands(sub) -> None:
    _add_autohyper(sub)
    _add_lr_range(sub)


# ---------------------------------------------------------------------------------------------- autohyper
def _add_autohyper(sub) -> None:
    autohyper = sub.add_parser("autohyper", help="autoHyper: pick the initial lr from low-rank weight metrics "
                                                 "(the seed's `train --config config.yaml`)")
    inner = autohyper.add_subparsers(dest="autohyper_command", required=True, parser_class=type(autohyper))
    train = inner.add_parser("train", help="search the lr (init_lr: auto) and train n_trials times with it")
    train.add_argument("--config", default="config.yaml", help="the seed's YAML config (default: config.yaml)")
    train.add_argument("--data", help="the seed's data folder, torchvision's root (holding cifar-10-batches-py/, "
                                      "cifar-100-python/, MNIST/raw/), or basinlab's datasets folder; relative to "
                                      "--root (default: basinlab's, $BASINLAB_DATASETS)")
    train.add_argument("--output", default=".autohyper-output", help="output folder (default: .autohyper-output)")
    train.add_argument("--checkpoint", help="accepted for the seed's scripts: checkpoints live in each run folder")
    train.add_argument("--resume", help="an autoHyper output folder, or a run folder / checkpoint inside one: "
                                        "continue it (rerunning with the same --output does the same)")
    train.add_argument("--root", default=".", help="folder that --data, --output and --checkpoint are relative to")
    train.add_argument("--save-freq", type=integer(1, 100_000), default=25, help="keep epoch_<k>.pt every k epochs "
                                                                                 "of a full training")
    train.add_argument("--cpu", action="store_true", help="train on the CPU")
    train.add_argument("--amp", choices=AMP_MODES, default="none",
                       help="mixed precision of every trial and training, as basinlab train's --amp (default: none)")
    train.add_argument("--gpu", type=integer(0, 1024), help="CUDA device index (default: auto)")
    train.add_argument("--search", default="lr", choices=("lr", "lr+wd"),
                       help="lr: autoHyper's lr search (master branch); lr+wd: the joint trust-region search")
    train.add_argument("--seed", type=SEED, help="seed of every trial and of the first full training (overrides the "
                                                "config)")
    train.add_argument("--quiet", action="store_true", help="print only the chosen lr and the summary")
    for flag in DISTRIBUTED_FLAGS:  # the seed's distributed flags: refused with a clear message
        train.add_argument(flag, dest="distributed_" + flag.strip("-").replace("-", "_"), nargs="?", const=True,
                           help=argparse.SUPPRESS)
    train.set_defaults(func=cmd_autohyper_train)


def cmd_autohyper_train(args) -> int:
    from basinlab.workflows.autohyper import run_autohyper
    used = [f for f in DISTRIBUTED_FLAGS if getattr(args, "distributed_" + f.strip("-").replace("-", "_")) is not None]
    if used:
        raise ConfigError(f"{used[0]} is not supported by basinlab autohyper; each training runs in this process "
                          f"(use `basinlab train --nproc N` for one distributed training)")
    root = Path(args.root).expanduser()
    output = _output_folder(args, root)
    echo = (lambda line: None) if args.quiet else print
    if args.checkpoint:
        echo(f"note: --checkpoint {args.checkpoint}: checkpoints are kept in each run folder under {output}")
    summary = run_autohyper(args.config, output, device=_device(args), save_freq=args.save_freq, search=args.search,
                            amp=args.amp,
                            datasets_dir=str(root / Path(args.data).expanduser()) if args.data else None,
                            seed=args.seed, echo=echo)
    print(f"autoHyper output: {output}")
    if len(summary):
        columns = ["lr", "weight_decay", "source", "trial", "status", "epochs", "best_val_acc1"]
        print(summary[columns].to_string(index=False))
    return 0


def _device(args) -> str:
    if args.cpu:
        return "cpu"
    return "auto" if args.gpu is None else f"cuda:{args.gpu}"


def _output_folder(args, root: Path) -> Path:
    """--output, or the autoHyper folder that --resume names (itself or an ancestor of it)."""
    from basinlab.workflows.autohyper import STATE_FILE
    if not args.resume:
        return root / Path(args.output).expanduser()
    try:
        path = Path(args.resume).expanduser().resolve()
        found = next((c for c in (path, *path.parents) if (c / STATE_FILE).is_file()), None)
    except (OSError, RuntimeError) as exc:  # a name longer than the file system allows; a symlink loop
        raise ConfigError(f"--resume {shown(args.resume)}: {getattr(exc, 'strerror', None) or exc}") from None
    if found is None:
        raise ConfigError(f"--resume {shown(args.resume)}: no autoHyper output folder ({STATE_FILE}) there or "
                          f"above it")
    return found


# ---------------------------------------------------------------------------------------------- lr-range
def _add_lr_range(sub) -> None:
    from basinlab.cli.options import add_config_options
    lr_range = sub.add_parser("lr-range", help="LR range test (Smith) on the model, data and optimizer of a train "
                                               "config")
    lr_range.add_argument("--config", help="YAML file of train options")
    add_config_options(lr_range)
    lr_range.add_argument("--start-lr", type=number(above=0), default=1e-7, help="first lr of the sweep (default 1e-7)")
    lr_range.add_argument("--end-lr", type=number(above=0), default=10.0, help="last lr of the sweep (default 10)")
    lr_range.add_argument("--num-steps", type=integer(2, 1_000_000), default=100, help="optimizer steps of the "
                                                                                       "sweep (default 100)")
    lr_range.add_argument("--smooth", type=number(0.0, 1.0, high_open=True), default=0.98,
                          help="EMA factor of the smoothed loss (default 0.98)")
    lr_range.add_argument("--diverge-factor", type=number(above=1), default=4.0,
                          help="stop when the smoothed loss exceeds this times its best (default 4)")
    lr_range.add_argument("-o", "--output", type=output_folder, default="lr-range",
                          help="folder for lr_range.csv/.png/.json (default lr-range)")
    lr_range.set_defaults(func=cmd_lr_range)


def cmd_lr_range(args) -> int:
    from basinlab.cli.options import build_train_config
    from basinlab.workflows.lr_range import run_lr_range
    if getattr(args, "resume", None):
        raise ConfigError("lr-range starts from a fresh model; --resume is not allowed here")
    cfg = build_train_config(args)
    result = run_lr_range(cfg, args.output, start_lr=args.start_lr, end_lr=args.end_lr, num_steps=args.num_steps,
                          smooth=args.smooth, diverge_factor=args.diverge_factor)
    print(f"LR range test: {len(result.lrs)} steps from {result.lrs[0]:.3g} to {result.lrs[-1]:.3g} "
          f"({result.stop_reason})")
    for name, lr in result.suggestions.items():
        print(f"  {name:10s} {lr:.4g}")
    print(f"wrote {Path(args.output) / 'lr_range.csv'}, lr_range.png, lr_range.json")
    return 0
