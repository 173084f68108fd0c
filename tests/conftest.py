"""Shared test settings."""
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
