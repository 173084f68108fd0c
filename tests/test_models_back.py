"""Getting trained models back: load_run(...).model, load_model on a run, a checkpoint or a safetensors file."""
import pytest
import torch

import basinlab
from basinlab.cli import main

QUICK = dict(model_config="{'width': 4, 'hidden': 16}", train_limit=256, val_limit=128, batch_size=64, epochs=1,
             quiet=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory, no_run_plots_in_module):
    folder = tmp_path_factory.mktemp("back")
    return basinlab.train(**QUICK, results_dir=str(folder), save="run")


def same(model, trained) -> bool:
    """The same weights, bit for bit (outputs may differ in rounding: training used channels_last)."""
    a, b = model.state_dict(), trained.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def test_every_way_back_gives_the_trained_model(run, tmp_path):
    loaded = basinlab.load_run(run.path)
    repr(loaded)
    assert loaded._model is None  # nothing is built until asked for (not even by repr)
    assert same(loaded.model, run.model) and not loaded.model.training
    assert same(basinlab.load_model(run.path), run.model)
    assert same(basinlab.load_model(run.path / "best.pt"), run.model)
    assert main(["export", str(run.path), "-o", str(tmp_path / "m.safetensors")]) == 0
    # the file alone rebuilds the model: its metadata holds the whole config
    assert same(basinlab.load_model(tmp_path / "m.safetensors"), run.model)


def test_evaluate_measures_what_the_run_recorded(run, capsys):
    assert main(["evaluate", str(run.path), "--output", str(run.path.parent / "e.csv")]) == 0
    assert "(128 examples)" in capsys.readouterr().out  # the run's --val-limit subset
    recorded = run.history["val_acc1"].iloc[-1]
    result = basinlab.evaluate_checkpoint(run.path, device="cpu")
    assert result["count"] == 128 and result["acc1"] == pytest.approx(recorded)
    assert basinlab.evaluate_checkpoint(run.path, device="cpu", full_split=True)["count"] == 1000
