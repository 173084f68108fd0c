"""report.html: runs and sweeps on one self-contained interactive page (Bokeh, as the seed framework's results.html).

    write_report(runs, path, sweeps=(), title="")   runs: RunData (report_data.py); sweeps: SweepTables

The page, top to bottom: a checkbox per run (unticking one hides its lines in every figure), the curves per
epoch (loss, top-1 error, lr; train dashed, validation solid, one colour per run) with zoom, pan and hover,
the per-step loss where steps.csv was written, one figure per method column of results.csv (delays,
lambda_max, SmoothOut strength, ...) and the low-rank means where lowrank.csv exists, the table of runs
(the options that differ between them, final and best metrics), and for each sweep its summary table and
every seed's final top-1 per setting. BokehJS and the data are inlined: the file opens without a network.
Every line a run draws carries the tag ``run:<name>``, which is how the checkboxes (and the tests) find them.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from basinlab.errors import ConfigError
from basinlab.records.report_data import RunData, run_table
from basinlab.utils.io import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

FIGURE = {"width": 620, "height": 330, "tools": "pan,box_zoom,wheel_zoom,reset,save"}
CURVES = (("loss", "loss", ("train_loss", "val_loss"), True),
          ("top-1 error (%)", "error", ("train_acc1", "val_acc1"), False),
          ("learning rate", "lr", ("lr",), True))
DASH = {"train": "dashed", "val": "solid"}
LEGEND_RUNS = 4  # legends inside figures up to this many runs (train and val: twice as many entries)


@dataclass
class SweepTables:
    """What a sweep adds to the page: its summary (summary.csv) and one row per finished run."""
    name: str
    summary: pd.DataFrame          # per setting: grid values, n, medians...
    runs: pd.DataFrame             # per run: setting, seed, run, final_val_acc1


def palette(n: int) -> list[str]:
    from bokeh.palettes import Category10_10, Category20_20, turbo
    return list(Category10_10[:n]) if n <= 10 else list(Category20_20[:n]) if n <= 20 else list(turbo(n))


def _tag(run: RunData) -> str:
    return f"run:{run.name}"


def _tagged(renderer, run: RunData):
    """Tag the renderer (not its glyph, where keyword tags would go) so that the checkboxes find it."""
    renderer.tags = [_tag(run)]
    return renderer


def _source(run: RunData, frame: pd.DataFrame, columns: dict):
    """A ColumnDataSource of x and the given columns, with the run's name for the hover text."""
    from bokeh.models import ColumnDataSource
    data = {key: frame[column].astype(float).tolist() for key, column in columns.items()}
    return ColumnDataSource({**data, "run": [run.name] * len(frame)})


def _figure(title: str, y_label: str, log_y: bool, x_label: str = "epoch"):
    from bokeh.models import HoverTool
    from bokeh.plotting import figure
    fig = figure(title=title, y_axis_type="log" if log_y else "linear", **FIGURE)
    fig.xaxis.axis_label, fig.yaxis.axis_label = x_label, y_label
    fig.add_tools(HoverTool(tooltips=[("run", "@run"), (x_label, "@x{0.[00]}"), (y_label, "@y{0.[0000]}")]))
    return fig


def _positive(runs: list[RunData], columns) -> bool:
    return all((run.history[c].dropna() > 0).all() for run in runs for c in columns if c in run.history)


def curve_figures(runs: list[RunData], colours: dict) -> list:
    """Loss, top-1 error and lr per epoch: a line per run and split."""
    figures = []
    for title, kind, columns, log in CURVES:
        fig = _figure(f"{title} per epoch" + (" (train dashed, validation solid)" if kind != "lr" else ""),
                      title, log and _positive(runs, columns))
        for run in runs:
            for column in columns:
                if column not in run.history or not run.history[column].notna().any():
                    continue
                frame = run.history[["epoch", column]].dropna()
                y = 100.0 - frame[column] if kind == "error" else frame[column]
                source = _source(run, frame.assign(y=y), {"x": "epoch", "y": "y"})
                split = column.split("_")[0]
                style = {"line_dash": DASH.get(split, "solid"), "line_width": 2, "color": colours[run.name],
                         "legend_label": f"{run.name}" + (f" {split}" if kind != "lr" else "")}
                if kind == "lr":  # the lr holds for the whole epoch: a staircase
                    _tagged(fig.step("x", "y", source=source, mode="before", **style), run)
                else:
                    _tagged(fig.line("x", "y", source=source, **style), run)
        figures.append(_with_legend(fig))
    return figures


def _with_legend(fig):
    """A legend inside the figure (click hides a line) while it is small; beyond LEGEND_RUNS runs it would
    cover the lines, and the colour key above the figures names the runs instead."""
    if fig.legend:
        fig.legend.click_policy, fig.legend.label_text_font_size = "hide", "8pt"
        fig.legend.background_fill_alpha = 0.6
        fig.legend.visible = len({str(item.label) for item in fig.legend.items}) <= 2 * LEGEND_RUNS
    return fig


def colour_key(colours: dict) -> str:
    """Each run's name in its colour (the figures' legends are hidden when there are many runs)."""
    return " ".join(f'<span style="color:{colour};font:bold 12px sans-serif;margin-right:12px">&#9632; '
                    f"{html.escape(name)}</span>" for name, colour in colours.items())


def series_figures(runs: list[RunData], colours: dict) -> list:
    """Per-step loss, each method column of results.csv, and the low-rank means, where any run has them."""
    figures = []
    stepped = [run for run in runs if run.steps is not None]
    if stepped:
        fig = _figure("training loss per step (-p)", "loss", True, x_label="epoch")
        for run in stepped:
            source = _source(run, run.steps, {"x": "epoch", "y": "loss"})
            _tagged(fig.line("x", "y", source=source, color=colours[run.name], legend_label=run.name), run)
        figures.append(_with_legend(fig))
    methods = list(dict.fromkeys(c for run in runs for c in run.method_columns()))
    for column in methods:
        figures.append(_series_figure(column, [(run, run.history) for run in runs], column, colours))
    for name in ("S", "rank"):
        lowrank = [(run, run.lowrank) for run in runs if run.lowrank is not None]
        if lowrank:
            label = f"low-rank mean {name} of conv layers (lowrank.csv)"
            figures.append(_series_figure(label, lowrank, name, colours))
    return figures


def _series_figure(title: str, frames: list, column: str, colours: dict):
    fig = _figure(title, column, False)
    for run, frame in frames:
        if column not in frame:
            continue
        points = frame[["epoch", column]].dropna()  # measured every k epochs: connect the measured points
        source = _source(run, points, {"x": "epoch", "y": column})
        _tagged(fig.line("x", "y", source=source, color=colours[run.name], line_width=2, legend_label=run.name), run)
        _tagged(fig.scatter("x", "y", source=source, color=colours[run.name], size=5), run)
    return _with_legend(fig)


def sweep_figure(sweep: SweepTables):
    """Every seed's final validation top-1 per setting (hover: run and seed), the median marked."""
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure
    settings = [str(s) for s in dict.fromkeys(sweep.summary["setting"])]
    fig = figure(title=f"{sweep.name}: final validation top-1 of every seed", x_range=settings,
                 width=max(500, 70 * len(settings) + 150), height=360, tools="pan,box_zoom,wheel_zoom,reset,save")
    runs = sweep.runs
    if len(runs):
        fig.scatter("setting", "final_val_acc1", size=9, alpha=0.7, color="dimgray", legend_label="run (one per seed)",
                    source=ColumnDataSource({"setting": runs["setting"].astype(str).tolist(),
                                             "final_val_acc1": runs["final_val_acc1"].astype(float).tolist(),
                                             "run": runs["run"].astype(str).tolist(),
                                             "seed": runs["seed"].astype(int).tolist()}))
        medians = runs.groupby("setting", sort=False)["final_val_acc1"].median()
        fig.scatter(x=[str(s) for s in medians.index], y=medians.tolist(), marker="dash", size=30,
                    color="crimson", line_width=3, legend_label="median")
    fig.add_tools(HoverTool(tooltips=[("run", "@run"), ("seed", "@seed"), ("final top-1 %", "@final_val_acc1")]))
    fig.xaxis.major_label_orientation = 0.5
    fig.yaxis.axis_label = "final validation top-1 (%)"
    fig.legend.location = "bottom_right"
    return fig


def html_table(frame: pd.DataFrame, caption: str) -> str:
    """A plain HTML table (escaped) for a Div: numbers to 4 significant digits."""
    body = frame.to_html(index=False, escape=True, na_rep="", float_format=lambda v: f"{v:.4g}", border=0,
                         classes="basinlab-table")
    return f"<h3>{html.escape(caption)}</h3>{body}"


STYLE = ("<style>.basinlab-table{border-collapse:collapse;font:12px sans-serif}.basinlab-table td,"
         ".basinlab-table th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style>")


def page(runs: list[RunData], sweeps: list[SweepTables], title: str):
    """The page's Bokeh layout."""
    from bokeh.layouts import column, gridplot
    from bokeh.models import CheckboxGroup, CustomJS, Div
    colours = dict(zip((run.name for run in runs), palette(len(runs))))
    figures = curve_figures(runs, colours) + series_figures(runs, colours)
    lines = [r for fig in figures for r in fig.renderers if any(str(t).startswith("run:") for t in r.tags)]
    toggle = CheckboxGroup(labels=[run.name for run in runs], active=list(range(len(runs))), name="run-toggle",
                           inline=True)
    toggle.js_on_change("active", CustomJS(args={"lines": lines, "toggle": toggle}, code="""
        const shown = new Set(toggle.active.map((i) => "run:" + toggle.labels[i]));
        for (const line of lines) { line.visible = shown.has(line.tags[0]); }"""))
    parts = [Div(text=f"{STYLE}<h2>{html.escape(title)}</h2><p>{len(runs)} run(s). Untick a run to hide its "
                      f"lines everywhere; click a legend entry to hide one line; drag to pan, scroll to zoom; "
                      f"hover a line for its run and values.</p><p>{colour_key(colours)}</p>"),
             toggle, gridplot(figures, ncols=2, toolbar_location="right"),
             Div(text=STYLE + html_table(run_table(runs), "Runs: the options that differ, and their results"))]
    for sweep in sweeps:
        shown = sweep.summary.drop(columns=[c for c in sweep.summary.columns
                                            if c.endswith(("_mean", "_std")) or c == "setting"])
        parts += [Div(text=STYLE + html_table(shown, f"Sweep {sweep.name}: statistics over seeds")),
                  sweep_figure(sweep)]
    return column(*parts)


def require_bokeh() -> None:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        raise ConfigError("the report page needs Bokeh, which is not installed: "
                          "pip install 'basinlab[report]'") from None


def write_report(runs: list[RunData], path: str | Path, sweeps: list[SweepTables] = (), title: str = "") -> Path:
    """Write the self-contained page (written atomically: a reader never sees half a file)."""
    require_bokeh()
    from bokeh.embed import file_html
    from bokeh.resources import INLINE
    path = Path(path)
    title = title or ("basinlab report: " + ", ".join(run.name for run in runs[:4]) + (" ..." if len(runs) > 4 else ""))
    atomic_write_text(path, file_html(page(runs, list(sweeps), title), resources=INLINE, title=title))
    return path
