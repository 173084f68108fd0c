"""The `basinlab train` command line of one sweep run, and what its exit says: shared by the local and the
Slurm backends (neither imports the other)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from basinlab.models import trusts_all_model_code
from basinlab.sweep.spec import PlannedRun
from basinlab.sweep.state import STATE
from basinlab.utils.io import atomic_write_text


def finished_state(proc: subprocess.CompletedProcess) -> dict:
    """A run's state from its finished `basinlab train` process: done, or failed with its last error line."""
    if proc.returncode == 0:
        return {"status": "done"}
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return {"status": "failed", "exit": proc.returncode, "error": lines[-1] if lines else ""}


def command_for(run: PlannedRun, results_dir: Path) -> list[str]:
    """Resume a run that has a checkpoint; otherwise start it from its options file (a half-made folder of a
    run killed before its first checkpoint is replaced)."""
    base = [sys.executable, "-m", "basinlab", "train", "--quiet"]
    if trusts_all_model_code():  # `basinlab sweep --trust-model-code`: the person's word, passed on as given
        base.append("--trust-model-code")
    folder = results_dir / run.name
    if (folder / "last.pt").is_file():
        return [*base, "--resume", str(folder)]
    options_file = results_dir / STATE / f"{run.name}.yaml"
    atomic_write_text(options_file, yaml.safe_dump(run.options, sort_keys=False))
    fresh = [*base, "--config", str(options_file), "--results-dir", str(results_dir), "--save", run.name]
    return fresh + (["--overwrite"] if folder.exists() else [])
