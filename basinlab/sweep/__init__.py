"""Sweeps of settings x seeds: `basinlab sweep SPEC.yaml` and `basinlab.sweep.sweep(...)`.

spec.py reads and checks the spec (every run's config before any starts); state.py keeps the folder's records
and lock; changes.py refuses a spec that would reuse runs made with other options; runner.py runs the runs on
this machine, resumably; summary.py writes the papers' median tables.
"""
from __future__ import annotations

from pathlib import Path

from basinlab.errors import ConfigError
from basinlab.sweep.runner import LocalBackend, run_sweep
from basinlab.sweep.slurm import SlurmBackend
from basinlab.sweep.spec import SweepSpec, from_mapping, read_spec
from basinlab.sweep.state import SPEC_FILE, STATE, check_results_dir, in_queue, run_state, sweep_running, warn_stderr
from basinlab.sweep.summary import summarize

__all__ = ["sweep", "status", "summarize_folder", "read_spec", "SweepSpec"]


def sweep(spec, results_dir="results/sweep", *, jobs: int = 1, backend: str = "local", slurm: dict | None = None,
          echo=print, allow_changed_spec: bool = False):
    """Run a sweep (a spec file or a {base, grid, seeds} mapping); its summary table.

    backend "local": `jobs` runs at once on this machine. "slurm": one Slurm job per run through submitit;
    `slurm` holds SlurmBackend's settings (partition, time_min, cpus_per_run, gpus_per_run,
    array_parallelism, wait). A spec that differs from the one the folder was run with, for runs the folder
    holds, is refused unless `allow_changed_spec` (those runs are then trained again).
    """
    results_dir = Path(results_dir)
    check_results_dir(results_dir)
    spec = read_spec(spec, results_dir) if isinstance(spec, (str, Path)) else from_mapping(spec, results_dir)
    if backend == "local":
        runner = LocalBackend(jobs, echo)
    elif backend == "slurm":
        runner = SlurmBackend(**(slurm or {}), echo=echo)
        runner.check_cluster()
    else:
        raise ConfigError(f"--backend must be local or slurm, got {backend!r}")
    run_sweep(spec, results_dir, runner, echo, allow_changed_spec=allow_changed_spec)
    return summarize(spec, results_dir, warn=warn_stderr)


def stored_spec(results_dir) -> SweepSpec:
    """The spec a sweep folder was run with (kept in DIR/.sweep/spec.yaml)."""
    path = Path(results_dir) / STATE / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"{results_dir} is not a sweep folder (no {STATE}/spec.yaml)")
    return read_spec(path, Path(results_dir))


def status(results_dir) -> list[tuple[str, dict]]:
    """(run name, state) of every run of the sweep in `results_dir`; a run marked running by a sweep that no
    longer runs is interrupted (resumed by the next `basinlab sweep`)."""
    spec = stored_spec(results_dir)
    sweep_alive = sweep_running(Path(results_dir))
    states = []
    for run in spec.runs:
        state = run_state(Path(results_dir), run.name)
        if state["status"] in ("running", "queued"):
            alive = in_queue(state["job_id"]) if state.get("job_id") else sweep_alive
            if not alive:
                state = {"status": "interrupted"}
        states.append((run.name, state))
    return states


def summarize_folder(results_dir, warn=warn_stderr):
    """Recompute summary.csv/.md/.png of a sweep folder from its run folders; `warn` gets one line naming the
    runs recorded as done whose results are gone (the tables leave them out)."""
    return summarize(stored_spec(results_dir), Path(results_dir), warn=warn)
