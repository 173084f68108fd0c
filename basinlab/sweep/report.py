"""`basinlab report RUN_OR_SWEEP... -o report.html`: runs and sweeps on one page (basinlab.records.report).

A folder is a sweep when it holds .sweep/spec.yaml: every run of it that has results joins the run table and
its setting's curves (drawn as the median over the setting's seeds in a min-max band, settings named as in the
spec), and its finished runs give the summary table and the per-seed scatter (recomputed from the run folders,
as `basinlab sweep --summarize`, without writing anything into the sweep folder). Runs recorded as
done whose results.csv is gone are left out and named in one warning line. A run folder holds config.yaml. Any
other folder brings every run and sweep folder inside it (three levels down: an experiment's runs/ with its sweeps
and autoHyper's searches). Run names are the folder names, prefixed by parent folders where two would clash.
"""
from __future__ import annotations

from pathlib import Path

from basinlab.errors import ConfigError
from basinlab.records.report import SweepTables, write_report
from basinlab.records.report_data import RunData, read_run_data, unique_names
from basinlab.sweep.state import SPEC_FILE, STATE, has_results, warn_stderr
from basinlab.sweep.summary import missing_note, missing_runs, run_rows, summary_table

MAX_DEPTH = 3  # how deep a folder that is neither a run nor a sweep is searched for them


def is_sweep_folder(path: Path) -> bool:
    return (path / STATE / SPEC_FILE).is_file()


def _sweep_runs(folder: Path, warn) -> tuple[list[Path], SweepTables]:
    from basinlab.sweep import stored_spec
    spec = stored_spec(folder)
    missing = missing_runs(spec, folder)
    if missing and warn is not None:
        warn(missing_note(missing, len(spec.runs), folder))
    members: dict[str, list[Path]] = {}
    for run in spec.runs:
        if has_results(folder / run.name):
            members.setdefault(run.setting, []).append(folder / run.name)
    finished = run_rows(spec, folder)
    name = "/".join(folder.resolve().parts[-2:])  # experiments/<paper>/runs: the parent says more than "runs"
    with_results = [path for paths in members.values() for path in paths]
    return with_results, SweepTables(name, summary_table(spec, finished), finished, members)


def _runs_and_sweeps(path: Path, depth: int = 0) -> list[Path]:
    """`path` itself when it is a run or sweep folder; else the run and sweep folders inside it (an experiment's
    runs/: its sweeps, and folders of runs such as autoHyper's searches), sorted, down to MAX_DEPTH levels."""
    if is_sweep_folder(path) or (path / "config.yaml").is_file():
        return [path]
    if depth >= MAX_DEPTH:
        return []
    inside = [child for child in sorted(path.iterdir()) if child.is_dir() and not child.name.startswith(".")
              and not child.is_symlink()]
    found = [run for child in inside for run in _runs_and_sweeps(child, depth + 1)]
    if depth == 0 and not found:
        raise ConfigError(f"{path} is not a basinlab run folder (no config.yaml) nor a sweep folder (no .sweep/), "
                          f"and holds none within {MAX_DEPTH} levels; give run folders or sweep folders (made by "
                          f"basinlab train / basinlab sweep)")
    return found


def gather(paths, warn=warn_stderr) -> tuple[list[RunData], list[SweepTables]]:
    """The runs (each once) and sweeps that the given folders hold; `warn` gets one line per sweep naming its
    runs whose results are gone."""
    folders, sweeps = [], {}
    for given in paths:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{path} is not a folder; give run folders or sweep folders (made by basinlab "
                              f"train / basinlab sweep)")
        for found in _runs_and_sweeps(path):
            if is_sweep_folder(found):
                if found.resolve() not in sweeps:  # a sweep given twice is drawn once
                    runs, sweeps[found.resolve()] = _sweep_runs(found, warn)
                    folders += runs
            else:
                folders.append(found)
    names = [tables.name for tables in sweeps.values()]
    for folder, tables in sweeps.items():
        if names.count(tables.name) > 1:  # two sweeps in folders of the same name: each named by its whole path
            tables.name = str(folder)
    unique = list(dict.fromkeys(p.resolve() for p in folders))
    if not unique:
        raise ConfigError("no run with results in " + ", ".join(map(str, paths)))
    return [read_run_data(p, name) for p, name in zip(unique, unique_names(unique))], list(sweeps.values())


def report(paths, output="report.html", title: str = "", warn=warn_stderr) -> Path:
    """Write the page for run and sweep folders; returns its path."""
    runs, sweeps = gather(paths, warn)
    return write_report(runs, output, sweeps, title)
