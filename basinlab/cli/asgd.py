"""`basinlab stability`: the table of stable learning rates under gradient delay (spec 02-async-sgd.md)."""
from __future__ import annotations

import math

from basinlab.cli.options import integer, number, output_file
from basinlab.errors import ConfigError
from basinlab.methods.asgd.stability import KINDS, adjusted_lr, stability_table
from basinlab.utils.io import atomic_write_text

DEFAULT_DELAYS = [0, 1, 4, 16, 32]
MAX_DELAY = 4096  # thresholds for longer delays need more than 10 s; the paper's go to 128
DEFAULT_MOMENTA = [0.0, 0.5, 0.9, 0.99]


def add_commands(sub) -> None:
    p = sub.add_parser("stability", help="largest stable eta*lambda_max by gradient delay and momentum (A-SGD)")
    p.add_argument("--delays", nargs="+", type=integer(0, MAX_DELAY), default=DEFAULT_DELAYS, metavar="TAU",
                   help=f"delays in server updates (default {' '.join(map(str, DEFAULT_DELAYS))})")
    p.add_argument("--momentum", nargs="+", type=number(0.0, 1.0, high_open=True), default=DEFAULT_MOMENTA,
                   metavar="GAMMA",
                   help=f"momenta in [0, 1) (default {' '.join(map(str, DEFAULT_MOMENTA))})")
    p.add_argument("--kind", nargs="+", choices=KINDS, default=list(KINDS),
                   help="standard: momentum at the server (asgd); shifted: per-worker momentum (msgd)")
    p.add_argument("--raw", action="store_true",
                   help="thresholds on eta*lambda_max instead of the effective eta/(1-gamma)*lambda_max")
    p.add_argument("--csv", type=output_file, help="also write the table to this CSV file (in a folder that "
                                                   "exists)")
    p.add_argument("--delays-from", metavar="RUN",
                   help="a real run's delays.csv (or its run folder): thresholds at its measured mean, p95 and max "
                        "delay, and the empirical threshold of its measured delay sequence (standard momentum)")
    p.set_defaults(func=cmd_stability)


def _column_name(kind: str, momentum: float) -> str:
    return "gamma=0" if kind == "none" else f"{kind} {momentum:g}"


def build_table(delays, momenta, kinds, raw: bool = False):
    """The thresholds (stability_table) plus the --adjust-lr factor sin(pi/(4 tau + 2)) by delay."""
    table = stability_table(delays, momenta, kinds, effective=not raw)
    table.columns = [_column_name(kind, m) for kind, m in table.columns]
    table["adjust-lr factor"] = [adjusted_lr(1.0, d) for d in table.index]
    return table


def format_table(table) -> str:
    """An aligned, pipe-separated table (also valid Markdown); values to 3 significant digits."""
    header = ["tau", *table.columns]
    rows = [[str(d), *(f"{v:#.3g}".rstrip(".") for v in values)] for d, values in zip(table.index, table.to_numpy())]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def cmd_stability(args) -> int:
    if len(set(args.delays)) != len(args.delays) or len(set(args.momentum)) != len(args.momentum):
        raise ConfigError("--delays and --momentum must not repeat a value")
    if args.delays_from:
        return measured_stability(args)
    table = build_table(args.delays, args.momentum, args.kind, raw=args.raw)
    what = "eta*lambda_max" if args.raw else "eta*lambda_max/(1-gamma)"
    print(f"largest stable {what} by delay tau (linear stability; below it a minimum with top Hessian "
          f"eigenvalue lambda_max can be kept)")
    print(format_table(table))
    print("adjust-lr factor: eta_tau / eta_0 = sin(pi/(4 tau + 2)), what `basinlab train --adjust-lr` applies")
    if args.csv:  # its folder was checked before computing (output_file); a failed write is exit 4
        out = table.copy()
        out.index.name = "delay"
        out.columns = [c.replace(" ", "_").replace("-", "_").replace("=", "") for c in out.columns]
        atomic_write_text(args.csv, out.to_csv())
        print(f"wrote {args.csv}")
    return 0


def measured_stability(args) -> int:
    """--delays-from: the measured delays of a real run against the constant-delay thresholds and its own."""
    import numpy as np

    from basinlab.methods.asgd.real.trace import applied_delays, empirical_threshold, read_delays
    delays = applied_delays(read_delays(args.delays_from))
    if delays.size == 0:
        raise ConfigError(f"{args.delays_from}: no applied gradient in its delays.csv")
    mean, p95, most = float(delays.mean()), float(np.percentile(delays, 95)), int(delays.max())
    print(f"measured: {delays.size} applied gradients, delay mean {mean:.3g}, p50 {np.percentile(delays, 50):.3g}, "
          f"p95 {p95:.3g}, max {most}")
    rows = {f"constant {d} (ceil of the mean)" if d == math.ceil(mean) else f"constant {d}": d
            for d in dict.fromkeys([math.ceil(mean), math.ceil(p95), most])}
    table = build_table(list(rows.values()), args.momentum, ["standard"], raw=args.raw)
    table.index = list(rows)
    empirical = [empirical_threshold(delays, m) / (1.0 if args.raw else 1.0 - m) for m in args.momentum]
    table.loc["measured sequence (empirical)"] = [*empirical, float("nan")]
    what = "eta*lambda_max" if args.raw else "eta*lambda_max/(1-gamma)"
    print(f"largest stable {what}: linear stability at constant delays, and delayed SGD with server momentum on a "
          f"quadratic driven by the measured delay sequence (methods/asgd/real/trace.py)")
    print(format_table(table))
    if args.csv:
        out = table.copy()
        out.index.name = "delay"
        atomic_write_text(args.csv, out.to_csv())
        print(f"wrote {args.csv}")
    return 0
