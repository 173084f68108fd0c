"""The `basinlab` command. Each subcommand is a small function; options come from basinlab.config.

Exit statuses: 0 done, 2 bad input (one line on stderr), 3 non-finite loss, 128+N stopped by signal N.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import FIELDS, TrainConfig, load_yaml, make_config
from .errors import BasinlabError, ConfigError, NonFiniteLossError

class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as our one-line errors (exit 2)."""

    def error(self, message):
        raise ConfigError(f"{self.prog}: {message}")


def _field_type(annotation):
    """The Python type argparse should convert a field's value to."""
    names = str(annotation)
    for candidate, kind in (("bool", bool), ("int", int), ("float", float), ("list", list)):
        if names.startswith(candidate) or names.startswith(f"{candidate} |"):
            return kind
    return str


def add_config_options(parser: argparse.ArgumentParser, fields=None) -> None:
    """One flag per config field; defaults are suppressed so only what the user typed is returned."""
    for name, field in (fields or FIELDS).items():
        long_flag = "--" + name.replace("_", "-")
        flags = [long_flag, *field.metadata.get("flags", ())]
        extra = dict(field.metadata.get("argparse", {}))
        kind = _field_type(field.type)
        if kind is bool:
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=field.metadata["help"])
            continue
        if kind is not list:
            extra.setdefault("type", kind)
        parser.add_argument(*flags, dest=name, default=argparse.SUPPRESS, help=field.metadata["help"], **extra)


def train_options(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k in FIELDS}


def build_train_config(args: argparse.Namespace) -> TrainConfig:
    """--config file, then the command line on top; on --resume, the checkpoint's config."""
    given = train_options(args)
    base = load_yaml(args.config) if getattr(args, "config", None) and not given.get("resume") else {}
    return make_config(base, **given)


# ---------------------------------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    from .engine.launch import launch_requested, record_errors, relaunch_with_torchrun
    if launch_requested(args):  # --nproc K: this process only starts torchrun and waits
        return relaunch_with_torchrun(args, build_train_config)
    from .engine.run import is_main_process
    from .engine.trainer import Trainer
    from .methods import build_method
    cfg = build_train_config(args)
    strategy, callbacks = build_method(cfg)
    run = record_errors(Trainer(cfg, strategy=strategy, callbacks=callbacks).fit)()
    if not cfg.quiet and is_main_process():
        best = run.best or {}
        print(f"run folder: {run.path} (best val top-1 {best.get('val_acc1', float('nan')):.2f}% "
              f"at epoch {best.get('epoch')})")
    return 0


def cmd_list(args) -> int:
    from .data import DATASETS
    from .models import list_models
    from .presets import all_presets
    print("models:   " + ", ".join(list_models()))
    print("datasets:")
    for name, info in DATASETS.items():
        print(f"  {name:14s} {getattr(info, 'description', '')}")
    print("presets:")
    presets = all_presets()
    width = max(map(len, presets), default=0)
    for name, preset in presets.items():
        print(f"  {name:{width}s}  {preset.get('_about', '')}")
    return 0


def cmd_evaluate(args) -> int:
    from .engine.inspect import evaluate_checkpoint
    noisy = args.noise is not None
    extra = {}
    if noisy:
        extra = dict(noise=args.noise, noise_type=args.noise_type, noise_adapt=args.noise_adapt,
                     noise_samples=args.noise_samples, noise_include_bn=args.noise_include_bn, seed=args.seed)
    result = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, split=args.split,
                                 datasets_dir=args.datasets_dir, batch_size=args.batch_size,
                                 limit=args.limit, device=args.device, **extra)
    if not noisy:
        print(f"{args.split}: loss {result['loss']:.4f} top1 {result['acc1']:.2f}% top5 {result['acc5']:.2f}% "
              f"({result['count']} examples)")
    else:
        print(f"{args.split} under noise A={args.noise:g} ({args.noise_type}, adapt {args.noise_adapt}, "
              f"{result['samples']} draws): loss {result['loss']:.4f} +- {result['loss_std']:.4f} "
              f"top1 {result['acc1']:.2f}% +- {result['acc1_std']:.2f} top5 {result['acc5']:.2f}% "
              f"+- {result['acc5_std']:.2f} ({result['count']} examples)")
    if args.output:
        import pandas as pd
        row = {k: v for k, v in result.items() if k != "draws"}
        if noisy:
            row.update(noise=args.noise, noise_type=args.noise_type, noise_adapt=args.noise_adapt,
                       noise_include_bn=args.noise_include_bn, seed=args.seed)
        pd.DataFrame([{"split": args.split, **row}]).to_csv(args.output, index=False)
    return 0


def cmd_plot(args) -> int:
    from .records.plots import plot_runs
    from .runs import load_run
    runs = {}
    for folder in args.runs:
        run = load_run(folder)
        runs[Path(folder).name] = run.history
    path = plot_runs(runs, args.output)
    print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    from .engine.inspect import export_safetensors
    path = export_safetensors(args.run, args.output, which=args.which)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="basinlab", description="Train CNN image classifiers and study the minima they find.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    train = sub.add_parser("train", help="train a model (default: a small CNN on 5,000 embedded MNIST digits)")
    train.add_argument("--config", help="YAML file of options (keys are the long flag names)")
    add_config_options(train)
    train.set_defaults(func=cmd_train)

    lst = sub.add_parser("list", help="list models, datasets and presets")
    lst.set_defaults(func=cmd_list)

    ev = sub.add_parser("evaluate", help="loss and top-1/top-5 of a checkpoint (the seeds' -e/--evaluate)")
    ev.add_argument("checkpoint", help="checkpoint file or run folder (uses best.pt of a folder)")
    ev.add_argument("--dataset", help="dataset (default: the run's)")
    ev.add_argument("--split", choices=("train", "val"), default="val")
    ev.add_argument("--datasets-dir")
    ev.add_argument("-b", "--batch-size", type=int, default=256)
    ev.add_argument("--limit", type=int, help="first N examples only")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--output", help="also write the result to this CSV")
    ev.add_argument("--noise", type=float, metavar="A",
                    help="evaluate under fresh weight noise of strength A per batch (the SmoothOut seed's --ss)")
    ev.add_argument("--noise-type", choices=("uniform", "normal"), default="uniform",
                    help="noise distribution: U(-A, A) or N(0, A^2) before adaptation")
    ev.add_argument("--noise-adapt", choices=("none", "weight", "filter"), default="none",
                    help="noise scale: absolute, relative to |w|, or per filter norm (AdaSmoothOut)")
    ev.add_argument("--noise-samples", type=int, default=1, metavar="K",
                    help="passes over the split with fresh noise; mean and std over them")
    ev.add_argument("--noise-include-bn", action="store_true",
                    help="also perturb norm-layer affine parameters (the seed's evaluate.py did)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the noise")
    ev.set_defaults(func=cmd_evaluate)

    plot = sub.add_parser("plot", help="overlay the curves of several runs in one PNG")
    plot.add_argument("runs", nargs="+", help="run folders")
    plot.add_argument("-o", "--output", default="runs.png")
    plot.set_defaults(func=cmd_plot)

    export = sub.add_parser("export", help="write a run's model weights as safetensors for sharing")
    export.add_argument("run", help="run folder or checkpoint")
    export.add_argument("--safetensors", action="store_true", default=True, help="(the only format)")
    export.add_argument("--which", choices=("best", "last"), default="best")
    export.add_argument("-o", "--output", help="output file (default: <run>/model.safetensors)")
    export.set_defaults(func=cmd_export)

    from .commands import add_method_commands
    add_method_commands(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (BasinlabError, NonFiniteLossError) as exc:
        if debug:
            raise
        print(f"basinlab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - an interrupted run has its own exit status
        code = getattr(exc, "exit_code", None)
        if code is None or debug:
            raise
        print(f"basinlab: {exc}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
