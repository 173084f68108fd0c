"""Property tests: any value of any option, any command line, is accepted or refused in one line.

Never a traceback, never another exception type, never a run folder left behind by a refusal.
"""
import os
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from basinlab.api import make_config
from basinlab.cli import main
from basinlab.config import FIELDS
from basinlab.errors import ConfigError

# values of every type and extreme size, as YAML or a Python call could give them
ANY_VALUE = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40), st.integers(min_value=-3, max_value=3),
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


FLAGS = sorted("--" + name.replace("_", "-") for name in FIELDS if name not in {"resume", "nproc", "debug",
                                                                                "overwrite", "download"})
TEXT = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "nan", "inf", "-inf", "1e999", "1e-320", "99999999999999999999999",
                     "", "x", "true", "none", "cpu", "batch", "asgd", "sqrt", "[1]", "{}", "../..", "/"]),
    st.text(alphabet=string.ascii_letters + string.digits + "-_.:/{}'", max_size=8),
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
