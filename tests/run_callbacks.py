"""What the resume tests share: stop a run after a given step, keep a copy of its checkpoint there, resume it and
compare."""
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


def resume_and_load(mid, results_dir, straight="straight", resumed="resumed"):
    """Resume the checkpoint `mid` as the run `resumed` in `results_dir` (the CLI, as a user would), then return the
    last.pt of the uninterrupted run `straight` and of the resumed one, each with its model's tensors equal."""
    import torch

    from basinlab.cli import main
    assert main(["train", "--resume", str(mid), "--save", resumed, "--results-dir", str(results_dir), "--quiet"]) == 0
    a = torch.load(results_dir / straight / "last.pt", weights_only=True)
    b = torch.load(results_dir / resumed / "last.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    return a, b
