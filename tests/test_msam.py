"""Momentum-SAM (--msam): the step against the algorithm written out, fp16, resume, refusals, the LR range test.

The reference below is Momentum-SAM as the authors' SGD optimizer computes it (MarlonBecker/MSAM,
optimizer/msam.py with main.py's training loop, commit 780fa4f623fe0c99760fd7cfb1a94d14f00179ee), written out
independently: basinlab's step matched that code on these models and batches to 1.5e-6 relative over 12 steps
(weights and momentum buffers; BatchNorm and none, with and without --grad-clip; 3.6e-6 at rho 3, wd 5e-2).
Tiny MNIST convnets on the embedded mnist5k keep it fast.
"""
import copy
import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import basinlab
from basinlab.api import build_run, make_config
from basinlab.cli import main
from basinlab.engine.callbacks import Callback
from basinlab.engine.precision import Precision, cpu_bf16_native
from basinlab.engine.trainer import TrainingInterrupted
from basinlab.errors import ConfigError
from basinlab.methods.msam.method import configure
from basinlab.methods.msam.step import MomentumSAMStep, optimizer_problem
from basinlab.records.results import TIME_COLUMNS
from tests.run_callbacks import InterruptAfter
from tests.test_gsam import gradients, regime_settings_of  # the ghost-chunk gradient; a run's regime steps

pytestmark = pytest.mark.usefixtures("no_run_plots")

STEPS_PER_EPOCH, EPOCHS, LR0, LR_END, MOMENTUM, WD, RHO = 4, 2, 0.1, 0.01, 0.9, 5e-3, 0.5
# SGD whose lr falls linearly every step: the perturbation's length must not follow it
REGIME = [{"epoch": 0, "optimizer": "SGD", "lr": LR0, "momentum": MOMENTUM, "weight_decay": WD,
           "schedule": {"name": "linear", "epochs": EPOCHS, "end_lr": LR_END}}]
LRS = [LR0 + (LR_END - LR0) * (k / STEPS_PER_EPOCH) / EPOCHS for k in range(EPOCHS * STEPS_PER_EPOCH)]


def run_options(tmp_path, name="run", **options):
    settings = dict(results_dir=str(tmp_path), save=name, quiet=True, model="mnist", train_limit=64, val_limit=32,
                    batch_size=16, epochs=EPOCHS, augment=False, channels_last="off", msam=RHO,
                    model_config={"width": 4, "hidden": 16, "dropout": 0.0, "regime": REGIME})
    settings.update(options)
    return settings


# ------------------------------------------------------------------------------------------ the reference
def msam_reference(model, batches, rho, chunk=None, clip=None, autocast=None):
    """Momentum-SAM's updates written out: w~ = w - rho v / (||v|| + 1e-12) (w~ = w at the first step, before any
    v); g at w~ (BatchNorm statistics advance there), clipped to `clip` in norm; d = g + wd w~; v = mu v + d (v = d
    at the first); w = w - lr v. Returns the model at w, its momentum, the weights after each step and the ||v||
    each perturbation was scaled by."""
    model = copy.deepcopy(model)
    model.train()
    params = list(model.parameters())
    w = [p.detach().clone() for p in params]
    velocity, after_steps, norms = None, [], []
    for (x, y), lr in zip(batches, LRS):
        if velocity is None:
            perturbed = w
        else:
            norm = torch.sqrt(sum((v ** 2).sum() for v in velocity))
            norms.append(float(norm))
            perturbed = [wi - rho * v / (norm + 1e-12) for wi, v in zip(w, velocity)]
        with torch.no_grad():
            for p, wi in zip(params, perturbed):
                p.copy_(wi)
        with autocast or torch.autocast("cpu", enabled=False):
            g = gradients(model, x, y, chunk)
        if clip:
            total = torch.sqrt(sum((gi ** 2).sum() for gi in g))
            g = [gi * min(1.0, clip / (float(total) + 1e-6)) for gi in g]
        d = [gi + WD * pi for gi, pi in zip(g, perturbed)]
        velocity = d if velocity is None else [MOMENTUM * v + di for v, di in zip(velocity, d)]
        w = [wi - lr * v for wi, v in zip(w, velocity)]
        after_steps.append(torch.cat([wi.flatten() for wi in w]))
    with torch.no_grad():
        for p, wi in zip(params, w):
            p.copy_(wi)
    return model, velocity, after_steps, norms


def relative_error(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


class WeightsSeen(Callback):
    """The weights every callback sees after each step and right before each optimizer step."""

    def __init__(self):
        self.after_step, self.before_update = [], []

    def on_before_optimizer_step(self, run, optimizer):
        self.before_update.append(torch.cat([p.detach().flatten().clone() for p in run.model.parameters()]))

    def on_step_end(self, run, result):
        self.after_step.append(torch.cat([p.detach().flatten().clone() for p in run.model.parameters()]))


CASES = {  # name: (options, chunk, clip, autocast, tolerance)
    "batch norm": (dict(), None, None, None, 1e-5),
    "ghost batches, clipping": (dict(ghost_batch=6, grad_clip=0.5), 6, 0.5, None, 1e-5),
    "online norm": (dict(norm_mode="online"), None, None, None, 1e-5),
    "bf16": (dict(amp="bf16"), None, None, "bf16", 1e-4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_msam_steps_equal_the_algorithm_written_out(tmp_path, case):
    options, chunk, clip, amp, tol = CASES[case]
    if amp == "bf16" and not cpu_bf16_native()[0]:
        pytest.skip("this CPU has no native bfloat16 (basinlab refuses --amp bf16 here)")
    trainer = build_run(make_config(**run_options(tmp_path, **options)), callbacks=[seen := WeightsSeen()])
    trainer.setup()
    start = copy.deepcopy(trainer.model)
    batches = [batch for epoch in range(EPOCHS) for batch in trainer.train_loader.epoch(epoch)]
    run = trainer.fit()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if amp else None
    want, velocity, after_steps, norms = msam_reference(start, batches, RHO, chunk, clip, autocast)
    errors = {name: relative_error(a, b) for (name, a), b in zip(trainer.model.named_parameters(), want.parameters())}
    for (name, a), b in zip(trainer.model.named_buffers(), want.buffers()):
        errors[name] = 0.0 if torch.equal(a, b) else relative_error(a.float(), b.float())
    for (name, p), v in zip(trainer.model.named_parameters(), velocity):
        errors[f"momentum of {name}"] = relative_error(trainer.optimizer.state[p]["momentum_buffer"], v)
    worst = max(errors, key=errors.get)
    assert errors[worst] < tol, f"{worst}: relative error {errors[worst]:.2e}"
    # every callback saw w, never w~: after each step the reference's w, before each update the previous w
    assert len(seen.after_step) == len(after_steps) == EPOCHS * STEPS_PER_EPOCH
    for got, expected in zip(seen.after_step, after_steps):
        assert relative_error(got, expected) < tol
    for before, previous in zip(seen.before_update[1:], seen.after_step):
        assert torch.equal(before, previous)
    history = run.history
    assert list(history["passes_per_step"]) == [1.0] * EPOCHS
    # the first step has no momentum and is not perturbed: 3 perturbed steps in epoch 1, 4 in epoch 2
    assert list(history["msam_momentum_norm"]) == pytest.approx([sum(norms[:3]) / 3, sum(norms[3:]) / 4], rel=1e-5)


# ------------------------------------------------------------------------------------------ fp16
def mnist_net():
    torch.manual_seed(0)
    return basinlab.models.create_model("mnist", 10, "mnist5k", width=4, hidden=16, dropout=0.0)


def flat(tensors):
    return torch.cat([t.detach().flatten() for t in tensors])


def scaled_steps(scale: float | None, overflow_at: int | None = None, steps: int = 3):
    """`steps` Momentum-SAM steps of the MNIST convnet on seeded batches, fp16's path with a CPU GradScaler standing
    in for CUDA's (`scale`) or none; at step `overflow_at` one weight's gradient is infinite, as an fp16 backward
    that overflowed leaves it. Returns (weights, momentum) after each step and the scale after the last."""
    from basinlab.engine.step_context import StepContext
    model = mnist_net()
    ctx = StepContext.from_config(make_config(channels_last="off"), model, torch.device("cpu"))
    if scale is not None:
        ctx.precision = Precision("none", None, torch.device("cpu"))
        ctx.precision.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=WD)
    strategy = MomentumSAMStep(RHO)
    settings = regime_settings_of(make_config(optimizer="SGD", lr=0.1, weight_decay=WD), model, epochs=1, steps=steps)
    run = SimpleNamespace(batch_size=16, device=torch.device("cpu"), log=lambda line: None, regime_settings=settings)
    strategy.setup(ctx, run)
    gen, states = torch.Generator().manual_seed(1), []
    for step in range(steps):
        x, y = torch.randn(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        hook = None
        if step == overflow_at:
            hook = next(model.parameters()).register_hook(lambda grad: grad * float("inf"))
        strategy.train_step(ctx, x, y)
        if hook is not None:
            hook.remove()
        momentum = [ctx.optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
        states.append((flat(model.parameters()).clone(), flat(momentum).clone()))
    scaler = ctx.precision.scaler
    return states, strategy.epoch_metrics(None), scaler.get_scale() if scaler else None


def test_fp16_scaled_gradients_give_the_unscaled_step_and_an_overflowed_step_is_skipped_whole():
    plain, metrics, _ = scaled_steps(None)
    scaled, _, scale = scaled_steps(2.0 ** 12)
    for (w_plain, v_plain), (w_scaled, v_scaled) in zip(plain, scaled):
        assert torch.equal(w_scaled, w_plain) and torch.equal(v_scaled, v_plain)  # power-of-two scaling is exact
    assert scale == 2.0 ** 12 and metrics["passes_per_step"] == 1.0
    overflowed, _, scale = scaled_steps(2.0 ** 12, overflow_at=1)
    assert torch.equal(overflowed[1][0], overflowed[0][0]) and torch.equal(overflowed[1][1], overflowed[0][1])
    assert scale == 2.0 ** 11  # the scaler skipped step 1 (weights w, momentum kept) and halved its scale
    assert not torch.equal(overflowed[2][0], overflowed[1][0])  # the next step trains on, from the same momentum


# ------------------------------------------------------------------------------------------ resume
def test_an_interrupted_run_resumes_mid_epoch_bit_for_bit(tmp_path):
    options = run_options(tmp_path, ghost_batch=8)
    straight = basinlab.train(**{**options, "save": "straight"})
    with pytest.raises(TrainingInterrupted):
        basinlab.train(**{**options, "save": "halves"}, callbacks=[InterruptAfter(6)])
    halves = tmp_path / "halves"
    state = torch.load(halves / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 2) and state["strategy"]["passes"].tolist() == [2, 2]
    assert main(["train", "--resume", str(halves), "--quiet"]) == 0
    a = torch.load(straight.path / "last.pt", weights_only=True)
    b = torch.load(halves / "last.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"]), key
    ref = pd.read_csv(straight.path / "results.csv").drop(columns=TIME_COLUMNS)
    got = pd.read_csv(halves / "results.csv").drop(columns=TIME_COLUMNS)
    pd.testing.assert_frame_equal(ref, got)
    assert list(got["passes_per_step"]) == [1.0, 1.0]


# ------------------------------------------------------------------------------------------ refusals, LR range
def test_a_bad_radius_is_refused_in_one_line():
    assert configure(make_config()) == (None, [])
    for cfg in (make_config(msam=0.0), SimpleNamespace(msam=float("inf"), ghost_batch=None)):
        with pytest.raises(ConfigError) as err:
            configure(cfg)
        assert "--msam must be a positive finite number" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name, settings, words", [
    ("Adam", {}, "the optimizer is Adam"),
    ("SGD", {"momentum": 0.0}, "momentum is 0"),
    ("NAG", {"momentum": 0.9}, "Nesterov"),
    ("SGD", {"momentum": 0.9, "dampening": 0.1}, "dampening is 0.1"),
    ("AdaS", {"momentum": 0.9}, "the optimizer is AdaS"),
])
def test_optimizers_the_authors_rule_does_not_cover_are_named(name, settings, words):
    assert words in optimizer_problem(name, settings)
    assert optimizer_problem("SGD", {"momentum": 0.9, "nesterov": False, "dampening": 0}) is None


@pytest.mark.parametrize("argv, words", [
    (["--optimizer", "Adam", "--lr", "0.001"], "at epoch 1, step 1 gives Adam: the optimizer is Adam"),
    (["--optimizer", "SGD", "--momentum", "0"], "momentum is 0"),
    (["--model-config", "{'regime': [{'epoch': 0, 'optimizer': 'SGD', 'lr': 0.1, 'momentum': 0.9}, "
                        "{'epoch': 1, 'optimizer': 'Adam', 'lr': 0.001}]}"], "at epoch 2, step 1 gives Adam"),
])
def test_the_run_is_refused_before_its_folder_exists(tmp_path, capsys, argv, words):
    code = main(["train", "--model", "mnist", "--train-limit", "64", "-b", "16", "--epochs", "2", "--msam", "0.5",
                 *argv, "--results-dir", str(tmp_path), "--save", "refused"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert words in err[0] and "allowed: SGD with momentum > 0" in err[0] and "AdamW variant is not built" in err[0]
    assert not (tmp_path / "refused").exists()


def test_the_lr_range_test_sweeps_msam_steps(tmp_path):
    small = ["--model", "mnist", "--train-limit", "64", "-b", "16", "--num-steps", "3", "--msam", "0.5"]
    assert main(["lr-range", *small, "--optimizer", "SGD", "-o", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "lr_range.json").read_text())["step"] == "msam"
