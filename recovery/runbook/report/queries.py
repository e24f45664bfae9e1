"""What the report reads from the database: the run, its approvals, the rows per minute."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg import sql

from ...errors import RecoveryError
from .summary import as_int, iso_time

# Tags the toolkit puts on its own repair writes (undo.undo_tag, restore).
RECOVERY_TAG_RE = r"^recovery-(undo|restore)(-[0-9]+)?$"
BEFORE_TAG = timedelta(minutes=30)
LOOKBACK = timedelta(hours=24)
LEAD = timedelta(minutes=10)


def schema_sql(schema: str, query: str) -> sql.Composed:
    return sql.SQL(query).format(s=sql.Identifier(schema))


def load_run(
    conn: psycopg.Connection, run_id: int, schema: str
) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], datetime]:
    run = conn.execute(
        schema_sql(
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
        schema_sql(
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


def load_approvals(
    conn: psycopg.Connection, schema: str, wanted: list[tuple[str, int, dict[str, Any]]]
) -> list[dict[str, Any]]:
    ids = sorted({req for _step, req, _res in wanted})
    found: dict[int, dict[str, Any]] = {}
    if ids:
        for req, kind, rows, tables, required, by, at, status, ex_at, ex_by in conn.execute(
            schema_sql(
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
                "requested_at": iso_time(at),
                "status": status,
                "executed_by": ex_by,
                "executed_at": iso_time(ex_at),
                "approved": [],
            }
        for req, by, at in conn.execute(
            schema_sql(
                schema,
                """
                SELECT req_id, approved_by, approved_at FROM {s}.approvals
                WHERE req_id = ANY(%s) ORDER BY approved_at, approved_by""",
            ),
            [ids],
        ):
            found[req]["approved"].append({"by": by, "at": iso_time(at)})
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
                "rows": as_int(res.get("rows")),
                "tables": as_int(res.get("tables")),
                "required": as_int(res.get("required")),
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


def load_series(
    conn: psycopg.Connection,
    schema: str,
    names: list[str],
    tags: list[str],
    run_start: datetime,
    end: datetime,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The chart window and rows changed per table per minute in it (see the module doc)."""
    aff = schema_sql(
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
        + schema_sql(
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
        + schema_sql(
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
                "minute": iso_time(minute.replace(tzinfo=timezone.utc)),
                "selected": int(selected),
                "other": int(other),
                "recovery": int(repair),
            }
        )
    return {"start": iso_time(start), "end": iso_time(end), "rule": rule}, series
