"""Runbooks: incident procedures as YAML files of steps, run unattended and resumable.

runbook_spec.py reads and validates a file (every problem with file:line and a fix);
`bind_params()` checks the values given; `run()` records the run in
`{schema}.runbook_runs` and executes the steps in order, each calling one library
function (capture, marks, snapshots, the journal, the undo engine, restore, approvals)
directly.  Each step's start and end is committed in a transaction of its own in
`{schema}.runbook_steps`, so a crash leaves the truth in the tables, and `resume()`
continues from the first step not finished, never repeating one that finished (see
`_recover` for a step that a crash left 'started').  Because it commits as it goes,
`run()` and `resume()` refuse a connection with a transaction open: the run then owns
the connection until it returns.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pglast
import psycopg
from pglast import ast as pg_ast
from pglast.parser import ParseError
from psycopg import sql
from psycopg.types.json import Jsonb

from .. import approval, marks, operations
from ..capture import journal
from ..capture import triggers as capture
from ..db import DEFAULT_SCHEMA, resolve_table
from ..errors import ApprovalRequired, ConflictError, RecoveryError, first_line
from ..restore import restore as restore_fn
from ..schema import require_schema
from ..selector import Selector
from ..snapshot import sqlscope
from ..snapshot import stores as snapshot
from ..undo.engine import resume_rollback, rollback
from . import report
from .spec import (
    KINDS,
    Runbook,
    RunbookInvalid,
    Step,
    bind_params,
    evaluate,
    from_definition,
    load,
    loads,
    parse_param_args,
    refs,
    step_args,
)

__all__ = [
    "RunResult",
    "RunbookInvalid",
    "bind_params",
    "list_runbooks",
    "list_runs",
    "load",
    "loads",
    "parse_param_args",
    "resume",
    "run",
]

Echo = Callable[[str], None]

_APPLIED = ("inserted", "updated", "deleted")


class CheckFailed(ConflictError):
    """A sql_check's value is not what the runbook expects: a failed verification, exit 2."""


class _Wait(Exception):
    """A step stops the run until `resume`: an approval (exit 3) or a pause (exit 0)."""

    def __init__(self, message: str, exit_code: int, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.result = result


@dataclass
class RunResult:
    run_id: int
    name: str
    status: str  # done | failed | waiting
    dry_run: bool
    exit_code: int
    message: str | None
    steps: list[dict[str, Any]]
    report: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _selector(a: Mapping[str, Any]) -> Selector:
    return Selector(
        tags=tuple(a.get("tag", ())),
        txids=tuple(a.get("txid", ())),
        since=a.get("since"),
        until=a.get("until"),
        tables=tuple(a.get("table", ())),
        users=tuple(a.get("user", ())),
        apps=tuple(a.get("app", ())),
    )


class _Exec:
    """One execution of a run: the connection, parameters and results so far."""

    def __init__(
        self,
        conn: psycopg.Connection,
        rb: Runbook,
        run_id: int,
        params: dict[str, Any],
        dry_run: bool,
        schema: str,
        echo: Echo | None,
    ) -> None:
        self.conn, self.rb, self.run_id, self.params = conn, rb, run_id, params
        self.dry_run, self.schema, self.echo = dry_run, schema, echo or (lambda _s: None)
        self.results: dict[str, dict[str, Any] | None] = {}
        self.step: Step | None = None
        self.n = 0
        self.args: dict[str, Any] = {}
        self.pending_approval: int | None = None

    def lookup(self, ref: str) -> Any:
        head, *path = ref.split(".")
        if head == "params":
            value: Any = self.params.get(path[0])
            path = path[1:]
        elif head == "run":
            value = {"id": self.run_id, "name": self.rb.name, "dry_run": self.dry_run}
        else:
            value = self.results.get(path[0])
            path = path[1:]
        for p in path:
            if isinstance(value, dict):
                value = value.get(p)
            elif isinstance(value, list) and p.isdigit() and int(p) < len(value):
                value = value[int(p)]
            else:
                return None
        return value

    def kind_of(self, step_id: str) -> str:
        return next(s.kind for s in self.rb.steps if s.id == step_id)


def _k_capture_on(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
    return {"tables": capture.enable(x.conn, a["tables"], schema=x.schema)}


def _k_capture_off(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
    return {"tables": capture.disable(x.conn, a["tables"], schema=x.schema)}


def _k_mark(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
    note = a.get("note") or f"runbook {x.rb.name}, run {x.run_id}"
    return marks.create_mark(x.conn, a["name"], note=note, schema=x.schema).to_dict()


def _analyze(x: _Exec, path: str) -> tuple[list[sqlscope.Statement], dict[str, Any]]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecoveryError(f"cannot read {path}: {exc}") from None
    stmts = sqlscope.analyze(x.conn, text, source=path)
    sqlscope.estimate(x.conn, stmts)
    out: list[dict[str, Any]] = [
        {
            "number": s.number,
            "line": s.line,
            "kind": s.kind,
            "text": s.text,
            "notes": s.notes,
            "est_rows": s.est_rows,
            "est_bytes": s.est_bytes,
            "targets": [
                {
                    "table": f"{t.schema}.{t.table}",
                    "bounded": t.bounded,
                    "reason": t.reason,
                    "columns": t.columns,
                    "est_rows": t.est_rows,
                }
                for t in s.targets
            ],
        }
        for s in stmts
    ]
    tables = sorted({t["table"] for s in out for t in s["targets"]})
    return stmts, {
        "file": path,
        "statements": out,
        "tables": tables,
        "est_rows": sum(s.est_rows or 0 for s in stmts),
        "est_bytes": sum(s.est_bytes or 0 for s in stmts),
    }


def _k_analyze_sql(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
    return _analyze(x, a["file"])[1]


def _k_snapshot(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
    tables, wheres = a.get("tables", []), a.get("where", [])
    if not tables and not a.get("for_sql"):
        raise RecoveryError("a snapshot step needs tables or for_sql")
    specs = snapshot.table_specs(x.conn, tables, wheres) if tables else []
    source: dict[str, Any] = {"tables": tables, "where": wheres, "runbook_run": x.run_id}
    if a.get("for_sql"):
        stmts, analysis = _analyze(x, a["for_sql"])
        specs += snapshot.specs_for_sql(stmts)
        source["for_sql"] = analysis
    info = snapshot.create(
        x.conn, a["name"], specs, store=a.get("store"), source=source, schema=x.schema
    )
    return info.to_dict()


def _k_snapshot_verify(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
    info = snapshot.find(x.conn, a["name"], store=a.get("store"), schema=x.schema)
    return snapshot.verify(x.conn, info, schema=x.schema).to_dict()


def _k_changes(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
    return journal.changes(x.conn, _selector(a), schema=x.schema).to_dict()


def _k_diff(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
    found = journal.diff(x.conn, _selector(a), limit=a.get("limit", 20), schema=x.schema)
    return {"count": len(found), "changes": [asdict(r) for r in found]}


def _sized(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A plan's or an operation's report with rows (the sum of keys) and table_count added."""
    d = _plain(d)
    counts = [sum(t.get(k) or 0 for k in keys) for t in d.get("tables", [])]
    return {**d, "rows": sum(counts), "table_count": sum(1 for n in counts if n)}


def _approval_extra(x: _Exec, step_id: str | None) -> dict[str, Any]:
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


def _k_rollback_plan(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
    rep = rollback(
        x.conn,
        _selector(a),
        on_conflict=a.get("on_conflict", "fail"),
        dry_run=True,
        schema=x.schema,
    )
    return _sized(rep.to_dict(), ("reinsert", "restore", "delete"))


def _k_rollback_apply(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
    recorded: list[int] = []

    def progress(_table: str, _rows: int) -> None:
        # After each committed batch: keep the operation's id, for resume after a crash.
        if not recorded and x.step is not None:
            op = _rollback_op(x, x.step, a)
            if op is not None:
                recorded.append(op)
                _record(x, x.n, x.step, "started", {"args": a, "op_id": op})

    rep = rollback(
        x.conn,
        _selector(a),
        on_conflict=a.get("on_conflict", "fail"),
        batch_size=a.get("batch_size"),
        lock_timeout=a.get("lock_timeout", "5s"),
        schema=x.schema,
        progress=progress,
        **_approval_extra(x, a.get("approval")),
    )
    return _sized(rep.to_dict(), _APPLIED)


def _k_restore_plan(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
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
        **_sized(rep.to_dict(), ("reinsert", "restore", "delete")),
        "created_at": info.created_at,
    }


def _k_restore(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
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
    return _sized(rep.to_dict(), _APPLIED)


def _k_sql_check(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
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
        out.update(actual=_plain(rows[0][0]), ok=_same(rows[0][0], expect))
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


def _k_approval(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
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
    return _approval_state(x, req.req_id)


def _approval_state(x: _Exec, req_id: int) -> dict[str, Any]:
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
        raise _Wait(
            f'approval needed: another database user runs "recovery approve '
            f'{req.req_id}", then "recovery runbook resume {x.run_id}"',
            3,
            result,
        )
    return result


def _k_pause(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
    if x.dry_run:
        return {"message": a["message"], "dry_run": True}
    raise _Wait(
        f'paused: {a["message"]}; continue with "recovery runbook resume {x.run_id}"',
        0,
        {"message": a["message"]},
    )


def _k_notify(x: _Exec, a: dict[str, Any]) -> dict[str, Any]:
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


_RUN: dict[str, Callable[[_Exec, dict[str, Any]], dict[str, Any]]] = {
    "capture_on": _k_capture_on,
    "capture_off": _k_capture_off,
    "mark": _k_mark,
    "analyze_sql": _k_analyze_sql,
    "snapshot": _k_snapshot,
    "snapshot_verify": _k_snapshot_verify,
    "changes": _k_changes,
    "diff": _k_diff,
    "rollback_plan": _k_rollback_plan,
    "rollback_apply": _k_rollback_apply,
    "restore_plan": _k_restore_plan,
    "restore": _k_restore,
    "sql_check": _k_sql_check,
    "approval": _k_approval,
    "pause": _k_pause,
    "notify": _k_notify,
}


# -- runs ---------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _record(
    x: _Exec,
    n: int,
    step: Step,
    status: str,
    result: Any,
    error: str | None = None,
    *,
    start: bool = False,
) -> None:
    """Write a step's state in a transaction of its own (started_at kept unless start)."""
    _settle(x.conn)
    with x.conn.transaction():
        x.conn.execute(
            sql.SQL(
                "INSERT INTO {s}.runbook_steps AS r (run_id, step_no, step_id, kind, status,"
                " started_at, finished_at, result, error) VALUES (%(run)s, %(n)s, %(id)s,"
                " %(kind)s, %(status)s, CASE WHEN %(start)s THEN clock_timestamp() END,"
                " CASE WHEN %(fin)s THEN clock_timestamp() END, %(result)s, %(error)s)"
                " ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status,"
                " started_at = CASE WHEN %(start)s THEN excluded.started_at ELSE r.started_at END,"
                " finished_at = excluded.finished_at, result = excluded.result,"
                " error = excluded.error"
            ).format(s=sql.Identifier(x.schema)),
            {
                "run": x.run_id,
                "n": n,
                "id": step.id,
                "kind": step.kind,
                "status": status,
                "start": start,
                "fin": status in ("done", "skipped", "failed"),
                "result": Jsonb(_plain(result)),
                "error": error,
            },
        )


def _set_run(x: _Exec, status: str, error: str | None = None) -> None:
    _settle(x.conn)
    with x.conn.transaction():
        x.conn.execute(
            sql.SQL(
                "UPDATE {}.runbook_runs SET status = %s, error = %s, finished_at = CASE WHEN %s"
                " THEN clock_timestamp() END WHERE run_id = %s"
            ).format(sql.Identifier(x.schema)),
            [status, error, status != "running", x.run_id],
        )


def _settle(conn: psycopg.Connection) -> None:
    """Roll back what a step left open (the library's functions leave none; before the
    run's records, as ever).  The run owns its connection (run() and resume() refuse
    one with a transaction open), so any transaction open here is the run's own."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()


def _find_op(x: _Exec, step: Step, kind: str, match: sql.Composable) -> int | None:
    """The newest operation of this kind that a step started (after the step's start)."""
    with x.conn.transaction():
        row = x.conn.execute(
            sql.SQL(
                "SELECT op_id FROM {s}.operations WHERE kind = %s AND {m} AND started_at >= (SELECT"
                " started_at FROM {s}.runbook_steps WHERE run_id = %s AND step_id = %s)"
                " ORDER BY op_id DESC LIMIT 1"
            ).format(s=sql.Identifier(x.schema), m=match),
            [kind, x.run_id, step.id],
        ).fetchone()
    return int(row[0]) if row else None


def _op(x: _Exec, op_id: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    with x.conn.transaction():
        row = x.conn.execute(
            sql.SQL(
                "SELECT status, coalesce(options, '{{}}'), coalesce(summary, '{{}}')"
                " FROM {}.operations WHERE op_id = %s"
            ).format(sql.Identifier(x.schema)),
            [op_id],
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _rollback_op(x: _Exec, step: Step, args: dict[str, Any]) -> int | None:
    sel = Jsonb(_selector(args).as_dict())
    return _find_op(x, step, "rollback", sql.SQL("selector = {}").format(sql.Literal(sel)))


def _recover(
    x: _Exec, n: int, step: Step, args: dict[str, Any], old: dict[str, Any]
) -> dict[str, Any] | None:
    """The result of a step that a crash (or a stopped batch) left unfinished, if its work
    is done or can be continued; None: it left no trace, run it again."""
    if step.kind == "rollback_apply":
        op = (old["result"] or {}).get("op_id") or _rollback_op(x, step, args)
        if op is None:
            return None
        status, options, summary = _op(x, op)
        if status == "done":
            return _sized(summary, _APPLIED)
        if status in ("applying", "stopped") and options.get("batch_size"):
            _record(x, n, step, "started", {"args": args, "op_id": op})
            x.echo(f"  continuing batched undo operation {op} from its last committed batch")
            return _sized(resume_rollback(x.conn, op, schema=x.schema).to_dict(), _APPLIED)
        return None  # one transaction that never committed, or planning: nothing happened
    if step.kind == "restore":
        # Also for a step marked failed: the restore may have committed and only the
        # step's own record failed after it; running it again would overwrite writes
        # made since.
        op = _find_op(
            x,
            step,
            "restore",
            sql.SQL("options->>'snapshot' = {}").format(sql.Literal(args["snapshot"])),
        )
        if op is not None and _op(x, op)[0] == "done":
            return _sized(_op(x, op)[2], _APPLIED)
        return None
    if old["status"] != "started":
        return None
    if step.kind == "mark":
        m = [m for m in marks.list_marks(x.conn, schema=x.schema) if m.name == args["name"]]
        if m and _after(x, m[0].at, old["started_at"]):
            return m[0].to_dict()
    elif step.kind == "snapshot":
        try:
            info = snapshot.find(x.conn, args["name"], store=args.get("store"), schema=x.schema)
        except RecoveryError:
            return None
        if _after(x, info.created_at, old["started_at"]):
            return info.to_dict()
    return None


def _after(x: _Exec, when: str, started: Any) -> bool:
    with x.conn.transaction():
        row = x.conn.execute("SELECT %s::timestamptz >= %s", [when, started]).fetchone()
    return bool(row and row[0])


def _literal(conn: psycopg.Connection) -> Callable[[Any], str]:
    return lambda v: sql.Literal(v).as_string(conn)


def _step(x: _Exec, n: int, step: Step, old: dict[str, Any] | None) -> None:
    kind, tag = KINDS[step.kind], f"[{n}/{len(x.rb.steps)}] {step.id} ({step.kind})"
    x.args = (old["result"] or {}).get("args", {}) if old else {}
    x.pending_approval = (old["result"] or {}).get("approval_pending") if old else None
    if old and old["status"] == "waiting" and step.kind in ("pause", "approval"):
        if step.kind == "pause":
            result: dict[str, Any] = {"message": x.args.get("message"), "resumed": True}
        else:
            result = _approval_state(x, old["result"]["req_id"])
        x.results[step.id] = {**result, "args": x.args}
        _record(x, n, step, "done", x.results[step.id])
        x.echo(f"{tag}: {summary(step.kind, result)}")
        return
    if step.cond is not None and not evaluate(step.cond, x.lookup):
        x.results[step.id] = None
        _record(x, n, step, "skipped", {"when": step.when})
        x.echo(f"{tag}: skipped (when {step.when} is false)")
        return
    x.args = args = step_args(step, x.lookup, _literal(x.conn))
    if x.dry_run and not kind.dry:
        x.results[step.id] = None
        _record(x, n, step, "skipped", {"args": args, "dry_run": True})
        x.echo(f"{tag}: would run with {json.dumps(_plain(args), sort_keys=True)}")
        return
    found = (
        _recover(x, n, step, args, old) if old and old["status"] in ("started", "failed") else None
    )
    if found is None:
        _record(x, n, step, "started", {"args": args}, start=True)
        result = _RUN[step.kind](x, args)
    else:
        result = found
        x.echo(f"{tag}: recovered after the interruption, not run again")
    x.results[step.id] = _plain({**result, "args": args})
    _record(x, n, step, "done", x.results[step.id])
    x.echo(f"{tag}: {summary(step.kind, result)}")


def _steps(x: _Exec) -> tuple[str, int, str | None]:
    _set_run(x, "running")
    with x.conn.transaction():
        prev = {
            r[0]: {"status": r[1], "result": r[2], "started_at": r[3]}
            for r in x.conn.execute(
                sql.SQL(
                    "SELECT step_id, status, result, started_at FROM {}.runbook_steps"
                    " WHERE run_id = %s"
                ).format(sql.Identifier(x.schema)),
                [x.run_id],
            )
        }
    for n, step in enumerate(x.rb.steps, 1):
        x.step, x.n, old = step, n, prev.get(step.id)
        if old and old["status"] in ("done", "skipped"):
            x.results[step.id] = old["result"] if old["status"] == "done" else None
            continue
        try:
            _step(x, n, step, old)
        except _Wait as w:
            _record(x, n, step, "waiting", {**w.result, "args": x.args})
            _set_run(x, "waiting", str(w))
            return "waiting", w.exit_code, str(w)
        except (RecoveryError, psycopg.Error) as exc:
            _settle(x.conn)
            msg = f"step {step.id} ({step.kind}) failed: {first_line(exc)}"
            seen = getattr(exc, "report", None)  # what a failed check saw
            result = {**(seen if isinstance(seen, dict) else {}), "args": x.args}
            if getattr(exc, "req_id", None) is not None:  # the apply recorded a new request
                result["approval_pending"] = exc.req_id  # type: ignore[union-attr]
            _record(x, n, step, "failed", result, first_line(exc))
            _set_run(x, "failed", msg)
            return "failed", exc.exit_code if isinstance(exc, RecoveryError) else 1, msg
        except Exception as exc:
            _settle(x.conn)
            _record(x, n, step, "failed", {"args": x.args}, f"{type(exc).__name__}: {exc}")
            _set_run(x, "failed", f"step {step.id} ({step.kind}) failed: {exc}")
            raise
    _set_run(x, "done")
    return "done", 0, None


def _execute(
    conn: psycopg.Connection,
    rb: Runbook,
    run_id: int,
    params: dict[str, Any],
    dry_run: bool,
    schema: str,
    echo: Echo | None,
    report_dir: str | None,
) -> RunResult:
    x = _Exec(conn, rb, run_id, params, dry_run, schema, echo)
    key = f"{schema}.runbook_runs.{run_id}"
    with conn.transaction():  # a session lock: held across the steps' commits
        got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [key]).fetchone()
    if not (got and got[0]):
        raise RecoveryError(
            f"run {run_id} is being executed by another session right now: wait for it to finish"
        )
    try:
        status, code, message = _steps(x)
    finally:
        try:
            _settle(conn)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])
        except psycopg.Error:
            pass  # the connection is gone, and its session lock with it
    report = _report(x, report_dir)
    return RunResult(
        run_id,
        rb.name,
        status,
        dry_run,
        code,
        message,
        run_steps(conn, run_id, schema=schema),
        report,
    )


def _report(x: _Exec, report_dir: str | None) -> str | None:
    """Write the run's report (Markdown, JSON, HTML); None when it could not be written."""
    out = Path(report_dir or "runbook-reports") / f"run-{x.run_id}"
    try:
        got = report.write_report(x.conn, x.run_id, out, schema=x.schema)
    except Exception as exc:  # the run's outcome stands; only its report is missing
        _settle(x.conn)
        x.echo(f"warning: the report of run {x.run_id} could not be written: {exc}")
        return None
    return str(Path(got["md"]).parent) if isinstance(got, dict) and "md" in got else str(out)


def _precheck(conn: psycopg.Connection, rb: Runbook, params: dict[str, Any]) -> None:
    """Before a run is recorded: tables named by parameters exist, and every argument
    that depends on parameters only has the right type."""
    with conn.transaction():
        for name, p in rb.params.items():
            if p.type == "table" and params.get(name):
                for t in str(params[name]).split(","):
                    resolve_table(conn, t.strip())
    x = _Exec(conn, rb, 0, params, False, "", None)
    for step in rb.steps:
        static = {
            k: v for k, v in step.args.items() if not any(r.startswith("steps.") for r in refs(v))
        }
        try:
            step_args(Step(step.id, step.kind, static), x.lookup, _literal(conn), partial=True)
        except RecoveryError as exc:
            raise RecoveryError(f"{exc} (from the parameters given)") from None


def run(
    conn: psycopg.Connection,
    rb: Runbook,
    params: dict[str, Any],
    *,
    dry_run: bool = False,
    schema: str = DEFAULT_SCHEMA,
    echo: Echo | None = None,
    report_dir: str | None = None,
) -> RunResult:
    """Record a run of rb with bound parameters (see bind_params) and execute its steps.

    Each step's start and end is committed as it goes: refused inside an open
    transaction (RecoveryError)."""
    operations.refuse_in_transaction(conn, "a runbook run", "a transaction per step record")
    with conn.transaction():
        require_schema(conn, schema)
        _precheck(conn, rb, params)
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {}.runbook_runs (name, file, params, definition, status, dry_run)"
                " VALUES (%s, %s, %s, %s, 'running', %s) RETURNING run_id"
            ).format(sql.Identifier(schema)),
            [rb.name, rb.file, Jsonb(_plain(params)), Jsonb(rb.definition), dry_run],
        ).fetchone()
    assert row is not None
    return _execute(conn, rb, int(row[0]), params, dry_run, schema, echo, report_dir)


def resume(
    conn: psycopg.Connection,
    run_id: int,
    *,
    schema: str = DEFAULT_SCHEMA,
    echo: Echo | None = None,
    report_dir: str | None = None,
) -> RunResult:
    """Continue a run from its first step not done or skipped; finished steps never repeat.

    Refused inside an open transaction, as run() is."""
    operations.refuse_in_transaction(
        conn, f"resuming runbook run {run_id}", "a transaction per step record"
    )
    with conn.transaction():
        require_schema(conn, schema)
        row = conn.execute(
            sql.SQL(
                "SELECT name, file, params, definition, status, dry_run FROM"
                " {}.runbook_runs WHERE run_id = %s"
            ).format(sql.Identifier(schema)),
            [run_id],
        ).fetchone()
    if row is None:
        raise RecoveryError(f"no runbook run {run_id}: `recovery runbook list --runs` lists them")
    name, file, params, definition, status, dry_run = row
    if status == "done":
        raise RecoveryError(f"run {run_id} ({name}) is done already: nothing to resume")
    rb = from_definition(definition, f"run {run_id} ({file or name})")
    return _execute(conn, rb, run_id, params, dry_run, schema, echo, report_dir)


def run_steps(
    conn: psycopg.Connection, run_id: int, *, schema: str = DEFAULT_SCHEMA
) -> list[dict[str, Any]]:
    with conn.transaction():
        rows = conn.execute(
            sql.SQL(
                "SELECT step_no, step_id, kind, status, started_at::text, finished_at::text,"
                " result, error FROM {}.runbook_steps WHERE run_id = %s ORDER BY step_no"
            ).format(sql.Identifier(schema)),
            [run_id],
        ).fetchall()
    keys = ("step_no", "step_id", "kind", "status", "started_at", "finished_at", "result", "error")
    return [dict(zip(keys, r)) for r in rows]


def list_runs(
    conn: psycopg.Connection, *, limit: int = 20, schema: str = DEFAULT_SCHEMA
) -> list[dict[str, Any]]:
    """Recent runs, newest first, with the step each stopped at (if not done)."""
    with conn.transaction():
        require_schema(conn, schema)
        rows = conn.execute(
            sql.SQL(
                "SELECT r.run_id, r.name, r.file, r.status, r.dry_run, r.started_by,"
                " r.started_at::text, r.finished_at::text, r.error, (SELECT s.step_id FROM"
                " {s}.runbook_steps s WHERE s.run_id = r.run_id AND s.status NOT IN ('done',"
                " 'skipped') ORDER BY s.step_no LIMIT 1) FROM {s}.runbook_runs r"
                " ORDER BY r.run_id DESC LIMIT %s"
            ).format(s=sql.Identifier(schema)),
            [limit],
        ).fetchall()
    keys = (
        "run_id",
        "name",
        "file",
        "status",
        "dry_run",
        "started_by",
        "started_at",
        "finished_at",
        "error",
        "at_step",
    )
    return [dict(zip(keys, r)) for r in rows]


def list_runbooks(directory: str | Path) -> list[dict[str, Any]]:
    """Every runbook file of a directory: name, description, parameters (or its first error)."""
    base = Path(directory)
    if not base.is_dir():
        raise RecoveryError(f"no runbook directory {directory}: pass --dir DIR")
    out: list[dict[str, Any]] = []
    for path in sorted([*base.glob("*.yaml"), *base.glob("*.yml")]):
        try:
            rb = load(path)
        except RunbookInvalid as exc:
            out.append({"file": str(path), "error": exc.errors[0]})
            continue
        out.append(
            {
                "file": str(path),
                "name": rb.name,
                "description": rb.description,
                "parameters": {
                    p.name: {
                        "type": p.type,
                        "default": p.default,
                        "required": p.required,
                        "description": p.description,
                    }
                    for p in rb.params.values()
                },
                "steps": [f"{s.id} ({s.kind})" for s in rb.steps],
            }
        )
    return out


_SUMMARY: dict[str, Callable[[dict[str, Any]], str]] = {
    "capture_on": lambda r: "capturing " + ", ".join(r["tables"]),
    "capture_off": lambda r: "stopped capturing " + ", ".join(r["tables"]),
    "mark": lambda r: f"mark {r['name']} at {r['at']}",
    "analyze_sql": lambda r: (
        f"{len(r['statements'])} statement(s) could destroy about "
        f"{r['est_rows']} row(s) of {', '.join(r['tables'])}"
    ),
    "snapshot": lambda r: f"snapshot {r['name']}: {r['rows']} row(s) in {r['store']}",
    "snapshot_verify": lambda r: f"snapshot {r['name']} is intact",
    "changes": lambda r: f"{r['rows']} row change(s) in {r['statements']} statement(s)",
    "diff": lambda r: f"{r['count']} changed row(s) shown",
    "rollback_plan": lambda r: (
        f"{r['rows']} row(s) of {r['table_count']} table(s) to undo, {r['conflicts']} conflict(s)"
    ),
    "restore_plan": lambda r: f"{r['rows']} row(s) of {r['table_count']} table(s) to restore",
    "sql_check": lambda r: f"ok: {json.dumps(r['actual'], default=str)}",
    "approval": lambda r: (
        "not needed"
        if not r["needed"]
        else f"request {r['req_id']}: {r['status']}"
        if r["req_id"]
        else "needed (not requested: dry run)"
    ),
    "pause": lambda r: f"resumed after: {r['message']}" if r.get("resumed") else r["message"],
    "notify": lambda r: (
        (f"sent: {r['message']}" if r["sent"] else r["message"])
        + (f" (warning: {r['warning']})" if r.get("warning") else "")
    ),
}


def summary(kind: str, result: dict[str, Any]) -> str:
    """One line saying what a step did."""
    if kind in ("rollback_apply", "restore"):
        return (
            f"operation {result['op_id']}: {result['rows']} row(s) changed in "
            f"{result['table_count']} table(s)"
        )
    return _SUMMARY[kind](result)
