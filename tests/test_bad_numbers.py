"""Numbers no float can hold (10**400, 1e999999999, NaN, inf) and huge words: one line, exit 2 (4: a failed write).

Found by a hostile-user probe (issue #34, item J), where each of these exited 1 ("internal error").
"""
import errno
import tempfile

import pytest

from basinlab.analysis.landscape import MAX_POINTS, check_grid_size, parse_range
from basinlab.cli import main
from basinlab.errors import ConfigError
from basinlab.optim import Regime
from basinlab.utils.checks import check_number
from basinlab.utils.schema import Rule, check_text, check_value, finite_float, shown

HUGE = 10**400             # beyond the float range: float() raises OverflowError
HUGE_TEXT = str(HUGE)      # 401 digits
MC = "'width': 4, 'hidden': 16"


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in lines[0] and "Traceback" not in captured.err, captured.err
    assert len(lines[0]) < 400, lines[0]
    return lines[0]


# ----------------------------------------------------------------------------------------- the shared checks
@pytest.mark.parametrize("value, expected", [
    (HUGE, None), (-HUGE, None), (float("inf"), None), (float("nan"), None), (True, None), ("1", None),
    (None, None), (10**300, 1e300), (-0.0, 0.0), (3, 3.0),
], ids=lambda v: shown(v, 20))
def test_finite_float(value, expected):
    assert finite_float(value) == expected


@pytest.mark.parametrize("value", [HUGE, -HUGE, 10**5000], ids=["1e400", "-1e400", "1e5000"])
def test_check_value_refuses_integers_beyond_floats_naming_them_short(value):
    with pytest.raises(ConfigError) as err:
        check_value("--lr", Rule(float, optional=True, low=0), value)
    text = str(err.value)
    assert text.startswith("--lr must be a finite number >= 0 (or left unset), got ")
    assert ("digits>" in text or "characters>" in text) and len(text) < 200


def test_check_number_refuses_integers_beyond_floats():
    with pytest.raises(ConfigError, match=r"--grad-clip must be a positive finite number, got 1000.*characters>"):
        check_number(HUGE, "--grad-clip")
    assert check_number(10**300, "--grad-clip") == 1e300


@pytest.mark.parametrize("text", [HUGE_TEXT, "1e999999999", "-1e999999999", "nan", "inf", "9" * 5000, "x" * 5000],
                         ids=["401-digits", "1e999999999", "-1e999999999", "nan", "inf", "5000-nines", "5000-x"])
def test_check_text_names_the_word_as_typed_and_shortened(text):
    with pytest.raises(ConfigError) as err:
        check_text("--lr", Rule(float, optional=True, low=0), text)
    message = str(err.value)
    assert message.startswith("--lr must be a finite number >= 0") and "got inf" not in message
    assert repr(text)[:30] in message and len(message) < 200


def test_check_text_converts_what_the_rule_allows():
    assert check_text("--lr", Rule(float, low=0), "-0") == 0.0
    assert check_text("--lr", Rule(float, low=0), "-1e-999999999") == 0.0
    assert check_text("", Rule(int, low=1, high=10), " 7 ") == 7
    with pytest.raises(ConfigError, match=r"^must be an integer in \[1, 10\], got '1e3'$"):
        check_text("", Rule(int, low=1, high=10), "1e3")


def test_shown_is_short_for_every_value():
    nested = []
    for _ in range(100_000):
        nested = [nested]
    assert shown(nested) == "<a list nested too deep to show>"
    assert shown(10**5000) == "<an integer of about 5001 digits>"
    assert shown("x" * 500).endswith("...<500 characters>")


# ----------------------------------------------------------------------------------------- train's config
@pytest.mark.parametrize("line", [f"lr: {HUGE_TEXT}", f"weight-decay: -{HUGE_TEXT}", f"grad-clip: {HUGE_TEXT}",
                                  "momentum: .nan", "label-smoothing: -.inf", "smoothout: 1.0e999999999"],
                         ids=lambda line: line.split(":")[0])
def test_a_yaml_config_with_numbers_beyond_floats_is_refused_in_one_line(tmp_path, capsys, line):
    config = tmp_path / "big.yaml"
    config.write_text(line + "\n")
    results = tmp_path / "results"
    code = main(["train", "--config", str(config), "--results-dir", str(results), "--quiet"])
    assert code == 2
    flag = "--" + line.split(":")[0]
    assert one_error_line(capsys).startswith(f"basinlab: error: {flag} must be")
    assert not results.exists()


@pytest.mark.parametrize("phase, needle", [
    (f"{{'epoch': 0, 'lr': {HUGE_TEXT}}}", "regime phase 0: 'lr' must be a finite number, got 1000"),
    (f"{{'epoch': 0, 'lr': 0.1, 'momentum': {HUGE_TEXT}}}", "'momentum' must be a finite number, got 1000"),
    ("{'epoch': 0, 'lr': 0.1, 'weight_decay': 1e999}", "'weight_decay' must be a finite number, got inf"),
    (f"{{'epoch': 0, 'lr': 0.1, 'schedule': {{'name': 'cosine', 'epochs': {HUGE_TEXT}}}}}",
     "'schedule'['epochs'] must be a finite number"),
    (f"{{'epoch': 0, 'lr': 0.1, 'schedule': {{'name': 'multistep', 'milestones': [1, {HUGE_TEXT}]}}}}",
     "'schedule'['milestones'][1] must be a finite number"),
    (f"{{'epoch': 0, 'lr': 0.1, 'regularizer': {{'name': 'WeightDecay', 'value': {HUGE_TEXT}}}}}",
     "'regularizer'['value'] must be a finite number"),
    (f"{{'epoch': 0, 'optimizer': 'Adam', 'lr': 0.1, 'betas': (0.9, {HUGE_TEXT})}}", "'betas'[1] must be a finite"),
    (f"{{'epoch': 0, 'lr': 0.1}}, {{'epoch': {HUGE_TEXT}, 'lr': 0.01}}", "'epoch' must be a number >= 0"),
], ids=["lr", "momentum", "weight_decay-inf", "schedule-epochs", "schedule-milestones", "regularizer", "betas",
        "epoch"])
def test_a_model_regime_with_numbers_beyond_floats_is_refused_in_one_line(tmp_path, capsys, phase, needle):
    results = tmp_path / "results"
    code = main(["train", "--model-config", f"{{{MC}, 'regime': [{phase}]}}", "--results-dir", str(results),
                 "--quiet"])
    assert code == 2
    assert needle in one_error_line(capsys)
    assert not results.exists()


def test_a_regime_in_the_dict_format_refuses_huge_epochs():
    with pytest.raises(ConfigError, match="keys are epochs, got 1000"):
        Regime({0: {"lr": 0.1}, HUGE: {"lr": 0.01}})


def test_a_regime_refuses_settings_nested_deeper_than_any_setting():
    with pytest.raises(ConfigError, match=r"regime phase 0: 'schedule'\['a'\]\[0\]\[0\] nests deeper"):
        Regime([{"epoch": 0, "lr": 0.1, "schedule": {"a": [[[1]]]}}])


def test_the_command_line_refuses_a_huge_integer_for_a_float_option_in_one_line(tmp_path, capsys):
    code = main(["train", "--lr", HUGE_TEXT, "--results-dir", str(tmp_path / "results"), "--quiet"])
    line = one_error_line(capsys)
    assert code == 2 and "--lr" in line and "must be a finite number" in line
    assert "<401 characters>" in line and "got inf" not in line
    assert not (tmp_path / "results").exists()


def test_a_path_too_long_for_the_file_system_is_one_line(tmp_path, capsys):
    long = str(tmp_path / ("a" * 5000))
    for argv in (["evaluate", long], ["plot", long, "-o", str(tmp_path / "x.png")],
                 ["stability", "--csv", long + ".csv"], ["export", str(tmp_path), "-o", long]):
        assert main(argv) == 2, argv
        assert len(one_error_line(capsys)) < 400


# ----------------------------------------------------------------------------------------- ranges
@pytest.mark.parametrize("text, needle", [
    ("1e999999999", "must be a finite number between -1000 and 1000"),
    ("-1e999999999:1:2", "must be a finite number between -1000 and 1000"),
    ("1e99999999999999999999", "must be a finite number between -1000 and 1000"),  # beyond decimal's exponents
    (HUGE_TEXT, "<401 characters>"),
    ("0:1e-999999999:1", "has 1e+999999999 points; at most 1000000"),
    ("-1000:0.001:1000", "has 2000000 points"),
    ("1:1e-17:1.0000000000000001", "below float precision"),
    ("-1e-999999999:1e-999999999:1e-999999999", "below float precision"),
    ("x" * 5000, "<5000 characters> is not a number"),
    (",".join(["0"] * (MAX_POINTS + 1)), f"has {MAX_POINTS + 1} points"),
    ("-inf:1:0", "must be a finite number"), ("0:nan:1", "must be a finite number"), ("0:0:1", "must not be zero"),
], ids=lambda value: shown(value, 40))
def test_parse_range_refuses_extreme_ranges_in_one_short_line(text, needle):
    with pytest.raises(ConfigError) as err:
        parse_range(text, "--beta")
    message = str(err.value)
    assert needle in message and message.startswith("--beta") and "\n" not in message and len(message) < 300


def test_parse_range_reads_tiny_numbers_and_minus_zero_as_zero():
    assert parse_range("-1e-999999999") == [0.0] and str(parse_range("-0")[0]) == "0.0"
    assert parse_range("-1e-999999999:0.5:1") == [0.0, 0.5]


def test_a_grid_of_more_than_max_points_is_refused():
    check_grid_size([0.0] * 1000, [0.0] * 1000)
    with pytest.raises(ConfigError, match=r"1000 x 1001 = 1001000 points; at most 1000000"):
        check_grid_size([0.0] * 1000, [0.0] * 1001)


@pytest.mark.parametrize("args, needle", [
    (["directions", "--alpha=1e999999999"], "--alpha: '1e999999999' must be a finite number"),
    (["directions", "--alpha", "-inf"], "--alpha: '-inf' must be a finite number"),
    (["directions", "--beta", "-1e999999999"], "--beta: '-1e999999999' must be a finite number"),
    (["directions", "--alpha", "0:0.001:1", "--beta", "0:0.001:1.001"], "1000 x 1001 = 1001000 points"),
    (["interpolate", "--alpha", "0:1e-999999999:1"], "--alpha: '0:1e-999999999:1' has 1e+999999999 points"),
])
def test_landscape_refuses_extreme_ranges_before_reading_the_checkpoint(tmp_path, capsys, args, needle):
    view, *options = args
    checkpoints = [str(tmp_path / "absent.pt")] * (2 if view == "interpolate" else 1)
    code = main(["landscape", view, *checkpoints, *options, "-o", str(tmp_path / "out")])
    assert code == 2 and needle in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------- stability --csv
def test_stability_csv_in_a_missing_folder_is_refused_before_computing(tmp_path, capsys):
    code = main(["stability", "--delays", "1", "--csv", str(tmp_path / "missing" / "x.csv")])
    assert code == 2 and "--csv: the folder" in one_error_line(capsys)
    assert capsys.readouterr().out == ""


def test_stability_csv_that_cannot_be_written_is_exit_4(tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full_disk)
    code = main(["stability", "--delays", "1", "--momentum", "0", "--csv", str(tmp_path / "x.csv")])
    line = one_error_line(capsys)
    assert code == 4 and "cannot write" in line and "No space left on device" in line
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------- huge words as paths
def test_autohyper_resume_with_a_name_too_long_for_the_file_system_is_one_line(capsys):
    assert main(["autohyper", "train", "--resume", "x" * 5000]) == 2
    line = one_error_line(capsys)
    assert "--resume 'xxxx" in line and "<5000 characters>" in line


@pytest.mark.parametrize("entry", [{"input_size": 10**400}, {"duplicates": 10**400}, {"cutout": 10**400},
                                   {"eval_batch_size": 10**400}, {"input_size": [10**400, 2]}])
def test_a_data_regime_refuses_sizes_that_could_exhaust_memory(entry):
    from basinlab.data.transforms import Cutout
    from basinlab.optim import DataRegime
    with pytest.raises(ConfigError) as caught:
        regime = DataRegime([{"epoch": 0, **entry}])
        Cutout.from_setting(regime.settings_at(0)["cutout"], "data regime")
    assert len(str(caught.value)) < 300


def test_a_huge_word_for_a_choice_is_a_short_line(capsys):
    assert main(["evaluate", "run", "--split", "a" * 5000]) == 2
    line = one_error_line(capsys)
    assert "invalid choice" in line and len(line) < 300
