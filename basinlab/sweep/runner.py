"""Running a sweep's runs on this machine: N `basinlab train` processes at a time, resumable.

Each run is a separate process (`python -m basinlab train`), so runs share nothing but the disk, a crash
ends one run only, and the CPU threads are split between the runs at once (or one GPU per run where there
are GPUs). What happened to each run is kept in `DIR/.sweep/<name>.json`:

- done: skipped by a later `basinlab sweep` on the same folder;
- failed: its exit status and last error line, shown by `--status`; tried again (resumed) next time;
- interrupted (the sweep was killed: its runs die with it): resumed from the run's last.pt, exactly;
- missing (recorded done, but its results.csv is gone): trained again from scratch.

The sweep takes `DIR/.sweep/.lock` before it writes anything into DIR and holds it while it runs, so a second
sweep on the same folder is refused, having changed nothing, rather than starting a run twice; each run's own
lock guards it as well (state.py). A spec that would reuse runs made with other options is refused (changes.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from basinlab.errors import ConfigError
from basinlab.sweep.changes import replaced_folder, retire_runs, spec_change
from basinlab.sweep.commands import command_for, finished_state
from basinlab.sweep.spec import PlannedRun, SweepSpec
from basinlab.sweep.state import SPEC_FILE, STATE, in_queue, lock_sweep_folder, run_state, write_state
from basinlab.utils.io import atomic_write_text


def _die_with_parent() -> None:
    """In the child: SIGKILL when the sweep process dies (Linux), so a killed sweep leaves no stray runs."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def thread_budget() -> int:
    """The CPU threads a sweep may use: OMP_NUM_THREADS where the user set it (a share of a shared machine),
    else every CPU."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else (os.cpu_count() or 1)


class LocalBackend:
    """Up to `jobs` runs at once; the CPU threads (thread_budget) split between them, or one GPU each where
    there are GPUs."""

    def __init__(self, jobs: int = 1, echo=print):
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ConfigError(f"--jobs must be an integer >= 1, got {jobs!r}")
        self.jobs, self.echo = jobs, echo
        self.threads = max(1, thread_budget() // jobs)
        self.gpus = _gpu_count()
        self._slots = list(range(jobs))
        self._slot_lock = threading.Lock()

    def run_all(self, runs: list[PlannedRun], results_dir: Path) -> dict[str, dict]:
        queued = [run for run in runs if in_queue(run_state(results_dir, run.name).get("job_id", ""))]
        if queued:  # submitted by an earlier `--backend slurm` sweep and still there: never run twice
            raise ConfigError(f"{len(queued)} runs of this sweep are in the Slurm queue (e.g. {queued[0].name}); "
                              f"wait for them (basinlab sweep --status {results_dir}) or use --backend slurm")
        with ThreadPoolExecutor(self.jobs) as pool:
            return dict(zip([r.name for r in runs], pool.map(lambda r: self._run(r, results_dir), runs)))

    def _environment(self, slot: int) -> dict:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1"}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % self.gpus)
        return env

    def _run(self, run: PlannedRun, results_dir: Path) -> dict:
        with self._slot_lock:
            slot = self._slots.pop()
        try:
            command = command_for(run, results_dir)
            how = "resumed" if "--resume" in command else "started"
            self.echo(f"sweep: {run.name} {how}")
            write_state(results_dir, run.name, {"status": "running", "pid": os.getpid()})
            proc = subprocess.run(command, env=self._environment(slot), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
        finally:
            with self._slot_lock:
                self._slots.append(slot)
        state = finished_state(proc)
        write_state(results_dir, run.name, state)
        self.echo(f"sweep: {run.name} {state['status']}" + (f" (exit {state['exit']}: {state['error']})"
                                                            if state["status"] == "failed" else ""))
        return state


def _gpu_count() -> int:
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover - torch is a dependency
        return 0


def run_sweep(spec: SweepSpec, results_dir: Path, backend, echo=print, *,
              allow_changed_spec: bool = False) -> dict[str, dict]:
    """Run every run of `spec` that is not done yet; the state of every run afterwards.

    The folder's lock is taken before anything is written into it; a spec that would reuse runs made with
    other options is refused unless `allow_changed_spec` (then those runs are trained again, changes.py); a
    run recorded as done whose results are gone is trained again."""
    text = spec.as_yaml()
    lock = lock_sweep_folder(results_dir)
    try:
        change = spec_change(spec, results_dir)
        if change and not allow_changed_spec:
            raise ConfigError(change.refusal())
        if change:
            retire_runs(list(change.changed), results_dir)
            echo(f"sweep: the spec differs from the stored one ({change.summary()}): {len(change.changed)} "
                 f"changed runs are trained again (their old folders, if any, are in {replaced_folder(results_dir)}/)")
        atomic_write_text(results_dir / STATE / SPEC_FILE, text)
        missing = [run.name for run in spec.runs if run_state(results_dir, run.name)["status"] == "missing"]
        if missing:
            retire_runs(missing, results_dir)
            echo(f"sweep: {len(missing)} runs were done but their results.csv is gone (e.g. {missing[0]}): "
                 f"trained again (what was left of them is in {replaced_folder(results_dir)}/)")
        todo = [run for run in spec.runs if run_state(results_dir, run.name)["status"] != "done"]
        done = len(spec.runs) - len(todo)
        echo(f"sweep: {len(spec.runs)} runs in {results_dir} ({done} done, {len(todo)} to run)")
        states = {run.name: {"status": "done"} for run in spec.runs}
        states.update(backend.run_all(todo, results_dir))
        return states
    finally:
        lock.release()
