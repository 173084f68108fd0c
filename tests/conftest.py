"""Shared test settings."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip, with the reason, where torch sees no CUDA device (this project's CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False here; "
                                   "benchmarks/gpu_check.py runs these on a GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # The tests run tiny models, where intra-op threads only add synchronisation (badly so on a busy
    # 2-core machine: up to 4x slower). Subprocess tests set OMP_NUM_THREADS themselves.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def torch_threads():
    """Intra-op threads (up to 4) for the tests whose model is large enough for them to pay (ResNet-20 on batches
    of 16 and more: 1.5x faster on 2 cores)."""
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    yield
    torch.set_num_threads(1)


@pytest.fixture
def no_run_plots(monkeypatch):
    """Skip the engine's PNG plots where they are not what is tested (they cost more than tiny runs)."""
    monkeypatch.setattr("basinlab.records.plots.plot_run", lambda *args, **kwargs: [])


@pytest.fixture(scope="module")
def no_run_plots_in_module():
    """no_run_plots for the runs of a module-scoped fixture (set up before any function-scoped fixture), until the
    module's last test: for modules none of whose tests look at a run's plots."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("basinlab.records.plots.plot_run", lambda *args, **kwargs: [])
        yield


# ------------------------------------------------------------------------------ the real data
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="module")
def data_shared_real():
    script = SHARED / "tools" / "prepare_data.py"
    if not script.is_file():
        pytest.skip("../shared is absent: no real data here")
    out = Path.home() / ".cache" / "shared-data"
    if not (out / "cifar10" / "cifar-10-batches-py" / "batches.meta").exists() \
            or not (out / "cifar10-folder" / "test" / "truck").is_dir() or not (out / "mnist").is_dir():
        subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
    return out


# ------------------------------------------------------------------------------ one finished sweep
class BackgroundSweep:
    """tests/test_sweep.py's SPEC (2 lr x 2 seeds) swept by `basinlab sweep` in a process of its own, one
    single-threaded run at a time: started as soon as the tests are collected, it trains on the CPU core that
    the (single-threaded) tests before its first reader leave idle."""

    def __init__(self):
        from tests.test_sweep import write_spec
        self.folder = Path(tempfile.mkdtemp(prefix="basinlab-finished-sweep-"))
        self.out = self.folder / "out"
        command = [sys.executable, "-m", "basinlab", "sweep", str(write_spec(self.folder)), "--results-dir",
                   str(self.out), "--jobs", "1"]
        self.log = open(self.folder / "sweep.log", "w")
        self.proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def finished(self) -> Path:
        code = self.proc.wait(timeout=600)
        self.log.close()
        assert code == 0, (self.folder / "sweep.log").read_text()[-3000:]
        return self.out

    def discard(self) -> None:
        if self.proc.poll() is None:  # the session ended before any test needed it
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


BACKGROUND_SWEEP = pytest.StashKey[BackgroundSweep]()


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    if any("finished_sweep" in getattr(item, "fixturenames", ()) for item in session.items):
        session.config.stash[BACKGROUND_SWEEP] = BackgroundSweep()


def pytest_unconfigure(config):
    if BACKGROUND_SWEEP in config.stash:
        config.stash[BACKGROUND_SWEEP].discard()


@pytest.fixture(scope="session")
def finished_sweep(request):
    """The results folder of the session's BackgroundSweep, once it has finished, for every test that reads a
    finished sweep (test_sweep, test_report, test_sweep_slurm). Tests that change the folder work on a copy."""
    if BACKGROUND_SWEEP not in request.config.stash:  # asked for by a test collection did not see
        request.config.stash[BACKGROUND_SWEEP] = BackgroundSweep()
    return request.config.stash[BACKGROUND_SWEEP].finished()
