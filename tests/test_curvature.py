"""Gauss-Newton and Fisher operators against J^T H J written out on tiny models (and against curvlinops)."""
import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from basinlab.errors import ConfigError
from basinlab.metrics.curvature import (
    _CurvatureOperator,
    curvature_eigenvalues,
    curvature_trace,
    curvature_vector_product,
    empirical_fisher_trace,
)
from basinlab.metrics.hessian import SharpnessInputError
from tests.test_hessian_blocks import assert_unchanged, snapshot

DT = torch.float64
N_PARAMS = 31


def problem(loss="ce"):
    """A tanh MLP (31 parameters), 20 examples in two unequal batches, cross-entropy or MSE targets."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 3, generator=g, dtype=DT)
    y = torch.randint(0, 3, (20,), generator=g) if loss == "ce" else torch.randn(20, 3, generator=g, dtype=DT)
    criterion = nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss()
    return model, criterion, [(x[:8], y[:8]), (x[8:], y[8:])]


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def as_params(model, w):
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = w[i:i + p.numel()].view(p.shape)
        i += p.numel()
    return out


def jacobian(model, x):
    """``J`` of the outputs (examples x outputs, flattened) w.r.t. the flat parameters, in the model's mode."""
    w0 = flat([p.detach() for p in model.parameters()])
    return torch.autograd.functional.jacobian(lambda w: functional_call(model, as_params(model, w), (x,)),
                                              w0).reshape(-1, w0.numel())


def output_hessian(criterion, out, y):
    """The Hessian of the batch's mean loss w.r.t. its (flattened) outputs."""
    return torch.autograd.functional.hessian(lambda o: criterion(o.view(out.shape), y), out.reshape(-1))


def explicit_ggn(model, criterion, batches):
    """``sum_b (n_b / N) J_b^T H_b J_b`` with ``H_b`` the Hessian of the batch's mean loss w.r.t. its outputs."""
    total = sum(len(x) for x, _ in batches)
    G = torch.zeros(N_PARAMS, N_PARAMS, dtype=DT)
    for x, y in batches:
        out = model(x).detach()
        H_out = output_hessian(criterion, out, y)
        J = jacobian(model, x)
        G += len(x) / total * J.T @ H_out @ J
    return G


def example_gradients(model, criterion, batches, targets=None):
    """Rows: the gradient of the criterion on each example alone (a batch of one)."""
    rows = []
    for b, (x, y) in enumerate(batches):
        for i in range(len(x)):
            target = y[i:i + 1] if targets is None else targets[b][i:i + 1]
            rows.append(flat(torch.autograd.grad(criterion(model(x[i:i + 1]), target), list(model.parameters()))))
    return torch.stack(rows)


def operator_matrix(model, criterion, batches, kind, **kwargs):
    """The curvature as a dense matrix, one product per column."""
    cols = [flat(curvature_vector_product(model, criterion, batches, list(as_params(model, e).values()), kind,
                                          **kwargs)) for e in torch.eye(N_PARAMS, dtype=DT)]
    return torch.stack(cols, 1)


# ----------------------------------------------------------------------------- Gauss-Newton
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_ggn_products_equal_the_explicit_jt_h_j(loss):
    model, crit, batches = problem(loss)
    G = explicit_ggn(model, crit, batches)
    x, y = batches[0]
    out = model(x).detach()
    H_out = output_hessian(crit, out, y)
    if loss == "ce":  # the output Hessian the docstring states: (diag(p) - p p^T) / n per example
        p = torch.softmax(out, 1)
        want = torch.block_diag(*[torch.diag(q) - torch.outer(q, q) for q in p]) / len(x)
    else:  # MSE averaged over the C = 3 outputs too: 2 / (n C) I
        want = 2.0 / (len(x) * 3) * torch.eye(out.numel(), dtype=DT)
    torch.testing.assert_close(H_out, want)
    v = torch.randn(N_PARAMS, generator=torch.Generator().manual_seed(5), dtype=DT)
    for kind in ("ggn", "fisher"):  # the exact-expectation Fisher is the GGN for these likelihoods
        for cache_graph in (False, True):
            got = curvature_vector_product(model, crit, batches, list(as_params(model, v).values()), kind,
                                           cache_graph=cache_graph)
            torch.testing.assert_close(flat(got), G @ v, rtol=1e-10, atol=1e-13)


def test_ggn_top_eigenvalues_and_trace():
    model, crit, batches = problem("ce")
    G = explicit_ggn(model, crit, batches)
    want = torch.linalg.eigvalsh(G).flip(0)
    res = curvature_eigenvalues(model, crit, batches, top_k=2, tol=1e-10, return_vectors=True)
    assert res.converged and res.values == pytest.approx(want[:2].tolist(), rel=1e-8)
    v = flat(res.vectors[0])
    torch.testing.assert_close(G @ v, want[0] * v, atol=1e-7, rtol=0)
    tr = curvature_trace(model, crit, batches, max_iter=200, tol=0)
    assert tr.n_samples == 200 and abs(tr.trace - G.trace().item()) <= 4 * tr.std_error
    again = curvature_trace(model, crit, batches, max_iter=200, tol=0)
    assert again == tr  # seeded


def test_ggn_in_train_mode_uses_batch_statistics_and_restores_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    with torch.no_grad():
        model[1].running_mean.fill_(0.7)
        model[1].running_var.fill_(2.5)
    _, crit, batches = problem("ce")
    model.train()
    model[3].eval()  # a mixed mode comes back as it was
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    snap = snapshot(model)
    v = torch.randn(39, generator=torch.Generator().manual_seed(6), dtype=DT)
    vec = list(as_params(model, v).values())
    results = {}
    for mode in ("train", "eval"):
        reference = copy.deepcopy(model).train() if mode == "train" else copy.deepcopy(model).eval()
        total, want = 20, torch.zeros(39, dtype=DT)
        for x, y in batches:  # J couples a batch's examples through the batch statistics in train mode
            out = reference(x).detach()
            H_out = output_hessian(crit, out, y)
            J = jacobian(reference, x)
            want += len(x) / total * J.T @ (H_out @ (J @ v))
        results[mode] = flat(curvature_vector_product(model, crit, batches, vec, mode=mode))
        torch.testing.assert_close(results[mode], want, rtol=1e-9, atol=1e-12)
        assert_unchanged(model, snap)
    assert (results["train"] - results["eval"]).abs().max() > 1e-3
    curvature_eigenvalues(model, crit, batches, "fisher-mc", max_iter=3, tol=0, mode="train")
    curvature_trace(model, crit, batches, "empirical-fisher", max_iter=3, tol=0)
    assert_unchanged(model, snap)


# ----------------------------------------------------------------------------- Fisher
def test_monte_carlo_fisher_is_the_mean_outer_product_at_its_sampled_labels():
    model, crit, batches = problem("ce")
    op = _CurvatureOperator(model, crit, batches, list(model.parameters()), "fisher-mc", None,
                            torch.Generator().manual_seed(7), mc_samples=4)
    rows = torch.cat([example_gradients(model, crit, batches, [t[s] for t in op.sampled_targets])
                      for s in range(4)])
    want = rows.T @ rows / rows.shape[0]
    got = torch.stack([op.matvec(e) for e in torch.eye(N_PARAMS, dtype=DT)], 1)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-13)
    public = operator_matrix(model, crit, batches, "fisher-mc", mc_samples=4, seed=7)  # same seed, same labels
    torch.testing.assert_close(public, want, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_monte_carlo_fisher_converges_to_the_ggn(loss):
    model, crit, batches = problem(loss)
    G = explicit_ggn(model, crit, batches)
    F = operator_matrix(model, crit, batches, "fisher-mc", mc_samples=400, seed=1, cache_graph=True)
    assert (F - G).norm() <= 0.05 * G.norm()
    assert (operator_matrix(model, crit, batches, "fisher-mc", mc_samples=1, seed=1) - G).norm() > 0.1 * G.norm()
    top = curvature_eigenvalues(model, crit, batches, "fisher-mc", mc_samples=400, seed=1, tol=1e-8).values[0]
    assert top == pytest.approx(torch.linalg.eigvalsh(F)[-1].item(), rel=1e-6)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_empirical_fisher_and_its_exact_trace(loss):
    model, crit, batches = problem(loss)
    rows = example_gradients(model, crit, batches)
    want = rows.T @ rows / 20
    torch.testing.assert_close(operator_matrix(model, crit, batches, "empirical-fisher"), want,
                               rtol=1e-9, atol=1e-13)
    exact = (rows ** 2).sum().item() / 20  # mean squared per-example gradient norm
    assert empirical_fisher_trace(model, crit, batches) == pytest.approx(exact, rel=1e-12)
    tr = curvature_trace(model, crit, batches, "empirical-fisher")
    assert tr.trace == pytest.approx(exact, rel=1e-12) and tr.std_error == 0 and tr.n_samples == 20
    top = curvature_eigenvalues(model, crit, batches, "empirical-fisher", tol=1e-10).values[0]
    assert top == pytest.approx(torch.linalg.eigvalsh(want)[-1].item(), rel=1e-8)


# ----------------------------------------------------------------------------- curvlinops reference
def test_ggn_and_empirical_fisher_agree_with_curvlinops():
    curvlinops = pytest.importorskip("curvlinops")
    eye = torch.eye(N_PARAMS, dtype=DT)
    for loss in ("ce", "mse"):
        model, crit, batches = problem(loss)
        params = list(model.parameters())
        reference = curvlinops.GGNLinearOperator(model, crit, params, batches) @ eye
        ours = operator_matrix(model, crit, batches, "ggn")
        torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-13)
        tr = curvature_trace(model, crit, batches, max_iter=100, tol=0)
        assert abs(tr.trace - reference.trace().item()) <= 4 * tr.std_error
    model, crit, batches = problem("ce")  # for MSE curvlinops counts each of the C outputs as a datum: C x ours
    reference = curvlinops.EFLinearOperator(model, crit, list(model.parameters()), batches) @ eye
    torch.testing.assert_close(operator_matrix(model, crit, batches, "empirical-fisher"), reference,
                               rtol=1e-9, atol=1e-13)
    assert empirical_fisher_trace(model, crit, batches) == pytest.approx(reference.trace().item(), rel=1e-10)


# ----------------------------------------------------------------------------- bad input
def test_bad_arguments_are_one_line_config_errors():
    model, crit, batches = problem("ce")
    cases = [
        (lambda: curvature_trace(model, crit, batches, "hessian"), "curvature kind must be one of ggn, fisher"),
        (lambda: curvature_trace(model, nn.L1Loss(), batches, "fisher-mc"), "needs a likelihood.*L1Loss"),
        (lambda: curvature_trace(model, nn.CrossEntropyLoss(label_smoothing=0.1), batches, "fisher"),
         "needs a likelihood"),
        (lambda: curvature_trace(model, crit, batches, "fisher-mc", mc_samples=0), "mc_samples"),
        (lambda: curvature_eigenvalues(model, crit, batches, top_k=N_PARAMS + 1), "exceeds the number"),
        (lambda: curvature_eigenvalues(model, crit, batches, tol=1e-20), "below what float64"),
        (lambda: curvature_eigenvalues(model, crit, batches, seed=-1), "seed"),
        (lambda: curvature_vector_product(model, crit, batches, [torch.ones(2)]), "vec must be"),
        (lambda: curvature_trace(model, crit, iter(batches)), "re-iterable"),
        (lambda: curvature_trace(model, crit, batches, mode="test"), "mode must be one of"),
    ]
    images = [(torch.randn(4, 3, 2, 2, dtype=DT), torch.randint(0, 3, (4, 2, 2)))]
    conv = nn.Conv2d(3, 3, 1).to(DT)
    cases.append((lambda: curvature_trace(conv, crit, images, "fisher-mc"), r"\(batch, classes\) logits"))
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).to(DT)
    cases.append((lambda: empirical_fisher_trace(bn, crit, batches, mode="train"), "per-example gradients"))
    cases.append((lambda: empirical_fisher_trace(model, crit, batches, params=[nn.Parameter(torch.ones(1))]),
                  "parameters of the model"))
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, x):
            return self.body(x), self.body(x)

    cases.append((lambda: curvature_trace(TwoHeads(), lambda out, y: crit(out[0], y), batches), "one floating"))
    for call, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            call()
        assert isinstance(info.value, SharpnessInputError) and "\n" not in str(info.value)
    assert math.isfinite(curvature_trace(conv, crit, images, max_iter=2, tol=0).trace)  # the GGN takes any shape
