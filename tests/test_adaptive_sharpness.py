"""Adaptive and plain, worst- and average-case m-sharpness (Andriushchenko et al., ICML 2023; issue #30 item 1).

Checked by hand against the authors' own code: tml-epfl/sharpness-vs-generalization, sharpness.py
(``eval_APGD_sharpness`` with ``rand_init=False``, ``version='default'``; ``eval_average_sharpness``), commit
6d73be94eb88dae6d3096647bb24b92244fae18f, with ``.cuda()`` removed and ``torch.randn_like``/``rand_like`` drawing
from the same CPU generator as basinlab. On a BatchNorm convnet (3 batches of 32, 20 iterations/samples, all eight
(kind, adaptive, norm) combinations, step-size halvings exercised: 1 to 18 per run) the two agreed bit for bit
(largest relative difference 0.0). The reference below is an independent, straightforward re-implementation of
their algorithm (dicts keyed by parameter, ``.backward()``, ``load_state_dict``), so that CI needs no copy of it.
"""
import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import basinlab
from basinlab.analysis.data import measurement_data
from basinlab.analysis.measure import COLUMNS, model_and_criterion
from basinlab.cli import main
from basinlab.metrics.hessian import SharpnessInputError
from basinlab.metrics.sharpness import DEFAULT_RHO, adaptive_sharpness, hessian_trace

COMBINATIONS = [(kind, adaptive, norm) for kind in ("worst", "average") for adaptive in (True, False)
                for norm in ("linf", "l2")]


# ----------------------------------------------------------------------------- the authors' algorithm, restated
def reference_checkpoints(n_iters):
    p, w = [0, 0.22], [0, math.ceil(n_iters * 0.22)]
    while w[-1] < n_iters and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * n_iters))
    return w[1:]


def reference_worst(model, batches, rho, n_iters, adaptive, norm):
    params = list(model.parameters())
    orig = {p: p.detach().clone() for p in params}
    scale = {p: orig[p].abs() if adaptive else 1 for p in params}
    state0 = copy.deepcopy(model.state_dict())
    total_worst = total_init = 0.0
    for x, y in batches:
        with torch.no_grad():
            init = F.cross_entropy(model(x), y).item()
        delta = {p: torch.zeros_like(p) for p in params}
        prev = {p: delta[p].clone() for p in params}
        worst, worst_state = init, copy.deepcopy(model.state_dict())
        step = prev_step = 2 * rho
        prev_worst, prev_cp, updates = init, 0, 0
        for i in range(n_iters):
            backup = {p: delta[p].clone() for p in params}
            for p in params:
                p.grad = None
            F.cross_entropy(model(x), y).backward()
            with torch.no_grad():
                if norm == "l2":
                    gnorm = sum(p.grad.norm() ** 2 for p in params) ** 0.5
                    for p in params:
                        delta[p] += step / (gnorm + 1e-12) * p.grad * scale[p]
                    wnorm = lambda d: sum(((d[p] / scale[p]) ** 2).sum() for p in params) ** 0.5  # noqa: E731
                    if wnorm(delta) > rho:
                        if not adaptive:
                            n = wnorm(delta)
                            delta = {p: delta[p] * (rho / n) for p in params}
                        else:  # bisection on the multiplier of the ellipsoid, their constants
                            lmbd, lo, hi, hi_lim = 0.1, 0.0, 10.0, 10.0
                            tmp, new = delta, wnorm(delta)
                            while (new - rho).abs() > 1e-5:
                                tmp = {p: delta[p] / (1 + 2 * lmbd * (1 / scale[p]) ** 2) for p in params}
                                new = wnorm(tmp)
                                if new > rho:
                                    lmbd, lo = (lmbd + hi) / 2, lmbd
                                else:
                                    lmbd, hi = (lo + lmbd) / 2, lmbd
                                if hi_lim - hi < 1e-2:
                                    hi_lim, hi = hi_lim * 2, hi * 2
                            delta = tmp
                else:
                    for p in params:
                        delta[p] += step * p.grad.sign() * scale[p]
                        bound = scale[p] * rho if adaptive else torch.ones_like(p) * rho
                        delta[p] = torch.max(torch.min(delta[p], bound), -1.0 * bound)
                for p in params:
                    delta[p] = 0.75 * delta[p] + 0.25 * prev[p]
                    p.data = orig[p] + delta[p]
                prev = backup
                current = F.cross_entropy(model(x), y).item()
            if current > worst:
                worst, worst_state, updates = current, copy.deepcopy(model.state_dict()), updates + 1
            if i in reference_checkpoints(n_iters):
                cond1 = updates < 0.75 * (i - prev_cp)
                cond2 = prev_step == step and prev_worst == worst
                prev_step, prev_worst, prev_cp, updates = step, worst, i, 0
                if cond1 or cond2:
                    step *= 0.5
                    model.load_state_dict(worst_state)
        model.load_state_dict(state0)
        total_worst, total_init = total_worst + worst, total_init + init
    for p in params:
        p.grad = None
    return (total_worst - total_init) / len(batches)


def reference_average(model, batches, rho, n_iters, adaptive, norm, seed):
    gen = torch.Generator().manual_seed(seed)
    orig = {n: p.detach().clone() for n, p in model.named_parameters()}
    noisy = copy.deepcopy(model)
    total, total_init = 0.0, 0.0
    with torch.no_grad():
        for x, y in batches:
            init = F.cross_entropy(model(x), y).item()
            batch = 0.0
            for _ in range(n_iters):
                for name, p in noisy.named_parameters():
                    w = orig[name]
                    xi = torch.randn(w.shape, generator=gen) if norm == "l2" else 2 * torch.rand(w.shape,
                                                                                                generator=gen) - 1
                    p.data = w + xi * (rho * (w.abs() if adaptive else 1))
                batch += F.cross_entropy(noisy(x), y).item()
            total, total_init = total + batch / n_iters, total_init + init
    return (total - total_init) / len(batches)


# ----------------------------------------------------------------------------- fixtures
def bn_convnet():
    """A trained-a-little convnet with BatchNorm (eval mode) and 3 batches of 16 random 6x6 images."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 8), nn.ReLU(),
                          nn.Linear(8, 3))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(48, 1, 6, 6, generator=gen), torch.randint(0, 3, (48,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]


RHO = {("worst", True, "linf"): 0.05, ("worst", False, "linf"): 0.02, ("worst", True, "l2"): 1.0,
       ("worst", False, "l2"): 1.0, ("average", True, "linf"): 0.3, ("average", False, "linf"): 0.1,
       ("average", True, "l2"): 0.1, ("average", False, "l2"): 0.03}


@pytest.mark.parametrize("kind,adaptive,norm", COMBINATIONS)
def test_equals_the_authors_algorithm(kind, adaptive, norm):
    model, batches = bn_convnet()
    rho = RHO[(kind, adaptive, norm)]
    res = adaptive_sharpness(copy.deepcopy(model), F.cross_entropy, batches, kind=kind, adaptive=adaptive,
                             norm=norm, rho=rho, iterations=10, samples=10, seed=5)
    if kind == "worst":
        want = reference_worst(copy.deepcopy(model), batches, rho, 10, adaptive, norm)
    else:
        want = reference_average(copy.deepcopy(model), batches, rho, 10, adaptive, norm, seed=5)
    assert want > 0
    assert res.value == pytest.approx(want, rel=1e-5, abs=1e-9)
    assert len(res.per_batch) == 3 and res.value == pytest.approx(sum(res.per_batch) / 3, rel=1e-6)
    assert res.gradients == (30 if kind == "worst" else 0) and res.forwards == 33


def test_the_worst_case_exceeds_the_average_case_and_grows_with_rho():
    model, batches = bn_convnet()
    small, large = (adaptive_sharpness(model, F.cross_entropy, batches, rho=r, iterations=10) for r in (0.01, 0.04))
    average = adaptive_sharpness(model, F.cross_entropy, batches, kind="average", rho=0.01, samples=10)
    assert 0 < small.value < large.value
    assert average.value < small.value  # a uniform point of the box is no worse than the ascent's
    assert adaptive_sharpness(model, F.cross_entropy, batches, kind="average", norm="l2").rho == \
        DEFAULT_RHO[("average", True, "l2")] == 0.1


# ----------------------------------------------------------------------------- invariances
def relu_net(scale):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():  # f(x) unchanged: ReLU(a z) = a ReLU(z) for a > 0
        net[0].weight.mul_(scale)
        net[0].bias.mul_(scale)
        net[2].weight.div_(scale)
    return net


@pytest.mark.parametrize("kind,norm", [("worst", "linf"), ("average", "linf"), ("average", "l2")])
def test_adaptive_sharpness_is_invariant_to_layer_rescaling_and_plain_is_not(kind, norm):
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(24, 4, generator=gen), torch.randint(0, 3, (24,), generator=gen)) for _ in range(2)]
    rho = 0.05 if kind == "worst" else 0.3

    def measure(scale, adaptive):
        return adaptive_sharpness(relu_net(scale), F.cross_entropy, batches, kind=kind, adaptive=adaptive,
                                  norm=norm, rho=rho, iterations=8, samples=8, seed=1).value

    assert measure(4.0, True) == pytest.approx(measure(1.0, True), rel=1e-4)
    plain_1, plain_4 = measure(1.0, False), measure(4.0, False)
    assert abs(plain_4 - plain_1) > 0.2 * max(plain_1, plain_4)


def test_average_plain_l2_is_half_rho_squared_times_the_hessian_trace_at_a_minimum():
    """E[L(w + delta)] - L(w) = rho^2 / 2 tr H + O(rho^3) for delta ~ N(0, rho^2 I) at a minimum (gradient 0)."""
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(120, 3, generator=gen, dtype=torch.float64), torch.randint(0, 3, (120,), generator=gen)
    model = nn.Linear(3, 3).double()  # random labels: the minimum is finite, with a positive-definite Hessian
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=0)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)
    assert max(float(p.grad.abs().max()) for p in model.parameters()) < 1e-8
    batches = [(x, y)]
    trace = hessian_trace(model, F.cross_entropy, batches, max_iter=1000, tol=1e-3, seed=0)  # 2.62 +- 0.02
    rho = 1e-3
    res = adaptive_sharpness(model, F.cross_entropy, batches, kind="average", adaptive=False, norm="l2", rho=rho,
                             samples=2000, seed=0)
    assert res.value == pytest.approx(rho ** 2 / 2 * trace.trace, rel=0.06)
    assert adaptive_sharpness(model, F.cross_entropy, batches, kind="average", adaptive=False, norm="l2",
                              rho=4 * rho, samples=2000, seed=0).value == pytest.approx(16 * res.value, rel=0.1)


# ----------------------------------------------------------------------------- the model left as it was
@pytest.mark.parametrize("kind,mode", [("worst", "eval"), ("average", "eval"), ("worst", "train")])
def test_weights_modes_buffers_and_grads_are_left_unchanged(kind, mode):
    model, batches = bn_convnet()
    model.train()
    model[1].eval()  # a mixed state must come back as it was
    gen = torch.Generator().manual_seed(9)
    for p in list(model.parameters())[:3]:
        p.grad = torch.randn(p.shape, generator=gen)
    before = copy.deepcopy(model)
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    res = adaptive_sharpness(model, F.cross_entropy, batches, kind=kind, norm="l2", adaptive=True, rho=0.5,
                             iterations=4, samples=3, mode=mode)
    assert res.value > 0
    for (name, p), q, g in zip(model.named_parameters(), before.parameters(), grads):
        assert torch.equal(p, q), name
        assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g)), name
    for b, c in zip(model.buffers(), before.buffers()):
        assert torch.equal(b, c)
    assert [m.training for m in model.modules()] == [m.training for m in before.modules()]


@pytest.mark.parametrize("kwargs,needle", [
    (dict(kind="best"), "kind must be one of worst, average"),
    (dict(norm="l1"), "norm must be one of linf, l2"),
    (dict(adaptive="yes"), "adaptive must be True or False"),
    (dict(rho=0.0), "rho must be a positive finite number"),
    (dict(rho=float("nan")), "rho must be a positive finite number"),
    (dict(iterations=0), "iterations must be an integer >= 1"),
    (dict(samples=1.5), "samples must be an integer >= 1"),
    (dict(mode="test"), "mode must be one of"),
    (dict(rho=1e30, norm="l2", adaptive=False), "the loss is not finite at a perturbed point"),
    (dict(rho=1e30, norm="l2", adaptive=False, kind="average"), "the loss is not finite at a perturbed point"),
    (dict(restarts=2), "restarts need a random start"),
    (dict(restarts=0, random_start=True), "restarts must be an integer >= 1"),
    (dict(kind="average", random_start=True), "apply to the worst case"),
    (dict(normalize_logits=1), "normalize_logits must be True or False"),
])
def test_bad_arguments_are_refused_in_one_line(kwargs, needle):
    model, batches = bn_convnet()
    with pytest.raises(SharpnessInputError, match=needle) as caught:
        adaptive_sharpness(model, F.cross_entropy, batches[:1], iterations=kwargs.pop("iterations", 2), **kwargs)
    assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- the authors' options
def test_normalised_logits_are_the_loss_of_centred_unit_norm_logits_and_undo_their_scale():
    model, batches = bn_convnet()

    def of_normalised(logits, y):  # the authors' LogitNormalizationWrapper, written out
        centred = logits - logits.mean(dim=1, keepdim=True)
        return F.cross_entropy(centred / torch.maximum(centred.norm(dim=1, keepdim=True),
                                                       torch.full_like(centred[:, :1], 1e-10)), y)
    for kind in ("worst", "average"):
        options = dict(kind=kind, iterations=5, samples=4, seed=3)
        ours = adaptive_sharpness(model, F.cross_entropy, batches, normalize_logits=True, **options)
        theirs = adaptive_sharpness(model, of_normalised, batches, **options)
        assert ours.value == theirs.value and ours.base_loss == theirs.base_loss
    # the last layer 5 times larger: the logits 5 times larger at every (adaptively) perturbed point as well
    plain, normalised = (adaptive_sharpness(model, F.cross_entropy, batches, kind="average", samples=4, seed=3,
                                            normalize_logits=flag).value for flag in (False, True))
    with torch.no_grad():
        model[-1].weight.mul_(5)
        model[-1].bias.mul_(5)
    plain5, normalised5 = (adaptive_sharpness(model, F.cross_entropy, batches, kind="average", samples=4, seed=3,
                                              normalize_logits=flag).value for flag in (False, True))
    assert abs(plain5 - plain) > 0.1 * abs(plain)
    assert normalised5 == pytest.approx(normalised, rel=1e-4)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_restarts_start_in_the_set_and_the_largest_loss_over_them_counts(norm, monkeypatch):
    from basinlab.metrics.adaptive_sharpness import _Perturbation
    model, batches = bn_convnet()
    rho = DEFAULT_RHO[("worst", True, norm)]
    run = _Perturbation(model, F.cross_entropy, list(model.parameters()), True, norm, rho)
    start = run._project(run.draw(torch.Generator().manual_seed(0)))
    if norm == "linf":   # inside the box |delta| <= rho |w|
        assert all(bool((d.abs() <= rho * w.abs() + 1e-12).all()) for d, w in zip(start, run.origin))
    else:                # on the ellipsoid ||delta / |w| || = rho (the draw itself is about rho sqrt(n) away)
        assert float(run._weighted_norm(start)) == pytest.approx(rho, rel=1e-4)
    one = batches[:1]
    from_zero = adaptive_sharpness(model, F.cross_entropy, one, norm=norm, iterations=5)
    single = adaptive_sharpness(model, F.cross_entropy, one, norm=norm, iterations=5, random_start=True, seed=4)
    three = adaptive_sharpness(model, F.cross_entropy, one, norm=norm, iterations=5, random_start=True,
                               restarts=3, seed=4)
    assert single.value != from_zero.value                      # another ascent
    assert three.value >= single.value                          # its first restart is `single`'s ascent
    assert (three.iterations, three.gradients) == (15, 3 * single.gradients)
    starts = []
    draw = _Perturbation.draw
    monkeypatch.setattr(_Perturbation, "draw", lambda self, gen: starts.append(draw(self, gen)) or starts[-1])
    again = adaptive_sharpness(model, F.cross_entropy, one, norm=norm, iterations=5, random_start=True,
                               restarts=3, seed=4)
    assert again.value == three.value                           # seeded
    assert len(starts) == 3 and not torch.equal(starts[0][0], starts[1][0]) and not torch.equal(starts[1][0],
                                                                                                 starts[2][0])


# ----------------------------------------------------------------------------- `basinlab sharpness --measure adaptive`
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, no_run_plots_in_module):
    run = basinlab.train(model_config="{'width': 4, 'hidden': 16}", train_limit=96, val_limit=32, batch_size=32,
                         epochs=1, quiet=True, results_dir=str(tmp_path_factory.mktemp("ck")), save="tiny")
    return run.path


def test_cli_writes_one_row_per_definition_and_rho(tiny_run, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(["sharpness", str(tiny_run), "--measure", "adaptive", "--kind", "worst", "average", "--scaling",
                 "adaptive", "plain", "--norm", "linf", "l2", "--ascent-iter", "3", "--samples", "2",
                 "--adaptive-examples", "40", "-b", "16", "--device", "cpu", "-o", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == COLUMNS
    rows = frame[frame["measure"] == "adaptive"]
    assert len(rows) == 8 and len(frame) == 10  # the base loss and top-1 first
    assert set(zip(rows["kind"], rows["scaling"], rows["norm"])) == {
        (k, "adaptive" if a else "plain", n) for k, a, n in COMBINATIONS}
    for _, row in rows.iterrows():
        assert row["rho"] == DEFAULT_RHO[(row["kind"], row["scaling"] == "adaptive", row["norm"])]
        assert row["iterations"] == (3 if row["kind"] == "worst" else 2)
        assert (row["examples"], row["batch_size"], row["hessian_mode"]) == (40, 16, "eval")
        assert row["std_error"] >= 0  # 3 batches: 16, 16 and 8
        assert row["value"] > 0 if row["kind"] == "worst" else math.isfinite(row["value"])
    assert (frame.loc[frame["measure"] == "loss", "examples"] == 96).all()
    assert "worst-case adaptive linf sharpness (rho 0.002, m = 16, 40 examples" in capsys.readouterr().out

    # the CSV's numbers are the function's on the first 40 measured examples, in batches of -b
    assert main(["sharpness", str(tiny_run), "--measure", "adaptive", "--rho", "0.01", "0.02", "--ascent-iter", "3",
                 "--adaptive-examples", "40", "-b", "16", "--device", "cpu", "-o", str(out)]) == 0
    again = pd.read_csv(out).query("measure == 'adaptive'")
    assert list(again["rho"]) == [0.01, 0.02] and list(again["quantity"]) == ["worst_adaptive_linf"] * 2
    model, cfg, criterion = model_and_criterion(tiny_run, torch.device("cpu"))
    data = list(measurement_data(cfg, "train", batch_size=16, device=torch.device("cpu")))
    first_40 = [data[0], data[1], (data[2][0][:8], data[2][1][:8])]
    direct = adaptive_sharpness(model, criterion, first_40, rho=0.02, iterations=3)
    assert again["value"].iloc[1] == pytest.approx(direct.value, rel=1e-6)
    assert again["value"].iloc[0] < again["value"].iloc[1]
    assert (again["restarts"] == 1).all() and not again["normalize_logits"].any()

    # the authors' options: restarts from random starts (worst case only) and normalised logits, as the function
    assert main(["sharpness", str(tiny_run), "--measure", "adaptive", "--kind", "worst", "average", "--ascent-iter",
                 "3", "--samples", "2", "--restarts", "2", "--normalize-logits", "--adaptive-examples", "40", "-b",
                 "16", "--device", "cpu", "-o", str(out)]) == 0
    options = pd.read_csv(out).query("measure == 'adaptive'").set_index("kind")
    assert options.loc["worst", "restarts"] == 2 and options.loc["worst", "iterations"] == 6
    assert options.loc["worst", "random_start"] and not options.loc["average", "random_start"]
    assert options.loc["average", "restarts"] == 1 and options["normalize_logits"].all()
    direct = adaptive_sharpness(model, criterion, first_40, iterations=3, restarts=2, random_start=True,
                                normalize_logits=True)
    assert options.loc["worst", "value"] == pytest.approx(direct.value, rel=1e-6)
    assert main(["sharpness", str(tiny_run), "--measure", "hessian", "--normalize-logits", "--device", "cpu",
                 "-o", str(out)]) == 2
    assert main(["sharpness", str(tiny_run), "--measure", "adaptive", "--random-start", "--ascent-iter", "3",
                 "--adaptive-examples", "40", "-b", "16", "--device", "cpu", "-o", str(out)]) == 0
    single = pd.read_csv(out).query("measure == 'adaptive'").iloc[0]
    assert single["random_start"] and single["restarts"] == 1
    assert single["value"] == pytest.approx(adaptive_sharpness(model, criterion, first_40, iterations=3,
                                                               random_start=True).value, rel=1e-6)


@pytest.mark.parametrize("args,needle", [
    (["--rho", "0"], "--rho: must be a finite number > 0"),
    (["--kind", "best"], "--kind: invalid choice"),
    (["--adaptive-examples", "0"], "--adaptive-examples: must be an integer"),
    (["--rho", "1e30", "--scaling", "plain", "--norm", "l2", "--kind", "average"], "use a smaller rho"),
    (["--restarts", "2", "--kind", "average"], "--restarts applies to --measure adaptive with --kind worst only"),
    (["--restarts", "0"], "--restarts: must be an integer"),
])
def test_cli_bad_values_exit_2_in_one_line(tiny_run, tmp_path, capsys, args, needle):
    out = tmp_path / "s.csv"
    assert main(["sharpness", str(tiny_run), "--measure", "adaptive", "--samples", "2", "--adaptive-examples", "16",
                 "--device", "cpu", "-o", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and not out.exists()
