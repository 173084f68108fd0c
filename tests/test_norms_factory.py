"""NormSpec: parsing, validation, every mode's layer and its semantics, init_norm_."""

import dataclasses

import pytest
import torch
from torch import nn

from basinlab.errors import ConfigError
from basinlab.nn import NORM_MODES, NormSpec, group_count, init_norm_, is_norm_module


def online_module():
    return pytest.importorskip("basinlab.nn.online_norm")


# ---- parsing and validation ---------------------------------------------------------------

def test_parse_forms():
    assert NormSpec.parse(None) == NormSpec()
    assert NormSpec.parse(" Group ").mode == "group"
    spec = NormSpec(mode="layer", eps=1e-3)
    assert NormSpec.parse(spec) is spec
    parsed = NormSpec.parse({"mode": "online", "afwd": 0.99, "abkw": 0.9, "ecm": "ac"})
    assert (parsed.mode, parsed.afwd, parsed.abkw, parsed.ecm) == ("online", 0.99, 0.9, "ac")
    # the reference command line's spellings
    parsed = NormSpec.parse({"norm_mode": "group", "gn_num_groups": 4})
    assert (parsed.mode, parsed.gn_groups) == ("group", 4)


def test_parse_dataset_defaults_follow_the_reference():
    c10 = NormSpec.parse("online", dataset="cifar10")
    assert (c10.afwd, c10.abkw, c10.gn_groups) == (1023 / 1024, 127 / 128, 8)
    c100 = NormSpec.parse("online", dataset="cifar100")
    assert (c100.afwd, c100.abkw) == (511 / 512, 15 / 16)
    imnet = NormSpec.parse("group", dataset="imagenet")
    assert (imnet.afwd, imnet.abkw, imnet.gn_groups) == (0.999, 0.99, 32)
    # what the user gives wins over the dataset default
    assert NormSpec.parse({"mode": "online", "afwd": 0.5}, dataset="cifar10").afwd == 0.5


@pytest.mark.parametrize("value, words", [
    ("batchnorm", ["unknown norm mode 'batchnorm'", "batch, group, layer, instance, online, none"]),
    ({"mode": "group", "groups": 4}, ["unknown norm key 'groups'", "gn_groups"]),
    ({"mode": "online", "ecm": "xx"}, ["unknown norm ecm 'xx'", "ls, ac, none"]),
    ({"mode": "online", "afwd": 1.0}, ["afwd", "(0, 1)"]),
    ({"mode": "group", "gn_groups": 0}, ["gn_groups", ">= 1"]),
    ({"mode": "group", "gn_groups": 2.5}, ["gn_groups"]),
    ({"eps": -1}, ["eps"]),
    (3, ["norm must be a mode name"]),
])
def test_parse_errors_name_the_problem(value, words):
    with pytest.raises(ConfigError) as info:
        NormSpec.parse(value)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


# ---- layers each mode builds --------------------------------------------------------------

def test_layer_types_2d():
    bn = NormSpec("batch").make(16)
    assert isinstance(bn, nn.BatchNorm2d) and bn.eps == 1e-5 and bn.momentum == 0.1
    gn = NormSpec("group", gn_groups=8).make(32)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 8
    ln = NormSpec("layer").make(16)
    assert isinstance(ln, nn.GroupNorm) and ln.num_groups == 1 and ln.weight.shape == (16,)
    inorm = NormSpec("instance").make(16)
    assert isinstance(inorm, nn.InstanceNorm2d) and inorm.affine and not inorm.track_running_stats
    assert isinstance(NormSpec("none").make(16), nn.Identity)
    assert set(NORM_MODES) == {"batch", "group", "layer", "instance", "online", "none", "frn", "evonorm_s0",
                               "evonorm_b0", "gn_ws", "batchrenorm"}


def test_layer_types_1d():
    assert isinstance(NormSpec("batch").make(8, dim=1), nn.BatchNorm1d)
    assert isinstance(NormSpec("group").make(8, dim=1), nn.GroupNorm)
    layer = NormSpec("layer").make(8, dim=1)
    assert isinstance(layer, nn.LayerNorm) and layer.normalized_shape == (8,)
    assert isinstance(NormSpec("none").make(8, dim=1), nn.Identity)
    with pytest.raises(ConfigError, match="not defined for 1-D features"):
        NormSpec("instance").make(8, dim=1)


def test_online_layers():
    module = online_module()
    spec = NormSpec("online", afwd=0.9, abkw=0.8, ecm="ac", eps=1e-4)
    layer = spec.make(6)
    assert isinstance(layer, module.OnlineNorm2d)
    assert (layer.alpha_fwd, layer.alpha_bkw, layer.eps, layer.ecm) == (0.9, 0.8, 1e-4, "ac")
    assert isinstance(spec.make(6, dim=1), module.OnlineNorm1d)
    assert is_norm_module(layer)


@pytest.mark.parametrize("channels, groups, expected", [
    (16, 8, 8), (64, 32, 32), (48, 32, 24), (10, 4, 2), (7, 8, 7), (3, 8, 3), (13, 8, 1)])
def test_group_divisor_rule(channels, groups, expected):
    assert group_count(channels, groups) == expected
    assert NormSpec("group", gn_groups=groups).make(channels).num_groups == expected


# ---- semantics ----------------------------------------------------------------------------

def test_layer_mode_is_per_sample_over_chw_with_per_channel_affine():
    torch.manual_seed(0)
    layer = NormSpec("layer").make(4)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(4))
        layer.bias.copy_(torch.randn(4))
    x = torch.randn(3, 4, 5, 5) * 3 + 1
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * layer.weight.view(1, 4, 1, 1) + layer.bias.view(1, 4, 1, 1)
    for mode in (layer.train, layer.eval):
        mode()
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)


def test_instance_mode_uses_per_sample_statistics_in_eval():
    torch.manual_seed(0)
    layer = NormSpec("instance").make(3)
    x = torch.randn(4, 3, 6, 6) * 5 + 2
    train_out = layer(x)
    layer.eval()
    eval_out = layer(x)
    torch.testing.assert_close(eval_out, train_out)
    # each (sample, channel) is normalised by its own statistics: other samples do not matter
    torch.testing.assert_close(layer(x[:1]), eval_out[:1])
    torch.testing.assert_close(eval_out.mean(dim=(2, 3)), torch.zeros(4, 3), atol=1e-5, rtol=0)


def test_init_norm_resets_affine():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), NormSpec("batch").make(8), NormSpec("group").make(8),
                          NormSpec("layer").make(8), NormSpec("instance").make(8), nn.Linear(8, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-3, 3)
    linear_before = model[5].weight.clone()
    init_norm_(model)
    for m in list(model)[1:5]:
        assert torch.equal(m.weight, torch.ones(8)) and torch.equal(m.bias, torch.zeros(8))
    assert torch.equal(model[5].weight, linear_before)  # not a norm layer: untouched
    assert not is_norm_module(model[0]) and is_norm_module(model[1])


def test_init_norm_resets_online_affine():
    online_module()
    layer = NormSpec("online").make(5)
    with torch.no_grad():
        layer.weight.fill_(3.0)
        layer.bias.fill_(-2.0)
    init_norm_(layer)
    assert torch.equal(layer.weight, torch.ones(5)) and torch.equal(layer.bias, torch.zeros(5))


def test_spec_is_frozen_and_serialisable():
    spec = NormSpec.parse("group")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.mode = "batch"
    assert NormSpec(**spec.to_dict()) == spec


# ---- the norm-plus-activation seam -----------------------------------------------------------------------
class SelfActivatingNorm(nn.BatchNorm2d):
    """Stands for FRN+TLU or EvoNorm: a norm that applies its own activation."""

    def forward(self, x):
        return torch.relu(super().forward(x))


class SelfActivatingNorm1d(nn.BatchNorm1d):
    def forward(self, x):
        return torch.relu(super().forward(x))


def relus_on_norm_outputs(model, x) -> tuple[int, int]:
    """(ReLUs applied directly to a norm layer's output, all ReLUs run) in one forward pass."""
    norm_outputs, kept, counts, handles = set(), [], [0, 0], []

    def after_norm(module, inputs, output):
        kept.append(output)  # alive until the end: no later tensor can reuse its id
        norm_outputs.add(id(output))

    def before_relu(module, inputs):
        counts[0] += id(inputs[0]) in norm_outputs
        counts[1] += 1
    for m in model.modules():
        if is_norm_module(m):
            handles.append(m.register_forward_hook(after_norm))
        elif isinstance(m, nn.ReLU):
            handles.append(m.register_forward_pre_hook(before_relu))
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return tuple(counts)


@pytest.mark.parametrize("name, dataset, shape, config", [
    ("resnet20", "cifar10", (2, 3, 32, 32), {}), ("resnet50", "imagenet", (2, 3, 64, 64), {}),
    ("wide_resnet", "cifar10", (2, 3, 32, 32), {"depth": 10, "widen_factor": 1}),
    ("vgg11_bn", "cifar10", (2, 3, 32, 32), {}), ("alexnet_bn", "cifar10", (2, 3, 32, 32), {}),
    ("mnist", "mnist", (2, 1, 28, 28), {}), ("f1", "mnist", (2, 1, 28, 28), {}), ("c1", "cifar10", (2, 3, 32, 32), {})])
def test_a_norm_that_brings_its_activation_gets_no_relu_after_it(monkeypatch, name, dataset, shape, config):
    """Every model family builds norm + activation through NormSpec.norm_act: where the mode's layer brings its
    own activation, no ReLU is applied to its output; ReLUs elsewhere (after a residual sum) stay."""
    from basinlab.models import create_model
    from basinlab.nn import norms
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    on_norms, total = relus_on_norm_outputs(create_model(name, 10, dataset, **config).eval(), x)
    assert on_norms > 0
    monkeypatch.setattr(norms, "NORMS_WITH_ACTIVATION", frozenset({"batch"}))
    monkeypatch.setattr(NormSpec, "_make_batch", lambda self, c, dim, apply_act=True: (
        SelfActivatingNorm if dim == 2 else SelfActivatingNorm1d)(c))
    assert relus_on_norm_outputs(create_model(name, 10, dataset, **config).eval(), x) == (0, total - on_norms)
