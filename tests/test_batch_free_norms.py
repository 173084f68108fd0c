"""Batch-independent norms (FRN+TLU, EvoNorm-S0/B0, GN+WS) and Batch Renorm: each layer against its formula
written out here as its paper states it, the norm-plus-activation seam in the models, batch sizes 1 and 2, resume.

The layers were also matched against timm 1.0.31 (timm/layers/filter_response_norm.py FilterResponseNormTlu2d,
evo_norm.py EvoNorm2dS0 / EvoNorm2dS0a / EvoNorm2dB0, std_conv.py StdConv2d) on identical inputs and parameters,
forward and backward (input and parameter gradients), in a scratch script (timm is not a dependency): float32,
outputs identical and gradients within 6e-8 relative (StdConv2d within 5e-7: timm standardises through batch_norm);
float64, within 4e-7 (timm computes the statistics in float32), StdConv2d within 2e-15. FRN's learned eps (timm has
none) matched timm with its fixed eps set to 1e-6 + |eps_l|; B0 without activation matched timm's B0 with v = 0.
"""
import copy

import pandas as pd
import pytest
import torch
from torch import nn

import basinlab
from basinlab.cli import main
from basinlab.engine.trainer import TrainingInterrupted
from basinlab.metrics.hessian import _measurement_mode
from basinlab.models import create_model
from basinlab.nn.batch_free import EvoNormB0, EvoNormS0, FilterResponseNorm, StdConv2d
from basinlab.nn.batch_renorm import D_MAX_SCHEDULE, R_MAX_SCHEDULE, BatchRenorm, ramp
from basinlab.nn.norms import BATCH_ONE_MODES, NORMS_WITH_ACTIVATION, NormSpec, is_norm_module
from basinlab.records.results import TIME_COLUMNS
from tests.run_callbacks import InterruptAfter

pytestmark = pytest.mark.usefixtures("no_run_plots")

NEW_MODES = ("frn", "evonorm_s0", "evonorm_b0", "gn_ws", "batchrenorm")
BATCH_FREE = ("frn", "evonorm_s0", "gn_ws")


# ---- formulas written out ------------------------------------------------------------------------------------
def per_channel(t, x):
    return t.view(1, -1, *([1] * (x.dim() - 2)))


def spatial_mean(t):
    return t.mean(dim=(2, 3), keepdim=True) if t.dim() == 4 else t


def frn_formula(x, p, eps=1e-6):
    """Singh & Krishnan 2020, eq. 1-2 and the TLU: nu2 = mean_HW x^2; y = gamma x / sqrt(nu2 + eps + |eps_l|) + beta;
    z = max(y, tau)."""
    nu2 = spatial_mean(x * x)
    y = per_channel(p["weight"], x) * x / torch.sqrt(nu2 + eps + p["eps_learned"].abs()) + per_channel(p["bias"], x)
    return torch.max(y, per_channel(p["tau"], x)) if "tau" in p else y


def group_std_formula(x, groups, eps):
    n, c = x.shape[:2]
    rest = x.shape[2:]
    g = x.reshape(n, groups, c // groups, *rest)
    dims = tuple(range(2, g.dim()))
    var = ((g - g.mean(dim=dims, keepdim=True)) ** 2).mean(dim=dims, keepdim=True)
    return torch.sqrt(var + eps).expand_as(g).reshape(x.shape)


def s0_formula(x, p, groups, eps=1e-5):
    """Liu et al. 2020, EvoNorm-S0: x * sigmoid(v x) / group_std(x) * gamma + beta; without v: x / group_std(x)."""
    top = x * torch.sigmoid(per_channel(p["v"], x) * x) if "v" in p else x
    return top / group_std_formula(x, groups, eps) * per_channel(p["weight"], x) + per_channel(p["bias"], x)


def b0_formula(x, p, running_var, training, eps=1e-3, momentum=0.1):
    """EvoNorm-B0: x / max(sqrt(s_b^2 + eps), v x + sqrt(s_i^2 + eps)) * gamma + beta; returns (y, running_var)."""
    dims = (0, 2, 3) if x.dim() == 4 else (0,)
    if training:
        mean = x.mean(dim=dims, keepdim=True)
        var_b = ((x - mean) ** 2).mean(dim=dims)
        n = x.numel() / x.shape[1]
        running_var = (1 - momentum) * running_var + momentum * var_b.detach() * n / (n - 1)
    else:
        var_b = running_var
    var_i = spatial_mean((x - spatial_mean(x)) ** 2)
    right = torch.sqrt(var_i + eps) + (per_channel(p["v"], x) * x if "v" in p else 0)
    y = x / torch.max(per_channel(torch.sqrt(var_b + eps), x), right)
    return y * per_channel(p["weight"], x) + per_channel(p["bias"], x), running_var


def ws_conv_formula(x, p, conv):
    """Qiao et al. 2019 with timm's eps: W_hat = (W - mean) / sqrt(var + 1e-6) per output channel."""
    w = p["weight"]
    flat = w.reshape(w.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    var = ((flat - mean) ** 2).mean(dim=1, keepdim=True)
    w_hat = ((flat - mean) / torch.sqrt(var + 1e-6)).reshape(w.shape)
    return nn.functional.conv2d(x, w_hat, p.get("bias"), conv.stride, conv.padding)


def randomised(layer, generator):
    """The layer in float64 with random parameters (gamma and v near 1), and leaf copies of them."""
    layer = layer.double()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5 + (name in ("weight", "v")))
    return layer, {n: p.detach().clone().requires_grad_() for n, p in layer.named_parameters()}


def assert_same_forward_backward(layer, params, x, reference, generator):
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = layer(xa), reference(xb, params)
    weights = torch.randn(ya.shape, generator=generator, dtype=ya.dtype)
    (ya * weights).sum().backward()
    (yb * weights).sum().backward()
    torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-9, atol=1e-12)
    for name, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-9, atol=1e-12, msg=name)


SHAPES = [(3, 8, 5, 5), (4, 8)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("apply_act", [True, False])
def test_frn_is_the_papers_formula_with_its_learned_eps(shape, apply_act):
    g = torch.Generator().manual_seed(1)
    layer, params = randomised(FilterResponseNorm(8, apply_act=apply_act), g)
    with torch.no_grad():  # a negative eps_l: the bound is eps + |eps_l|
        layer.eps_learned.fill_(-0.05)
    params["eps_learned"] = layer.eps_learned.detach().clone().requires_grad_()
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.3
    assert_same_forward_backward(layer, params, x, frn_formula, g)
    assert layer.eps_learned.grad.abs().item() > 0  # eps is learned
    assert (layer.tau is not None) == apply_act
    fresh = FilterResponseNorm(8)
    assert (fresh.eps, fresh.eps_learned.item(), fresh.tau.abs().sum().item()) == (1e-6, pytest.approx(1e-4), 0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("groups, apply_act", [(1, True), (4, True), (2, False)])
def test_evonorm_s0_is_the_papers_formula(shape, groups, apply_act):
    g = torch.Generator().manual_seed(2)
    layer, params = randomised(EvoNormS0(8, groups, apply_act=apply_act), g)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.3
    assert_same_forward_backward(layer, params, x, lambda x, p: s0_formula(x, p, groups), g)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("apply_act", [True, False])
def test_evonorm_b0_is_the_papers_formula_in_training_and_at_evaluation(shape, apply_act):
    g = torch.Generator().manual_seed(3)
    layer, params = randomised(EvoNormB0(8, apply_act=apply_act), g)
    running = torch.ones(8, dtype=torch.float64)
    for _ in range(3):  # the running variance carries over steps
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.3

        def reference(x, p):
            nonlocal running
            y, running = b0_formula(x, p, running, training=True)
            return y
        assert_same_forward_backward(layer, params, x, reference, g)
        layer.zero_grad()
        params = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    torch.testing.assert_close(layer.running_var, running, rtol=1e-12, atol=0)
    layer.eval()
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    assert_same_forward_backward(layer, params, x, lambda x, p: b0_formula(x, p, running, training=False)[0], g)


@pytest.mark.parametrize("stride, bias", [(1, False), (2, True)])
def test_weight_standardised_conv_is_the_papers_formula(stride, bias):
    g = torch.Generator().manual_seed(4)
    conv, params = randomised(StdConv2d(8, 6, 3, stride=stride, padding=1, bias=bias), g)
    x = torch.randn(2, 8, 7, 7, generator=g, dtype=torch.float64)
    assert_same_forward_backward(conv, params, x, lambda x, p: ws_conv_formula(x, p, conv), g)
    assert list(conv.state_dict()) == list(nn.Conv2d(8, 6, 3, bias=bias).state_dict())


# ---- Batch Renorm: Ioffe 2017, Algorithm 1, with the warm-up of r_max and d_max --------------------------------
class PaperBatchRenorm:
    """Algorithm 1 as the paper writes it: moving mean mu and moving sigma, r and d clipped and not trained
    through, the bounds relaxed linearly between the schedule's steps; inference with mu and sigma."""

    def __init__(self, channels, r_schedule, d_schedule, eps=1e-5, momentum=0.1):
        self.mu, self.sigma = torch.zeros(channels, dtype=torch.float64), torch.ones(channels, dtype=torch.float64)
        self.r_schedule, self.d_schedule, self.eps, self.momentum, self.step = r_schedule, d_schedule, eps, momentum, 0
        self.r_history = []

    @staticmethod
    def bound(step, schedule):
        begin, end, start, final = schedule
        fraction = min(max((step - begin) / (end - begin), 0.0), 1.0)
        return start + (final - start) * fraction

    def train(self, x, gamma, beta):
        mu_b = x.mean(dim=(0, 2, 3))
        sigma_b = torch.sqrt(((x - mu_b.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3)) + self.eps)
        r_max, d_max = self.bound(self.step, self.r_schedule), self.bound(self.step, self.d_schedule)
        r = torch.clamp(sigma_b / self.sigma, 1 / r_max, r_max).detach()
        d = torch.clamp((mu_b - self.mu) / self.sigma, -d_max, d_max).detach()
        self.r_history.append((r.detach(), r_max))
        x_hat = (x - mu_b.view(1, -1, 1, 1)) / sigma_b.view(1, -1, 1, 1) * r.view(1, -1, 1, 1) + d.view(1, -1, 1, 1)
        self.mu = self.mu + self.momentum * (mu_b.detach() - self.mu)
        self.sigma = self.sigma + self.momentum * (sigma_b.detach() - self.sigma)
        self.step += 1
        return gamma.view(1, -1, 1, 1) * x_hat + beta.view(1, -1, 1, 1)

    def infer(self, x, gamma, beta):
        return gamma.view(1, -1, 1, 1) * (x - self.mu.view(1, -1, 1, 1)) / self.sigma.view(1, -1, 1, 1) \
            + beta.view(1, -1, 1, 1)


def test_batch_renorm_is_the_papers_algorithm_with_its_schedule():
    g = torch.Generator().manual_seed(5)
    short_r, short_d = (1, 4, 1.0, 1.6), (1, 3, 0.0, 0.5)  # the paper's shape, relaxed within a few steps
    layer, params = randomised(BatchRenorm(6, r_max_schedule=short_r, d_max_schedule=short_d), g)
    paper = PaperBatchRenorm(6, short_r, short_d)
    for step in range(6):
        # batches far from the moving statistics, so that the clipping of r and d acts
        x = torch.randn(4, 6, 3, 3, generator=g, dtype=torch.float64) * (1 + step) + step

        def reference(x, p):
            return paper.train(x, p["weight"], p["bias"])
        assert_same_forward_backward(layer, params, x, reference, g)
        layer.zero_grad()
        params = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
    assert any((r == r_max).any() and r_max > 1 for r, r_max in paper.r_history)  # the clip bound was hit
    assert int(layer.num_batches_tracked) == paper.step == 6
    torch.testing.assert_close(layer.running_mean, paper.mu, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(layer.running_std, paper.sigma, rtol=1e-12, atol=1e-14)
    layer.eval()
    x = torch.randn(2, 6, 3, 3, generator=g, dtype=torch.float64)
    assert_same_forward_backward(layer, params, x, lambda x, p: paper.infer(x, p["weight"], p["bias"]), g)


def test_batch_renorm_default_schedule_is_the_papers():
    # r_max 1 -> 3 and d_max 0 -> 5, relaxed from step 5k, reaching 3 at 40k and 5 at 25k
    assert [ramp(s, R_MAX_SCHEDULE) for s in (0, 5_000, 22_500, 40_000, 90_000)] == [1.0, 1.0, 2.0, 3.0, 3.0]
    assert [ramp(s, D_MAX_SCHEDULE) for s in (0, 5_000, 15_000, 25_000, 90_000)] == [0.0, 0.0, 2.5, 5.0, 5.0]
    layer = BatchRenorm(4)
    assert layer.limits() == (1.0, 0.0)
    layer.load_state_dict({**layer.state_dict(), "num_batches_tracked": torch.tensor(22_500)})
    assert layer.limits() == (2.0, 4.375)  # the step count travels in the state dict: resume continues it


# ---- the seam in the models -----------------------------------------------------------------------------------
def test_norms_with_their_own_activation_get_no_relu_after_them():
    mnist = create_model("mnist", 10, "mnist", width=4, hidden=16, norm="frn")
    assert not any(isinstance(m, nn.ReLU) for m in mnist.modules())
    assert sum(isinstance(m, FilterResponseNorm) and m.tau is not None for m in mnist.modules()) == 3
    resnet = create_model("resnet20", 10, "cifar10", norm="evonorm_s0")
    # the norm before each residual sum (and in the 2 projections) has no nonlinearity; ReLU only after the 9 sums
    assert sum(isinstance(m, EvoNormS0) and m.v is None for m in resnet.modules()) == 9 + 2
    assert sum(isinstance(m, nn.ReLU) for m in resnet.modules()) == 9
    for mode in ("batch", "gn_ws", "batchrenorm"):
        assert mode not in NORMS_WITH_ACTIVATION
        assert isinstance(NormSpec(mode).norm_act(8)[1], nn.ReLU)


def test_gn_ws_standardises_every_conv_and_keeps_group_norms_keys():
    ws = create_model("resnet20", 10, "cifar10", norm="gn_ws")
    convs = [m for m in ws.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 21 and all(isinstance(m, StdConv2d) for m in convs)
    assert all(isinstance(m, nn.GroupNorm) for m in ws.modules() if is_norm_module(m))
    assert list(ws.state_dict()) == list(create_model("resnet20", 10, "cifar10", norm="group").state_dict())
    assert not any(isinstance(m, StdConv2d) for m in create_model("wrn", 10, "cifar10", depth=10, widen_factor=1,
                                                                   norm="group").modules())


@pytest.mark.parametrize("mode", NEW_MODES)
def test_new_layers_are_norm_modules_with_unit_affine_and_their_sources_eps(mode):
    model = create_model("mnist", 10, "mnist", width=4, hidden=16, norm=mode)
    norms = [m for m in model.modules() if is_norm_module(m)]
    assert len(norms) == 3 and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    expected = {"frn": 1e-6, "evonorm_b0": 1e-3}.get(mode, 1e-5)
    assert all(m.eps == expected for m in norms)
    assert all(m.eps == 1e-4 for m in NormSpec(mode, eps=1e-4).norm_act(8)[:1])


# ---- training: batch sizes 1 and 2, refusals, resume ---------------------------------------------------------
def tiny(tmp_path, name, **options):
    settings = dict(results_dir=str(tmp_path), save=name, quiet=True, model="mnist", train_limit=64, val_limit=16,
                    batch_size=16, epochs=1, augment=False, channels_last="off", optimizer="SGD", lr=0.05,
                    momentum=0.9, model_config={"width": 4, "hidden": 16, "dropout": 0.0})
    settings.update(options)
    return settings


@pytest.mark.parametrize("mode", BATCH_FREE)
@pytest.mark.parametrize("batch", [1, 2])
def test_batch_independent_modes_train_at_batch_one_and_two(tmp_path, mode, batch):
    run = basinlab.train(**tiny(tmp_path, "small", norm_mode=mode, batch_size=batch, train_limit=4 * batch))
    assert torch.isfinite(torch.tensor(run.history["train_loss"].to_numpy())).all()
    assert mode in BATCH_ONE_MODES


@pytest.mark.parametrize("mode", ["batch", "evonorm_b0", "batchrenorm"])
def test_batch_statistics_modes_refuse_batch_one_in_one_line(tmp_path, capsys, mode):
    code = main(["train", "--results-dir", str(tmp_path), "--save", "one", "--quiet", "--model", "mnist",
                 "--model-config", "{'width': 4, 'hidden': 16}", "--train-limit", "4", "--val-limit", "4",
                 "--batch-size", "1", "--epochs", "1", "--norm-mode", mode])
    message = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in message and "batch of 1" in message and "--norm-mode group" in message
    assert not (tmp_path / "one").exists()
    assert mode not in BATCH_ONE_MODES


@pytest.mark.parametrize("mode", NEW_MODES)
def test_an_interrupted_run_resumes_mid_epoch_exactly(tmp_path, mode):
    options = tiny(tmp_path, "straight", norm_mode=mode, epochs=2)  # 4 steps an epoch
    straight = basinlab.train(**options)
    with pytest.raises(TrainingInterrupted):
        basinlab.train(**{**options, "save": "halves"}, callbacks=[InterruptAfter(6)])
    assert main(["train", "--resume", str(tmp_path / "halves"), "--quiet"]) == 0
    a = torch.load(straight.path / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "halves" / "last.pt", weights_only=True)["model"]
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # weights and buffers (steps, stats)
    if mode == "batchrenorm":
        assert all(int(a[k]) == 8 for k in a if k.endswith("num_batches_tracked"))
    ref = pd.read_csv(straight.path / "results.csv").drop(columns=TIME_COLUMNS)
    got = pd.read_csv(tmp_path / "halves" / "results.csv").drop(columns=TIME_COLUMNS)
    pd.testing.assert_frame_equal(ref, got)


# ------------------------------------------------------------------------------------------ the measurements
def test_the_hessians_train_mode_and_the_recalibration_know_the_batch_statistics_layers():
    from basinlab.analysis.landscape import recalibrate_bn
    from basinlab.errors import ConfigError
    from basinlab.metrics.hessian import _measurement_mode
    model = nn.Sequential(nn.Conv2d(2, 4, 3), BatchRenorm(4), nn.Conv2d(4, 4, 3), EvoNormB0(4),
                          nn.Conv2d(4, 4, 3), FilterResponseNorm(4), nn.Flatten())
    model.train()
    for mode, batch_layers_train in (("train", True), ("eval", False)):
        with _measurement_mode(model, mode):
            assert model[1].training is model[3].training is batch_layers_train
            assert not model[5].training and not model[0].training  # per-sample layers, convs: eval
    assert all(m.training for m in model.modules())  # restored
    with pytest.raises(ConfigError, match="BatchRenorm, EvoNormB0 layers keep theirs differently"):
        recalibrate_bn(model, [(torch.zeros(2, 2, 8, 8), torch.zeros(2))])


# ------------------------------------------------------------------------------------------ --sync-bn
def synced_layers(seed: int = 0) -> dict:
    """Batch Renorm past its warm-up (r and d clip) with moving averages away from the batch's, and EvoNorm-B0."""
    generator = torch.Generator().manual_seed(seed)
    renorm = randomised(BatchRenorm(3), generator)[0]
    renorm.num_batches_tracked.fill_(50_000)
    renorm.running_mean.copy_(torch.randn(3, generator=generator, dtype=torch.float64))
    renorm.running_std.copy_(0.5 + torch.rand(3, generator=generator, dtype=torch.float64))
    return {"renorm": renorm, "b0": randomised(EvoNormB0(3), generator)[0]}


def synced_inputs():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(8, 3, 4, 4, generator=generator, dtype=torch.float64) * 2 + 1,
            torch.randn(8, 3, 4, 4, generator=generator, dtype=torch.float64))


def forward_backward(layer, x, weights) -> dict:
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (y * weights).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, **{f"grad_{n}": p.grad for n, p in layer.named_parameters()},
            **{n: b.clone() for n, b in layer.named_buffers()}}


def synced_worker(rank: int, folder: str) -> None:
    """One of two gloo processes: its half of the batch through each layer with sync_group set."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    x, weights = synced_inputs()
    rows = slice(4 * rank, 4 * rank + 4)
    out = {}
    for name, layer in synced_layers().items():
        layer.sync_batch_statistics = True
        with _measurement_mode(layer, "train"):  # a measurement: this process's statistics, no collective
            out[f"{name}_measured"] = layer(x[rows]).detach()
        assert layer.sync_batch_statistics
        out[name] = forward_backward(layer, x[rows], weights[rows])
    # what --sync-bn does to a model: BatchNorm becomes SyncBatchNorm, basinlab's layers get the group
    from basinlab.api import make_config
    from basinlab.engine.distributed import DataParallel, ProcessPlace
    lines = []
    model = DataParallel(make_config(sync_bn=True), ProcessPlace(rank, rank, 2, 2)).convert_norms(
        nn.Sequential(BatchRenorm(3), nn.BatchNorm2d(3), EvoNormB0(3), BatchRenorm(3)), type("Log", (), {
            "info": staticmethod(lines.append)}))
    out["log"] = lines
    out["groups"] = [type(m).__name__ for m in model if getattr(m, "sync_batch_statistics", False)]
    copy.deepcopy(model)  # a synchronised model can be copied (MESA's average, SAF's trajectory)
    torch.save(out, f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


def test_sync_bn_takes_batch_renorm_and_evonorm_b0_statistics_over_every_process(tmp_path):
    """Two processes with half the batch each, synchronised, compute what one process computes on the whole batch:
    outputs, input gradients (of the summed loss), parameter gradients summed over the processes, moving averages."""
    torch.multiprocessing.spawn(synced_worker, args=(str(tmp_path),), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["log"] == ["--sync-bn: 1 BatchNorm, 2 BatchRenorm, 1 EvoNormB0 layers synchronised across 2 "
                               "processes"]
    assert ranks[0]["groups"] == ["BatchRenorm", "EvoNormB0", "BatchRenorm"]
    x, weights = synced_inputs()
    for name, layer in synced_layers().items():
        whole = forward_backward(layer, x, weights)
        halves = [ranks[0][name], ranks[1][name]]
        for key, value in whole.items():
            if key in ("y", "x_grad"):
                joined = torch.cat([h[key] for h in halves])
            elif key.startswith("grad_"):
                joined = halves[0][key] + halves[1][key]
            else:
                torch.testing.assert_close(halves[0][key], halves[1][key], rtol=0, atol=0)  # the same on both
                joined = halves[0][key]
            torch.testing.assert_close(joined, value, rtol=1e-10, atol=1e-12, msg=f"{name} {key}")
        unsynced = forward_backward(synced_layers()[name], x[:4], weights[:4])["y"]
        assert not torch.allclose(unsynced, halves[0]["y"], atol=1e-3)  # a half alone normalises differently
        torch.testing.assert_close(ranks[0][f"{name}_measured"][:4], unsynced)


def test_sync_bn_layers_without_a_running_group_take_their_own_statistics():
    x, weights = synced_inputs()
    for name, layer in synced_layers().items():
        alone = forward_backward(layer, x, weights)
        flagged = synced_layers()[name]
        flagged.sync_batch_statistics = True   # as SyncBatchNorm: no group of more than one process, no collective
        torch.testing.assert_close(forward_backward(flagged, x, weights)["y"], alone["y"], rtol=0, atol=0)
