"""One way to build a run: every program that trains goes through basinlab.api.build_run, and every method flag
does in the LR range test what it does in `basinlab train`, or is refused in one line saying why."""
import ast
import json
from pathlib import Path

import pytest

from basinlab.cli import build_parser, main
from basinlab.cli.options import build_train_config
from basinlab.config import FIELDS, OPTION_GROUPS
from basinlab.methods.registry import build_method

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--train-limit", "128", "--val-limit", "32", "-b", "32"]
METHOD_GROUPS = ("asynchronous SGD", "flat minima", "the SAM family", "measurements during training")
# Every option of the method groups, each in a combination a training accepts.
METHOD_FLAGS = {
    "server": ["--server", "asgd", "--workers", "2", "--delay", "1", "--worker-order", "random", "--adjust-lr"],
    "real-server": ["--server", "asgd", "--workers", "2", "--real", "--max-delay", "3", "--on-worker-loss", "stop"],
    "real-fixed-delay": ["--server", "msgd", "--workers", "2", "--real", "--fixed-delay", "1"],
    # a real run's first 12 arrivals (basinlab train --server asgd --workers 3 --real), replayed by the simulator
    "worker-trace": ["--server", "asgd", "--workers", "3", "--worker-trace", str(ROOT / "tests/fixtures/delays.csv")],
    "smoothout": ["--smoothout", "0.001", "--smoothout-noise", "normal", "--smoothout-adapt", "filter",
                  "--smoothout-schedule", "anneal", "--smoothout-include-bn", "--no-denoise", "--ghost-batch", "16"],
    "sam": ["--sam", "0.05", "--sam-perturbation", "global"],
    "asam": ["--asam", "0.5", "--asam-eta", "0.02", "--asam-scope", "all"],
    "m-sam": ["--sam", "0.05", "--sam-m", "16", "--sam-interval", "2"],
    "gsam": ["--gsam", "0.05", "--gsam-alpha", "0.3", "--gsam-rho-min", "0.05"],
    "looksam": ["--looksam", "0.05", "--looksam-k", "3", "--looksam-alpha", "0.5", "--sam-perturbation", "global"],
    "msam": ["--msam", "0.5", "--optimizer", "SGD", "--momentum", "0.9"],
    "saf": ["--saf", "--saf-lambda", "0.5", "--saf-tau", "2", "--saf-horizon", "2", "--saf-start-epoch", "1"],
    "mesa": ["--mesa", "--mesa-decay", "0.999"],
    "ghost-batch": ["--ghost-batch", "16"],
    "lr-scale-batch": ["--ghost-batch", "16", "--lr-scale-batch", "sqrt"],
    "sharpness-monitor": ["--log-sharpness-every", "1", "--log-trace", "--hessian-mode", "eval",
                          "--sharpness-batches", "1"],
    "edge-of-stability": ["--log-sharpness-every-steps", "4", "--sharpness-batches", "1", "--hessian-mode", "train"],
    "lowrank": ["--log-lowrank"],
}
REFUSED_IN_LR_RANGE = {"server": "cannot run in the LR range test",
                       "real-server": "cannot run in the LR range test",
                       "real-fixed-delay": "cannot run in the LR range test",
                       "worker-trace": "cannot run in the LR range test", "lr-scale-batch": "replaces by its sweep",
                       "sharpness-monitor": "the LR range test has none",
                       "edge-of-stability": "changes the lr at every step", "lowrank": "the LR range test has none",
                       "saf": "does not have", "mesa": "does not have"}


def test_every_option_of_the_methods_is_tried():
    tried = {flag.lstrip("-").replace("no-", "").replace("-", "_") for argv in METHOD_FLAGS.values()
             for flag in argv if flag.startswith("--")}
    owned = {name for title, names in OPTION_GROUPS if title.startswith(METHOD_GROUPS) for name in names}
    assert owned - {"ghost_batch"} <= tried


def test_a_trainer_is_built_only_by_build_run():
    """Outside the engine (and its tests), the only `Trainer(...)` call is basinlab.api.build_run's: the package,
    the benchmarks and the experiments' scripts included."""
    calls = []
    paths = [*(ROOT / "basinlab").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"),
             *(ROOT / "experiments").rglob("*.py")]
    for path in sorted(paths):
        if "engine" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Trainer":
                calls.append(str(path.relative_to(ROOT)))
    assert calls == ["basinlab/api.py"]


@pytest.mark.parametrize("method", sorted(METHOD_FLAGS))
def test_the_lr_range_test_runs_each_method_as_training_does_or_says_why_not(tmp_path, capsys, method):
    argv = METHOD_FLAGS[method]
    code = main(["lr-range", *SMALL, *argv, "--num-steps", "3", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    if method in REFUSED_IN_LR_RANGE:
        assert code == 2 and len(err) == 1 and REFUSED_IN_LR_RANGE[method] in err[0]
        assert not (tmp_path / "out" / "lr_range.json").exists()
        return
    assert code == 0, err
    trained_with = build_method(build_train_config(build_parser().parse_args(["train", *argv])), 1)[0].name
    assert json.loads((tmp_path / "out" / "lr_range.json").read_text())["step"] == trained_with != "plain"


def test_autohyper_takes_no_method_flag(capsys):
    """autoHyper's trainings are what its seed config says: its command line has no method flag to ignore."""
    for argv in METHOD_FLAGS.values():
        assert main(["autohyper", "train", argv[0], *argv[1:2]]) == 2
        assert "unrecognized argument" in capsys.readouterr().err


@pytest.mark.parametrize("method", sorted(METHOD_FLAGS))
def test_train_and_a_sweep_take_each_method_flag(tmp_path, capsys, method):
    """In `basinlab train` (its whole setup, --dry-run) each method's flags build the strategy the registry
    names; a sweep spec with them is accepted (its runs are `basinlab train` processes)."""
    argv = METHOD_FLAGS[method]
    assert main(["train", *SMALL, *argv, "--results-dir", str(tmp_path), "--dry-run"]) == 0
    expected = build_method(build_train_config(build_parser().parse_args(["train", *argv])), 1)[0].name
    assert f"step {expected}," in capsys.readouterr().out
    import yaml

    from basinlab.sweep import read_spec
    options = vars(build_parser().parse_args(["train", *argv]))
    base = {k.replace("_", "-"): v for k, v in options.items() if k in FIELDS}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"base": {**base, "train-limit": 128, "batch-size": 32}, "seeds": [0]}))
    assert len(read_spec(spec, tmp_path / "out").runs) == 1
