"""Model registry and zoo: names, errors, user models, shapes, parameter counts, norm modes."""

import math
import textwrap

import pytest
import torch
from torch import nn

from basinlab.errors import ConfigError
from basinlab.models import create_model, list_models, register_model, registry
from basinlab.nn import NORM_MODES, is_norm_module

EXPECTED = {"resnet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet18", "resnet34",
            "resnet50", "resnet101", "resnet152", "wide_resnet", "vgg11", "vgg13", "vgg16", "vgg19",
            "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "alexnet", "alexnet_bn", "mnist", "f1",
            "cifar10_shallow", "cifar100_shallow"}
MNIST_MODELS = {"mnist", "f1"}


def forward(model, shape):
    model.train()
    out = model(torch.randn(*shape))
    return out


# ---- registry -----------------------------------------------------------------------------

def test_names_and_aliases():
    assert EXPECTED <= set(list_models())
    assert {"wrn", "mnist_f1", "c1", "c3"} <= set(list_models(include_aliases=True))
    assert "wrn" not in list_models()
    wrn = create_model("WRN", 10, "cifar10", depth=10, widen_factor=1)
    assert wrn.description.startswith("Wide ResNet WRN-10-1")
    assert create_model("mnist_f1", 10, "mnist").description.startswith("Keskar F1")


def test_unknown_name_lists_available_models():
    with pytest.raises(ConfigError) as info:
        create_model("resnet21", 10, "cifar10")
    message = str(info.value)
    assert "unknown model 'resnet21'" in message and "resnet20" in message and "vgg16_bn" in message
    assert "path/to/file.py:factory" in message and "\n" not in message


def test_unknown_config_key_names_allowed_keys():
    with pytest.raises(ConfigError) as info:
        create_model("resnet20", 10, "cifar10", depth=20)
    message = str(info.value)
    assert "'depth'" in message and "'resnet20'" in message and "norm, in_channels" in message
    with pytest.raises(ConfigError, match="allowed: depth, widen_factor, dropout, norm, in_channels"):
        create_model("wide_resnet", 10, "cifar10", width=4)


@pytest.mark.parametrize("kwargs, words", [
    (dict(num_classes=0), "num_classes"),
    (dict(dataset=""), "dataset"),
    (dict(norm="bogus"), "unknown norm mode"),
    (dict(in_channels=0), "in_channels"),
])
def test_bad_arguments(kwargs, words):
    args = dict(num_classes=10, dataset="cifar10") | kwargs
    with pytest.raises(ConfigError, match=words):
        create_model("resnet20", **args)


def test_register_model_decorator_and_duplicates():
    @register_model("tmp_test_net", aliases=("tmp_test_alias",))
    def tmp_test_net(num_classes, dataset, hidden=4):
        return nn.Sequential(nn.Flatten(), nn.Linear(hidden, num_classes))

    try:
        model = create_model("tmp_test_alias", 3, "cifar10", hidden=5)
        assert model[1].in_features == 5 and "tmp_test_net" in model.description
        with pytest.raises(ValueError, match="already registered"):
            register_model("resnet20")(tmp_test_net)
    finally:
        registry._MODELS.pop("tmp_test_net")
        registry._ALIASES.pop("tmp_test_alias")


USER_MODULE = textwrap.dedent("""
    import torch.nn as nn

    def tiny(num_classes, dataset, width=8):
        model = nn.Sequential(nn.Flatten(), nn.LazyLinear(width), nn.ReLU(), nn.Linear(width, num_classes))
        model.regime = [{'epoch': 0, 'optimizer': 'SGD', 'lr': 0.05}]
        return model

    def convnet_style(**kwargs):  # the seeds' factories took everything as keywords
        return nn.Linear(4, kwargs['num_classes'])

    not_a_model = lambda num_classes, dataset: 42
""")


@pytest.fixture
def trusted(monkeypatch):
    """As after --trust-model-code: user model specs may be imported in this test."""
    monkeypatch.setattr(registry, "_TRUST_ALL", [True])


def test_user_model_code_is_imported_only_when_trusted(tmp_path, monkeypatch):
    path = tmp_path / "my_models.py"
    marker = tmp_path / "imported"
    path.write_text(f"open({str(marker)!r}, 'w').close()\n" + USER_MODULE)
    monkeypatch.setattr(registry, "_TRUSTED", set())
    with pytest.raises(ConfigError, match="names code to import.*--trust-model-code"):
        create_model(f"{path}:tiny", 7, "cifar10")
    assert not marker.exists()
    registry.trust_model_code(f"{path}:tiny")
    assert create_model(f"{path}:tiny", 7, "cifar10", width=16)(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert marker.exists()


def test_user_model_from_file_path(tmp_path, trusted):
    path = tmp_path / "my_models.py"
    path.write_text(USER_MODULE)
    model = create_model(f"{path}:tiny", 7, "cifar10", width=16)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert model.regime[0]["lr"] == 0.05 and "tiny" in model.description
    assert create_model(f"{path}:convnet_style", 5, "cifar10").out_features == 5
    with pytest.raises(ConfigError, match="unknown config key 'depth'.*allowed: width"):
        create_model(f"{path}:tiny", 7, "cifar10", depth=3)
    with pytest.raises(ConfigError, match="has no callable 'missing'"):
        create_model(f"{path}:missing", 7, "cifar10")
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        create_model(f"{path}:not_a_model", 7, "cifar10")
    with pytest.raises(ConfigError, match="does not exist"):
        create_model(f"{tmp_path / 'absent.py'}:tiny", 7, "cifar10")


def test_user_model_from_import_path(tmp_path, monkeypatch, trusted):
    package = tmp_path / "userpkg_for_basinlab_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = create_model("userpkg_for_basinlab_test.nets:tiny", 4, "mnist")
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 4)
    with pytest.raises(ConfigError, match="cannot import model module 'no_such_pkg_xyz.nets'"):
        create_model("no_such_pkg_xyz.nets:tiny", 4, "mnist")


# ---- shapes and attributes of every model -------------------------------------------------

def check_attributes(model):
    assert isinstance(model.description, str) and "norm=" in model.description and "M params" in model.description
    first = model.regime[0]
    assert first["epoch"] == 0 and {"optimizer", "lr"} <= set(first)
    assert all(a["epoch"] < b["epoch"] for a, b in zip(model.regime, model.regime[1:]))
    assert isinstance(model.default_epochs, int) and model.default_epochs > model.regime[-1]["epoch"]


# the deepest ImageNet ResNets run at 32x32 without downsampling stem: covered at 64x64 below
@pytest.mark.parametrize("name", sorted(set(list_models()) - {"resnet101", "resnet152"}))
def test_small_input_shapes_and_attributes(name):
    """Every model on its native small input: 28x28 grey for the MNIST nets, else 32x32 RGB."""
    dataset, shape = ("mnist", (2, 1, 28, 28)) if name in MNIST_MODELS else ("cifar100", (2, 3, 32, 32))
    config = dict(depth=10, widen_factor=2) if name == "wide_resnet" else {}
    model = create_model(name, 100, dataset, **config)
    assert forward(model, shape).shape == (2, 100)
    check_attributes(model)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet",
                                  "vgg11_bn", "alexnet_bn"])
def test_imagenet_models_run_on_a_small_image(name):
    model = create_model(name, 1000, "imagenet")
    model.eval()  # one small forward is enough here
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    check_attributes(model)


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "wide_resnet", "vgg11_bn", "alexnet_bn",
                                  "cifar10_shallow", "f1", "mnist"])
def test_mnist_input_is_one_channel_28(name):
    config = dict(depth=10, widen_factor=1) if name == "wide_resnet" else {}
    model = create_model(name, 10, "fashion-mnist", **config)
    assert forward(model, (2, 1, 28, 28)).shape == (2, 10)


def test_in_channels_override():
    model = create_model("resnet20", 10, "imagefolder", in_channels=1)
    assert model.conv1.in_channels == 1


# ---- parameter counts ---------------------------------------------------------------------

def cifar_resnet_params(depth, classes):
    """ResNet-(6n+2): stem, 3 stages of n basic blocks, 1x1-conv + norm projections at stages 2-3."""
    n = (depth - 2) // 6
    conv = lambda cin, cout, k: cin * cout * k * k  # noqa: E731 (no biases)
    norm = lambda c: 2 * c  # noqa: E731 (gamma, beta)
    total = conv(3, 16, 3) + norm(16)
    cin = 16
    for width in (16, 32, 64):
        total += n * 2 * (conv(width, width, 3) + norm(width)) - conv(width, width, 3) + conv(cin, width, 3)
        if cin != width:
            total += conv(cin, width, 1) + norm(width)
        cin = width
    return total + 64 * classes + classes


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_resnet20_parameter_count():
    expected = cifar_resnet_params(20, 10)
    assert expected == 272_474
    model = create_model("resnet20", 10, "cifar10")
    assert count(model) == expected
    assert count(create_model("resnet56", 100, "cifar100")) == cifar_resnet_params(56, 100)
    assert "ResNet-20" in model.description and "0.27M params" in model.description


@pytest.mark.parametrize("name, expected", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_imagenet_resnet_parameter_counts(name, expected):
    assert count(create_model(name, 1000, "imagenet")) == expected


def test_other_known_counts():
    assert count(create_model("wide_resnet", 10, "cifar10")) == 36_479_194  # WRN-28-10
    f1 = create_model("f1", 10, "mnist")  # 784-512x5-10, BN, no hidden biases
    assert count(f1) == 784 * 512 + 4 * 512 * 512 + 5 * 2 * 512 + 512 * 10 + 10


# ---- architecture details -----------------------------------------------------------------

def test_resnet_generic_depths():
    assert "ResNet-44" in create_model("resnet", 10, "cifar10").description
    assert "ResNet-50" in create_model("resnet", 1000, "imagenet").description
    assert "ResNet-32" in create_model("resnet", 10, "cifar10", depth=32).description
    with pytest.raises(ConfigError, match="6n\\+2"):
        create_model("resnet", 10, "cifar10", depth=21)
    with pytest.raises(ConfigError, match="resnet20, resnet56"):
        create_model("resnet", 10, "imagenet", depth=20)


def test_resnet_structure_and_torchvision_names():
    model = create_model("resnet20", 10, "cifar10")
    assert len(model.layer1) == len(model.layer2) == len(model.layer3) == 3
    assert model.layer1[0].downsample is None
    proj = model.layer2[0].downsample
    assert proj[0].kernel_size == (1, 1) and proj[0].stride == (2, 2) and isinstance(proj[1], nn.BatchNorm2d)
    keys = set(create_model("resnet50", 1000, "imagenet").state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.bn3.weight",
            "fc.bias"} <= keys
    r50 = create_model("resnet50", 1000, "imagenet")
    assert r50.layer2[0].conv2.stride == (2, 2) and r50.layer2[0].conv1.stride == (1, 1)  # v1.5


def test_resnet18_stem_follows_the_input_size():
    assert create_model("resnet18", 10, "cifar10").conv1.kernel_size == (3, 3)
    assert create_model("resnet18", 200, "tiny-imagenet").conv1.kernel_size == (7, 7)
    assert create_model("resnet18", 10, "cifar10", stem="imagenet").conv1.kernel_size == (7, 7)
    with pytest.raises(ConfigError, match="stem must be one of auto, imagenet, cifar"):
        create_model("resnet18", 10, "cifar10", stem="big")


def test_init_is_kaiming_fan_out_and_unit_affine():
    torch.manual_seed(0)
    model = create_model("resnet20", 10, "cifar10")
    weight = model.layer3[1].conv1.weight  # 64 out x 9 -> fan_out 576
    assert abs(weight.std().item() - math.sqrt(2 / 576)) < 0.1 * math.sqrt(2 / 576)
    for m in model.modules():
        if is_norm_module(m):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        if isinstance(m, nn.Conv2d):
            assert m.bias is None


def test_default_regimes():
    cifar = create_model("resnet20", 10, "cifar10")
    # convNet's regime with its regularizer: weight decay 1e-4 on conv and linear weights only
    assert cifar.regime == [{"epoch": 0, "optimizer": "SGD", "lr": 0.1, "momentum": 0.9,
                             "regularizer": {"name": "WeightDecay", "value": 1e-4, "log": False, "filter": "weights"}},
                            {"epoch": 81, "lr": 0.01}, {"epoch": 122, "lr": 0.001}, {"epoch": 164, "lr": 0.0001}]
    imnet = create_model("resnet18", 1000, "imagenet")
    assert [(e["epoch"], e["lr"]) for e in imnet.regime] == [(0, 0.1), (30, 0.01), (60, 0.001), (80, 0.0001)]
    wrn = create_model("wrn", 10, "cifar10", depth=10, widen_factor=1)
    assert wrn.regime[0]["nesterov"] is True and wrn.regime[0]["weight_decay"] == 5e-4
    assert [(e["epoch"], e["lr"]) for e in wrn.regime[1:]] == [(60, 0.02), (120, 0.004), (160, 0.0008)]
    cifar.regime[0]["lr"] = 5.0  # each model owns its regime
    assert create_model("resnet20", 10, "cifar10").regime[0]["lr"] == 0.1


def test_keskar_networks():
    c1 = create_model("cifar10_shallow", 10, "cifar10")
    linears = [m for m in c1.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64 * 7 * 7, 384), (384, 192), (192, 10)]
    assert [m.p for m in c1.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    convs = [m for m in c1.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size) for m in convs] == [(64, (5, 5))] * 2
    assert create_model("cifar100_shallow", 100, "cifar100").classifier[-1].out_features == 100
    f1 = create_model("f1", 10, "mnist")
    hidden = [m for m in f1.modules() if isinstance(m, nn.Linear)][:-1]
    assert len(hidden) == 5 and all(m.out_features == 512 for m in hidden)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in f1.modules()) == 5


def test_vgg_variants():
    plain, bn = create_model("vgg16", 10, "cifar10"), create_model("vgg16_bn", 10, "cifar10")
    assert not any(is_norm_module(m) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 13
    assert sum(isinstance(m, nn.Conv2d) for m in plain.modules()) == 13
    assert sum(isinstance(m, nn.GroupNorm) for m in create_model("vgg16", 10, "cifar10", norm="group").modules()) == 13


# ---- norm modes in ResNet-20 --------------------------------------------------------------

@pytest.mark.parametrize("mode", NORM_MODES)
def test_every_norm_mode_trains_in_resnet20(mode):
    if mode == "online":
        pytest.importorskip("basinlab.nn.online_norm")
    torch.manual_seed(0)
    model = create_model("resnet20", 10, "cifar10", norm=mode)
    x = torch.randn(4, 3, 32, 32)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (4, 10)
    assert f"norm={mode}" in model.description


def test_group_mode_uses_the_divisor_rule_in_models():
    model = create_model("resnet20", 10, "cifar10", norm={"mode": "group", "gn_groups": 12})
    # 16 channels -> 8 groups, 32 -> 8, 64 -> 8 (largest divisors not above 12)
    assert {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)} == {8}


def test_none_mode_has_no_norm_layers_and_only_fc_bias():
    model = create_model("resnet20", 10, "cifar10", norm="none")
    assert not any(is_norm_module(m) for m in model.modules())
    assert [name for name, _ in model.named_parameters() if name.endswith("bias")] == ["fc.bias"]


def test_instance_norm_is_rejected_where_features_are_1d():
    with pytest.raises(ConfigError, match="not defined for 1-D features"):
        create_model("alexnet_bn", 10, "cifar10", norm="instance")


# ---- errors of the user's model code (#27) -----------------------------------------------------

def test_a_model_file_without_its_factory_is_read_not_run(tmp_path):
    path = tmp_path / "nets.py"
    marker = tmp_path / "ran"
    path.write_text(f"open({str(marker)!r}, 'w').close()\nclass Net: pass\ndef build(**kw): pass\n"
                    f"def _private(): pass\nVALUE = 3\n")
    with pytest.raises(ConfigError, match=r"use .*nets\.py:NAME, with NAME one of Net, build \(its top-level"):
        create_model(str(path), 10, "cifar10")
    assert not marker.exists()


def test_a_user_factory_raising_is_a_config_error_but_a_registered_one_is_not(tmp_path, trusted):
    path = tmp_path / "seedlike.py"
    path.write_text("class Model:\n    def __init__(self, num_classes=1000):\n        pass\n\n"
                    "def model(**kwargs):\n    return Model(**kwargs)\n")
    with pytest.raises(ConfigError) as info:
        create_model(f"{path}:model", 10, "cifar10", width=2)
    message = str(info.value)
    assert f"model {path}:model: building it raised TypeError" in message and "(line 6 of seedlike.py)" in message
    assert "model(num_classes=10, dataset='cifar10', width=...)" in message and "\n" not in message

    def tmp_broken_net(num_classes, dataset):
        raise RuntimeError("a bug")
    try:
        register_model("tmp_broken_net")(tmp_broken_net)  # registered by the user (basinlab.extend)
        with pytest.raises(ConfigError, match=r"model tmp_broken_net \(from .*test_models.py\): building it raised "
                                              r"RuntimeError: a bug .*tmp_broken_net\(10, 'cifar10'\)"):
            create_model("tmp_broken_net", 10, "cifar10")
        tmp_broken_net.__module__ = "basinlab.models.own"  # one of basinlab's: its exception is basinlab's bug
        with pytest.raises(RuntimeError, match="a bug"):
            create_model("tmp_broken_net", 10, "cifar10")
    finally:
        registry._MODELS.pop("tmp_broken_net")


def test_a_module_beside_the_model_file_is_not_a_package_to_install(tmp_path, trusted):
    (tmp_path / "layers_beside.py").write_text("X = 1\n")
    path = tmp_path / "uses_sibling.py"
    path.write_text("import layers_beside\n")
    with pytest.raises(ConfigError, match=r"imports 'layers_beside', which is in .* add that folder to PYTHONPATH"):
        create_model(f"{path}:model", 10, "cifar10")
    assert "upgrade it: pip install -U torch" in registry.missing_dependency(ImportError("no X", name="torch"))
