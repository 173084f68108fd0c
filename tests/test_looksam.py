"""LookSAM (--looksam): the paper's Algorithm 1 written out step by step, the passes really run, buffers, fp16 loss
scales, exact resume mid-cycle, two processes, refusals.

The reference below is Liu et al. 2022 (CVPR, arXiv:2203.02714), Algorithm 1, from the paper: the public
implementations are not it. Compared side by side with basinlab's step on the same seeded model and batches
(outside the repository), pytorch-optimizer's LookSAM (kozistr/pytorch_optimizer,
pytorch_optimizer/optimizer/sam.py, commit 7a076d2f8f09735e82f9ec1d2d389ec2526bbdbb) differs in four ways: it runs
the second forward-backward on every step (at w between SAM steps: no saving); its step count is the base
optimizer's state['step'], so plain SGD never leaves step 0 (SAM every step) and SGD with momentum fails
(KeyError: 'step'); on the steps between, the caller's gradient is not zeroed before that second pass, so g enters
twice; and g_v and the reuse ratio are per parameter tensor instead of Algorithm 1's whole-model vectors. With
Adam, a variant of the reference with those three changes matched it to 2.5e-7 (relative), Algorithm 1 differs
from it by 8e-2; basinlab's step matches Algorithm 1 to 7e-7 with SGD, SGD with momentum and Adam.
"""
import copy
import types

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

import basinlab
from basinlab.api import build_run, make_config
from basinlab.cli import main
from basinlab.engine.callbacks import Callback
from basinlab.engine.precision import Precision
from basinlab.engine.step_context import StepContext
from basinlab.errors import ConfigError
from basinlab.methods.looksam.method import LookSAMStep, configure, orthogonal_component
from basinlab.methods.registry import build_method
from basinlab.records.results import TIME_COLUMNS
from tests.run_callbacks import KeepCheckpoint

CPU = torch.device("cpu")
TINY = "{'dropout': 0.0, 'width': 4, 'hidden': 16}"
RHO, ALPHA = 0.05, 0.7


# ------------------------------------------------------------------------------------------ the reference
def algorithm_1(model, batches, optimizer, *, rho, k, alpha, lost_steps=()):
    """Algorithm 1 of the paper, one batch after another, with plain autograd on `model` (no BatchNorm):

        g = grad L(w); if t mod k == 0: g_s = grad L(w + rho g/||g||),
                                        g_v = g_s - ||g_s|| cos(theta) g/||g||, cos(theta) = g.g_s/(||g|| ||g_s||)
                       else:            g_s = g + alpha ||g||/||g_v|| g_v
        the optimizer steps with g_s.

    t counts from 0. A step in `lost_steps` is one whose update is lost (fp16 overflow: the scaler skips it); it
    stores no g_v, and a step without a stored g_v takes g alone."""
    names = [n for n, _ in model.named_parameters()]

    def grad(weights, x, y):
        leaves = {n: w.clone().requires_grad_(True) for n, w in weights.items()}
        loss = F.cross_entropy(functional_call(model, leaves, (x,)), y)
        return dict(zip(names, torch.autograd.grad(loss, [leaves[n] for n in names])))

    def norm(v):
        return torch.sqrt(sum((v[n] ** 2).sum() for n in names))

    g_v = None
    for t, (x, y) in enumerate(batches):
        w = {n: p.detach().clone() for n, p in model.named_parameters()}
        g = grad(w, x, y)
        if t in lost_steps:
            continue
        if t % k == 0:
            g_s = grad({n: w[n] + rho * g[n] / norm(g) for n in names}, x, y)
            cos = sum((g[n] * g_s[n]).sum() for n in names) / (norm(g) * norm(g_s))
            g_v = {n: g_s[n] - norm(g_s) * cos * g[n] / norm(g) for n in names}
            direction = g_s
        elif g_v is None:
            direction = g
        else:
            direction = {n: g[n] + alpha * norm(g) / norm(g_v) * g_v[n] for n in names}
        for n, p in model.named_parameters():
            p.grad = direction[n].clone()
        optimizer.step()
        optimizer.zero_grad()
    return g_v


class CountingMLP(nn.Module):
    """A small MLP that counts its training forward passes (those with gradients)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        self.forwards = 0

    def forward(self, x):
        if torch.is_grad_enabled():
            self.forwards += 1
        return self.net(x)


def seeded_batches(count, rows=16, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, 6, generator=gen), torch.randint(0, 3, (rows,), generator=gen)) for _ in range(count)]


def strategy_on(model, optimizer, *, k, alpha=ALPHA, scaler=None, ghost_batch=None):
    precision = Precision("none", None, CPU)
    precision.scaler = scaler  # a CPU GradScaler stands in for fp16's: the same scaled gradients, on this machine
    ctx = StepContext(model, nn.CrossEntropyLoss(), precision)
    ctx.optimizer = optimizer
    strategy = LookSAMStep(RHO, k, alpha, ghost_batch=ghost_batch)
    strategy.setup(ctx, types.SimpleNamespace(batch_size=16, device=CPU, log=lambda message: None))
    return strategy, ctx


def relative_error(got: nn.Module, want: nn.Module) -> float:
    return max(float((a.detach() - b.detach()).norm() / b.detach().norm())
               for a, b in zip(got.parameters(), want.parameters()))


OPTIMIZERS = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1),
              "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
              "adam": lambda p: torch.optim.Adam(p, lr=0.01)}


# ------------------------------------------------------------------------------------------ the algorithm
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_steps_follow_algorithm_1_and_run_k_plus_1_passes_per_k_steps(optimizer):
    torch.manual_seed(1)
    model = CountingMLP()
    reference = copy.deepcopy(model.net)
    strategy, ctx = strategy_on(model, OPTIMIZERS[optimizer](model.parameters()), k=3)
    batches = seeded_batches(8)  # SAM steps at t = 0, 3, 6; g_v reused on the 5 others
    for x, y in batches:
        strategy.train_step(ctx, x, y)
    g_v = algorithm_1(reference, batches, OPTIMIZERS[optimizer](reference.parameters()), rho=RHO, k=3, alpha=ALPHA)
    assert relative_error(model.net, reference) < 2e-6
    for name, v in g_v.items():
        torch.testing.assert_close(strategy.gv["net." + name], v, rtol=1e-5, atol=1e-7)
    assert model.forwards == 8 + 3 and strategy.passes == [11, 8] and strategy.t == 8
    # the reuse term really acts: alpha = 0 (SAM every 3 steps, plain steps between) ends elsewhere
    plain_between = copy.deepcopy(reference)
    algorithm_1(plain_between, batches, OPTIMIZERS[optimizer](plain_between.parameters()), rho=RHO, k=3, alpha=0.0)
    assert relative_error(model.net, plain_between) > 1e-4


def test_orthogonal_component_is_the_part_of_g_s_orthogonal_to_g():
    gen = torch.Generator().manual_seed(0)
    g = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    g_s = [torch.randn(4, 3, generator=gen), torch.randn(5, generator=gen)]
    flat_g, flat_s = torch.cat([t.flatten() for t in g]), torch.cat([t.flatten() for t in g_s])
    flat_v = torch.cat([t.flatten() for t in orthogonal_component(g, g_s)])
    assert abs(float(flat_v @ flat_g)) < 1e-5 * float(flat_v.norm() * flat_g.norm())
    torch.testing.assert_close(flat_s - flat_v, (flat_s @ flat_g) / (flat_g @ flat_g) * flat_g)
    assert LookSAMStep(0.05, 5).expected_passes() == pytest.approx(1.2)


def test_k_1_is_sam_every_step_and_ghost_chunks_give_the_batch_gradient():
    """K = 1: every step is SAM's, g_v never used; without BatchNorm, chunks of 4 give the whole batch's gradient."""
    torch.manual_seed(3)
    model = CountingMLP()
    reference = copy.deepcopy(model.net)
    strategy, ctx = strategy_on(model, torch.optim.SGD(model.parameters(), lr=0.1), k=1, ghost_batch=4)
    batches = seeded_batches(3)
    for x, y in batches:
        strategy.train_step(ctx, x, y)
    algorithm_1(reference, batches, torch.optim.SGD(reference.parameters(), lr=0.1), rho=RHO, k=1, alpha=ALPHA)
    assert relative_error(model.net, reference) < 2e-6
    assert model.forwards == 3 * 2 * 4 and strategy.passes == [6, 3]  # 2 passes of 4 chunks per step


# ------------------------------------------------------------------------------------------ fp16's loss scale
def test_a_loss_scale_changing_between_steps_changes_nothing():
    """The scale doubles after every step (so each reuse step's g is at another scale than the stored g_v's):
    the weights and g_v are those of the unscaled run; the grad-norm column is unscaled."""
    torch.manual_seed(4)
    model = CountingMLP()
    unscaled_model = copy.deepcopy(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_factor=2.0, growth_interval=1)
    scaled, ctx = strategy_on(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), k=3, scaler=scaler)
    plain, plain_ctx = strategy_on(unscaled_model, torch.optim.SGD(unscaled_model.parameters(), lr=0.1,
                                                                    momentum=0.9), k=3)
    for x, y in seeded_batches(5):
        scaled.train_step(ctx, x, y)
        plain.train_step(plain_ctx, x, y)
    assert scaler.get_scale() == 2.0 ** 15
    assert relative_error(model, unscaled_model) < 1e-6
    for name, v in plain.gv.items():
        torch.testing.assert_close(scaled.gv[name], v, rtol=1e-6, atol=0)
    run = types.SimpleNamespace(epoch=0, log=lambda message: None)
    assert scaled.epoch_metrics(run)["looksam_grad_norm"] == pytest.approx(
        plain.epoch_metrics(run)["looksam_grad_norm"], rel=1e-6)


def test_an_overflowing_sam_step_is_skipped_and_the_steps_until_the_next_take_g_alone():
    """The first pass of step 0 overflows (an infinite gradient, as fp16's would): a plain step, which the scaler
    skips (halving its scale), and no g_v; steps 1 and 2 are then plain, step 3 is a SAM step again."""
    torch.manual_seed(5)
    model = CountingMLP()
    reference = copy.deepcopy(model.net)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=10_000)
    strategy, ctx = strategy_on(model, torch.optim.SGD(model.parameters(), lr=0.1), k=3, scaler=scaler)
    overflow = [True]

    def overflow_once(grad):
        if overflow.pop() if overflow else False:
            return grad * float("inf")
        return grad
    model.net[0].weight.register_hook(overflow_once)
    batches = seeded_batches(6)
    for x, y in batches:
        strategy.train_step(ctx, x, y)
    assert scaler.get_scale() == 2.0 ** 9 and strategy.t == 6
    algorithm_1(reference, batches, torch.optim.SGD(reference.parameters(), lr=0.1), rho=RHO, k=3, alpha=ALPHA,
                lost_steps={0})
    assert relative_error(model.net, reference) < 2e-6
    assert strategy.passes == [1 + 1 + 1 + 2 + 1 + 1, 6]  # the overflowing SAM step ran its first pass only


# ------------------------------------------------------------------------------------------ buffers
@pytest.mark.parametrize("norm", ["batch", "online"])
def test_the_ascent_pass_leaves_norm_statistics_alone(tmp_path, norm):
    """A SAM step on the model with BatchNorm (or Online Normalization): the running statistics (online-norm state)
    advance by the first pass only, and the step applies the gradient at w + rho g/||g|| taken from the buffers
    the first pass started with."""
    cfg = make_config(results_dir=str(tmp_path), save="bn", quiet=True, model="mnist", model_config=TINY,
                      norm_mode=norm, train_limit=64, val_limit=32, batch_size=32, augment=False, channels_last="off",
                      optimizer="SGD", lr=0.1, momentum=0.0, weight_decay=0.0, looksam=RHO, looksam_k=2)
    trainer = build_run(cfg)
    trainer.setup()
    model = trainer.model
    first, second = copy.deepcopy(model), copy.deepcopy(model)
    x, y = next(iter(trainer.train_loader.epoch(0)))
    trainer.strategy.train_step(trainer.step_context, x, y)

    first.train()
    F.cross_entropy(first(x), y).backward()
    g = {n: p.grad for n, p in first.named_parameters()}
    scale = RHO / torch.sqrt(sum((v ** 2).sum() for v in g.values()))
    with torch.no_grad():
        for n, p in second.named_parameters():
            p.add_(scale * g[n])
    second.train()
    F.cross_entropy(second(x), y).backward()
    for p, q, w in zip(model.parameters(), second.parameters(), first.parameters()):
        torch.testing.assert_close(p.detach(), w.detach() - 0.1 * q.grad, rtol=1e-5, atol=1e-6)
    for (name, b), (_, want) in zip(model.named_buffers(), first.named_buffers()):
        assert torch.equal(b, want), f"{name} moved in the ascent pass"
    trainer.close_strategy()


# ------------------------------------------------------------------------------------------ whole runs
class ForwardCounter(Callback):
    """Counts the model's training forward passes per epoch (a forward hook; the setup's probe has no gradients)."""

    def __init__(self):
        self.per_epoch = {}

    def on_fit_start(self, run):
        def count(module, inputs, output):
            if module.training and torch.is_grad_enabled():
                self.per_epoch[run.epoch] = self.per_epoch.get(run.epoch, 0) + 1
        run.model.register_forward_hook(count)


RUN = ["--model", "mnist", "--model-config", TINY, "--train-limit", "64", "--val-limit", "32", "-b", "16",
       "--optimizer", "SGD", "--lr", "0.05", "--momentum", "0.9", "--looksam", "0.05", "--looksam-k", "3"]


def test_passes_per_step_are_counted_in_results_and_log_and_are_the_passes_run(tmp_path, no_run_plots):
    """K = 3, 4 updates per epoch, t running on across epochs: SAM steps at t = 0, 3 (epoch 1: 6 passes) and 6
    (epoch 2: 5 passes); with ghost batches of 8 each pass is 2 forwards."""
    counter = ForwardCounter()
    run = basinlab.train(results_dir=str(tmp_path), save="count", quiet=True, model="mnist", model_config=TINY,
                         train_limit=64, val_limit=32, batch_size=16, epochs=2, ghost_batch=8, optimizer="SGD",
                         lr=0.05, looksam=0.05, looksam_k=3, callbacks=[counter])
    assert list(run.history["passes_per_step"]) == [1.5, 1.25]
    assert counter.per_epoch == {0: 6 * 2, 1: 5 * 2}
    log = (tmp_path / "count" / "log.txt").read_text()
    assert "1.333 forward-backward passes per step" in log
    assert "looksam epoch 1: 6 forward-backward passes for 4 updates (1.5 per step" in log
    assert "looksam epoch 2: 5 forward-backward passes for 4 updates (1.25 per step" in log
    assert run.history["looksam_grad_norm"].notna().all()


def test_resume_mid_cycle_is_bit_identical(tmp_path, no_run_plots):
    """A checkpoint after 2 updates (t = 2: g_v from t = 0 still to be reused) and the epoch boundary at t = 4 (g_v
    from t = 3): the branch resumed from it ends where the uninterrupted run ends, results.csv included."""
    straight = tmp_path / "straight"
    keep = KeepCheckpoint(3, tmp_path / "mid.pt")
    basinlab.train(results_dir=str(tmp_path), save="straight", quiet=True, model="mnist", model_config=TINY,
                   train_limit=64, val_limit=32, batch_size=16, epochs=2, optimizer="SGD", lr=0.05, momentum=0.9,
                   looksam=0.05, looksam_k=3, save_every_steps=2, callbacks=[keep])
    mid = torch.load(tmp_path / "mid.pt", weights_only=True)
    assert mid["global_step"] == 2 and mid["strategy"]["t"] == 2 and mid["strategy"]["gv"] is not None
    assert main(["train", "--resume", str(tmp_path / "mid.pt"), "--save", "resumed", "--results-dir",
                 str(tmp_path), "--quiet"]) == 0
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["strategy"]["gv"]:
        assert torch.equal(a["strategy"]["gv"][key], b["strategy"]["gv"][key]), key
    assert a["strategy"]["t"] == b["strategy"]["t"] == 8
    pd.testing.assert_frame_equal(pd.read_csv(straight / "results.csv").drop(columns=TIME_COLUMNS),
                                  pd.read_csv(tmp_path / "resumed" / "results.csv").drop(columns=TIME_COLUMNS))


def test_the_lr_range_test_sweeps_looksam_steps(tmp_path, capsys):
    code = main(["lr-range", "--model", "mnist", "--model-config", TINY, "--train-limit", "64", "--val-limit", "32",
                 "-b", "16", "--looksam", "0.05", "--looksam-k", "2", "--num-steps", "4", "-o", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    import json
    assert json.loads((tmp_path / "out" / "lr_range.json").read_text())["step"] == "looksam"


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("options, words", [
    (dict(looksam=0.0), "--looksam must be a positive finite number"),
    (dict(looksam=float("nan")), "--looksam must be a finite number"),
    (dict(looksam=0.05, looksam_k=0), "--looksam-k"),
    (dict(looksam=0.05, looksam_alpha=-1.0), "--looksam-alpha"),
    (dict(looksam_k=3), "needs --looksam"),
])
def test_bad_options_are_refused_in_one_line(options, words):
    with pytest.raises(ConfigError) as err:
        configure(make_config(**options))
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("rule", ["local", "global"])
def test_the_perturbation_rule_is_sams_option(rule):
    assert configure(make_config(looksam=0.05, sam_perturbation=rule))[0].perturbation == rule


def test_looksam_with_another_step_method_or_too_large_a_ghost_batch_is_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="cannot be combined"):
        build_method(make_config(looksam=0.05, smoothout=0.01))
    code = main(["train", *RUN, "--ghost-batch", "32", "--results-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "larger than the batch size 16" in err[0]
    assert not (tmp_path / "run").exists() and not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ two processes
DDP_RUN = ["--train-limit", "128", "--val-limit", "32", "-b", "64", "--norm-mode", "none", "--channels-last", "off",
           "--model-config", "{'dropout': 0.0, 'width': 4, 'hidden': 16}", "--optimizer", "SGD", "--lr", "0.05",
           "--momentum", "0", "--seed", "3", "--epochs", "1", "--looksam", "0.05", "--looksam-k", "2", "--quiet"]


def looksam_by_hand(tmp_path, local: bool):
    """Two updates on 2 x 32 rows, written out: a SAM step (eps per shard, g_s at each shard's w + eps averaged;
    g the averaged first-pass gradient; g_v from those two), then g + alpha ||g||/||g_v|| g_v of the averaged g."""
    trainer = build_run(make_config(**_options(DDP_RUN), results_dir=str(tmp_path), save="hand"))
    trainer.setup()
    model = trainer.model
    names = [n for n, _ in model.named_parameters()]
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = list(trainer.train_loader.epoch(0))

    def grad(weights, x, y):
        leaves = {n: v.clone().requires_grad_(True) for n, v in weights.items()}
        loss = F.cross_entropy(functional_call(model, leaves, (x,)), y)
        return dict(zip(names, torch.autograd.grad(loss, [leaves[n] for n in names])))

    def norm(v):
        return torch.sqrt(sum((v[n] ** 2).sum() for n in names))

    def mean(parts):
        return {n: sum(p[n] for p in parts) / len(parts) for n in names}

    x, y = batches[0]
    shards = [slice(0, 32), slice(32, 64)] if local else [slice(0, 64)]
    firsts = [grad(w, x[s], y[s]) for s in shards]
    g_s = mean([grad({n: w[n] + 0.05 * g[n] / norm(g) for n in names}, x[s], y[s]) for g, s in zip(firsts, shards)])
    g = mean(firsts)
    g_v = {n: g_s[n] - (sum((g[m] * g_s[m]).sum() for m in names) / norm(g) ** 2) * g[n] for n in names}
    w = {n: w[n] - 0.05 * g_s[n] for n in names}
    x, y = batches[1]
    g = grad(w, x, y)
    return {n: w[n] - 0.05 * (g[n] + ALPHA * norm(g) / norm(g_v) * g_v[n]) for n in names}


def _options(argv):
    """Keyword options of make_config for the flags of DDP_RUN."""
    pairs = dict(zip(argv[::2], argv[1::2]))
    return dict(train_limit=int(pairs["--train-limit"]), val_limit=int(pairs["--val-limit"]), batch_size=64,
                norm_mode="none", channels_last="off", model_config=pairs["--model-config"], optimizer="SGD",
                lr=0.05, momentum=0.0, seed=3, looksam=0.05, looksam_k=2, quiet=True)
