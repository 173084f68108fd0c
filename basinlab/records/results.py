"""results.csv: one row per epoch, rewritten atomically after every epoch, readable with pandas.

The reference ResultsLog used DataFrame.append (removed in pandas 2) and deleted an existing CSV;
here a resumed run keeps the rows of finished epochs and each epoch appears exactly once.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from basinlab.utils.io import atomic_write_text

FIRST_COLUMNS = ["epoch", "lr", "train_loss", "train_acc1", "train_acc5", "val_loss", "val_acc1", "val_acc5",
                 "epoch_time_s", "train_images_per_s"]


class ResultsTable:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict] = []

    def resume(self, next_epoch: int) -> None:
        """Keep the rows of epochs before `next_epoch` (an interrupted epoch is redone, not repeated)."""
        if self.path.is_file() and self.path.stat().st_size > 0:
            frame = pd.read_csv(self.path)
            self.rows = [row for row in frame.to_dict("records") if row["epoch"] < next_epoch]

    def append(self, row: dict) -> None:
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [dict(row)]
        atomic_write_text(self.path, self.frame().to_csv(index=False))

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows)
        if frame.empty:
            return pd.DataFrame(columns=FIRST_COLUMNS)
        ordered = [c for c in FIRST_COLUMNS if c in frame.columns]
        return frame[ordered + [c for c in frame.columns if c not in ordered]]
