"""TensorBoard scalars of each epoch (and, optionally, each step) under <run>/tensorboard/."""
from __future__ import annotations

import math
from pathlib import Path


class TensorBoardLog:
    def __init__(self, folder: str | Path, enabled: bool = True):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency; tolerate its absence in minimal installs
                return
            self.writer = SummaryWriter(log_dir=str(folder))

    def epoch(self, row: dict) -> None:
        if self.writer is None:
            return
        step = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if math.isfinite(value):
                group = key.split("_", 1)[0] if key.startswith(("train_", "val_")) else "run"
                self.writer.add_scalar(f"{group}/{key}", value, step)
        self.writer.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def histogram(self, tag: str, values, step: int) -> None:
        if self.writer is not None:
            self.writer.add_histogram(tag, values, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
