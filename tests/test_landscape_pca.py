"""`basinlab landscape trajectory`: PCA-of-trajectory directions (Li et al. 2018 section 7; issue #30 item 5).

The directions are checked against a PCA written out here in numpy (eigenvectors of the centred rows' Gram
matrix), and each checkpoint's projection against its own dot products."""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import basinlab
from basinlab.analysis.trajectory import trajectory_directions
from basinlab.cli import main
from basinlab.engine.inspect import model_from_checkpoint

EPOCHS = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory, no_run_plots_in_module):
    trained = basinlab.train(model_config="{'width': 4, 'hidden': 16}", train_limit=64, val_limit=16, batch_size=16,
                             epochs=EPOCHS, save_all=True, quiet=True,
                             results_dir=str(tmp_path_factory.mktemp("ck")), save="traj")
    return trained.path


def _weights(path, which) -> np.ndarray:
    model, _, _ = model_from_checkpoint(path, "cpu", which=which)
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()]).numpy()


def _numpy_pca(rows: np.ndarray):
    """The first two principal axes (unit, largest entry positive) and explained variance ratios of the rows."""
    centred = rows - rows.mean(axis=0)
    eigenvalues, vectors = np.linalg.eigh(centred @ centred.T)  # ascending
    order = np.argsort(eigenvalues)[::-1]
    axes = []
    for i in order[:2]:
        axis = centred.T @ vectors[:, i]
        axis /= np.linalg.norm(axis)
        axes.append(axis if axis[np.argmax(np.abs(axis))] > 0 else -axis)
    return np.array(axes), eigenvalues[order[:2]] / eigenvalues.sum()


def test_directions_and_projections_are_the_pca_of_the_epoch_checkpoints(run, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["landscape", "trajectory", str(run), "--alpha=-0.5,0,0.5", "--beta=-0.1,0,0.1", "--limit", "16",
                 "--split", "train", "--device", "cpu", "--quiet", "-o", str(out)]) == 0
    final = _weights(run, "last.pt")
    rows = np.stack([_weights(run, f"epoch_{k}.pt") - final for k in range(1, EPOCHS + 1)])
    axes, ratios = _numpy_pca(rows)

    model, _, _ = model_from_checkpoint(run, "cpu", which="last.pt")
    path = trajectory_directions(run, model)
    ours = np.stack([torch.cat([v.reshape(-1) for v in d.values()]).numpy() for d in path.directions])
    np.testing.assert_allclose(ours, axes, atol=1e-8)
    np.testing.assert_allclose(path.explained_variance_ratio, ratios, rtol=1e-8)

    points = pd.read_csv(tmp_path / "t_trajectory.csv")
    assert list(points["epoch"]) == list(range(1, EPOCHS + 1))
    np.testing.assert_allclose(points[["alpha", "beta"]].to_numpy(), rows @ axes.T, atol=1e-8)
    np.testing.assert_allclose(points.iloc[-1][["alpha", "beta"]].to_numpy(float), 0.0)  # the centre: the last epoch
    np.testing.assert_allclose(points["explained_variance_ratio_1"], ratios[0], rtol=1e-8)

    grid = pd.read_csv(out.with_suffix(".csv"))
    assert len(grid) == 9 and list(grid.columns) == ["alpha", "beta", "train_loss", "train_acc1"]
    assert out.with_suffix(".png").is_file() and "train loss over 9 points" in capsys.readouterr().out


def test_biases_and_normalisation_can_be_left_out(run):
    model, _, _ = model_from_checkpoint(run, "cpu", which="last.pt")
    path = trajectory_directions(run, model, exclude_bias_bn=True)
    for direction in path.directions:
        assert all(float(v.abs().max()) == 0 for v in direction.values() if v.dim() <= 1)
        assert float(torch.cat([v.reshape(-1) for v in direction.values()]).norm()) == pytest.approx(1.0)


def test_too_few_epoch_checkpoints_are_refused_in_one_line(run, tmp_path, capsys):
    short = tmp_path / "short"
    shutil.copytree(run, short)
    for k in range(3, EPOCHS + 1):
        (short / f"epoch_{k}.pt").unlink()
    out = tmp_path / "t"
    for target, needle in [(short, "holds 2 epoch checkpoints (epoch_<k>.pt); the PCA of a trajectory needs at "
                                   "least 3: train with --save-all"),
                           (run / "last.pt", "needs a run folder")]:
        assert main(["landscape", "trajectory", str(target), "--limit", "16", "--device", "cpu", "-o",
                     str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err
        assert not list(tmp_path.glob("t*"))  # nothing written
