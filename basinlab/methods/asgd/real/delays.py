"""Every gradient's delay, measured: the rows of `delays.csv` and the epoch's summary columns.

One row per gradient that reached the server:

    epoch, batch, worker      which batch of the epoch's plan, computed by which worker process
    version_read              the server version of the weights it was computed on (below 0 at a --fixed-delay
                              run's start: x[t] = x[0] for t < 0)
    version_applied           the server version it was applied to (the update makes version_applied + 1)
    delay                     version_applied - version_read (updates between reading and applying)
    age_s                     wall-clock seconds from the worker reading those weights to the server applying
    status                    applied | warmup (--fixed-delay: applied before its turn, because no worker could
                              bring it: after a lost worker) | drained (applied at the run's last sync point) |
                              dropped (older than --max-delay: not applied)
"""
from __future__ import annotations

import time

import numpy as np

COLUMNS = ("epoch", "batch", "worker", "version_read", "version_applied", "delay", "age_s", "status")
CSV_NAME = "delays.csv"


class DelayLog:
    def __init__(self):
        self.rows: list[tuple] = []     # rows not yet written to delays.csv
        self.written = 0                # rows delays.csv holds
        self.epoch_start = 0            # index (over all rows) of this epoch's first row

    def add(self, wire, worker: int, version: int, status: str) -> None:
        """The row of a gradient message `wire` from `worker`, applied to (or dropped at) server `version`."""
        self.add_row(int(wire.field("epoch")) + 1, int(wire.field("batch")), worker, int(wire.field("version")),
                     version, round(time.time() - wire.field("read_time"), 6), status)

    def add_row(self, epoch: int, batch: int, worker: int, read: int, version: int, age_s: float,
                status: str) -> None:
        self.rows.append((epoch, batch, worker, read, version, version - read, age_s, status))

    def take_epoch(self) -> np.ndarray:
        """The delays of the gradients applied this epoch (applied or drained)."""
        first = self.epoch_start - self.written
        delays = np.array([r[5] for r in self.rows[max(first, 0):] if r[7] != "dropped"], dtype=np.int64)
        self._dropped = sum(1 for r in self.rows[max(first, 0):] if r[7] == "dropped")
        self._drained = sum(1 for r in self.rows[max(first, 0):] if r[7] == "drained")
        return delays

    def summary(self, delays: np.ndarray) -> dict:
        stats = {"delay_mean": float(delays.mean()), "delay_max": int(delays.max()),
                 "delay_p50": float(np.percentile(delays, 50)), "delay_p95": float(np.percentile(delays, 95))} \
            if delays.size else dict.fromkeys(("delay_mean", "delay_max", "delay_p50", "delay_p95"), float("nan"))
        stats.update(dropped=self._dropped, drained=self._drained)
        self.epoch_start = self.written + len(self.rows)
        return stats

    def take_rows(self) -> list[tuple]:
        """The rows to append to delays.csv now."""
        rows, self.rows = self.rows, []
        self.written += len(rows)
        return rows

    def state_dict(self) -> dict:
        return {"rows": [list(r) for r in self.rows], "written": self.written, "epoch_start": self.epoch_start}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [tuple(r) for r in state["rows"]]
        self.written, self.epoch_start = int(state["written"]), int(state["epoch_start"])
