"""A real run's measured delays, read back: the simulator's replay of them and the stability they allow.

- `read_delays(path)`: a run's delays.csv, checked (columns, types, size); one-line errors.
- `TraceOrder`: the simulator's worker order that replays a real run's arrivals (--worker-trace): push i is
  the worker of the trace's i-th applied gradient. With one gradient per update and every worker pulling the
  current weights at each epoch's start, as the real server does, the simulator's delays are the trace's (a
  test checks it), so a real run and its simulated twin differ only in numerics and data order.
- `empirical_threshold(delays, momentum)`: the largest eta*lambda for which delayed SGD with heavy-ball
  momentum at the server, x[t+1] = x[t] - h x[t - tau_t] + gamma (x[t] - x[t-1]) on a quadratic of curvature
  lambda (h = eta*lambda), stays bounded when driven by the measured delay sequence tau_t (repeated to at least
  MIN_STEPS steps). Method: each h of a grid is simulated (float64, the history rescaled to avoid overflow);
  it is stable when the log of the history's largest magnitude falls over the second half of the steps; the
  edge between the last stable and the first unstable grid value is then bisected. For a constant sequence it
  equals the linear-stability threshold of methods/asgd/stability.py (a test checks it).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from basinlab.errors import ConfigError
from basinlab.methods.asgd.real.delays import COLUMNS
from basinlab.methods.asgd.schedule import RoundRobin

MAX_TRACE_BYTES = 1 << 30
MIN_STEPS = 20_000
APPLIED = ("applied", "warmup", "drained")


def read_delays(path):
    """The rows of a real run's delays.csv (a run folder names its file) as a pandas DataFrame."""
    import pandas as pd
    path = Path(path)
    if path.is_dir():
        path = path / "delays.csv"
    if not path.is_file():
        raise ConfigError(f"no delays.csv at {path}: it is written by `basinlab train ... --real` in the run folder")
    if path.stat().st_size > MAX_TRACE_BYTES:
        raise ConfigError(f"{path} has {path.stat().st_size:,} bytes; a delays.csv read here holds at most "
                          f"{MAX_TRACE_BYTES:,}")
    try:
        table = pd.read_csv(path, dtype={"status": str})
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable delays.csv: {str(exc).splitlines()[0][:160]}") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ConfigError(f"{path} lacks the column(s) {', '.join(missing)} of a delays.csv ({', '.join(COLUMNS)})")
    numeric = [c for c in COLUMNS if c != "status"]
    counts = [c for c in numeric if c != "age_s"]   # age_s is empty in a simulated replay's file (no clock)
    if not all(pd.api.types.is_numeric_dtype(table[c]) for c in numeric) or table[counts].isna().any().any():
        raise ConfigError(f"{path}: the columns {', '.join(counts)} must hold numbers in every row (age_s too, "
                          f"or nothing)")
    unknown = set(table.status) - {*APPLIED, "dropped"}
    if unknown:
        raise ConfigError(f"{path}: unknown status {sorted(unknown)[0]!r} (allowed: {', '.join(APPLIED)}, dropped)")
    if (table.delay < 0).any() or (table.delay != table.version_applied - table.version_read).any():
        raise ConfigError(f"{path}: each delay must be version_applied - version_read >= 0")
    return table


def applied_delays(table) -> np.ndarray:
    """The delays of the gradients the server applied, in the order it applied them."""
    return table[table.status.isin(APPLIED)].delay.to_numpy(dtype=np.int64)


# ---------------------------------------------------------------------------------------------- replay
class TraceOrder(RoundRobin):
    """--worker-trace: the workers of a real run's applied gradients, in their order (the push count and its
    checkpointed state are round robin's)."""

    name = "trace"

    def __init__(self, workers: int, seed: int, table):
        super().__init__(workers, seed)
        if (table.status == "dropped").any():
            raise ConfigError("--worker-trace replays one update per gradient; this trace has dropped gradients "
                              "(a --max-delay run): replay a run without --max-delay")
        self.order = table[table.status.isin(APPLIED)].worker.to_numpy(dtype=np.int64)
        if self.order.size and (self.order.min() < 0 or self.order.max() >= workers):
            raise ConfigError(f"--worker-trace names worker {int(self.order.max())}, but the run has --workers "
                              f"{workers}: give the real run's worker count")

    def next(self, waiting):
        if self.pushes >= len(self.order):
            raise ConfigError(f"--worker-trace holds {len(self.order)} applied gradients and the run needs more: "
                              f"replay it with at most its epochs and the same batch size and --train-limit")
        worker = int(self.order[self.pushes])
        self.pushes += 1
        return worker


# ---------------------------------------------------------------------------------------------- stability
def _growth(h: np.ndarray, delays: np.ndarray, momentum: float) -> np.ndarray:
    """Per h: the fall (< 0) or rise (> 0) of log max|history| over the second half of the run."""
    depth = int(delays.max()) + 2
    history = np.ones((depth, h.size))     # a ring of x[t - depth + 1 .. t]; every worker starts from x[0] = 1
    log_scale = np.zeros(h.size)
    half = None
    now = 0
    for t, tau in enumerate(delays):
        x, previous, stale = history[now], history[now - 1], history[now - int(tau)]
        now = (now + 1) % depth
        history[now] = x - h * stale + momentum * (x - previous)
        if t % 64 == 0:   # rescale: the recursion is linear, so only the log of the scale is kept
            peak = np.maximum(np.abs(history).max(axis=0), 1e-300)
            history /= peak
            log_scale += np.log(peak)
        if t == len(delays) // 2:
            half = log_scale + np.log(np.abs(history).max(axis=0) + 1e-300)
    return log_scale + np.log(np.abs(history).max(axis=0) + 1e-300) - half


def empirical_threshold(delays, momentum: float = 0.0, *, grid: int = 200, rounds: int = 3) -> float:
    """The largest stable h = eta*lambda for heavy-ball delayed SGD driven by `delays` (see the module doc)."""
    delays = np.asarray(delays, dtype=np.int64)
    if delays.size == 0:
        raise ConfigError("no applied gradient in the trace: there is no delay sequence to drive the dynamics")
    sequence = np.tile(delays, math.ceil(MIN_STEPS / delays.size))
    low, high = 0.0, 2.0 * (1.0 + momentum)   # the zero-delay edge: no delay sequence is stable beyond it
    for _ in range(rounds):   # each round: a grid over the bracket, then the bracket around its first unstable h
        values = np.linspace(low, high, grid + 1)[1:]
        stable = _growth(values, sequence, momentum) < 0
        if stable.all():
            return float(high)
        first_bad = int(np.argmin(stable))
        low, high = (values[first_bad - 1] if first_bad else low), values[first_bad]
    return float(low)
