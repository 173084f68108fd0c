"""report.html: runs and sweeps on one self-contained interactive page (Bokeh, as the seed framework's results.html).

    write_report(runs, path, sweeps=(), title="")   runs: RunData (report_data.py); sweeps: SweepTables

The page, top to bottom: its title and the table of runs (results first: final and best validation top-1 and
loss, best epoch, epochs run; then the options that differ, as the run used them; report_html.py); a checkbox per
run or sweep setting (unticking one hides its lines in every figure) and, with a sweep, one to show each seed; the
curves per epoch (loss, top-1 error, lr; train dashed, validation solid) with zoom, pan and hover, the per-step
loss where steps.csv was written, the sharpness against its edge where sharpness-steps.csv was (lambda_max, batch
and preconditioned sharpness, the threshold dashed), each epoch's measured delays where delays.csv was (a heat
map per run), one figure per method column of results.csv (delays, lambda_max, SmoothOut strength, ...) and the
low-rank means where lowrank.csv exists; for each sweep its statistics over seeds and every seed's final top-1 per
setting; last, each run's context (subset, time, images/s, model,
version, commit, date, folder). BokehJS and the data are inlined: the file opens without a network.

A run given on its own is one colour and its lines carry the tag ``run:<name>``. A sweep's setting is one colour:
per epoch the median over its seeds (tag ``setting:<sweep>/<setting>``) in a band from their min to their max, and
each seed's own line (tags ``seed:<run>``, the setting's) hidden until "show each seed" is ticked; its per-step
losses are drawn run by run (``member:<run>``, the setting's). The checkboxes and the tests find lines by these tags.
Curves of up to MARKERS_UP_TO epochs carry a marker per epoch (a run of one epoch is a point, not an empty line).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from basinlab.errors import ConfigError
from basinlab.records.report_data import RunData, seed_band
from basinlab.records.report_html import STYLE, context_table_html, runs_table_html, stats_table_html
from basinlab.utils.io import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

FIGURE = {"width": 620, "height": 330, "tools": "pan,box_zoom,wheel_zoom,reset,save"}
CURVES = (("loss", "loss", ("train_loss", "val_loss"), True),
          ("top-1 error (%)", "error", ("train_acc1", "val_acc1"), False),
          ("learning rate", "lr", ("lr",), True))
DASH = {"train": "dashed", "val": "solid"}
LEGEND_RUNS = 4  # legends inside figures up to this many runs or settings (train and val: twice as many entries)
MARKERS_UP_TO = 20  # epochs: shorter curves mark every epoch
BAND_ALPHA = 0.18
# sharpness-steps.csv (--log-sharpness-every-steps): column, legend name, dash; the threshold dashed like the edge
# in plots/sharpness-steps.png
SHARPNESS_LINES = (("lambda_max", "lambda_max", "solid"), ("batch_sharpness", "batch sharpness", "dotted"),
                   ("preconditioned_sharpness", "preconditioned sharpness", "dotdash"),
                   ("threshold", "threshold", "dashed"))


@dataclass
class SweepTables:
    """What a sweep adds to the page: its summary (summary.csv), one row per finished run, and the run folders
    with results of each setting (drawn as the setting's median and band)."""
    name: str
    summary: pd.DataFrame          # per setting: grid values, n, medians...
    runs: pd.DataFrame             # per run: setting, seed, run, final_val_acc1
    members: dict[str, list[Path]] = field(default_factory=dict)  # setting -> its run folders with results


@dataclass
class Entry:
    """One checkbox and one colour: a run, or a sweep's setting (its seeds drawn as a median in a band)."""
    key: str                       # run:<name> or setting:<sweep>/<setting>
    label: str
    runs: list[RunData]
    colour: str = ""

    @property
    def is_setting(self) -> bool:
        return self.key.startswith("setting:")


def palette(n: int) -> list[str]:
    from bokeh.palettes import Category10_10, Category20_20, turbo
    return list(Category10_10[:n]) if n <= 10 else list(Category20_20[:n]) if n <= 20 else list(turbo(n))


def page_entries(runs: list[RunData], sweeps: list[SweepTables]) -> list[Entry]:
    """The runs given on their own and the sweeps' settings, in the order their first run comes, each coloured."""
    setting_of = {}
    for sweep in sweeps:
        for setting, folders in sweep.members.items():
            label = setting if len(sweeps) == 1 else f"{sweep.name}: {setting}"
            for folder in folders:
                setting_of.setdefault(folder.resolve(), (f"setting:{sweep.name}/{setting}", label))
    entries: dict[str, Entry] = {}
    for run in runs:
        key, label = setting_of.get(run.path.resolve(), (f"run:{run.name}", run.name))
        entries.setdefault(key, Entry(key, label, [])).runs.append(run)
    for entry, colour in zip(entries.values(), palette(len(entries))):
        entry.colour = colour
    return list(entries.values())


def _source(frame: pd.DataFrame, label, extra: tuple = ()):
    """A ColumnDataSource of x, y and the extra columns, with a label (one, or one per point) for the hover."""
    from bokeh.models import ColumnDataSource
    data = {key: frame[key].astype(float).tolist() for key in ("x", "y", *extra)}
    labels = [label] * len(frame) if isinstance(label, str) else list(label)
    return ColumnDataSource({**data, "run": labels})


def _figure(title: str, y_label: str, log_y: bool, x_label: str = "epoch"):
    from bokeh.models import HoverTool
    from bokeh.plotting import figure
    fig = figure(title=title, y_axis_type="log" if log_y else "linear", **FIGURE)
    fig.xaxis.axis_label, fig.yaxis.axis_label = x_label, y_label
    fig.add_tools(HoverTool(tooltips=[("run", "@run"), (x_label, "@x{0.[00]}"), (y_label, "@y{0.[0000]}")]))
    return fig


def _positive(runs: list[RunData], columns, frame_of=lambda run: run.history) -> bool:
    frames = [frame for frame in map(frame_of, runs) if frame is not None]
    return all((frame[c].dropna() > 0).all() for frame in frames for c in columns if c in frame)


def _tagged(renderer, *tags: str):
    """Tag the renderer (not its glyph, where keyword tags would go) so that the checkboxes find it."""
    renderer.tags = list(tags)
    return renderer


def _line(fig, source, stair: bool, markers: bool, tags: tuple, **style):
    """A line (a staircase for the lr, which holds for a whole epoch), with a marker per point where asked."""
    draw = (lambda **kw: fig.step(mode="before", **kw)) if stair else fig.line
    _tagged(draw(x="x", y="y", source=source, **style), *tags)
    if markers:
        marker_style = {k: v for k, v in style.items() if k not in ("line_dash", "line_width", "line_alpha")}
        _tagged(fig.scatter(x="x", y="y", source=source, size=6, **marker_style), *tags)


def draw_entry(fig, entry: Entry, frames: list[pd.DataFrame], style: dict, stair: bool = False,
               markers: bool | None = None) -> None:
    """One entry's series (frames of x and y, one per run of the entry): a run's line, or a setting's median in
    its min-max band with each seed's line hidden. markers: True always, None for short curves."""
    longest = max((len(frame) for frame in frames), default=0)
    mark = longest <= MARKERS_UP_TO if markers is None else markers
    style = {"color": entry.colour, **style}
    if not entry.is_setting:
        _line(fig, _source(frames[0], entry.runs[0].name), stair, mark, (entry.key,), line_width=2, **style)
        return
    band = seed_band(frames).rename(columns={"median": "y"})
    source = _source(band, [f"{entry.label}: median of {n}" for n in band["n"]], ("min", "max", "n"))
    area_kw = {"x": "x", "y1": "min", "y2": "max", "source": source, "fill_alpha": BAND_ALPHA,
               "fill_color": entry.colour}
    area = _tagged(fig.varea_step(step_mode="before", **area_kw) if stair else fig.varea(**area_kw), entry.key)
    _line(fig, source, stair, mark, (entry.key,), line_width=2, **style)
    for item in (item for legend in fig.legend for item in legend.items):
        if getattr(item.label, "value", None) == style.get("legend_label"):
            item.renderers.append(area)  # the band joins its median's legend entry: clicking it hides both
    seed_style = {k: v for k, v in style.items() if k != "legend_label"}
    for run, frame in zip(entry.runs, frames):
        _line(fig, _source(frame, run.name), stair, mark, (f"seed:{run.name}", entry.key), line_width=1,
              line_alpha=0.7, visible=False, **seed_style)


def _present(entry: Entry, frame_of, column: str) -> tuple[Entry, list]:
    """The entry limited to its runs whose frame has the column (a seed may lack a method's column), and
    those frames."""
    pairs = [(run, frame_of(run)) for run in entry.runs]
    pairs = [(run, frame) for run, frame in pairs
             if frame is not None and column in frame and frame[column].notna().any()]
    return Entry(entry.key, entry.label, [run for run, _ in pairs], entry.colour), [frame for _, frame in pairs]


def _xy(frame: pd.DataFrame, x: str, y: str, transform=None) -> pd.DataFrame:
    points = frame[[x, y]].dropna()
    values = points[y] if transform is None else transform(points[y])
    return points.assign(x=points[x].astype(float), y=values.astype(float))[["x", "y"]]


def curve_figures(entries: list[Entry]) -> list:
    """Loss, top-1 error and lr per epoch: per run and split a line, per setting a median in a band."""
    runs = [run for entry in entries for run in entry.runs]
    figures = []
    for title, kind, columns, log in CURVES:
        fig = _figure(f"{title} per epoch" + (" (train dashed, validation solid)" if kind != "lr" else ""),
                      title, log and _positive(runs, columns))
        transform = (lambda values: 100.0 - values) if kind == "error" else None
        for column in columns:
            split = column.split("_")[0]
            for entry in entries:
                part, frames = _present(entry, lambda run: run.history, column)
                if frames:
                    style = {"line_dash": DASH.get(split, "solid"),
                             "legend_label": entry.label + (f" {split}" if kind != "lr" else "")}
                    draw_entry(fig, part, [_xy(frame, "epoch", column, transform) for frame in frames], style,
                               stair=kind == "lr")
        figures.append(_with_legend(fig, len(entries)))
    return figures


def _with_legend(fig, entries: int):
    """A legend inside the figure (click hides a line) while it is small; beyond LEGEND_RUNS runs or settings it
    would cover the lines, and the colour key above the figures names them instead."""
    if fig.legend:
        fig.legend.click_policy, fig.legend.label_text_font_size = "hide", "8pt"
        fig.legend.background_fill_alpha = 0.6
        fig.legend.visible = entries <= LEGEND_RUNS
    return fig


def colour_key(entries: list[Entry]) -> str:
    """Each run's or setting's name in its colour (the figures' legends are hidden when there are many)."""
    return " ".join(f'<span style="color:{entry.colour};font:bold 12px sans-serif;margin-right:12px">&#9632; '
                    f"{html.escape(entry.label)}</span>" for entry in entries)


def series_figures(entries: list[Entry]) -> list:
    """Per-step loss, each method column of results.csv, and the low-rank means, where any run has them."""
    runs = [run for entry in entries for run in entry.runs]
    figures = []
    if any(run.steps is not None for run in runs):
        fig = _figure("training loss per step (-p)", "loss", True, x_label="epoch")
        for entry in entries:
            for run in (run for run in entry.runs if run.steps is not None):
                own = f"member:{run.name}" if entry.is_setting else entry.key
                tags = (own, entry.key) if entry.is_setting else (own,)
                _line(fig, _source(_xy(run.steps, "epoch", "loss"), run.name), False, False, tags,
                      color=entry.colour, legend_label=entry.label, line_width=1 if entry.is_setting else 2)
        figures.append(_with_legend(fig, len(entries)))
    if any(run.sharpness is not None for run in runs):
        figures.append(sharpness_figure(entries))
    figures += delay_figures(entries)
    for column in dict.fromkeys(c for run in runs for c in run.method_columns()):
        fig = _figure(column, column, False)
        _series(fig, entries, lambda run: run.history, column)
        figures.append(_with_legend(fig, len(entries)))
    for name in ("S", "rank"):
        if any(run.lowrank is not None for run in runs):
            fig = _figure(f"low-rank mean {name} of conv layers (lowrank.csv)", name, False)
            _series(fig, entries, lambda run: run.lowrank, name)
            figures.append(_with_legend(fig, len(entries)))
    return figures


def _finite(frame: pd.DataFrame) -> pd.DataFrame:
    """Infinite values left out (the threshold of an lr of 0 is infinite): nothing to draw there."""
    return frame.replace([float("inf"), float("-inf")], float("nan"))


def sharpness_figure(entries: list[Entry]):
    """sharpness-steps.csv: each measured sharpness and the threshold it is compared with (dashed) per epoch
    (fractional, as the per-step loss), a line per run or a setting's median in its band; log y where every
    value is positive (the batch sharpness can be negative)."""
    def measured(run: RunData):
        return None if run.sharpness is None else _finite(run.sharpness)

    columns = [column for column, _, _ in SHARPNESS_LINES]
    runs = [run for entry in entries for run in entry.runs]
    fig = _figure("sharpness against its edge (sharpness-steps.csv; threshold dashed)", "sharpness",
                  _positive(runs, columns, measured))
    for column, name, dash in SHARPNESS_LINES:
        for entry in entries:
            part, frames = _present(entry, measured, column)
            if frames:
                draw_entry(fig, part, [_xy(frame, "epoch", column) for frame in frames],
                           {"line_dash": dash, "legend_label": f"{entry.label} {name}"})
    return _with_legend(fig, len(entries))


DELAY_FIGURES = 6  # runs with delays.csv drawn as heat maps, at most


def delay_figures(entries: list[Entry]) -> list:
    """delays.csv (--real): for each run (the first DELAY_FIGURES), each epoch's distribution of measured delays as
    a heat map, epoch x delay, coloured by the fraction of that epoch's applied gradients."""
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure
    from bokeh.transform import linear_cmap
    figures = []
    for entry in entries:
        for run in (run for run in entry.runs if run.delays is not None):
            if len(figures) == DELAY_FIGURES:
                return figures
            frame = run.delays
            fig = figure(title=f"measured delays per epoch: {run.name} (delays.csv)", **FIGURE)
            fig.xaxis.axis_label, fig.yaxis.axis_label = "epoch", "delay (server updates)"
            colours = linear_cmap("fraction", "Viridis256", 0, float(frame["fraction"].max()))
            cells = fig.rect("epoch", "delay", 1, 1, fill_color=colours, line_color=None,
                             source=ColumnDataSource({c: frame[c].tolist() for c in ("epoch", "delay", "fraction")}))
            _tagged(cells, f"member:{run.name}" if entry.is_setting else entry.key)
            fig.add_tools(HoverTool(tooltips=[("epoch", "@epoch"), ("delay", "@delay"),
                                              ("fraction", "@fraction{0.000}")]))
            figures.append(fig)
    return figures


def _series(fig, entries: list[Entry], frame_of, column: str) -> None:
    """A column measured every k epochs: its measured points joined, each marked."""
    for entry in entries:
        part, frames = _present(entry, frame_of, column)
        if frames:
            draw_entry(fig, part, [_xy(frame, "epoch", column) for frame in frames], {"legend_label": entry.label},
                       markers=True)


def sweep_figure(sweep: SweepTables, colours: dict[str, str]):
    """Every seed's final validation top-1 per setting in the setting's colour (hover: run, seed), the median
    marked."""
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure
    settings = [str(s) for s in dict.fromkeys(sweep.summary["setting"])]
    fig = figure(title=f"{sweep.name}: final validation top-1 of every seed", x_range=settings,
                 width=max(500, 70 * len(settings) + 150), height=360, tools="pan,box_zoom,wheel_zoom,reset,save")
    runs = sweep.runs
    if len(runs):
        fig.scatter("setting", "final_val_acc1", size=9, alpha=0.8, color="colour", legend_label="run (one per seed)",
                    source=ColumnDataSource({"setting": runs["setting"].astype(str).tolist(),
                                             "final_val_acc1": runs["final_val_acc1"].astype(float).tolist(),
                                             "run": runs["run"].astype(str).tolist(),
                                             "seed": runs["seed"].astype(int).tolist(),
                                             "colour": [colours.get(str(s), "dimgray") for s in runs["setting"]]}))
        medians = runs.groupby("setting", sort=False)["final_val_acc1"].median()
        fig.scatter(x=[str(s) for s in medians.index], y=medians.tolist(), marker="dash", size=30,
                    color="black", line_width=3, legend_label="median")
    fig.add_tools(HoverTool(tooltips=[("run", "@run"), ("seed", "@seed"), ("final top-1 %", "@final_val_acc1")]))
    fig.xaxis.major_label_orientation = 0.5
    fig.yaxis.axis_label = "final validation top-1 (%)"
    fig.legend.location = "bottom_right"
    return fig


TOGGLE_CODE = """
const shown = new Set(toggle.active.map((i) => keys[i]));
const seeds = typeof seed_toggle !== "undefined" && seed_toggle.active.length > 0;
for (const line of lines) {
  const [own, entry] = line.tags;
  if (own.startsWith("seed:")) { line.visible = seeds && shown.has(entry); }
  else { line.visible = shown.has(entry === undefined ? own : entry); }
}"""
TAGS = ("run:", "setting:", "seed:", "member:")


def _toggles(entries: list[Entry], figures: list) -> list:
    """A checkbox per run or setting (hides its lines everywhere) and, with settings, one to show each seed."""
    from bokeh.models import CheckboxGroup, CustomJS
    lines = [r for fig in figures for r in fig.renderers if r.tags and str(r.tags[0]).startswith(TAGS)]
    toggle = CheckboxGroup(labels=[entry.label for entry in entries], active=list(range(len(entries))),
                           name="run-toggle", inline=True)
    args = {"lines": lines, "toggle": toggle, "keys": [entry.key for entry in entries]}
    widgets = [toggle]
    if any(entry.is_setting for entry in entries):
        seeds = CheckboxGroup(labels=["show each seed (thin lines; a setting is drawn as the median over its seeds, "
                                      "shaded from their min to their max)"], active=[], name="seed-toggle")
        args["seed_toggle"] = seeds
        widgets.append(seeds)
    callback = CustomJS(args=args, code=TOGGLE_CODE)
    for widget in widgets:
        widget.js_on_change("active", callback)
    return widgets


def page(runs: list[RunData], sweeps: list[SweepTables], title: str = ""):
    """The page's Bokeh part: the colour key and checkboxes, the figures, each sweep's statistics and seeds.
    (The title and the tables of runs around it are plain HTML: write_report.)"""
    from bokeh.layouts import column, gridplot
    from bokeh.models import Div
    entries = page_entries(runs, list(sweeps))
    figures = curve_figures(entries) + series_figures(entries)
    parts = [Div(text=f"<p style='font:13px sans-serif'>Untick a run to hide its lines everywhere; click a legend "
                      f"entry to hide one line; drag to pan, scroll to zoom; hover a line for its run and values."
                      f"</p><p>{colour_key(entries)}</p>"),
             *_toggles(entries, figures), gridplot(figures, ncols=2, toolbar_location="right")]
    for i, sweep in enumerate(sweeps):
        shown = sweep.summary.drop(columns=[c for c in sweep.summary.columns
                                            if c.endswith(("_mean", "_std")) or c == "setting"])
        grid = [c for c in shown.columns if c != "n" and not c.endswith(("_median", "_min", "_max"))]
        prefix = f"setting:{sweep.name}/"
        colours = {entry.key[len(prefix):]: entry.colour for entry in entries if entry.key.startswith(prefix)}
        parts += [Div(text=STYLE + stats_table_html(shown, f"Sweep {sweep.name}: statistics over seeds", grid,
                                                    f"sweep-stats-{i}"), sizing_mode="stretch_width",
                      styles={"overflow-x": "auto"}),
                  sweep_figure(sweep, colours)]
    return column(*parts, sizing_mode="stretch_width")  # a wide table scrolls in its box, not the page


TEMPLATE = """{% block contents %}
<div style="padding:0 10px">{{ before }}</div>
{{ super() }}
<div style="padding:0 10px">{{ after }}</div>
{% endblock %}"""


def page_html(runs: list[RunData], sweeps: list[SweepTables], title: str) -> str:
    """The whole page: title and table of runs, the Bokeh part, the runs' context."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE
    colours = {run.name: entry.colour for entry in page_entries(runs, sweeps) for run in entry.runs}
    before = (f"{STYLE}<h2 style='font-family:sans-serif;margin:10px 0 4px 0'>{html.escape(title)}</h2>"
              f"{runs_table_html(runs, colours)}")
    after = ("<h3 style='font-family:sans-serif'>Runs: subset, time, speed and provenance (results.csv, env.yaml)"
             f"</h3>{context_table_html(runs)}")
    return file_html(page(runs, sweeps, title), resources=INLINE, title=title, template=TEMPLATE,
                     template_variables={"before": before, "after": after})


def require_bokeh() -> None:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        raise ConfigError("the report page needs Bokeh, which is not installed: "
                          "pip install 'basinlab[report]'") from None


def write_report(runs: list[RunData], path: str | Path, sweeps: list[SweepTables] = (), title: str = "") -> Path:
    """Write the self-contained page (written atomically: a reader never sees half a file)."""
    require_bokeh()
    path = Path(path)
    title = title or ("basinlab report: " + ", ".join(run.name for run in runs[:4]) + (" ..." if len(runs) > 4 else ""))
    atomic_write_text(path, page_html(runs, list(sweeps), title))
    return path
