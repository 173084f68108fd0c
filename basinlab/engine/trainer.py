"""The training loop. Read `fit` top to bottom: setup, then per epoch train, validate, record, save.

Everything a method changes is either a step strategy (how a batch becomes an update) or a callback
(what runs around steps and epochs), so this loop is the only loop.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path

import torch

from basinlab.config import TrainConfig
from basinlab.data.choose import check_data_options, resolve_dataset
from basinlab.engine.data_settings import apply_data_settings, describe_phase
from basinlab.engine.distributed import DataParallel
from basinlab.engine.evaluate import Meter, evaluate, evaluation_forward
from basinlab.engine.run_info import RunInfo
from basinlab.engine.setup import (
    build_data_and_model,
    build_regime,
    check_model_fits_data,
    make_criterion,
    split_model_config,
)
from basinlab.engine.step_context import StepContext
from basinlab.engine.steps import STRATEGIES, StepStrategy
from basinlab.engine.trainer_state import CheckpointedState, check_state_keys
from basinlab.errors import NonFiniteLossError, WriteError
from basinlab.optim.weight_decay import describe as describe_weight_decay
from basinlab.optim.weight_decay import parameter_groups
from basinlab.records.run_folder import RunFolder, default_run_name


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a resumable checkpoint was written. Exit status 128 + signal."""

    def __init__(self, signum: int, run_dir: Path):
        self.signum, self.run_dir = signum, run_dir
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}; resume with: basinlab train --resume {run_dir}")


class Trainer(CheckpointedState):
    def __init__(self, cfg: TrainConfig, *, callbacks=(), strategy: StepStrategy | None = None):
        self.cfg = cfg
        self.callbacks = list(callbacks)
        self._data_phase: str | None = None  # the current data phase (engine/data_settings.describe_phase)
        check_state_keys(self.callbacks)
        self.strategy = strategy
        self.stop_signal: int | None = None
        self.should_stop = False     # a callback sets it (on_epoch_end, on_fit_start) to end fit()
        self.epoch = 0               # epoch being trained (0-based)
        self.batch_in_epoch = 0      # next batch index within the epoch
        self.best = {"val_acc1": -math.inf, "epoch": -1}
        self.step_context: StepContext | None = None  # what a step needs (engine/step_context.py), at setup
        self.info = RunInfo(self)    # what strategies and callbacks see of the run (read-only)

    @property
    def global_step(self) -> int:
        """Optimizer steps taken (strategies may step less than once per batch)."""
        return self.step_context.updates if self.step_context is not None else 0

    @property
    def nonfinite_skipped(self) -> int:
        return self.step_context.skipped if self.step_context is not None else 0

    # ------------------------------------------------------------------------------------ setup
    def setup(self, dry_run: bool = False) -> None:
        """Everything a run needs (data found and checked, model, regime, methods); then its folder, unless
        `dry_run`: the setup is logged and nothing is written."""
        cfg = self.cfg
        self.dist = DataParallel(cfg)
        self.device = self.dist.start()
        resume_state = self._read_resume_checkpoint()
        self.dataset_note = None
        if resume_state is None:  # a resumed run keeps what it was started with
            cfg.dataset, self.dataset_note = resolve_dataset(cfg.dataset, cfg.datasets_dir)  # never a substitute
            check_data_options(cfg.dataset, download=cfg.download)
        torch.manual_seed(cfg.seed)
        if resume_state is None and not cfg.save:
            cfg.save = self.dist.broadcast_object(default_run_name())  # one clock reading for all ranks
        branch = self._branch_from(resume_state)
        self.run = RunFolder.open(cfg, resume=resume_state is not None, barrier=self.dist.barrier, branch_from=branch)
        self.log = self.run.log
        try:
            self._build(resume_state)
            if dry_run:
                self.log.info(f"dry run: nothing written; the run would be {self.run.path}")
                self.close_strategy()
                self.run.abandon()
                return
            self.run.effective = self._effective_settings()
            if resume_state is not None and self.epoch < self.epochs:  # a resume with epochs left to train
                self.run.resumed_at = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                                       "global_step": self.global_step}
            self.run.create(cfg)
        except BaseException:
            self.close_strategy()  # what its setup started ends with the failed setup
            self.run.abandon()  # a failed setup leaves no new run folder behind, and no lock
            raise

    def close_strategy(self) -> None:
        """End what the strategy's setup started (once, whatever ends the run)."""
        if getattr(self, "_strategy_open", False):
            self._strategy_open = False
            self.strategy.close()

    def _build(self, resume_state) -> None:
        """Data, model, regime, precision, optimizer and strategy; the resumed state on top."""
        cfg = self.cfg
        self.train_loader, self.val_loader, self.model, self.data_regime, transform_note = build_data_and_model(
            cfg, self.device, self.dist, self.log)
        self._apply_data_regime(log=False)   # the first phase's input size is what the probe must fit
        check_model_fits_data(self.model, self.train_loader.input_shape, self.train_loader.num_classes, cfg.model,
                              cfg.dataset, self.device, smallest_batch=self._smallest_chunk())
        self.epochs = cfg.epochs or getattr(self.model, "default_epochs", None) or 10
        self.regime, notes = build_regime(cfg, self.model, split_model_config(cfg)[1])
        self.wd_filter = cfg.wd_filter or self.regime.wd_filter or "all"
        notes += [describe_weight_decay(self.model, self.wd_filter)]
        notes += [transform_note] if transform_note else []
        self.step_context = StepContext.from_config(cfg, self.model, self.device, dist=self.dist,
                                                    before_step=self._before_optimizer_step, where=self._where)
        self.precision = self.step_context.precision
        self.eval_criterion = make_criterion(self.model, cfg, evaluation=True)
        self.optimizer = None
        self._apply_regime()
        self._setup_strategy()
        for cb in self.callbacks:
            cb.setup(self.info)
        self.eval_model = torch.compile(self.model) if cfg.compile else self.model
        if resume_state is not None:
            self._load_state(resume_state)
            self._apply_data_regime(log=False)
        self.train_model = self.step_context.train_model = self.dist.wrap(self.eval_model)  # DDP in distributed runs
        self._log_setup(notes)

    def _setup_strategy(self) -> None:
        """The strategy's setup, then the lr factor it asks for applied to the regime: here, once per run."""
        if self.strategy is None:
            self.strategy = STRATEGIES["plain"]()
        self.strategy.setup(self.step_context, self.info)
        self._strategy_open = True
        factor = float(self.strategy.lr_factor(self.info))
        if factor != 1.0:
            self.regime = self.regime.scaled_lr(factor)
            self.log.info(f"regime: every lr x {factor:.6g} for step {self.strategy.name} (first lr now "
                          f"{self.regime.first_lr:.6g})")

    def _before_optimizer_step(self, optimizer) -> None:
        """The seam between backward and the optimizer step: the gradients of this update are final."""
        for cb in self.callbacks:
            cb.on_before_optimizer_step(self.info, optimizer)

    def _where(self) -> str:
        """Where a non-finite loss happened, and what the run keeps."""
        return (f"at epoch {self.epoch + 1}, step {self.batch_in_epoch + 1} of {len(self.train_loader)}; "
                f"{self.run.kept_note()}")

    def _effective_settings(self) -> dict:
        """What the options resolved to: the values this run really uses where the config leaves them unset or
        the model, the data or a method decides (the report shows them beside the configured ones)."""
        group = self.optimizer.param_groups[0]
        return {"dataset": self.cfg.dataset, "model": getattr(self.model, "description", self.cfg.model),
                "epochs": self.epochs, "batch_size": self.train_loader.batch_size * self.dist.world_size,
                "train_examples": self.train_loader.num_examples, "val_examples": self.val_loader.num_examples,
                "optimizer": type(self.optimizer).__name__, "lr": self.regime.first_lr,
                **{k: group[k] for k in ("momentum", "weight_decay") if k in group},
                "wd_filter": self.wd_filter, "amp": self.precision.mode,
                "channels_last": self.step_context.channels_last, "step": self.strategy.name,
                "device": str(self.device), "processes": self.dist.world_size}

    def _smallest_chunk(self) -> int:
        """The fewest samples one forward pass of training sees (a ghost batch, or its remainder)."""
        batch = self.train_loader.batch_size
        chunk = min(self.cfg.ghost_batch or batch, batch)
        return min(chunk, batch % chunk or chunk)

    def _log_setup(self, notes: list[str]) -> None:
        n_params = sum(p.numel() for p in self.model.parameters())
        description = getattr(self.model, "description", type(self.model).__name__)
        self.log.info(f"model {self.cfg.model}: {description} ({n_params:,} parameters)")
        self.log.info(f"data {self.cfg.dataset}: {self.train_loader.num_examples} train / "
                      f"{self.val_loader.num_examples} val examples, batch {self.train_loader.batch_size}")
        if self.dataset_note:
            self.log.info(self.dataset_note)
        if self.train_loader.source:
            self.log.info(f"data found in {self.train_loader.source}")
        precision = self.precision
        self.log.info(f"device {self.device}, amp {precision.mode}, channels_last {self.step_context.channels_last}, "
                      f"step {self.strategy.name}, {self.epochs} epoch{'s' if self.epochs != 1 else ''}")
        self.log.info(precision.note + ("" if precision.eval_dtype == precision.dtype else
                                        "; validation in float32 (--eval-amp none)"))
        for line in self.train_loader.subset_notes + self.val_loader.subset_notes:
            self.log.info(line)
        size_note = getattr(self.train_loader, "size_note", lambda: None)()
        if size_note:
            self.log.info(size_note)
        for line in self.regime.describe():
            self.log.info(f"regime: {line}")
        for line in self.data_regime.describe():
            self.log.info(f"data regime: {line}")
        if self.data_regime.epochs:
            self.log.info(f"data from epoch {self.epoch + 1}: {self._data_phase}")
        for line in notes:
            self.log.info(line)
        if self.dist.active:
            self.log.info(self.dist.describe(self.train_loader.batch_size))

    def _apply_regime(self) -> None:
        groups = lambda: parameter_groups(self.model, self.wd_filter)  # noqa: E731  (built only for a new optimizer)
        self.optimizer = self.regime.apply(self.optimizer, groups, self.epoch, self.batch_in_epoch, self.global_step,
                                           steps_per_epoch=len(self.train_loader))
        self.step_context.optimizer = self.optimizer  # the regime may have made a new one

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    # ------------------------------------------------------------------------------------ the loop
    def fit(self):
        with self._resume_hint_on_write_error():
            return self._fit()

    @contextlib.contextmanager
    def _resume_hint_on_write_error(self):
        """A failed write (disk full) ends the run with exit 4 and says how to continue it."""
        try:
            yield
        except WriteError as exc:
            run = getattr(self, "run", None)
            if run is None or not (run.path / "last.pt").is_file():
                raise
            raise WriteError(f"{exc}; the last good checkpoint is kept: once the cause is gone, resume with "
                             f"basinlab train --resume {run.path}") from None

    def _fit(self):
        if not hasattr(self, "model"):
            self.setup()
        for cb in self.callbacks:
            cb.on_fit_start(self.info)
        if self.epoch >= self.epochs:
            self.log.info(f"the run is already complete ({self.epoch} of {self.epochs} epochs); nothing to train: pass "
                          f"--epochs N (more than {self.epoch}) to train it further")
        try:
            with self._signal_handlers():
                while self.epoch < self.epochs and not self.should_stop:
                    self._apply_data_regime()
                    for cb in self.callbacks:
                        cb.on_epoch_start(self.info, self.epoch)
                    train = self.train_epoch()
                    row = self.end_epoch(train)
                    self.log.epoch(row)
            for cb in self.callbacks:
                cb.on_fit_end(self.info)
        except BaseException as exc:  # the reason the run ended belongs in its log, not only on a terminal
            self.run.log.file_only(f"error: {type(exc).__name__}: {exc}")
            raise
        finally:  # records are complete whatever ends the run (NaN stop, signal, error)
            try:
                self.close_strategy()  # a strategy's processes or threads end with the run, failure included
            finally:
                self.run.close()
        self.leave_process_group()
        return self.run.result(self)

    def leave_process_group(self) -> None:
        """Drop the DDP wrapper, which holds the process group, then leave the group (DataParallel.finish): so a
        destroyed group is really freed, not at the interpreter's exit."""
        if getattr(self, "eval_model", None) is not None:  # built (a failed setup may stop before)
            self.train_model = self.step_context.train_model = self.eval_model
        self.dist.finish()

    def train_epoch(self) -> dict:
        """Train from the current position to the end of the epoch; return its metrics."""
        self.model.train()
        self.dist.seed_process_rng(self.cfg.seed, self.epoch, self.batch_in_epoch)
        loader = self.train_loader
        if self.batch_in_epoch == 0:
            self.meter, self.epoch_seconds = Meter(self.device), 0.0
        start = time.perf_counter()
        progress = self.log.progress(f"epoch {self.epoch + 1}/{self.epochs}", len(loader),
                                     initial=self.batch_in_epoch, print_freq=self.cfg.print_freq,
                                     later_steps=(self.epochs - self.epoch - 1) * len(loader))
        for x, y in self.strategy.batches(loader, self.epoch, self.batch_in_epoch):
            self._apply_regime()
            before = self._buffers_before_step()
            result = self.strategy.train_step(self.step_context, x, y)
            if result.skipped and before is not None:
                self._restore_buffers(before)  # a skipped batch leaves no trace (BN statistics included)
            y = y if result.target is None else result.target  # a real server's batch came from a worker
            if result.logits is not None:
                self.meter.update(result.loss, result.logits.float(), y)
            self.batch_in_epoch += 1
            for cb in self.callbacks:
                cb.on_step_end(self.info, result)
            if progress.step(len(y) * self.dist.world_size, lambda step=result: self._step_summary(step)):
                self.run.steps.append(self.global_step, self.epoch + self.batch_in_epoch / len(loader),
                                      result.loss.item(), self.lr)
            if self.stop_signal is not None or self._due_step_checkpoint():
                self.epoch_seconds += time.perf_counter() - start
                start = time.perf_counter()
                self.strategy.sync(self.step_context)  # work in flight lands before the checkpoint
                self.save_checkpoint()
                if self.stop_signal is not None:
                    progress.close()
                    raise TrainingInterrupted(self.stop_signal, self.run.path)
        progress.close()
        self.epoch_seconds += time.perf_counter() - start
        self.meter.reduce()
        return self.meter.result()

    def _step_summary(self, result) -> str:
        """The metrics of a progress line: this batch's loss, the epoch's running means (this process's share)."""
        so_far = self.meter.result()
        if not so_far["count"]:
            return f"loss {result.loss.item():.4f} | lr {self.lr:.4g}"
        return (f"loss {result.loss.item():.4f} (avg {so_far['loss']:.4f}) top1 {so_far['acc1']:.2f}% "
                f"| lr {self.lr:.4g}")

    def _buffers_before_step(self) -> list[torch.Tensor] | None:
        """Under --nan-policy skip: the buffers a forward pass changes (BatchNorm running statistics,
        online-norm state), to be put back if the batch is skipped."""
        if self.cfg.nan_policy != "skip":
            return None
        return [b.detach().clone() for b in self.model.buffers()]

    def _restore_buffers(self, saved: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for buffer, value in zip(self.model.buffers(), saved):
                buffer.copy_(value)

    def _due_step_checkpoint(self) -> bool:
        every = self.cfg.save_every_steps
        return bool(every) and self.global_step % every == 0 and self.batch_in_epoch < len(self.train_loader)

    def end_epoch(self, train: dict) -> dict:
        """Validate, assemble the results row, let callbacks extend it, write records and checkpoints."""
        if train["count"] == 0:
            raise NonFiniteLossError(f"every batch of epoch {self.epoch + 1} had a non-finite loss and was skipped; "
                                     f"{self.run.kept_note()}")
        self.strategy.sync(self.step_context)  # work in flight lands before validation and the checkpoint
        self.dist.sync_buffers(self.model)  # validate (on every shard) the model rank 0 checkpoints
        started = time.perf_counter()
        progress = self.log.progress(f"validate {self.epoch + 1}/{self.epochs}", len(self.val_loader),
                                     print_freq=self.cfg.print_freq)
        try:
            val = evaluate(self.eval_model, self.val_loader, self.eval_criterion, autocast=self.precision.eval_autocast,
                           prepare=self.step_context.prepare, progress=progress,
                           forward=evaluation_forward(self.eval_model))
        finally:
            progress.close()
        val_seconds = time.perf_counter() - started
        if not math.isfinite(val["loss"]):
            raise NonFiniteLossError(f"the validation loss after epoch {self.epoch + 1} is {val['loss']}; the model is "
                                     f"broken, so this epoch is not recorded; {self.run.kept_note()}")
        row = {"epoch": self.epoch + 1, "lr": self.lr,
               "train_loss": train["loss"], "train_acc1": train["acc1"], "train_acc5": train["acc5"],
               "val_loss": val["loss"], "val_acc1": val["acc1"], "val_acc5": val["acc5"],
               "epoch_time_s": self.epoch_seconds,
               "train_images_per_s": train["count"] / max(self.epoch_seconds, 1e-9),
               "val_time_s": val_seconds}
        if self.cfg.nan_policy == "skip":
            row["nonfinite_skipped"] = self.nonfinite_skipped
        row.update(self.strategy.epoch_metrics(self.info))
        for cb in self.callbacks:
            cb.on_epoch_end(self.info, row)
        self.epoch += 1
        self.batch_in_epoch = 0
        is_best = row["val_acc1"] > self.best["val_acc1"]
        if is_best:
            self.best = {"val_acc1": row["val_acc1"], "epoch": row["epoch"]}
        self.run.record_epoch(row)
        self.save_checkpoint(best=is_best)
        return row

    def _apply_data_regime(self, log: bool = True) -> None:
        """The data regime's settings for this epoch; a new phase gets a log line with its real batch."""
        apply_data_settings(self.data_regime.settings_at(self.epoch), self.train_loader, self.val_loader,
                            flag_batch=self.cfg.batch_size is not None,
                            flag_eval_batch=self.cfg.eval_batch_size is not None)
        phase = describe_phase(self.train_loader, self.val_loader)
        if log and phase != self._data_phase:
            self.log.info(f"data from epoch {self.epoch + 1}: {phase}")
        self._data_phase = phase

    # ------------------------------------------------------------------------------------ signals
    @contextlib.contextmanager
    def _signal_handlers(self):
        """SIGINT/SIGTERM: finish the current step, write a resumable checkpoint, then stop."""
        def request_stop(signum, frame):
            self.stop_signal = signum
        try:
            previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: leave signals alone
            previous = {}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
