"""`--loss mse` (Cohen et al.'s square loss) through training and the analysis commands, and `--model fc` (their
fc-tanh) against a network built the way locuslab/edge-of-stability builds it."""
import pytest
import torch
from torch import nn

import basinlab
from basinlab.analysis.measure import model_and_criterion
from basinlab.api import build_run, make_config
from basinlab.errors import ConfigError
from basinlab.models import create_model
from basinlab.nn.losses import HalfSquaredError

TINY = dict(model_config="{'width': 4, 'hidden': 16}", train_limit=64, val_limit=32, batch_size=32, epochs=1,
            quiet=True)


def test_the_square_loss_is_half_the_squared_distance_to_the_one_hot_labels():
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 4, generator=gen), torch.tensor([0, 3, 1, 1, 2, 0])
    by_hand = sum(0.5 * sum((logits[i, c] - float(c == labels[i])) ** 2 for c in range(4)) for i in range(6)) / 6
    assert float(HalfSquaredError()(logits, labels)) == pytest.approx(float(by_hand), rel=1e-6)
    half = HalfSquaredError()(logits.bfloat16(), labels)
    assert half.dtype == torch.float32  # computed in float32 whatever autocast gave the logits


def test_a_run_trains_and_is_measured_with_its_own_loss(tmp_path, no_run_plots):
    from basinlab.engine.inspect import prepare_evaluation
    mse = basinlab.train(**TINY, loss="mse", results_dir=str(tmp_path), save="mse")
    model, cfg, criterion = model_and_criterion(mse.path, "cpu", which="last")
    assert cfg.loss == "mse" and isinstance(criterion, HalfSquaredError)
    model, loader, criterion = prepare_evaluation(mse.path / "last.pt", device="cpu")
    assert isinstance(criterion, HalfSquaredError)  # basinlab evaluate's
    with torch.no_grad():  # the run's recorded validation loss is the square loss, written out here
        losses = [(HalfSquaredError()(model(x), y) * len(y), len(y)) for x, y in loader.epoch(0)]
    by_hand = sum(float(v) for v, _ in losses) / sum(n for _, n in losses)
    assert mse.history["val_loss"].iloc[-1] == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("options, words", [
    (dict(loss="mse", label_smoothing=0.1), "--loss cannot be combined with --label-smoothing"),
    (dict(loss="hinge"), "--loss"),
])
def test_bad_losses_are_refused_in_one_line(options, words):
    with pytest.raises(ConfigError, match=words):
        build_run(make_config(**TINY, **options))


def test_a_model_with_its_own_criterion_refuses_another_loss():
    from basinlab.engine.setup import make_criterion
    model = nn.Linear(2, 2)
    model.criterion = nn.NLLLoss()
    with pytest.raises(ConfigError, match="this model brings its own criterion"):
        make_criterion(model, make_config(loss="mse"))
    assert make_criterion(model, make_config()) is model.criterion


def test_fc_is_cohen_et_als_fc_tanh():
    torch.manual_seed(3)
    ours = create_model("fc", 10, "cifar10")
    torch.manual_seed(3)  # their fully_connected_net: Flatten, (Linear, activation) per width, Linear; default init
    theirs = nn.Sequential(nn.Flatten(), nn.Linear(3072, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(),
                           nn.Linear(200, 10))
    assert [type(m) for m in ours] == [type(m) for m in theirs]
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    relu = create_model("fc", 10, "mnist", widths=[50], activation="relu")
    assert [type(m).__name__ for m in relu] == ["Flatten", "Linear", "ReLU", "Linear"]
    assert relu[1].in_features == 784


@pytest.mark.parametrize("config, words", [({"widths": []}, "fc widths must be"),
                                           ({"activation": "swish"}, "fc activation must be one of"),
                                           ({"widths": [0]}, "each of fc widths")])
def test_bad_fc_configs_are_refused_in_one_line(config, words):
    with pytest.raises(ConfigError, match=words):
        create_model("fc", 10, "cifar10", **config)
