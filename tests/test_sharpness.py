"""Hessian measurements and Keskar sharpness on models whose Hessian is known exactly."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from basinlab.errors import ConfigError
from basinlab.metrics.hessian import SharpnessInputError
from basinlab.metrics.sharpness import (
    hessian_eigenvalues,
    hessian_spectrum,
    hessian_trace,
    hessian_vector_product,
    keskar_sharpness,
    lambda_max,
)

DT = torch.float64


# ----------------------------------------------------------------------------- fixtures
def split(x, y, sizes):
    out, i = [], 0
    for s in sizes:
        out.append((x[i:i + s], y[i:i + s]))
        i += s
    return out


def linear_problem(seed=0, n=30, d=5, outputs=1, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=DT) * torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5], dtype=DT)[:d]
    y = torch.randn(n, outputs, generator=g, dtype=DT)
    model = nn.Linear(d, outputs, bias=bias).to(DT)
    batches = split(x, y, [11, 7, n - 18])  # unequal batches: weighting by batch size matters
    z = torch.cat([x, torch.ones(n, 1, dtype=DT)], 1) if bias else x
    block = 2.0 / n * z.T @ z  # Hessian of mean squared error (mean over samples) for one output
    if outputs == 1:
        # parameter order: weight (row-major, d), then bias
        H = block
    else:
        assert not bias
        H = torch.kron(torch.eye(outputs, dtype=DT), block / outputs)  # MSELoss averages over outputs too
    return model, nn.MSELoss(), batches, H


def mlp_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT)  # 26 parameters
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(40, 3, generator=g, dtype=DT)
    y = torch.randn(40, 2, generator=g, dtype=DT)
    batches = split(x, y, [15, 7, 18])
    return model, nn.MSELoss(), batches


def dense_hessian(model, criterion, batches):
    """Exact Hessian of the sample-weighted mean loss, in the model's current mode."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(w):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            k = math.prod(shape)
            params[name] = w[i:i + k].view(shape)
            i += k
        total, count = 0.0, 0
        for x, y in batches:
            total = total + criterion(functional_call(model, params, (x,)), y) * len(x)
            count += len(x)
        return total / count

    return torch.autograd.functional.hessian(f, flat)


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(m, m.training) for m in model.modules()],
            [None if p.grad is None else p.grad.clone() for p in model.parameters()])


def assert_unchanged(model, snap):
    state, modes, grads = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for m, mode in modes:
        assert m.training == mode
    for p, g in zip(model.parameters(), grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


def rel_close(got, want, rel=1e-3):
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape, (got, want)
    assert np.all(np.abs(got - want) <= rel * np.abs(want)), (got, want)


# ----------------------------------------------------------------------------- HVP
def test_hvp_linear_least_squares_exact():
    model, crit, batches, H = linear_problem()
    v = [torch.randn_like(p) for p in model.parameters()]
    hv = hessian_vector_product(model, crit, batches, v)
    assert [t.shape for t in hv] == [p.shape for p in model.parameters()]
    torch.testing.assert_close(flat(hv), H @ flat(v), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dense_hessian(model, crit, batches), H)  # the test's own reference agrees


class LoaderLike:
    def __init__(self, batches):
        self.batches = batches

    def epoch(self, epoch, start_batch=0):
        return iter(self.batches)


def test_batch_sources_agree_and_one_shot_iterators_are_refused():
    model, crit, batches, H = linear_problem()
    v = [torch.randn_like(p) for p in model.parameters()]
    want = H @ flat(v)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    sources = [batches, tuple(batches), lambda: iter(batches), LoaderLike(batches), (x, y),
               torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)]
    for src in sources:
        for cache in (False, True):
            got = flat(hessian_vector_product(model, crit, src, v, cache_graph=cache))
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ConfigError, match="re-iterable"):
        hessian_vector_product(model, crit, (b for b in batches), v)
    with pytest.raises(ConfigError):
        hessian_vector_product(model, crit, [], v)
    with pytest.raises(ValueError):
        hessian_vector_product(model, crit, batches, v[:1])


def test_hvp_on_a_subset_of_parameters():
    model, crit, batches, H = linear_problem()
    v = [torch.randn_like(model.weight)]
    got = hessian_vector_product(model, crit, batches, v, params=[model.weight])[0]
    torch.testing.assert_close(got.reshape(-1), H[:5, :5] @ v[0].reshape(-1))


# ----------------------------------------------------------------------------- eigenvalues
@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("k", [1, 3])
def test_top_eigenvalues_linear(method, k):
    model, crit, batches, H = linear_problem()
    snap = snapshot(model)
    evals, evecs = torch.linalg.eigh(H)
    res = hessian_eigenvalues(model, crit, batches, top_k=k, method=method, max_iter=300, seed=1)
    assert res.converged and res.method == method
    rel_close(res.values, evals.flip(0)[:k].numpy())
    values, vectors, count = res  # unpacks like a 3-tuple
    assert count == res.hvp_count == len(res.history) > 0
    for lam, vec in zip(values, vectors):
        v = flat(vec)
        assert v.norm().item() == pytest.approx(1.0, rel=1e-8)
        assert (H @ v - lam * v).norm().item() <= 1e-2 * abs(lam)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("k", [1, 3])
def test_top_eigenvalues_mlp_dense_reference(method, k):
    model, crit, batches = mlp_problem()
    H = dense_hessian(model, crit, batches)
    ev = torch.linalg.eigvalsh(H).numpy()
    assert ev[0] < 0  # an indefinite Hessian: "top" means largest algebraic by default
    snap = snapshot(model)
    res = hessian_eigenvalues(model, crit, batches, top_k=k, method=method, max_iter=400, seed=3)
    rel_close(res.values, ev[::-1][:k])
    assert res.converged
    assert_unchanged(model, snap)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_largest_magnitude_and_negative_dominant(method):
    # flip the sign of the loss: the spectrum is negated, the dominant eigenvalue is negative.
    model, crit, batches = mlp_problem()
    neg = lambda out, y: -crit(out, y)  # noqa: E731
    ev = torch.linalg.eigvalsh(dense_hessian(model, neg, batches)).numpy()
    la = hessian_eigenvalues(model, neg, batches, top_k=2, method=method, max_iter=400, tol=1e-6)
    rel_close(la.values, ev[::-1][:2])  # largest algebraic, found via the shifted iteration
    lm = hessian_eigenvalues(model, neg, batches, top_k=2, method=method, which="LM", max_iter=400, tol=1e-6)
    rel_close(lm.values, ev[np.argsort(-np.abs(ev))][:2])


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_repeated_eigenvalue(method):
    # two outputs: H = I_2 (x) (2/n X^T X), every eigenvalue twice
    model, crit, batches, H = linear_problem(outputs=2, bias=False)
    ev = torch.linalg.eigvalsh(H).numpy()[::-1]
    res = hessian_eigenvalues(model, crit, batches, top_k=3, method=method, max_iter=300, tol=1e-8)
    rel_close(res.values, ev[:3])
    assert res.values[0] == pytest.approx(res.values[1], rel=1e-6)


def test_eigen_seeded_and_lambda_max():
    model, crit, batches = mlp_problem()
    a = hessian_eigenvalues(model, crit, batches, top_k=2, seed=5)
    b = hessian_eigenvalues(model, crit, batches, top_k=2, seed=5)
    assert a.values == b.values and a.hvp_count == b.hvp_count
    assert all(torch.equal(x, y) for x, y in zip(a.vectors[0], b.vectors[0]))
    assert lambda_max(model, crit, batches) == pytest.approx(a.values[0], rel=1e-4)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    hessian_eigenvalues(model, crit, batches, seed=9)
    hessian_trace(model, crit, batches, max_iter=3)
    assert torch.equal(torch.rand(1), before)  # the global RNG is not touched


def test_lanczos_needs_fewer_hvps_than_power():
    model, crit, batches = mlp_problem()
    lz = hessian_eigenvalues(model, crit, batches, method="lanczos", tol=1e-6, max_iter=400)
    pw = hessian_eigenvalues(model, crit, batches, method="power", tol=1e-6, max_iter=400)
    assert lz.hvp_count < pw.hvp_count
    assert not hessian_eigenvalues(model, crit, batches, method="power", max_iter=3, tol=1e-12).converged


# ----------------------------------------------------------------------------- trace
def test_trace_within_three_standard_errors_and_honest():
    model, crit, batches = mlp_problem()
    H = dense_hessian(model, crit, batches)
    exact = torch.trace(H).item()
    # Var(z^T H z) for Rademacher z: 2 (||H||_F^2 - sum_i H_ii^2)
    sd_one = math.sqrt(2 * ((H ** 2).sum() - (torch.diagonal(H) ** 2).sum()).item())
    zs = []
    for seed in range(8):
        t = hessian_trace(model, crit, batches, max_iter=40, tol=0, seed=seed)
        assert t.n_samples == 40
        assert abs(t.trace - exact) <= 3.5 * t.std_error
        assert 0.5 * sd_one / math.sqrt(40) < t.std_error < 1.6 * sd_one / math.sqrt(40)
        zs.append((t.trace - exact) / t.std_error)
    rms = math.sqrt(np.mean(np.square(zs)))
    assert 0.25 < rms < 2.0, zs


def test_trace_early_stop_and_seeds():
    model, crit, batches = mlp_problem()
    t = hessian_trace(model, crit, batches, max_iter=500, tol=0.1, min_samples=10)
    assert 10 <= t.n_samples < 500 and t.std_error <= 0.1 * abs(t.trace)
    assert hessian_trace(model, crit, batches, max_iter=20, tol=0, seed=4) == \
        hessian_trace(model, crit, batches, max_iter=20, tol=0, seed=4)
    assert hessian_trace(model, crit, batches, max_iter=20, tol=0, seed=4) != \
        hessian_trace(model, crit, batches, max_iter=20, tol=0, seed=5)


def test_trace_exact_for_diagonal_hessian():
    # Rademacher z: z^T D z = trace(D) exactly, so the standard error is 0
    model = nn.Linear(4, 1, bias=False).to(DT)
    x = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=DT))
    y = torch.zeros(4, 1, dtype=DT)
    t = hessian_trace(model, nn.MSELoss(), [(x, y)], max_iter=15, tol=1e-6)
    assert t.trace == pytest.approx(2.0 / 4 * 30.0) and t.std_error == pytest.approx(0.0, abs=1e-12)
    assert t.n_samples == 10  # stops at min_samples


# ----------------------------------------------------------------------------- SLQ
def test_slq_density_integrates_to_one_and_mean_is_trace_over_n():
    model, crit, batches = mlp_problem()
    H = dense_hessian(model, crit, batches)
    ev = torch.linalg.eigvalsh(H).numpy()
    n = H.shape[0]
    sd = hessian_spectrum(model, crit, batches, iterations=100, n_vectors=4, seed=2)
    assert sd.n_params == n and sd.hvp_count <= 4 * n
    for th, w in zip(sd.nodes, sd.weights):
        assert w.sum() == pytest.approx(1.0, abs=1e-10)
        assert th.max() == pytest.approx(ev.max(), rel=1e-6)  # full Lanczos: extreme nodes exact
        assert th.min() == pytest.approx(ev.min(), rel=1e-6)
    grid, dens = sd.density()
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-3)
    assert np.trapezoid(grid * dens, grid) == pytest.approx(sd.mean, rel=1e-6, abs=1e-9)
    # the same Rademacher vectors as Hutchinson with that seed: mean * n is exactly its estimate
    t = hessian_trace(model, crit, batches, max_iter=4, tol=0, seed=2)
    assert sd.trace == pytest.approx(t.trace, rel=1e-9)
    # and it is unbiased: many vectors (few Lanczos steps suffice for the mean)
    many = hessian_spectrum(model, crit, batches, iterations=3, n_vectors=150, seed=7)
    tt = hessian_trace(model, crit, batches, max_iter=150, tol=0, seed=7)
    assert many.mean == pytest.approx(tt.trace / n, rel=1e-9)
    assert abs(many.mean * n - torch.trace(H).item()) <= 3.5 * tt.std_error
    # a user grid and width
    g2 = np.linspace(ev.min() - 1, ev.max() + 1, 4001)
    _, d2 = sd.density(g2, sigma=0.05)
    assert np.trapezoid(d2, g2) == pytest.approx(1.0, abs=1e-3)


# ----------------------------------------------------------------------------- Keskar
class Quadratic(nn.Module):
    """loss = 0.5 sum_i h_i w_i^2 + c via the criterion below; the model returns sqrt(h) * w."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return x * self.w


def test_keskar_matches_analytic_box_maximum():
    h = torch.tensor([4.0, 1.0, 0.25, 2.0, 0.5], dtype=DT)
    x = torch.tensor([0.8, -1.5, 0.3, -0.2, 2.0], dtype=DT)
    c = 0.7
    model = Quadratic(x)
    crit = lambda out, y: 0.5 * (out ** 2).sum() + c  # noqa: E731
    batches = [(h.sqrt()[None, :], torch.zeros(1))]
    for eps in (1e-3, 5e-2):
        f0 = 0.5 * float((h * x * x).sum()) + c
        b = eps * (x.abs() + 1)
        fmax = 0.5 * float((h * (x.abs() + b) ** 2).sum()) + c  # corner with the sign of x
        want = (fmax - f0) / (1 + f0) * 100
        got = keskar_sharpness(model, crit, batches, epsilon=eps)
        assert got == pytest.approx(want, rel=1e-6)
        assert torch.equal(model.w.detach(), x)
    # at the minimum (zero gradient) the random start still finds the maximum 0.5 sum h b^2
    model0 = Quadratic(torch.zeros(5, dtype=DT))
    b = 1e-2 * torch.ones(5, dtype=DT)
    want = 0.5 * float((h * b * b).sum()) / (1 + c) * 100
    assert keskar_sharpness(model0, crit, batches, epsilon=1e-2) == pytest.approx(want, rel=1e-6)


def test_keskar_positive_grows_with_epsilon_and_restores_state():
    model, crit, batches = mlp_problem()
    snap = snapshot(model)
    vals = [keskar_sharpness(model, crit, batches, epsilon=e) for e in (5e-4, 1e-3, 1e-2)]
    assert 0 < vals[0] < vals[1] < vals[2]
    sub = [keskar_sharpness(model, crit, batches, epsilon=e, subspace_dim=5, seed=1) for e in (1e-3, 1e-2)]
    assert 0 < sub[0] < sub[1]
    assert sub[0] == keskar_sharpness(model, crit, batches, epsilon=1e-3, subspace_dim=5, seed=1)
    assert sub[0] != keskar_sharpness(model, crit, batches, epsilon=1e-3, subspace_dim=5, seed=2)
    assert_unchanged(model, snap)
    with pytest.raises(ConfigError):
        keskar_sharpness(model, crit, batches, subspace_dim=1000)
    with pytest.raises(ConfigError):
        keskar_sharpness(model, crit, batches, epsilon=-1.0)


def test_keskar_at_an_exact_minimum():
    # least squares at its exact minimum: f(x + y) - f(x) = 0.5 y^T H y, maximised at a box corner.
    # The gradient vanishes, so the search starts at a random point (init="auto") and climbs to a
    # corner: a local maximum of a convex function over a box, not always the best of the 64.
    model, crit, batches, H = linear_problem()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    z = torch.cat([x, torch.ones(len(x), 1, dtype=DT)], 1)
    sol = torch.linalg.lstsq(z, y).solution.reshape(-1)
    with torch.no_grad():
        model.weight.copy_(sol[:5][None])
        model.bias.copy_(sol[5:])
    with torch.no_grad():
        f0 = float(crit(model(x), y))
    eps = 1e-3
    bnd = eps * (sol.abs() + 1)
    corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=DT)] * 6) * bnd
    values = sorted(0.5 * float(c @ H @ c) / (1 + f0) * 100 for c in corners)
    got = keskar_sharpness(model, crit, batches, epsilon=eps, max_iter=30)
    assert got <= values[-1] * (1 + 1e-6)
    assert min(abs(got - v) for v in values) <= 1e-3 * values[-1]  # it ends on a corner
    assert got >= values[len(values) // 2]  # and a good one
    assert keskar_sharpness(model, crit, batches, epsilon=eps, init="zero") == 0.0  # why "auto" exists


# ----------------------------------------------------------------------------- BN / modes
class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.fc2 = nn.Linear(4, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc2(self.drop(torch.tanh(self.bn(self.fc1(x)))))


def test_batchnorm_model_measured_in_eval_mode_and_restored():
    torch.manual_seed(0)
    model = BNNet().to(DT)
    _, crit, batches = mlp_problem()
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    model.train()
    model.fc2.eval()  # a mixed mode must come back as it was
    snap = snapshot(model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    snap = snapshot(model)

    ref = copy.deepcopy(model).eval()
    H_eval = dense_hessian(ref, crit, batches)
    ev = torch.linalg.eigvalsh(H_eval).numpy()
    v = [torch.randn_like(p) for p in model.parameters()]
    hv = flat(hessian_vector_product(model, crit, batches, v))
    torch.testing.assert_close(hv, H_eval @ flat(v))
    assert_unchanged(model, snap)

    res = hessian_eigenvalues(model, crit, batches, top_k=2, max_iter=200)
    rel_close(res.values, ev[::-1][:2])
    assert_unchanged(model, snap)
    t = hessian_trace(model, crit, batches, max_iter=5, tol=0)
    hessian_spectrum(model, crit, batches, iterations=5)
    assert_unchanged(model, snap)
    phi = keskar_sharpness(model, crit, batches, epsilon=1e-3)
    assert phi > 0 and math.isfinite(t.trace)
    assert_unchanged(model, snap)


def test_invalid_arguments():
    model, crit, batches = mlp_problem()
    for kwargs in ({"top_k": 0}, {"method": "arnoldi"}, {"which": "SA"}, {"max_iter": 0}, {"top_k": 27},
                   {"top_k": 3, "max_iter": 2}, {"seed": -1}, {"tol": float("nan")}):
        with pytest.raises(ConfigError):
            hessian_eigenvalues(model, crit, batches, **kwargs)
    with pytest.raises(ConfigError):
        hessian_trace(model, crit, batches, tol=-1)
    with pytest.raises(ConfigError):
        hessian_spectrum(model, crit, batches, n_vectors=0)
    with pytest.raises(ConfigError, match="re-iterable"):
        hessian_trace(model, crit, iter(batches))


# ------------------------------------------------------------------------------ Hessian mode and honesty
def _bn_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    with torch.no_grad():  # running statistics far from the batch's, so the two modes differ
        net[1].running_mean.fill_(0.7)
        net[1].running_var.fill_(2.5)
    return net


def _explicit_hessian(net, x, y, batch_statistics: bool):
    """The Hessian of the loss written out with torch.autograd.functional.hessian over the flat parameters,
    BatchNorm computed by hand: (h - mean) / sqrt(var + eps) with the batch's (biased) or the running moments."""
    shapes = [p.shape for p in net.parameters()]
    flat0 = torch.cat([p.detach().flatten() for p in net.parameters()])
    bn = net[1]

    def loss(flat):
        parts, start = [], 0
        for shape in shapes:
            parts.append(flat[start:start + shape.numel()].view(shape))
            start += shape.numel()
        w1, b1, gamma, beta, w2, b2 = parts
        h = x @ w1.T + b1
        mean, var = (h.mean(0), h.var(0, unbiased=False)) if batch_statistics else (bn.running_mean, bn.running_var)
        h = torch.tanh((h - mean) / torch.sqrt(var + bn.eps) * gamma + beta)
        return torch.nn.functional.cross_entropy(h @ w2.T + b2, y)

    return torch.autograd.functional.hessian(loss, flat0)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_hessian_mode_matches_the_hessian_written_out(mode):
    net = _bn_net()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (16,), generator=g)
    stats = {k: v.clone() for k, v in net.state_dict().items()}
    want = torch.linalg.eigvalsh(_explicit_hessian(net, x, y, batch_statistics=mode == "train"))
    got = hessian_eigenvalues(net, nn.CrossEntropyLoss(), [(x, y)], top_k=2, max_iter=40, tol=1e-10, mode=mode)
    assert got.values == pytest.approx(want.flip(0)[:2].tolist(), rel=1e-8)
    other = torch.linalg.eigvalsh(_explicit_hessian(net, x, y, batch_statistics=mode != "train"))
    assert abs(other[-1] - want[-1]) > 1e-3 * abs(want[-1])  # the modes measure different functions here
    assert all(torch.equal(v, stats[k]) for k, v in net.state_dict().items())  # running statistics untouched
    assert net.training


def test_a_tolerance_below_float32_resolution_is_refused_and_float64_meets_it():
    net = _bn_net().float()
    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(2)), torch.arange(8) % 2
    with pytest.raises(SharpnessInputError, match="below what float32 arithmetic resolves.*float64"):
        hessian_eigenvalues(net, nn.CrossEntropyLoss(), [(x, y)], tol=1e-7)
    res = hessian_eigenvalues(net.double(), nn.CrossEntropyLoss(), [(x, y)], tol=1e-7, max_iter=40)
    assert res.converged  # the float32 inputs are cast to the model's dtype


def test_the_trace_reports_whether_it_met_its_tolerance():
    net = _bn_net()
    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64), torch.arange(8) % 2
    loose = hessian_trace(net, nn.CrossEntropyLoss(), [(x, y)], max_iter=200, tol=0.5, min_samples=2)
    tight = hessian_trace(net, nn.CrossEntropyLoss(), [(x, y)], max_iter=3, tol=1e-6, min_samples=2)
    assert loose.converged and not tight.converged and tight.n_samples == 3
