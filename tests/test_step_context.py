"""The step seam: a StepContext any process can build, a read-only RunInfo, and the strategy hooks the loop calls
(lr_factor once, sync before every checkpoint and validation, close on every exit)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import basinlab
from basinlab.api import build_run, make_config
from basinlab.cli import main
from basinlab.engine.step_context import StepContext
from basinlab.engine.steps import PlainStep
from basinlab.models import create_model

ROOT = Path(__file__).resolve().parents[1] / "basinlab"
QUICK = dict(train_limit=128, val_limit=64, batch_size=32, epochs=2, quiet=True)


def one_step_weights(seed: int = 0) -> torch.Tensor:
    """The MNIST convnet's weights after one plain SGD step on a seeded batch, with a context from the config."""
    torch.manual_seed(seed)
    model = create_model("mnist", 10, "mnist5k")
    ctx = StepContext.from_config(make_config(grad_clip=0.5, channels_last="off"), model, torch.device("cpu"))
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    PlainStep().train_step(ctx, x, y)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_another_process_builds_the_same_step_from_the_config():
    code = ("import torch; from tests.test_step_context import one_step_weights; "
            "torch.set_num_threads(1); print(repr(one_step_weights().double().sum().item()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT.parent, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    here = one_step_weights().double().sum().item()
    assert float(done.stdout.strip()) == here
    torch.manual_seed(0)
    assert not torch.equal(one_step_weights(), torch.cat([p.detach().flatten() for p in
                                                          create_model("mnist", 10, "mnist5k").parameters()]))


def test_the_run_info_is_read_only(tmp_path):
    trainer = build_run(make_config(results_dir=str(tmp_path), save="r", **QUICK))
    trainer.setup()
    try:
        with pytest.raises(AttributeError, match="read-only.*request_stop"):
            trainer.info.epoch = 3
        info = trainer.info
        assert info.batch_size == 32 and info.steps_per_epoch == 4 and info.model is trainer.model
    finally:
        trainer.run.close()


class Recording(PlainStep):
    """A plain step that records the loop's calls of the strategy hooks."""

    def __init__(self, factor=1.0):
        super().__init__()
        self.calls, self.factor = [], factor

    def lr_factor(self, run):
        self.calls.append("lr_factor")
        return self.factor

    def sync(self, ctx):
        self.calls.append("sync")

    def close(self):
        self.calls.append("close")


def test_the_loop_calls_sync_before_checkpoints_and_validation_and_close_at_the_end(tmp_path, no_run_plots):
    strategy = Recording(factor=0.5)
    run = basinlab.train(results_dir=str(tmp_path), save="r", optimizer="SGD", lr=0.2, save_every_steps=2,
                         strategy=strategy, **QUICK)
    # per epoch of 4 steps: a step checkpoint after step 2, then validation (the epoch's checkpoint follows it)
    assert strategy.calls == ["lr_factor", "sync", "sync", "sync", "sync", "close"]
    assert run.history["lr"].tolist() == [pytest.approx(0.1)] * 2  # the regime scaled once, by lr_factor
    assert "regime: every lr x 0.5 for step plain" in (run.path / "log.txt").read_text()


def test_close_runs_when_the_run_fails(tmp_path, capsys, no_run_plots):
    strategy = Recording()
    with pytest.raises(Exception, match="non-finite loss"):
        basinlab.train(results_dir=str(tmp_path), save="nan", optimizer="SGD", lr=1e30, strategy=strategy, **QUICK)
    assert strategy.calls[-1] == "close"


def test_methods_reach_the_run_only_through_the_context_and_the_run_info():
    """No method or callback names the trainer: what they read comes from ctx or run, what they change from
    their return values, lr_factor and request_stop."""
    offenders = []
    for path in [*sorted((ROOT / "methods").rglob("*.py")), ROOT / "tuning" / "callbacks.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Name, ast.arg)) and getattr(node, "id", getattr(node, "arg", None)) in (
                    "trainer", "Trainer"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders


def test_a_strategy_can_refuse_at_setup_before_the_folder_exists(tmp_path, capsys):
    assert main(["train", "--ghost-batch", "64", "-b", "32", "--train-limit", "128", "--results-dir",
                 str(tmp_path), "--save", "r"]) == 2
    assert "--ghost-batch 64 is larger than the batch size 32" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("overflow", [False, True])
def test_a_strategys_own_step_runs_inside_the_scalers_overflow_check(overflow):
    """fp16's path with a rule of the strategy's own (msgd's kind): skipped when the gradients overflowed, taken
    once otherwise, and the scale updated after either (a CPU GradScaler stands in for CUDA's)."""
    from basinlab.engine.precision import Precision
    precision = Precision("none", None, torch.device("cpu"))
    precision.scaler = torch.amp.GradScaler("cpu", init_scale=4.0, growth_interval=1)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    precision.backward((weight * (float("inf") if overflow else 1.0)).sum())
    precision.unscale_(optimizer)
    taken = []
    precision.step(optimizer, lambda: taken.append(weight.grad.clone()))
    assert len(taken) == (0 if overflow else 1)
    if not overflow:
        assert torch.equal(taken[0], torch.ones(3))  # the rule saw the unscaled gradient
    assert precision.scaler.get_scale() == (2.0 if overflow else 8.0)
    assert "step" not in vars(optimizer)  # the optimizer's own step is back
