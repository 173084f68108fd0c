"""The report page draws each run's live sharpness (sharpness-steps.csv, --log-sharpness-every-steps, #30): the
figure's lines equal the file's columns (a run's line; a sweep setting's median in its min-max band), the threshold
dashed in the run's colour, the last lambda_max / threshold in the table of runs; runs without the file draw no such
figure; a damaged file is one line, exit 2.

Run folders are written by hand (only their files matter): a real run with the option takes ~20 s on this CPU."""
import numpy as np
import pandas as pd
import pytest
import yaml

from basinlab.cli import main
from basinlab.records.report import page, page_entries, sharpness_figure, write_report
from basinlab.records.report_data import EDGE_COLUMN, read_run_data, run_table
from basinlab.records.results import FIRST_COLUMNS
from basinlab.sweep import stored_spec
from basinlab.sweep.report import gather

pytest.importorskip("bokeh")
TITLE = "sharpness against its edge"
COLUMNS = ["step", "epoch", "lr", "lambda_max", "batch_sharpness", "preconditioned_sharpness", "threshold",
           "lambda_max_over_threshold", "batch_sharpness_over_threshold", "preconditioned_over_threshold",
           "hvp_count", "seconds", "gradient_seconds"]


def _run_folder(path, rng, lr: float = 0.1, seed: int = 0):
    path.mkdir(parents=True)
    config = {"model": "mnist", "dataset": "mnist5k", "train-limit": 128, "epochs": 2, "optimizer": "sgd", "lr": lr,
              "seed": seed, "save": path.name}
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rows = [{column: rng.uniform(0.1, 2.0) for column in FIRST_COLUMNS} | {"epoch": e, "lr": lr} for e in (1, 2)]
    pd.DataFrame(rows, columns=FIRST_COLUMNS).to_csv(path / "results.csv", index=False)
    return path


def _sharpness_csv(path, rng, lr: float = 0.1, adam: bool = False, negative: bool = False) -> pd.DataFrame:
    """Measurements every 3 steps of 4 steps an epoch: random sharpnesses, the threshold 2/lr (38/lr for Adam)."""
    steps = np.arange(0, 9, 3)
    top, batch = rng.uniform(1, 50, len(steps)), rng.uniform(0.5, 20, len(steps))
    if negative:
        batch[1] = -batch[1]
    preconditioned = rng.uniform(100, 900, len(steps)) if adam else np.full(len(steps), np.nan)
    edge = (38.0 if adam else 2.0) / lr
    frame = pd.DataFrame({"step": steps, "epoch": steps / 4, "lr": lr, "lambda_max": top, "batch_sharpness": batch,
                          "preconditioned_sharpness": preconditioned, "threshold": edge,
                          "lambda_max_over_threshold": np.nan if adam else top / edge,
                          "batch_sharpness_over_threshold": np.nan if adam else batch / edge,
                          "preconditioned_over_threshold": preconditioned / edge, "hvp_count": 10,
                          "seconds": rng.uniform(0.1, 1, len(steps)), "gradient_seconds": 0.01}, columns=COLUMNS)
    frame.to_csv(path / "sharpness-steps.csv", index=False)
    return frame


def _figure(layout):
    from bokeh.plotting import figure
    found = [fig for fig in layout.select({"type": figure}) if fig.title.text.startswith(TITLE)]
    assert len(found) <= 1
    return found[0] if found else None


def _lines(fig, *tags):
    return [r for r in fig.renderers if r.tags[:len(tags)] == list(tags) and type(r.glyph).__name__ == "Line"]


def _drawn(lines) -> list:
    return [(list(r.data_source.data["x"]), list(r.data_source.data["y"])) for r in lines]


def test_a_runs_sharpness_is_drawn_against_its_edge_and_runs_without_draw_none(tmp_path):
    rng = np.random.default_rng(30)
    sgd, plain = _run_folder(tmp_path / "sgd", rng), _run_folder(tmp_path / "plain", rng)
    adam = _run_folder(tmp_path / "adam", rng, lr=0.001)
    written = {"sgd": _sharpness_csv(sgd, rng), "adam": _sharpness_csv(adam, rng, lr=0.001, adam=True)}
    runs = [read_run_data(folder) for folder in (sgd, plain, adam)]
    fig = _figure(page(runs, [], "t"))
    assert fig.y_scale.__class__.__name__ == "LogScale" and fig.xaxis.axis_label == "epoch"
    for name, frame in written.items():
        lines = _lines(fig, f"run:{name}")
        x = list(frame["epoch"])  # fractional epochs, as the per-step loss
        for column in ("lambda_max", "batch_sharpness", "threshold"):
            assert (x, list(frame[column])) in _drawn(lines), (name, column)
        dashed = [r for r in lines if r.glyph.line_dash == [6]]  # bokeh's "dashed"
        assert _drawn(dashed) == [(x, list(frame["threshold"]))]
        colours = {r.glyph.line_color for r in lines}
        assert len(colours) == 1  # the threshold in the run's colour
    assert (list(written["adam"]["epoch"]), list(written["adam"]["preconditioned_sharpness"])) in _drawn(
        _lines(fig, "run:adam"))
    assert len(_lines(fig, "run:sgd")) == 3  # SGD has no preconditioned sharpness: no empty line for it
    assert not [r for r in fig.renderers if r.tags and r.tags[0] == "run:plain"]  # no file, nothing drawn
    # the table: the last lambda_max / threshold (Adam: the preconditioned one), blank without the file
    table = run_table(runs).set_index("run")
    assert table.loc["sgd", EDGE_COLUMN] == written["sgd"]["lambda_max_over_threshold"].iloc[-1]
    assert table.loc["adam", EDGE_COLUMN] == written["adam"]["preconditioned_over_threshold"].iloc[-1]
    assert table.loc["plain", EDGE_COLUMN] is None
    text = write_report(runs, tmp_path / "r.html").read_text()
    assert TITLE in text and f'data-value="{float(written["sgd"]["lambda_max_over_threshold"].iloc[-1])!r}"' in text


def test_without_any_sharpness_file_the_page_has_no_such_figure_nor_column(tmp_path):
    runs = [read_run_data(_run_folder(tmp_path / "plain", np.random.default_rng(1)))]
    assert _figure(page(runs, [], "t")) is None and EDGE_COLUMN not in run_table(runs).columns
    assert main(["report", str(tmp_path / "plain"), "-o", str(tmp_path / "r.html")]) == 0
    text = (tmp_path / "r.html").read_text()
    assert TITLE not in text and EDGE_COLUMN not in text


def test_a_negative_batch_sharpness_keeps_a_linear_axis(tmp_path):
    rng = np.random.default_rng(2)
    folder = _run_folder(tmp_path / "neg", rng)
    frame = _sharpness_csv(folder, rng, negative=True)
    fig = sharpness_figure(page_entries([read_run_data(folder)], []))  # the figure alone: page() is drawn above
    assert fig.y_scale.__class__.__name__ == "LinearScale"
    assert (list(frame["epoch"]), list(frame["batch_sharpness"])) in _drawn(_lines(fig, "run:neg"))


def test_a_sweep_setting_draws_the_median_of_its_seeds_in_a_min_max_band(tmp_path):
    rng = np.random.default_rng(3)
    sweep = tmp_path / "sw"
    (sweep / ".sweep").mkdir(parents=True)
    (sweep / ".sweep" / "spec.yaml").write_text(yaml.safe_dump(
        {"base": {"train_limit": 128, "epochs": 2}, "grid": {"lr": [0.05, 0.1]}, "seeds": [0, 1, 2]}))
    frames = {}
    for run in stored_spec(sweep).runs:
        folder = _run_folder(sweep / run.name, rng, lr=run.values["lr"], seed=run.seed)
        if run.values["lr"] == 0.1:  # the other setting ran without the option
            frames[run.name] = _sharpness_csv(folder, rng, lr=0.1)
        (sweep / ".sweep" / f"{run.name}.json").write_text('{"status": "done"}')
    runs, sweeps = gather([sweep])
    fig = sharpness_figure(page_entries(runs, sweeps))
    keys = {r.tags[0] for r in fig.renderers if r.tags}
    (key,) = {k for k in keys if k.startswith("setting:")}
    assert key.endswith("0.1")
    bands = [r for r in fig.renderers if r.tags == [key] and type(r.glyph).__name__ == "VArea"]
    drawn = [(list(r.data_source.data["y"]), list(r.data_source.data["min"]), list(r.data_source.data["max"]))
             for r in bands]
    values = pd.concat(frames.values())
    for column in ("lambda_max", "batch_sharpness", "threshold"):
        per_step = values.groupby("epoch")[column]
        assert (list(per_step.median()), list(per_step.min()), list(per_step.max())) in drawn, column
    for name, frame in frames.items():  # each seed: its own line, hidden until asked for
        seeds = _lines(fig, f"seed:{name}", key)
        assert not any(r.visible for r in seeds) and list(frame["lambda_max"]) in [y for _, y in _drawn(seeds)]


@pytest.mark.parametrize("text, message", [
    ("step,epoch,lr\n0,0.0,0.1\n", "lacks the column(s) lambda_max, threshold"),
    ("step,epoch,lambda_max,threshold\n0,0.0,oops,20\n", "column lambda_max holds text where numbers belong"),
])
def test_a_damaged_sharpness_file_is_one_line_exit_2(tmp_path, capsys, text, message):
    folder = _run_folder(tmp_path / "run", np.random.default_rng(4))
    (folder / "sharpness-steps.csv").write_text(text)
    assert main(["report", str(folder), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "sharpness-steps.csv" in err
    assert not (tmp_path / "r.html").exists()


def test_a_file_without_measurements_yet_draws_nothing(tmp_path):
    folder = _run_folder(tmp_path / "run", np.random.default_rng(5))
    (folder / "sharpness-steps.csv").write_text(",".join(COLUMNS) + "\n")
    assert read_run_data(folder).sharpness is None
