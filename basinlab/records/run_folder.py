"""A run folder and what lives in it: config, environment, log, results, TensorBoard, plots.

    <results-dir>/<save>/
        config.yaml  env.yaml  log.txt  results.csv  steps.csv (with -p)  tensorboard/  plots/  last.pt  best.pt
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from basinlab.config import (
    TrainConfig,
    config_to_yaml,
    normalise_key,
    read_yaml_mapping,
    stored_values,
    validated_config,
)
from basinlab.errors import BasinlabError, ConfigError, WriteError
from basinlab.records import ResultsTable, TensorBoardLog
from basinlab.records.environment import environment_facts, origin_commits, record_resume
from basinlab.records.progress import Progress, StepTable, read_steps
from basinlab.records.results import read_results
from basinlab.records.run_safety import (
    LOCK_FILE,
    Replacement,
    RunLock,
    check_replaceable,
    default_run_name,
    differing_options,
    is_unfinished_start,
    move_aside,
    new_run_path,
    os_failure,
    recover_trash,
    remove_stale_temporaries,
)
from basinlab.utils.io import atomic_write_text

if TYPE_CHECKING:  # pandas takes ~0.2 s to import: loaded only where a table is read or built
    import pandas as pd

# Plots are redrawn after an epoch at most this often (and always when the run ends): drawing costs
# ~0.7 s, which dominated short runs and searches of many small trials.
PLOT_INTERVAL_S = 30.0


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class RunLog:
    """log.txt plus the terminal: setup lines, one line per epoch, and the progress bar.

    Lines logged before the run folder exists (during setup) are kept and written when `attach` opens
    log.txt; a process that does not write records (a rank > 0) only keeps nothing.
    """

    def __init__(self, writes: bool, quiet: bool):
        self.file, self.pending = None, []
        self.writes, self.quiet = writes, quiet
        self.show_bar = not quiet and sys.stderr.isatty()

    def attach(self, path: Path) -> None:
        self.path = path
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ConfigError(f"{path} is not a regular file (a link or a folder); basinlab appends its log only "
                              f"to a file of its own: remove it and retry")
        try:
            self.file = open(path, "a", buffering=1)
        except OSError as exc:
            raise os_failure(exc, "open the log", path) from None
        self.file.writelines(self.pending)
        self.pending = []

    def info(self, message: str) -> None:
        if not self.writes:
            return
        line = f"{dt.datetime.now():%H:%M:%S} {message}\n"
        if self.file is not None:
            try:
                self.file.write(line)
            except OSError as exc:  # disk full: the line still reaches the terminal
                self.file = None
                raise WriteError(f"cannot write {self.path}: {exc.strerror}") from None
        else:
            self.pending.append(line)
        if not self.quiet:
            print(message, flush=True)

    def file_only(self, message: str) -> None:
        """A line for log.txt alone: the error that ends a run (the command line prints it on its own)."""
        if self.file is not None:
            try:
                self.file.write(f"{dt.datetime.now():%H:%M:%S} {message}\n")
            except OSError:
                self.file = None

    def epoch(self, row: dict) -> None:
        self.info(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} top1 {row['train_acc1']:.2f}% | "
                  f"val loss {row['val_loss']:.4f} top1 {row['val_acc1']:.2f}% top5 {row['val_acc5']:.2f}% | "
                  f"lr {row['lr']:.4g} | {row['epoch_time_s']:.1f}s {row['train_images_per_s']:.0f} img/s, "
                  f"val {row['val_time_s']:.1f}s")

    def progress(self, label: str, total: int, *, initial: int = 0, print_freq: int = 0,
                 later_steps: int = 0) -> Progress:
        """A bar on a terminal, -p lines, or a heartbeat line every 30 s elsewhere (see records/progress.py)."""
        return Progress(self, label, total, initial=initial, print_freq=print_freq, later_steps=later_steps,
                        terminal=self.show_bar, enabled=self.writes)

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:  # the last buffered line did not fit on the disk: nothing more to do
                pass
            self.file = None


@dataclass
class Run:
    """What `basinlab.train` returns: the folder, its config, history and the trained model."""

    path: Path
    config: TrainConfig
    history: pd.DataFrame
    model: object = field(default=None, repr=False)
    best: dict | None = None

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "best.pt"


class RunFolder:
    """A run's folder: decided and checked by `open`, made on disk by `create` once setup succeeded."""

    def __init__(self, path: Path, is_main: bool, quiet: bool, resume: bool, branch_from: Path | None = None):
        self.path, self.is_main, self.resuming, self.branch_from = path, is_main, resume, branch_from
        self.log = RunLog(is_main, quiet)
        self.results = ResultsTable(path / "results.csv")
        self.steps = StepTable(path / "steps.csv")
        self.plots_due, self.last_plot = False, time.monotonic()  # short runs: drawn once, at the end
        self.tensorboard = TensorBoardLog(None, enabled=False)  # the real one once the folder exists
        self.lock: RunLock | None = None
        self.replaced: Replacement | None = None  # the old run moved aside, until this run has a checkpoint
        self.created = False  # this process made the folder (a failed setup removes it)
        self.restarts_unfinished = False  # it replaces an earlier start of the same command (no checkpoint)
        self.results_dir = None
        self.title = path.name
        self.report = False  # --report: report.html beside the plots
        self.effective: dict = {}  # the settings the run resolved its options to, written into env.yaml
        self.resumed_at: dict = {}  # where a resume continues (epoch, batch, step); env.yaml records it

    @classmethod
    def open(cls, cfg: TrainConfig, resume: bool, barrier=lambda: None, branch_from: Path | None = None) -> RunFolder:
        """Decide the run folder and check that it may be used; nothing is written until `create`.

        An existing folder is never replaced without --overwrite (and then only as run_safety allows), except
        a start of this same command that stopped before its first checkpoint; a folder being resumed is
        locked now, and temporary files a killed run left in it are removed. Replacements whose process died
        are settled first (run_safety.recover_trash). `branch_from`: a checkpoint continued in the new folder
        --save names. `barrier` lets every rank check before rank 0 writes.
        """
        if cfg.report:
            from basinlab.records.report import require_bokeh
            require_bokeh()  # refused before anything is written
        if resume and branch_from is None:
            resume_path = Path(cfg.resume)
            folder = cls(resume_path if resume_path.is_dir() else resume_path.parent, is_main_process(),
                         cfg.quiet, resume=True)
            if folder.is_main:
                folder._recover_trash(folder.path.parent)
                folder.lock = RunLock(folder.path).acquire()
                remove_stale_temporaries(folder.path)
            return folder
        cfg.save = cfg.save or default_run_name()
        path = new_run_path(cfg.results_dir, cfg.save)
        folder = cls(path, is_main_process(), cfg.quiet, resume=False, branch_from=branch_from)
        if folder.is_main:
            folder._recover_trash(path.parent)
        folder.check_target(cfg)
        barrier()
        folder.results_dir = cfg.results_dir
        return folder

    def _recover_trash(self, parent: Path) -> None:
        for line in recover_trash(parent):
            self.log.info(line)

    def check_target(self, cfg: TrainConfig, late: bool = False) -> None:
        """Refuse a new run's folder when something is there that it may not replace (see `open`); `late`: it
        appeared during this run's setup."""
        path = self.path
        self.restarts_unfinished = False
        if not os.path.lexists(path) or (path.is_dir() and not path.is_symlink() and not any(path.iterdir())):
            return
        if self.branch_from is not None:
            raise ConfigError(f"{path} already exists; a branch needs a new run folder: give --save a new name")
        if cfg.overwrite:
            check_replaceable(path)
            return
        if not is_unfinished_start(path):
            there = "appeared while this run was being set up (another process wrote it)" if late else "already exists"
            raise ConfigError(f"run folder {path} {there}; use --resume {path} to continue it, "
                              f"--overwrite to replace it, or --save NAME for a new one")
        differs = differing_options(path, cfg)
        if differs:
            raise ConfigError(f"run folder {path} holds a start that stopped before its first checkpoint ({path}/"
                              f"log.txt says why) with other options ({differs}); use --overwrite to replace it, or "
                              f"--save NAME for a new run")
        self.restarts_unfinished = True

    def create(self, cfg: TrainConfig) -> None:
        """Make the folder (moving a replaced run aside), lock it, write env.yaml, config.yaml and the log."""
        if not self.is_main:
            return
        if not self.resuming:
            self._make_folder(cfg)
            facts = environment_facts()
            if self.branch_from is not None:
                facts["branched_from"] = str(self.branch_from.resolve())
                facts["branched_from_commits"] = origin_commits(self.branch_from.parent / "env.yaml")
            if self.effective:
                facts["effective"] = self.effective  # what the run resolved its options to (the report shows it)
            atomic_write_text(self.path / "env.yaml", yaml.safe_dump(facts, sort_keys=False))
        unrecorded = record_resume(self.path / "env.yaml", self.resumed_at, self.effective) if self.resumed_at else None
        (self.path / "plots").mkdir(exist_ok=True)
        self.title = f"{self.path.name}: {Path(str(cfg.model)).name}"  # a model file: its name
        self.report = bool(cfg.report)
        self.log.attach(self.path / "log.txt")
        if self.replaced is not None:
            what = ("an earlier start of this same run, which stopped before its first checkpoint"
                    if self.restarts_unfinished else "the old run (--overwrite)")
            self.log.info(f"replacing {what}: it is kept in {self.replaced.aside} until this run's first "
                          f"checkpoint")
        if unrecorded:
            self.log.info(unrecorded)
        if self.branch_from is not None:
            self.log.info(f"branched from {self.branch_from.resolve()}: a new run that continues from it (the "
                          f"original run is left as it is)")
        self.tensorboard = TensorBoardLog(self.path / "tensorboard", enabled=True)
        atomic_write_text(self.path / "config.yaml", config_to_yaml(cfg))
        self.steps.write_kept()

    def _make_folder(self, cfg: TrainConfig) -> None:
        """The new run's folder by one mkdir, locked; what is there now is checked again (another process may
        have written it during setup), and replaced only as `check_target` allowed."""
        path = self.path
        if os.path.lexists(path) and (path.is_symlink() or not path.is_dir() or any(path.iterdir())):
            self.check_target(cfg, late=True)
            old_lock = RunLock(path).acquire(record_pid=False)  # nobody starts on it between the check and the move
            try:
                self.replaced = move_aside(path)
            finally:
                old_lock.release()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(path)
            self.created = True
        except FileExistsError:
            if path.is_symlink() or not path.is_dir() or any(path.iterdir()):
                raise ConfigError(f"run folder {path} appeared while this run was being set up (another process "
                                  f"wrote it); use --save NAME for a new run") from None
        except OSError as exc:
            raise os_failure(exc, "create run folder", path) from None
        self.lock = RunLock(path).acquire()
        if set(os.listdir(path)) - {LOCK_FILE}:  # another start took the empty folder before our lock
            self.lock.release()
            self.lock = None
            raise ConfigError(f"run folder {path} was taken by another process during setup; use --save NAME")
        try:
            (path / "plots").mkdir(exist_ok=True)
        except OSError as exc:
            raise os_failure(exc, "create run folder", path) from None

    def checkpoint_written(self) -> None:
        """The new run has a checkpoint: the run it replaced can go."""
        if self.replaced is not None:
            self.replaced.discard()
            self.replaced = None

    def kept_note(self) -> str:
        """What a run that stops now leaves: the last checkpoint, or none (said plainly, never claimed)."""
        if (self.path / "last.pt").is_file():
            return f"the last good checkpoint and the records so far are kept in {self.path}"
        return (f"no checkpoint was written yet, so there is nothing to resume: the same command starts the run "
                f"again (it replaces {self.path})")

    def abandon(self) -> None:
        """Setup failed: release what open() and create() took; a new folder they made is removed."""
        self.tensorboard.close()
        self.log.close()
        if self.lock is not None:
            self.lock.release()
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        if self.replaced is not None:
            self.replaced.put_back()
            self.replaced = None

    def resume_records(self, completed_epochs: int, stored_rows: list[dict] | None = None,
                       global_step: int = 0) -> None:
        if stored_rows is None and self.branch_from is not None:  # an older checkpoint: the origin's CSV
            origin = self.branch_from.parent / "results.csv"
            stored_rows = read_results(origin).to_dict("records") if origin.is_file() else []
        note = self.results.resume(next_epoch=completed_epochs + 1, stored_rows=stored_rows)
        if self.is_main:
            origin = None if self.branch_from is None else self.branch_from.parent / "steps.csv"
            self.steps.resume(global_step, origin)
        if note:
            self.log.info(f"note: {note}")

    def record_epoch(self, row: dict) -> None:
        if not self.is_main:
            return
        self.results.append(row)
        self.tensorboard.epoch(row)
        self.plots_due = True
        if time.monotonic() - self.last_plot >= PLOT_INTERVAL_S:
            self.draw_plots()

    def draw_plots(self) -> None:
        """Redraw plots/*.png from results.csv (after an epoch, at most every PLOT_INTERVAL_S, and at the end),
        and report.html with --report."""
        from basinlab.records.plots import plot_run  # matplotlib import deferred to the first plot
        if self.is_main and self.plots_due and self.results.rows:
            plot_run(self.results.frame(), self.path / "plots", title=self.title, steps=read_steps(self.steps.path))
            if self.report:
                from basinlab.records.report import write_report
                from basinlab.records.report_data import read_run_data
                write_report([read_run_data(self.path)], self.path / "report.html", title=self.title)
        self.plots_due, self.last_plot = False, time.monotonic()

    def close(self) -> None:
        """Final plots, TensorBoard and log flushed, lock released: on every exit of a run, errors included.

        A run that replaced another with --overwrite and ends before its first checkpoint gives the
        old run its place back (an earlier start of the same command without checkpoint just goes).
        """
        try:
            self.draw_plots()
        except WriteError as exc:  # the run's own error (e.g. disk full) is what the user must see
            print(f"basinlab: plots not redrawn: {exc}", file=sys.stderr)
        self.tensorboard.close()
        if self.replaced is not None and not self.restarts_unfinished:
            self.log.info(f"no checkpoint was written: the replaced run returns to {self.path}")
        self.log.close()
        if self.lock is not None:
            self.lock.release()
        if self.replaced is not None:  # an earlier start without checkpoint: this one's log is the one to keep
            replaced, self.replaced = self.replaced, None
            try:
                replaced.discard() if self.restarts_unfinished else replaced.put_back()
            except BasinlabError as exc:  # the run's own error is what ends it; this one is said, not raised
                print(f"basinlab: {exc}; the next start in {self.path.parent} puts it back", file=sys.stderr)

    def result(self, trainer) -> Run:
        import pandas as pd
        history = self.results.frame()
        if not self.is_main and self.results.path.is_file():  # rank 0 wrote the rows (the trainer waited)
            history = pd.read_csv(self.results.path)
        return Run(self.path, trainer.cfg, history, trainer.model, dict(trainer.best))


def load_run(path: str | Path) -> Run:
    """The config, results.csv history and checkpoint paths of a run folder written by `basinlab train`."""
    import pandas as pd
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path} is not a basinlab run folder (no config.yaml)")
    stored = read_yaml_mapping(path / "config.yaml", what="run config")
    # as a checkpoint's config: today's fields kept (a stored trust-model-code line is never honoured)
    cfg = validated_config(stored_values({normalise_key(str(k)): v for k, v in stored.items()}))
    results = path / "results.csv"
    history = read_results(results) if results.is_file() and results.stat().st_size else pd.DataFrame()
    return Run(path, cfg, history)
