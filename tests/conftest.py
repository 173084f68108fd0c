"""Shared test settings."""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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
SWEEP_FOLDER_VARIABLE = "BASINLAB_TEST_FINISHED_SWEEP"


class BackgroundSweep:
    """tests/test_sweep.py's SPEC (2 lr x 2 seeds) swept by `basinlab sweep` in a process of its own, one
    single-threaded run at a time: started as soon as the tests are collected, it trains on the CPU core that
    the (single-threaded) tests before its first reader leave idle. One sweep serves every xdist worker: the
    session's controller names its folder (SWEEP_FOLDER_VARIABLE, inherited by the workers), the first worker to
    make `folder/started` starts it, and the sweep's exit status lands in `folder/exit` for every reader."""

    def __init__(self, folder: Path):
        self.folder, self.out = folder, folder / "out"

    def start_once(self) -> None:
        try:
            (self.folder / "started").mkdir()
        except FileExistsError:
            return                                      # another worker started it
        try:
            from tests.test_sweep import write_spec
            command = [sys.executable, "-m", "basinlab", "sweep", str(write_spec(self.folder)), "--results-dir",
                       str(self.out), "--jobs", "1"]
            # the exit status is written whole (a temporary file renamed), so a reader never sees it half-written
            record_exit = "import os, pathlib, subprocess, sys; code = subprocess.call(sys.argv[2:]); " \
                          "pathlib.Path(sys.argv[1] + '.tmp').write_text(str(code)); " \
                          "os.replace(sys.argv[1] + '.tmp', sys.argv[1])"
            with open(self.folder / "sweep.log", "w") as log:
                proc = subprocess.Popen([sys.executable, "-c", record_exit, str(self.folder / "exit"), *command],
                                        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            (self.folder / "pid").write_text(str(proc.pid))
        except Exception as exc:   # every reader fails at once, with the reason, instead of waiting 10 minutes
            (self.folder / "sweep.log").write_text(f"the background sweep did not start: {exc!r}")
            (self.folder / "exit").write_text("not started")
            raise

    def finished(self) -> Path:
        self.start_once()                               # asked for by a test collection did not see
        deadline = time.monotonic() + 600
        while not (self.folder / "exit").is_file():
            assert time.monotonic() < deadline, "the background sweep took over 10 minutes"
            time.sleep(0.2)
        code = (self.folder / "exit").read_text()
        assert code == "0", (self.folder / "sweep.log").read_text()[-3000:]
        return self.out

    def discard(self) -> None:
        """The controller's last step, after every worker: end the sweep if no test needed it, then delete it."""
        pid = self.folder / "pid"
        if pid.is_file() and not (self.folder / "exit").is_file():
            try:
                group = int(pid.read_text())
                os.killpg(group, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:    # gone before its folder is deleted under it
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(group, os.WNOHANG)  # reaped here when this process started it (no xdist)
                    os.killpg(group, 0)
                    time.sleep(0.05)
            except (ProcessLookupError, ValueError):
                pass
        shutil.rmtree(self.folder, ignore_errors=True)


def is_xdist_worker(config) -> bool:
    return hasattr(config, "workerinput")


def background_sweep() -> BackgroundSweep:
    return BackgroundSweep(Path(os.environ[SWEEP_FOLDER_VARIABLE]))


def pytest_configure(config):
    if not is_xdist_worker(config):                    # the controller, or a run without xdist
        os.environ[SWEEP_FOLDER_VARIABLE] = tempfile.mkdtemp(prefix="basinlab-finished-sweep-")


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    if any("finished_sweep" in getattr(item, "fixturenames", ()) for item in session.items):
        background_sweep().start_once()


def pytest_unconfigure(config):
    if not is_xdist_worker(config) and SWEEP_FOLDER_VARIABLE in os.environ:
        background_sweep().discard()
        del os.environ[SWEEP_FOLDER_VARIABLE]


@pytest.fixture(scope="session")
def finished_sweep():
    """The results folder of the session's BackgroundSweep, once it has finished, for every test that reads a
    finished sweep (test_sweep, test_report, test_sweep_slurm). Tests that change the folder work on a copy."""
    return background_sweep().finished()
