"""The code layout's contracts: imports run one way, registries are declared, nothing heavy at import."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from basinlab.api import make_config
from basinlab.cli import build_parser
from basinlab.config import FIELDS, OPTION_GROUPS
from basinlab.errors import ConfigError
from basinlab.methods.registry import METHODS
from basinlab.optim import create_optimizer, optimizer_names, optimizer_spec
from tests.test_data import make_cifar10

ROOT = Path(__file__).resolve().parents[1]


def test_imports_run_one_way():
    """import-linter's layers contract of pyproject.toml (late imports inside functions included)."""
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    done = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "2 kept, 0 broken" in done.stdout


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_command_line_imports_no_torch_before_it_needs_it():
    # `basinlab train --bad-option` must answer without paying for torch
    assert "torch" not in _modules_after("import basinlab.cli; import basinlab")


def test_the_optimizer_registry_instantiates_nothing_at_import():
    loaded = _modules_after("import basinlab.optim; basinlab.optim.optimizer_names()")
    assert "torch._dynamo" not in loaded  # what instantiating a torch optimizer pulls in


def test_a_run_reaches_its_first_step_without_pandas(tmp_path):
    """pandas (~0.2 s to import) is loaded where a table is read or written, after the first step."""
    make_cifar10(tmp_path / "data")
    code = ("import os, sys, basinlab\n"
            "from basinlab.engine.callbacks import Callback\n"
            "class First(Callback):\n"
            "    def on_step_end(self, run, result):\n"
            "        if run.global_step == 1:\n"
            "            print('pandas loaded at step 1:', 'pandas' in sys.modules, flush=True)\n"
            "            os._exit(0)  # the rest of the run is not what is checked\n"
            f"basinlab.train(dataset='cifar10', model='resnet20', epochs=1, batch_size=4, "
            f"datasets_dir={str(tmp_path / 'data')!r}, results_dir={str(tmp_path)!r}, callbacks=[First()])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pandas loaded at step 1: False" in out, out[-2000:]


def test_every_option_is_in_exactly_one_help_group():
    grouped = [name for _, names in OPTION_GROUPS for name in names]
    assert sorted(grouped) == sorted(FIELDS) and len(grouped) == len(set(grouped))


def test_train_help_shows_groups_and_defaults():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = train.format_help()
    for title, _ in OPTION_GROUPS:
        assert f"\n{title}:\n" in text
    assert "(default: 0.1)" in text  # --lr-multiplier
    assert "(default: round_robin)" in text  # --worker-order


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_method_contract(method):
    """Each method states its name, and with none of its options configures nothing or only callbacks."""
    assert isinstance(method.METHOD_NAME, str) and method.METHOD_NAME
    strategy, callbacks = method.configure(make_config(), 1)
    assert strategy is None
    assert all(hasattr(cb, "state_key") for cb in callbacks)


@pytest.mark.parametrize("name", optimizer_names())
def test_optimizer_registry_contract(name):
    """Every declared optimizer builds from its name with the regime keys it declares."""
    spec = optimizer_spec(name)
    assert spec.name == name and "params" not in spec.keys
    settings = {"lr": 0.01} if "lr" in spec.keys else {}
    if name == "NAG":
        settings["momentum"] = 0.9
    param = torch.zeros(3, 3, requires_grad=True)
    if spec.unusable:  # LBFGS, SparseAdam: refused in one line, with the reason
        with pytest.raises(ConfigError, match=f"optimizer {name} needs"):
            create_optimizer(name, [param], settings)
        return
    optimizer = create_optimizer(name, [param], settings)
    param.grad = torch.ones_like(param)
    optimizer.step()
    assert all(group.get(k) == v for group in optimizer.param_groups for k, v in settings.items())



def test_docs_build_strictly():
    """MkDocs with warnings as errors: dead links, missing pages and bad API references fail it."""
    mkdocs = shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", "/tmp/basinlab-site-test"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def test_readme_is_a_front_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    targets = re.findall(r"\]\(([^)#]+)\)", text)
    assert targets, "the README links to the documentation"
    for target in targets:
        assert target.startswith("http") or (ROOT / target).exists(), target


def test_drawing_a_run_leaves_the_callers_matplotlib_backend_alone(tmp_path):
    code = ("import matplotlib; matplotlib.use('svg'); import pandas as pd\n"
            "from basinlab.records.plots import plot_run, plot_runs\n"
            "frame = pd.DataFrame({'epoch': [1, 2], 'lr': [0.1, 0.01], 'train_loss': [2.0, 1.0],\n"
            "                      'val_loss': [2.1, 1.2], 'train_acc1': [40.0, 60.0], 'val_acc1': [38.0, 55.0]})\n"
            "written = plot_run(frame, 'plots') + [plot_runs({'a': frame, 'b': frame}, 'both.png')]\n"
            "print(matplotlib.get_backend(), len(written))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["svg", "4"]
    assert (tmp_path / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("script", sorted(p.name for p in (Path(__file__).parents[1] / "benchmarks").glob("*.py")))
def test_benchmark_scripts_import_what_exists(script):
    """A move inside the package must not silently break a benchmark: every name it imports exists."""
    import ast
    import importlib
    tree = ast.parse((Path(__file__).parents[1] / "benchmarks" / script).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("basinlab"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"{script}: from {node.module} import {alias.name}"
