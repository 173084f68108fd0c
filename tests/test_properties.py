"""Property tests: any value of any option, any command line, is accepted or refused in one line.

Never a traceback, never another exception type, never a run folder left behind by a refusal.
"""
import os
import string
import tempfile
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from basinlab.analysis.landscape import MAX_COORDINATE, MAX_POINTS, parse_range
from basinlab.api import make_config
from basinlab.cli import build_parser, main
from basinlab.cli.options import build_train_config
from basinlab.config import FIELDS, RULES
from basinlab.errors import ConfigError
from basinlab.optim import Regime

# integers no float can hold (float() raises OverflowError), up to beyond what repr() shows (4300 digits)
HUGE_INTEGERS = st.one_of(st.integers(min_value=2**1024, max_value=10**5000),
                          st.integers(min_value=-(10**5000), max_value=-(2**1024)))
# number words of extreme size and exponent, as typed or written in YAML
EXTREME_WORDS = st.one_of(
    st.sampled_from(["1e999999999", "-1e999999999", "1e-999999999", "-1e-999999999", "1E99999999999999999999",
                     "nan", "-nan", "inf", "-inf", "-0", "9" * 5000, "x" * 5000]),
    st.integers(min_value=300, max_value=1200).map(lambda digits: "1" + "0" * digits),
    st.tuples(st.integers(min_value=1, max_value=9), st.integers(min_value=-10**12, max_value=10**12)).map(
        lambda mantissa_exponent: f"{mantissa_exponent[0]}e{mantissa_exponent[1]}"),
)

# values of every type and extreme size, as YAML or a Python call could give them
ANY_VALUE = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40), st.integers(min_value=-3, max_value=3), HUGE_INTEGERS,
    st.builds(Fraction, HUGE_INTEGERS, st.integers(min_value=1, max_value=7)),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=-1e3, max_value=1e3),
    st.text(max_size=12), st.sampled_from(["", "none", "batch", "0", "-1", "1e999", "x" * 5000, "{'depth': 9}"]),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                 max_size=2),
)
# fields that only name things resolved later (a dataset, a folder, a checkpoint): their check is at setup
SETUP_FIELDS = {"resume", "preset"}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(set(FIELDS) - SETUP_FIELDS)), value=ANY_VALUE)
def test_any_value_of_any_option_is_accepted_or_refused_in_one_line(name, value):
    try:
        cfg = make_config(**{name: value})
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text and len(text) < 600
        assert name.replace("_", "-") in text or "model" in text
        return
    assert getattr(cfg, name) is not None or value is None


def assert_one_line(error: Exception) -> None:
    text = str(error)
    assert "\n" not in text and len(text) < 600, text


NUMBER_OPTIONS = sorted(name for name, rule in RULES.items() if rule.kind in (int, float))
YAML_NUMBERS = st.one_of(EXTREME_WORDS, st.integers(min_value=300, max_value=6000).map(lambda digits: "9" * digits),
                         st.sampled_from([".nan", ".inf", "-.inf", "1.0e999999999", "-1.0e-999999999", "-0.0"]))


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(NUMBER_OPTIONS), word=YAML_NUMBERS)
def test_any_number_in_a_yaml_config_is_accepted_or_refused_in_one_line(name, word):
    """What `basinlab train --config FILE` checks before it trains: the file read, then every option's rule."""
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(f"{name.replace('_', '-')}: {word}\n")
        try:
            cfg = build_train_config(build_parser().parse_args(["train", "--config", str(config)]))
        except ConfigError as exc:
            assert_one_line(exc)
            return
    assert getattr(cfg, name) is not None


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(NUMBER_OPTIONS), word=EXTREME_WORDS)
def test_any_number_word_on_the_command_line_is_accepted_or_refused_in_one_line(name, word):
    """What `basinlab train --OPTION WORD` checks before it trains (the words are values: --opt=WORD)."""
    flag = "--" + name.replace("_", "-")
    try:
        cfg = build_train_config(build_parser().parse_args(["train", f"{flag}={word}"]))
    except ConfigError as exc:
        assert "\n" not in str(exc) and flag in str(exc)
        return
    assert getattr(cfg, name) is not None


def as_float(word: str) -> float | None:
    try:
        return float(word)
    except ValueError:
        return None


REGIME_NUMBERS = st.one_of(HUGE_INTEGERS, st.floats(), st.integers(min_value=-3, max_value=10**6),
                           EXTREME_WORDS.map(as_float).filter(lambda number: number is not None))


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(["lr", "momentum", "weight_decay", "dampening", "epoch", "step", "schedule-epochs",
                            "schedule-gamma", "milestones", "regularizer", "dict-epoch"]), value=REGIME_NUMBERS)
def test_any_number_in_a_model_regime_is_accepted_or_refused_in_one_line(key, value):
    first = {"epoch": 0, "lr": 0.1, "momentum": 0.9}
    later = {
        "schedule-epochs": {"epoch": 1, "schedule": {"name": "cosine", "epochs": value}},
        "schedule-gamma": {"epoch": 1, "schedule": {"name": "exponential", "gamma": value}},
        "milestones": {"epoch": 1, "schedule": {"name": "multistep", "milestones": [value], "gamma": 0.1}},
        "regularizer": {"epoch": 1, "regularizer": {"name": "WeightDecay", "value": value}},
        "epoch": {"epoch": value, "lr": 0.01}, "step": {"step": value, "lr": 0.01},
    }.get(key, {"epoch": 1, key: value})
    phases = {0: {"lr": 0.1}, value: {"lr": 0.01}} if key == "dict-epoch" else [first, later]
    try:
        Regime(phases)
    except ConfigError as exc:
        assert_one_line(exc)


RANGE_PARTS = st.one_of(EXTREME_WORDS, st.sampled_from(["0", "1", "-1", "0.5", "1000", "-1000", "1e-3", "1e-7"]),
                        st.floats(min_value=-2000, max_value=2000).map(repr))


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(RANGE_PARTS, min_size=1, max_size=3), separator=st.sampled_from([":", ","]))
def test_any_range_is_read_or_refused_in_one_line(parts, separator):
    text = separator.join(parts)
    try:
        values = parse_range(text, "--alpha")
    except ConfigError as exc:
        assert_one_line(exc)
        assert str(exc).startswith("--alpha")
        return
    assert 1 <= len(values) <= MAX_POINTS and all(abs(v) <= MAX_COORDINATE for v in values)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(["--alpha", "--beta"]), parts=st.lists(RANGE_PARTS, min_size=1, max_size=3))
def test_any_landscape_range_exits_2_in_one_line(capsys, flag, parts):
    """Refused at the range, or else at the checkpoint that is not there: never exit 1."""
    with tempfile.TemporaryDirectory() as folder:
        code = main(["landscape", "directions", str(Path(folder) / "absent.pt"), f"{flag}={':'.join(parts)}",
                     "-o", str(Path(folder) / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


FLAGS = sorted("--" + name.replace("_", "-") for name in FIELDS if name not in {"resume", "nproc", "debug",
                                                                                "overwrite", "download"})
TEXT = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "nan", "inf", "-inf", "1e999", "1e-320", "99999999999999999999999",
                     "", "x", "true", "none", "cpu", "batch", "asgd", "sqrt", "[1]", "{}", "../..", "/"]),
    st.text(alphabet=string.ascii_letters + string.digits + "-_.:/{}'", max_size=8),
    EXTREME_WORDS,
)


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(FLAGS), value=TEXT)
def test_any_command_line_trains_or_is_refused_in_one_line(tmp_path_factory, capsys, flag, value):
    """Exit 0, 2 (refused: nothing left behind) or 3 (the loss diverged: records kept), never a traceback."""
    results = tmp_path_factory.mktemp("results")
    argv = ["train", "--epochs", "1", "--train-limit", "128", "--val-limit", "64", "-b", "64", "--quiet",
            "--results-dir", str(results), flag, value]
    here = os.getcwd()
    os.chdir(results.parent)  # relative paths the fuzzer makes up land in the test's own folder
    try:
        code = main(argv)
    finally:
        os.chdir(here)
    err = capsys.readouterr().err
    assert code in (0, 2, 3), err
    if code:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if code == 2:
        assert not any(p.name != ".trash" for p in results.iterdir()), "a refused run left a folder"
