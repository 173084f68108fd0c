"""TensorBoard scalars of each epoch (and, optionally, each step) under <run>/tensorboard/."""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

from basinlab.errors import WriteError


@contextlib.contextmanager
def _writing(folder):
    """A failed event write (disk full) is the run's one-line WriteError, not a thread's traceback."""
    try:
        yield
    except OSError as exc:
        raise WriteError(f"cannot write TensorBoard events in {folder}: {exc.strerror or exc}") from None


class TensorBoardLog:
    """The run's event file, opened at the first value written (importing TensorBoard costs ~0.15 s, which
    a run should not pay before its first training step)."""

    def __init__(self, folder: str | Path, enabled: bool = True):
        self.writer, self.folder, self.pending = None, folder, enabled

    def _open(self) -> bool:
        if self.pending:
            self.pending = False
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency; tolerate its absence in minimal installs
                return False
            with _writing(self.folder):
                self.writer = SummaryWriter(log_dir=str(self.folder))
        return self.writer is not None

    def epoch(self, row: dict) -> None:
        if not self._open():
            return
        step = int(row["epoch"])
        with _writing(self.folder):
            for key, value in row.items():
                if key == "epoch" or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                if math.isfinite(value):
                    group = key.split("_", 1)[0] if key.startswith(("train_", "val_")) else "run"
                    self.writer.add_scalar(f"{group}/{key}", value, step)
            self.writer.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._open():
            self.writer.add_scalar(tag, value, step)

    def histogram(self, tag: str, values, step: int) -> None:
        if self._open():
            self.writer.add_histogram(tag, values, step)

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:  # events that no longer fit on the disk: the run's own error says so
                pass
            self.writer = None
