"""The config schema: literal-only model configs, YAML files, validation messages."""
import pytest

from basinlab.api import make_config
from basinlab.config import config_to_yaml, load_yaml, parse_literal_dict
from basinlab.errors import ConfigError


def test_model_config_literal_dict():
    assert parse_literal_dict("{'depth': 20, 'regime': 'fixed', 'regime_lr': 0.1}") == {
        "depth": 20, "regime": "fixed", "regime_lr": 0.1}


@pytest.mark.parametrize("text", ["__import__('os').system('touch /tmp/x')", "{'a': open('f')}", "[1, 2]", "{'a':"])
def test_model_config_refuses_code_and_non_dicts(text, tmp_path):
    with pytest.raises(ConfigError, match="--model-config"):
        parse_literal_dict(text)


def test_yaml_keys_are_long_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch-size: 64\nlr: 0.05\nmodel_config: {depth: 20}\n")
    assert load_yaml(path) == {"batch_size": 64, "lr": 0.05, "model_config": {"depth": 20}}


def test_malformed_and_unknown_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_yaml(bad)
    unknown = tmp_path / "u.yaml"
    unknown.write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match="unknown option 'learning_rat'"):
        load_yaml(unknown)
    code = tmp_path / "code.yaml"
    code.write_text("lr: !!python/object/apply:os.system ['touch x']\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_yaml(code)


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", -1), ("epochs", 1.5)])
def test_non_positive_counts_refused(field, value):
    with pytest.raises(ConfigError, match="must be an integer in \\[1, "):
        make_config(**{field: value})


def test_resolved_config_reproduces(tmp_path):
    cfg = make_config(model="resnet20", dataset="cifar10", lr=0.05, model_config="{'depth': 20}")
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    again = make_config(load_yaml(path))
    assert again.to_dict() == cfg.to_dict()
