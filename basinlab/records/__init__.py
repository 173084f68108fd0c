"""Run records: results.csv, log.txt, TensorBoard events, PNG plots, and reading them back."""
from .results import ResultsTable
from .tensorboard import TensorBoardLog

__all__ = ["ResultsTable", "TensorBoardLog"]
