"""Shared test settings."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # The tests run tiny models, where intra-op threads only add synchronisation (badly so on a busy
    # 2-core machine: up to 4x slower). Subprocess tests set OMP_NUM_THREADS themselves.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_run_plots(monkeypatch):
    """Skip the engine's PNG plots where they are not what is tested (they cost more than tiny runs)."""
    monkeypatch.setattr("basinlab.records.plots.plot_run", lambda *args, **kwargs: [])


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
