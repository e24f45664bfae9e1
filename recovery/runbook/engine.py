"""Runbooks: incident procedures as YAML files of steps, run unattended and resumable.

spec.py reads and validates a file (every problem with file:line and a fix);
`bind_params()` checks the values given; `run()` records the run in
`{schema}.runbook_runs` and executes the steps in order, each calling one library
function (capture, marks, snapshots, the journal, the undo engine, restore, approvals)
directly (runners.py, one per kind of steps.KINDS).  Each step's start and end is
committed in a transaction of its own in `{schema}.runbook_steps` (state.py), so a
crash leaves the truth in the tables, and `resume()` continues from the first step not
finished, never repeating one that finished (see `_recover` for a step that a crash
left 'started').  Because it commits as it goes, `run()` and `resume()` refuse a
connection with a transaction open: the run then owns the connection until it returns.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .. import marks, operations
from ..db import DEFAULT_SCHEMA, resolve_table
from ..errors import RecoveryError, first_line
from ..schema import require_schema
from ..snapshot import stores as snapshot
from ..undo.engine import resume_rollback
from . import report
from .conditions import evaluate
from .context import CheckFailed, Echo, Execution, Wait
from .definition import Runbook, RunbookInvalid, Step
from .runners import APPLIED, approval_state, sized
from .spec import bind_params, from_definition, load, loads, parse_param_args
from .state import (
    find_op,
    list_runs,
    op_state,
    record_step,
    rollback_op,
    run_steps,
    set_run_status,
    settle,
)
from .steps import KINDS, step_args, summary
from .values import plain, refs

__all__ = [
    "CheckFailed",
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
    "run_steps",
    "summary",
]


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


def _recover(
    x: Execution, n: int, step: Step, args: dict[str, Any], old: dict[str, Any]
) -> dict[str, Any] | None:
    """The result of a step that a crash (or a stopped batch) left unfinished, if its work
    is done or can be continued; None: it left no trace, run it again."""
    if step.kind == "rollback_apply":
        op = (old["result"] or {}).get("op_id") or rollback_op(x, step, args)
        if op is None:
            return None
        status, options, summary = op_state(x, op)
        if status == "done":
            return sized(summary, APPLIED)
        if status in ("applying", "stopped") and options.get("batch_size"):
            record_step(x, n, step, "started", {"args": args, "op_id": op})
            x.echo(f"  continuing batched undo operation {op} from its last committed batch")
            return sized(resume_rollback(x.conn, op, schema=x.schema).to_dict(), APPLIED)
        return None  # one transaction that never committed, or planning: nothing happened
    if step.kind == "restore":
        # Also for a step marked failed: the restore may have committed and only the
        # step's own record failed after it; running it again would overwrite writes
        # made since.
        op = find_op(
            x,
            step,
            "restore",
            sql.SQL("options->>'snapshot' = {}").format(sql.Literal(args["snapshot"])),
        )
        if op is not None and op_state(x, op)[0] == "done":
            return sized(op_state(x, op)[2], APPLIED)
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


def _after(x: Execution, when: str, started: Any) -> bool:
    with x.conn.transaction():
        row = x.conn.execute("SELECT %s::timestamptz >= %s", [when, started]).fetchone()
    return bool(row and row[0])


def _literal(conn: psycopg.Connection) -> Callable[[Any], str]:
    return lambda v: sql.Literal(v).as_string(conn)


def _step(x: Execution, n: int, step: Step, old: dict[str, Any] | None) -> None:
    kind, tag = KINDS[step.kind], f"[{n}/{len(x.rb.steps)}] {step.id} ({step.kind})"
    x.args = (old["result"] or {}).get("args", {}) if old else {}
    x.pending_approval = (old["result"] or {}).get("approval_pending") if old else None
    if old and old["status"] == "waiting" and step.kind in ("pause", "approval"):
        if step.kind == "pause":
            result: dict[str, Any] = {"message": x.args.get("message"), "resumed": True}
        else:
            result = approval_state(x, old["result"]["req_id"])
        x.results[step.id] = {**result, "args": x.args}
        record_step(x, n, step, "done", x.results[step.id])
        x.echo(f"{tag}: {summary(step.kind, result)}")
        return
    if step.cond is not None and not evaluate(step.cond, x.lookup):
        x.results[step.id] = None
        record_step(x, n, step, "skipped", {"when": step.when})
        x.echo(f"{tag}: skipped (when {step.when} is false)")
        return
    x.args = args = step_args(step, x.lookup, _literal(x.conn))
    if x.dry_run and not kind.dry:
        x.results[step.id] = None
        record_step(x, n, step, "skipped", {"args": args, "dry_run": True})
        x.echo(f"{tag}: would run with {json.dumps(plain(args), sort_keys=True)}")
        return
    found = (
        _recover(x, n, step, args, old) if old and old["status"] in ("started", "failed") else None
    )
    if found is None:
        record_step(x, n, step, "started", {"args": args}, start=True)
        result = kind.run(x, args)
    else:
        result = found
        x.echo(f"{tag}: recovered after the interruption, not run again")
    x.results[step.id] = plain({**result, "args": args})
    record_step(x, n, step, "done", x.results[step.id])
    x.echo(f"{tag}: {summary(step.kind, result)}")


def _steps(x: Execution) -> tuple[str, int, str | None]:
    set_run_status(x, "running")
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
        except Wait as w:
            record_step(x, n, step, "waiting", {**w.result, "args": x.args})
            set_run_status(x, "waiting", str(w))
            return "waiting", w.exit_code, str(w)
        except (RecoveryError, psycopg.Error) as exc:
            settle(x.conn)
            msg = f"step {step.id} ({step.kind}) failed: {first_line(exc)}"
            seen = getattr(exc, "report", None)  # what a failed check saw
            result = {**(seen if isinstance(seen, dict) else {}), "args": x.args}
            if getattr(exc, "req_id", None) is not None:  # the apply recorded a new request
                result["approval_pending"] = exc.req_id  # type: ignore[union-attr]
            record_step(x, n, step, "failed", result, first_line(exc))
            set_run_status(x, "failed", msg)
            return "failed", exc.exit_code if isinstance(exc, RecoveryError) else 1, msg
        except Exception as exc:
            settle(x.conn)
            record_step(x, n, step, "failed", {"args": x.args}, f"{type(exc).__name__}: {exc}")
            set_run_status(x, "failed", f"step {step.id} ({step.kind}) failed: {exc}")
            raise
    set_run_status(x, "done")
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
    x = Execution(conn, rb, run_id, params, dry_run, schema, echo)
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
            settle(conn)
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


def _report(x: Execution, report_dir: str | None) -> str | None:
    """Write the run's report (Markdown, JSON, HTML); None when it could not be written."""
    out = Path(report_dir or "runbook-reports") / f"run-{x.run_id}"
    try:
        got = report.write_report(x.conn, x.run_id, out, schema=x.schema)
    except Exception as exc:  # the run's outcome stands; only its report is missing
        settle(x.conn)
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
    x = Execution(conn, rb, 0, params, False, "", None)
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
            [rb.name, rb.file, Jsonb(plain(params)), Jsonb(rb.definition), dry_run],
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
