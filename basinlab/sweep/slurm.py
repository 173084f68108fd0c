"""Running a sweep's runs on a Slurm cluster: one job per run, submitted as a job array through submitit.

Each job runs `python -m basinlab train` for its run on a node (the results folder must be on a filesystem
the nodes share) and writes the run's state file itself when it ends, so `basinlab sweep --status DIR`
needs no Slurm accounting. A run whose job is still in the queue (squeue) is never submitted again; a run
whose job vanished without a state (time limit, node failure) is resumed from its last.pt by the next
`basinlab sweep`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from basinlab.errors import ConfigError
from basinlab.sweep.commands import command_for, finished_state
from basinlab.sweep.spec import PlannedRun
from basinlab.sweep.state import STATE, in_queue, run_state, write_state


def train_in_job(command: list[str], results_dir: str, name: str, threads: int) -> dict:
    """The job's body (on a node): run the training, record and return the run's state."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    write_state(Path(results_dir), name, {"status": "running", "job_id": os.environ.get("SLURM_JOB_ID", "")})
    proc = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = finished_state(proc)
    write_state(Path(results_dir), name, state)
    return state


@dataclass
class SlurmBackend:
    """submitit's Slurm executor: partition, time limit, CPUs and GPUs per run, how many run at once."""

    partition: str | None = None
    time_min: int = 60
    cpus_per_run: int = 1
    gpus_per_run: int = 0
    array_parallelism: int = 64
    wait: bool = True
    echo: object = print

    def check_cluster(self) -> None:
        """Before anything is written: submitit is installed and this machine can submit Slurm jobs."""
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError("--backend slurm needs submitit: pip install 'basinlab[slurm]'") from None
        if shutil.which("srun") is None:
            raise ConfigError("--backend slurm needs a Slurm cluster, and srun is not on PATH here; run the sweep "
                              "on the cluster's login node, or use --backend local")

    def _executor(self, results_dir: Path):
        try:
            import submitit
        except ImportError:
            raise ConfigError("--backend slurm needs submitit: pip install 'basinlab[slurm]'") from None
        executor = submitit.AutoExecutor(folder=str(results_dir / STATE / "slurm"), cluster="slurm")
        parameters = {"timeout_min": self.time_min, "cpus_per_task": self.cpus_per_run, "nodes": 1,
                      "tasks_per_node": 1, "slurm_array_parallelism": self.array_parallelism,
                      "name": f"basinlab-sweep-{results_dir.name}"}
        if self.partition:
            parameters["slurm_partition"] = self.partition
        if self.gpus_per_run:
            parameters["gpus_per_node"] = self.gpus_per_run
        executor.update_parameters(**parameters)
        return executor

    def run_all(self, runs: list[PlannedRun], results_dir: Path) -> dict[str, dict]:
        queued = [run for run in runs if in_queue(run_state(results_dir, run.name).get("job_id", ""))]
        for run in queued:
            job = run_state(results_dir, run.name)["job_id"]
            self.echo(f"sweep: {run.name} is still in the Slurm queue (job {job}): not submitted again")
        todo = [run for run in runs if run not in queued]
        if todo:
            self._submit(todo, results_dir)
        if self.wait:
            self._wait(queued + todo, results_dir)
        return {run.name: run_state(results_dir, run.name) for run in runs}

    def _submit(self, runs: list[PlannedRun], results_dir: Path) -> None:
        executor = self._executor(results_dir)
        commands = [command_for(run, results_dir) for run in runs]
        with executor.batch():
            jobs = [executor.submit(train_in_job, command, str(results_dir), run.name, self.cpus_per_run)
                    for run, command in zip(runs, commands)]
        for run, job in zip(runs, jobs):
            write_state(results_dir, run.name, {"status": "queued", "job_id": str(job.job_id)})
            self.echo(f"sweep: {run.name} submitted as Slurm job {job.job_id}")

    def _wait(self, runs: list[PlannedRun], results_dir: Path, poll_s: float = 2.0) -> None:
        """Until every run's job has left the queue; from the state files the jobs write and squeue (no Slurm
        accounting needed). A job gone without a state (time limit, node failure) leaves its run failed, and
        a later sweep resumes it."""
        waiting = list(runs)
        while waiting:
            still = []
            for run in waiting:
                state = run_state(results_dir, run.name)
                if state["status"] in ("done", "failed"):
                    self.echo(f"sweep: {run.name} {state['status']}")
                elif in_queue(state.get("job_id", "")):
                    still.append(run)
                else:
                    log = results_dir / STATE / "slurm" / f"{state.get('job_id', '')}_0_log.err"
                    write_state(results_dir, run.name, {"status": "failed", "exit": None,
                                                        "error": f"the Slurm job ended without a result ({log})"})
                    self.echo(f"sweep: {run.name} failed: its Slurm job ended without a result")
            waiting = still
            if waiting:
                time.sleep(poll_s)
