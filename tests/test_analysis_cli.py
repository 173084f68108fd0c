"""`basinlab sharpness`, `basinlab landscape` and `basinlab train --log-sharpness-every` end to end."""
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import basinlab
from basinlab.analysis.measure import COLUMNS
from basinlab.api import make_config
from basinlab.cli import main
from basinlab.data import build_loaders
from basinlab.engine.inspect import model_from_checkpoint
from basinlab.engine.steps import PlainStep
from basinlab.errors import ConfigError
from basinlab.methods.asgd.server import ParameterServerStep
from basinlab.methods.asgd.stability import stability_threshold
from basinlab.methods.sharpness_monitor.method import (
    LAMBDA_SETTINGS,
    TRACE_SETTINGS,
    SharpnessMonitor,
    configure,
    server_stability,
)
from basinlab.metrics.sharpness import hessian_eigenvalues, hessian_trace

TINY = dict(model_config="{'width': 4, 'hidden': 16}", train_limit=96, val_limit=64, batch_size=32, quiet=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, no_run_plots_in_module):
    run = basinlab.train(**TINY, epochs=1, results_dir=str(tmp_path_factory.mktemp("ck")), save="tiny")
    return run.path


def training_examples(limit, batch_size=32):
    """The first `limit` training digits in stored order, built here without basinlab.analysis."""
    train, _ = build_loaders("mnist5k", batch_size=batch_size, augment=False, train_limit=limit)
    images = train.raw_images()[:limit]
    x = (images.float() / 255 - 0.1307) / 0.3081
    y = train.labels[:limit]
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, limit, batch_size)]


# ----------------------------------------------------------------------------------------- sharpness
def run_sharpness(checkpoint, tmp_path, *args):
    out = tmp_path / "s.csv"
    code = main(["sharpness", str(checkpoint), "-o", str(out), "-b", "32", "--device", "cpu", *map(str, args)])
    assert code == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == COLUMNS
    assert (frame["split"] == "train").all() and (frame["examples"] == 96).all()
    return frame.set_index("quantity"), out


def test_sharpness_hessian_equals_a_direct_measurement_on_the_training_data(checkpoint, tmp_path, capsys):
    frame, _ = run_sharpness(checkpoint, tmp_path, "--measure", "hessian", "--top-k", "2", "--seed", "3",
                             "--max-iter", "40", "--tol", "1e-3")
    model, _, _ = model_from_checkpoint(checkpoint)
    direct = hessian_eigenvalues(model, nn.CrossEntropyLoss(), training_examples(96), top_k=2, max_iter=40,
                                 tol=1e-3, seed=3)
    assert math.isclose(frame.loc["lambda_1", "value"], direct.values[0], rel_tol=1e-5)
    assert math.isclose(frame.loc["lambda_2", "value"], direct.values[1], rel_tol=1e-5)
    assert frame.loc["lambda_1", "value"] >= frame.loc["lambda_2", "value"] > 0
    assert frame.loc["lambda_1", "hvp_count"] == direct.hvp_count
    printed = capsys.readouterr().out
    assert "lambda_1 = " in printed and "96 examples" in printed


def test_sharpness_in_train_mode_and_float64(checkpoint, tmp_path, capsys):
    out = tmp_path / "train_mode.csv"
    # batches of 32 as training_examples makes them: in train mode the batch statistics depend on them
    assert main(["sharpness", str(checkpoint), "--hessian-mode", "train", "--float64", "--tol", "1e-7",
                 "-b", "32", "-o", str(out)]) == 0
    row = pd.read_csv(out).set_index("quantity").loc["lambda_1"]
    assert row["hessian_mode"] == "train" and row["dtype"] == "float64" and bool(row["converged"])
    assert "Hessian in train mode (batch statistics" in capsys.readouterr().out
    model, cfg, _ = model_from_checkpoint(checkpoint)
    batches = [(x.double(), y) for x, y in training_examples(96)]
    direct = hessian_eigenvalues(model.double(), nn.CrossEntropyLoss(), batches, tol=1e-7, mode="train").values[0]
    assert row["value"] == pytest.approx(direct, rel=1e-6)
    assert main(["sharpness", str(checkpoint), "--tol", "1e-7", "--limit", "64", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "below what float32 arithmetic resolves" in err and "--float64" in err


def test_sharpness_trace_spectrum_and_keskar(checkpoint, tmp_path):
    frame, out = run_sharpness(checkpoint, tmp_path, "--measure", "trace", "spectrum", "keskar", "--max-iter", "6",
                               "--iterations", "10", "--epsilon", "1e-3", "5e-4", "--keskar-iter", "2")
    model, _, _ = model_from_checkpoint(checkpoint)
    direct = hessian_trace(model, nn.CrossEntropyLoss(), training_examples(96), max_iter=6, tol=1e-3, seed=0)
    assert math.isclose(frame.loc["trace", "value"], direct.trace, rel_tol=1e-5)
    assert frame.loc["trace", "hvp_count"] == 6
    assert frame.loc["largest_ritz_value", "value"] > 0 > frame.loc["smallest_ritz_value", "value"] - 1e-9
    keskar = frame.loc["epsilon_sharpness_pct"]
    assert list(keskar["epsilon"]) == [1e-3, 5e-4]
    assert (keskar["value"] >= 0).all() and keskar["value"].iloc[0] >= keskar["value"].iloc[1]
    assert frame.loc["loss", "value"] > 0 and 0 <= frame.loc["acc1", "value"] <= 100
    nodes = pd.read_csv(tmp_path / "s_spectrum.csv")
    assert len(nodes) == 10 and math.isclose(nodes["weight"].sum(), 1.0, rel_tol=1e-6)
    assert (tmp_path / "s_spectrum.png").stat().st_size > 1000


def test_sharpness_on_a_few_validation_batches_in_a_subspace(checkpoint, tmp_path):
    out = tmp_path / "v.csv"
    assert main(["sharpness", str(checkpoint), "--measure", "keskar", "--split", "val", "--batches", "1", "-b", "32",
                 "--subspace-dim", "5", "--epsilon", "1e-3", "--keskar-iter", "3", "-o", str(out)]) == 0
    frame = pd.read_csv(out)
    assert (frame["examples"] == 32).all() and (frame["split"] == "val").all()
    assert frame[frame["measure"] == "keskar"]["subspace_dim"].tolist() == [5]


@pytest.mark.parametrize("args, needle", [
    (["--measure", "hess"], "--measure"),
    (["--batches", "0"], "--batches"),
    (["--top-k", "0"], "--top-k"),
    (["--split", "test"], "--split"),
    (["--batches", "99"], "--batches"),
    (["--measure", "keskar", "--epsilon", "1e30", "--keskar-iter", "2", "--limit", "32"], "--epsilon 1e+30"),
])
def test_sharpness_bad_input_is_one_line(checkpoint, tmp_path, capsys, args, needle):
    code = main(["sharpness", str(checkpoint), "-o", str(tmp_path / "x.csv"), "-b", "32", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "x.csv").exists()


# ----------------------------------------------------------------------------------------- landscape CLI
def test_landscape_commands_accept_negative_ranges(checkpoint, tmp_path, capsys):
    prefix = tmp_path / "line"
    assert main(["landscape", "interpolate", str(checkpoint), str(checkpoint), "--alpha", "-1:1:1.01",
                 "--split", "val", "-b", "32", "-o", str(prefix), "--quiet"]) == 0
    frame = pd.read_csv(prefix.with_suffix(".csv"))
    assert list(frame.columns) == ["alpha", "val_loss", "val_acc1"] and list(frame["alpha"]) == [-1.0, 0.0, 1.0]
    # A == B: every alpha is the same model
    assert frame["val_loss"].nunique() == 1 or np.ptp(frame["val_loss"]) < 1e-5
    assert prefix.with_suffix(".png").stat().st_size > 1000
    code = main(["landscape", "directions", str(checkpoint), "--alpha", "-0.5:0.5:0.51", "--beta", "0,1",
                 "--split", "val", "-b", "32", "-o", str(tmp_path / "grid"), "--quiet"])
    assert code == 0 and len(pd.read_csv(tmp_path / "grid.csv")) == 6
    assert "val loss over 6 points" in capsys.readouterr().out


@pytest.mark.parametrize("args, needle", [
    (["directions", "CK", "--alpha", "1:0:2"], "--alpha"),
    (["directions", "CK", "--beta", "x"], "--beta"),
    (["directions", "CK", "--points-per-pass", "0"], "--points-per-pass"),
    (["directions", "CK", "--alpha", "0,1", "--beta", "0"], "2-D"),
    (["interpolate", "CK", "CK", "--split", "dev"], "--split"),
])
def test_landscape_bad_input_is_one_line(checkpoint, capsys, args, needle):
    code = main(["landscape", *[str(checkpoint) if a == "CK" else a for a in args]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err


# ----------------------------------------------------------------------------------------- monitor
def test_monitor_adds_columns_and_leaves_training_bit_identical(tmp_path, monkeypatch):
    monkeypatch.setitem(TRACE_SETTINGS, "max_iter", 5)  # a short Hutchinson run keeps the test fast
    plain = basinlab.train(**TINY, epochs=3, results_dir=str(tmp_path), save="plain")
    # measured after epoch 2, then trained on: any use of the global RNG (dropout) would show in epoch 3
    logged = basinlab.train(**TINY, epochs=3, results_dir=str(tmp_path), save="logged", log_sharpness_every=2,
                            log_trace=True, sharpness_batches=2, save_all=True)
    for (name, p), q in zip(plain.model.state_dict().items(), logged.model.state_dict().values()):
        assert torch.equal(p, q), name  # weights, BN statistics and counters identical
    history = pd.read_csv(logged.path / "results.csv")
    for column in ("lambda_max", "lr_times_lambda_max", "hessian_trace"):
        assert history[column].isna().tolist() == [True, False, True] and history[column][1] > 0
    assert "stability_threshold" not in history  # not a parameter-server run
    cols = ["train_loss", "val_loss", "val_acc1"]
    pd.testing.assert_frame_equal(history[cols], pd.read_csv(plain.path / "results.csv")[cols])
    assert math.isclose(history["lr_times_lambda_max"][1], history["lr"][1] * history["lambda_max"][1])
    # the same numbers measured directly: model after epoch 2, first 2 training batches of epoch 0, no augmentation
    train, _ = build_loaders("mnist5k", batch_size=32, augment=False, train_limit=96, seed=0)
    batches = [b for _, b in zip(range(2), train.epoch(0))]
    model, _, _ = model_from_checkpoint(logged.path / "epoch_2.pt")
    # the monitor's default: the Hessian with BatchNorm on batch statistics, what training steps see
    lam = hessian_eigenvalues(model, nn.CrossEntropyLoss(), batches, top_k=1, seed=0, mode="train",
                              **LAMBDA_SETTINGS).values[0]
    # the monitor measures the training model (channels_last on CPU), the direct call a contiguous copy
    # (rounding differs between the two memory formats; in train mode the batch statistics amplify it)
    assert math.isclose(history["lambda_max"][1], lam, rel_tol=1e-4)
    trace = hessian_trace(model, nn.CrossEntropyLoss(), batches, seed=0, mode="train", **TRACE_SETTINGS).trace
    assert math.isclose(history["hessian_trace"][1], trace, rel_tol=1e-6)


def test_monitor_configuration_errors():
    with pytest.raises(ConfigError, match="--log-sharpness-every"):
        configure(make_config(log_trace=True))
    with pytest.raises(ConfigError, match="--sharpness-batches"):
        configure(make_config(log_sharpness_every=1, sharpness_batches=0))
    with pytest.raises(ConfigError, match="--log-sharpness-every"):
        configure(make_config(log_sharpness_every=0))
    assert configure(make_config()) == (None, [])
    strategy, callbacks = configure(make_config(log_sharpness_every=3))
    assert strategy is None and len(callbacks) == 1 and callbacks[0].every == 3


@pytest.mark.parametrize("server, workers, delay, momentum, expected", [
    ("ssgd", 8, None, 0.0, 2.0),                               # synchronous: eta * lambda < 2
    ("asgd", 8, None, 0.0, 2 * math.sin(math.pi / 30)),        # pure ASGD, delay 7 (closed form)
    ("asgd", 8, 3, 0.9, stability_threshold(3, 0.9, "standard")),
    ("msgd", 5, None, 0.5, stability_threshold(4, 0.5, "shifted")),
])
def test_stability_threshold_column_follows_the_server(server, workers, delay, momentum, expected):
    strategy = ParameterServerStep(server, workers, delay)
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.1, "momentum": momentum}])
    assert math.isclose(server_stability(strategy, optimizer), expected, rel_tol=1e-8)
    assert server_stability(PlainStep(), optimizer) is None
    assert "stability_threshold" in SharpnessMonitor(1, 1).columns(strategy)
    assert "stability_threshold" not in SharpnessMonitor(1, 1).columns(PlainStep())
