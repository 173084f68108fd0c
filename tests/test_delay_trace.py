"""A real run's measured delays read back (methods/asgd/real/trace.py): the empirical stability threshold of a delay
sequence, `basinlab stability --delays-from`, and a malformed delays.csv refused in one line."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from basinlab.cli import main
from basinlab.errors import ConfigError
from basinlab.methods.asgd.real.delays import COLUMNS
from basinlab.methods.asgd.real.trace import empirical_threshold, read_delays
from basinlab.methods.asgd.stability import stability_threshold


@pytest.mark.parametrize("delay, momentum", [(0, 0.0), (2, 0.0), (7, 0.0), (2, 0.9), (16, 0.5)])
def test_a_constant_sequence_has_the_linear_stability_threshold(delay, momentum):
    assert empirical_threshold([delay] * 5, momentum) == pytest.approx(stability_threshold(delay, momentum),
                                                                      rel=2e-3)


def test_a_mixed_sequence_lies_between_the_thresholds_of_its_shortest_and_longest_delay():
    delays = np.random.default_rng(0).integers(1, 9, size=500)
    found = empirical_threshold(delays)
    assert stability_threshold(8) < found < stability_threshold(1)


def write_trace(path, delays, status="applied"):
    rows = [(1, i, i % 3, i - d, i, d, 0.01, status) for i, d in enumerate(delays)]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return path


def test_stability_reports_the_measured_delays_against_their_thresholds(tmp_path, capsys):
    delays = [0, 1, 2, 3, 3, 3, 3, 3, 3, 9]
    trace = write_trace(tmp_path / "delays.csv", delays)
    assert main(["stability", "--delays-from", str(tmp_path), "--momentum", "0", "--csv",
                 str(tmp_path / "out.csv")]) == 0
    out = capsys.readouterr().out
    assert "measured: 10 applied gradients, delay mean 3, p50 3, p95 6.3, max 9" in out
    table = pd.read_csv(tmp_path / "out.csv", index_col=0)
    assert table.loc["constant 3 (ceil of the mean)", "gamma=0"] == pytest.approx(stability_threshold(3))
    assert table.loc["constant 9", "gamma=0"] == pytest.approx(stability_threshold(9))
    assert table.loc["measured sequence (empirical)", "gamma=0"] == pytest.approx(
        empirical_threshold(read_delays(trace).delay.to_numpy()))


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.drop(columns="age_s"), "lacks the column(s) age_s"),
    (lambda t: t.assign(delay=t.delay + 1), "each delay must be version_applied - version_read"),
    (lambda t: t.assign(status="late"), "unknown status 'late'"),
    (lambda t: t.assign(worker="w"), "must hold numbers in every row"),
])
def test_a_malformed_delays_csv_is_refused_in_one_line(tmp_path, edit, words):
    trace = write_trace(tmp_path / "delays.csv", [0, 1, 2])
    edit(pd.read_csv(trace)).to_csv(trace, index=False)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_delays(trace)
    with pytest.raises(ConfigError, match="no delays.csv at"):
        read_delays(tmp_path / "elsewhere")


def test_the_report_reads_each_epochs_delay_distribution(tmp_path):
    from basinlab.records.report_data import delay_fractions
    trace = write_trace(tmp_path / "delays.csv", [0, 1, 1, 2])
    table = pd.read_csv(trace)
    table.loc[3, "status"] = "dropped"          # not applied: not in the distribution
    table.loc[[2, 3], "epoch"] = 2
    table.to_csv(trace, index=False)
    fractions = delay_fractions(trace)
    assert fractions.to_dict("list") == {"epoch": [1, 1, 2], "delay": [0, 1, 1], "fraction": [0.5, 0.5, 1.0]}
    assert delay_fractions(tmp_path / "absent.csv") is None
