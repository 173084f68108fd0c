"""The autoHyper seed's `train --config config.yaml` on the basinlab engine.

Every training (a search trial or a full run) is a basinlab run folder under the output folder::

    <output>/
        autohyper.yaml          the seed config as read, and what it became in basinlab
        search.csv search.png   the search log (lr, Z, decision...) and Z against lr (init_lr 'auto')
        trials/lr=<lr>/         one run folder per search trial (trial_epochs epochs, --log-lowrank)
        lr=<lr>/trial_<k>/      the full trainings (n_trials per lr, seed + k; lowrank.csv as the seed logged)
        summary.csv             one row per full training

A trial is a freshly initialised network trained ``trial_epochs`` epochs at one lr with the config's
optimizer and scheduler; its response is ``Z = mean over epochs of lowrank_zero_fraction`` (the
fraction of conv-layer unfoldings, two per layer, with zero knowledge gain; --log-lowrank's column). A trial
whose loss turns non-finite counts as Z = 0: it learned too fast to measure, which is what Z -> 0
means. Every trial uses the same seed (the config's ``seed``): the same initial weights and the
same batches, so the differences between trials come from the lr alone (common random numbers; a
seed derived from the lr would add weight-init noise to Z(lr), which the search reads as signal).
Full trainings use ``seed + k`` so that n_trials measures the spread over seeds.

Resuming is automatic: a run folder marked done (``autohyper_done.json``) is read back, a folder
with a last.pt is resumed, anything else is started afresh. A folder made by another config (its
config.yaml differs from the options this config gives) is refused, never reused.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from basinlab.api import build_run
from basinlab.config import from_mapping, validated_config
from basinlab.engine.checkpoint import resume_values
from basinlab.errors import ConfigError, NonFiniteLossError
from basinlab.records.run_folder import load_run
from basinlab.tuning.callbacks import EchoEpochs, SaveEvery, TrainLossEarlyStop
from basinlab.tuning.search import SearchBudgetExceeded, autohyper_search, autohyper_search_lr_wd, response_Z
from basinlab.tuning.seed_config import Plan, plan_from_config, read_seed_config
from basinlab.utils.figures import new_figure, save_png
from basinlab.utils.io import atomic_write_text

DONE_FILE = "autohyper_done.json"
STATE_FILE = "autohyper.yaml"
SEARCH_MODES = ("lr", "lr+wd")
# Options that may differ between a stored run folder and this config without changing the run.
_RUN_CONTROL = {"results_dir", "save", "resume", "overwrite", "quiet", "debug", "device", "data_workers",
                "datasets_dir", "print_freq", "preset"}


@dataclass
class Outcome:
    """One finished training: its folder, how it ended and its results.csv."""

    path: Path
    status: str  # 'complete', 'early-stopped', 'diverged'
    history: pd.DataFrame
    reused: bool = False  # read back from a folder a previous invocation finished


def fmt_lr(value: float) -> str:
    return f"{value:.8g}"


class AutoHyper:
    """Runs one autoHyper config: the searches its init_lr asks for, then the full trainings."""

    def __init__(self, plan: Plan, output: Path, *, device: str = "auto", datasets_dir: str | None = None,
                 search: str = "lr", save_freq: int = 25, echo: Callable[[str], None] = print, amp: str = "none"):
        if search not in SEARCH_MODES:
            raise ConfigError(f"--search must be one of {', '.join(SEARCH_MODES)}; got {search!r}")
        self.plan, self.output, self.device, self.datasets_dir = plan, Path(output), device, datasets_dir
        self.search_mode, self.save_freq, self.echo, self.amp = search, save_freq, echo, amp
        self.chosen: tuple[float, float | None] | None = None

    # ------------------------------------------------------------------------------------ top level
    def run(self) -> pd.DataFrame:
        self.output.mkdir(parents=True, exist_ok=True)
        rows = []
        for entry in self.plan.init_lrs:
            lr, wd = self.search() if entry == "auto" else (entry, None)
            for k in range(self.plan.n_trials):
                rows.append(self._summary_row(entry, lr, wd, k, self.full_run(lr, wd, k)))
                self._write_summary(rows)
        return pd.DataFrame(rows)

    def full_run(self, lr: float, wd: float | None, k: int) -> Outcome:
        folder = self.output / _lr_folder(lr, wd) / f"trial_{k}"
        options = self.plan.train_options(lr, wd, epochs=self.plan.max_epochs, seed=self.plan.seed + k)
        callbacks = [TrainLossEarlyStop(self.plan.early_stop_threshold, self.plan.early_stop_patience),
                     SaveEvery(self.save_freq),
                     EchoEpochs(self.echo, f"full training lr={fmt_lr(lr)}{_wd_text(wd)} trial {k}")]
        outcome = self._train(folder, {**options, "log_lowrank": True}, callbacks)  # the seed's per-layer CSV
        best = outcome.history["val_acc1"].max() if len(outcome.history) else math.nan
        self.echo(f"full training lr={fmt_lr(lr)}{_wd_text(wd)} trial {k}: {outcome.status}, "
                  f"{len(outcome.history)} epochs, best val top-1 {best:.2f}% ({folder})")
        return outcome

    # ------------------------------------------------------------------------------------ search
    def search(self) -> tuple[float, float | None]:
        """(lr, weight decay or None) chosen by the search; run once per AutoHyper."""
        if self.chosen is not None:
            return self.chosen
        log = SearchLog(self.output, self.echo)
        try:
            if self.search_mode == "lr":
                trial = lambda lr: self.trial(lr, None, log)  # noqa: E731
                lr, history = autohyper_search(trial, log=log.add, **self.plan.search_kwargs)
                self.chosen = (lr, None)
            else:
                trial = lambda lr, wd: self.trial(lr, wd, log)  # noqa: E731
                (lr, wd), history = autohyper_search_lr_wd(trial, log=log.add, **self.plan.search_kwargs)
                self.chosen = (lr, wd)
        except SearchBudgetExceeded:
            log.finish(None)  # a search that gives up still leaves its CSV and plot to look at
            raise
        log.finish(self.chosen)
        n = sum(1 for s in history if s.trial is not None)
        self.echo(f"autoHyper chose lr={fmt_lr(self.chosen[0])}{_wd_text(self.chosen[1])} after {n} trials "
                  f"({n * self.plan.trial_epochs} trial epochs)")
        return self.chosen

    def trial(self, lr: float, wd: float | None, log: SearchLog) -> float:
        folder = self.output / "trials" / _lr_folder(lr, wd)
        options = self.plan.train_options(lr, wd, epochs=self.plan.trial_epochs, seed=self.plan.seed)
        outcome = self._train(folder, {**options, "log_lowrank": True})
        Z = 0.0 if outcome.status == "diverged" else response_Z(outcome.history["lowrank_zero_fraction"])
        log.trial_done(lr, wd, folder, outcome.status, outcome.reused)
        return Z

    # ------------------------------------------------------------------------------------ one training
    def _train(self, folder: Path, options: dict, callbacks=()) -> Outcome:
        done = folder / DONE_FILE
        options = {**options, "results_dir": str(folder.parent), "save": folder.name, "device": self.device,
                   "datasets_dir": self.datasets_dir, "quiet": True, "amp": self.amp}
        if done.is_file() or (folder / "last.pt").is_file():
            _check_same_config(folder, options)
        if done.is_file():
            status = json.loads(done.read_text())["status"]
            return Outcome(folder, status, load_run(folder).history, reused=True)
        if (folder / "last.pt").is_file():
            options["resume"] = str(folder)
        else:
            options["overwrite"] = True
        try:
            train_trial(options, callbacks)
            stopped = any(getattr(cb, "stopped_at", None) is not None for cb in callbacks)
            status = "early-stopped" if stopped else "complete"
        except NonFiniteLossError:
            status = "diverged"
        atomic_write_text(done, json.dumps({"status": status}))
        return Outcome(folder, status, load_run(folder).history)

    # ------------------------------------------------------------------------------------ records
    def _summary_row(self, entry, lr: float, wd: float | None, k: int, outcome: Outcome) -> dict:
        h = outcome.history
        best = int(h["val_acc1"].idxmax()) if len(h) else None
        return {"lr": lr, "weight_decay": wd, "source": "auto" if entry == "auto" else "given", "trial": k,
                "seed": self.plan.seed + k, "status": outcome.status, "epochs": len(h),
                "best_val_acc1": h["val_acc1"].iloc[best] if best is not None else math.nan,
                "best_epoch": int(h["epoch"].iloc[best]) if best is not None else None,
                "final_val_acc1": h["val_acc1"].iloc[-1] if len(h) else math.nan,
                "final_train_loss": h["train_loss"].iloc[-1] if len(h) else math.nan,
                "run": str(outcome.path.relative_to(self.output))}

    def _write_summary(self, rows: list[dict]) -> None:
        atomic_write_text(self.output / "summary.csv", pd.DataFrame(rows).to_csv(index=False))


class SearchLog:
    """search.csv (rewritten after every trial and at the end) and search.png (at the end)."""

    def __init__(self, output: Path, echo):
        self.output, self.echo = output, echo
        self.rows: list[dict] = []
        self.trials: dict[tuple, tuple[str, str]] = {}
        self.read_back: set[tuple] = set()

    def trial_done(self, lr, wd, folder: Path, status: str, reused: bool = False) -> None:
        self.trials[(lr, wd)] = (str(folder.relative_to(self.output)), status)
        if reused:
            self.read_back.add((lr, wd))

    def add(self, step) -> None:
        row = {"step": len(self.rows) + 1, **step.as_dict()}
        run, status = self.trials.get((step.lr, step.wd), ("", ""))
        row.update(run=run if not math.isnan(step.Z) else "", status=status if not math.isnan(step.Z) else "")
        self.rows.append(row)
        if step.trial is not None:  # after each training; the steps between are replayed on a rerun
            self._write()
        if not math.isnan(step.Z):
            how = "reused" if step.cached else f"trial {step.trial}"
            if (step.lr, step.wd) in self.read_back and not step.cached:
                how += " (read back)"
            self.echo(f"autoHyper {how}: lr={fmt_lr(step.lr)}{_wd_text(step.wd)} Z={step.Z:.4f} -> {step.decision}")

    def finish(self, chosen: tuple[float, float | None] | None) -> None:
        """Final search.csv and search.png; `chosen` None: the search stopped without a choice."""
        self._write()
        if self.rows:
            plot_search(pd.DataFrame(self.rows), chosen, self.output / "search.png")

    def _write(self) -> None:
        frame = pd.DataFrame(self.rows).astype({"trial": "Int64"})  # NaN-free integer column
        atomic_write_text(self.output / "search.csv", frame.to_csv(index=False))


def plot_search(frame: pd.DataFrame, chosen: tuple[float, float | None] | None, path: Path) -> Path:
    """Z of every trial against its lr (log axis), the chosen lr marked (if any); colour = weight decay."""
    fig, ax = new_figure(figsize=(7, 4.5))
    tried = frame[frame["Z"].notna() & ~frame["cached"].astype(bool)]
    wds = tried["wd"].dropna() if "wd" in tried else pd.Series(dtype=float)
    if len(wds) == len(tried) and len(tried) and wds.nunique() > 1:
        shade = np.log10(tried["wd"].astype(float) + 1e-12)
        points = ax.scatter(tried["lr"], tried["Z"], c=shade, cmap="viridis", s=18)
        fig.colorbar(points, ax=ax, label="log10(weight decay + 1e-12)")
    else:
        ax.scatter(tried["lr"], tried["Z"], s=18, color="tab:blue", label="trials")
    if chosen is not None:
        ax.axvline(chosen[0], color="tab:red", ls="--", lw=1,
                   label=f"chosen lr {chosen[0]:.3g}{_wd_text(chosen[1])}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("Z (fraction of conv unfoldings with zero gain)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"autoHyper search ({len(tried)} trials{'' if chosen else ', stopped without a choice'})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save_png(fig, path)


# ---------------------------------------------------------------------------------------------- helpers
def _lr_folder(lr: float, wd: float | None) -> str:
    return f"lr={fmt_lr(lr)}" + ("" if wd is None else f"_wd={fmt_lr(wd)}")


def _wd_text(wd: float | None) -> str:
    return "" if wd is None else f" wd={fmt_lr(wd)}"


def train_trial(options: dict, callbacks=()) -> None:
    """One training of the search or of the final runs, built as any run is (basinlab.api.build_run).

    The options are the fixed set a Plan writes (model, data, regime, epochs, --log-lowrank...); the
    low-rank method gives the response Z and drives AdaS.
    """
    build_run(_config(options), callbacks=callbacks, workflow="autohyper").fit()


def _config(options: dict):
    resume = options.get("resume")
    return validated_config(resume_values(options) if resume else from_mapping(options, where="autoHyper options"))


def _check_same_config(folder: Path, options: dict) -> None:
    """ConfigError when the run folder was made with other training options than these."""
    stored = load_run(folder).config.to_dict()
    wanted = _config({k: v for k, v in options.items() if k != "resume"}).to_dict()
    changed = sorted(k for k in wanted if k not in _RUN_CONTROL and stored.get(k) != wanted[k])
    if changed:
        raise ConfigError(f"{folder} was trained with other options ({', '.join(changed)} differ); "
                          f"use a new --output folder for a changed config")


# ---------------------------------------------------------------------------------------------- entry point
def run_autohyper(config: str | Path, output: str | Path, *, device: str = "auto", datasets_dir: str | None = None,
                  search: str = "lr", save_freq: int = 25, seed: int | None = None,
                  echo: Callable[[str], None] = print, amp: str = "none") -> pd.DataFrame:
    """Read the seed config, write autohyper.yaml, run searches and full trainings; the summary."""
    values = read_seed_config(config)
    if seed is not None:
        values["seed"] = seed
    plan = plan_from_config(values)
    output = Path(output)
    _write_state(output, values, plan, search)
    for note in plan.notes:
        echo(f"note: {note}")
    runner = AutoHyper(plan, output, device=device, datasets_dir=datasets_dir, search=search, save_freq=save_freq,
                       echo=echo, amp=amp)
    return runner.run()


def _write_state(output: Path, values: dict, plan: Plan, search: str) -> None:
    output.mkdir(parents=True, exist_ok=True)
    example = plan.train_options(0.1, None, epochs=plan.max_epochs, seed=plan.seed)
    state = {"config": values, "search": search, "basinlab_options_at_lr_0.1": example}
    atomic_write_text(output / STATE_FILE, yaml.safe_dump(state, sort_keys=False))
