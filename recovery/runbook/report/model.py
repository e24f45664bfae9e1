"""The report document of a run (`build()`): JSON-ready, rendered by markdown and html."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from ...capture.drain import catch_up
from ...db import DEFAULT_SCHEMA
from ...schema import require_schema
from .queries import load_approvals, load_run, load_series
from .summary import (
    as_int,
    dict_of,
    is_plan,
    is_table_step,
    iso_time,
    seconds_between,
    step_summary,
    table_rows,
    tags_of,
)

REPORT_VERSION = 1
COUNT_FIELDS = ("reinsert", "restore", "delete", "conflicts", "inserted", "updated", "deleted")


def build(conn: psycopg.Connection, run_id: int, *, schema: str = DEFAULT_SCHEMA) -> dict[str, Any]:
    """The report document of runbook run `run_id` (JSON-ready: str, int, float, list, dict).

    Reads only, in a transaction of its own or a savepoint of the caller's (left open).
    """
    catch_up(conn, schema, required=False)  # the WAL source: what was committed, drained
    with conn.transaction():
        require_schema(conn, schema)
        return _build(conn, run_id, schema)


def _build(conn: psycopg.Connection, run_id: int, schema: str) -> dict[str, Any]:
    run, step_rows, now = load_run(conn, run_id, schema)
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
    definition = dict_of(definition)
    end = finished_at or now
    steps = _steps(step_rows, definition)

    wanted: list[tuple[str, int, dict[str, Any]]] = []
    for s in steps:
        req_id = as_int(s["result"].get("req_id"))
        if req_id is not None:
            wanted.append((s["id"], req_id, s["result"]))
    approvals = load_approvals(conn, schema, wanted)
    by_req = {a["req_id"]: a for a in approvals}

    timeline = _timeline(steps, by_req)

    table_steps = [s for s in steps if is_table_step(s["kind"], s["result"])]
    plans = [s for s in table_steps if is_plan(s["kind"], s["result"]) and table_rows(s["result"])]
    applies = [
        s for s in table_steps if not is_plan(s["kind"], s["result"]) and table_rows(s["result"])
    ]
    blast, applied, conflicts = _table_results(plans, applies)
    verification, notifications = _verification(steps), _notifications(steps)

    names: list[str] = []
    tags: list[str] = []
    for s in table_steps:
        names += [str(t["table"]) for t in table_rows(s["result"]) if str(t["table"]) not in names]
        tags += [t for t in tags_of(s["result"].get("selector")) if t not in tags]
    if not tags and isinstance(dict_of(params).get("tag"), str):
        tags.append(params["tag"])
    window, series = load_series(conn, schema, names, tags, started_at, end)

    return {
        "report_version": REPORT_VERSION,
        "generated_at": iso_time(now),
        "run": {
            "run_id": rid,
            "name": name,
            "description": definition.get("description"),
            "file": file,
            "params": params if params is not None else {},
            "status": status,
            "dry_run": dry_run,
            "started_by": started_by,
            "started_at": iso_time(started_at),
            "finished_at": iso_time(finished_at),
            "duration_seconds": seconds_between(started_at, end) if finished_at else None,
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


def _steps(step_rows: list[tuple[Any, ...]], definition: dict[str, Any]) -> list[dict[str, Any]]:
    """Steps as recorded, then the runbook's steps the run never reached."""
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
                "result": dict_of(result),
                "error": err,
            }
        )
    defined = [dict_of(d) for d in definition.get("steps") or [] if isinstance(d, dict)]
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
    return steps


def _timeline(
    steps: list[dict[str, Any]], by_req: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    return [
        {
            "no": s["no"],
            "id": s["id"],
            "kind": s["kind"],
            "status": s["status"],
            "started_at": iso_time(s["started_at"]),
            "finished_at": iso_time(s["finished_at"]),
            "duration_seconds": seconds_between(s["started_at"], s["finished_at"]),
            "summary": step_summary(s["kind"], s["status"], s["result"], by_req)
            if s["result"]
            else "",
            "error": s["error"],
        }
        for s in steps
    ]


def _per_table(src: list[dict[str, Any]], fields: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for s in src:
        for t in table_rows(s["result"]):
            row: dict[str, Any] = {"step_id": s["id"], "table": str(t["table"])}
            row.update({f: as_int(t.get(f)) for f in fields})
            out.append(row)
    return out


def _table_results(
    plans: list[dict[str, Any]], applies: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The blast radius, the changes applied and the conflicts, per table."""
    blast = _per_table(plans or applies, ("reinsert", "restore", "delete", "conflicts"))
    for row, t in zip(blast, (t for s in plans or applies for t in table_rows(s["result"]))):
        row["total"] = sum(row[f] or 0 for f in ("reinsert", "restore", "delete"))
        if isinstance(t.get("notes"), list) and t["notes"]:  # restore: "table recreated", ...
            row["notes"] = [str(n) for n in t["notes"]]
    applied = _per_table(applies, ("inserted", "updated", "deleted", "conflicts"))
    conflicts = []
    for s in applies or plans:
        for t in table_rows(s["result"]):
            examples = t.get("conflict_examples")
            examples = examples if isinstance(examples, list) else []
            n = as_int(t.get("conflicts")) or 0
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
    return blast, applied, conflicts


def _verification(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    verification = []
    for s in steps:
        r = s["result"]
        if s["kind"] == "sql_check" or (
            s["kind"] != "notify" and "query" in r and not is_table_step(s["kind"], r)
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
    return verification


def _notifications(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "step_id": s["id"],
            "status": s["status"],
            "message": s["result"].get("message"),
            **{k: s["result"][k] for k in ("channel", "to", "target", "url") if k in s["result"]},
        }
        for s in steps
        if s["kind"] == "notify"
    ]
