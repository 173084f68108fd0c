"""SAF and MESA (--saf, --mesa): the authors' update written out, the rows keyed, fp16's loss scale, exact resume
mid-epoch, passes per step, refusals.

The reference below is the loop body of the authors' SAF_train.py and MESA_train.py (AngusDujw/SAF, commit
6e856004c59f9a8497d48e4a5d545e59f7b87d3e, lines 715-758) and timm's ModelEmaV2.update (timm/utils/model_ema.py
there), written out: loss = CE + reinforce * T^2 * mean_i sum_c KL(softmax(ref_i / T) || softmax(out_i / T)) where
epoch > kl_start_epoch, the reference detached (SAF: the example's output --minus_epoch epochs ago; MESA: the EMA
model's output in eval mode), the EMA updated over the state_dict after every step. Run side by side with
basinlab's steps on the same seeded BatchNorm MLP and batches (6 epochs, SGD with momentum and weight decay, label
smoothing 0.1), the authors' code itself matched to 1.5e-7 (weights, EMA, stored outputs; relative).
"""
import copy
import types

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import basinlab
from basinlab.api import make_config
from basinlab.cli import main
from basinlab.engine.precision import Precision
from basinlab.engine.step_context import StepContext
from basinlab.errors import ConfigError
from basinlab.methods.saf import store as store_module
from basinlab.methods.saf.method import MESAStep, SAFStep, configure
from basinlab.methods.saf.store import check_store_fits
from basinlab.records.results import TIME_COLUMNS
from tests.run_callbacks import KeepCheckpoint, resume_and_load

CPU = torch.device("cpu")
TINY = "{'dropout': 0.0, 'width': 4, 'hidden': 16}"
N, B, C, EPOCHS = 24, 8, 10, 5
LAMBDA, TAU, HORIZON, DECAY, AFTER = 0.3, 5.0, 2, 0.99, 1


def bn_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, C))


def seeded_data(seed=1):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(N, 6, generator=gen), torch.randint(0, C, (N,), generator=gen)
    return x, y, [torch.randperm(N, generator=gen) for _ in range(EPOCHS)]


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


# ------------------------------------------------------------------------------------------ the reference
def authors_update(model, data, *, mesa, lam=LAMBDA, tau=TAU, horizon=HORIZON, decay=DECAY, after=AFTER):
    """The authors' loop written out with plain autograd (every example is trained once per epoch here)."""
    x, y, orders = data
    optimizer, criterion = sgd(model), nn.CrossEntropyLoss(label_smoothing=0.1)
    ema = [v.clone() for v in model.state_dict().values()]
    ema_model = copy.deepcopy(model).eval()
    past = {}  # (epoch, example) -> the output it had in that epoch's training forward
    for epoch in range(EPOCHS):
        model.train()
        for j in range(N // B):
            rows = orders[epoch][j * B:(j + 1) * B]
            out = model(x[rows])
            loss = criterion(out, y[rows])
            for i, row in enumerate(rows.tolist()):
                past[epoch, row] = out[i].detach().clone()
            if epoch > after and (mesa or epoch >= horizon):
                if mesa:
                    ema_model.load_state_dict(dict(zip(ema_model.state_dict(), ema)))
                    with torch.no_grad():
                        ref = ema_model(x[rows])
                else:
                    ref = torch.stack([past[epoch - horizon, row] for row in rows.tolist()])
                p = F.softmax(ref / tau, dim=1)
                kl = (p * (p.log() - F.log_softmax(out / tau, dim=1))).sum(1).mean() * tau ** 2
                loss = loss + lam * kl
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            ema = [decay * e + (1 - decay) * v if v.dtype.is_floating_point else
                   (decay * e + (1 - decay) * v).to(v.dtype) for e, v in zip(ema, model.state_dict().values())]
    return ema


def fake_run(epoch=0):
    return types.SimpleNamespace(epoch=epoch, batch_examples=None, train_examples=N, num_classes=10, batch_size=B,
                                 device=CPU, log=lambda message: None)


def strategy_on(model, *, mesa, scaler=None, ghost_batch=None):
    precision = Precision("none", None, CPU)
    precision.scaler = scaler  # a CPU GradScaler stands in for fp16's: the same scaled gradients, on this machine
    ctx = StepContext(model, nn.CrossEntropyLoss(label_smoothing=0.1), precision)
    ctx.optimizer = sgd(model)
    step = (MESAStep(LAMBDA, TAU, DECAY, ghost_batch=ghost_batch, after_epoch=AFTER) if mesa
            else SAFStep(LAMBDA, TAU, HORIZON, ghost_batch=ghost_batch, after_epoch=AFTER))
    run = fake_run()
    step.setup(ctx, run)
    return step, ctx, run


def train_epochs(step, ctx, run, model, data):
    x, y, orders = data
    for epoch in range(EPOCHS):
        model.train()
        run.epoch = epoch
        for j in range(N // B):
            rows = orders[epoch][j * B:(j + 1) * B]
            run.batch_examples = lambda rows=rows: rows
            step.train_step(ctx, x[rows], y[rows])


def relative_error(got, want) -> float:
    return max(float((a.float() - b.float()).norm() / b.float().norm())
               for a, b in zip(got, want) if b.dtype.is_floating_point and b.norm() > 0)


# ------------------------------------------------------------------------------------------ the algorithm
@pytest.mark.parametrize("mesa", [False, True], ids=["saf", "mesa"])
def test_steps_follow_the_authors_update(mesa):
    """Plain steps in epochs 0-1, the term from epoch 2 on (after_epoch 1; SAF's horizon 2 exists then): the
    weights, BatchNorm statistics and (MESA) EMA equal the written-out loop's; the term really acts."""
    data = seeded_data()
    model, reference, without = bn_mlp(), bn_mlp(), bn_mlp()
    step, ctx, run = strategy_on(model, mesa=mesa)
    train_epochs(step, ctx, run, model, data)
    ema = authors_update(reference, data, mesa=mesa)
    assert relative_error(model.state_dict().values(), reference.state_dict().values()) < 1e-6
    if mesa:
        assert relative_error(step.ema.state_dict().values(), ema) < 1e-6
    authors_update(without, data, mesa=mesa, lam=0.0)
    assert relative_error(model.state_dict().values(), without.state_dict().values()) > 1e-2
    assert step.counts == {"passes": 15, "updates": 15, "ema_forwards": 9 if mesa else 0}


def test_ghost_chunks_store_each_chunk_and_sum_to_the_batch():
    """SAF with ghost batches of 4 on a model without BatchNorm: the weights of whole batches, and the store holds
    each example's output of the last epoch."""
    data = seeded_data(3)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, C))
    whole, model_copy = copy.deepcopy(model), copy.deepcopy(model)
    chunked, ctx, run = strategy_on(model, mesa=False, ghost_batch=4)
    train_epochs(chunked, ctx, run, model, data)
    plain, plain_ctx, plain_run = strategy_on(whole, mesa=False)
    train_epochs(plain, plain_ctx, plain_run, whole, data)
    assert relative_error(model.state_dict().values(), whole.state_dict().values()) < 1e-6
    last = chunked.store.slots[(EPOCHS - 1) % (HORIZON + 1)]
    assert torch.equal(last != 0, torch.ones_like(last, dtype=torch.bool))
    assert relative_error(model.state_dict().values(), model_copy.state_dict().values()) > 1e-3


@pytest.mark.parametrize("mesa", [False, True], ids=["saf", "mesa"])
def test_a_loss_scale_changing_between_steps_changes_nothing(mesa):
    """fp16's GradScaler (on CPU), its scale doubling every step: the weights of the unscaled run."""
    data = seeded_data(4)
    model, unscaled = bn_mlp(), bn_mlp()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_factor=2.0, growth_interval=1)
    scaled_step, ctx, run = strategy_on(model, mesa=mesa, scaler=scaler)
    train_epochs(scaled_step, ctx, run, model, data)
    plain_step, plain_ctx, plain_run = strategy_on(unscaled, mesa=mesa)
    train_epochs(plain_step, plain_ctx, plain_run, unscaled, data)
    assert scaler.get_scale() == 2.0 ** (8 + 15)
    assert relative_error(model.state_dict().values(), unscaled.state_dict().values()) < 1e-6


# ------------------------------------------------------------------------------------------ whole runs
RUN = dict(quiet=True, model="mnist", model_config=TINY, train_limit=64, val_limit=32, batch_size=16,
           optimizer="SGD", lr=0.05, momentum=0.9)


def test_batch_examples_are_the_rows_trained(tmp_path, no_run_plots, monkeypatch):
    """run.batch_examples() inside train_step: the labels at those indices are the batch's labels, every epoch."""
    seen = []
    original = SAFStep.train_step

    def recording(self, ctx, x, y):
        result = original(self, ctx, x, y)
        seen.append((self._indices.clone(), y.clone(), self._run.epoch))
        return result
    monkeypatch.setattr(SAFStep, "train_step", recording)
    basinlab.train(results_dir=str(tmp_path), save="rows", epochs=2, saf=True, saf_horizon=1, **RUN)
    labels = training_labels(tmp_path)
    assert len(seen) == 8 and {epoch for *_, epoch in seen} == {0, 1}
    for indices, y, _ in seen:
        assert indices.dtype == torch.int64 and torch.equal(labels[indices], y)
    assert not torch.equal(seen[0][0], seen[4][0])  # each epoch its own order


def training_labels(folder):
    """The labels of the run's training set by example index (the same options build the same seeded subset)."""
    from basinlab.api import build_run
    trainer = build_run(make_config(results_dir=str(folder), save="labels", **RUN))
    trainer.setup(dry_run=True)
    return trainer.train_loader.labels.cpu()


@pytest.mark.parametrize("method", ["saf", "mesa"])
def test_resume_mid_epoch_is_bit_identical_with_passes_counted(tmp_path, no_run_plots, method):
    """3 epochs of 4 steps, the term from epoch 1 (SAF: horizon 1); a checkpoint at step 6 (epoch 1, step 2 of 4):
    the resumed branch ends where the straight run ends, store / EMA and results.csv included. passes_per_step is
    1 (one forward-backward per update); MESA's EMA forward runs where the term applies."""
    options = dict(saf=True, saf_horizon=1) if method == "saf" else dict(mesa=True, mesa_decay=0.9)
    options["saf_start_epoch"] = 0  # the term after epoch 0 (the authors' 5), so that a 3-epoch run exercises it
    straight = basinlab.train(results_dir=str(tmp_path), save="straight", epochs=3, save_every_steps=2,
                              callbacks=[KeepCheckpoint(7, tmp_path / "mid.pt")], **options, **RUN)
    mid = torch.load(tmp_path / "mid.pt", weights_only=True)
    assert mid["global_step"] == 6 and mid["strategy"]["counts"]["updates"] == 2
    a, b = resume_and_load(tmp_path / "mid.pt", tmp_path)
    if method == "saf":
        assert torch.equal(a["strategy"]["store"]["slots"], b["strategy"]["store"]["slots"])
        assert int((a["strategy"]["store"]["slots"] != 0).any(-1).sum()) == 2 * 64  # both slots filled
    else:
        for key in a["strategy"]["ema"]:
            assert torch.equal(a["strategy"]["ema"][key], b["strategy"]["ema"][key]), key
    history = pd.read_csv(tmp_path / "straight" / "results.csv")
    pd.testing.assert_frame_equal(history.drop(columns=TIME_COLUMNS),
                                  pd.read_csv(tmp_path / "resumed" / "results.csv").drop(columns=TIME_COLUMNS))
    assert history["passes_per_step"].tolist() == [1.0, 1.0, 1.0]
    assert history["trajectory_loss"].isna().tolist() == [True, False, False]
    if method == "mesa":
        assert history["ema_forwards_per_step"].tolist() == [0.0, 1.0, 1.0]
    log = (tmp_path / "straight" / "log.txt").read_text()
    assert f"{method} epoch 2: 4 forward-backward passes for 4 updates (1 per step" in log
    assert straight.history["train_loss"].notna().all()


# ------------------------------------------------------------------------------------------ refusals
def test_a_store_larger_than_the_memory_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(store_module, "available_memory", lambda: (10_000, "a test's limit"))
    code = main(["train", "--model", "mnist", "--model-config", TINY, "--train-limit", "64", "--val-limit", "32",
                 "-b", "16", "--saf", "--results-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "64 examples x 10 classes x 4 epochs (--saf-horizon 3 + 1) x 4 bytes" in err[0]
    assert "of the 9.31e-06 GiB of memory available (a test's limit)" in err[0] and "--mesa" in err[0]
    assert not any(tmp_path.iterdir())
    monkeypatch.setattr(store_module, "available_memory", lambda: (None, "nowhere to read it"))
    assert "memory not checked: nowhere to read it" in check_store_fits(64, 10, 3)


@pytest.mark.parametrize("options, words", [
    (dict(saf=True, mesa=True), "choose one"),
    (dict(saf_horizon=2), "needs --saf"),
    (dict(mesa=True, saf_horizon=2), "needs --saf"),
    (dict(saf=True, mesa_decay=0.9), "needs --mesa"),
    (dict(saf=True, saf_tau=0.0), "--saf-tau must be a positive finite number"),
    (dict(mesa=True, saf_lambda=float("nan")), "--saf-lambda must be a finite number"),
])
def test_bad_options_are_refused_in_one_line(options, words):
    with pytest.raises(ConfigError) as err:
        configure(make_config(**options))
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("options, weight, after, decay", [
    (dict(saf=True), 0.3, 5, None),
    (dict(mesa=True), 0.8, 5, 0.9998),
    (dict(saf=True, saf_lambda=0.5, saf_start_epoch=0), 0.5, 0, None),
    (dict(mesa=True, saf_lambda=0.0, saf_start_epoch=9, mesa_decay=0.99), 0.0, 9, 0.99),
])
def test_the_authors_defaults_and_the_given_values_reach_the_step(options, weight, after, decay):
    """The authors' lambda (SAF_train.py 0.3, MESA_train.py 0.8), --kl_start_epoch 5 and EMA decay 0.9998."""
    step = configure(make_config(**options))[0]
    assert (step.weight, step.after_epoch, getattr(step, "decay", None)) == (weight, after, decay)


@pytest.mark.parametrize("flag", ["--saf", "--mesa"])
def test_the_lr_range_test_is_refused_with_the_reason(tmp_path, capsys, flag):
    code = main(["lr-range", "--model", "mnist", "--model-config", TINY, "--train-limit", "64", "--val-limit", "32",
                 "-b", "16", flag, "--num-steps", "4", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "history" in err[0] and f"drop {flag}" in err[0]


def test_too_large_a_ghost_batch_is_refused(tmp_path, capsys):
    code = main(["train", "--model", "mnist", "--model-config", TINY, "--train-limit", "64", "--val-limit", "32",
                 "-b", "16", "--mesa", "--ghost-batch", "32", "--results-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "larger than the batch size 16" in err[0]
