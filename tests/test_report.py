"""`basinlab report` and `train --report`: the table of differing options, the data the page embeds (checked
against each run's results.csv), sweeps, bad input, and the page itself in headless Chromium."""
import io
import shutil
import time

import numpy as np
import pandas as pd
import pytest

import basinlab
from basinlab.cli import main
from basinlab.records.report import page, palette, write_report
from basinlab.records.report_data import differing_options, flatten, read_run_data, run_table

pytest.importorskip("bokeh")
SMALL = {"train_limit": 256, "val_limit": 128, "batch_size": 64, "epochs": 2, "quiet": True}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, no_run_plots_in_module):
    """Two real runs: different lr; the second logs steps (-p) and lambda_max (a method column)."""
    out = tmp_path_factory.mktemp("runs")
    basinlab.train(**SMALL, lr=0.01, results_dir=str(out), save="slow")
    basinlab.train(**SMALL, lr=0.05, print_freq=2, log_sharpness_every=1, sharpness_batches=1,
                   results_dir=str(out), save="fast")
    return out


def test_differing_options_are_those_not_equal_in_every_run():
    configs = {"a": {"lr": 0.1, "model": "f1", "model-config": {"depth": 20, "norm": "batch"}, "save": "a"},
               "b": {"lr": 0.1, "model": "f1", "model-config": {"depth": 32, "norm": "batch"}, "save": "b",
                     "sam": 0.05}}
    # save names the folder (never compared); a key missing from one run differs; nested keys are flattened
    assert differing_options(configs) == ["model-config.depth", "sam"]
    assert differing_options({"a": configs["a"]}) == []
    assert differing_options({"a": configs["a"], "c": dict(configs["a"])}) == []
    assert flatten({"x": {"y": {"z": 1}}, "w": []}) == {"x.y.z": 1, "w": []}


def test_the_run_table_has_the_differing_options_and_each_runs_results(two_runs):
    runs = [read_run_data(two_runs / name) for name in ("slow", "fast")]
    table = run_table(runs).set_index("run")
    assert {"lr", "print-freq"} & set(table.columns) == {"lr"}  # print-freq changes nothing computed
    assert "log-sharpness-every" in table.columns and "model" not in table.columns
    for name in ("slow", "fast"):
        history = pd.read_csv(two_runs / name / "results.csv")
        row = table.loc[name]
        assert row["final val top-1 %"] == history["val_acc1"].iloc[-1]
        assert row["best val top-1 %"] == history["val_acc1"].max()
        assert row["best epoch"] == history.loc[history["val_acc1"].idxmax(), "epoch"]
        assert row["epochs run"] == 2 and row["final val loss"] == history["val_loss"].iloc[-1]
    assert table.loc["fast", "lr"] == 0.05 and table.loc["slow", "lr"] == 0.01


def _lines(layout, tag):
    from bokeh.models import GlyphRenderer
    return [r for r in layout.select({"type": GlyphRenderer}) if r.tags == [tag]]


def test_the_page_embeds_every_runs_curves_exactly(two_runs):
    runs = [read_run_data(two_runs / name) for name in ("slow", "fast")]
    layout = page(runs, [], "t")
    for run in runs:
        history = pd.read_csv(run.path / "results.csv")
        ys = [list(r.data_source.data["y"]) for r in _lines(layout, f"run:{run.name}")]
        assert list(history["train_loss"]) in ys and list(history["val_loss"]) in ys
        assert list(100.0 - history["val_acc1"]) in ys and list(history["lr"]) in ys
    steps = pd.read_csv(two_runs / "fast" / "steps.csv")
    fast = [list(r.data_source.data["y"]) for r in _lines(layout, "run:fast")]
    assert list(steps["loss"]) in fast
    measured = pd.read_csv(two_runs / "fast" / "results.csv")["lambda_max"].dropna()
    assert list(measured) in fast and list(measured) not in [list(r.data_source.data["y"])
                                                             for r in _lines(layout, "run:slow")]


def test_the_file_is_self_contained(two_runs, tmp_path):
    path = write_report([read_run_data(two_runs / "slow")], tmp_path / "r.html")
    text = path.read_text()
    assert "<script src=" not in text and "cdn.bokeh.org" not in text  # BokehJS inlined
    assert "run:slow" in text and len(text) > 200_000


def test_a_sweep_folder_brings_its_runs_its_table_and_its_seeds(finished_sweep, tmp_path):
    """The session's finished sweep (conftest.py: 2 lr x 2 seeds), read only."""
    from basinlab.sweep.report import gather
    runs, sweeps = gather([finished_sweep])
    assert sorted(run.name for run in runs) == ["lr_0.001-s0", "lr_0.001-s1", "lr_0.003-s0", "lr_0.003-s1"]
    written = pd.read_csv(finished_sweep / "summary.csv")
    pd.testing.assert_frame_equal(sweeps[0].summary.reset_index(drop=True), written, check_dtype=False)
    assert sorted(sweeps[0].runs["run"]) == sorted(run.name for run in runs)
    assert main(["report", str(finished_sweep), "-o", str(tmp_path / "r.html")]) == 0
    assert "statistics over seeds" in (tmp_path / "r.html").read_text()


def test_a_folder_of_runs_and_sweeps_brings_every_one_inside_it(finished_sweep, tmp_path):
    """An experiment's runs/ (a sweep, and a folder of runs such as autoHyper's searches) given as one folder."""
    from basinlab.sweep.report import gather
    holder = tmp_path / "runs"
    shutil.copytree(finished_sweep, holder / "grid")
    shutil.copytree(finished_sweep / "lr_0.001-s0", holder / "search" / "trials" / "lr=0.001")
    runs, sweeps = gather([holder])
    assert [t.name for t in sweeps] == ["runs/grid"] and len(runs) == 5
    assert "lr=0.001" in [run.name for run in runs]
    (tmp_path / "deep" / "a" / "b" / "c").mkdir(parents=True)   # a run more than three levels down is not sought
    shutil.copytree(finished_sweep / "lr_0.001-s0", tmp_path / "deep" / "a" / "b" / "c" / "run")
    assert main(["report", str(tmp_path / "deep"), "-o", str(tmp_path / "r.html")]) == 2


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "is not a folder"),
    (lambda p: p, "holds none within 3 levels"),
])
def test_bad_folders_are_one_line_exit_2(tmp_path, capsys, make, message):
    assert main(["report", str(make(tmp_path)), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "r.html").exists()


def test_train_report_refreshes_report_html_only_when_asked(tmp_path, no_run_plots):
    basinlab.train(**SMALL, report=True, results_dir=str(tmp_path), save="with")
    basinlab.train(**SMALL, results_dir=str(tmp_path), save="without")
    assert "run:with" in (tmp_path / "with" / "report.html").read_text()
    assert not (tmp_path / "without" / "report.html").exists()


# ------------------------------------------------------------------------------------- in a real browser
def _browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium / chromedriver here (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,2400"):
        options.add_argument(flag)
    options.binary_location = chromium
    return webdriver.Chrome(service=Service(driver), options=options)


VISIBILITY = """const shown = {};
for (const m of Bokeh.documents[0].all_models) {
  const tag = (m.tags || []).find((t) => typeof t === "string" && t.startsWith("run:"));
  if (tag) { shown[tag] = (shown[tag] || []).concat([m.visible]); }
}
return shown;"""
TOGGLE_ELEMENT = """function* walk(view) {
  yield view;
  for (const child of (view.child_views || [])) yield* walk(child);
}
const toggle = Bokeh.documents[0].get_model_by_name("run-toggle");
for (const root of Object.values(Bokeh.index)) for (const view of walk(root)) if (view.model === toggle) return view.el;
return null;"""


def _pixels(browser, colour: str, below: int) -> int:
    """Screen pixels of exactly this colour below the checkboxes (the figures; above them the colour key names
    each run in its colour): a run's lines are drawn in its own palette colour."""
    from PIL import Image
    image = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB"))[below:]
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((image.reshape(-1, 3) == rgb).all(axis=1).sum())


def test_the_page_in_headless_chromium_draws_every_run_and_a_checkbox_hides_one(two_runs, tmp_path):
    from selenium.webdriver.common.by import By
    path = write_report([read_run_data(two_runs / n) for n in ("slow", "fast")], tmp_path / "report.html")
    browser = _browser()
    try:
        browser.get(path.as_uri())
        deadline = time.monotonic() + 60
        while not browser.execute_script("return window.Bokeh !== undefined && Bokeh.documents.length > 0 "
                                          "&& Object.keys(Bokeh.index).length > 0"):
            assert time.monotonic() < deadline, "the page never rendered"
            time.sleep(0.2)
        time.sleep(1.0)  # let the canvases paint
        colours = dict(zip(("slow", "fast"), palette(2)))
        shown = browser.execute_script(VISIBILITY)
        assert set(shown) == {"run:slow", "run:fast"} and all(all(v) for v in shown.values())
        toggle = browser.execute_script(TOGGLE_ELEMENT)
        below = int(toggle.rect["y"] + toggle.rect["height"])
        assert all(_pixels(browser, c, below) > 100 for c in colours.values())  # each run's lines are on screen
        boxes = toggle.shadow_root.find_elements(By.CSS_SELECTOR, "input")
        assert len(boxes) == 2
        boxes[1].click()  # untick "fast"
        time.sleep(0.5)
        shown = browser.execute_script(VISIBILITY)
        assert not any(shown["run:fast"]) and all(shown["run:slow"])
        assert _pixels(browser, colours["fast"], below) == 0 and _pixels(browser, colours["slow"], below) > 100
        browser.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 10_000
    finally:
        browser.quit()
