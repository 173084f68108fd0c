"""`basinlab evaluate`, `basinlab plot` and `basinlab export`: working with finished runs."""
from __future__ import annotations

from pathlib import Path

from basinlab.choices import CHECKPOINTS, NOISE_SCALES, NOISE_TYPES, SPLITS
from basinlab.cli.options import BATCH, COUNT, SEED, add_trust_option, integer, number, output_file


def add_commands(sub) -> None:
    ev = sub.add_parser("evaluate", help="loss and top-1/top-5 of a checkpoint (the seeds' -e/--evaluate)")
    ev.add_argument("checkpoint", help="checkpoint file, run folder (uses best.pt of a folder) or a .safetensors "
                                       "file written by `basinlab export`")
    ev.add_argument("--dataset", help="dataset (default: the run's)")
    ev.add_argument("--split", choices=SPLITS, default="val")
    ev.add_argument("--datasets-dir")
    ev.add_argument("-b", "--batch-size", type=BATCH, default=256)
    ev.add_argument("--limit", type=COUNT, help="N examples (the class-stratified subset; default: the run's own "
                                                "--val-limit/--train-limit)")
    ev.add_argument("--full-split", action="store_true", help="the whole split, not the run's subset")
    ev.add_argument("--device", default="auto")
    add_trust_option(ev)
    ev.add_argument("--output", type=output_file, help="also write the result to this CSV")
    ev.add_argument("--noise", type=number(0.0), metavar="A",
                    help="evaluate under fresh weight noise of strength A per batch (the SmoothOut seed's --ss)")
    ev.add_argument("--noise-type", choices=NOISE_TYPES, default="uniform",
                    help="noise distribution: U(-A, A) or N(0, A^2) before adaptation")
    ev.add_argument("--noise-adapt", choices=NOISE_SCALES, default="none",
                    help="noise scale: absolute, relative to |w|, or per filter norm (AdaSmoothOut)")
    ev.add_argument("--noise-samples", type=integer(1, 10_000), default=1, metavar="K",
                    help="passes over the split with fresh noise; mean and std over them")
    ev.add_argument("--noise-include-bn", action="store_true",
                    help="also perturb norm-layer affine parameters (the seed's evaluate.py did)")
    ev.add_argument("--seed", type=SEED, default=0, help="seed of the noise")
    ev.set_defaults(func=cmd_evaluate)

    plot = sub.add_parser("plot", help="overlay the curves of several runs in one PNG (one colour per run, "
                                       "train dashed, validation solid)")
    plot.add_argument("runs", nargs="+", help="run folders")
    plot.add_argument("-o", "--output", type=output_file, default="runs.png", help="the PNG (default: runs.png)")
    plot.add_argument("--title", default="", help="the figure's title (default: none)")
    plot.set_defaults(func=cmd_plot)

    export = sub.add_parser("export", help="write a run's model weights as safetensors for sharing")
    export.add_argument("run", help="run folder or checkpoint")
    export.add_argument("--safetensors", action="store_true", default=True, help="(the only format)")
    export.add_argument("--which", choices=CHECKPOINTS, default="best")
    export.add_argument("-o", "--output", type=output_file, help="output file (default: <run>/model.safetensors); "
                                                                 "written atomically: a failed write leaves no file")
    export.set_defaults(func=cmd_export)


def cmd_evaluate(args) -> int:
    from basinlab.api import evaluate_checkpoint
    noisy = args.noise is not None
    extra = {}
    if noisy:
        extra = dict(noise=args.noise, noise_type=args.noise_type, noise_adapt=args.noise_adapt,
                     noise_samples=args.noise_samples, noise_include_bn=args.noise_include_bn, seed=args.seed)
    result = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, split=args.split,
                                 datasets_dir=args.datasets_dir, batch_size=args.batch_size,
                                 limit=args.limit, device=args.device, full_split=args.full_split, **extra)
    if not noisy:
        print(f"{args.split}: loss {result['loss']:.4f} top1 {result['acc1']:.2f}% top5 {result['acc5']:.2f}% "
              f"({result['count']} examples)")
    else:
        spread = lambda key, digits: (f" +- {result[key + '_std']:.{digits}f}"  # noqa: E731
                                      if result["samples"] > 1 else "")  # one draw has no spread to show
        draws = f"{result['samples']} draw{'s' if result['samples'] != 1 else ''}"
        print(f"{args.split} under noise A={args.noise:g} ({args.noise_type}, adapt {args.noise_adapt}, {draws}): "
              f"loss {result['loss']:.4f}{spread('loss', 4)} top1 {result['acc1']:.2f}%{spread('acc1', 2)} "
              f"top5 {result['acc5']:.2f}%{spread('acc5', 2)} ({result['count']} examples)")
    if args.output:
        import pandas as pd
        row = {k: v for k, v in result.items() if k != "draws"}
        if noisy:
            row.update(noise=args.noise, noise_type=args.noise_type, noise_adapt=args.noise_adapt,
                       noise_include_bn=args.noise_include_bn, seed=args.seed)
        pd.DataFrame([{"split": args.split, **row}]).to_csv(args.output, index=False)
    return 0


def cmd_plot(args) -> int:
    from basinlab.records.plots import plot_runs
    from basinlab.records.run_folder import load_run
    runs = {}
    for folder in args.runs:
        run = load_run(folder)
        runs[f"{Path(folder).name} ({Path(str(run.config.model)).name})"] = run.history
    path = plot_runs(runs, args.output, title=args.title)
    print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    from basinlab.api import export_safetensors
    path = export_safetensors(args.run, args.output, which=args.which)
    print(f"wrote {path}")
    return 0
