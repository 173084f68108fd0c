"""EVBMF and the low-rank layer metrics (basinlab.metrics.lowrank), and the AdaS optimizer built on them."""

import copy
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from basinlab.errors import ConfigError
from basinlab.metrics.lowrank import (
    evbmf,
    evbmf_batched,
    evbmf_fit,
    knowledge_gain_zero_fraction,
    layer_metrics,
    metrics_from_values,
    model_metrics,
)
from basinlab.optim.adas import AdaS

# ------------------------------------------------------------------------------------------
# An independent EVBMF: the objective exactly as written in the spec (with x - ln x), minimised
# by brute force on a dense log grid, then the kept values recomputed from the formula.
# ------------------------------------------------------------------------------------------

def reference_evbmf(Y: np.ndarray, grid_points: int = 20001):
    Y = np.asarray(Y, dtype=np.float64)
    if Y.shape[0] > Y.shape[1]:
        Y = Y.T
    L, M = Y.shape
    s = np.linalg.svd(Y, compute_uv=False)
    alpha = L / M
    tau_bar = 2.5129 * np.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    e = min(int(np.ceil(L / (1 + alpha))) - 1, L) - 1
    upper = np.sum(s ** 2) / (L * M)
    lower = max(s[e + 1] ** 2 / (M * x_bar), np.mean(s[e + 1:] ** 2) / M)

    def objective(sigma2):
        x = s[None, :] ** 2 / (M * sigma2[:, None])
        small = x <= x_bar
        xs = np.where(small, x, 1.0)
        xb = np.where(small, x_bar + 1.0, x)
        tau = 0.5 * (xb - (1 + alpha) + np.sqrt((xb - 1 - alpha) ** 2 - 4 * alpha))
        t0 = np.where(small, xs - np.log(xs), 0.0)
        t1 = np.where(small, 0.0, xb - tau + np.log((tau + 1) / xb) + alpha * np.log(tau / alpha + 1))
        return (t0 + t1).sum(1)

    sig = np.geomspace(lower, upper, grid_points)
    f = objective(sig)
    sigma2 = sig[int(np.argmin(f))]
    threshold = np.sqrt(M * sigma2 * (1 + tau_bar) * (1 + alpha / tau_bar))
    sk = s[s > threshold]
    d = sk / 2 * (1 - (L + M) * sigma2 / sk ** 2
                  + np.sqrt((1 - (L + M) * sigma2 / sk ** 2) ** 2 - 4 * L * M * sigma2 ** 2 / sk ** 4))
    return d, sigma2, objective


def planted(L, M, singular_values, noise=1.0, seed=0):
    """L x M matrix: a rank-r part with the given singular values plus iid N(0, noise^2)."""
    rng = np.random.default_rng(seed)
    r = len(singular_values)
    U, _ = np.linalg.qr(rng.standard_normal((L, r)))
    V, _ = np.linalg.qr(rng.standard_normal((M, r)))
    return U @ np.diag(singular_values) @ V.T + noise * rng.standard_normal((L, M))


CASES = [
    (40, 120, [60.0, 45.0, 30.0], 0),
    (64, 576, [80.0, 70.0, 60.0, 50.0, 40.0], 1),
    (150, 50, [50.0, 35.0], 2),  # tall: transposed
    (30, 30, [25.0, 20.0, 15.0, 12.0], 3),  # square
    (16, 144, [], 4),  # pure noise
]


@pytest.mark.parametrize("L,M,svals,seed", CASES)
def test_evbmf_matches_bruteforce_minimisation(L, M, svals, seed):
    Y = planted(L, M, svals, seed=seed)
    d_ref, sigma2_ref, objective = reference_evbmf(Y)
    fit = evbmf_fit(torch.from_numpy(Y))
    d = fit.values.numpy()
    assert d.shape == d_ref.shape
    np.testing.assert_allclose(d, d_ref, rtol=2e-3)
    assert fit.sigma2 == pytest.approx(sigma2_ref, rel=2e-3)
    # Our minimiser is at least as good as the dense grid on the spec's objective.
    f_ours, f_ref = objective(np.array([fit.sigma2]))[0], objective(np.array([sigma2_ref]))[0]
    assert f_ours <= f_ref + 1e-9 * abs(f_ref)
    # Descending order.
    assert np.all(np.diff(d) <= 0)


@pytest.mark.parametrize("L,M,svals,seed", CASES)
def test_planted_rank_recovered(L, M, svals, seed):
    Y = planted(L, M, svals, seed=seed)
    d = evbmf(Y)
    assert d.numel() == len(svals)
    # Kept values shrink the observed ones towards the signal, never above the observed.
    s = np.linalg.svd(Y, compute_uv=False)[: len(svals)]
    assert np.all(d.numpy() <= s + 1e-9)


def test_noise_scale_invariance_and_estimate():
    Y = planted(40, 200, [90.0, 70.0], noise=1.0, seed=5)
    f1, f2 = evbmf_fit(Y), evbmf_fit(Y * 1e-3)
    assert f1.sigma2 == pytest.approx(1.0, rel=0.1)  # the noise variance is estimated
    np.testing.assert_allclose(f2.values.numpy(), f1.values.numpy() * 1e-3, rtol=1e-6)
    assert f2.sigma2 == pytest.approx(f1.sigma2 * 1e-6, rel=1e-6)


def test_transposition_invariance_and_input_types():
    Y = torch.from_numpy(planted(24, 90, [40.0, 30.0, 20.0], seed=7))
    a, b = evbmf(Y), evbmf(Y.T)
    assert a.numel() == 3
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    torch.testing.assert_close(evbmf(Y.numpy()), a, rtol=1e-12, atol=0)
    torch.testing.assert_close(evbmf(Y.float()), a, rtol=1e-4, atol=0)


@pytest.mark.parametrize("shape", [(1, 50), (50, 1), (1, 1), (2, 2), (3, 200)])
def test_degenerate_shapes_do_not_fail(shape):
    Y = torch.randn(*shape, dtype=torch.float64)
    d = evbmf(Y)
    assert d.dim() == 1 and d.numel() <= min(shape)
    if 1 in shape:
        assert d.numel() == 0  # one row cannot be told from noise (lower == upper)


def test_zero_equal_and_rank_deficient_matrices():
    assert evbmf(torch.zeros(5, 9)).numel() == 0
    # All singular values equal: lower == upper; nothing kept, no error.
    assert evbmf(torch.eye(8, dtype=torch.float64)).numel() == 0
    assert evbmf(torch.cat([torch.eye(6), torch.zeros(6, 10)], 1)).numel() == 0
    # Exactly rank 2, no noise (zero singular values: the spec's objective is +inf there).
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((20, 2)) @ rng.standard_normal((2, 60))
    assert evbmf(Y).numel() == 2


def test_nonfinite_input():
    Y = torch.randn(6, 10)
    Y[2, 3] = float("nan")
    with pytest.raises(ValueError):
        evbmf(Y)
    out = evbmf_batched([Y, torch.zeros(3, 4)])
    assert torch.isnan(out[0]).all() and out[1].numel() == 0


def test_batched_equals_single():
    mats = [torch.from_numpy(planted(20, 60, [30.0, 25.0], seed=s)) for s in range(3)]
    mats.append(torch.from_numpy(planted(60, 20, [30.0], seed=9)))
    mats.append(torch.randn(7, 9, dtype=torch.float64))
    batched = evbmf_batched(mats)
    for m, b in zip(mats, batched):
        torch.testing.assert_close(b, evbmf(m), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Layer metrics
# ------------------------------------------------------------------------------------------

def test_metric_definitions_hand_checked():
    m = metrics_from_values([4.0, 2.0, 1.0], n=8, p=1)
    assert m == {"rank": 3 / 8, "S": (1 + 0.5 + 0.25) / 8, "cond": 4.0, "kept": 3}
    m2 = metrics_from_values([4.0, 2.0, 1.0], n=8, p=2)
    assert m2["S"] == pytest.approx((1 + 0.25 + 1 / 16) / 8) and m2["cond"] == pytest.approx(16.0)
    assert metrics_from_values([], n=8) == {"rank": 0.0, "S": 0.0, "cond": 0.0, "kept": 0}


def test_rank_one_conv_weight():
    # W[o, i, h, w] = u_o v_i k_hw: both unfoldings have rank 1 and no noise.
    torch.manual_seed(0)
    u, v, k = torch.randn(16), torch.randn(8), torch.randn(3, 3)
    W = u[:, None, None, None] * v[None, :, None, None] * k[None, None]
    m = layer_metrics(W)
    assert m["rank_in"] == pytest.approx(1 / 8) and m["rank_out"] == pytest.approx(1 / 16)
    assert m["S_in"] == pytest.approx(1 / 8) and m["S_out"] == pytest.approx(1 / 16)
    assert m["cond_in"] == 1.0 and m["cond_out"] == 1.0
    assert m["kept_in"] == 1 and m["kept_out"] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(64, 128, 3), lambda: nn.Conv2d(3, 16, 3), lambda: nn.Conv2d(256, 64, 1),
    lambda: nn.Conv2d(64, 256, 1), lambda: nn.Conv2d(32, 32, 5, groups=4),
])
def test_fresh_conv_has_rank_zero(seed, make):
    torch.manual_seed(seed)
    conv = make()
    m = layer_metrics(conv.weight)
    assert m["rank_in"] == 0 and m["rank_out"] == 0 and m["S_in"] == 0 and m["S_out"] == 0
    nn.init.kaiming_normal_(conv.weight)
    m = layer_metrics(conv.weight)
    assert m["S_in"] + m["S_out"] == 0


@pytest.mark.parametrize("c_in,c_out", [(256, 64), (64, 256), (48, 48)])
def test_pointwise_conv_with_planted_structure(c_in, c_out):
    # A 1x1 conv with C_in != C_out: the reference raised here (and reused stale values).
    W = planted(c_out, c_in, [3.0, 2.5, 2.0, 1.5], noise=0.02, seed=c_out)
    m = layer_metrics(torch.from_numpy(W).float()[:, :, None, None])
    assert m["kept_in"] == 4 and m["kept_out"] == 4
    assert m["rank_in"] == pytest.approx(4 / c_in) and m["rank_out"] == pytest.approx(4 / c_out)
    assert 0 < m["S_in"] <= 4 / c_in and m["cond_in"] > 1


def test_linear_weight_is_a_pointwise_conv():
    W = torch.from_numpy(planted(32, 80, [5.0, 4.0], noise=0.05, seed=3))
    a, b = layer_metrics(W), layer_metrics(W[:, :, None, None])
    assert a == b and a["kept_out"] == 2
    with pytest.raises(ValueError):
        layer_metrics(torch.randn(3, 4, 5))
    with pytest.raises(ConfigError):
        layer_metrics(W, p=0)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3)
        self.conv3 = nn.Conv2d(32, 32, 3)
        self.shortcut = nn.Conv2d(16, 32, 1, bias=False)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        y = self.conv3(torch.relu(self.conv2(x)))
        return self.fc((y + self.shortcut(x)[..., 2:-2, 2:-2]).mean((2, 3)))


def test_model_metrics_frame_and_zero_fraction():
    torch.manual_seed(0)
    net = SmallNet()
    df = model_metrics(net)
    assert list(df["layer"]) == ["conv1", "conv2", "conv3", "shortcut"]
    assert list(df["shape"]) == ["16x3x3x3", "32x16x3x3", "32x32x3x3", "32x16x1x1"]
    assert {"rank_in", "rank_out", "S_in", "S_out", "cond_in", "cond_out"} <= set(df.columns)
    assert knowledge_gain_zero_fraction(df) == 1.0
    # Plant structure in two layers (conv2 and conv3 share a shape: one batched SVD call).
    with torch.no_grad():
        for conv in (net.conv2, net.conv3):
            W = planted(conv.out_channels, conv.in_channels * 9, [4.0, 3.0], noise=0.01, seed=1)
            conv.weight.copy_(torch.from_numpy(W).float().reshape(conv.weight.shape))
    df = model_metrics(net)
    assert knowledge_gain_zero_fraction(df) == pytest.approx(0.5)
    for _, row in df.iterrows():  # batched equals one by one
        single = layer_metrics(dict(net.named_modules())[row["layer"]].weight)
        for k, v in single.items():
            assert row[k] == pytest.approx(v, rel=1e-6, abs=1e-12)
    dfl = model_metrics(net, include_linear=True)
    assert list(dfl["kind"]) == ["conv"] * 4 + ["linear"]
    assert knowledge_gain_zero_fraction(dfl) == pytest.approx(0.5)  # linear rows ignored
    with pytest.raises(ConfigError):
        knowledge_gain_zero_fraction(model_metrics(nn.Sequential(nn.Linear(3, 3))))


def test_zero_fraction_counts_unfoldings_as_the_reference_joins_its_lists():
    """The reference: Z_e = mean(np.isclose(input_channel_S + output_channel_S, 0)) over the joined lists."""
    rng = np.random.default_rng(5)
    s_in = np.where(rng.random(9) < 0.5, 0.0, rng.uniform(0.05, 1, 9))
    s_out = np.where(rng.random(9) < 0.5, 0.0, rng.uniform(0.05, 1, 9))
    s_in[0], s_out[0] = 0.0, 0.3          # one unfolding learned, the other not: counts 1/2
    s_out[1] = float("nan")               # a diverged layer's unfolding is not zero
    frame = pd.DataFrame({"layer": [f"c{i}" for i in range(9)], "kind": ["conv"] * 9, "S_in": s_in, "S_out": s_out})
    joined = list(s_in) + list(s_out)
    expected = sum(1 for gain in joined if gain == gain and abs(gain - 0) <= 1e-8) / len(joined)
    assert knowledge_gain_zero_fraction(frame) == expected
    assert expected != np.mean([(a + b) == 0 for a, b in zip(s_in, s_out)])  # the per-layer rule differs here
    with_linear = pd.concat([frame, pd.DataFrame({"layer": ["fc"], "kind": ["linear"], "S_in": [0.0],
                                                  "S_out": [0.0]})])
    assert knowledge_gain_zero_fraction(with_linear) == expected


def test_model_metrics_nonfinite_layer_is_nan_not_stale():
    net = SmallNet()
    with torch.no_grad():
        net.conv2.weight[0, 0, 0, 0] = float("inf")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        df = model_metrics(net)
    assert any("non-finite" in str(x.message) for x in w)
    row = df.set_index("layer").loc["conv2"]
    assert math.isnan(row["S_in"]) and math.isnan(row["rank_out"])
    assert knowledge_gain_zero_fraction(df) == pytest.approx(3 / 4)


# ------------------------------------------------------------------------------------------
# AdaS
# ------------------------------------------------------------------------------------------

def _adas_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 3))


def test_adas_groups_and_recurrence_on_injected_metrics():
    net = _adas_net()
    opt = AdaS(net.parameters(), lr=0.05, beta=0.8, zeta=0.5, min_lr=1e-3)
    conv = opt.conv_groups()
    assert len(conv) == 2 and all(len(g["params"]) == 1 and g["params"][0].dim() == 4 for g in conv)
    other = [g for g in opt.param_groups if not g["adas_conv"]]
    assert sum(len(g["params"]) for g in other) == len(list(net.parameters())) - 2
    G = np.array([[0.00, 0.10], [0.05, 0.30], [0.20, 0.35], [0.10, 0.34], [0.10, 0.34]])
    R = np.zeros(2)
    for t, g in enumerate(G):
        lrs = opt.epoch_step(g)
        if t == 0:
            R = 0.8 * R + 0.5 * 0.05
        else:
            R = 0.8 * R + 0.5 * (g - G[t - 1])
        R = np.maximum(R, 1e-3)
        np.testing.assert_allclose(lrs, R, rtol=1e-12)
        np.testing.assert_allclose([g["lr"] for g in conv], R, rtol=1e-12)
        assert all(g["lr"] == 0.05 for g in other)  # non-conv params keep the initial lr
    # (S_in, S_out) pairs and a metrics DataFrame give the same Gbar.
    opt2 = AdaS(net.parameters(), lr=0.05, beta=0.8, zeta=0.5, min_lr=1e-3)
    df = model_metrics(net)
    pairs = df[["S_in", "S_out"]].to_numpy()
    opt.epoch_step(pairs)
    opt2.epoch_step(df)
    opt2.epoch_step(None)  # computed from its own weights
    with pytest.raises(ValueError):
        opt.epoch_step(np.zeros(3))


def test_adas_follow_mode():
    net = _adas_net()
    opt = AdaS(net.parameters(), lr=0.05, non_conv="follow")
    opt.epoch_step([0.0, 0.0])
    opt.epoch_step([0.2, 0.4])
    conv_lrs = opt.layer_lrs()
    bn = [g for g in opt.param_groups if any(p is net[1].weight for p in g["params"])][0]
    fc = [g for g in opt.param_groups if any(p is net[5].weight for p in g["params"])][0]
    assert bn["lr"] == conv_lrs[0] and fc["lr"] == conv_lrs[1]


def _train_steps(net, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


def test_adas_is_sgd_with_the_recurrence_lrs_when_metrics_are_flat():
    net_a, net_b = _adas_net(), _adas_net()
    kw = dict(momentum=0.9, weight_decay=5e-4, nesterov=True)
    adas = AdaS(net_a.parameters(), lr=0.05, beta=0.8, **kw)
    conv_b = [p for p in net_b.parameters() if p.dim() == 4]
    rest_b = [p for p in net_b.parameters() if p.dim() != 4]
    sgd = torch.optim.SGD([{"params": [conv_b[0]]}, {"params": [conv_b[1]]}, {"params": rest_b}], lr=0.05, **kw)
    for epoch in range(3):
        _train_steps(net_a, adas, 3, seed=epoch)
        _train_steps(net_b, sgd, 3, seed=epoch)
        for pa, pb in zip(net_a.parameters(), net_b.parameters()):
            torch.testing.assert_close(pa, pb, rtol=0, atol=0)
        lrs = adas.epoch_step([0.3, 0.3])  # flat knowledge gain: slope 0
        expected = 0.05 * 0.8 ** epoch  # R = beta^t * zeta * lr0
        assert lrs == pytest.approx([expected, expected], rel=1e-12)
        sgd.param_groups[0]["lr"] = sgd.param_groups[1]["lr"] = expected


def test_adas_state_dict_round_trip():
    net = _adas_net()
    opt = AdaS(net.parameters(), lr=0.05, momentum=0.9)
    _train_steps(net, opt, 2, seed=0)
    opt.epoch_step([0.1, 0.2])
    opt.epoch_step([0.3, 0.25])
    sd = copy.deepcopy(opt.state_dict())
    net2 = copy.deepcopy(net)
    opt2 = AdaS(net2.parameters(), lr=0.05, momentum=0.9)
    opt2.load_state_dict(sd)
    assert opt2.layer_lrs() == opt.layer_lrs()
    for g1, g2 in zip(opt.param_groups, opt2.param_groups):
        assert {k: v for k, v in g1.items() if k != "params"} == {k: v for k, v in g2.items() if k != "params"}
    # Continuing gives identical lrs and identical weights.
    assert opt.epoch_step([0.5, 0.1]) == opt2.epoch_step([0.5, 0.1])
    _train_steps(net, opt, 2, seed=1)
    _train_steps(net2, opt2, 2, seed=1)
    for pa, pb in zip(net.parameters(), net2.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_adas_validation_and_no_conv():
    with pytest.raises(ValueError):
        AdaS(_adas_net().parameters(), beta=1.0)
    with pytest.raises(ValueError):
        AdaS(_adas_net().parameters(), min_lr=0)
    opt = AdaS([torch.zeros(2, 2, requires_grad=True)])  # the optimizer registry probes like this
    assert opt.epoch_step() == [] and opt.param_groups[0]["lr"] == 0.03
