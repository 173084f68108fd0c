"""`basinlab sweep`: settings x seeds on this machine, resumable, with the papers' median tables; `basinlab report`:
runs and sweeps compared on one interactive page."""
from __future__ import annotations

from pathlib import Path

from basinlab.cli.options import integer
from basinlab.errors import ConfigError


def add_commands(sub) -> None:
    sweep = sub.add_parser("sweep", help="run settings x seeds from a spec (base, grid, seeds) and summarise "
                                         "them as median tables",
                           usage="basinlab sweep SPEC.yaml [--results-dir DIR] [--jobs N] [--allow-changed-spec] | "
                                 "--status DIR | --summarize DIR")
    sweep.add_argument("spec", nargs="?", help="the sweep spec (YAML with base, grid and seeds)")
    sweep.add_argument("--results-dir", help="folder of the sweep's runs (default: results/<spec file name>)")
    sweep.add_argument("--jobs", type=integer(1, 1024), default=1,
                       help="runs at once on this machine; CPU threads are split between them, or one GPU each "
                            "(default: 1)")
    sweep.add_argument("--allow-changed-spec", action="store_true",
                       help="run a spec that differs from the one DIR was run with: the runs whose options changed "
                            "are trained again from scratch (their old folders move to DIR/.sweep/replaced/); without "
                            "it such a spec is refused")
    sweep.add_argument("--trust-model-code", action="store_true",
                       help="import the model code (file.py:factory) that the spec names, here and in every run it "
                            "starts; no spec can set this itself")
    sweep.add_argument("--backend", choices=("local", "slurm"), default="local",
                       help="local: this machine; slurm: one job per run through submitit (default: local)")
    slurm = sweep.add_argument_group("Slurm (--backend slurm)")
    slurm.add_argument("--partition", help="Slurm partition (default: the cluster's default)")
    slurm.add_argument("--time-min", type=integer(1, 525_600), default=60, help="time limit per run, minutes "
                                                                                "(default: 60)")
    slurm.add_argument("--cpus-per-run", type=integer(1, 1024), default=1, help="CPUs per run (default: 1)")
    slurm.add_argument("--gpus-per-run", type=integer(0, 64), default=0, help="GPUs per run (default: 0)")
    slurm.add_argument("--array-parallelism", type=integer(1, 100_000), default=64,
                       help="runs of the job array at once (default: 64)")
    slurm.add_argument("--no-wait", action="store_true", help="submit and return; follow with --status DIR")
    sweep.add_argument("--status", metavar="DIR", help="list the state of every run of the sweep in DIR")
    sweep.add_argument("--summarize", metavar="DIR", help="recompute DIR/summary.csv, .md and .png")
    sweep.set_defaults(func=cmd_sweep)
    report = sub.add_parser("report", help="one self-contained interactive HTML page comparing runs and sweeps "
                                           "(curves, the options that differ, sweep tables)",
                            usage="basinlab report RUN_OR_SWEEP [RUN_OR_SWEEP ...] [-o report.html] [--title T]")
    report.add_argument("folders", nargs="+", help="run folders and sweep folders (a sweep brings all its runs)")
    report.add_argument("-o", "--output", default="report.html", help="the HTML file (default: report.html)")
    report.add_argument("--title", default="", help="page title (default: the runs' names)")
    report.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from basinlab.sweep.report import report
    written = report(args.folders, args.output, args.title)
    print(f"wrote {written}")
    return 0


def cmd_sweep(args) -> int:
    import basinlab.sweep as sweeps
    chosen = [name for name in ("spec", "status", "summarize") if getattr(args, name)]
    if len(chosen) != 1:
        raise ConfigError("basinlab sweep takes one of: a SPEC.yaml to run, --status DIR or --summarize DIR")
    if args.status:
        states = sweeps.status(args.status)
        for name, state in states:
            extra = f" (exit {state.get('exit')}: {state.get('error', '')})" if state["status"] == "failed" else ""
            print(f"{state['status']:12s} {name}{extra}")
        counts = {}
        for _, state in states:
            counts[state["status"]] = counts.get(state["status"], 0) + 1
        print(", ".join(f"{n} {status}" for status, n in counts.items()))
        return 0
    if args.summarize:
        sweeps.summarize_folder(args.summarize)
        print(f"wrote {Path(args.summarize) / 'summary.csv'}, summary.md, summary.png")
        return 0
    results_dir = Path(args.results_dir) if args.results_dir else Path("results") / Path(args.spec).stem
    slurm = dict(partition=args.partition, time_min=args.time_min, cpus_per_run=args.cpus_per_run,
                 gpus_per_run=args.gpus_per_run, array_parallelism=args.array_parallelism, wait=not args.no_wait)
    sweeps.sweep(args.spec, results_dir, jobs=args.jobs, backend=args.backend, slurm=slurm,
                 allow_changed_spec=args.allow_changed_spec)
    if args.no_wait:
        print(f"submitted; follow with basinlab sweep --status {results_dir}")
        return 0
    print((results_dir / "summary.md").read_text(), end="")
    states = sweeps.status(results_dir)
    failed = [name for name, state in states if state["status"] != "done"]
    if failed:
        print(f"{len(failed)} of {len(states)} runs did not finish: basinlab sweep --status {results_dir}")
        return 1
    return 0
