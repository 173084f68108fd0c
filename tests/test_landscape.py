"""Loss-landscape views: ranges, interpolation, BN recalibration, filter-normalised directions, resumable grids."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import basinlab
from basinlab.analysis import landscape
from basinlab.analysis.data import measurement_data
from basinlab.analysis.landscape import (
    GridEvaluator,
    filter_normalized_direction,
    interpolate_state,
    parse_range,
    recalibrate_bn,
)
from basinlab.analysis.views import interpolate_checkpoints, random_directions
from basinlab.api import evaluate_checkpoint
from basinlab.engine.evaluate import evaluate
from basinlab.engine.inspect import model_from_checkpoint
from basinlab.errors import ConfigError

TINY = dict(model_config="{'width': 4, 'hidden': 16}", train_limit=128, val_limit=64, batch_size=32, epochs=1,
            quiet=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, no_run_plots_in_module):
    """Two tiny MNIST convnets (different seeds) trained on 128 embedded digits."""
    root = tmp_path_factory.mktemp("runs")
    a = basinlab.train(**TINY, results_dir=str(root), save="a", seed=0)
    b = basinlab.train(**TINY, results_dir=str(root), save="b", seed=1)
    return a.path, b.path


# ----------------------------------------------------------------------------------------- ranges
@pytest.mark.parametrize("text, expected", [
    ("-0.3:0.02:0.31", np.arange(-0.3, 0.31, 0.02)),
    ("-1:0.1:2.01", np.arange(-1, 2.01, 0.1)),
    ("2:-0.5:0", [2.0, 1.5, 1.0, 0.5]),
    ("0.5", [0.5]),
    ("0, 0.5,1", [0.0, 0.5, 1.0]),
    ("0:0.25:1", [0.0, 0.25, 0.5, 0.75]),   # stop exclusive, like numpy.arange
])
def test_parse_range_matches_arange_and_hits_grid_values_exactly(text, expected):
    got = parse_range(text)
    assert len(got) == len(expected)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # decimal arithmetic: every value is the float nearest to its decimal, e.g. 0.0 and 0.1 exactly
    for value in got:
        assert value == float(f"{value:.10g}")


def test_parse_range_seed_example_contains_zero_exactly():
    values = parse_range("-0.3:0.02:0.31")
    assert len(values) == 31 and 0.0 in values and values[-1] == 0.3
    assert 0.0 not in np.arange(-0.3, 0.31, 0.02)  # what float arange gives instead


@pytest.mark.parametrize("text", ["", "1:0:2", "a:1:2", "1:2", "1:2:3:4", "3:1:2", "nan:1:2", "0:1:inf",
                                  "0:1e-9:1", "__import__('os')", "1,,2"])
def test_parse_range_rejects_bad_input_with_one_line(text):
    with pytest.raises(ConfigError) as err:
        parse_range(text, "--alpha")
    assert "\n" not in str(err.value) and "--alpha" in str(err.value)


# ----------------------------------------------------------------------------------------- interpolation
def test_interpolate_state_formula_and_exact_endpoints():
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(5, 3, generator=g), "n": torch.tensor(7)}
    b = {"w": torch.randn(5, 3, generator=g), "n": torch.tensor(9)}
    assert torch.equal(interpolate_state(a, b, 0.0)["w"], a["w"])
    assert torch.equal(interpolate_state(a, b, 1.0)["w"], b["w"])
    mid = interpolate_state(a, b, -0.5)
    np.testing.assert_allclose(mid["w"].numpy(), 1.5 * a["w"].numpy() - 0.5 * b["w"].numpy(), rtol=1e-6)
    assert int(mid["n"]) == 7  # integer buffers are A's


def test_interpolation_endpoints_reproduce_evaluations_exactly(runs, tmp_path):
    a, b = runs
    frame, csv, png = interpolate_checkpoints(a, b, [0.0, 0.5, 1.0], batch_size=32, output=tmp_path / "i",
                                              quiet=True)
    assert list(frame.columns) == ["alpha", "train_loss", "train_acc1", "val_loss", "val_acc1"]
    assert csv.is_file() and png.stat().st_size > 1000
    for row, ckpt in ((0, a), (2, b)):
        val = evaluate_checkpoint(ckpt, split="val", batch_size=32, device="cpu", limit=64)  # the run's val_limit
        assert frame["val_loss"][row] == val["loss"] and frame["val_acc1"][row] == val["acc1"]
        # every training example once (the run's first 128), evaluated by the engine
        model, cfg, _ = model_from_checkpoint(ckpt)
        train = evaluate(model, measurement_data(cfg, "train", batch_size=32), nn.CrossEntropyLoss())
        assert train["count"] == 128
        assert frame["train_loss"][row] == train["loss"] and frame["train_acc1"][row] == train["acc1"]
        # `basinlab evaluate --split train` sees the same 128 examples in another order
        shuffled = evaluate_checkpoint(ckpt, split="train", batch_size=32, device="cpu", limit=128)
        assert shuffled["acc1"] == train["acc1"] and math.isclose(shuffled["loss"], train["loss"], rel_tol=1e-6)
    # a different model in between: the midpoint is not one of the endpoints
    assert frame["val_loss"][1] not in (frame["val_loss"][0], frame["val_loss"][2])


def test_architectures_must_match(runs, tmp_path):
    wide = basinlab.train(**{**TINY, "model_config": "{'width': 6, 'hidden': 16}", "train_limit": 32},
                          results_dir=str(tmp_path), save="wide")
    with pytest.raises(ConfigError, match="architecture"):
        interpolate_checkpoints(runs[0], wide.path, [0.0], output=tmp_path / "x", quiet=True)


# ----------------------------------------------------------------------------------------- BatchNorm
def direct_bn_statistics(model, batches):
    """Per BN layer: the mean over batches of the batch mean and of the unbiased batch variance of its input."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    seen = {id(m): [] for m in layers}
    hooks = [m.register_forward_pre_hook(lambda mod, inp: seen[id(mod)].append(inp[0].detach().clone()))
             for m in layers]
    model.eval()
    for m in layers:
        m.train()  # batch statistics normalise the batch, as in recalibration
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in hooks:
        h.remove()
    out = []
    for m in layers:
        means, variances = [], []
        for z in seen[id(m)]:
            flat = z.transpose(0, 1).reshape(z.shape[1], -1)  # channel x (samples * positions)
            means.append(flat.double().mean(1))
            variances.append(flat.double().var(1, unbiased=True))
        out.append((torch.stack(means).mean(0), torch.stack(variances).mean(0)))
    return layers, out


def test_bn_recalibration_changes_buffers_and_equals_direct_recomputation(runs):
    model, cfg, _ = model_from_checkpoint(runs[0])
    batches = list(measurement_data(cfg, "train", batch_size=32, batches=3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momenta = [m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert recalibrate_bn(model, batches) == 3
    after = model.state_dict()
    changed = [k for k in before if "running_" in k and not torch.allclose(before[k], after[k])]
    assert len(changed) == 6  # mean and var of each of the 3 BN layers
    for k in before:
        if "running_" not in k and "num_batches" not in k:
            assert torch.equal(before[k], after[k]), k  # weights untouched
    assert not model.training and not any(m.training for m in model.modules())
    assert momenta == [m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    fresh, _, _ = model_from_checkpoint(runs[0])
    layers, stats = direct_bn_statistics(fresh, batches)
    mine = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer, (mean, var) in zip(mine, stats):
        np.testing.assert_allclose(layer.running_mean.double().numpy(), mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.running_var.double().numpy(), var.numpy(), rtol=1e-5, atol=1e-6)


def test_recalibrated_interpolation_evaluates_the_recalibrated_model(runs, tmp_path):
    a, b = runs
    recal, _, _ = interpolate_checkpoints(a, b, [0.0, 1.0], splits=["val"], bn_recalibrate=True, bn_batches=2,
                                          batch_size=32, output=tmp_path / "r", quiet=True)
    model, cfg, _ = model_from_checkpoint(a)
    recalibrate_bn(model, list(measurement_data(cfg, "train", batch_size=32, batches=2)))
    direct = evaluate(model, measurement_data(cfg, "val", batch_size=32), nn.CrossEntropyLoss())
    assert recal["val_loss"][0] == direct["loss"] and recal["val_acc1"][0] == direct["acc1"]


# ----------------------------------------------------------------------------------------- directions
def test_filter_normalised_directions_have_the_models_filter_norms(runs):
    model, _, _ = model_from_checkpoint(runs[0])
    direction = filter_normalized_direction(model, torch.Generator().manual_seed(3))
    params = dict(model.named_parameters())
    assert direction.keys() == params.keys()
    multi = 0
    for name, d in direction.items():
        w = params[name].detach()
        if w.dim() > 1:
            multi += 1
            np.testing.assert_allclose(d.flatten(1).norm(dim=1).numpy(), w.flatten(1).norm(dim=1).numpy(),
                                       rtol=1e-5)
            assert not torch.allclose(d / d.norm(), w / w.norm(), atol=1e-2)  # a random direction, not w
        else:
            assert torch.count_nonzero(d) == 0  # biases and BN parameters ignored
    assert multi == 4  # 2 conv + 2 linear weights
    included = filter_normalized_direction(model, torch.Generator().manual_seed(3), include_bias_bn=True)
    for name, d in included.items():
        assert math.isclose(float(d.norm()), float(params[name].detach().norm()), rel_tol=1e-5)
    again = filter_normalized_direction(model, torch.Generator().manual_seed(3))
    other = filter_normalized_direction(model, torch.Generator().manual_seed(4))
    assert all(torch.equal(again[k], direction[k]) for k in direction)
    assert not torch.equal(other["features.0.weight"], direction["features.0.weight"])


def test_batched_grid_points_match_one_point_per_pass(runs):
    model, cfg, _ = model_from_checkpoint(runs[0])
    data = {"val": measurement_data(cfg, "val", batch_size=32).in_memory()}
    d = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    origin = {k: v.detach().clone() for k, v in model.named_parameters()}
    points = [landscape.displaced_parameters(origin, [d], (a,)) for a in (-0.5, 0.0, 0.25)]
    crit = nn.CrossEntropyLoss()
    with GridEvaluator(model, crit, data) as one:
        single = one.evaluate(points)
    with GridEvaluator(model, crit, data, points_per_pass=3) as grouped:
        batched = grouped.evaluate(points)
    for s, g in zip(single, batched):
        assert math.isclose(s["val_loss"], g["val_loss"], rel_tol=1e-5) and s["val_acc1"] == g["val_acc1"]
    assert single[1]["val_loss"] == evaluate(model, data["val"], crit)["loss"]  # the model itself, untouched
    assert all(torch.equal(p, origin[n]) for n, p in model.named_parameters())


# ----------------------------------------------------------------------------------------- resumable grid
def count_points(monkeypatch):
    calls = []
    original = GridEvaluator.evaluate

    def counting(self, points):
        calls.append(len(points))
        return original(self, points)
    monkeypatch.setattr(GridEvaluator, "evaluate", counting)
    return calls


@pytest.mark.parametrize("group", [1, 2])
def test_2d_grid_resumes_only_missing_points_and_ends_identical(runs, tmp_path, monkeypatch, group):
    alphas, betas = parse_range("-0.5:0.5:0.51"), parse_range("-0.4:0.4:0.41")
    options = dict(seed=5, splits=["val"], limit=32, batch_size=16, points_per_pass=group, quiet=True)
    full, csv, png = random_directions(runs[0], alphas, betas, output=tmp_path / "full", **options)
    assert len(full) == 9 and list(full.columns) == ["alpha", "beta", "val_loss", "val_acc1"]
    assert png.stat().st_size > 1000
    reference = csv.read_bytes()
    # a run killed while writing its sixth row: five complete rows and a torn sixth line
    lines = reference.split(b"\n")
    partial = tmp_path / "part.csv"
    partial.write_bytes(b"\n".join(lines[:6]) + b"\n" + lines[6][:7])
    (tmp_path / "part.json").write_bytes((tmp_path / "full.json").read_bytes())
    calls = count_points(monkeypatch)
    resumed, _, _ = random_directions(runs[0], alphas, betas, output=tmp_path / "part", **options)
    # points 0-4 done; a group holding a missing point is evaluated whole (pairs: 4-5, 6-7, 8)
    assert sum(calls) == (4 if group == 1 else 5)
    assert partial.read_bytes() == reference
    pd.testing.assert_frame_equal(resumed, full)
    calls.clear()
    random_directions(runs[0], alphas, betas, output=tmp_path / "part", **options)
    assert sum(calls) == 0  # complete: nothing evaluated


def test_grid_refuses_points_from_other_settings(runs, tmp_path):
    options = dict(splits=["val"], limit=32, batch_size=16, quiet=True, output=tmp_path / "g")
    random_directions(runs[0], [0.0, 0.5], [0.0, 0.5], seed=1, **options)
    with pytest.raises(ConfigError, match="seed"):
        random_directions(runs[0], [0.0, 0.5], [0.0, 0.5], seed=2, **options)
    frame, _, _ = random_directions(runs[0], [0.0, 0.5], [0.0, 0.5], seed=2, overwrite=True, **options)
    assert len(frame) == 4


def test_a_grid_reuses_points_of_other_ranges_and_keeps_them(runs, tmp_path, monkeypatch):
    options = dict(splits=["val"], limit=32, batch_size=16, quiet=True, output=tmp_path / "r")
    random_directions(runs[0], [0.0, 0.5], **options)
    narrow, csv, _ = random_directions(runs[0], [0.5], **options)
    assert list(narrow["alpha"]) == [0.5] and len(pd.read_csv(csv)) == 2  # the other point is kept
    calls = count_points(monkeypatch)
    wide, _, _ = random_directions(runs[0], [0.0, 0.5, 1.0], **options)
    assert sum(calls) == 1 and list(wide["alpha"]) == [0.0, 0.5, 1.0]


def test_1d_direction_through_the_model(runs, tmp_path):
    frame, _, png = random_directions(runs[0], [-1.0, 0.0, 1.0], splits=["val"], batch_size=32,
                                      output=tmp_path / "d1", quiet=True)
    model, cfg, _ = model_from_checkpoint(runs[0])
    at_model = evaluate(model, measurement_data(cfg, "val", batch_size=32), nn.CrossEntropyLoss())
    assert frame["val_loss"][1] == at_model["loss"]
    assert frame["val_loss"][0] > at_model["loss"] and frame["val_loss"][2] > at_model["loss"]
    assert png.stat().st_size > 1000
