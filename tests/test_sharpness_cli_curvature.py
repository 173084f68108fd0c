"""`basinlab sharpness` wiring of the per-layer spectra, the most negative eigenvalue and the Gauss-Newton /
Fisher curvature (issue #30 item 2). The metrics themselves are tested in test_hessian_blocks.py and
test_curvature.py; here: the CLI writes their rows, with the metric's own numbers, and refuses bad combinations."""
import pandas as pd
import pytest
import torch

import basinlab
from basinlab.analysis.data import measurement_data
from basinlab.analysis.measure import COLUMNS, model_and_criterion
from basinlab.cli import main
from basinlab.metrics.sharpness import (
    block_spectra,
    curvature_eigenvalues,
    curvature_trace,
    empirical_fisher_trace,
    min_eigenvalue,
    parameter_blocks,
)

CPU = torch.device("cpu")
BUDGET = ["--max-iter", "3", "-b", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, no_run_plots_in_module):
    run = basinlab.train(model_config="{'width': 4, 'hidden': 16}", train_limit=96, val_limit=32, batch_size=32,
                         epochs=1, quiet=True, results_dir=str(tmp_path_factory.mktemp("ck")), save="tiny")
    return run.path


def _measured(run):
    """The model, criterion and data the command measures (the run's 96 training examples, batches of 32)."""
    model, cfg, criterion = model_and_criterion(run, CPU)
    return model, criterion, list(measurement_data(cfg, "train", batch_size=32, device=CPU))


def test_cli_writes_the_curvature_rows_with_the_metrics_numbers(tiny_run, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(["sharpness", str(tiny_run), "--measure", "min-eigenvalue", "gauss-newton", "fisher", "--fisher",
                 "exact", "mc", "empirical", "--per-layer", "--top-k", "2", *BUDGET, "-o", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == COLUMNS
    assert list(frame["measure"].unique()) == ["loss", "min-eigenvalue", "gauss-newton", "fisher", "per-layer"]
    assert (frame.loc[frame["measure"] != "loss", "hessian_mode"] == "eval").all()
    model, criterion, data = _measured(tiny_run)

    (lam_min,) = frame.query("measure == 'min-eigenvalue'")["value"]
    direct = min_eigenvalue(model, criterion, data, max_iter=3, tol=1e-4)
    assert lam_min == pytest.approx(direct.values[0], rel=1e-6) and lam_min < 0  # a barely trained net: a saddle

    ggn = frame.query("measure == 'gauss-newton'")
    assert list(ggn["quantity"]) == ["lambda_1", "lambda_2", "trace"] and set(ggn["kind"]) == {"ggn"}
    eig = curvature_eigenvalues(model, criterion, data, "ggn", top_k=2, max_iter=3, tol=1e-4)
    assert list(ggn["value"][:2]) == pytest.approx(eig.values, rel=1e-6)
    assert (ggn["hvp_count"].iloc[:2] == eig.hvp_count).all()

    fisher = frame.query("measure == 'fisher'")
    assert list(fisher["kind"]) == ["fisher"] * 3 + ["fisher-mc"] * 3 + ["empirical-fisher"] * 3
    # the exact Fisher of cross-entropy is the GGN: the same operator, seed and numbers
    assert list(fisher["value"][:3]) == list(ggn["value"])
    mc = curvature_trace(model, criterion, data, "fisher-mc", max_iter=3, tol=1e-3, min_samples=3)
    assert fisher["value"].iloc[5] == pytest.approx(mc.trace, rel=1e-6)
    empirical = fisher.iloc[8]
    assert empirical["value"] == pytest.approx(empirical_fisher_trace(model, criterion, data), rel=1e-6)
    assert empirical["std_error"] == 0 and pd.isna(empirical["hvp_count"])  # exact, no products

    layers = frame.query("measure == 'per-layer'")
    blocks = parameter_blocks(model)
    assert list(layers["block"].unique()) == [name for name, _ in blocks]
    assert list(layers["quantity"]) == ["lambda_max", "trace"] * len(blocks)
    assert list(layers["n_params"][::2]) == [sum(p.numel() for p in ps) for _, ps in blocks]
    spectra = block_spectra(model, criterion, data, max_iter=3, trace_iter=3)
    assert list(layers["value"][::2]) == pytest.approx([b.lambda_max for b in spectra], rel=1e-6)
    assert list(layers["value"][1::2]) == pytest.approx([b.trace for b in spectra], rel=1e-6)
    printed = capsys.readouterr().out
    assert "features.0 (100 params): lambda_max = " in printed and "fisher-mc trace = " in printed


def test_block_depth_groups_by_module_path(tiny_run, tmp_path):
    out = tmp_path / "s.csv"
    assert main(["sharpness", str(tiny_run), "--measure", "hessian", "--per-layer", "--block-depth", "1", *BUDGET,
                 "-o", str(out)]) == 0
    layers = pd.read_csv(out).query("measure == 'per-layer'")
    assert list(layers["block"].unique()) == ["features", "classifier"]
    model, _, _ = _measured(tiny_run)
    assert layers["n_params"].iloc[::2].sum() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("args,needle", [
    (["--measure", "hessian", "--fisher", "exact"], "--fisher applies to --measure fisher only"),
    (["--measure", "fisher", "--fisher", "exact", "--mc-samples", "4"], "--mc-samples applies to --measure fisher "
                                                                        "with --fisher mc only"),
    (["--measure", "gauss-newton", "--block-depth", "2"], "--block-depth applies to --per-layer only"),
    (["--measure", "fisher", "--fisher", "true"], "--fisher: invalid choice"),
    (["--per-layer", "--block-depth", "0"], "--block-depth: must be an integer"),
    (["--measure", "fisher", "--fisher", "empirical", "--hessian-mode", "train"], "with --hessian-mode eval"),
])
def test_bad_combinations_exit_2_in_one_line(tiny_run, tmp_path, capsys, args, needle):
    out = tmp_path / "s.csv"
    assert main(["sharpness", str(tiny_run), *args, *BUDGET, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and not out.exists()
