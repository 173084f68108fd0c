"""The report page's tables as HTML: the table of runs (results first, the run column frozen, the options scrolling
sideways inside their box), the runs' context, and a sweep's statistics.

    runs_table_html(runs, colours)   run | final / best val top-1 and loss, best epoch, epochs run, final train loss
                                     (and the last lambda_max / threshold where a run measured it live)
                                     | the options that differ (used value; configured one where it differs)
    context_table_html(runs)         run | subset, training time, median images/s, model, version, commit, start,
                                     folder
    stats_table_html(frame, caption, grid)   a sweep's statistics over seeds

Every cell is escaped. A number cell carries the exact value in data-value (its text is rounded to 4 significant
digits); an option cell shows the value exactly (report_values.option_text). Cells name their column in data-col.
"""
from __future__ import annotations

import html
from typing import TYPE_CHECKING

from basinlab.records.report_data import EDGE_COLUMN, result_columns, run_results
from basinlab.records.report_values import (
    context_row,
    duration_text,
    metric_text,
    option_columns,
    option_text,
    run_options,
)

if TYPE_CHECKING:
    import pandas as pd

    from basinlab.records.report_data import RunData

STYLE = """<style>
.basinlab-scroll{overflow-x:auto;max-width:100%;margin:4px 0 14px 0}
.basinlab-table{border-collapse:separate;border-spacing:0;font:12px sans-serif}
.basinlab-table td,.basinlab-table th{border-right:1px solid #ccc;border-bottom:1px solid #ccc;padding:2px 6px;
  text-align:right;white-space:nowrap;background:#fff}
.basinlab-table th{background:#f2f2f2;vertical-align:bottom}
.basinlab-table .run{position:sticky;left:0;z-index:1;text-align:left;white-space:normal;overflow-wrap:anywhere;
  min-width:8em;max-width:22em;border-left:1px solid #ccc}
.basinlab-table .first-option{border-left:2px solid #777}
.basinlab-table th.group{text-align:left}
.basinlab-table th.options-head{text-align:left;white-space:normal;min-width:28em;font-weight:normal}
.basinlab-table td.resolved{font-style:italic;color:#555}
.basinlab-table td.overridden{color:#b03000}
.basinlab-table td.text{text-align:left}
.basinlab-swatch{font-weight:bold;margin-right:4px}
</style>"""
RESOLVED_NOTE = "not set in config.yaml: the value the run resolved it to (env.yaml, effective)"
OVERRIDDEN_NOTE = "the run used another value than config.yaml asks for (env.yaml, effective)"
EDGE_NOTE = ("sharpness-steps.csv (--log-sharpness-every-steps), its last row: lambda_max / threshold, for Adam or lr "
             "groups the preconditioned sharpness / its threshold; about 1 at the edge of stability")


def _cell(column: str, text: str, classes: str = "", value=None, title: str = "") -> str:
    attributes = f' data-col="{html.escape(column)}"'
    if classes:
        attributes += f' class="{classes}"'
    if value is not None:
        attributes += f' data-value="{html.escape(repr(value))}"'
    if title:
        attributes += f' title="{html.escape(title)}"'
    return f"<td{attributes}>{html.escape(text)}</td>"


def _number_cell(column: str, value) -> str:
    if value is None or isinstance(value, int):
        return _cell(column, "" if value is None else str(value), value=value)
    return _cell(column, metric_text(value), value=float(value))


def _run_cell(name: str, colour: str | None) -> str:
    swatch = f'<span class="basinlab-swatch" style="color:{colour}">&#9632;</span>' if colour else ""
    return f'<td class="run" data-col="run">{swatch}{html.escape(name)}</td>'


def _table(head: str, rows: list[str], table_id: str) -> str:
    return (f'<div class="basinlab-scroll"><table class="basinlab-table" id="{table_id}"><thead>{head}</thead>'
            f"<tbody>{''.join(f'<tr>{row}</tr>' for row in rows)}</tbody></table></div>")


def _option_cell(column: str, value, first: bool) -> str:
    classes = "first-option" if first else ""
    if value is None:
        return _cell(column, "", classes)
    if value.resolved:
        return _cell(column, value.text(), f"{classes} resolved".strip(), title=RESOLVED_NOTE)
    if value.overridden:
        return _cell(column, value.text(), f"{classes} overridden".strip(), title=OVERRIDDEN_NOTE)
    return _cell(column, value.text(), classes)


def runs_table_html(runs: list[RunData], colours: dict[str, str]) -> str:
    """The results of each run, then the options that differ; the run column stays on screen while the options
    scroll sideways."""
    options, results = option_columns(runs), result_columns(runs)
    groups = f'<th class="run" rowspan="2">run</th><th class="group" colspan="{len(results)}">results</th>'
    if options:
        groups += (f'<th class="first-option options-head" colspan="{len(options)}"><b>options that differ</b>: '
                   f"the value the run used (<i>italic</i>: unset in config.yaml, resolved by the run; "
                   f"\u201cconfigured\u201d: config.yaml asks for another)</th>")
    names = "".join(f'<th title="{html.escape(EDGE_NOTE)}">{html.escape(c)}</th>' if c == EDGE_COLUMN
                    else f"<th>{html.escape(c)}</th>" for c in results)
    names += "".join(f'<th{" class=first-option" if i == 0 else ""}>{html.escape(c)}</th>'
                     for i, c in enumerate(options))
    rows = []
    for run in runs:
        metrics, values = run_results(run), run_options(run)
        rows.append(_run_cell(run.name, colours.get(run.name))
                    + "".join(_number_cell(c, metrics.get(c)) for c in results)
                    + "".join(_option_cell(c, values.get(c), i == 0) for i, c in enumerate(options)))
    return _table(f"<tr>{groups}</tr><tr>{names}</tr>", rows, "runs")


CONTEXT_TEXT = ("train-limit", "val-limit", "model", "basinlab", "git commit", "started", "resumed at", "folder")


def context_table_html(runs: list[RunData]) -> str:
    """Per run: what it trained on, how long it took, and what made it (env.yaml, results.csv)."""
    table = [context_row(run) for run in runs]
    columns = [c for c in table[0] if c != "run"]
    head = '<tr><th class="run">run</th>' + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    rows = []
    for row in table:
        cells = [_run_cell(row["run"], None)]
        for column in columns:
            value = row[column]
            if column == "training time":
                cells.append(_cell(column, duration_text(value), value=value))
            elif column in CONTEXT_TEXT:
                cells.append(_cell(column, option_text(value), "text"))
            else:
                cells.append(_number_cell(column, value))
        rows.append("".join(cells))
    return _table(head, rows, "context")


def stats_table_html(frame: pd.DataFrame, caption: str, grid: list[str], table_id: str = "sweep-stats") -> str:
    """A sweep's statistics: grid values printed exactly, statistics to 4 significant digits."""
    head = "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns) + "</tr>"
    rows = []
    for record in frame.to_dict("records"):
        rows.append("".join(_cell(str(c), option_text(v), "text") if c in grid else _number_cell(str(c), _plain(v))
                            for c, v in record.items()))
    return f"<h3>{html.escape(caption)}</h3>" + _table(head, rows, table_id)


def _plain(value):
    """numpy numbers as Python ones (an int stays an int)."""
    return value.item() if hasattr(value, "item") else value
