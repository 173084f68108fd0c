"""`basinlab train` and `basinlab list`."""
from __future__ import annotations

from basinlab.cli.options import add_config_options, build_train_config


def add_commands(sub) -> None:
    train = sub.add_parser("train", help="train a model (default: a small CNN on 5,000 embedded MNIST digits)",
                           usage="basinlab train [--config FILE] [options]")
    train.add_argument("--config", help="YAML file of options (keys are the long flag names)")
    train.add_argument("data_dir", nargs="?", metavar="DIR", help="the seeds' positional data folder: the same as "
                                                                  "--datasets-dir DIR")
    add_config_options(train)
    train.add_argument("--dry-run", action="store_true",
                       help="set the run up (options, data found and read, model, regime, methods) and print its setup "
                            "log, then stop: nothing is written")
    train.set_defaults(func=cmd_train)

    lst = sub.add_parser("list", help="list models, datasets and presets")
    lst.set_defaults(func=cmd_list)


def cmd_train(args) -> int:
    from basinlab.engine.launch import launch_requested, record_errors, relaunch_with_torchrun
    if launch_requested(args):  # --nproc K: this process only checks the options, starts torchrun and waits
        return relaunch_with_torchrun(args, _checked_config)
    from basinlab.api import train
    from basinlab.records.run_folder import is_main_process
    cfg = build_train_config(args)
    if args.dry_run:
        from basinlab.api import build_run
        build_run(cfg.replace(quiet=False)).setup(dry_run=True)
        return 0
    run = record_errors(train)(cfg)
    if isinstance(run, int):  # a --real worker rank under torchrun: its exit status
        return run
    if not cfg.quiet and is_main_process():
        best = run.best or {}
        print(f"run folder: {run.path} (best val top-1 {best.get('val_acc1', float('nan')):.2f}% "
              f"at epoch {best.get('epoch')})")
    return 0


def _checked_config(args, world_size: int):
    """The config of `args`, with every method's checks for a `world_size`-process job (before launching)."""
    from basinlab.methods.registry import build_method
    cfg = build_train_config(args)
    build_method(cfg, world_size)
    return cfg


def cmd_list(args) -> int:
    from basinlab.data import DATASETS
    from basinlab.models import list_models
    from basinlab.presets import all_presets
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
