"""Every sweep spec under experiments/ (the reduced scale that ran here and the paper scale for a GPU) is a
valid sweep: each of its runs' configs passes the options' rules, without training anything. autoHyper's
configs there are valid too, and train the same runs as the fixed-lr grid they are compared with."""
import ast
from pathlib import Path

import pytest

from basinlab.api import make_config
from basinlab.sweep import read_spec
from basinlab.tuning.seed_config import plan_from_config, read_seed_config

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
SPECS = sorted(p for p in EXPERIMENTS.glob("*/*.yaml") if not p.name.startswith("autohyper-"))
AUTOHYPER = sorted(EXPERIMENTS.glob("autohyper/autohyper-*.yaml"))


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def test_every_experiment_folder_has_both_scales():
    folders = {p.parent for p in EXPERIMENTS.glob("*/reduced.yaml")}
    assert len(folders) >= 4 and all((folder / "paper.yaml").is_file() for folder in folders)


@pytest.mark.parametrize("spec", SPECS, ids=_id)
def test_every_experiment_spec_is_a_valid_sweep(spec, tmp_path):
    sweep = read_spec(spec, tmp_path)
    assert sweep.runs and len({run.name for run in sweep.runs}) == len(sweep.runs)
    assert not any(tmp_path.iterdir())  # checking creates nothing


def _first_phase(options: dict) -> dict:
    model_config = options["model_config"]
    model_config = ast.literal_eval(model_config) if isinstance(model_config, str) else model_config
    phase = dict(model_config.pop("regime")[0])
    phase.pop("lr")
    return {"model_config": model_config, "phase": phase}


@pytest.mark.parametrize("config", AUTOHYPER, ids=_id)
def test_autohyper_trains_the_runs_of_its_grid(config, tmp_path):
    """autoHyper's full training at lr x is the grid's run at lr x: same model, data, epochs, batch, phase."""
    plan = plan_from_config(read_seed_config(config))
    grid = read_spec(config.with_name(config.name.removeprefix("autohyper-")), tmp_path)
    run = grid.runs[0]
    mine = plan.train_options(run.options["lr"], None, epochs=plan.max_epochs, seed=run.seed)
    make_config(**mine, results_dir=str(tmp_path), save="x")  # a valid basinlab run
    for key in ("model", "dataset", "epochs", "batch_size", "train_limit", "val_limit", "data_workers"):
        assert mine[key] == run.options.get(key), key
    assert _first_phase(mine) == _first_phase(run.options)
    assert len(grid.grid["lr"]) == 7 and len(grid.seeds) >= 3


def test_the_cluster_script_of_real_workers_is_a_valid_job(monkeypatch):
    """experiments/async-sgd/real-paper.sbatch: its basinlab command passes every option's and method's check, and
    its torchrun job has the server's rank plus one per worker, without training anything."""
    import re
    import shlex
    import subprocess

    from basinlab.cli import build_parser
    from basinlab.cli.options import build_train_config
    from basinlab.methods.registry import build_method, claim_rank
    script = EXPERIMENTS / "async-sgd" / "real-paper.sbatch"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text().replace("\\\n", " ").replace('"$SEED"', "0").replace("$SEED", "0")
    command = shlex.split(text[text.index("-m basinlab train"):].splitlines()[0])[3:]
    nodes, per_node = (int(re.search(rf"--{name} (\d+)", text).group(1)) for name in ("nnodes", "nproc_per_node"))
    assert f"#SBATCH --nodes={nodes}" in text
    cfg = build_train_config(build_parser().parse_args(["train", *command]))
    assert cfg.real and cfg.workers + 1 == nodes * per_node
    build_method(cfg, 1)
    monkeypatch.setenv("WORLD_SIZE", str(nodes * per_node))
    monkeypatch.setenv("RANK", "1")
    assert callable(claim_rank(cfg))   # a worker rank's part (not run: it would wait for the server)
