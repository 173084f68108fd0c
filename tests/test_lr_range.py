"""The LR range test (basinlab.tuning.lr_range): sweep, stop rule, suggestions, restoration."""

import copy
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from basinlab.errors import ConfigError
from basinlab.tuning.lr_range import (
    lr_range_test,
    plot_lr_range,
    smooth_losses,
    suggest_lrs,
    suggest_min_div_10,
    suggest_steepest,
    suggest_valley,
)


def blobs(n=512, dim=10, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, dim, generator=g)
    return x, y


def batches(x, y, bs=32):
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))


def warm(model, opt, data, steps=3):
    for x, y in data[:steps]:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_sweep_diverges_suggestions_sensible_and_state_restored():
    x, y = blobs()
    data = batches(x, y)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    warm(model, opt, data)  # the optimizer has momentum buffers, BN has statistics
    model.eval()  # the mode must come back too
    before_model = copy.deepcopy(model.state_dict())
    before_opt = copy.deepcopy(opt.state_dict())
    before_grads = [p.grad.clone() for p in model.parameters()]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    np.random.seed(5)
    expected_np = np.random.rand()
    random.seed(7)
    expected_py = random.random()
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)

    res = lr_range_test(model, opt, nn.CrossEntropyLoss(), data, start_lr=1e-5, end_lr=100.0, num_steps=120)

    # Restoration: bit-identical weights, buffers, grads, mode, optimizer state, RNG streams.
    after = model.state_dict()
    assert before_model.keys() == after.keys()
    for k in before_model:
        assert torch.equal(before_model[k], after[k]), k
    for g0, p in zip(before_grads, model.parameters()):
        assert torch.equal(g0, p.grad)
    assert not model.training
    sd = opt.state_dict()
    assert sd["param_groups"] == before_opt["param_groups"]
    for k, st in before_opt["state"].items():
        for name, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sd["state"][k][name]))
    assert torch.equal(torch.rand(3), expected_next)
    assert np.random.rand() == expected_np and random.random() == expected_py
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], model.parameters()))

    # The sweep: exponential, stopped on divergence, smoothing as documented.
    assert res.stop_reason in ("diverged", "non-finite") and res.stopped_early
    n = len(res.lrs)
    assert 10 < n < 120
    expected_lrs = 1e-5 * (100.0 / 1e-5) ** (np.arange(n) / 119)
    np.testing.assert_allclose(res.lrs, expected_lrs, rtol=1e-12)
    if res.stop_reason == "diverged":
        np.testing.assert_allclose(res.smoothed, smooth_losses(res.losses, 0.98), rtol=1e-12)
        assert res.smoothed[-1] > 4.0 * res.smoothed[:-1].min()
        assert np.all(res.smoothed[1:-1] <= 4.0 * np.minimum.accumulate(res.smoothed[:-2]) + 1e-12)

    # Suggestions inside the sweep, ordered sensibly.
    s = res.suggestions
    assert set(s) == {"steepest", "valley", "min_div_10"}
    lr_min = res.lrs[int(np.nanargmin(res.smoothed[: n - res.trimmed[1]]))]
    for name, lr in s.items():
        assert 1e-5 <= lr <= 100.0, name
    assert s["min_div_10"] == pytest.approx(lr_min / 10)
    assert s["steepest"] <= lr_min and s["valley"] <= lr_min
    assert s["min_div_10"] < lr_min


def test_restores_after_an_exception_and_fresh_optimizer():
    x, y = blobs(64)
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = copy.deepcopy(model.state_dict())
    calls = []

    def step_fn(m, o, batch):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
        o.zero_grad()
        loss = nn.functional.cross_entropy(m(batch[0]), batch[1])
        loss.backward()
        o.step()
        return loss

    with pytest.raises(RuntimeError, match="boom"):
        lr_range_test(model, opt, None, batches(x, y), step_fn=step_fn, num_steps=10)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert opt.state_dict()["state"] == {}  # a fresh optimizer comes back without state
    assert opt.param_groups[0]["lr"] == 1e-3


def test_one_shot_iterator_and_validation():
    x, y = blobs(96)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = lr_range_test(model, opt, nn.CrossEntropyLoss(), iter(batches(x, y)), num_steps=50, end_lr=1e-2)
    assert res.stop_reason == "data-exhausted" and len(res.lrs) == 3
    res = lr_range_test(model, opt, nn.CrossEntropyLoss(), batches(x, y), num_steps=20, end_lr=1e-2)
    assert res.stop_reason == "completed" and len(res.lrs) == 20  # a list is iterated again
    with pytest.raises(ConfigError):
        lr_range_test(model, opt, nn.CrossEntropyLoss(), batches(x, y), start_lr=1.0, end_lr=0.1)
    with pytest.raises(ConfigError):
        lr_range_test(model, opt, None, batches(x, y))


# ------------------------------------------------------------------------------------------
# Suggestion rules on synthetic curves
# ------------------------------------------------------------------------------------------

def test_steepest_on_a_tanh_curve():
    lrs = np.geomspace(1e-6, 1.0, 61)  # ln-spacing uniform; 1e-3 is index 30
    u = np.log(lrs)
    losses = 2.0 - np.tanh((u - math.log(1e-3)) / 1.5)
    lr, k = suggest_steepest(lrs, losses)
    assert k == 30 and lr == pytest.approx(1e-3)


def test_valley_and_minimum_on_a_parabola():
    lrs = np.geomspace(1e-4, 1.0, 50)
    i = np.arange(50)
    losses = (i - 29.0) ** 2  # strictly down to index 29, then up
    # Longest decreasing run ends at 29 with length 30: start = 29 - 30 = -1, sections = 10,
    # pick = -1 + 10 + 5 = 14.
    lr, k = suggest_valley(lrs, losses)
    assert k == 14 and lr == lrs[14]
    lr, k = suggest_min_div_10(lrs, losses)
    assert k == 29 and lr == pytest.approx(lrs[29] / 10)


def test_valley_ignores_a_bump_before_the_longest_descent():
    lrs = np.geomspace(1e-5, 1.0, 40)
    losses = np.concatenate([[5.0, 4.0, 6.0], np.linspace(5.5, 1.0, 30), np.linspace(1.5, 9.0, 7)])
    # lds: the longest strictly decreasing subsequence ends at index 32 (value 1.0) with length
    # 31 (6.0 at index 2 then the 30-point descent): start = 1, sections = 31/3 -> 1 + 10 + 5 = 16.
    lr, k = suggest_valley(lrs, losses)
    assert k == 16


def test_suggest_lrs_trims_and_maps_indices():
    lrs = np.geomspace(1e-6, 1.0, 61)
    losses = 2.0 - np.tanh((np.log(lrs) - math.log(1e-3)) / 1.5)
    losses[:5] = 10.0  # junk at the start, trimmed away
    sugg, idx, used = suggest_lrs(lrs, losses, skip_start=6, skip_end=5)
    assert used == (6, 5) and idx["steepest"] == 30 and sugg["steepest"] == pytest.approx(1e-3)
    short, _, used = suggest_lrs(lrs[:4], losses[10:14], skip_start=6, skip_end=5)
    assert used[0] + used[1] <= 1 and all(np.isfinite(v) for v in short.values())


def test_smoothing_is_bias_corrected():
    assert smooth_losses([3.0, 3.0, 3.0]) == pytest.approx([3.0, 3.0, 3.0])
    out = smooth_losses([1.0, 2.0], 0.5)
    assert out[1] == pytest.approx((0.25 * 1 + 0.5 * 2) / 0.75)


def test_plot_writes_a_png(tmp_path):
    x, y = blobs(256)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = lr_range_test(model, opt, nn.CrossEntropyLoss(), batches(x, y), num_steps=60, end_lr=50.0)
    out = plot_lr_range(res, tmp_path / "sub" / "lr_range.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert list(res.to_dataframe().columns) == ["lr", "loss", "smoothed"]
