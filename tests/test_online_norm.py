"""Online Normalization: exactness against the per-sample loop, batch independence, state handling.

The main proof of correctness is the comparison with ``OnlineNormReference``: an explicit Python loop
over samples with its own forward and hand-written backward (ECM, affine, control process), written
from the equations and sharing no code with the vectorised module.
"""

import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import basinlab.nn.online_norm as online_norm
import basinlab.nn.online_norm_affine as online_norm_affine
import basinlab.nn.online_norm_scans as online_norm_scans
from basinlab.nn.online_norm import OnlineNorm1d, OnlineNorm2d, _OnlineNormFunction
from basinlab.nn.online_norm_reference import OnlineNormReference

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
STATE = ("mu", "var", "u", "v")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b| (the scale of the quantity)."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def make_pair(shape_kind, ecm, dtype, alpha_fwd, alpha_bkw, affine=True, seed=0):
    c = 3 if shape_kind == "4d" else 5
    cls = OnlineNorm2d if shape_kind == "4d" else OnlineNorm1d
    mod = cls(c, alpha_fwd=alpha_fwd, alpha_bkw=alpha_bkw, affine=affine, ecm=ecm).to(dtype)
    ref = OnlineNormReference(c, alpha_fwd, alpha_bkw, affine=affine, ecm=ecm, dtype=dtype)
    if affine:
        gen = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            mod.weight.copy_(1.0 + 0.5 * torch.randn(c, generator=gen, dtype=dtype))
            mod.bias.copy_(0.3 * torch.randn(c, generator=gen, dtype=dtype))
        ref.weight = mod.weight.detach().clone()
        ref.bias = mod.bias.detach().clone()
    return mod, ref, c


def batch_shape(shape_kind, b, c):
    return {"4d": (b, c, 4, 5), "2d": (b, c), "3d": (b, c, 7)}[shape_kind]


def run_and_compare(mod, ref, shapes, dtype, seed=0, scale=2.0, offset=1.0):
    gen = torch.Generator().manual_seed(seed)
    tol = TOL[dtype]
    for shape in shapes:
        x = (torch.randn(shape, generator=gen, dtype=dtype) * scale + offset).requires_grad_()
        g = torch.randn(shape, generator=gen, dtype=dtype)
        if mod.affine:
            mod.weight.grad = None
            mod.bias.grad = None
        out = mod(x)
        out.backward(g)
        ref_out = ref.forward(x.detach())
        ref_gx, ref_gw, ref_gb = ref.backward(g)
        assert out.dtype == dtype
        assert rel_err(out, ref_out) < tol, ("output", shape)
        assert rel_err(x.grad, ref_gx) < tol, ("input grad", shape)
        if mod.affine:
            assert rel_err(mod.weight.grad, ref_gw) < tol, ("weight grad", shape)
            assert rel_err(mod.bias.grad, ref_gb) < tol, ("bias grad", shape)
        for name in STATE:
            assert rel_err(getattr(mod, name), getattr(ref, name)) < tol, (name, shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ecm", ["ls", "ac", "none"])
@pytest.mark.parametrize("shape_kind", ["4d", "2d"])
def test_matches_per_sample_reference(shape_kind, ecm, dtype):
    # several consecutive batches (state carried), batch size 1 included, varying batch sizes
    mod, ref, c = make_pair(shape_kind, ecm, dtype, alpha_fwd=0.9, alpha_bkw=0.8)
    shapes = [batch_shape(shape_kind, b, c) for b in (6, 1, 9, 1, 4)]
    run_and_compare(mod, ref, shapes, dtype, seed=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_paper_decays_and_3d(dtype):
    # CIFAR-100 decays (511/512, 15/16) and the (N, C, L) form of OnlineNorm1d
    mod, ref, c = make_pair("3d", "ls", dtype, alpha_fwd=511 / 512, alpha_bkw=15 / 16)
    shapes = [batch_shape("3d", b, c) for b in (8, 3, 1)]
    run_and_compare(mod, ref, shapes, dtype, seed=2, scale=1.5, offset=-0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_negative_control_decay(dtype, monkeypatch):
    # alpha_bkw = 0.5 and inputs far larger than the initial var = 1: E[y^2] >> 2, so the decay
    # 1 - (1 - alpha_bkw) E[y^2] of the v-recurrence is strongly negative (no log-space tricks).
    seen = []
    scan = online_norm_scans._affine_scan

    def spy(a, c, s0):
        seen.append(a.min().item())
        return scan(a, c, s0)

    monkeypatch.setattr(online_norm, "_affine_scan", spy)
    mod, ref, c = make_pair("4d", "none", dtype, alpha_fwd=0.7, alpha_bkw=0.5)
    run_and_compare(mod, ref, [batch_shape("4d", 10, c)], dtype, seed=3, scale=4.0, offset=3.0)
    assert seen and min(seen) < -1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ecm", ["none", "ls"])
def test_matches_reference_long_batch_no_affine(dtype, ecm):
    # a batch longer than one scan chunk (chunked scans) and affine=False
    mod, ref, c = make_pair("2d", ecm, dtype, alpha_fwd=0.99, alpha_bkw=0.9, affine=False)
    run_and_compare(mod, ref, [(600, c), (5, c)], dtype, seed=4)
    mod, ref, c = make_pair("4d", ecm, dtype, alpha_fwd=0.99, alpha_bkw=0.9, affine=False)
    run_and_compare(mod, ref, [batch_shape("4d", 7, c)], dtype, seed=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_on_fallback_scan_paths(dtype, monkeypatch):
    # the cheap closed forms are switched off: constant decays through the matrix of powers,
    # the v-recurrence through the log-depth doubling scan; plain sums instead of the fused kernel
    monkeypatch.setattr(online_norm_affine, "_FUSED_SUMS", [False])
    monkeypatch.setattr(online_norm_scans, "_decay_powers", lambda *args: None)
    monkeypatch.setattr(online_norm_scans, "_affine_scan_products", lambda *args: None)
    for kind, ecm in (("4d", "ls"), ("2d", "ac")):
        mod, ref, c = make_pair(kind, ecm, dtype, alpha_fwd=0.9, alpha_bkw=0.8)
        shapes = [batch_shape(kind, b, c) for b in (6, 1, 13)]
        run_and_compare(mod, ref, shapes, dtype, seed=6)


def _sequential(a, c, s0):
    state, prev = s0.clone(), []
    for t in range(a.shape[0]):
        prev.append(state)
        state = a[t] * state + c[t]
    return torch.stack(prev), state


@pytest.mark.parametrize("n", [1, 2, 5, 64, 300])
def test_scans_match_sequential_recurrence(n):
    gen = torch.Generator().manual_seed(n)
    dt = torch.float64
    c = torch.randn(n, 3, generator=gen, dtype=dt)
    s0 = torch.randn(3, generator=gen, dtype=dt)
    # time-varying decays: ordinary, negative, exactly zero, large (|a| > 1), tiny
    cases = [
        0.9 + 0.1 * torch.rand(n, 3, generator=gen, dtype=dt),
        2.2 * torch.rand(n, 3, generator=gen, dtype=dt) - 1.1,
        torch.where(torch.rand(n, 3, generator=gen, dtype=dt) < 0.2, 0.0, 0.5),
        torch.full((n, 3), -3.0, dtype=dt),
        torch.full((n, 3), 1e-3, dtype=dt),
    ]
    for a in cases:
        want_prev, want_last = _sequential(a, c, s0)
        for scan in (online_norm_scans._affine_scan, online_norm_scans._affine_scan_doubling):
            prev, last = scan(a, c, s0)
            assert rel_err(prev, want_prev) < 1e-12 and rel_err(last, want_last) < 1e-12
        products = online_norm_scans._affine_scan_products(a, c, s0)  # None when out of its range
        if products is not None:
            assert rel_err(products[0], want_prev) < 1e-12
    # constant decays, including ones whose negative powers would overflow (matrix fallback)
    for alpha, scale in ((0.999, 0.001), (15 / 16, 1.0), (0.01, 0.99), (0.0, 1.0), (1.0, 0.0)):
        want_prev, want_last = _sequential(torch.full((n, 3), alpha, dtype=dt), scale * c, s0)
        prev, last = online_norm_scans._const_decay_scan(c, s0, alpha, scale)
        assert rel_err(prev, want_prev) < 1e-12 and rel_err(last, want_last) < 1e-12
        prev32, last32 = online_norm_scans._const_decay_scan(c.float(), s0.float(), alpha, scale)
        assert rel_err(prev32, want_prev) < 1e-6 and rel_err(last32, want_last) < 1e-6


def test_default_decays_match_reference():
    mod, ref, c = make_pair("4d", "ls", torch.float32, alpha_fwd=0.999, alpha_bkw=0.99)
    run_and_compare(mod, ref, [batch_shape("4d", 32, c)] * 2, torch.float32, seed=5)


@pytest.mark.parametrize("ecm", ["ls", "ac", "none"])
def test_batch_of_b_equals_b_batches_of_one(ecm):
    torch.manual_seed(0)
    dtype = torch.float64
    whole = OnlineNorm2d(4, alpha_fwd=0.8, alpha_bkw=0.7, ecm=ecm).to(dtype)
    with torch.no_grad():
        whole.weight.uniform_(0.5, 1.5)
        whole.bias.uniform_(-0.5, 0.5)
    single = copy.deepcopy(whole)
    x = torch.randn(7, 4, 3, 3, dtype=dtype) * 1.7 + 0.4
    g = torch.randn_like(x)

    xw = x.clone().requires_grad_()
    out_w = whole(xw)
    state_after_forward = {k: getattr(whole, k).clone() for k in ("mu", "var")}
    out_w.backward(g)

    outs, grads = [], []
    for n in range(x.shape[0]):  # forward and backward sample by sample, weights frozen
        xn = x[n : n + 1].clone().requires_grad_()
        on = single(xn)
        on.backward(g[n : n + 1])
        outs.append(on.detach())
        grads.append(xn.grad)
        if n == x.shape[0] - 1:
            for k, val in state_after_forward.items():
                assert rel_err(getattr(single, k), val) < 1e-12
    assert rel_err(torch.cat(outs), out_w) < 1e-12
    assert rel_err(torch.cat(grads), xw.grad) < 1e-12
    assert rel_err(single.weight.grad, whole.weight.grad) < 1e-12  # accumulated over the samples
    assert rel_err(single.bias.grad, whole.bias.grad) < 1e-12
    for k in STATE:
        assert rel_err(getattr(single, k), getattr(whole, k)) < 1e-12


def test_eval_uses_frozen_buffers():
    torch.manual_seed(1)
    mod = OnlineNorm2d(3, alpha_fwd=0.9, ecm="ls")
    with torch.no_grad():
        mod.weight.uniform_(0.5, 1.5)
        mod.bias.uniform_(-0.5, 0.5)
    for _ in range(3):
        mod(torch.randn(5, 3, 4, 4) * 2 + 1).sum().backward()
    mod.eval()
    before = {k: getattr(mod, k).clone() for k in STATE}
    x = (torch.randn(4, 3, 4, 4) * 2 + 1).requires_grad_()
    out = mod(x)
    out.square().sum().backward()
    for k in STATE:
        assert torch.equal(getattr(mod, k), before[k]), k
    z = (x.detach() - mod.mu.view(1, -1, 1, 1)) / torch.sqrt(mod.var.view(1, -1, 1, 1) + mod.eps)
    z = z * mod.weight.detach().view(1, -1, 1, 1) + mod.bias.detach().view(1, -1, 1, 1)
    z = z / torch.sqrt(z.square().mean(dim=(1, 2, 3), keepdim=True) + 1e-5)
    assert rel_err(out, z) < 1e-6
    assert torch.isfinite(x.grad).all()
    # eval output of a sample does not depend on the rest of the batch
    assert rel_err(mod(x[:1].detach()), out[:1]) < 1e-6


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(2)
    a = OnlineNorm2d(3, alpha_fwd=0.9, alpha_bkw=0.8)
    for _ in range(3):
        x = torch.randn(4, 3, 5, 5, requires_grad=True)
        a(x).backward(torch.randn(4, 3, 5, 5))
    sd = a.state_dict()
    for k in STATE:
        assert k in sd and sd[k].dtype == torch.float32
    assert not torch.equal(sd["u"], torch.zeros(3)) and not torch.equal(sd["v"], torch.zeros(3))
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    b = OnlineNorm2d(3, alpha_fwd=0.9, alpha_bkw=0.8)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for k in STATE:
        assert torch.equal(getattr(a, k), getattr(b, k))
    x = torch.randn(6, 3, 5, 5)
    g = torch.randn(6, 3, 5, 5)
    outs = []
    for mod in (a, b):
        xi = x.clone().requires_grad_()
        out = mod(xi)
        out.backward(g)
        outs.append((out.detach(), xi.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    for k in STATE:
        assert torch.equal(getattr(a, k), getattr(b, k))


def test_no_grad_train_forward_updates_forward_stats_only():
    mod = OnlineNorm2d(2)
    with torch.no_grad():
        mod(torch.randn(3, 2, 4, 4) + 5.0)
    assert (mod.mu > 0).all() and not torch.equal(mod.var, torch.ones(2))
    assert torch.equal(mod.u, torch.zeros(2)) and torch.equal(mod.v, torch.zeros(2))
    # the backward state advances once per backward pass
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    mod(x).sum().backward()  # expanded (stride-0) output gradient
    assert not torch.equal(mod.u, torch.zeros(2))
    mod.reset_online_state()
    assert torch.equal(mod.mu, torch.zeros(2)) and torch.equal(mod.var, torch.ones(2))
    assert torch.equal(mod.u, torch.zeros(2)) and torch.equal(mod.v, torch.zeros(2))


def test_empty_batch_changes_nothing():
    for mod, shape in ((OnlineNorm2d(3), (0, 3, 4, 4)), (OnlineNorm1d(3, ecm="ac"), (0, 3))):
        x = torch.randn(shape, requires_grad=True)
        out = mod(x)
        out.sum().backward()
        assert out.shape == shape
        assert torch.equal(mod.mu, torch.zeros(3)) and torch.equal(mod.var, torch.ones(3))


def test_inference_mode_then_training():
    mod = OnlineNorm2d(3)
    with torch.inference_mode():
        mod(torch.randn(4, 3, 2, 2))  # training-mode forward: statistics advance
        mod.eval()
        mod(torch.randn(4, 3, 2, 2))
        mod.train()
    assert not torch.equal(mod.mu, torch.zeros(3))
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    mod(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_bf16_autocast_keeps_float32_state():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), OnlineNorm2d(4), nn.ReLU())
    x = torch.randn(5, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    norm = net[1]
    for k in STATE:
        assert getattr(norm, k).dtype == torch.float32, k
    assert torch.isfinite(norm.u).all() and not torch.equal(norm.u, torch.zeros(4))
    assert net[0].weight.grad is not None and torch.isfinite(net[0].weight.grad).all()
    # plain bf16 input and a bf16 module: output bf16, state still float32
    mod = OnlineNorm2d(4).to(torch.bfloat16)
    assert mod.weight.dtype == torch.bfloat16 and mod.mu.dtype == torch.float32
    xb = torch.randn(5, 4, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    yb = mod(xb)
    yb.float().sum().backward()
    assert yb.dtype == torch.bfloat16 and xb.grad.dtype == torch.bfloat16
    assert all(getattr(mod, k).dtype == torch.float32 for k in STATE)
    # the float32 statistics equal those of the float32 computation on the same (bf16) values
    ref = OnlineNorm2d(4)
    ref(xb.detach().float())
    assert rel_err(mod.mu, ref.mu) < 1e-6 and rel_err(mod.var, ref.var) < 1e-6


def test_gradcheck_where_the_backward_is_a_true_gradient():
    # What is checkable. The control process is NOT the gradient of the forward: for alpha_fwd < 1
    # y_n depends on the earlier samples through mu_{n-1}, var_{n-1}, and the backward replaces those
    # cross-sample terms with the u/v control terms. The backward is the exact Jacobian-transpose
    # only when both processes are switched off: alpha_fwd = 1 (frozen statistics, so y is an
    # elementwise affine map of x) and alpha_bkw = 1 (no control: x' = y' / sigma). There
    # gradcheck applies (any state u, v; they advance but are multiplied by 1 - alpha_bkw = 0).
    # Everything else is proven against the per-sample reference above.
    torch.manual_seed(4)
    dt = torch.float64
    mu = torch.randn(3, dtype=dt)
    var = torch.rand(3, dtype=dt) + 0.5
    u = torch.randn(3, dtype=dt)
    v = torch.randn(3, dtype=dt)
    x = torch.randn(3, 3, 2, 2, dtype=dt, requires_grad=True)
    fn = lambda inp: _OnlineNormFunction.apply(inp, mu, var, u, v, 1.0, 1.0, 1e-5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    # the whole module (affine + ECM by ordinary autograd) in that regime, gamma/beta included
    for ecm in ("ls", "none"):
        mod = OnlineNorm2d(3, alpha_fwd=1.0, alpha_bkw=1.0, ecm=ecm).double()
        with torch.no_grad():
            mod.mu.copy_(mu)
            mod.var.copy_(var)
            mod.weight.uniform_(0.5, 1.5)
            mod.bias.uniform_(-0.5, 0.5)
        w = mod.weight
        assert torch.autograd.gradcheck(mod, (x,), fast_mode=True)
        mod.eval()  # eval mode is plain autograd of (x - mu) / sqrt(var + eps): always checkable
        assert torch.autograd.gradcheck(mod, (x,), fast_mode=True)
        mod.train()
        # parameter gradients: compare with autograd of the explicit formula
        out = mod(x)
        gout = torch.randn_like(out)
        gw, gb = torch.autograd.grad(out, (w, mod.bias), gout)
        y = (x - mu.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
        wp = w.detach().clone().requires_grad_()
        bp = mod.bias.detach().clone().requires_grad_()
        z = y * wp.view(1, -1, 1, 1) + bp.view(1, -1, 1, 1)
        if ecm == "ls":
            z = z / torch.sqrt(z.square().mean(dim=(1, 2, 3), keepdim=True) + 1e-5)
        ew, eb = torch.autograd.grad(z, (wp, bp), gout)
        assert rel_err(gw, ew) < 1e-12 and rel_err(gb, eb) < 1e-12


def test_backward_is_the_control_process_not_autograd():
    # Sanity that the reference comparison is not vacuous: with alpha_fwd < 1 the module's input
    # gradient differs from the true gradient of the forward (differentiating through mu/var),
    # and with alpha_bkw = 1 it equals the gradient with the statistics held constant.
    torch.manual_seed(5)
    dt = torch.float64
    x = (torch.randn(6, 2, 3, 3, dtype=dt) * 2 + 1).requires_grad_()
    g = torch.randn(6, 2, 3, 3, dtype=dt)

    def autograd_forward(inp, detach_stats):
        a, mu, var, ys = 0.7, torch.zeros(2, dtype=dt), torch.ones(2, dtype=dt), []
        for t in range(inp.shape[0]):
            xt = inp[t].reshape(2, -1)
            m, s2 = xt.mean(1), xt.var(1, unbiased=False)
            mu_u, var_u = (mu.detach(), var.detach()) if detach_stats else (mu, var)
            ys.append(((xt - mu_u[:, None]) / torch.sqrt(var_u[:, None] + 1e-5)).reshape(inp[t].shape))
            mu, var = a * mu + (1 - a) * m, a * var + (1 - a) * s2 + a * (1 - a) * (m - mu) ** 2
        return torch.stack(ys)

    (true_grad,) = torch.autograd.grad(autograd_forward(x, False), x, g)
    (stop_grad,) = torch.autograd.grad(autograd_forward(x, True), x, g)
    for ab, expected_equal in ((0.9, None), (1.0, stop_grad)):
        mod = OnlineNorm2d(2, alpha_fwd=0.7, alpha_bkw=ab, affine=False, ecm="none").double()
        xi = x.detach().clone().requires_grad_()
        out = mod(xi)
        assert rel_err(out, autograd_forward(x, False)) < 1e-12
        out.backward(g)
        assert rel_err(xi.grad, true_grad) > 1e-3
        if expected_equal is not None:
            assert rel_err(xi.grad, expected_equal) < 1e-12


def test_channels_last_and_validation():
    mod = OnlineNorm2d(3, alpha_fwd=0.9)
    ref = copy.deepcopy(mod)
    x = torch.randn(4, 3, 5, 5)
    g = torch.randn(4, 3, 5, 5)
    xa = x.clone().requires_grad_()
    xb = x.clone().to(memory_format=torch.channels_last).requires_grad_()
    mod(xb).backward(g)
    ref(xa).backward(g)
    assert rel_err(xb.grad, xa.grad) < 1e-6
    assert torch.equal(mod.mu, ref.mu) or rel_err(mod.mu, ref.mu) < 1e-6
    with pytest.raises(ValueError):
        mod(torch.randn(4, 3))
    with pytest.raises(ValueError):
        mod(torch.randn(4, 2, 5, 5))
    with pytest.raises(ValueError):
        OnlineNorm2d(3, ecm="bogus")
    with pytest.raises(ValueError):
        OnlineNorm1d(3, alpha_fwd=1.5)
    r = repr(OnlineNorm1d(8, alpha_fwd=0.5, alpha_bkw=0.25, ecm="ac"))
    assert "alpha_fwd=0.5" in r and "alpha_bkw=0.25" in r and "ecm='ac'" in r


def test_tiny_convnet_learns():
    torch.manual_seed(0)
    n = 64
    x = torch.randn(n, 1, 8, 8)
    labels = (x[:, :, :, :4].mean(dim=(1, 2, 3)) > x[:, :, :, 4:].mean(dim=(1, 2, 3))).long()
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        OnlineNorm2d(8, alpha_fwd=0.99, alpha_bkw=0.9),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        OnlineNorm2d(8, alpha_fwd=0.99, alpha_bkw=0.9),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 2)),
        nn.Flatten(),
        nn.Linear(16, 2),
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(25):
        for i in range(0, n, 16):
            loss = F.cross_entropy(net(x[i : i + 16]), labels[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    first = sum(losses[:5]) / 5
    last = sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    net.eval()
    with torch.no_grad():
        acc = (net(x).argmax(1) == labels).float().mean().item()
    assert acc > 0.85


def test_activation_clamping_passes_the_gradient_at_the_bounds_as_the_reference():
    """ECM 'ac' is torch.clamp(z, -5, 5) in the reference: d/dz is 1 for -5 <= z <= 5, bounds included."""
    norm = OnlineNorm1d(3, ecm="ac", affine=True).eval()
    with torch.no_grad():
        norm.mu.zero_()
        norm.var.fill_(1.0 - norm.eps)         # normalised value == input (to rounding)
        norm.weight.fill_(1.0)
        norm.bias.zero_()
    x = torch.tensor([[5.0, -5.0, 7.0], [4.0, 5.5, -6.0]], requires_grad=True)
    out = norm(x)
    out.sum().backward()
    z = x.detach() * torch.rsqrt(norm.var + norm.eps)
    expected = ((z >= -5) & (z <= 5)).float() * torch.rsqrt(norm.var + norm.eps)
    torch.testing.assert_close(x.grad, expected)
    assert x.grad[0, 0] > 0 and x.grad[0, 1] > 0   # exactly at +5 and -5: passed, as torch.clamp does
