"""A run's env.yaml: what the run started with (versions, threads, device, command, commit), what each resume
continued with, and the commits its epochs came from.

    started:   environment_facts(), written once by RunFolder.create
    resumes:   one entry per resume (record_resume): when, commit, threads, versions, command, position
    branched_from_commits: a branch's origin's commits (origin_commits)
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path

import yaml

from basinlab.config import read_yaml_mapping
from basinlab.errors import ConfigError
from basinlab.utils.io import atomic_write_text

RESUME_FACTS = ("started", "git_commit", "basinlab", "torch", "threads", "world_size", "command")


def environment_facts() -> dict:
    from importlib.metadata import version

    import numpy
    import torch

    from basinlab._version import __version__
    facts = {"basinlab": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
             "numpy": str(numpy.__version__), "pandas": version("pandas"), "platform": platform.platform(),
             "cuda": torch.version.cuda,
             "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
             "threads": torch.get_num_threads(), "world_size": int(os.environ.get("WORLD_SIZE", "1")),
             "command": " ".join(sys.argv),
             "started": dt.datetime.now().isoformat(timespec="seconds")}
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            facts["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return facts


def resumes_of(env: dict) -> list[dict]:
    """env.yaml's `resumes:` entries, one per resume (when, at which commit, with what threads), those that are
    mappings; [] for a run never resumed, or resumed before runs recorded it."""
    resumes = env.get("resumes")
    return [entry for entry in resumes if isinstance(entry, dict)] if isinstance(resumes, list) else []


def run_commits(env: dict) -> list[str]:
    """The commits a run's epochs came from, in order and without repeats: the run it branched from (its
    `branched_from_commits`), its start, then each resume (missing ones left out)."""
    branched = env.get("branched_from_commits")
    parts = [*(branched if isinstance(branched, list) else []), env.get("git_commit"),
             *(entry.get("git_commit") for entry in resumes_of(env))]
    return list(dict.fromkeys(str(commit) for commit in parts if isinstance(commit, str) and commit))


def origin_commits(env_path: Path) -> list[str]:
    """Every commit the run a branch continues from ran at (its env.yaml; [] where there is none to read)."""
    try:
        return run_commits(read_yaml_mapping(env_path, what="run environment"))
    except ConfigError:
        return []


def record_resume(path: Path, resumed_at: dict, effective: dict) -> str | None:
    """env.yaml at `path` gains a `resumes:` entry (when, at which commit and position, with what threads and
    versions), so every commit a run's numbers come from is in its record, not only the one it started at;
    its `effective:` becomes this command's, as config.yaml does. An env.yaml that cannot be read is left as
    it is: the returned note says so (the resume goes on)."""
    try:
        facts = read_yaml_mapping(path, what="run environment")
    except ConfigError as exc:
        return f"this resume is not recorded in env.yaml: {exc}"
    resumes = facts.get("resumes", [])
    if not isinstance(resumes, list):
        return f"this resume is not recorded in env.yaml: its 'resumes' is not a list ({path})"
    now = environment_facts()
    facts["resumes"] = [*resumes, {**{key: now[key] for key in RESUME_FACTS if key in now}, **resumed_at}]
    if effective:
        facts["effective"] = effective
    atomic_write_text(path, yaml.safe_dump(facts, sort_keys=False))
    return None
