"""Weight decay scope: --wd-filter all|weights, convNet's regularizer regime key, and the built-in regime
described as convNet's; checked against SGD steps written out by hand."""
import pytest
import torch
from torch import nn

from basinlab.cli import main
from basinlab.errors import ConfigError
from basinlab.optim import Regime, weight_decay_config
from basinlab.optim.weight_decay import is_decayed, parameter_groups


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def test_the_weights_scope_is_conv_and_linear_weights():
    net = small_net()
    assert [n for n, p in net.named_parameters() if is_decayed(n, p)] == ["0.weight", "4.weight"]


@pytest.mark.parametrize("scope", ["all", "weights"])
def test_one_sgd_step_decays_exactly_the_scope(scope):
    """SGD with momentum 0.9 and weight decay 0.1 over the scope's groups equals the update written out:
    v = g + wd * w (decayed parameters only), w -= lr * v."""
    net = small_net()
    regime = Regime([{"epoch": 0, "optimizer": "SGD", "lr": 0.5, "momentum": 0.9, "weight_decay": 0.1}])
    optimizer = regime.apply(None, parameter_groups(net, scope), 0)
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    net(x).square().sum().backward()
    before = {n: (p.detach().clone(), p.grad.clone()) for n, p in net.named_parameters()}
    optimizer.step()
    for name, param in net.named_parameters():
        w, g = before[name]
        decay = 0.1 if scope == "all" or name in ("0.weight", "4.weight") else 0.0
        assert torch.allclose(param.detach(), w - 0.5 * (g + decay * w), atol=1e-6), name


def test_convnets_regularizer_key_means_weight_decay_on_weights():
    regime = Regime([{"epoch": 0, "optimizer": "SGD", "lr": 0.1, "momentum": 0.9,
                      "regularizer": weight_decay_config(1e-4)}, {"epoch": 5, "lr": 0.01}])
    assert regime.wd_filter == "weights" and regime.settings_at(6)["weight_decay"] == 1e-4
    overridden, _ = regime.overridden(weight_decay=5e-4)   # --wd keeps the scope, replaces the value
    assert overridden.wd_filter == "weights" and overridden.settings_at(0)["weight_decay"] == 5e-4
    yaml_form = Regime([{"epoch": 0, "lr": 0.1, "regularizer": {"name": "WeightDecay", "value": 2e-4}}])
    assert yaml_form.wd_filter == "weights" and yaml_form.settings_at(0)["weight_decay"] == 2e-4
    assert Regime([{"epoch": 0, "lr": 0.1, "weight_decay": 1e-4}]).wd_filter is None


@pytest.mark.parametrize("phase, message", [
    ({"regularizer": {"name": "L2", "value": 1}}, "other convNet regularizers are not implemented"),
    ({"regularizer": weight_decay_config(1e-4), "weight_decay": 1e-4}, "names both"),
    ({"wd_filter": "biases"}, "wd_filter must be one of all, weights"),
    ({"lr_scheduler": "StepLR"}, "use a named 'schedule'"),
])
def test_seed_regime_keys_are_refused_with_a_hint(phase, message):
    with pytest.raises(ConfigError, match=message):
        Regime([{"epoch": 0, "lr": 0.1, **phase}])


def test_the_log_names_the_scope_and_the_flag_overrides_the_regime(tmp_path, no_run_plots):
    common = ["--model", "resnet20", "--dataset", "mnist5k", "--train-limit", "64", "--val-limit", "32",
              "--batch-size", "32", "--epochs", "1", "--quiet", "--results-dir", str(tmp_path)]
    assert main(["train", *common, "--save", "convnet"]) == 0
    log = (tmp_path / "convnet" / "log.txt").read_text()
    assert "weight decay scope: conv/linear weights only" in log and "biases and norm parameters" in log
    assert main(["train", *common, "--save", "every", "--wd-filter", "all"]) == 0
    assert "weight decay scope: every parameter" in (tmp_path / "every" / "log.txt").read_text()
