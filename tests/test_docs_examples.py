"""The worked examples of docs/extending.md run as written (every ```python block, in order)."""
import re
from pathlib import Path

import pandas as pd
import pytest

import basinlab.models.registry as model_registry
from basinlab import presets

PAGE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture
def restored_registries(monkeypatch):
    """The examples register a model and a preset: both registries are as before after the test."""
    monkeypatch.setattr(model_registry, "_MODELS", dict(model_registry._MODELS))
    yield
    presets.USER_PRESETS.clear()


@pytest.mark.slow
def test_extending_examples_run(tmp_path, monkeypatch, no_run_plots, restored_registries):
    blocks = python_blocks(PAGE.read_text())
    assert len(blocks) == 4  # model, step strategy, callback, preset
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)  # our own documentation's code
    for name in ("tiny-mlp", "flooding", "grad-norm"):
        history = pd.read_csv(tmp_path / "results" / name / "results.csv")
        assert list(history["epoch"]) == [1]
    assert "grad_norm_mean" in pd.read_csv(tmp_path / "results" / "grad-norm" / "results.csv")


def test_the_examples_import_only_the_extension_surface():
    """docs/extending.md extends basinlab through basinlab.extend alone (besides basinlab.train/make_config)."""
    imports = re.findall(r"^(?:from|import) (basinlab[\w.]*)", PAGE.read_text(), flags=re.M)
    assert imports and set(imports) <= {"basinlab", "basinlab.extend"}
