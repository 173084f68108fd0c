"""Flat-minima training (ghost batches, SmoothOut/AdaSmoothOut, SAM/ASAM) and evaluation under noise.

Each step is checked against an independent, straightforward computation on a copy of the model.
Small models (a 4/8-channel MNIST convnet without dropout) on the embedded mnist5k keep this fast.
"""
import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import basinlab
from basinlab.api import make_config
from basinlab.cli import main
from basinlab.engine.callbacks import Callback
from basinlab.engine.evaluate import evaluate
from basinlab.engine.trainer import Trainer
from basinlab.errors import ConfigError
from basinlab.methods.flat.method import (
    asam_perturbation,
    configure,
    lr_scale_factor,
    sam_perturbation,
    strength_coefficient,
)
from basinlab.methods.flat.noise import NoiseModel, WeightNoise, evaluate_under_noise, perturbed_parameters
from basinlab.methods.flat.sam import asam_adapted
from basinlab.methods.registry import build_method

TINY = "{'dropout': 0.0, 'width': 4, 'hidden': 16}"
SGD = dict(optimizer="SGD", lr=0.1, momentum=0.0, weight_decay=0.0)


pytestmark = pytest.mark.usefixtures("no_run_plots")


def make_trainer(tmp_path, name="run", **options):
    # contiguous memory format: the tests recompute steps independently with a plain (contiguous)
    # model, and channels_last convolutions round differently
    settings = dict(results_dir=str(tmp_path), save=name, quiet=True, model="mnist", model_config=TINY,
                    train_limit=64, val_limit=64, batch_size=32, augment=False, channels_last="off", **SGD)
    settings.update(options)
    cfg = make_config(**settings)
    strategy, callbacks = build_method(cfg)
    trainer = Trainer(cfg, strategy=strategy, callbacks=callbacks)
    trainer.setup()
    return trainer


def first_batch(trainer):
    return next(iter(trainer.train_loader.epoch(0)))


def weights(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def smoothout_first_step(trainer):
    """One SmoothOut step on the first batch, and what a recomputation needs: a copy of the model and its
    weights before the step, the batch, a generator at the noise's state before the step and the noised names."""
    strategy, model = trainer.strategy, trainer.model
    ref_model, w0 = copy.deepcopy(model), weights(model)
    gen = torch.Generator().set_state(strategy.noise.generator.get_state())
    x, y = first_batch(trainer)
    strategy.train_step(trainer.step_context, x, y)
    names = [n for n, p in model.named_parameters() if any(p is q for q in strategy.noise.params)]
    return ref_model, w0, gen, x, y, names


def chunk_grads(model, params, chunks, batch_rows):
    """Gradients of sum_k (n_k / B) L_k(params_k) by plain autograd on `model` (train mode)."""
    names = list(params[0])
    total = {k: torch.zeros_like(params[0][k]) for k in names}
    for p_k, (xc, yc) in zip(params, chunks):
        leaves = {k: v.clone().requires_grad_(True) for k, v in p_k.items()}
        loss = F.cross_entropy(torch.func.functional_call(model, leaves, (xc,)), yc) * (len(xc) / batch_rows)
        grads = torch.autograd.grad(loss, [leaves[k] for k in names])
        for k, g in zip(names, grads):
            total[k] += g
    return total


# ------------------------------------------------------------------------------------------ noise models
def reference_noise(params, generator, a, kind, adapt):
    """A straightforward draw: one flat U(-1,1)/N(0,1) vector in parameter order, scaled per model."""
    total = sum(p.numel() for p in params)
    flat = torch.empty(total).uniform_(-1, 1, generator=generator) if kind == "uniform" \
        else torch.empty(total).normal_(generator=generator)
    out, offset = [], 0
    for p in params:
        u = flat[offset:offset + p.numel()].view(p.shape).clone()
        offset += p.numel()
        if adapt == "none":
            out.append(u * a)
        elif adapt == "weight":
            out.append(u * a * p.abs())
        else:
            rows = []
            for j in range(p.shape[0]):
                rows.append(u[j] / u[j].norm() * p[j].norm() * a)
            out.append(torch.stack(rows))
    return out


@pytest.fixture
def sample_params():
    g = torch.Generator().manual_seed(5)
    return [torch.randn(8, 3, 3, 3, generator=g), torch.randn(16, 40, generator=g), torch.randn(16, generator=g)]


@pytest.mark.parametrize("kind", ["uniform", "normal"])
@pytest.mark.parametrize("adapt", ["none", "weight", "filter"])
def test_noise_matches_reference_draw(sample_params, kind, adapt):
    noise = WeightNoise(sample_params, NoiseModel(0.03, kind, adapt), torch.Generator().manual_seed(1))
    got = noise.draw(coef=0.5)
    want = reference_noise(sample_params, torch.Generator().manual_seed(1), 0.015, kind, adapt)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-8)


def test_uniform_and_normal_distributions():
    big = [torch.zeros(400_000)]
    uniform = WeightNoise(big, NoiseModel(0.02, "uniform"), torch.Generator().manual_seed(0)).draw(coef=0.5)[0]
    assert uniform.abs().max() <= 0.01 and uniform.abs().max() > 0.0099   # bounds of U(-a c, a c)
    assert abs(uniform.mean()) < 1e-4 and abs(uniform.var() - 0.01 ** 2 / 3) < 0.01 * 0.01 ** 2
    normal = WeightNoise(big, NoiseModel(0.02, "normal"), torch.Generator().manual_seed(0)).draw(coef=0.5)[0]
    assert abs(normal.mean()) < 1e-4 and abs(normal.std() / 0.01 - 1) < 0.01
    assert abs((normal / 0.01).pow(4).mean() - 3) < 0.1                    # Gaussian kurtosis, not uniform's 1.8
    w = [torch.randn(400_000, generator=torch.Generator().manual_seed(3))]
    rel = WeightNoise(w, NoiseModel(0.02, "uniform", "weight"), torch.Generator().manual_seed(0)).draw()[0]
    assert bool((rel.abs() <= 0.02 * w[0].abs() + 1e-12).all())


@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_filter_noise_norm_is_a_times_filter_norm(sample_params, kind):
    noise = WeightNoise(sample_params, NoiseModel(0.05, kind, "filter"), torch.Generator().manual_seed(2))
    for tau, w in zip(noise.draw(coef=0.8), sample_params):
        rows = w.shape[0]
        torch.testing.assert_close(tau.reshape(rows, -1).norm(dim=1), 0.04 * w.reshape(rows, -1).norm(dim=1))


def test_perturb_then_restore_is_bit_exact(sample_params):
    before = [p.clone() for p in sample_params]
    noise = WeightNoise(sample_params, NoiseModel(0.1), torch.Generator().manual_seed(0))
    tau = noise.perturb()
    assert not torch.equal(sample_params[0], before[0])
    torch.testing.assert_close(sample_params[0], before[0] + tau[0])
    noise.restore()
    assert all(torch.equal(p, b) for p, b in zip(sample_params, before))


def test_norm_parameters_excluded_by_default_and_included_with_flag(tmp_path):
    trainer = make_trainer(tmp_path, smoothout=0.01)
    model = trainer.model
    norm_ids = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                for p in m.parameters()}
    chosen = {id(p) for p in trainer.strategy.noise.params}
    assert norm_ids and not (norm_ids & chosen)
    assert chosen == {id(p) for p in model.parameters()} - norm_ids
    assert {id(p) for p in perturbed_parameters(model, include_norm=True)} == {id(p) for p in model.parameters()}
    model.quiet_parameters = ["classifier.5.weight"]  # a model may keep named parameters noise-free
    quiet_ok = perturbed_parameters(model, include_norm=True)
    assert len(quiet_ok) == len(list(model.parameters())) - 1
    assert all(p is not model.classifier[5].weight for p in quiet_ok)
    included = make_trainer(tmp_path, "incl", smoothout=0.01, smoothout_include_bn=True)
    assert len(included.strategy.noise.params) == len(list(included.model.parameters()))


# ------------------------------------------------------------------------------------------ SmoothOut step
@pytest.mark.parametrize("adapt", ["none", "filter"])
def test_smoothout_step_equals_clean_weights_minus_noisy_gradient(tmp_path, adapt):
    trainer = make_trainer(tmp_path, smoothout=0.05, smoothout_adapt=adapt, ghost_batch=16)
    model = trainer.model
    ref_model, w0, gen, x, y, names = smoothout_first_step(trainer)
    chunks = list(zip(x.split(16), y.split(16)))
    noisy = []
    for _ in chunks:  # fresh noise per chunk, drawn in the same order as the strategy
        tau = reference_noise([w0[n] for n in names], gen, 0.05, "uniform", adapt)
        noisy.append({**w0, **{n: w0[n] + t for n, t in zip(names, tau)}})
    grads = chunk_grads(ref_model, noisy, chunks, len(x))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w0[name] - 0.1 * grads[name], rtol=1e-5, atol=1e-6)
    for (name, b), rb in zip(model.named_buffers(), ref_model.buffers()):
        torch.testing.assert_close(b, rb, msg=f"buffer {name} (two noisy chunk forwards)")


def test_no_denoise_keeps_the_noise(tmp_path):
    trainer = make_trainer(tmp_path, smoothout=0.05, denoise=False)
    model = trainer.model
    ref_model, w0, gen, x, y, names = smoothout_first_step(trainer)
    tau = dict(zip(names, reference_noise([w0[n] for n in names], gen, 0.05, "uniform", "none")))
    noisy = {n: w0[n] + tau.get(n, 0) for n in w0}
    grads = chunk_grads(ref_model, [noisy], [(x, y)], len(x))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), noisy[name] - 0.1 * grads[name], rtol=1e-5, atol=1e-6)


def test_ghost_batches_without_norm_equal_the_full_batch_gradient(tmp_path):
    ghost = make_trainer(tmp_path, "ghost", ghost_batch=8, norm_mode="none")
    plain = make_trainer(tmp_path, "plain", norm_mode="none")
    assert ghost.strategy.name == "ghost-batch"
    for a, b in zip(ghost.model.parameters(), plain.model.parameters()):
        assert torch.equal(a, b)
    x, y = first_batch(ghost)
    ghost.strategy.train_step(ghost.step_context, x, y)
    plain.strategy.train_step(plain.step_context, x, y)
    for a, b in zip(ghost.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_schedules():
    assert strength_coefficient("constant", 7, 10) == 1.0
    assert strength_coefficient("anneal", 0, 10) == 1.0
    assert math.isclose(strength_coefficient("anneal", 3, 10), 4 ** -0.275)
    assert math.isclose(strength_coefficient("tanh", 50, 100), 0.5)
    assert math.isclose(strength_coefficient("tanh", 0, 100), (1 + math.tanh(-5)) / 2)
    assert math.isclose(strength_coefficient("tanh", 100, 100), (1 + math.tanh(5)) / 2)
    assert lr_scale_factor("sqrt", 4096, 128) == math.sqrt(32) and lr_scale_factor("linear", 2048, 128) == 16


def test_lr_scale_batch_scales_the_regime(tmp_path):
    for rule, factor in (("sqrt", 2.0), ("linear", 4.0)):
        trainer = make_trainer(tmp_path, rule, ghost_batch=8, lr_scale_batch=rule)
        assert trainer.regime.settings_at(0)["lr"] == pytest.approx(0.1 * factor)


# ------------------------------------------------------------------------------------------ whole runs
class MomentumWatch(Callback):
    def __init__(self):
        self.seen = {}

    def on_step_end(self, run, result):
        p = next(run.model.parameters())
        self.seen.setdefault(run.epoch, (run.optimizer, run.optimizer.state[p]["momentum_buffer"]))


def test_momentum_survives_epochs_and_smoothout_c_is_recorded(tmp_path):
    watch = MomentumWatch()
    run = basinlab.train(results_dir=str(tmp_path), save="mom", quiet=True, model="mnist", model_config=TINY,
                         train_limit=64, val_limit=64, batch_size=32, epochs=2, optimizer="SGD", lr=0.05,
                         momentum=0.9, smoothout=0.01, smoothout_schedule="anneal", callbacks=[watch])
    (opt1, buf1), (opt2, buf2) = watch.seen[0], watch.seen[1]
    assert opt1 is opt2 and buf1 is buf2
    # c is recorded at the last step of each epoch: steps 1 and 3 of 2 per epoch
    assert list(run.history["smoothout_c"]) == pytest.approx([2 ** -0.275, 4 ** -0.275])


def test_smoothout_resume_is_bit_identical(tmp_path):
    common = ["train", "--model", "mnist", "--model-config", "{'width': 4, 'hidden': 16}", "--train-limit", "64",
              "--val-limit", "32", "-b", "32", "--smoothout", "0.02", "--smoothout-adapt", "filter",
              "--ghost-batch", "16", "--results-dir", str(tmp_path), "--quiet"]
    assert main([*common, "--save", "straight", "--epochs", "2"]) == 0
    assert main([*common, "--save", "halves", "--epochs", "1"]) == 0
    assert main(["train", "--resume", str(tmp_path / "halves"), "--epochs", "2", "--quiet"]) == 0
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "halves" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["strategy"]["generator"], b["strategy"]["generator"])
    # the evaluation command under noise works on the run and is reproducible with its seed
    args = ["evaluate", str(tmp_path / "straight"), "--split", "train", "--noise", "0.02", "--noise-adapt",
            "filter", "--noise-samples", "2", "--seed", "3"]
    assert main([*args, "--output", str(tmp_path / "e1.csv")]) == 0
    assert main([*args, "--output", str(tmp_path / "e2.csv")]) == 0
    e1, e2 = pd.read_csv(tmp_path / "e1.csv"), pd.read_csv(tmp_path / "e2.csv")
    pd.testing.assert_frame_equal(e1, e2)
    assert e1.loc[0, "samples"] == 2 and e1.loc[0, "loss_std"] > 0


# ------------------------------------------------------------------------------------------ SAM / ASAM
def test_sam_and_asam_perturbations():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    grads = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    eps, norm = sam_perturbation(grads, 0.05)
    flat_g = torch.cat([t.flatten() for t in grads])
    assert float(norm) == pytest.approx(float(flat_g.norm()))
    assert float(torch.cat([e.flatten() for e in eps]).norm()) == pytest.approx(0.05)
    eps, _ = asam_perturbation(params, grads, 0.5, 0.01)
    t = torch.cat([p.flatten() for p in params]).abs() + 0.01
    want = 0.5 * t * t * flat_g / (t * flat_g).norm()
    torch.testing.assert_close(torch.cat([e.flatten() for e in eps]), want)


def test_asam_adapts_only_weights_as_the_authors_code():
    """The authors' ascent step, written out per parameter: for names containing 'weight', g <- T g with
    T = |w| + eta; the norm of the (partly) scaled gradients; then g <- T g again for those names and
    eps = rho g / norm. Biases keep T = 1."""
    g = torch.Generator().manual_seed(3)
    names = ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight"]
    params = [torch.randn(4, 3, generator=g) for _ in names]
    grads = [torch.randn(4, 3, generator=g) for _ in names]
    scaled = [gr * (w.abs() + 0.01) if "weight" in n else gr.clone() for n, w, gr in zip(names, params, grads)]
    norm = torch.sqrt(sum((s ** 2).sum() for s in scaled))
    want = [0.5 * (s * (w.abs() + 0.01) if "weight" in n else s) / norm for n, w, s in zip(names, params, scaled)]
    eps, _ = asam_perturbation(params, grads, 0.5, 0.01, asam_adapted(names, "weights"))
    for got, expected in zip(eps, want):
        torch.testing.assert_close(got, expected)
    every, _ = asam_perturbation(params, grads, 0.5, 0.01, asam_adapted(names, "all"))
    assert not torch.allclose(every[1], eps[1]) and asam_adapted(names, "all") == [True] * 5


@pytest.mark.parametrize("method, norm, ghost", [("sam", "batch", None), ("asam", "batch", None),
                                                 ("sam", "online", None), ("asam", "online", None),
                                                 ("sam", "batch", 16)])
def test_sam_step_applies_the_gradient_at_w_plus_eps_and_buffers_advance_once(tmp_path, method, norm, ghost):
    rho = 0.05 if method == "sam" else 0.5
    trainer = make_trainer(tmp_path, norm_mode=norm, ghost_batch=ghost, **{method: rho})
    model = trainer.model
    ref_model, w0 = copy.deepcopy(model), weights(model)
    x, y = first_batch(trainer)
    trainer.strategy.train_step(trainer.step_context, x, y)

    # first pass at w0 (the only pass that may move buffers), then the gradient at w0 + eps from the
    # buffers the first pass started with; both over the same chunks
    chunks = list(zip(x.split(ghost or len(x)), y.split(ghost or len(x))))
    second = copy.deepcopy(ref_model)
    ref_model.train()
    for xc, yc in chunks:
        (F.cross_entropy(ref_model(xc), yc) * (len(xc) / len(x))).backward()
    g0 = {n: p.grad for n, p in ref_model.named_parameters()}
    if method == "sam":
        scale = rho / torch.sqrt(sum((g ** 2).sum() for g in g0.values()))
        eps = {n: scale * g for n, g in g0.items()}
    else:
        t = {n: w0[n].abs() + 0.01 if "weight" in n else torch.ones_like(w0[n]) for n in w0}  # authors' scope
        denom = torch.sqrt(sum(((t[n] * g) ** 2).sum() for n, g in g0.items()))
        eps = {n: rho * t[n] ** 2 * g / denom for n, g in g0.items()}
    first_pass_buffers = {n: b.clone() for n, b in ref_model.named_buffers()}
    grads = chunk_grads(second, [{n: w0[n] + eps[n] for n in w0}] * len(chunks), chunks, len(x))
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w0[name] - 0.1 * grads[name], rtol=1e-5, atol=1e-6)
    for name, b in model.named_buffers():
        assert torch.equal(b, first_pass_buffers[name]), f"{name} moved in the second pass"
    assert trainer.strategy.epoch_metrics(trainer.info)["sam_grad_norm"] == pytest.approx(
        float(torch.sqrt(sum((g ** 2).sum() for g in g0.values()))), rel=1e-5)


# ------------------------------------------------------------------------------------------ evaluation
def test_evaluation_under_zero_noise_equals_plain_evaluation(tmp_path):
    trainer = make_trainer(tmp_path)
    model, loader, criterion = trainer.model, trainer.val_loader, nn.CrossEntropyLoss()
    before = weights(model)
    plain = evaluate(model, loader, criterion)
    zero = evaluate_under_noise(model, loader, criterion, NoiseModel(0.0), samples=3)
    assert {k: zero[k] for k in plain} == plain and zero["loss_std"] == 0.0
    noisy = evaluate_under_noise(model, loader, criterion, NoiseModel(0.5, adapt="weight"), samples=2, seed=1)
    assert noisy["loss"] != plain["loss"] and noisy["count"] == plain["count"]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # noise removed after each batch


# ------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("options, words", [
    (dict(smoothout=0.01, sam=0.05), "cannot be combined"),
    (dict(sam=0.05, asam=0.5), "--sam cannot be combined with --asam"),
    (dict(smoothout=0.01, server="asgd"), "--server"),
    (dict(lr_scale_batch="sqrt"), "needs --ghost-batch"),
    (dict(ghost_batch=16, lr_scale_batch="cube"), "sqrt, linear"),
    (dict(smoothout_adapt="filter"), "needs --smoothout"),
    (dict(smoothout=0.01, smoothout_schedule="cosine"), "constant, anneal, tanh"),
    (dict(smoothout=-1.0), ">= 0"),
    (dict(smoothout=0.01, smoothout_noise="laplace"), "--smoothout-noise"),
    (dict(sam=0.0), "--sam must be a positive finite number"),
    (dict(ghost_batch=0), "--ghost-batch must be an integer in [1, 1048576]"),
])
def test_bad_options_are_refused_in_one_line(options, words):
    with pytest.raises(ConfigError) as err:
        configure(make_config(**options))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_ghost_batch_larger_than_batch_is_refused(tmp_path, capsys):
    code = main(["train", "--train-limit", "64", "--val-limit", "32", "-b", "32", "--ghost-batch", "64",
                 "--results-dir", str(tmp_path), "--quiet"])
    assert code == 2 and "larger than the batch size 32" in capsys.readouterr().err
