"""`basinlab sweep --backend slurm` against a real Slurm cluster (`.ci/slurm-up` starts a single-node one);
skipped where no cluster answers."""
import shutil
import subprocess

import pandas as pd
import pytest

import basinlab.sweep as sweeps
from basinlab.cli import main
from tests.test_sweep import SPEC as LOCAL_SPEC
from tests.test_sweep import write_spec


def slurm_answers() -> str | None:
    """None when a Slurm cluster runs jobs here, else why not."""
    if shutil.which("srun") is None:
        return "no Slurm here (srun not found; .ci/slurm-up starts a single-node cluster)"
    try:
        proc = subprocess.run(["srun", "-t", "1", "hostname"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"Slurm does not answer: {exc}"
    return None if proc.returncode == 0 else f"Slurm does not answer: {proc.stderr.strip()[:100]}"


pytestmark = pytest.mark.slow
pytest.importorskip("submitit")


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    """Asked once, when a test of this file runs (not at collection, where every xdist worker would wait on srun)."""
    why = slurm_answers()
    if why is not None:
        pytest.skip(why)

# The runs lr_0.001-s0 and -s1 of tests/test_sweep.py's SPEC, which the session's finished sweep ran here
SPEC = {**LOCAL_SPEC, "grid": {"lr": [0.001]}}


def test_a_sweep_through_slurm_equals_the_same_sweep_run_here(tmp_path, capsys, request):
    spec = write_spec(tmp_path, SPEC)
    assert main(["sweep", str(spec), "--results-dir", str(tmp_path / "slurm"), "--backend", "slurm",
                 "--cpus-per-run", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("submitted as Slurm job") == 2 and "| 0.001 | 2/2 |" in printed
    assert [state["status"] for _, state in sweeps.status(tmp_path / "slurm")] == ["done", "done"]
    # one thread per run in both (--cpus-per-run 1 here; conftest.py's sweep): the same numbers
    # asked for here, not as an argument: session fixtures are set up before the module's Slurm check would skip
    finished_sweep = request.getfixturevalue("finished_sweep")
    slurm, local = pd.read_csv(tmp_path / "slurm" / "summary.csv"), pd.read_csv(finished_sweep / "summary.csv")
    pd.testing.assert_frame_equal(slurm, local[local["lr"] == 0.001].reset_index(drop=True))


def test_no_wait_submits_and_a_second_sweep_submits_nothing_twice(tmp_path, capsys):
    spec = write_spec(tmp_path, {**SPEC, "seeds": [3]})
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--results-dir", str(out), "--backend", "slurm", "--no-wait"]) == 0
    assert "submitted; follow with basinlab sweep --status" in capsys.readouterr().out
    states = [state["status"] for _, state in sweeps.status(out)]
    assert states[0] in ("queued", "running", "done")
    if states[0] != "done":  # still queued or running: the second sweep waits for it instead of resubmitting
        assert main(["sweep", str(spec), "--results-dir", str(out), "--backend", "slurm"]) == 0
        assert "not submitted again" in capsys.readouterr().out
    else:
        assert main(["sweep", str(spec), "--results-dir", str(out), "--backend", "slurm"]) == 0
    assert [state["status"] for _, state in sweeps.status(out)] == ["done"]
