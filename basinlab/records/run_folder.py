"""A run folder and what lives in it: config, environment, log, results, TensorBoard, plots.

    <results-dir>/<save>/
        config.yaml  env.yaml  log.txt  results.csv  tensorboard/  plots/  last.pt  best.pt
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from basinlab.config import TrainConfig, config_to_yaml, load_yaml, validated_config
from basinlab.errors import ConfigError
from basinlab.records import ResultsTable, TensorBoardLog
from basinlab.utils.io import atomic_write_text

# Plots are redrawn after an epoch at most this often (and always when the run ends): drawing costs
# ~0.7 s, which dominated short runs and searches of many small trials.
PLOT_INTERVAL_S = 30.0


def default_run_name() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class RunLog:
    """log.txt plus the terminal: setup lines, one line per epoch, and the progress bar."""

    def __init__(self, path: Path | None, quiet: bool):
        self.file = open(path, "a", buffering=1) if path is not None else None
        self.quiet = quiet
        self.show_bar = not quiet and sys.stderr.isatty()

    def info(self, message: str) -> None:
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        if self.file is not None:
            self.file.write(f"{stamp} {message}\n")
        if not self.quiet and self.file is not None:
            print(message, flush=True)

    def epoch(self, row: dict) -> None:
        self.info(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} top1 {row['train_acc1']:.2f}% | "
                  f"val loss {row['val_loss']:.4f} top1 {row['val_acc1']:.2f}% top5 {row['val_acc5']:.2f}% | "
                  f"lr {row['lr']:.4g} | {row['epoch_time_s']:.1f}s {row['train_images_per_s']:.0f} img/s")

    def progress(self, total: int, epoch: int, epochs: int, initial: int = 0) -> Progress:
        return Progress(total, epoch, epochs, initial, enabled=self.show_bar and self.file is not None)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Progress:
    """A tqdm bar per epoch with loss, accuracy, images/s and ETA; silent when not a terminal."""

    def __init__(self, total, epoch, epochs, initial, enabled):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                            unit="batch", dynamic_ncols=True, mininterval=0.5)
            self.images, self.start = 0, time.perf_counter()

    def step(self, result, trainer) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        self.images += trainer.train_loader.batch_size
        if self.bar.n % 10 == 0 or self.bar.n == self.bar.total:
            sums = trainer.meter.sums.tolist()
            acc = 100.0 * sums[1] / sums[3] if sums[3] else float("nan")
            rate = self.images / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"loss {result.loss.item():.3f} top1 {acc:.1f}% {rate:.0f} img/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def environment_facts() -> dict:
    import numpy
    import torch

    from basinlab._version import __version__
    facts = {"basinlab": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
             "numpy": str(numpy.__version__), "pandas": str(pd.__version__), "platform": platform.platform(),
             "cuda": torch.version.cuda,
             "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
             "threads": torch.get_num_threads(), "world_size": int(os.environ.get("WORLD_SIZE", "1")),
             "command": " ".join(sys.argv),
             "started": dt.datetime.now().isoformat(timespec="seconds")}
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            facts["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return facts


@dataclass
class Run:
    """What `basinlab.train` returns: the folder, its config, history and the trained model."""

    path: Path
    config: TrainConfig
    history: pd.DataFrame
    model: object = None
    best: dict | None = None

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "best.pt"


class RunFolder:
    def __init__(self, path: Path, is_main: bool, quiet: bool):
        self.path, self.is_main = path, is_main
        self.log = RunLog(path / "log.txt" if is_main else None, quiet)
        self.results = ResultsTable(path / "results.csv")
        self.plots_due, self.last_plot = False, time.monotonic()  # short runs: drawn once, at the end
        self.tensorboard = TensorBoardLog(path / "tensorboard", enabled=is_main)

    @classmethod
    def open(cls, cfg: TrainConfig, resume: bool, barrier=lambda: None) -> RunFolder:
        """Create the run folder; an existing one is never overwritten without --resume or --overwrite.

        `barrier` waits for every rank of a distributed run: all ranks check the folder before rank 0
        replaces or creates it, so no rank mistakes rank 0's new folder for an existing run.
        """
        if resume:
            resume_path = Path(cfg.resume)
            path = resume_path if resume_path.is_dir() else resume_path.parent
        else:
            cfg.save = cfg.save or default_run_name()
            path = Path(cfg.results_dir) / cfg.save
            existing = path.exists() and any(path.iterdir())
            if existing and not cfg.overwrite:
                raise ConfigError(f"run folder {path} already exists; use --resume {path} to continue it, "
                                  f"--overwrite to replace it, or --save NAME for a new one")
            barrier()
            if existing and is_main_process():
                shutil.rmtree(path)
        if is_main_process():
            try:
                (path / "plots").mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create run folder {path}: {exc.strerror} "
                                  f"(--results-dir must be a folder you can write to)") from None
        folder = cls(path, is_main_process(), cfg.quiet)
        if folder.is_main:
            atomic_write_text(path / "env.yaml", yaml.safe_dump(environment_facts(), sort_keys=False))
        return folder

    def write_config(self, cfg: TrainConfig) -> None:
        if self.is_main:
            atomic_write_text(self.path / "config.yaml", config_to_yaml(cfg))

    def resume_records(self, completed_epochs: int) -> None:
        self.results.resume(next_epoch=completed_epochs + 1)

    def record_epoch(self, row: dict) -> None:
        if not self.is_main:
            return
        self.results.append(row)
        self.tensorboard.epoch(row)
        self.plots_due = True
        if time.monotonic() - self.last_plot >= PLOT_INTERVAL_S:
            self.draw_plots()

    def draw_plots(self) -> None:
        """Redraw plots/*.png from results.csv (after an epoch, at most every PLOT_INTERVAL_S, and at the end)."""
        from basinlab.records.plots import plot_run  # matplotlib import deferred to the first plot
        if self.is_main and self.plots_due and self.results.rows:
            plot_run(self.results.frame(), self.path / "plots")
        self.plots_due, self.last_plot = False, time.monotonic()

    def close(self) -> None:
        """Final plots, TensorBoard and log flushed: called on every exit of a run, errors included."""
        self.draw_plots()
        self.tensorboard.close()
        self.log.close()

    def result(self, trainer) -> Run:
        history = self.results.frame()
        if not self.is_main and self.results.path.is_file():  # rank 0 wrote the rows (the trainer waited)
            history = pd.read_csv(self.results.path)
        return Run(self.path, trainer.cfg, history, trainer.model, dict(trainer.best))


def load_run(path: str | Path) -> Run:
    """The config, results.csv history and checkpoint paths of a run folder written by `basinlab train`."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path} is not a basinlab run folder (no config.yaml)")
    cfg = validated_config(load_yaml(path / "config.yaml"))
    results = path / "results.csv"
    history = pd.read_csv(results) if results.is_file() and results.stat().st_size else pd.DataFrame()
    return Run(path, cfg, history)
