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
from tests.test_data import make_cifar10


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


def momentum_per_coordinate(lrs, momentum, hessian):
    """Whether heavy-ball SGD with a per-coordinate lr L grows on f(w) = w^T H w / 2: the spectral radius of its
    linear map (w, v) -> (w - L (b v + H w), b v + H w) is above 1."""
    step = np.diag(lrs)
    n = len(lrs)
    update = np.block([[np.eye(n) - step @ hessian, -momentum * step], [hessian, momentum * np.eye(n)]])
    return np.abs(np.linalg.eigvals(update)).max() > 1.0


def test_with_lr_groups_the_edge_bounds_the_lr_scaled_sharpness():
    # three parameters in two groups, lr 0.01 and 4x that: the update is w -= lr_0 S v, S = diag(1, 4, 4)
    a, b, c = (nn.Parameter(torch.zeros(())) for _ in range(3))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 0.01}, {"params": [b, c], "lr": 0.04}], momentum=0.9)
    assert thresholds.is_preconditioned(optimizer) and thresholds.has_lr_groups(optimizer)
    scale = thresholds.preconditioner_scale(optimizer, [a, b, c])
    assert [float(d) for d in scale] == pytest.approx([1.0, 2.0, 2.0])
    edge = thresholds.threshold(optimizer, None)
    assert edge == pytest.approx(3.8 / 0.01)               # group 0's momentum edge
    gen = np.random.default_rng(0)
    basis = np.linalg.qr(gen.standard_normal((3, 3)))[0]
    hessian = basis @ np.diag([1.0, 0.4, 0.1]) @ basis.T
    d = np.array([1.0, 2.0, 2.0])
    scaled = np.linalg.eigvalsh(d[:, None] * hessian * d[None, :]).max()   # lambda_max(S^1/2 H S^1/2)
    lrs = np.array([0.01, 0.04, 0.04])
    assert not momentum_per_coordinate(lrs, 0.9, 0.99 * edge / scaled * hessian)
    assert momentum_per_coordinate(lrs, 0.9, 1.01 * edge / scaled * hessian)
    # lambda_max alone would put the edge elsewhere: the unscaled Hessian at lambda_max = edge already grows
    assert momentum_per_coordinate(lrs, 0.9, 0.99 * edge / np.linalg.eigvalsh(hessian).max() * hessian)


def test_groups_without_a_common_edge_and_groups_that_do_not_move():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    mixed = torch.optim.SGD([{"params": [a], "momentum": 0.9}, {"params": [b], "momentum": 0.5}], lr=0.1)
    assert math.isnan(thresholds.threshold(mixed, None))   # no one edge for two momenta
    assert thresholds.preconditioner_scale(mixed, [a, b]) is None   # one lr: lambda_max itself is compared
    still = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.0}])
    assert thresholds.preconditioner_scale(still, [a, b]) is None   # b does not move: no D H D over it
    assert thresholds.preconditioner_scale(still, [a]) is not None
    frozen = nn.Parameter(torch.zeros(2), requires_grad=False)   # a group of frozen parameters has no lr that acts
    assert not thresholds.has_lr_groups(torch.optim.SGD([{"params": [a]}, {"params": [frozen], "lr": 1.0}], lr=0.1))


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


def test_a_model_with_lr_groups_logs_the_lr_scaled_sharpness_against_group_0s_edge(tmp_path, no_run_plots):
    # airbench94 brings its BatchNorm biases at 64x the lr: the edge bounds lambda_max(S^1/2 H S^1/2)
    make_cifar10(tmp_path / "data" / "cifar10" / "cifar-10-batches-py", per_batch=16, n_test=16)
    run = basinlab.train(preset="airbench94", model_config="{'widths': [8, 16, 16]}", save="groups",
                         datasets_dir=str(tmp_path / "data"), results_dir=str(tmp_path), quiet=True, batch_size=16,
                         epochs=1, log_sharpness_every_steps=5, sharpness_batches=1)
    rows = pd.read_csv(run.path / "sharpness-steps.csv")
    assert rows["step"].tolist() == [0, 5]
    assert (rows["preconditioned_sharpness"] > rows["lambda_max"]).all()   # S >= 1: it can only grow
    assert rows["threshold"].to_numpy() == pytest.approx((2 + 2 * 0.85) / ((1 + 2 * 0.85) * rows["lr"]))
    assert rows["lambda_max_over_threshold"].isna().all() and rows["batch_sharpness_over_threshold"].isna().all()
    assert rows["preconditioned_over_threshold"].to_numpy() == pytest.approx(
        rows["preconditioned_sharpness"] / rows["threshold"])


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
