"""Every sweep spec under experiments/ (the reduced scale that ran here and the paper scale for a GPU) is a
valid sweep: each of its runs' configs passes the options' rules, without training anything."""
from pathlib import Path

import pytest

from basinlab.sweep import read_spec

SPECS = sorted((Path(__file__).parents[1] / "experiments").glob("*/*.yaml"))


@pytest.mark.parametrize("spec", SPECS, ids=[f"{p.parent.name}/{p.name}" for p in SPECS])
def test_every_experiment_spec_is_a_valid_sweep(spec, tmp_path):
    sweep = read_spec(spec, tmp_path)
    assert sweep.runs and len({run.name for run in sweep.runs}) == len(sweep.runs)
    assert not any(tmp_path.iterdir())  # checking creates nothing
