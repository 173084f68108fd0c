"""Per-block Hessian spectra and the most negative eigenvalue, against the Hessian written out on tiny models."""
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from basinlab.errors import ConfigError
from basinlab.metrics.hessian import SharpnessInputError
from basinlab.metrics.hessian_blocks import ROOT_BLOCK, block_spectra, min_eigenvalue, parameter_blocks

DT = torch.float64


def mlp_problem():
    """A tanh MLP away from a minimum (indefinite Hessian), cross-entropy, two unequal batches."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)  # 31 parameters
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 3, generator=g, dtype=DT), torch.randint(0, 3, (20,), generator=g)
    return model, nn.CrossEntropyLoss(), [(x[:8], y[:8]), (x[8:], y[8:])]


def explicit_hessian(model, criterion, batches):
    """The Hessian of the sample-weighted mean loss over the flat parameters (model.parameters() order)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = flat[i:i + math.prod(shape)].view(shape)
            i += math.prod(shape)
        total = sum(criterion(functional_call(model, params, (x,)), y) * len(x) for x, y in batches)
        return total / sum(len(x) for x, _ in batches)

    return torch.autograd.functional.hessian(loss, flat0)


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [(m, m.training) for m in model.modules()],
            [None if p.grad is None else p.grad.clone() for p in model.parameters()])


def assert_unchanged(model, snap):
    state, modes, grads = snap
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(m.training == mode for m, mode in modes)
    assert all((p.grad is None and g is None) or torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


class Scaled(nn.Module):
    """A nested conv net with a parameter of the top-level module itself and a frozen layer."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.frozen(self.head(self.features(x))) * self.scale


# ----------------------------------------------------------------------------- blocks
def test_parameter_blocks_by_module_and_by_path_depth():
    model = Scaled()
    by_module = parameter_blocks(model)
    assert [name for name, _ in by_module] == [ROOT_BLOCK, "features.0", "features.1", "head.1"]
    assert [len(ps) for _, ps in by_module] == [1, 2, 2, 2]
    assert [name for name, _ in parameter_blocks(model, 1)] == [ROOT_BLOCK, "features", "head"]
    assert [len(ps) for _, ps in parameter_blocks(model, 1)] == [1, 4, 2]
    assert parameter_blocks(model, 5) == by_module  # deeper than the tree: one block per module
    for bad in (0, -1, "layer", 1.5, True):
        with pytest.raises(SharpnessInputError, match="blocks must be 'module'.*or a module-path depth"):
            parameter_blocks(model, bad)


def test_block_spectra_match_the_sliced_explicit_hessian_and_traces_add_up():
    model, crit, batches = mlp_problem()
    H = explicit_hessian(model, crit, batches)
    blocks = block_spectra(model, crit, batches, tol=1e-10, trace_iter=200, trace_tol=0)
    assert [b.name for b in blocks] == ["0", "2"] and [b.n_params for b in blocks] == [16, 15]
    start, variance, estimated = 0, 0.0, 0.0
    for b in blocks:
        H_bb = H[start:start + b.n_params, start:start + b.n_params]
        start += b.n_params
        assert b.converged and b.lambda_max == pytest.approx(torch.linalg.eigvalsh(H_bb)[-1].item(), rel=1e-8)
        assert b.lambda_max <= torch.linalg.eigvalsh(H)[-1].item() + 1e-12  # interlacing
        assert abs(b.trace - H_bb.trace().item()) <= 4 * b.trace_std_error and b.trace_samples == 200
        assert b.trace_converged and b.hvp_count > 200
        variance += b.trace_std_error ** 2
        estimated += b.trace
    assert abs(estimated - H.trace().item()) <= 4 * math.sqrt(variance)  # the block traces sum to the full trace
    # a diagonal-block structure seen whole: the exact block traces are the full trace
    sliced = sum(H[i:j, i:j].trace() for i, j in ((0, 16), (16, 31)))
    assert sliced.item() == pytest.approx(H.trace().item(), rel=1e-12)


# ----------------------------------------------------------------------------- most negative eigenvalue
@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_min_eigenvalue_matches_eigvalsh_of_the_explicit_hessian(method):
    model, crit, batches = mlp_problem()
    H = explicit_hessian(model, crit, batches)
    want = torch.linalg.eigvalsh(H)[0].item()
    assert want < -0.1  # indefinite: a saddle-like point
    res = min_eigenvalue(model, crit, batches, tol=1e-9, method=method, max_iter=1000, return_vectors=True)
    assert res.converged and res.values[0] == pytest.approx(want, rel=1e-6)
    v = torch.cat([t.reshape(-1) for t in res.vectors[0]])
    torch.testing.assert_close(H @ v, want * v, atol=1e-5, rtol=0)
    assert len(res.history) == res.hvp_count and res.history[-1] == pytest.approx(want, rel=1e-6)


def test_min_eigenvalue_of_a_positive_definite_hessian_and_seeds():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 4, generator=g, dtype=DT) * torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=DT)
    y = torch.randn(30, 1, generator=g, dtype=DT)
    model = nn.Linear(4, 1, bias=False).to(DT)
    want = torch.linalg.eigvalsh(2.0 / 30 * x.T @ x)[0].item()  # least squares: H = 2/n X^T X
    first = min_eigenvalue(model, nn.MSELoss(), [(x, y)], tol=1e-10, seed=3)
    assert first.values[0] == pytest.approx(want, rel=1e-8) and first.values[0] > 0
    assert min_eigenvalue(model, nn.MSELoss(), [(x, y)], tol=1e-10, seed=3).values == first.values


def test_model_state_restored_in_train_mode():
    torch.manual_seed(0)
    model = Scaled().to(DT)
    with torch.no_grad():
        model.features[1].running_mean.fill_(0.3)
    model.train()
    model.head.eval()  # a mixed mode comes back as it was
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    snap = snapshot(model)
    g = torch.Generator().manual_seed(4)
    batches = [(torch.randn(6, 1, 4, 4, generator=g, dtype=DT), torch.randint(0, 3, (6,), generator=g))]
    blocks = block_spectra(model, nn.CrossEntropyLoss(), batches, max_iter=5, trace_iter=3, trace_tol=0,
                           mode="train")
    assert len(blocks) == 4 and all(math.isfinite(b.lambda_max) and math.isfinite(b.trace) for b in blocks)
    assert_unchanged(model, snap)
    assert math.isfinite(min_eigenvalue(model, nn.CrossEntropyLoss(), batches, max_iter=5, mode="train").values[0])
    assert_unchanged(model, snap)


def test_bad_arguments_are_one_line_config_errors():
    model, crit, batches = mlp_problem()
    for kwargs, message in (({"method": "arnoldi"}, "method must be"), ({"max_iter": 0}, "max_iter"),
                            ({"tol": 1e-20}, "below what float64"), ({"seed": -1}, "seed"),
                            ({"mode": "test"}, "mode must be one of")):
        with pytest.raises(ConfigError, match=message) as info:
            min_eigenvalue(model, crit, batches, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(SharpnessInputError, match="torch.nn.Module"):
        block_spectra("model", crit, batches)
    with pytest.raises(SharpnessInputError, match="criterion must be callable"):
        block_spectra(model, None, batches)
    with pytest.raises(SharpnessInputError, match="re-iterable"):
        block_spectra(model, crit, iter(batches))
