"""Rendering helpers shared by Markdown and HTML: times, cells, the report's tables."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from .summary import dict_of

# (title, headers, rows, text when there are no rows) of one table of the report
Section = tuple[str, list[str], list[list[str]], str]


def parse_iso(v: Any) -> datetime | None:
    if not isinstance(v, str):
        return None
    try:
        d = datetime.fromisoformat(v)
    except ValueError:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def fmt_time(v: Any) -> str:
    d = parse_iso(v)
    if d is None:
        return "" if v is None else str(v)
    ms = f".{d.microsecond // 1000:03d}" if d.microsecond else ""
    return d.strftime("%Y-%m-%d %H:%M:%S") + ms + " UTC"


def fmt_duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return ""
    if seconds < 10:
        return f"{round(seconds, 2):g} s"
    if seconds < 60:
        return f"{round(seconds, 1):g} s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def cell_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str, ensure_ascii=False)
    return str(v)


def example_line(e: Any) -> str:
    """One conflict example (undo's {action, key, columns, values}) as a line."""
    if not isinstance(e, dict):
        return cell_text(e)
    key = e.get("key")
    head = (
        ", ".join(f"{k}={v}" for k, v in key.items()) if isinstance(key, dict) else cell_text(key)
    )
    parts = [f"{e['action']} " if e.get("action") else "", f"row {head}" if head else "row"]
    values = e.get("values")
    cols = []
    for col, v in values.items() if isinstance(values, dict) else []:
        if isinstance(v, dict):
            cols.append(
                f"{col}: restore to {cell_text(v.get('restore_to'))!s}, left by change "
                f"{cell_text(v.get('left_by_change'))}, now {cell_text(v.get('now'))}"
            )
        else:
            cols.append(f"{col}: {cell_text(v)}")
    if not cols and isinstance(e.get("columns"), list):
        cols.append("columns " + ", ".join(map(str, e["columns"])))
    return "".join(parts) + (f" ({'; '.join(cols)})" if cols else "")


def report_sections(doc: dict[str, Any]) -> list[Section]:
    """(title, headers, rows, text when there are no rows) of every table of the report."""
    return [
        section(doc)
        for section in (
            _timeline,
            _approvals,
            _blast_radius,
            _applied,
            _conflicts,
            _verification,
            _notifications,
            _per_minute,
        )
    ]


def _timeline(doc: dict[str, Any]) -> Section:
    return (
        "Timeline",
        ["#", "step", "kind", "status", "started", "finished", "duration", "summary", "error"],
        [
            [
                cell_text(s.get("no")),
                cell_text(s.get("id")),
                cell_text(s.get("kind")),
                cell_text(s.get("status")),
                fmt_time(s.get("started_at")),
                fmt_time(s.get("finished_at")),
                fmt_duration(s.get("duration_seconds")),
                cell_text(s.get("summary")),
                cell_text(s.get("error")),
            ]
            for s in doc.get("steps") or []
        ],
        "The run recorded no step.",
    )


def _approvals(doc: dict[str, Any]) -> Section:
    return (
        "Approvals",
        [
            "step",
            "request",
            "kind",
            "rows",
            "tables",
            "requested by",
            "requested at",
            "approved by",
            "approved at",
            "status",
            "executed by",
            "executed at",
        ],
        [
            [
                cell_text(a.get("step_id")),
                f"#{a.get('req_id')}",
                cell_text(a.get("kind")),
                cell_text(a.get("rows")),
                cell_text(a.get("tables")),
                cell_text(a.get("requested_by")),
                fmt_time(a.get("requested_at")),
                ", ".join(cell_text(x.get("by")) for x in a.get("approved") or []),
                ", ".join(fmt_time(x.get("at")) for x in a.get("approved") or []),
                cell_text(a.get("status")),
                cell_text(a.get("executed_by")),
                fmt_time(a.get("executed_at")),
            ]
            for a in doc.get("approvals") or []
        ],
        "No approval was requested.",
    )


def _blast_radius(doc: dict[str, Any]) -> Section:
    blast = doc.get("blast_radius") or []
    notes = any(b.get("notes") for b in blast)
    return (
        "Blast radius",
        ["step", "table", "re-insert", "restore", "delete", "total", "conflicts"]
        + (["notes"] if notes else []),
        [
            [
                cell_text(b.get("step_id")),
                cell_text(b.get("table")),
                cell_text(b.get("reinsert")),
                cell_text(b.get("restore")),
                cell_text(b.get("delete")),
                cell_text(b.get("total")),
                cell_text(b.get("conflicts")),
            ]
            + (["; ".join(map(cell_text, b.get("notes") or []))] if notes else [])
            for b in blast
        ],
        "No plan was made.",
    )


def _applied(doc: dict[str, Any]) -> Section:
    return (
        "Changes applied",
        ["step", "table", "inserted", "updated", "deleted", "conflicts"],
        [
            [
                cell_text(b.get("step_id")),
                cell_text(b.get("table")),
                cell_text(b.get("inserted")),
                cell_text(b.get("updated")),
                cell_text(b.get("deleted")),
                cell_text(b.get("conflicts")),
            ]
            for b in doc.get("applied") or []
        ],
        "Nothing was applied.",
    )


def _conflicts(doc: dict[str, Any]) -> Section:
    return (
        "Conflicts kept",
        ["step", "table", "conflicts", "on conflict", "examples"],
        [
            [
                cell_text(c.get("step_id")),
                cell_text(c.get("table")),
                cell_text(c.get("conflicts")),
                cell_text(c.get("on_conflict")),
                " / ".join(
                    [example_line(e) for e in c.get("examples") or []]
                    + [cell_text(n) for n in c.get("notes") or []]
                ),
            ]
            for c in doc.get("conflicts") or []
        ],
        "No conflict.",
    )


def _verification(doc: dict[str, Any]) -> Section:
    return (
        "Verification",
        ["step", "result", "query", "expected", "actual", "error"],
        [
            [
                cell_text(v.get("step_id")),
                "ok"
                if v.get("ok")
                else "FAILED"
                if v.get("ok") is False
                else cell_text(v.get("status")),
                cell_text(v.get("query")),
                cell_text(v.get("expect")),
                cell_text(v.get("actual")),
                cell_text(v.get("error")),
            ]
            for v in doc.get("verification") or []
        ],
        "No verification step.",
    )


def _notifications(doc: dict[str, Any]) -> Section:
    return (
        "Notifications",
        ["step", "status", "message"],
        [
            [
                cell_text(n.get("step_id")),
                cell_text(n.get("status")),
                cell_text(n.get("message")),
            ]
            for n in doc.get("notifications") or []
        ],
        "No notification.",
    )


def _per_minute(doc: dict[str, Any]) -> Section:
    tags = ", ".join(doc.get("selected_tags") or []) or "selected tag"
    minutes = []
    for table, pts in (doc.get("series") or {}).items():
        for p in pts:
            sel, oth, rep = (p.get("selected") or 0, p.get("other") or 0, p.get("recovery") or 0)
            minutes.append(
                [
                    fmt_time(p.get("minute"))[:16],
                    table,
                    str(sel),
                    str(oth),
                    str(rep),
                    str(sel + oth + rep),
                ]
            )
    return (
        "Rows changed per minute",
        ["minute (UTC)", "table", tags, "other", "recovery", "total"],
        minutes,
        "No captured change of the affected tables in the window.",
    )


def run_facts(doc: dict[str, Any]) -> list[tuple[str, str]]:
    run = doc.get("run") or {}
    facts = [
        ("status", cell_text(run.get("status")) + (" (dry run)" if run.get("dry_run") else "")),
        ("runbook file", cell_text(run.get("file"))),
        ("description", cell_text(run.get("description"))),
        (
            "parameters",
            ", ".join(f"{k}={cell_text(v)}" for k, v in dict_of(run.get("params")).items()),
        ),
        ("started by", cell_text(run.get("started_by"))),
        ("started", fmt_time(run.get("started_at"))),
        ("finished", fmt_time(run.get("finished_at")) or "not finished"),
        ("duration", fmt_duration(run.get("duration_seconds"))),
        ("error", cell_text(run.get("error"))),
        ("selected tags", ", ".join(doc.get("selected_tags") or [])),
        ("affected tables", ", ".join(doc.get("affected_tables") or [])),
    ]
    return [(k, v) for k, v in facts if v]


def doc_title(doc: dict[str, Any]) -> str:
    run = doc.get("run") or {}
    name, run_id = cell_text(run.get("name")), cell_text(run.get("run_id"))
    return f"Incident report: runbook {name} (run {run_id})"
