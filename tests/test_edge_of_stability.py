"""The edge of stability, live (`--log-sharpness-every-steps`): the thresholds against simulated updates on a
quadratic, batch sharpness and the warm-started / preconditioned eigen-solver against explicit Hessians, and the
monitor end to end (rows, values, no effect on training, exact resume, refusals)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import basinlab
from basinlab.api import make_config
from basinlab.cli import main
from basinlab.engine.trainer import TrainingInterrupted
from basinlab.errors import ConfigError
from basinlab.methods.asgd.stability import stability_threshold
from basinlab.methods.edge_of_stability import thresholds
from basinlab.methods.edge_of_stability.method import COLUMNS, configure
from basinlab.metrics.batch_sharpness import batch_sharpness
from basinlab.metrics.hessian_eigen import hessian_eigenvalues
from basinlab.records.results import TIME_COLUMNS
from tests.run_callbacks import InterruptAfter


# ------------------------------------------------------------------------------------------ thresholds
def grows(update, curvature: float, steps: int = 4000) -> bool:
    """Whether the scalar recurrence `update` diverges on f(w) = curvature w^2 / 2 from w = 1."""
    w, state = 1.0, 0.0
    for _ in range(steps):
        w, state = update(w, state, curvature * w)
    return abs(w) > 1.0


def heavy_ball(lr, momentum, dampening=0.0, nesterov=False):
    def update(w, v, g):  # PyTorch's SGD: v = b v + (1 - d) g; w -= lr (g + b v) (Nesterov) or lr v
        v = momentum * v + (1 - dampening) * g
        return w - lr * (g + momentum * v if nesterov else v), v
    return update


def adam_frozen(lr, beta1, precondition):
    def update(w, m, g):  # Adam with its preconditioner P (bias corrections folded into it) held fixed
        m = beta1 * m + (1 - beta1) * g
        return w - lr * m / precondition, m
    return update


@pytest.mark.parametrize("group", [dict(lr=0.1, momentum=0.0), dict(lr=0.05, momentum=0.9),
                                   dict(lr=0.05, momentum=0.9, dampening=0.5),
                                   dict(lr=0.02, momentum=0.9, nesterov=True)])
def test_the_sgd_edges_are_where_the_update_starts_to_grow(group):
    edge = thresholds.sgd_threshold(group)
    update = heavy_ball(group["lr"], group["momentum"], group.get("dampening", 0.0), group.get("nesterov", False))
    assert not grows(update, 0.99 * edge) and grows(update, 1.01 * edge)


def test_adams_edge_bounds_the_preconditioned_sharpness():
    group = dict(lr=1e-3, betas=(0.9, 0.999))
    edge = thresholds.adam_threshold(group)
    assert edge == pytest.approx(38 / 1e-3)
    precondition = 0.3  # the curvature the update sees is lambda / P: the preconditioned sharpness
    update = adam_frozen(1e-3, 0.9, precondition)
    assert not grows(update, 0.99 * edge * precondition) and grows(update, 1.01 * edge * precondition)


def test_adams_preconditioner_is_read_from_its_state():
    gen = torch.Generator().manual_seed(0)
    weight = nn.Parameter(torch.randn(5, generator=gen))
    optimizer = torch.optim.Adam([weight], lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    assert thresholds.adam_scale(optimizer, [weight]) is None  # no second moments before the first step
    squares = torch.zeros(5, dtype=torch.float64)
    for _ in range(3):
        g = torch.randn(5, generator=gen)
        weight.grad = g.clone()
        optimizer.step()
        squares = 0.99 * squares + 0.01 * g.double() ** 2
    p = (1 - 0.8 ** 3) * ((squares / (1 - 0.99 ** 3)).sqrt() + 1e-6)
    assert torch.allclose(thresholds.adam_scale(optimizer, [weight])[0].double(), p.rsqrt(), rtol=1e-5)


# ------------------------------------------------------------------------------------------ the measurements
def tiny_problem(batches=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    data = [(torch.randn(8, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (8,), generator=gen))
            for _ in range(batches)]
    return model, nn.CrossEntropyLoss(), data


def explicit(model, criterion, data):
    """(gradient, Hessian) of the mean loss over `data` as dense float64 arrays, by torch.autograd.functional."""
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    names = [name for name, _ in model.named_parameters()]

    def loss(flat):
        weights = dict(zip(names, [t.view(s) for t, s in zip(flat.split(sizes), shapes)]))
        return sum(criterion(torch.func.functional_call(model, weights, (x,)), y) for x, y in data) / len(data)

    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gradient = torch.autograd.functional.jacobian(loss, flat)
    return gradient.numpy(), torch.autograd.functional.hessian(loss, flat).numpy()


def test_batch_sharpness_is_each_batchs_curvature_along_its_gradient():
    model, criterion, data = tiny_problem(batches=3)
    quotients = []
    for batch in data:
        g, h = explicit(model, criterion, [batch])
        quotients.append(g @ h @ g / (g @ g))
    found = batch_sharpness(model, criterion, data, mode="eval")
    assert found.per_batch == pytest.approx(quotients, rel=1e-10)
    assert found.value == pytest.approx(np.mean(quotients), rel=1e-10) and found.hvp_count == 3


def test_a_warm_start_from_the_eigenvector_converges_at_once():
    model, criterion, data = tiny_problem()
    cold = hessian_eigenvalues(model, criterion, data, max_iter=60, tol=1e-8, seed=1)
    warm = hessian_eigenvalues(model, criterion, data, max_iter=60, tol=1e-8, seed=1, start=cold.vectors[0])
    assert warm.values[0] == pytest.approx(cold.values[0], rel=1e-8)
    assert warm.hvp_count <= 3 < cold.hvp_count
    _, h = explicit(model, criterion, data)
    assert cold.values[0] == pytest.approx(np.linalg.eigvalsh(h)[-1], rel=1e-8)


def test_a_scaled_hessian_has_the_eigenvalues_of_the_preconditioned_one():
    model, criterion, data = tiny_problem()
    gen = torch.Generator().manual_seed(2)
    scale = [torch.rand(p.shape, generator=gen, dtype=torch.float64) + 0.5 for p in model.parameters()]
    found = hessian_eigenvalues(model, criterion, data, max_iter=80, tol=1e-9, seed=0, scale=scale)
    _, h = explicit(model, criterion, data)
    d = torch.cat([s.reshape(-1) for s in scale]).numpy()
    # P^-1 H with P = D^-2 is similar to D H D: the same (real) eigenvalues
    assert found.values[0] == pytest.approx(np.linalg.eigvals(np.diag(d ** 2) @ h).real.max(), rel=1e-7)
    with pytest.raises(ConfigError, match="scale must be positive"):
        hessian_eigenvalues(model, criterion, data, scale=[-s for s in scale])


# ------------------------------------------------------------------------------------------ the monitor
TINY = dict(model_config="{'width': 4, 'hidden': 16}", train_limit=128, val_limit=32, batch_size=32, epochs=2,
            quiet=True, optimizer="SGD", lr=0.1, momentum=0.9)


def test_rows_every_n_steps_against_the_momentum_edge_and_the_last_is_the_final_models(tmp_path, no_run_plots):
    from basinlab.analysis.data import first_training_batches
    from basinlab.engine.inspect import model_from_checkpoint
    run = basinlab.train(**TINY, results_dir=str(tmp_path), save="eos", log_sharpness_every_steps=4,
                         sharpness_batches=2)
    rows = pd.read_csv(run.path / "sharpness-steps.csv")
    assert list(rows.columns) == COLUMNS
    assert rows["step"].tolist() == [0, 4, 8]  # before the first step, then every 4 of the 8
    assert rows["threshold"].tolist() == pytest.approx([(2 + 2 * 0.9) / 0.1] * 3)
    assert rows["preconditioned_sharpness"].isna().all()  # SGD: no preconditioner
    assert (rows["lambda_max"] > 0).all() and (rows["hvp_count"] > 0).all()
    assert rows["lambda_max_over_threshold"].to_numpy() == pytest.approx(rows["lambda_max"] / rows["threshold"])
    assert (run.path / "plots" / "sharpness-steps.png").stat().st_size > 0
    # the last row measured the final model, on the first two training batches in batch statistics
    model, cfg, _ = model_from_checkpoint(run.path, which="last.pt")
    data = first_training_batches(cfg, 2, 32, "cpu")
    direct = hessian_eigenvalues(model, nn.CrossEntropyLoss(), data, max_iter=100, tol=1e-4, mode="train")
    assert rows["lambda_max"].iloc[-1] == pytest.approx(direct.values[0], rel=5e-3)
    assert rows["batch_sharpness"].iloc[-1] == pytest.approx(
        batch_sharpness(model, nn.CrossEntropyLoss(), data, mode="train").value, rel=1e-5)
    # the run trains exactly as without the monitor
    plain = basinlab.train(**TINY, results_dir=str(tmp_path), save="plain")
    pd.testing.assert_frame_equal(pd.read_csv(run.path / "results.csv").drop(columns=TIME_COLUMNS),
                                  pd.read_csv(plain.path / "results.csv").drop(columns=TIME_COLUMNS))


def test_adam_runs_log_the_preconditioned_sharpness_against_38_over_lr(tmp_path, no_run_plots):
    run = basinlab.train(**{**TINY, "optimizer": "Adam", "lr": 1e-3, "momentum": None, "epochs": 1},
                         results_dir=str(tmp_path), save="adam", log_sharpness_every_steps=2, sharpness_batches=1)
    rows = pd.read_csv(run.path / "sharpness-steps.csv")
    assert math.isnan(rows["preconditioned_sharpness"].iloc[0])  # before Adam's first step: no moments yet
    assert (rows["preconditioned_sharpness"].iloc[1:] > 0).all()
    assert rows["threshold"].tolist() == pytest.approx([38 / 1e-3] * len(rows))
    assert rows["lambda_max_over_threshold"].isna().all()


def test_an_interrupted_run_resumes_with_the_same_rows(tmp_path, no_run_plots):
    options = dict(**TINY, results_dir=str(tmp_path), log_sharpness_every_steps=2, sharpness_batches=1)
    straight = basinlab.train(**options, save="straight")
    with pytest.raises(TrainingInterrupted):
        basinlab.train(**options, save="halves", callbacks=[InterruptAfter(5)])
    assert pd.read_csv(tmp_path / "halves" / "sharpness-steps.csv")["step"].tolist() == [0, 2, 4]
    assert main(["train", "--resume", str(tmp_path / "halves"), "--quiet"]) == 0
    clock = ["seconds", "gradient_seconds"]
    pd.testing.assert_frame_equal(pd.read_csv(straight.path / "sharpness-steps.csv").drop(columns=clock),
                                  pd.read_csv(tmp_path / "halves" / "sharpness-steps.csv").drop(columns=clock))


def test_under_a_parameter_server_the_edge_is_the_delayed_one(tmp_path, no_run_plots):
    run = basinlab.train(**{**TINY, "momentum": 0.0, "epochs": 1}, server="asgd", workers=4,
                         results_dir=str(tmp_path), save="asgd", log_sharpness_every_steps=4, sharpness_batches=1)
    rows = pd.read_csv(run.path / "sharpness-steps.csv")
    assert rows["threshold"].tolist() == pytest.approx([stability_threshold(3, 0.0) / 0.1] * len(rows))


@pytest.mark.parametrize("options, words", [
    (dict(sharpness_batches=2), "--sharpness-batches needs --log-sharpness-every K or --log-sharpness-every-steps N"),
    (dict(log_sharpness_every_steps=0), "--log-sharpness-every-steps"),
])
def test_bad_options_are_refused_in_one_line(options, words):
    with pytest.raises(ConfigError, match=words):
        configure(make_config(**options))


def test_the_lr_range_test_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="changes the lr at every step"):
        configure(make_config(log_sharpness_every_steps=2), workflow="lr-range")
