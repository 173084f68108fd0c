"""m-sharpness (--sam-m) and the SAM interval (--sam-interval) on SAM/ASAM.

The m-SAM step is checked against the algorithm written out below (`reference_m_sam`): per micro-batch of M
examples, g_i at w, eps_i = rho g_i / ||g_i|| (ASAM: rho T^2 g_i / ||T g_i||), the gradient at w + eps_i, the
update from the size-weighted sum. That is what the authors' code computes: tml-epfl/understanding-sam, commit
306adde0b8461a57e7fc8f46e84df1e38e0395fa, deep_nets/train.py (the --acc_steps loop around
sam.perturb_weights_sam), matched side by side on the same seeded model and batches (float32 without norm layers
within 7e-8 relative over 6 steps; float64 with BatchNorm within 5e-12, the authors' + 1e-12 in 1 / ||g||).
Buffers are passed explicitly (torch.func.functional_call), so the rule "each second pass starts from the buffers
its first pass started from; buffers advance from the first passes only" is written out here as well.
"""
import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import basinlab
from basinlab.api import make_config
from basinlab.cli import main
from basinlab.engine.callbacks import Callback
from basinlab.engine.precision import cpu_bf16_native
from basinlab.errors import ConfigError
from basinlab.methods.flat.method import configure
from basinlab.methods.flat.sam import check_micro_batch
from basinlab.records.results import TIME_COLUMNS
from tests.test_flat import SGD
from tests.test_flat import make_trainer as flat_trainer

TINY = "{'dropout': 0.0, 'width': 4, 'hidden': 16}"
LR, MOMENTUM = SGD["lr"], 0.9  # test_flat's trainer's lr

pytestmark = pytest.mark.usefixtures("no_run_plots")


def make_trainer(tmp_path, name="run", **options):
    """test_flat's trainer (SGD lr 0.1, no weight decay, contiguous tiny convnet) with momentum 0.9, so that the
    step meets the optimizer's state, and 3 batches of 32."""
    return flat_trainer(tmp_path, name, **{"train_limit": 96, "val_limit": 32, "momentum": MOMENTUM, **options})


def batches(trainer, count):
    return [b for _, b in zip(range(count), trainer.train_loader.epoch(0))]


def state_of(model):
    return ({k: v.detach().clone() for k, v in model.named_parameters()},
            {k: v.detach().clone() for k, v in model.named_buffers()})


# ------------------------------------------------------------------------------- the algorithm, written out
def gradient(model, params, buffers, x, y, ghost, autocast=None):
    """d/dw of sum_c (n_c / n) CE(chunk c) over ghost chunks of `x`, in train mode; `buffers` move in place."""
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for xc, yc in zip(x.split(ghost or len(x)), y.split(ghost or len(x))):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            loss = F.cross_entropy(functional_call(model, {**leaves, **buffers}, (xc,)), yc)
        loss = loss.float() * (len(xc) / len(x))
        for k, g in zip(leaves, torch.autograd.grad(loss, list(leaves.values()))):
            total[k] += g
    return total


def reference_m_sam(model, w, buffers, x, y, m, rho, ghost=None, adaptive=False, eta=0.01, autocast=None):
    """(the m-SAM gradient, sum_i (n_i / B) ||g_i||); `buffers` end as after the first passes only."""
    total = {k: torch.zeros_like(v) for k, v in w.items()}
    norm_sum = 0.0
    for xm, ym in zip(x.split(m), y.split(m)):
        before = {k: v.clone() for k, v in buffers.items()}
        g = gradient(model, w, buffers, xm, ym, ghost, autocast)          # first pass: buffers advance
        norm = torch.sqrt(sum((t ** 2).sum() for t in g.values()))
        if adaptive:  # the authors' scope: T = |w| + eta on parameters named *weight*, 1 elsewhere
            t = {k: w[k].abs() + eta if "weight" in k else torch.ones_like(w[k]) for k in w}
            denom = torch.sqrt(sum(((t[k] * g[k]) ** 2).sum() for k in w))
            eps = {k: rho * t[k] ** 2 * g[k] / denom for k in w}
        else:
            eps = {k: rho * g[k] / norm for k in w}
        perturbed = gradient(model, {k: w[k] + eps[k] for k in w}, before, xm, ym, ghost, autocast)  # from `before`
        for k in total:
            total[k] += perturbed[k] * (len(xm) / len(x))
        norm_sum += float(norm) * len(xm) / len(x)
    return total, norm_sum


@pytest.mark.parametrize("method, norm, m, ghost", [
    ("sam", "batch", 8, None), ("asam", "batch", 8, None), ("sam", "batch", 16, 8), ("sam", "online", 16, None),
    ("sam", "none", 12, None),  # micro-batches of 12 + 12 + 8, weighted by size
])
def test_m_sam_steps_follow_the_algorithm_written_out(tmp_path, method, norm, m, ghost):
    rho = 0.05 if method == "sam" else 0.5
    trainer = make_trainer(tmp_path, norm_mode=norm, ghost_batch=ghost, sam_m=m, **{method: rho})
    model = copy.deepcopy(trainer.model).train()
    w, buffers = state_of(trainer.model)
    momentum, norms = {}, []
    for x, y in batches(trainer, 3):
        trainer.strategy.train_step(trainer.step_context, x, y)
        grad, norm_sum = reference_m_sam(model, w, buffers, x, y, m, rho, ghost, adaptive=method == "asam")
        norms.append(norm_sum)
        for k in w:  # SGD with momentum, written out
            momentum[k] = grad[k] if k not in momentum else MOMENTUM * momentum[k] + grad[k]
            w[k] = w[k] - LR * momentum[k]
        got_w, got_buffers = state_of(trainer.model)
        for k in w:
            torch.testing.assert_close(got_w[k], w[k], rtol=1e-5, atol=1e-6)
        for k in buffers:
            torch.testing.assert_close(got_buffers[k], buffers[k], rtol=1e-5, atol=1e-6)
    columns = trainer.strategy.epoch_metrics(trainer.info)
    assert columns["sam_grad_norm"] == pytest.approx(sum(norms) / len(norms), rel=1e-5)
    assert columns["passes_per_step"] == 2.0


def test_m_equal_to_the_batch_is_sam_to_the_bit(tmp_path):
    """--sam-m B takes today's SAM step; the micro-batch step with one micro-batch gives the same bits too."""
    plain, whole, forced = (make_trainer(tmp_path, name, sam=0.05, sam_m=m)
                            for name, m in (("plain", None), ("whole", 32), ("forced", None)))
    for x, y in batches(plain, 2):
        plain.strategy.train_step(plain.step_context, x, y)
        whole.strategy.train_step(whole.step_context, x, y)
        forced.strategy._micro_batch_step(forced.step_context, x, y, len(x))
    reference = state_of(plain.model)
    for other in (whole, forced):
        for got, want in zip(state_of(other.model), reference):
            assert all(torch.equal(got[k], want[k]) for k in want)
    assert whole.strategy.epoch_metrics(whole.info) == plain.strategy.epoch_metrics(plain.info)


# ------------------------------------------------------------------------------------- --sam-interval
def copy_state(source, target):
    target.model.load_state_dict(source.model.state_dict())
    target.optimizer.load_state_dict(copy.deepcopy(source.optimizer.state_dict()))  # else the momentum is shared


def test_interval_takes_sam_every_k_steps_and_plain_steps_between_to_the_bit(tmp_path):
    """From the same weights and momentum, each step of --sam-interval 3 equals SAM's step (steps 0 and 3) or the
    plain step's (1, 2), bit for bit; under --sam-m the SAM steps are m-SAM's."""
    every = make_trainer(tmp_path, "every", sam=0.05, sam_m=8, sam_interval=3, train_limit=128)
    sam, plain = make_trainer(tmp_path, "sam", sam=0.05, sam_m=8), make_trainer(tmp_path, "plain")
    for step, (x, y) in enumerate(batches(every, 4)):
        other = sam if step % 3 == 0 else plain
        copy_state(every, other)
        every.strategy.train_step(every.step_context, x, y)
        other.strategy.train_step(other.step_context, x, y)
        for got, want in zip(state_of(every.model), state_of(other.model)):
            assert all(torch.equal(got[k], want[k]) for k in want), f"step {step}"
    assert every.strategy.epoch_metrics(every.info)["passes_per_step"] == (2 + 1 + 1 + 2) / 4


class StopAfter(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, run, result):
        if run.global_step == self.step:
            raise RuntimeError("stopped on purpose")


def test_interval_and_m_sam_resume_mid_epoch_bit_identically_and_count_passes(tmp_path):
    """4 steps per epoch, SAM on global steps 0, 3 and 6: passes per step (2+1+1+2)/4 and (1+1+2+1)/4. A run
    stopped after step 7 resumes from its step-6 checkpoint (mid-epoch 2, a SAM step next) to the same weights and
    results.csv."""
    options = dict(model="mnist", model_config=TINY, train_limit=64, val_limit=32, batch_size=16, epochs=2,
                   optimizer="SGD", lr=LR, momentum=MOMENTUM, sam=0.05, sam_m=8, ghost_batch=4, sam_interval=3,
                   results_dir=str(tmp_path), quiet=True, save_every_steps=3)
    basinlab.train(save="straight", **options)
    with pytest.raises(RuntimeError, match="on purpose"):
        basinlab.train(save="halves", callbacks=[StopAfter(7)], **options)
    stored = torch.load(tmp_path / "halves" / "last.pt", weights_only=True)
    assert (stored["epoch"], stored["batch_in_epoch"], stored["global_step"]) == (1, 2, 6)
    assert main(["train", "--resume", str(tmp_path / "halves"), "--quiet"]) == 0
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "halves" / "last.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    first = pd.read_csv(tmp_path / "straight" / "results.csv").drop(columns=TIME_COLUMNS)
    pd.testing.assert_frame_equal(first, pd.read_csv(tmp_path / "halves" / "results.csv").drop(columns=TIME_COLUMNS))
    assert list(first["passes_per_step"]) == [1.5, 1.25]


# ------------------------------------------------------------------------------------- precision
def test_fp16_scaled_m_sam_equals_float32_and_an_overflow_falls_back_to_a_skipped_step(tmp_path):
    """A power-of-two loss scale changes no bit of the m-SAM step (directions are scale-invariant, the norm is
    reported unscaled); an infinite scale overflows every first pass: the step falls back to the first passes'
    gradients, the scaler skips it, the weights stay and the buffers advance once, from the first passes."""
    reference, scaled = make_trainer(tmp_path, "f32", sam=0.05, sam_m=8), make_trainer(tmp_path, "f16", sam=0.05,
                                                                                        sam_m=8)
    scaled.step_context.precision.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    (x, y), (x2, y2) = batches(reference, 2)
    reference.strategy.train_step(reference.step_context, x, y)
    scaled.strategy.train_step(scaled.step_context, x, y)
    for got, want in zip(state_of(scaled.model), state_of(reference.model)):
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert scaled.strategy.epoch_metrics(scaled.info) == reference.strategy.epoch_metrics(reference.info)

    scaled.step_context.precision.scaler = torch.amp.GradScaler("cpu", init_scale=float("inf"))
    w_before, _ = state_of(scaled.model)
    first_passes = copy.deepcopy(scaled.model).train()
    with torch.no_grad():
        for chunk in x2.split(8):
            first_passes(chunk)
    result = scaled.strategy.train_step(scaled.step_context, x2, y2)
    assert not result.skipped and result.logits is not None
    w_after, buffers = state_of(scaled.model)
    assert all(torch.equal(w_after[k], w_before[k]) for k in w_before)
    for k, b in first_passes.named_buffers():
        torch.testing.assert_close(buffers[k], b, rtol=0, atol=0)
    assert scaled.strategy.epoch_metrics(scaled.info)["passes_per_step"] == 1.0


@pytest.mark.skipif(not cpu_bf16_native()[0], reason="bf16 autocast needs native bfloat16 on this CPU")
def test_m_sam_under_bf16_autocast_is_the_algorithm_under_autocast(tmp_path):
    """Forwards under bf16 autocast, parameters, directions and buffers float32: the written-out step run under
    the same autocast."""
    trainer = make_trainer(tmp_path, sam=0.05, sam_m=8, amp="bf16")
    model = copy.deepcopy(trainer.model).train()
    w, buffers = state_of(trainer.model)
    x, y = batches(trainer, 1)[0]
    trainer.strategy.train_step(trainer.step_context, x, y)
    grad, _ = reference_m_sam(model, w, buffers, x, y, 8, 0.05, autocast=torch.bfloat16)
    got_w, got_buffers = state_of(trainer.model)
    for k in w:
        assert got_w[k].dtype == torch.float32
        torch.testing.assert_close(got_w[k], w[k] - LR * grad[k], rtol=1e-5, atol=1e-6)
    for k in buffers:
        torch.testing.assert_close(got_buffers[k], buffers[k], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("options, world_size, words", [
    (dict(sam=0.05, sam_m=12, ghost_batch=8), 1, "--sam-m 12 must be a multiple of --ghost-batch 8"),
    (dict(sam=0.05, sam_m=4, ghost_batch=8), 1, "--sam-m 4 must be a multiple of --ghost-batch 8"),
    (dict(asam=0.5, sam_m=16, sam_perturbation="global"), 2, "--sam-perturbation global"),
])
def test_bad_combinations_are_refused_in_one_line(options, world_size, words):
    with pytest.raises(ConfigError) as err:
        configure(make_config(**options), world_size)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_micro_batches_must_fit_the_batch(tmp_path, capsys):
    with pytest.raises(ConfigError, match="must divide the per-process batch 32"):
        check_micro_batch(24, 32, 2)
    check_micro_batch(24, 32, 1)  # one process: 24 + 8, weighted by size
    assert main(["train", "--train-limit", "64", "--val-limit", "32", "-b", "32", "--sam", "0.05", "--sam-m", "64",
                 "--results-dir", str(tmp_path), "--save", "r", "--quiet"]) == 2
    assert "--sam-m 64 is larger than the batch size 32" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------- two processes
DDP_RUN = ["--train-limit", "64", "--val-limit", "32", "-b", "64", "--norm-mode", "none", "--channels-last", "off",
           "--model-config", "{'dropout': 0.0}", "--optimizer", "SGD", "--lr", "0.05", "--momentum", "0",
           "--seed", "3", "--epochs", "1", "--sam", "0.05", "--sam-m", "16", "--quiet"]
