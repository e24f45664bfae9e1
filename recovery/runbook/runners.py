"""What each step kind does: one function per kind, taking the run's Execution and the
step's arguments, returning the step's result (steps.KINDS names them)."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import asdict
from decimal import Decimal
from typing import Any

import pglast
import psycopg
from pglast import ast as pg_ast
from pglast.parser import ParseError

from .. import approval, marks
from ..capture import journal
from ..capture import triggers as capture
from ..errors import ApprovalRequired, RecoveryError, first_line
from ..restore import restore as restore_fn
from ..selector import Selector
from ..snapshot import sqlscope
from ..snapshot import stores as snapshot
from ..undo.engine import rollback
from .context import CheckFailed, Execution, Wait
from .state import record_step, rollback_op
from .values import plain

APPLIED = ("inserted", "updated", "deleted")


def run_capture_on(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    return {"tables": capture.enable(x.conn, a["tables"], schema=x.schema, source=a.get("source"))}


def run_capture_off(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    return {"tables": capture.disable(x.conn, a["tables"], schema=x.schema)}


def run_mark(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    note = a.get("note") or f"runbook {x.rb.name}, run {x.run_id}"
    return marks.create_mark(x.conn, a["name"], note=note, schema=x.schema).to_dict()


def _analyze(
    x: Execution, path: str
) -> tuple[list[sqlscope.Statement], list[snapshot.Spec], dict[str, Any]]:
    return sqlscope.plan_for_sql(x.conn, sqlscope.read_sql_file(path), path, totals=True)


def run_analyze_sql(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    return _analyze(x, a["file"])[2]


def run_snapshot(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    tables, wheres = a.get("tables", []), a.get("where", [])
    if not tables and not a.get("for_sql"):
        raise RecoveryError("a snapshot step needs tables or for_sql")
    specs = snapshot.table_specs(x.conn, tables, wheres) if tables else []
    source: dict[str, Any] = {"tables": tables, "where": wheres, "runbook_run": x.run_id}
    if a.get("for_sql"):
        _, more, source["for_sql"] = _analyze(x, a["for_sql"])
        specs += more
    info = snapshot.create(
        x.conn, a["name"], specs, store=a.get("store"), source=source, schema=x.schema
    )
    return info.to_dict()


def run_snapshot_verify(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    info = snapshot.find(x.conn, a["name"], store=a.get("store"), schema=x.schema)
    return snapshot.verify(x.conn, info, schema=x.schema).to_dict()


def run_changes(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    return journal.changes(x.conn, Selector.from_dict(a), schema=x.schema).to_dict()


def run_diff(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    found = journal.diff(x.conn, Selector.from_dict(a), limit=a.get("limit", 20), schema=x.schema)
    return {"count": len(found), "changes": [asdict(r) for r in found]}


def sized(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A plan's or an operation's report with rows (the sum of keys) and table_count added."""
    d = plain(d)
    counts = [sum(t.get(k) or 0 for k in keys) for t in d.get("tables", [])]
    return {**d, "rows": sum(counts), "table_count": sum(1 for n in counts if n)}


def _approval_extra(x: Execution, step_id: str | None) -> dict[str, Any]:
    """rollback()/restore() keywords from the approval step an apply step names: its
    request, and its thresholds (so that the apply needs an approval when it did)."""
    res = x.results.get(step_id) if step_id else None
    if not res:
        return {}
    args = res.get("args") or {}
    # After a refusal because the plan changed, the apply recorded a request for the new
    # plan: once that is approved, resume applies under it.
    return {
        "approval": x.pending_approval or res.get("req_id"),
        "max_rows_without_approval": args.get("max_rows"),
        "max_tables_without_approval": args.get("max_tables"),
    }


def run_rollback_plan(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    rep = rollback(
        x.conn,
        Selector.from_dict(a),
        on_conflict=a.get("on_conflict", "fail"),
        dry_run=True,
        schema=x.schema,
    )
    return sized(rep.to_dict(), ("reinsert", "restore", "delete"))


def run_rollback_apply(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    recorded: list[int] = []

    def progress(_table: str, _rows: int) -> None:
        # After each committed batch: keep the operation's id, for resume after a crash.
        if not recorded and x.step is not None:
            op = rollback_op(x, x.step, a)
            if op is not None:
                recorded.append(op)
                record_step(x, x.n, x.step, "started", {"args": a, "op_id": op})

    rep = rollback(
        x.conn,
        Selector.from_dict(a),
        on_conflict=a.get("on_conflict", "fail"),
        batch_size=a.get("batch_size"),
        lock_timeout=a.get("lock_timeout", "5s"),
        schema=x.schema,
        progress=progress,
        **_approval_extra(x, a.get("approval")),
    )
    return sized(rep.to_dict(), APPLIED)


def run_restore_plan(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    info = snapshot.find(x.conn, a["snapshot"], store=a.get("store"), schema=x.schema)
    rep = restore_fn(
        x.conn,
        info,
        tables=a.get("tables", ()),
        dry_run=True,
        delete_new=a.get("delete_new", False),
        schema=x.schema,
    )
    return {
        **sized(rep.to_dict(), ("reinsert", "restore", "delete")),
        "created_at": info.created_at,
    }


def run_restore(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    info = snapshot.find(x.conn, a["snapshot"], store=a.get("store"), schema=x.schema)
    rep = restore_fn(
        x.conn,
        info,
        tables=a.get("tables", ()),
        delete_new=a.get("delete_new", False),
        lock_timeout=a.get("lock_timeout", "5s"),
        schema=x.schema,
        **_approval_extra(x, a.get("approval")),
    )
    return sized(rep.to_dict(), APPLIED)


def run_sql_check(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    query, expect = a["query"], a["expect"]
    try:
        (stmt,) = [s.stmt for s in pglast.parse_sql(query)]
    except (ParseError, ValueError):
        raise RecoveryError(f"sql_check query must be one SELECT that parses: {query!r}") from None
    if not isinstance(stmt, pg_ast.SelectStmt):
        raise RecoveryError(f"sql_check query must be a SELECT: {query!r}")
    # A read-only transaction of its own (the run's connection is idle between steps),
    # rolled back: the check changes nothing, whatever the query calls.
    with x.conn.transaction() as tx:
        x.conn.execute("SET TRANSACTION READ ONLY")
        rows = x.conn.execute(query).fetchall()
        raise psycopg.Rollback(tx)
    out: dict[str, Any] = {"query": query, "expect": expect, "rows": len(rows)}
    if isinstance(expect, dict):
        out.update(actual={"rows": len(rows)}, ok=len(rows) == expect["rows"])
    elif len(rows) == 1 and len(rows[0]) == 1:
        out.update(actual=plain(rows[0][0]), ok=_same(rows[0][0], expect))
    else:
        out.update(actual={"rows": len(rows), "columns": len(rows[0]) if rows else 0}, ok=False)
    if not out["ok"]:
        raise CheckFailed(
            f"verification failed: expected {json.dumps(expect)}, got "
            f"{json.dumps(out['actual'], default=str)} from {query}",
            out,
        )
    return out


def _same(value: Any, expect: Any) -> bool:
    """Whether a query's value is the expected scalar: numbers compare as numbers (also
    with an expected value given as text, e.g. by a parameter), the rest as text."""
    if value is None or expect is None or isinstance(expect, bool) or isinstance(value, bool):
        return value is expect or value == expect
    if isinstance(expect, (int, float)) or isinstance(value, (int, float, Decimal)):
        try:
            return float(value) == float(expect)
        except (TypeError, ValueError):
            return False
    return str(value) == str(expect)


def _approval_plan(kind: str, res: dict[str, Any]) -> tuple[str, dict[str, Any], int, int]:
    """The plan an apply step will submit to approval, built by the same functions that
    undo and restore use (so that its SHA-256 is the same), its rows and its tables."""
    if kind == "rollback_plan":
        plan, rows, tables = approval.rollback_plan(
            res["selector"], res["on_conflict"], res["tables"]
        )
    else:
        plan, rows, tables = approval.restore_plan(
            res["snapshot"], res["store"], res["created_at"], res["tables"]
        )
    return plan["kind"], plan, rows, tables


def run_approval(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    res = x.results.get(a["for"])
    if res is None:
        raise RecoveryError(f"step {a['for']} did not run (skipped): there is no plan to approve")
    kind, plan, rows, tables = _approval_plan(x.kind_of(a["for"]), res)
    with x.conn.transaction():
        needed = approval.needs_approval(
            x.conn,
            rows,
            tables,
            schema=x.schema,
            max_rows=a.get("max_rows"),
            max_tables=a.get("max_tables"),
        )
    if not needed or x.dry_run:
        return {"needed": needed, "req_id": None, "status": None, "rows": rows, "tables": tables}
    req = approval.request(x.conn, kind, plan, rows, tables, x.schema)
    return approval_state(x, req.req_id)


def approval_state(x: Execution, req_id: int) -> dict[str, Any]:
    """Done with the request if it is approved; else the run waits for it (exit 3)."""
    req = approval.get(x.conn, req_id, x.schema)
    result = {
        "needed": True,
        "req_id": req.req_id,
        "status": req.status,
        "rows": req.rows,
        "tables": req.tables,
        "plan_hash": req.plan_hash,
        "requested_by": req.requested_by,
        "approved_by": req.approved_by,
    }
    if req.status not in ("pending", "approved"):
        raise ApprovalRequired(
            f"approval request {req.req_id} is {req.status}"
            f"{' by ' + req.executed_by if req.executed_by else ''}: "
            "nothing was changed; start a new run for a new request"
        )
    if req.status != "approved":
        raise Wait(
            f'approval needed: another database user runs "recovery approve '
            f'{req.req_id}", then "recovery runbook resume {x.run_id}"',
            3,
            result,
        )
    return result


def run_pause(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    if x.dry_run:
        return {"message": a["message"], "dry_run": True}
    raise Wait(
        f'paused: {a["message"]}; continue with "recovery runbook resume {x.run_id}"',
        0,
        {"message": a["message"]},
    )


def run_notify(x: Execution, a: dict[str, Any]) -> dict[str, Any]:
    url = a.get("webhook")
    out: dict[str, Any] = {"message": a["message"], "url": url, "sent": False, "warning": None}
    if not url or x.dry_run:
        return out
    if not url.startswith(("http://", "https://")):
        out["warning"] = f"webhook {url} is not an http(s) URL: not sent"
        return out
    body = json.dumps(
        {
            "runbook": x.rb.name,
            "run_id": x.run_id,
            "message": a["message"],
            "step": x.step.id if x.step else None,
            "steps": x.results,
        },
        default=str,
    ).encode()
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (http(s) only, above)
            out.update(sent=True, status=resp.status)
    except Exception as exc:  # a notification never fails the run: a warning in the report
        out["warning"] = f"webhook {url} failed: {first_line(exc)}"
    return out
