"""A trainer's checkpointed state: what `last.pt` holds and how a resumed run takes it back.

Kept apart from the loop (trainer.py) so that the loop reads top to bottom; `Trainer` inherits these.
The stored state: model, optimizer, step strategy, callbacks by state_key, position (epoch, batch,
global step, batch size), the partial epoch's metrics, best so far, results.csv's rows, scaler and every
random generator, so a resumed run continues exactly.
"""
from __future__ import annotations

import numbers
from pathlib import Path

import torch

from basinlab.engine.checkpoint import (
    load_checkpoint,
    load_weights,
    resolve_checkpoint,
    rng_state,
    sealed,
    set_rng_state,
    write_checkpoint,
)
from basinlab.engine.evaluate import Meter
from basinlab.errors import ConfigError
from basinlab.optim import optimizer_name_of


class CheckpointedState:
    """state_dict / resume / save of a Trainer (its attributes: see trainer.py)."""

    def state_dict(self) -> dict:
        return {
            "format": "basinlab-checkpoint/1",
            "config": self.cfg.to_dict(),
            "num_classes": self.train_loader.num_classes,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_name": optimizer_name_of(self.optimizer),
            "strategy": self.strategy.state_dict(),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step,
            "batch_size": self.train_loader.batch_size,
            "meter": self.meter.state_dict() if self.batch_in_epoch else None,
            "epoch_seconds": self.epoch_seconds if self.batch_in_epoch else 0.0,
            "best": dict(self.best), "nonfinite_skipped": self.nonfinite_skipped,
            "history": [plain_row(row) for row in self.run.results.rows],  # results.csv's rows
            "scaler": self.precision.state_dict(),
            "rng": rng_state(),
            # on a CPU, how its sums were split (see _note_thread_change); None where the device did the math
            "cpu_threads": torch.get_num_threads() if self.device.type == "cpu" else None,
        }

    def _branch_from(self, resume_state) -> Path | None:
        """The checkpoint a new run continues from when --save on this command names another folder than the
        checkpoint's (None: resume in place). Continuing one behind its run's last.pt in place would rewrite the
        run's later epochs, so that needs --save NEW."""
        if resume_state is None:
            return None
        checkpoint = resolve_checkpoint(self.cfg.resume)
        if (Path(self.cfg.results_dir) / self.cfg.save).resolve() != checkpoint.parent.resolve():
            return checkpoint  # api.make_config sets the checkpoint's own folder unless --save was given
        latest = checkpoint.parent / "last.pt"
        if not latest.is_file() or latest.resolve() == checkpoint.resolve():
            return None
        position = ("epoch", "batch_in_epoch", "global_step")
        last = load_checkpoint(latest, map_location="cpu")
        if all(last.get(k) == resume_state.get(k) for k in position):
            return None  # e.g. best.pt of the last epoch: the same point of the run
        raise ConfigError(f"{checkpoint} is behind the run's last.pt (epoch {last.get('epoch')}, step "
                          f"{last.get('global_step')}); resuming it in place would rewrite that run: add --save NEW "
                          f"to branch a new run from it")

    def _read_resume_checkpoint(self):
        if not self.cfg.resume:
            return None
        return load_checkpoint(resolve_checkpoint(self.cfg.resume), map_location="cpu")

    def _load_state(self, state: dict) -> None:
        load_weights(self.model, state, resolve_checkpoint(self.cfg.resume),
                     f"{self.cfg.model} for {self.train_loader.num_classes} classes")
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.step_context.updates = state["global_step"]
        self.train_loader.batch_size = state["batch_size"]
        self.optimizer = None
        self._apply_regime()
        self.optimizer.load_state_dict(state["optimizer"])
        self._apply_regime()  # param groups follow the regime, not the stored values
        self.strategy.load_state_dict(state["strategy"])
        self._load_callback_states(state["callbacks"])
        self.best, self.step_context.skipped = state["best"], state["nonfinite_skipped"]
        if state["meter"] is not None:
            self.meter = Meter(self.device)
            if self.run.is_main:  # the checkpoint holds rank 0's partial sums; other ranks restart theirs
                self.meter.load_state_dict(state["meter"])
            self.epoch_seconds = state["epoch_seconds"]
        self.precision.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.run.resume_records(self.epoch, state.get("history"), self.global_step)  # older checkpoints: results.csv
        where = (f"epoch {self.epoch + 1}, step {self.batch_in_epoch}" if self.batch_in_epoch
                 else f"the start of epoch {self.epoch + 1}")
        self.run.log.info(f"resumed from {self.cfg.resume} at {where} (global step {self.global_step})")
        self._note_thread_change(state.get("cpu_threads"))

    def _note_thread_change(self, trained_with) -> None:
        """On a CPU the thread count decides how a convolution's or a matmul's sums are split, so the same step
        gives other last digits with another count (float32 and bf16 alike) and a run drifts from there.
        Resuming with another count is allowed (a sweep's --jobs sets it) but said: from here the run is not
        the uninterrupted one."""
        now = torch.get_num_threads()
        if type(trained_with) is not int or trained_with < 1 or trained_with == now or self.device.type != "cpu":
            return  # older checkpoints and GPU runs have no count; a count that is not one says nothing
        self.run.log.info(f"note: this run trained with {trained_with} CPU threads and resumes with {now}: its "
                          f"sums split differently, so from here it is not bit for bit the uninterrupted run; "
                          f"OMP_NUM_THREADS={trained_with} continues it exactly (in a sweep, --jobs sets the count)")

    def _load_callback_states(self, stored) -> None:
        """Give each callback the state stored under its state_key; say which could not be placed."""
        if isinstance(stored, list):  # checkpoints before state keys: by position, when the list fits
            if len(stored) != len(self.callbacks):
                self.log.info(f"note: the checkpoint holds {len(stored)} callback states by position and this run "
                              f"has {len(self.callbacks)} callbacks; every callback starts fresh")
                return
            stored = {cb.state_key: s for cb, s in zip(self.callbacks, stored)}
        for cb in self.callbacks:
            if cb.state_key in stored:
                cb.load_state_dict(stored[cb.state_key])
            else:
                self.log.info(f"note: no stored state for callback {cb.state_key}; it starts fresh")
        unplaced = sorted(set(stored) - {cb.state_key for cb in self.callbacks})
        if unplaced:
            self.log.info("note: the checkpoint holds state of callbacks this run does not have: "
                          + ", ".join(unplaced))

    def save_checkpoint(self, best: bool = False) -> None:
        if not self.run.is_main:
            return
        state = sealed(self.state_dict())  # one checksum for the two or three files written
        write_checkpoint(state, self.run.path / "last.pt")
        self.run.checkpoint_written()
        if best:
            write_checkpoint(state, self.run.path / "best.pt")
        if self.cfg.save_all and self.batch_in_epoch == 0:
            write_checkpoint(state, self.run.path / f"epoch_{self.epoch}.pt")


def check_state_keys(callbacks) -> None:
    """Refuse two callbacks with one state key: a checkpoint could not tell their states apart."""
    seen = set()
    for cb in callbacks:
        if cb.state_key in seen:
            raise ConfigError(f"two callbacks share the state key {cb.state_key!r}; give each a distinct "
                              f"`key` attribute so a checkpoint can tell their states apart")
        seen.add(cb.state_key)


def plain_row(row: dict) -> dict:
    """A results row as Python numbers and strings (numpy scalars would not load with weights_only)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, bool) or value is None:
            out[str(key)] = value
        elif isinstance(value, numbers.Integral):
            out[str(key)] = int(value)
        elif isinstance(value, numbers.Real):
            out[str(key)] = float(value)
        else:
            out[str(key)] = str(value)
    return out
