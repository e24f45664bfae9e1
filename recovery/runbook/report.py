"""The incident report of a runbook run: Markdown, JSON and a self-contained HTML page.

`build()` reads one run (`runbook_runs`, `runbook_steps`), the approval requests its
steps name (`approval_requests`, `approvals`) and the captured statements of the
tables it touched (`stmt`, `captured`) into one JSON-ready document;
`render_markdown()` and `render_html()` turn that document (or report.json read
back) into text; `write_report()` writes all three files.  The runbook engine
calls `write_report()` at the end of every run.

Every step result is read tolerantly: any field may be missing, and what is there
is rendered.  The HTML page needs no network and no script: inline CSS and one
inline SVG bar chart per affected table (one bar per minute, rows written under
the selected tag in a strong colour, the repair's own writes in blue, other
writes in grey).

Time window of the chart (all times UTC):
  * start: 30 minutes before the first captured change of the affected tables
    under the selected tag(s) (the bad deploy), so the spike shows against the
    traffic before it; with no selected tag, or none of its changes captured,
    10 minutes before the first captured change of the affected tables in the
    24 hours before the run started (the run's start minus 10 minutes when there
    is none);
  * end: the run's finish, or now for a run that has not finished.
"Affected tables" are the tables named in the results of the run's plan, apply and
restore steps; a run that names none gets all captured tables that changed in
the window.  "Selected tags" are the tags of those steps' selectors.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..db import DEFAULT_SCHEMA
from ..errors import RecoveryError
from ..schema import require_schema

REPORT_VERSION = 1
PLAN_KINDS = ("rollback_plan", "restore_plan")
APPLY_KINDS = ("rollback_apply", "restore")
# Tags the toolkit puts on its own repair writes (undo.undo_tag, restore).
RECOVERY_TAG_RE = r"^recovery-(undo|restore)(-[0-9]+)?$"
BEFORE_TAG = timedelta(minutes=30)
LOOKBACK = timedelta(hours=24)
LEAD = timedelta(minutes=10)
COUNT_FIELDS = ("reinsert", "restore", "delete", "conflicts", "inserted", "updated", "deleted")

# ---------------------------------------------------------------------------------------------
# Building the document


def _iso(v: Any) -> str | None:
    if isinstance(v, datetime):
        dt = v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v
        return dt.astimezone(timezone.utc).isoformat()
    return None if v is None else str(v)


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return round((b - a).total_seconds(), 3)


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d+\s*", v):
        return int(v)
    return None


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    tables = result.get("tables")
    if not isinstance(tables, list):
        return []
    return [t for t in tables if isinstance(t, dict) and t.get("table") is not None]


def _tags_of(selector: Any) -> list[str]:
    sel = _dict(selector)
    out: list[str] = []
    for key in ("tags", "tag"):
        v = sel.get(key)
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            out += [str(x) for x in v if x is not None]
    return out


def describe_selector(selector: Any) -> str:
    """A selector dict (Selector.as_dict()) as the CLI options that make it."""
    sel = _dict(selector)
    parts: list[str] = []
    for key, opt in (
        ("tags", "tag"),
        ("tag", "tag"),
        ("txids", "txid"),
        ("tables", "table"),
        ("users", "user"),
        ("apps", "app"),
        ("exclude_tags", "exclude-tag"),
    ):
        v = sel.get(key)
        for item in v if isinstance(v, list) else [v] if v is not None else []:
            parts.append(f"--{opt} {item}")
    for key in ("since", "until"):
        if sel.get(key) is not None:
            parts.append(f"--{key} {sel[key]}")
    return " ".join(parts)


def _is_table_step(kind: str, result: dict[str, Any]) -> bool:
    return kind in PLAN_KINDS + APPLY_KINDS or bool(_table_rows(result))


def _is_plan(kind: str, result: dict[str, Any]) -> bool:
    return kind in PLAN_KINDS or (kind not in APPLY_KINDS and result.get("dry_run") is True)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _sum(rows: Iterable[dict[str, Any]], key: str) -> int:
    return sum(_int(r.get(key)) or 0 for r in rows)


def _short(text: Any, width: int = 80) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


def _summary(
    kind: str, status: str, result: dict[str, Any], approvals: dict[int, dict[str, Any]]
) -> str:
    """One line on what a step did, from whatever its result holds."""
    tables = _table_rows(result)
    if _is_table_step(kind, result):
        where = describe_selector(result.get("selector"))
        if result.get("snapshot") is not None:
            where = f"snapshot {result['snapshot']}"
        conflicts = _int(result.get("conflicts"))
        if conflicts is None:
            conflicts = _sum(tables, "conflicts")
        if _is_plan(kind, result):
            parts = [
                f"{k} {_sum(tables, f)}"
                for k, f in (
                    ("re-insert", "reinsert"),
                    ("restore", "restore"),
                    ("delete", "delete"),
                )
                if any(f in t for t in tables)
            ]
            total = sum(_sum(tables, f) for f in ("reinsert", "restore", "delete"))
            line = f"plan: {_plural(total, 'row')} in {_plural(len(tables), 'table')}"
            line += f" ({', '.join(parts)})" if parts else ""
            line += f"; {_plural(conflicts, 'conflict')}" if conflicts else ""
        else:
            line = (
                f"inserted {_sum(tables, 'inserted')}, updated {_sum(tables, 'updated')}, "
                f"deleted {_sum(tables, 'deleted')} in {_plural(len(tables), 'table')}"
            )
            if conflicts:
                line += f"; {_plural(conflicts, 'conflict')}"
                if result.get("on_conflict") == "skip":
                    line += " kept (on-conflict skip)"
                elif result.get("on_conflict"):
                    line += f" (on-conflict {result['on_conflict']})"
            if result.get("status") not in (None, "done"):
                line += f"; {result['status']}"
        return line + (f"; {where}" if where else "")
    req = _int(result.get("req_id"))
    if kind == "approval" or req is not None:
        a = approvals.get(req) if req is not None else None
        if a is None:
            return f"approval request #{req}" if req is not None else "approval"
        who = [x["by"] for x in a["approved"] if x.get("by")]
        head = f"request #{req}"
        bits = [str(b) for b in (a.get("kind"),) if b]
        if a.get("rows") is not None:
            bits.append(_plural(a["rows"], "row"))
        if a.get("tables") is not None:
            bits.append(_plural(a["tables"], "table"))
        head += f" ({', '.join(bits)})" if bits else ""
        if who:
            return f"{head}: approved by {', '.join(who)}"
        need = f" ({len(who)} of {a['required']})" if a.get("required") is not None else ""
        return f"{head}: waiting for approval{need}"
    if kind == "sql_check" or "query" in result:
        ok = result.get("ok")
        if ok is None and status in ("done", "failed"):
            ok = status == "done"
        line = "ok" if ok else "FAILED" if ok is False else "check"
        if "actual" in result:
            line += f": got {json.dumps(result['actual'], default=str)}"
        if "expect" in result:
            line += f", expected {json.dumps(result['expect'], default=str)}"
        return line
    if kind == "notify" or "message" in result:
        return f"notified: {_short(result.get('message', ''), 100)}"
    scalars = [
        f"{k}={v}" for k, v in result.items() if isinstance(v, (str, int, float, bool)) or v is None
    ][:4]
    return _short(", ".join(scalars), 100)


def _q(schema: str, query: str) -> sql.Composed:
    return sql.SQL(query).format(s=sql.Identifier(schema))


def _load_run(
    conn: psycopg.Connection, run_id: int, schema: str
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], datetime]:
    run = conn.execute(
        _q(
            schema,
            """
        SELECT run_id, name, file, params, definition, status, dry_run, started_by, started_at,
               finished_at, error
        FROM {s}.runbook_runs WHERE run_id = %s""",
        ),
        [run_id],
    ).fetchone()
    if run is None:
        raise RecoveryError(f"no runbook run {run_id}: see `recovery runbook list` for runs")
    steps = conn.execute(
        _q(
            schema,
            """
        SELECT step_no, step_id, kind, status, started_at, finished_at, result, error
        FROM {s}.runbook_steps WHERE run_id = %s
        ORDER BY step_no, started_at NULLS LAST, step_id""",
        ),
        [run_id],
    ).fetchall()
    # fetchone() is typed Optional; a SELECT without FROM returns one row
    now = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    return run, steps, now


def _load_approvals(
    conn: psycopg.Connection, schema: str, wanted: list[tuple[str, int, dict[str, Any]]]
) -> list[dict[str, Any]]:
    ids = sorted({req for _step, req, _res in wanted})
    found: dict[int, dict[str, Any]] = {}
    if ids:
        for req, kind, rows, tables, required, by, at, status, ex_at, ex_by in conn.execute(
            _q(
                schema,
                """
                SELECT req_id, kind, rows, tables, required, requested_by, requested_at, status,
                       executed_at, executed_by
                FROM {s}.approval_requests WHERE req_id = ANY(%s)""",
            ),
            [ids],
        ):
            found[req] = {
                "kind": kind,
                "rows": rows,
                "tables": tables,
                "required": required,
                "requested_by": by,
                "requested_at": _iso(at),
                "status": status,
                "executed_by": ex_by,
                "executed_at": _iso(ex_at),
                "approved": [],
            }
        for req, by, at in conn.execute(
            _q(
                schema,
                """
                SELECT req_id, approved_by, approved_at FROM {s}.approvals
                WHERE req_id = ANY(%s) ORDER BY approved_at, approved_by""",
            ),
            [ids],
        ):
            found[req]["approved"].append({"by": by, "at": _iso(at)})
    out = []
    seen: set[tuple[str, int]] = set()
    for step_id, req, res in wanted:
        if (step_id, req) in seen:
            continue
        seen.add((step_id, req))
        row = found.get(req)
        if row is None:  # not in the database (pruned, another schema): what the step kept
            approved = res.get("approved_by")
            row = {
                "kind": res.get("kind"),
                "rows": _int(res.get("rows")),
                "tables": _int(res.get("tables")),
                "required": _int(res.get("required")),
                "requested_by": res.get("requested_by"),
                "requested_at": res.get("requested_at"),
                "status": res.get("status"),
                "executed_by": res.get("executed_by"),
                "executed_at": res.get("executed_at"),
                "approved": [
                    {"by": b, "at": None}
                    for b in (
                        approved if isinstance(approved, list) else [approved] if approved else []
                    )
                ],
            }
        out.append({"step_id": step_id, "req_id": req, **row})
    return out


def _series(
    conn: psycopg.Connection,
    schema: str,
    names: list[str],
    tags: list[str],
    run_start: datetime,
    end: datetime,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The chart window and rows changed per table per minute in it (see the module doc)."""
    aff = _q(
        schema,
        """
        WITH aff AS (
            SELECT table_id, schema_name || '.' || table_name AS name FROM {s}.captured
            WHERE %(all)s OR schema_name || '.' || table_name = ANY(%(names)s))""",
    )
    args: dict[str, Any] = {
        "all": not names,
        "names": names,
        "tags": tags,
        "end": end,
        "lookback": run_start - LOOKBACK,
        "re": RECOVERY_TAG_RE,
    }
    # fetchone() is typed Optional; a SELECT of two scalar subqueries returns one row
    first_tagged, first_any = conn.execute(
        aff
        + _q(
            schema,
            """
        SELECT (SELECT min(st.at) FROM {s}.stmt st JOIN aff USING (table_id)
                WHERE st.tag = ANY(%(tags)s) AND st.at <= %(end)s),
               (SELECT min(st.at) FROM {s}.stmt st JOIN aff USING (table_id)
                WHERE st.at >= %(lookback)s AND st.at <= %(end)s)""",
        ),
        args,
    ).fetchone()  # type: ignore[misc]
    if first_tagged is not None:
        start = first_tagged - BEFORE_TAG
        rule = (
            f"from {BEFORE_TAG.seconds // 60} min before the first captured change under "
            f"the selected tag ({', '.join(tags)}) to the run's finish"
        )
    elif first_any is not None:
        start = first_any - LEAD
        rule = (
            f"from {LEAD.seconds // 60} min before the first captured change of the "
            "affected tables in the 24 h before the run started, to the run's finish"
        )
    else:
        start = run_start - LEAD
        rule = (
            f"from {LEAD.seconds // 60} min before the run started to its finish "
            "(no captured change of the affected tables in the 24 h before it)"
        )
    start = min(start, end)
    args["start"] = start
    series: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for name, minute, selected, other, repair in conn.execute(
        aff
        + _q(
            schema,
            """
        SELECT a.name, date_trunc('minute', st.at AT TIME ZONE 'UTC') AS minute,
               coalesce(sum(st.nrows) FILTER (WHERE st.tag = ANY(%(tags)s)), 0)::bigint,
               coalesce(sum(st.nrows) FILTER (WHERE NOT coalesce(st.tag = ANY(%(tags)s), false)
                                              AND NOT coalesce(st.tag ~ %(re)s, false)), 0)::bigint,
               coalesce(sum(st.nrows) FILTER (WHERE NOT coalesce(st.tag = ANY(%(tags)s), false)
                                              AND st.tag ~ %(re)s), 0)::bigint
        FROM {s}.stmt st JOIN aff a USING (table_id)
        WHERE st.at >= %(start)s AND st.at <= %(end)s
        GROUP BY 1, 2 ORDER BY 1, 2""",
        ),
        args,
    ):
        series.setdefault(name, []).append(
            {
                "minute": _iso(minute.replace(tzinfo=timezone.utc)),
                "selected": int(selected),
                "other": int(other),
                "recovery": int(repair),
            }
        )
    return {"start": _iso(start), "end": _iso(end), "rule": rule}, series


def build(conn: psycopg.Connection, run_id: int, *, schema: str = DEFAULT_SCHEMA) -> dict[str, Any]:
    """The report document of runbook run `run_id` (JSON-ready: str, int, float, list, dict).

    Reads only, in a transaction of its own or a savepoint of the caller's (left open).
    """
    with conn.transaction():
        require_schema(conn, schema)
        return _build(conn, run_id, schema)


def _build(conn: psycopg.Connection, run_id: int, schema: str) -> dict[str, Any]:
    run, step_rows, now = _load_run(conn, run_id, schema)
    (
        rid,
        name,
        file,
        params,
        definition,
        status,
        dry_run,
        started_by,
        started_at,
        finished_at,
        error,
    ) = run
    definition = _dict(definition)
    end = finished_at or now

    # Steps as recorded, then the runbook's steps the run never reached.
    steps: list[dict[str, Any]] = []
    recorded = set()
    for no, sid, kind, st, s_at, f_at, result, err in step_rows:
        recorded.add(sid)
        steps.append(
            {
                "no": no,
                "id": sid,
                "kind": kind,
                "status": st,
                "started_at": s_at,
                "finished_at": f_at,
                "result": _dict(result),
                "error": err,
            }
        )
    defined = [_dict(d) for d in definition.get("steps") or [] if isinstance(d, dict)]
    # Numbered as the engine numbers steps (0- or 1-based): learnt from a recorded one.
    offset = next(
        (
            s["no"] - n
            for s in steps
            for n, d in enumerate(defined)
            if d.get("id") == s["id"] and isinstance(s["no"], int)
        ),
        0,
    )
    for n, d in enumerate(defined):
        if d.get("id") is not None and d["id"] not in recorded:
            steps.append(
                {
                    "no": n + offset,
                    "id": str(d["id"]),
                    "kind": str(d.get("kind", "")),
                    "status": "not run",
                    "started_at": None,
                    "finished_at": None,
                    "result": {},
                    "error": None,
                }
            )

    wanted: list[tuple[str, int, dict[str, Any]]] = []
    for s in steps:
        req_id = _int(s["result"].get("req_id"))
        if req_id is not None:
            wanted.append((s["id"], req_id, s["result"]))
    approvals = _load_approvals(conn, schema, wanted)
    by_req = {a["req_id"]: a for a in approvals}

    timeline = [
        {
            "no": s["no"],
            "id": s["id"],
            "kind": s["kind"],
            "status": s["status"],
            "started_at": _iso(s["started_at"]),
            "finished_at": _iso(s["finished_at"]),
            "duration_seconds": _seconds(s["started_at"], s["finished_at"]),
            "summary": _summary(s["kind"], s["status"], s["result"], by_req) if s["result"] else "",
            "error": s["error"],
        }
        for s in steps
    ]

    table_steps = [s for s in steps if _is_table_step(s["kind"], s["result"])]
    plans = [
        s for s in table_steps if _is_plan(s["kind"], s["result"]) and _table_rows(s["result"])
    ]
    applies = [
        s for s in table_steps if not _is_plan(s["kind"], s["result"]) and _table_rows(s["result"])
    ]

    def per_table(src: list[dict[str, Any]], fields: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for s in src:
            for t in _table_rows(s["result"]):
                row: dict[str, Any] = {"step_id": s["id"], "table": str(t["table"])}
                row.update({f: _int(t.get(f)) for f in fields})
                out.append(row)
        return out

    blast = per_table(plans or applies, ("reinsert", "restore", "delete", "conflicts"))
    for row, t in zip(blast, (t for s in plans or applies for t in _table_rows(s["result"]))):
        row["total"] = sum(row[f] or 0 for f in ("reinsert", "restore", "delete"))
        if isinstance(t.get("notes"), list) and t["notes"]:  # restore: "table recreated", ...
            row["notes"] = [str(n) for n in t["notes"]]
    applied = per_table(applies, ("inserted", "updated", "deleted", "conflicts"))
    conflicts = []
    for s in applies or plans:
        for t in _table_rows(s["result"]):
            examples = t.get("conflict_examples")
            examples = examples if isinstance(examples, list) else []
            n = _int(t.get("conflicts")) or 0
            if n or examples:
                conflicts.append(
                    {
                        "step_id": s["id"],
                        "table": str(t["table"]),
                        "conflicts": n,
                        "on_conflict": s["result"].get("on_conflict"),
                        "examples": examples,
                        "notes": [
                            str(x) for x in t.get("notes") or [] if isinstance(t.get("notes"), list)
                        ],
                    }
                )

    verification = []
    for s in steps:
        r = s["result"]
        if s["kind"] == "sql_check" or (
            s["kind"] != "notify" and "query" in r and not _is_table_step(s["kind"], r)
        ):
            ok = r.get("ok")
            if ok is None and s["status"] in ("done", "failed"):
                ok = s["status"] == "done"
            verification.append(
                {
                    "step_id": s["id"],
                    "status": s["status"],
                    "query": r.get("query"),
                    "expect": r.get("expect"),
                    "actual": r.get("actual"),
                    "ok": ok,
                    "error": s["error"],
                }
            )
    notifications = [
        {
            "step_id": s["id"],
            "status": s["status"],
            "message": s["result"].get("message"),
            **{k: s["result"][k] for k in ("channel", "to", "target", "url") if k in s["result"]},
        }
        for s in steps
        if s["kind"] == "notify"
    ]

    names: list[str] = []
    tags: list[str] = []
    for s in table_steps:
        names += [str(t["table"]) for t in _table_rows(s["result"]) if str(t["table"]) not in names]
        tags += [t for t in _tags_of(s["result"].get("selector")) if t not in tags]
    if not tags and isinstance(_dict(params).get("tag"), str):
        tags.append(params["tag"])
    window, series = _series(conn, schema, names, tags, started_at, end)

    return {
        "report_version": REPORT_VERSION,
        "generated_at": _iso(now),
        "run": {
            "run_id": rid,
            "name": name,
            "description": definition.get("description"),
            "file": file,
            "params": params if params is not None else {},
            "status": status,
            "dry_run": dry_run,
            "started_by": started_by,
            "started_at": _iso(started_at),
            "finished_at": _iso(finished_at),
            "duration_seconds": _seconds(started_at, end) if finished_at else None,
            "error": error,
        },
        "steps": timeline,
        "approvals": approvals,
        "blast_radius": blast,
        "applied": applied,
        "conflicts": conflicts,
        "verification": verification,
        "notifications": notifications,
        "affected_tables": names or sorted(n for n, pts in series.items() if pts),
        "selected_tags": tags,
        "window": window,
        "series": {n: pts for n, pts in series.items() if pts or names},
    }


# ---------------------------------------------------------------------------------------------
# Rendering helpers shared by Markdown and HTML


def _dt(v: Any) -> datetime | None:
    if not isinstance(v, str):
        return None
    try:
        d = datetime.fromisoformat(v)
    except ValueError:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def fmt_time(v: Any) -> str:
    d = _dt(v)
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


def _val(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str, ensure_ascii=False)
    return str(v)


def _example(e: Any) -> str:
    """One conflict example (undo's {action, key, columns, values}) as a line."""
    if not isinstance(e, dict):
        return _val(e)
    key = e.get("key")
    head = ", ".join(f"{k}={v}" for k, v in key.items()) if isinstance(key, dict) else _val(key)
    parts = [f"{e['action']} " if e.get("action") else "", f"row {head}" if head else "row"]
    values = e.get("values")
    cols = []
    for col, v in values.items() if isinstance(values, dict) else []:
        if isinstance(v, dict):
            cols.append(
                f"{col}: restore to {_val(v.get('restore_to'))!s}, left by change "
                f"{_val(v.get('left_by_change'))}, now {_val(v.get('now'))}"
            )
        else:
            cols.append(f"{col}: {_val(v)}")
    if not cols and isinstance(e.get("columns"), list):
        cols.append("columns " + ", ".join(map(str, e["columns"])))
    return "".join(parts) + (f" ({'; '.join(cols)})" if cols else "")


def _sections(doc: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, headers, rows, text when there are no rows) of every table of the report."""
    tags = ", ".join(doc.get("selected_tags") or []) or "selected tag"
    out = []
    out.append(
        (
            "Timeline",
            ["#", "step", "kind", "status", "started", "finished", "duration", "summary", "error"],
            [
                [
                    _val(s.get("no")),
                    _val(s.get("id")),
                    _val(s.get("kind")),
                    _val(s.get("status")),
                    fmt_time(s.get("started_at")),
                    fmt_time(s.get("finished_at")),
                    fmt_duration(s.get("duration_seconds")),
                    _val(s.get("summary")),
                    _val(s.get("error")),
                ]
                for s in doc.get("steps") or []
            ],
            "The run recorded no step.",
        )
    )
    out.append(
        (
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
                    _val(a.get("step_id")),
                    f"#{a.get('req_id')}",
                    _val(a.get("kind")),
                    _val(a.get("rows")),
                    _val(a.get("tables")),
                    _val(a.get("requested_by")),
                    fmt_time(a.get("requested_at")),
                    ", ".join(_val(x.get("by")) for x in a.get("approved") or []),
                    ", ".join(fmt_time(x.get("at")) for x in a.get("approved") or []),
                    _val(a.get("status")),
                    _val(a.get("executed_by")),
                    fmt_time(a.get("executed_at")),
                ]
                for a in doc.get("approvals") or []
            ],
            "No approval was requested.",
        )
    )
    blast = doc.get("blast_radius") or []
    notes = any(b.get("notes") for b in blast)
    out.append(
        (
            "Blast radius",
            ["step", "table", "re-insert", "restore", "delete", "total", "conflicts"]
            + (["notes"] if notes else []),
            [
                [
                    _val(b.get("step_id")),
                    _val(b.get("table")),
                    _val(b.get("reinsert")),
                    _val(b.get("restore")),
                    _val(b.get("delete")),
                    _val(b.get("total")),
                    _val(b.get("conflicts")),
                ]
                + (["; ".join(map(_val, b.get("notes") or []))] if notes else [])
                for b in blast
            ],
            "No plan was made.",
        )
    )
    out.append(
        (
            "Changes applied",
            ["step", "table", "inserted", "updated", "deleted", "conflicts"],
            [
                [
                    _val(b.get("step_id")),
                    _val(b.get("table")),
                    _val(b.get("inserted")),
                    _val(b.get("updated")),
                    _val(b.get("deleted")),
                    _val(b.get("conflicts")),
                ]
                for b in doc.get("applied") or []
            ],
            "Nothing was applied.",
        )
    )
    out.append(
        (
            "Conflicts kept",
            ["step", "table", "conflicts", "on conflict", "examples"],
            [
                [
                    _val(c.get("step_id")),
                    _val(c.get("table")),
                    _val(c.get("conflicts")),
                    _val(c.get("on_conflict")),
                    " / ".join(
                        [_example(e) for e in c.get("examples") or []]
                        + [_val(n) for n in c.get("notes") or []]
                    ),
                ]
                for c in doc.get("conflicts") or []
            ],
            "No conflict.",
        )
    )
    out.append(
        (
            "Verification",
            ["step", "result", "query", "expected", "actual", "error"],
            [
                [
                    _val(v.get("step_id")),
                    "ok"
                    if v.get("ok")
                    else "FAILED"
                    if v.get("ok") is False
                    else _val(v.get("status")),
                    _val(v.get("query")),
                    _val(v.get("expect")),
                    _val(v.get("actual")),
                    _val(v.get("error")),
                ]
                for v in doc.get("verification") or []
            ],
            "No verification step.",
        )
    )
    out.append(
        (
            "Notifications",
            ["step", "status", "message"],
            [
                [_val(n.get("step_id")), _val(n.get("status")), _val(n.get("message"))]
                for n in doc.get("notifications") or []
            ],
            "No notification.",
        )
    )
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
    out.append(
        (
            "Rows changed per minute",
            ["minute (UTC)", "table", tags, "other", "recovery", "total"],
            minutes,
            "No captured change of the affected tables in the window.",
        )
    )
    return out


def _run_facts(doc: dict[str, Any]) -> list[tuple[str, str]]:
    run = doc.get("run") or {}
    facts = [
        ("status", _val(run.get("status")) + (" (dry run)" if run.get("dry_run") else "")),
        ("runbook file", _val(run.get("file"))),
        ("description", _val(run.get("description"))),
        ("parameters", ", ".join(f"{k}={_val(v)}" for k, v in _dict(run.get("params")).items())),
        ("started by", _val(run.get("started_by"))),
        ("started", fmt_time(run.get("started_at"))),
        ("finished", fmt_time(run.get("finished_at")) or "not finished"),
        ("duration", fmt_duration(run.get("duration_seconds"))),
        ("error", _val(run.get("error"))),
        ("selected tags", ", ".join(doc.get("selected_tags") or [])),
        ("affected tables", ", ".join(doc.get("affected_tables") or [])),
    ]
    return [(k, v) for k, v in facts if v]


def _title(doc: dict[str, Any]) -> str:
    run = doc.get("run") or {}
    return f"Incident report: runbook {_val(run.get('name'))} (run {_val(run.get('run_id'))})"


# ---------------------------------------------------------------------------------------------
# Markdown


_MD_SPECIAL = re.compile(r"([\\|<>*`])")


def _md(v: str) -> str:
    """A value in a Markdown line or table cell: one line, markup characters escaped."""
    return " ".join(_MD_SPECIAL.sub(r"\\\1", v).split())


def render_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# {_md(_title(doc))}", ""]
    lines += [f"- **{k}**: {_md(v)}" for k, v in _run_facts(doc)]
    window = doc.get("window") or {}
    for title, headers, rows, empty in _sections(doc):
        lines += ["", f"## {title}", ""]
        if title.startswith("Rows changed") and window:
            lines += [
                f"Window: {fmt_time(window.get('start'))} to {fmt_time(window.get('end'))}"
                f" ({_md(_val(window.get('rule')))}).",
                "",
            ]
        if not rows:
            lines.append(empty)
            continue
        lines.append("| " + " | ".join(_md(h) for h in headers) + " |")
        lines.append("|" + "|".join("---" for _ in headers) + "|")
        lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    lines += ["", f"_Generated {fmt_time(doc.get('generated_at'))} by recovery._", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# HTML with an inline SVG chart

SELECTED_COLOUR = "#d62728"
RECOVERY_COLOUR = "#1f77b4"
OTHER_COLOUR = "#b0b0b0"
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


def _e(v: Any) -> str:
    return html.escape(_val(v), quote=True)


def _nice(n: int) -> int:
    if n <= 0:
        return 1
    base: int = 10 ** (len(str(n)) - 1)  # int ** int is typed Any (a negative power is a float)
    for m in (1, 2, 5, 10):
        if n <= m * base:
            return m * base
    return 10 * base


def _minute(d: datetime) -> datetime:
    return d.replace(second=0, microsecond=0)


def _chart(
    table: str,
    pts: list[dict[str, Any]],
    start: datetime,
    end: datetime,
    tags: str,
    markers: list[tuple[str, datetime]],
) -> str:
    width, height, left, right, top, bottom = 1000, 230, 60, 20, 20, 46
    pw, ph = width - left - right, height - top - bottom
    first, last = _minute(start), _minute(end)
    slots = int((last - first).total_seconds() // 60) + 1
    slot_w = pw / slots
    bar_w = max(1.0, slot_w * 0.8)
    totals = [
        (p.get("selected") or 0) + (p.get("other") or 0) + (p.get("recovery") or 0) for p in pts
    ]
    ymax = _nice(max(totals, default=0))

    def y(v: float) -> float:
        return top + ph - ph * v / ymax

    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'data-table="{_e(table)}" aria-label="{_e(f"rows changed per minute in {table}")}">',
        f'<text x="{left}" y="13" font-weight="600">{_e(table)}</text>',
    ]
    for v in (0, ymax // 2 if ymax % 2 == 0 else ymax / 2, ymax):
        yy = y(v)
        out.append(
            f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{yy:.1f}" '
            f'y2="{yy:.1f}"/><text x="{left - 6}" y="{yy + 4:.1f}" '
            f'text-anchor="end">{_e(f"{v:g}")}</text>'
        )
    # Time axis: ticks on round minutes, at most ~12 labels.
    step = next(
        (s for s in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440) if slots / s <= 12), 2880
    )
    for i in range(slots):
        t = first + timedelta(minutes=i)
        if (t.hour * 60 + t.minute) % step:
            continue
        x = left + (i + 0.5) * slot_w
        out.append(
            f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" '
            f'y2="{top + ph + 4}"/><text x="{x:.1f}" y="{top + ph + 16}" '
            f'text-anchor="middle">{_e(t.strftime("%H:%M"))}</text>'
        )
    out.append(
        f'<line class="axis" x1="{left}" x2="{left + pw}" y1="{top + ph}" '
        f'y2="{top + ph}"/><line class="axis" x1="{left}" x2="{left}" y1="{top}" '
        f'y2="{top + ph}"/>'
    )
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">'
        f"{_e(f'minute (UTC), {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}')}</text>"
        f'<text x="14" y="{top + ph / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2:.1f})">rows</text>'
    )
    for p, total in zip(pts, totals):
        at = _dt(p.get("minute"))
        i = int((_minute(at) - first).total_seconds() // 60) if at is not None else -1
        if not 0 <= i < slots or at is None:
            continue
        x = left + i * slot_w + (slot_w - bar_w) / 2
        sel, oth, rep = p.get("selected") or 0, p.get("other") or 0, p.get("recovery") or 0
        tip = f"{at:%Y-%m-%d %H:%M} UTC, {table}: {total} rows ({sel} under {tags}, {oth} other"
        tip += f", {rep} written by recovery)" if rep else ")"
        out.append(
            f'<rect class="bar" data-minute="{_e(p.get("minute"))}" data-rows="{total}" '
            f'data-selected="{sel}" data-other="{oth}" data-recovery="{rep}" '
            f'x="{x:.2f}" y="{y(total):.2f}" width="{bar_w:.2f}" '
            f'height="{ph * total / ymax:.2f}" fill="{OTHER_COLOUR}">'
            f"<title>{_e(tip)}</title></rect>"
        )
        # Segments over the grey bar: selected at the bottom, recovery's writes on top.
        for cls, lo, n, colour in (
            ("selected", 0, sel, SELECTED_COLOUR),
            ("recovery", sel + oth, rep, RECOVERY_COLOUR),
        ):
            if n:
                out.append(
                    f'<rect class="seg seg-{cls}" pointer-events="none" x="{x:.2f}" '
                    f'y="{y(lo + n):.2f}" width="{bar_w:.2f}" '
                    f'height="{ph * n / ymax:.2f}" fill="{colour}"/>'
                )
    for n, (label, when) in enumerate(markers):
        if first <= _minute(when) <= last:
            x = left + ((when - first).total_seconds() / 60) * slot_w
            # Labels on separate lines (start and finish are often close), kept inside.
            anchor, dx = ("end", -3) if x > left + pw - 90 else ("start", 3)
            out.append(
                f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" '
                f'y2="{top + ph}"/><text x="{x + dx:.1f}" y="{top + 10 + 12 * n}" '
                f'text-anchor="{anchor}">{_e(label)}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def render_html(doc: dict[str, Any]) -> str:
    """A self-contained page: inline CSS and SVG, no script, nothing fetched."""
    title = _title(doc)
    tags = ", ".join(doc.get("selected_tags") or []) or "selected tag"
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        '<dl class="facts">',
    ]
    parts += [f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _run_facts(doc)]
    parts.append("</dl>")
    window = doc.get("window") or {}
    start, end = _dt(window.get("start")), _dt(window.get("end"))
    run = doc.get("run") or {}
    markers = [
        (label, d)
        for label, d in (
            ("run started", _dt(run.get("started_at"))),
            ("run finished", _dt(run.get("finished_at"))),
        )
        if d is not None
    ]
    # The chart first: it is what a reader looks for; the numbers behind it come last.
    parts.append("<h2>Rows changed per minute</h2>")
    parts.append(
        f"<p>Window: {_e(fmt_time(window.get('start')))} to "
        f"{_e(fmt_time(window.get('end')))} ({_e(window.get('rule'))}).</p>"
    )
    parts.append(
        f'<p class="legend"><span style="background:{SELECTED_COLOUR}"></span>'
        f'{_e(tags)}<span style="background:{OTHER_COLOUR}"></span>other writes'
        f'<span style="background:{RECOVERY_COLOUR}"></span>written by '
        "recovery (the repair)</p>"
    )
    series = doc.get("series") or {}
    for table, pts in series.items():
        if pts and start is not None and end is not None:
            parts.append(_chart(table, pts, start, end, tags, markers))
        else:
            parts.append(f"<p>{_e(table)}: no captured change in the window.</p>")
    if not series:
        parts.append("<p>No captured change of the affected tables in the window.</p>")
    for title_, headers, rows, empty in _sections(doc):
        if title_.startswith("Rows changed"):
            title_ += ", in numbers"
        parts.append(f"<h2>{_e(title_)}</h2>")
        if not rows:
            parts.append(f"<p>{_e(empty)}</p>")
            continue
        parts.append(
            "<table><thead><tr>"
            + "".join(f"<th>{_e(h)}</th>" for h in headers)
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
                cells.append(f"<td{cls}>{_e(c)}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
    parts.append(
        f"<p><small>Generated {_e(fmt_time(doc.get('generated_at')))} by recovery."
        "</small></p></body></html>\n"
    )
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Files


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(
    conn: psycopg.Connection,
    run_id: int,
    out_dir: str | Path | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
) -> dict[str, Path]:
    """Write report.md, report.json and report.html of run `run_id` into out_dir
    (default ./runbook-reports/run-<run_id>/, created as needed) and return their absolute
    paths as {"md": ..., "json": ..., "html": ...}.  Each file is replaced atomically."""
    doc = build(conn, run_id, schema=schema)
    out = (
        Path(out_dir) if out_dir is not None else Path("runbook-reports") / f"run-{run_id}"
    ).absolute()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "json": out / "report.json", "html": out / "report.html"}
    _write(paths["json"], json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
    _write(paths["md"], render_markdown(doc))
    _write(paths["html"], render_html(doc))
    return paths
