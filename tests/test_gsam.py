"""GSAM (--gsam): the step against the algorithm written out, its radius schedule, fp16/bf16, resume, refusals.

The reference below is GSAM as the authors' PyTorch code computes it (juntang-zhuang/GSAM, gsam/gsam.py and
gsam/scheduler.py's ProportionScheduler, commit a770275b3324a3ed4bf4a1cddb976b2782ba852b), written out
independently: basinlab's step matched that code on these models and batches to 2e-6 relative over 8 steps
(plain and adaptive=True, with and without BatchNorm). Tiny MNIST convnets on the embedded mnist5k keep it fast.
"""
import copy
import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import basinlab
from basinlab.api import build_run, make_config
from basinlab.cli import main
from basinlab.engine.precision import Precision, cpu_bf16_native
from basinlab.engine.run_info import RunInfo
from basinlab.engine.setup import build_regime, split_model_config
from basinlab.engine.trainer import TrainingInterrupted
from basinlab.errors import ConfigError
from basinlab.methods.gsam.method import configure
from basinlab.methods.gsam.rho import RhoSchedule, regime_lr, run_lr_bounds
from basinlab.methods.gsam.step import GSAMStep, surrogate_gap_direction
from basinlab.records.results import TIME_COLUMNS
from tests.run_callbacks import InterruptAfter

pytestmark = pytest.mark.usefixtures("no_run_plots")

STEPS_PER_EPOCH, EPOCHS, LR0, LR_END, MOMENTUM, WD = 4, 2, 0.1, 0.01, 0.9, 5e-4
# SGD whose lr falls linearly every step, so that rho moves every step: 0.1 at the first, 0.02125 at the last
REGIME = [{"epoch": 0, "optimizer": "SGD", "lr": LR0, "momentum": MOMENTUM, "weight_decay": WD,
           "schedule": {"name": "linear", "epochs": EPOCHS, "end_lr": LR_END}}]
LRS = [LR0 + (LR_END - LR0) * (k / STEPS_PER_EPOCH) / EPOCHS for k in range(EPOCHS * STEPS_PER_EPOCH)]


def run_options(tmp_path, name="run", **options):
    settings = dict(results_dir=str(tmp_path), save=name, quiet=True, model="mnist", train_limit=64, val_limit=32,
                    batch_size=16, epochs=EPOCHS, augment=False, channels_last="off",
                    model_config={"width": 4, "hidden": 16, "dropout": 0.0, "regime": REGIME})
    settings.update(options)
    return settings


def set_up(tmp_path, strategy=None, **options):
    trainer = build_run(make_config(**run_options(tmp_path, **options)), strategy=strategy)
    trainer.setup()
    return trainer


def regime_settings_of(cfg, model, epochs, steps):
    """RunInfo.regime_settings of a run of `epochs` x `steps` with the regime the engine builds from `cfg`,
    without a whole trainer."""
    _, regime_config = split_model_config(cfg)
    regime, _ = build_regime(cfg, model, regime_config)
    return RunInfo(SimpleNamespace(regime=regime, train_loader=range(steps), epochs=epochs)).regime_settings


# ------------------------------------------------------------------------------------------ the reference
def gradients(model, x, y, chunk):
    """The batch-mean gradient over chunks of `chunk` rows, each forwarded on its own (ghost batches)."""
    model.zero_grad(set_to_none=True)
    for xc, yc in zip(x.split(chunk or len(x)), y.split(chunk or len(x))):
        (F.cross_entropy(model(xc), yc) * (len(xc) / len(x))).backward()
    return [p.grad.clone() for p in model.parameters()]


def gsam_reference(model, batches, rho, rho_min, alpha, chunk=None, adaptive=False, autocast=None):
    """GSAM's updates written out: rho_t linear in the lr between the run's lr bounds; g at w; eps = rho_t g/||g||
    (adaptive: rho_t w^2 g / ||w g||); g_p at w + eps, whose pass starts from the buffers the first pass started
    from and leaves none behind; d = g_p - alpha (g - (<g,g_p>/||g_p||^2) g_p); SGD with momentum and weight
    decay. Returns the model after the updates and the radii used."""
    model = copy.deepcopy(model)
    model.train()
    params, buffers = list(model.parameters()), list(model.buffers())
    velocity, radii = None, []
    lr_min, lr_max = min(LRS), max(LRS)
    for (x, y), lr in zip(batches, LRS):
        rho_t = rho_min + (rho - rho_min) * (lr - lr_min) / (lr_max - lr_min)
        radii.append(rho_t)
        start = [b.clone() for b in buffers]
        with autocast or torch.autocast("cpu", enabled=False):
            g = gradients(model, x, y, chunk)
        after_first = [b.clone() for b in buffers]
        w = [p.detach().clone() for p in params]
        if adaptive:
            scale = rho_t / torch.sqrt(sum(((wi * gi) ** 2).sum() for wi, gi in zip(w, g)))
            eps = [scale * wi * wi * gi for wi, gi in zip(w, g)]
        else:
            eps = [rho_t * gi / torch.sqrt(sum((gj ** 2).sum() for gj in g)) for gi in g]
        with torch.no_grad():
            for p, wi, e in zip(params, w, eps):
                p.copy_(wi + e)
            for b, s in zip(buffers, start):
                b.copy_(s)
        with autocast or torch.autocast("cpu", enabled=False):
            gp = gradients(model, x, y, chunk)
        c = sum((gi * gpi).sum() for gi, gpi in zip(g, gp)) / sum((gpi ** 2).sum() for gpi in gp)
        d = [gpi - alpha * (gi - c * gpi) for gi, gpi in zip(g, gp)]
        with torch.no_grad():
            for b, a in zip(buffers, after_first):
                b.copy_(a)
            d = [di + WD * wi for di, wi in zip(d, w)]
            velocity = d if velocity is None else [MOMENTUM * v + di for v, di in zip(velocity, d)]
            for p, wi, v in zip(params, w, velocity):
                p.copy_(wi - lr * v)
    return model, radii


def relative_error(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm().clamp_min(1e-12))


def assert_same_model(got, want, tol):
    """Each weight and float buffer within `tol` relative (in norm; float32 rounding differs in op order and
    grows over steps); counters exact."""
    errors = {name: relative_error(a, b) for (name, a), b in zip(got.named_parameters(), want.parameters())}
    for (name, a), b in zip(got.named_buffers(), want.buffers()):
        if a.dtype == torch.int64:
            assert torch.equal(a, b), f"{name}: {a} != {b} (buffers advance once per update)"
        else:
            errors[name] = relative_error(a, b)
    worst = max(errors, key=errors.get)
    print(f"worst relative error {errors[worst]:.2e} ({worst})")
    assert errors[worst] < tol, f"{worst}: relative error {errors[worst]:.2e}"


CASES = {  # name: (options, strategy options, chunk, autocast, tolerance)
    "batch norm": (dict(gsam=0.05, gsam_rho_min=0.01, gsam_alpha=0.4), None, None, None, 1e-5),
    "ghost batches": (dict(gsam=0.05, gsam_alpha=0.6, ghost_batch=6), None, 6, None, 1e-5),
    "online norm": (dict(gsam=0.05, gsam_rho_min=0.02, gsam_alpha=1.0, norm_mode="online"), None, None, None, 1e-5),
    "adaptive": (dict(gsam=0.5, gsam_rho_min=0.1, gsam_alpha=0.4), dict(adaptive=True), None, None, 1e-5),
    "bf16": (dict(gsam=0.05, gsam_rho_min=0.01, gsam_alpha=0.4, amp="bf16"), None, None, "bf16", 1e-4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gsam_steps_equal_the_algorithm_written_out(tmp_path, case):
    options, adaptive, chunk, amp, tol = CASES[case]
    if amp == "bf16" and not cpu_bf16_native()[0]:
        pytest.skip("this CPU has no native bfloat16 (basinlab refuses --amp bf16 here)")
    strategy = None
    if adaptive:  # the authors' adaptive=True: through the API (no command-line flag yet)
        strategy = GSAMStep(options["gsam"], options["gsam_alpha"], options["gsam_rho_min"], **adaptive)
    trainer = set_up(tmp_path, strategy=strategy, **options)
    start = copy.deepcopy(trainer.model)
    batches = [batch for epoch in range(EPOCHS) for batch in trainer.train_loader.epoch(epoch)]
    run = trainer.fit()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if amp else None
    want, radii = gsam_reference(start, batches, options["gsam"], options.get("gsam_rho_min") or 0.0,
                                 options["gsam_alpha"], chunk, adaptive=bool(adaptive), autocast=autocast)
    assert_same_model(trainer.model, want, tol)
    history = run.history
    assert list(history["passes_per_step"]) == [2.0, 2.0]
    assert list(history["gsam_rho"]) == pytest.approx([sum(radii[:4]) / 4, sum(radii[4:]) / 4], rel=1e-12)
    assert radii[0] == options["gsam"] and radii[-1] == pytest.approx(options.get("gsam_rho_min") or 0.0)
    assert (history["gsam_grad_norm"] > 0).all()


def test_the_surrogate_gap_direction_removes_alpha_times_the_orthogonal_part():
    gen = torch.Generator().manual_seed(0)
    g = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)]
    gp = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)]
    flat_g, flat_gp = torch.cat([t.flatten() for t in g]), torch.cat([t.flatten() for t in gp])
    d = [t.clone() for t in gp]
    surrogate_gap_direction(g, d, 0.3)
    flat_d = torch.cat([t.flatten() for t in d])
    orthogonal = flat_g - (flat_g @ flat_gp) / (flat_gp @ flat_gp) * flat_gp
    assert float(orthogonal @ flat_gp) == pytest.approx(0.0, abs=1e-5)
    torch.testing.assert_close(flat_d, flat_gp - 0.3 * orthogonal)
    # the part along g_p is SAM's gradient unchanged; alpha = 0 is SAM
    assert float(flat_d @ flat_gp) == pytest.approx(float(flat_gp @ flat_gp), rel=1e-5)
    zero = [torch.zeros_like(t) for t in gp]
    surrogate_gap_direction(g, zero, 0.3)  # g_p = 0: all of g is orthogonal to it (the authors' eps gives the same)
    torch.testing.assert_close(torch.cat([t.flatten() for t in zero]), -0.3 * flat_g)


# ------------------------------------------------------------------------------------------ the radius
def test_rho_follows_the_lr_between_the_run_bounds():
    schedule = RhoSchedule(0.6, 0.1)
    schedule.fit(3e-5, 3e-3)
    assert schedule.at(3e-3) == 0.6 and schedule.at(3e-5) == 0.1
    assert schedule.at(1.515e-3) == pytest.approx(0.35)
    assert schedule.at(1.0) == 0.6 and schedule.at(0.0) == 0.1  # a stray lr stays within [rho_min, rho]
    flat = RhoSchedule(0.05)
    flat.fit(0.1, 0.1)
    assert flat.constant and flat.at(0.1) == 0.05 and "constant" in flat.describe()
    unfitted = RhoSchedule(0.05, 0.05)
    assert unfitted.at(123.0) == 0.05


COSINE_LAST = 0.001 + (0.4 - 0.001) * (1 + math.cos(math.pi * 39 / 40)) / 2  # t = 3.9 of 4 epochs


@pytest.mark.parametrize("regime, bounds", [
    # warm-up from 0 over one epoch, then cosine: the smallest lr is the warm-up's first
    ([{"epoch": 0, "optimizer": "SGD", "lr": 0.4, "schedule": {"name": "linear_warmup", "epochs": 1}},
      {"epoch": 1, "schedule": {"name": "cosine", "epochs": 3, "end_lr": 0.001}}], (0.0, 0.4)),
    # cosine alone: the smallest lr is the last step's (the authors' lr_min for a decay without warm-up)
    ([{"epoch": 0, "optimizer": "SGD", "lr": 0.4, "schedule": {"name": "cosine", "epochs": 4, "end_lr": 0.001}}],
     (COSINE_LAST, 0.4)),
    # step decay by epoch and a step-keyed phase (global steps)
    ([{"epoch": 0, "optimizer": "SGD", "lr": 0.1}, {"epoch": 2, "lr": 0.01}, {"step": 35, "lr": 0.002}],
     (0.002, 0.1)),
    # a phase after the run's last epoch is never reached: a constant lr
    ([{"epoch": 0, "optimizer": "SGD", "lr": 0.1}, {"epoch": 9, "lr": 1e-5}], (0.1, 0.1)),
])
def test_the_lr_bounds_are_the_regimes_over_every_step_of_the_run(regime, bounds):
    """4 epochs of 10 steps."""
    cfg = make_config(model_config={"regime": regime})
    run = SimpleNamespace(regime_settings=regime_settings_of(cfg, torch.nn.Linear(2, 2), epochs=4, steps=10))
    assert run_lr_bounds(run) == pytest.approx(bounds, rel=1e-12)


def test_the_regime_lr_is_read_without_per_layer_factors():
    weights = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    optimizer = torch.optim.SGD([{"params": [weights[0]], "lr_scale": 0.0}, {"params": [weights[1]], "lr_scale": 0.5},
                                 {"params": [weights[2]]}], lr=0.1)
    optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"] = 0.0, 0.05  # as the regime writes them
    assert regime_lr(optimizer) == pytest.approx(0.1)


def test_a_constant_lr_keeps_rho_and_refuses_a_smaller_rho_min(tmp_path, capsys):
    run = basinlab.train(**run_options(tmp_path, "flat", epochs=1, gsam=0.05, optimizer="SGD", lr=0.05, momentum=0.0))
    assert list(run.history["gsam_rho"]) == [0.05]
    assert "rho 0.05 at every step (the regime's lr is constant)" in (run.path / "log.txt").read_text()
    code = main(["train", "--model", "mnist", "--train-limit", "64", "-b", "16", "--optimizer", "SGD", "--lr", "0.05",
                 "--gsam", "0.05", "--gsam-rho-min", "0.01", "--results-dir", str(tmp_path), "--save", "refused"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--gsam-rho-min 0.01" in err[0] and "every step of the run" in err[0]
    assert not (tmp_path / "refused").exists()


# ------------------------------------------------------------------------------------------ precision
def mnist_net():
    torch.manual_seed(0)
    return basinlab.models.create_model("mnist", 10, "mnist5k", width=4, hidden=16, dropout=0.0)


def flat_weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def scaled_step(scale: float | None, overflow: bool = False):
    """One GSAM step of the MNIST convnet on a seeded batch, fp16's path with a CPU GradScaler standing in for
    CUDA's (`scale`) or none; `overflow`: the first pass's gradient of one weight is infinite, as an fp16
    backward that overflowed leaves it. Returns (weights, metrics, the scale after the step)."""
    from basinlab.engine.step_context import StepContext
    model = mnist_net()
    ctx = StepContext.from_config(make_config(channels_last="off"), model, torch.device("cpu"))
    if scale is not None:
        ctx.precision = Precision("none", None, torch.device("cpu"))
        ctx.precision.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    strategy = GSAMStep(0.05, 0.4, 0.05)  # a constant radius: no regime to read
    strategy.setup(ctx, SimpleNamespace(batch_size=16, device=torch.device("cpu"), log=lambda line: None))
    if overflow:
        weight = next(model.parameters())
        hook, forward, calls = weight.register_hook(lambda grad: grad * float("inf")), ctx.forward, []

        def first_pass_only(x, y):
            calls.append(x)
            if len(calls) == 2:
                hook.remove()
            return forward(x, y)
        ctx.forward = first_pass_only
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    strategy.train_step(ctx, x, y)
    scaler = ctx.precision.scaler
    return flat_weights(model), strategy.epoch_metrics(None), scaler.get_scale() if scaler else None


def test_fp16_scaled_gradients_give_the_unscaled_step_and_an_overflow_falls_back_to_a_skipped_plain_step():
    plain, plain_metrics, _ = scaled_step(None)
    scaled, scaled_metrics, scale = scaled_step(2.0 ** 12)
    assert torch.equal(scaled, plain) and scale == 2.0 ** 12  # power-of-two scaling is exact throughout
    assert scaled_metrics == pytest.approx(plain_metrics, rel=1e-6)  # ||g|| reported unscaled
    assert plain_metrics["passes_per_step"] == 2.0 and plain_metrics["gsam_rho"] == 0.05
    overflowed, metrics, scale = scaled_step(2.0 ** 12, overflow=True)
    assert torch.equal(overflowed, flat_weights(mnist_net()))  # the scaler skipped the step
    assert scale == 2.0 ** 11 and metrics["passes_per_step"] == 1.0  # one pass: the plain step it fell back to


# ------------------------------------------------------------------------------------------ resume
def test_an_interrupted_run_resumes_mid_epoch_bit_for_bit(tmp_path):
    options = run_options(tmp_path, gsam=0.05, gsam_rho_min=0.01, ghost_batch=8)
    straight = basinlab.train(**{**options, "save": "straight"})
    with pytest.raises(TrainingInterrupted):
        basinlab.train(**{**options, "save": "halves"}, callbacks=[InterruptAfter(6)])
    halves = tmp_path / "halves"
    state = torch.load(halves / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 2) and state["strategy"]["passes"] == 4
    assert main(["train", "--resume", str(halves), "--quiet"]) == 0
    a = torch.load(straight.path / "last.pt", weights_only=True)
    b = torch.load(halves / "last.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["strategy"]["lr_bounds"] == b["strategy"]["lr_bounds"] == pytest.approx((LRS[-1], LR0))
    ref = pd.read_csv(straight.path / "results.csv").drop(columns=TIME_COLUMNS)
    got = pd.read_csv(halves / "results.csv").drop(columns=TIME_COLUMNS)
    pd.testing.assert_frame_equal(ref, got)


# ------------------------------------------------------------------------------------------ refusals, LR range
@pytest.mark.parametrize("rule", ["local", "global"])
def test_the_perturbation_rule_is_sams_option(rule):
    assert configure(make_config(gsam=0.05, sam_perturbation=rule))[0].perturbation == rule


@pytest.mark.parametrize("options, words", [
    (dict(gsam=0.0), "--gsam must be a positive finite number"),
    (dict(gsam=0.05, gsam_rho_min=0.1), "--gsam-rho-min 0.1 is larger than --gsam 0.05"),
    (dict(gsam=0.05, gsam_alpha=float("inf")), "--gsam-alpha"),
])
def test_bad_values_are_refused_in_one_line(options, words):
    with pytest.raises(ConfigError) as err:
        configure(make_config(**options))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_the_lr_range_test_sweeps_gsam_only_with_a_constant_radius(tmp_path, capsys):
    assert configure(make_config(gsam=0.05), workflow="train")[0].name == "gsam"
    small = ["--model", "mnist", "--train-limit", "64", "-b", "16", "--num-steps", "3", "--gsam", "0.05"]
    assert main(["lr-range", *small, "-o", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "replaces the regime by its sweep" in err[0] and "--gsam-rho-min 0.05" in err[0]
    assert main(["lr-range", *small, "--gsam-rho-min", "0.05", "-o", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "lr_range.json").read_text())["step"] == "gsam"
