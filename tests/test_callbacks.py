"""Callbacks: state keyed by state_key across resumes, and the seam before the optimizer step."""
from types import SimpleNamespace

import pytest
import torch

import basinlab
from basinlab.engine.callbacks import Callback
from basinlab.engine.trainer import Trainer
from basinlab.errors import ConfigError
from basinlab.methods.registry import build_method

QUICK = dict(model="mnist", dataset="mnist5k", train_limit=256, val_limit=128, batch_size=64, quiet=True)


class Counter(Callback):
    """Counts the steps it saw; its count is its checkpointed state."""

    def __init__(self, key=None):
        self.key, self.steps, self.restored = key, 0, None

    def on_step_end(self, run, result):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = self.restored = state["steps"]


class Other(Counter):
    pass


def test_resume_gives_each_callback_its_own_state(tmp_path, no_run_plots):
    first, second = Counter("a"), Other()
    run = basinlab.train(results_dir=str(tmp_path), save="run", epochs=1, callbacks=[first, Counter("b"), second],
                         **QUICK)
    assert first.steps == second.steps == 4
    # another order, one callback gone and one new: each state goes to its own callback
    again_a, again_other, fresh = Counter("a"), Other(), Counter("new")
    basinlab.train(resume=str(run.path), epochs=2, quiet=True, callbacks=[fresh, again_other, again_a])
    assert again_a.restored == 4 and again_other.restored == 4 and fresh.restored is None
    assert again_a.steps == 8 and fresh.steps == 4
    log = (run.path / "log.txt").read_text()
    assert "no stored state for callback Counter[new]" in log
    assert "callbacks this run does not have: Counter[b]" in log


def test_two_callbacks_with_one_state_key_are_refused():
    with pytest.raises(ConfigError, match="share the state key 'Counter'"):
        Trainer(basinlab.make_config(), callbacks=[Counter(), Counter()])


def _stub(callbacks):
    lines = []
    return SimpleNamespace(callbacks=callbacks, log=SimpleNamespace(info=lines.append)), lines


def test_old_checkpoints_with_positional_callback_states_still_load():
    a, b = Counter("a"), Other()
    stub, _ = _stub([a, b])
    Trainer._load_callback_states(stub, [{"steps": 3}, {"steps": 5}])  # the list form of older checkpoints
    assert (a.steps, b.steps) == (3, 5)
    c = Counter()
    stub, lines = _stub([c])
    Trainer._load_callback_states(stub, [{"steps": 3}, {"steps": 5}])
    assert c.restored is None and "every callback starts fresh" in lines[0]


class FreezeGradients(Callback):
    """Zeroes every gradient in the seam: with plain SGD (no momentum, no decay) nothing may move."""

    def __init__(self):
        self.calls = 0

    def on_before_optimizer_step(self, run, optimizer):
        self.calls += 1
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.zero_()


@pytest.mark.parametrize("options", [
    {},                                                    # plain step
    {"ghost_batch": 16},                                   # gradient accumulation
    {"server": "msgd", "workers": 2},                      # a strategy with its own update rule
], ids=["plain", "ghost-batch", "msgd"])
def test_callbacks_see_and_edit_the_gradients_before_each_step(tmp_path, no_run_plots, options):
    freeze = FreezeGradients()
    cfg = basinlab.make_config(results_dir=str(tmp_path), save="frozen", epochs=1, optimizer="SGD", lr=0.1,
                               momentum=0.0, weight_decay=0.0, norm_mode="none", **QUICK, **options)
    strategy, callbacks = build_method(cfg)
    trainer = Trainer(cfg, strategy=strategy, callbacks=[*callbacks, freeze])
    trainer.setup()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit()
    assert freeze.calls == trainer.global_step > 0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
