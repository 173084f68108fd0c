"""The report page a researcher reads first (#28): every value it shows equals what the run folders hold.

Results first (final / best validation top-1 and loss, best epoch, epochs run) then the options that differ, as
the run used them (env.yaml's effective values, "used (configured X)" where they differ, floats printed exactly);
a one-epoch run drawn with markers; a sweep drawn per setting (median over seeds in a min-max band, seeds
hidden); each run's context; and, in headless Chromium at 1400 px, the results on screen without scrolling.

Run folders are written by hand (only their files matter), except one real one-epoch training whose env.yaml
the trainer writes."""
import shutil
import time
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import yaml

import basinlab
from basinlab.records.report import page, write_report
from basinlab.records.report_data import read_run_data, run_table
from basinlab.records.results import FIRST_COLUMNS
from basinlab.sweep import stored_spec
from basinlab.sweep.report import gather

pytest.importorskip("bokeh")
RESULTS = ["final val top-1 %", "best val top-1 %", "final val loss", "best val loss", "best epoch", "epochs run"]
EXTRA_OPTIONS = 30  # the issue's page had ~35 option columns before the results: as many here


def _results_csv(path, epochs: int, rng, lr: float) -> None:
    """A results.csv of random measurements (full-precision floats)."""
    rows = [{"epoch": e, "lr": lr, "train_loss": rng.uniform(0.1, 2.5), "train_acc1": rng.uniform(5, 99),
             "train_acc5": rng.uniform(50, 100), "val_loss": rng.uniform(0.1, 2.5), "val_acc1": rng.uniform(5, 99),
             "val_acc5": rng.uniform(50, 100), "epoch_time_s": rng.uniform(0.5, 90),
             "train_images_per_s": rng.uniform(100, 20000), "val_time_s": rng.uniform(0.1, 5)}
            for e in range(1, epochs + 1)]
    pd.DataFrame(rows, columns=FIRST_COLUMNS).to_csv(path / "results.csv", index=False)


def _run_folder(path, config: dict, env: dict, epochs: int, rng, lr: float):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (path / "env.yaml").write_text(yaml.safe_dump(env, sort_keys=False))
    _results_csv(path, epochs, rng, lr)
    return path


CONFIG = {"model": "mnist", "dataset": "mnist5k", "train-limit": 64, "val-limit": None, "epochs": 3,
          "batch-size": None, "optimizer": "sgd", "lr": 0.1, "momentum": None, "weight-decay": 0.0, "afwd": None,
          "channels-last": "auto", "adjust-lr": False, "seed": 0, "results-dir": "results", "save": "x"}
ENV = {"basinlab": "0.2.0", "git_commit": "0123456789abcdef0123456789abcdef01234567",
       "started": "2026-12-01T10:11:12"}
# two resumes, at other commits; a damaged entry (not a mapping) is left out, one without a commit shows "?"
RESUMES = [{"started": "2026-12-02T08:00:00", "git_commit": "fedcba9876543210fedcba9876543210fedcba98",
            "epoch": 1, "batch_in_epoch": 0, "global_step": 12}, "damaged", {"started": "2026-12-03T08:00:00"}]
EFFECTIVE = {"dataset": "mnist5k", "model": "MNIST convnet (2x conv5x5 16/32, FC 128), norm=batch, 0.22M params",
             "epochs": 3, "batch_size": 32, "train_examples": 64, "val_examples": 500, "optimizer": "SGD",
             "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "wd_filter": "all", "amp": "none",
             "channels_last": True, "step": "plain", "device": "cpu", "processes": 1}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """adjusted: --adjust-lr (configured 0.1, used 0.0105), afwd 0.9990234375; old: no effective (lr unset,
    0.05 in results.csv); one: a real one-epoch training; sw: a sweep of 2 settings x 3 seeds, one seed a
    shorter run."""
    rng = np.random.default_rng(28)
    root = tmp_path_factory.mktemp("report28")
    extra = {f"option-{i:02d}": f"value {i} of" for i in range(EXTRA_OPTIONS)}
    adjusted = _run_folder(root / "adjusted", {**CONFIG, "adjust-lr": True, "afwd": 0.9990234375,
                                               **{k: f"{v} adjusted" for k, v in extra.items()}},
                           {**ENV, "effective": {**EFFECTIVE, "lr": 0.0105}, "resumes": RESUMES}, 3, rng, 0.0105)
    old = _run_folder(root / "old", {**CONFIG, "lr": None, "afwd": 0.999, **{k: f"{v} old" for k, v in extra.items()}},
                      ENV, 2, rng, 0.05)
    sweep = root / "sw"
    (sweep / ".sweep").mkdir(parents=True)
    (sweep / ".sweep" / "spec.yaml").write_text(yaml.safe_dump(
        {"base": {"train_limit": 64, "epochs": 3}, "grid": {"lr": [0.01, 0.02]}, "seeds": [0, 1, 2]}))
    for i, run in enumerate(stored_spec(sweep).runs):
        lr = run.values["lr"]
        _run_folder(sweep / run.name, {**CONFIG, "lr": lr, "seed": run.seed, "save": run.name},
                    {**ENV, "effective": {**EFFECTIVE, "lr": lr}}, 2 if i == 4 else 3, rng, lr)
        (sweep / ".sweep" / f"{run.name}.json").write_text('{"status": "done"}')
    with pytest.MonkeyPatch.context() as patch:  # the engine's PNG plots are not what is tested here
        patch.setattr("basinlab.records.plots.plot_run", lambda *args, **kwargs: [])
        basinlab.train(train_limit=64, val_limit=64, batch_size=32, epochs=1, quiet=True, results_dir=str(root),
                       save="one")
    runs, sweeps = gather([adjusted, old, root / "one", sweep])
    report = write_report(runs, root / "report.html", sweeps, title="report")
    return {"root": root, "runs": runs, "sweeps": sweeps, "report": report, "html": report.read_text()}


class _Tables(HTMLParser):
    """The page's plain-HTML tables by id: header rows (th cells) and rows of {column: cell attributes + text}."""

    def __init__(self, text: str):
        super().__init__()
        self.tables, self._table, self._row, self._cell = {}, None, None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), {"head": [], "rows": []})
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {**attrs, "tag": tag, "text": ""}

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if all(cell["tag"] == "th" for cell in self._row):
                self._table["head"].append([cell["text"] for cell in self._row])
            else:
                self._table["rows"].append({cell["data-col"]: cell for cell in self._row})
            self._row = None
        elif tag == "table":
            self._table = None


def _rows(text: str, table: str) -> dict:
    """{run name: {column: cell}} of one table."""
    parsed = _Tables(text).tables[table]
    return {row["run"]["text"].lstrip("\u25a0"): row for row in parsed["rows"]}


def test_the_page_starts_with_the_results_of_every_run_as_results_csv_holds_them(folders):
    text, runs = folders["html"], folders["runs"]
    tables = _Tables(text).tables
    # right under the title, before anything Bokeh draws
    assert text.index("<h2") < text.index('id="runs"') < text.index("data-root-id")
    groups, names = tables["runs"]["head"]
    assert groups[:2] == ["run", "results"] and names[:len(RESULTS)] == RESULTS
    assert f"option-{EXTRA_OPTIONS - 1:02d}" in names  # the options follow the results
    rows = _rows(text, "runs")
    assert list(rows) == [run.name for run in runs]
    for run in runs:
        history = pd.read_csv(run.path / "results.csv")
        best = history["val_acc1"].idxmax()
        expected = {"final val top-1 %": history["val_acc1"].iloc[-1], "best val top-1 %": history["val_acc1"].max(),
                    "final val loss": history["val_loss"].iloc[-1], "best val loss": history["val_loss"].min(),
                    "best epoch": history["epoch"][best], "epochs run": history["epoch"].iloc[-1],
                    "final train loss": history["train_loss"].iloc[-1]}
        for column, value in expected.items():
            cell = rows[run.name][column]
            assert float(cell["data-value"]) == value, (run.name, column)
            assert cell["text"] == (str(value) if column in ("best epoch", "epochs run") else f"{value:.4g}")


def test_options_show_the_value_used_and_the_configured_one_where_they_differ(folders):
    rows = _rows(folders["html"], "runs")
    effective = yaml.safe_load((folders["root"] / "one" / "env.yaml").read_text())["effective"]
    adjusted, old, one = rows["adjusted"], rows["old"], rows["one"]
    # --adjust-lr: the lr used, and the configured one beside it
    assert adjusted["lr"]["text"] == "0.0105 (configured 0.1)" and "overridden" in adjusted["lr"]["class"]
    # an older run without env.yaml's effective: its lr unset, the lr of its first epoch in results.csv
    assert old["lr"]["text"] == "0.05" and "resolved" in old["lr"]["class"]
    # a real run's unset lr and batch size: the values the trainer recorded, printed exactly
    assert one["lr"]["text"] == repr(effective["lr"]) and "resolved" in one["lr"]["class"]
    assert adjusted["batch-size"]["text"] == "32" and "resolved" in adjusted["batch-size"]["class"]
    assert one["batch-size"]["text"] == str(effective["batch_size"])
    assert adjusted["momentum"]["text"] == "0.9" and old["momentum"]["text"] == ""  # not recorded: blank
    # exact floats: 0.9990234375 is not 0.999
    assert adjusted["afwd"]["text"] == "0.9990234375" and old["afwd"]["text"] == "0.999"
    # what the config asks for in other words (sgd / SGD) is no difference
    assert adjusted["optimizer"]["text"] == "SGD" and "class" not in adjusted["optimizer"]
    assert one["optimizer"]["text"] == effective["optimizer"]
    assert "model" not in rows["adjusted"] and "save" not in rows["adjusted"]
    table = run_table([read_run_data(folders["root"] / name) for name in ("adjusted", "old")]).set_index("run")
    assert table.loc["adjusted", "lr"] == "0.0105 (configured 0.1)" and table.loc["old", "lr"] == 0.05
    assert table.loc["adjusted", "afwd"] == 0.9990234375 and table.loc["adjusted", "batch-size"] == 32


def test_the_context_of_each_run_is_its_env_yaml_and_results_csv(folders):
    rows = _rows(folders["html"], "context")
    for run in folders["runs"]:
        history = pd.read_csv(run.path / "results.csv")
        env = yaml.safe_load((run.path / "env.yaml").read_text())
        config = yaml.safe_load((run.path / "config.yaml").read_text())
        effective, row = env.get("effective", {}), rows[run.name]
        assert row["train examples"]["text"] == str(effective.get("train_examples", ""))
        assert row["val examples"]["text"] == str(effective.get("val_examples", ""))
        assert row["train-limit"]["text"] == str(config["train-limit"])
        assert row["val-limit"]["text"] == (str(config["val-limit"]) if config["val-limit"] else "all")
        seconds = history["epoch_time_s"].sum()
        assert float(row["training time"]["data-value"]) == pytest.approx(seconds, rel=1e-12)
        minutes, secs = divmod(int(round(seconds)), 60)
        assert row["training time"]["text"] == (f"{seconds:.3g} s" if seconds < 60 else f"{minutes} min {secs:02d} s")
        assert float(row["median train images/s"]["data-value"]) == history["train_images_per_s"].median()
        for column, key in (("basinlab", "basinlab"), ("git commit", "git_commit"), ("started", "started")):
            assert row[column]["text"] == env[key]
        resumed = [entry.get("git_commit", "?")[:7] + (f" at step {entry['global_step']}" if "global_step" in entry
                                                       else "") for entry in env.get("resumes", [])
                   if isinstance(entry, dict)]
        assert row["resumed at"]["text"] == ", ".join(resumed)
        assert row["model"]["text"] == effective.get("model", config["model"])
        assert row["folder"]["text"] == str(run.path)
    assert rows["adjusted"]["resumed at"]["text"] == "fedcba9 at step 12, ?" and rows["one"]["resumed at"]["text"] == ""


def _renderers(layout, *tags):
    from bokeh.models import GlyphRenderer
    return [r for r in layout.select({"type": GlyphRenderer}) if r.tags[:len(tags)] == list(tags)]


def test_a_one_epoch_run_is_drawn_as_markers(folders):
    run = next(run for run in folders["runs"] if run.name == "one")
    history = pd.read_csv(run.path / "results.csv")
    assert len(history) == 1
    layout = page([run], [], "one")
    markers = [r for r in _renderers(layout, "run:one") if type(r.glyph).__name__ == "Scatter"]
    points = [(list(r.data_source.data["x"]), list(r.data_source.data["y"])) for r in markers]
    for y in (history["train_loss"], history["val_loss"], 100.0 - history["val_acc1"], history["lr"]):
        assert ([1.0], [float(y.iloc[0])]) in points


def test_a_sweep_is_drawn_per_setting_as_its_median_in_a_min_max_band(folders):
    runs, (sweep,) = folders["runs"], folders["sweeps"]
    layout = page(runs, [sweep], "t")
    colours = set()
    for setting, members in sweep.members.items():
        key = f"setting:{sweep.name}/{setting}"
        histories = [pd.read_csv(folder / "results.csv") for folder in members]
        assert len(histories) == 3
        bands = [r for r in _renderers(layout, key) if type(r.glyph).__name__ == "VArea"]
        drawn = [(list(r.data_source.data["y"]), list(r.data_source.data["min"]), list(r.data_source.data["max"]))
                 for r in bands]
        for column, error in (("train_loss", False), ("val_loss", False), ("val_acc1", True), ("train_acc1", True)):
            values = pd.concat([h.assign(v=100.0 - h[column] if error else h[column]) for h in histories])
            per_epoch = values.groupby("epoch")["v"]  # over the seeds that have the epoch
            assert (list(per_epoch.median()), list(per_epoch.min()), list(per_epoch.max())) in drawn, column
        seeds_per_epoch = [list(r.data_source.data["n"]) for r in bands]
        assert all(n == [3, 3, sum(len(h) == 3 for h in histories)] for n in seeds_per_epoch)  # a seed has 2
        setting_colours = {r.glyph.line_color for r in _renderers(layout, key) if hasattr(r.glyph, "line_color")}
        setting_colours |= {r.glyph.fill_color for r in bands}
        assert len(setting_colours) == 1  # one colour per setting
        colours |= setting_colours
        for folder, history in zip(members, histories):  # each seed: drawn, hidden until asked for
            seeds = _renderers(layout, f"seed:{folder.name}", key)
            assert seeds and not any(r.visible for r in seeds)
            assert list(history["val_loss"]) in [list(r.data_source.data["y"]) for r in seeds]
    own = {r.glyph.line_color for name in ("adjusted", "old", "one") for r in _renderers(layout, f"run:{name}")}
    assert len(colours) == 2 and len(own) == 3 and not own & colours  # a colour per run and per setting
    assert not any(r.tags and r.tags[0].startswith("run:lr_") for r in _renderers(layout))  # seeds are no runs
    assert "statistics over seeds" in folders["html"] and "final validation top-1 of every seed" in folders["html"]


# ------------------------------------------------------------------------------------- in a real browser
def _browser(width: int, height: int):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no chromium / chromedriver here (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.binary_location = chromium
    return webdriver.Chrome(service=Service(driver), options=options)


ON_SCREEN = """const view = {w: document.documentElement.clientWidth, h: document.documentElement.clientHeight};
const cells = [...document.querySelectorAll('#runs td[data-col="final val top-1 %"],'
  + ' #runs td[data-col="best val top-1 %"], #runs td[data-col="run"]')];
const off = cells.filter((c) => { const r = c.getBoundingClientRect();
  return r.left < 0 || r.top < 0 || r.right > view.w || r.bottom > view.h || r.width === 0; });
const box = document.querySelector('#runs').parentElement;
return {cells: cells.length, off: off.map((c) => c.textContent), scrollX: window.scrollX, scrollY: window.scrollY,
        page: document.documentElement.scrollWidth, view: view.w, box: box.clientWidth, table: box.scrollWidth,
        runLeft: cells[0].getBoundingClientRect().left};"""


def test_the_results_are_on_screen_at_1400_px_without_scrolling(folders):
    browser = _browser(1400, 900)
    try:
        browser.get(folders["report"].as_uri())
        deadline = time.monotonic() + 60
        while not browser.execute_script("return document.querySelector('#runs') !== null && "
                                          "window.Bokeh !== undefined && Bokeh.documents.length > 0"):
            assert time.monotonic() < deadline, "the page never loaded"
            time.sleep(0.2)
        seen = browser.execute_script(ON_SCREEN)
        assert seen["cells"] == 3 * len(folders["runs"]) and seen["off"] == []
        assert seen["scrollX"] == 0 and seen["scrollY"] == 0
        # the options scroll inside their box, not the page, and the run column stays put when they do
        assert seen["table"] > seen["box"] and seen["page"] <= seen["view"]
        browser.execute_script("document.querySelector('#runs').parentElement.scrollLeft = 100000")
        scrolled = browser.execute_script(ON_SCREEN)
        assert scrolled["runLeft"] == seen["runLeft"]
        assert not set(scrolled["off"]) & {f"\u25a0{run.name}" for run in folders["runs"]}
        browser.save_screenshot(str(folders["root"] / "report.png"))
    finally:
        browser.quit()
