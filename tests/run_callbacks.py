"""Callbacks the resume tests share: stop a run after a given step, or keep a copy of its checkpoint there."""
import os
import shutil
import signal

from basinlab.engine.callbacks import Callback


class InterruptAfter(Callback):
    """SIGINT to this process after global step `step`: the run checkpoints after that step and stops."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, run, result):
        if run.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class KeepCheckpoint(Callback):
    """Copies last.pt once the run has taken `after` updates (the checkpoint written before is then complete)."""

    def __init__(self, after, target):
        self.after, self.target = after, target

    def on_step_end(self, run, result):
        if run.global_step == self.after:
            shutil.copy(run.path / "last.pt", self.target)
