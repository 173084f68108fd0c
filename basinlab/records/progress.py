"""Progress inside an epoch and during validation, wherever the run's output goes.

- On a terminal (stderr a tty, no --quiet, no -p): a tqdm bar with loss, top-1, images/s and ETA.
- With -p/--print-freq N: a line every N steps, to the console and log.txt, e.g.
      epoch 2/30 step 150/391 | loss 1.2345 (avg 1.4021) top1 48.12% | lr 0.1 | 2310 img/s | ETA 1:42, run 52:10
  and each of those steps' loss in steps.csv (the per-step loss curve of plots/loss_steps.png).
- Otherwise outside a terminal (nohup, batch jobs, notebooks): the same line at least every HEARTBEAT_S
  seconds, so a long epoch or validation never looks hung.
"""
from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from basinlab.errors import WriteError
from basinlab.utils.io import atomic_write_text

if TYPE_CHECKING:  # pandas takes ~0.2 s to import: loaded only where a table is read or built
    import pandas as pd

# Outside a terminal and without -p, a progress line at least this often: often enough to tell a live
# run from a hung one in a batch log, rare enough that a 10-minute epoch writes 20 lines, not 2000.
HEARTBEAT_S = 30.0

STEP_COLUMNS = ["step", "epoch", "loss", "lr"]


def clock(seconds: float) -> str:
    """h:mm:ss (or m:ss under an hour) for an ETA."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Progress of one loop over a loader (a training epoch or a validation pass).

    `step(images, describe)` is called once per batch; `describe()` builds the metrics part of the line
    (it may synchronise with the device, so it runs only when a line or the bar's text is due).
    `later_steps`: the steps after this loop that the run still has to do, for the run's ETA.
    """

    def __init__(self, log, label: str, total: int, *, initial: int = 0, print_freq: int = 0,
                 later_steps: int = 0, terminal: bool = False, enabled: bool = True):
        self.log, self.label, self.total, self.done = log, label, total, initial
        self.print_freq, self.later_steps = print_freq, later_steps
        self.start = self.last_line = time.perf_counter()
        self.steps_here, self.images = 0, 0
        self.bar = None
        if not enabled:
            self.mode = "off"
        elif print_freq > 0:
            self.mode = "every_n"
        elif terminal:
            self.mode = "bar"
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=label, leave=False, unit="batch",
                            dynamic_ncols=True, mininterval=0.5)
        else:
            self.mode = "heartbeat"

    def step(self, images: int, describe: Callable[[], str]) -> bool:
        """Count one batch of `images`; returns True when this step's line was written (a -p step)."""
        self.done += 1
        self.steps_here += 1
        self.images += images
        if self.mode == "bar":
            self.bar.update(1)
            if self.done % 10 == 0 or self.done == self.total:
                self.bar.set_postfix_str(f"{describe()} | {self.rate():.0f} img/s", refresh=False)
            return False
        due = (self.mode == "every_n" and self.done % self.print_freq == 0) or \
              (self.mode == "heartbeat" and time.perf_counter() - self.last_line >= HEARTBEAT_S)
        if due:
            self.log.info(self.line(describe()))
            self.last_line = time.perf_counter()
        return due and self.mode == "every_n"

    def rate(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def line(self, metrics: str) -> str:
        per_step = (time.perf_counter() - self.start) / max(self.steps_here, 1)
        left = self.total - self.done
        eta = f"ETA {clock(left * per_step)}"
        if self.later_steps:
            eta += f", run {clock((left + self.later_steps) * per_step)}"
        return f"{self.label} step {self.done}/{self.total} | {metrics} | {self.rate():.0f} img/s | {eta}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StepTable:
    """steps.csv: the loss of every -p step (step = global optimizer step), appended as the run goes.

    A resumed run keeps the rows up to its checkpoint's step (a branch: its origin's), so each step
    appears once; they are chosen during setup and written once the run folder is made (`write_kept`).
    """

    def __init__(self, path: Path):
        self.path = path
        self.kept: pd.DataFrame | None = None

    def resume(self, global_step: int, origin: Path | None = None) -> None:
        """Keep the rows up to `global_step`: this run's, or those of the run a branch starts from."""
        import pandas as pd
        source = origin or self.path
        if not source.is_file():
            return
        try:
            frame = pd.read_csv(source)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
            frame = pd.DataFrame(columns=STEP_COLUMNS)  # a torn file: the curve restarts from here
        if list(frame.columns) != STEP_COLUMNS:
            frame = pd.DataFrame(columns=STEP_COLUMNS)
        self.kept = frame[frame["step"] <= global_step]

    def write_kept(self) -> None:
        if self.kept is not None:
            atomic_write_text(self.path, self.kept.to_csv(index=False))
            self.kept = None

    def append(self, step: int, epoch: float, loss: float, lr: float) -> None:
        new = not self.path.is_file() or self.path.stat().st_size == 0
        try:
            with open(self.path, "a", newline="") as handle:
                writer = csv.writer(handle)
                if new:
                    writer.writerow(STEP_COLUMNS)
                writer.writerow([step, f"{epoch:.4f}", f"{loss:.6g}", f"{lr:.6g}"])
        except OSError as exc:
            raise WriteError(f"cannot write {self.path}: {exc.strerror}") from None


def read_steps(path: Path) -> pd.DataFrame | None:
    """A run's steps.csv, or None when it has none or it cannot be read (the curve is optional)."""
    import pandas as pd
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        return None
    return frame if list(frame.columns) == STEP_COLUMNS and len(frame) else None
