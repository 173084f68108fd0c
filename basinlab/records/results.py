"""results.csv: one row per epoch, rewritten atomically after every epoch, readable with pandas.

The reference ResultsLog used DataFrame.append (removed in pandas 2) and deleted an existing CSV;
here a resumed run keeps the rows of finished epochs and each epoch appears exactly once.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from basinlab.errors import ConfigError
from basinlab.utils.io import atomic_write_text

if TYPE_CHECKING:  # pandas takes ~0.2 s to import: loaded only where a table is read or built
    import pandas as pd

FIRST_COLUMNS = ["epoch", "lr", "train_loss", "train_acc1", "train_acc5", "val_loss", "val_acc1", "val_acc5",
                 "epoch_time_s", "train_images_per_s", "val_time_s"]
# Wall-clock columns: they differ between two runs that computed the same thing (drop them to compare runs).
# epoch_time_s is the training time of the epoch; validation's is val_time_s.
TIME_COLUMNS = ["epoch_time_s", "train_images_per_s", "val_time_s"]


class ResultsTable:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: list[dict] = []

    def resume(self, next_epoch: int, stored_rows: list[dict] | None = None) -> str | None:
        """Keep the rows of epochs before `next_epoch` (an interrupted epoch is redone, not repeated).

        The rows come from the checkpoint (`stored_rows`) where it holds them, else from results.csv.
        Returns a note when results.csv was unreadable and is rewritten from the checkpoint's rows.
        """
        note = None
        written = self.path.is_file() and self.path.stat().st_size > 0
        if stored_rows is None:
            stored_rows = read_results(self.path).to_dict("records") if written else []
        elif written:
            try:
                read_results(self.path)
            except ConfigError as exc:
                note = f"{exc}; it is rewritten from the checkpoint's history"
        self.rows = [dict(row) for row in stored_rows if row["epoch"] < next_epoch]
        return note

    def append(self, row: dict) -> None:
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [dict(row)]
        atomic_write_text(self.path, self.frame().to_csv(index=False))

    def frame(self) -> pd.DataFrame:
        import pandas as pd
        frame = pd.DataFrame(self.rows)
        if frame.empty:
            return pd.DataFrame(columns=FIRST_COLUMNS)
        ordered = [c for c in FIRST_COLUMNS if c in frame.columns]
        return frame[ordered + [c for c in frame.columns if c not in ordered]]


def read_results(path: str | Path) -> pd.DataFrame:
    """A run's results.csv, or one line saying why it cannot be read (garbage, no epoch column, text epochs)."""
    import pandas as pd
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not a readable results table ({first})") from None
    if "epoch" not in frame.columns:
        raise ConfigError(f"{path} has no epoch column (columns: {', '.join(map(str, frame.columns[:6]))})")
    if not pd.api.types.is_integer_dtype(frame["epoch"]) or (frame["epoch"] < 1).any():
        raise ConfigError(f"{path}: its epoch column must hold epoch numbers 1, 2, ...; got "
                          f"{', '.join(map(str, frame['epoch'].head(3)))}")
    return frame
