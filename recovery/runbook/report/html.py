"""The report document as a self-contained HTML page (inline CSS and SVG)."""

from __future__ import annotations

import re
from typing import Any

from .chart import OTHER_COLOUR, RECOVERY_COLOUR, SELECTED_COLOUR, esc, svg_chart
from .sections import doc_title, fmt_time, parse_iso, report_sections, run_facts

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       margin: 24px auto; max-width: 1100px; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
.status-failed, .FAILED { color: #b00020; font-weight: 600; }
.legend span { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px;
               vertical-align: middle; }
svg.chart { display: block; margin: 8px 0 16px; }
svg.chart text { font: 11px system-ui, sans-serif; fill: #444; }
svg.chart .axis { stroke: #888; } svg.chart .grid { stroke: #eee; }
svg.chart .marker { stroke: #333; stroke-dasharray: 4 3; }
"""


def render_html(doc: dict[str, Any]) -> str:
    """A self-contained page: inline CSS and SVG, no script, nothing fetched."""
    title = doc_title(doc)
    tags = ", ".join(doc.get("selected_tags") or []) or "selected tag"
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        '<dl class="facts">',
    ]
    parts += [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in run_facts(doc)]
    parts.append("</dl>")
    window = doc.get("window") or {}
    start, end = parse_iso(window.get("start")), parse_iso(window.get("end"))
    run = doc.get("run") or {}
    markers = [
        (label, d)
        for label, d in (
            ("run started", parse_iso(run.get("started_at"))),
            ("run finished", parse_iso(run.get("finished_at"))),
        )
        if d is not None
    ]
    # The chart first: it is what a reader looks for; the numbers behind it come last.
    parts.append("<h2>Rows changed per minute</h2>")
    parts.append(
        f"<p>Window: {esc(fmt_time(window.get('start')))} to "
        f"{esc(fmt_time(window.get('end')))} ({esc(window.get('rule'))}).</p>"
    )
    parts.append(
        f'<p class="legend"><span style="background:{SELECTED_COLOUR}"></span>'
        f'{esc(tags)}<span style="background:{OTHER_COLOUR}"></span>other writes'
        f'<span style="background:{RECOVERY_COLOUR}"></span>written by '
        "recovery (the repair)</p>"
    )
    series = doc.get("series") or {}
    for table, pts in series.items():
        if pts and start is not None and end is not None:
            parts.append(svg_chart(table, pts, start, end, tags, markers))
        else:
            parts.append(f"<p>{esc(table)}: no captured change in the window.</p>")
    if not series:
        parts.append("<p>No captured change of the affected tables in the window.</p>")
    for title_, headers, rows, empty in report_sections(doc):
        if title_.startswith("Rows changed"):
            title_ += ", in numbers"
        parts.append(f"<h2>{esc(title_)}</h2>")
        if not rows:
            parts.append(f"<p>{esc(empty)}</p>")
            continue
        parts.append(
            "<table><thead><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in headers)
            + "</tr></thead><tbody>"
        )
        for r in rows:
            cells = []
            for c in r:
                cls = (
                    ' class="num"'
                    if re.fullmatch(r"-?\d+", c)
                    else (' class="FAILED"' if c in ("FAILED", "failed") else "")
                )
                cells.append(f"<td{cls}>{esc(c)}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
    parts.append(
        f"<p><small>Generated {esc(fmt_time(doc.get('generated_at')))} by recovery."
        "</small></p></body></html>\n"
    )
    return "\n".join(parts)
