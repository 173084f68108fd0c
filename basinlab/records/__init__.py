"""Run records: results.csv, log.txt, TensorBoard events, PNG plots, and reading them back."""
from basinlab.records.results import ResultsTable
from basinlab.records.tensorboard import TensorBoardLog

__all__ = ["ResultsTable", "TensorBoardLog"]
