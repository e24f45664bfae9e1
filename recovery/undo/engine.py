"""Selective undo: plan the net inverse of selected changes, check conflicts, apply it.

`rollback()` is the whole operation; `resume_rollback()` continues a batched one
that was interrupted.  See plan.py, apply.py and record.py for the steps, net_sql.py
and apply_sql.py for the SQL, and README.md for semantics.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .. import approval as ap
from .. import operations
from ..capture.drain import catch_up
from ..capture.tableinfo import load
from ..db import DEFAULT_SCHEMA, lock_holders, scalar
from ..errors import ApprovalRequired, ConflictError, RecoveryError, first_line
from ..schema import require_schema
from ..selector import Selector, where_clause
from .apply import apply_all, run_batches
from .plan import build_plan, fk_order, gate_plan, matching_statements
from .record import finish, record_end, set_status
from .report import Progress, RollbackReport, TableResult, undo_tag
from .run import Run

__all__ = [
    "ON_CONFLICT",
    "Progress",
    "RollbackReport",
    "Run",
    "TableResult",
    "fk_order",
    "record_end",
    "resume_rollback",
    "rollback",
    "undo_tag",
]

ON_CONFLICT = ("fail", "skip", "overwrite")


def rollback(
    conn: psycopg.Connection,
    selector: Selector,
    *,
    on_conflict: str = "fail",
    dry_run: bool = False,
    batch_size: int | None = None,
    lock_timeout: str = "5s",
    fire_triggers: bool = False,
    sql_out: list[str] | None = None,
    schema: str = DEFAULT_SCHEMA,
    progress: Progress | None = None,
    approval: int | None = None,
    max_rows_without_approval: int | None = None,
    max_tables_without_approval: int | None = None,
    require_approval: bool = True,
) -> RollbackReport:
    """Undo the changes the selector covers, keeping every later write.

    Raises ConflictError (exit 2) when on_conflict is "fail" and a row or cell was
    changed after the selected changes by anything not selected; nothing changes then.
    With batch_size, commits every batch and can be resumed with resume_rollback();
    it is then refused inside an open transaction (RecoveryError).

    Without batch_size the operation's record is committed first, then the undo in one
    transaction.  Called inside the caller's open transaction, both go into it instead
    (savepoints: a failed undo leaves the caller's work as it was, a successful one
    commits with it), its settings are put back after, and its constraint modes are
    left as they are (deferrable foreign keys are checked as that transaction checks
    them).  A dry run leaves nothing behind either way.

    A plan larger than the approval thresholds (meta approval_rows / approval_tables,
    or the max_*_without_approval given here) runs only under an approved request for
    exactly this plan (`approval`, else one found); otherwise it is recorded as a
    pending request and ApprovalPending (exit 3) is raised: nothing changes.
    require_approval=False skips that check.
    """
    _refuse_bad_arguments(conn, selector, on_conflict, batch_size, dry_run)
    nested = conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    started = time.monotonic()
    options = {
        "on_conflict": on_conflict,
        "batch_size": batch_size,
        "lock_timeout": lock_timeout,
        "fire_triggers": fire_triggers,
    }
    # The record first, in a transaction of its own (`recovery operations` shows the
    # undo under way while it runs); inside a caller's transaction, in that one.
    where, matching, op_id = _start(conn, selector, schema, options, dry_run)
    operations.hold(conn, op_id)  # says "this session runs it" until the end
    prefix = f"undo_{op_id}" if op_id is not None else f"undo_dry_{conn.info.backend_pid}"
    r = Run(
        conn, schema, op_id, prefix, on_conflict, fire_triggers, lock_timeout, sql_out, progress
    )
    r.nested = nested
    report = RollbackReport(
        op_id,
        "planned",
        selector.as_dict(),
        on_conflict,
        dry_run,
        [],
        undo_tag(op_id) if op_id is not None else None,
    )
    single = batch_size is None and not dry_run
    try:
        if not dry_run:
            operations.claim_apply(conn, schema, op_id)
        _plan_and_apply(
            r,
            report,
            where,
            matching,
            selector,
            single=single,
            started=started,
            approval=approval,
            max_rows=max_rows_without_approval,
            max_tables=max_tables_without_approval,
            require_approval=require_approval,
        )
    except ConflictError:
        if op_id is not None:
            record_end(conn, schema, op_id, "refused", report, "conflicts")
        raise
    except ApprovalRequired as exc:
        report.approval = getattr(exc, "req_id", None)
        record_end(conn, schema, op_id, "refused", report, "approval pending")
        raise
    except psycopg.errors.LockNotAvailable:
        if op_id is not None:
            record_end(conn, schema, op_id, "failed", report, "lock timeout")
        raise RecoveryError(
            f"rows or tables to undo are locked by another transaction beyond lock_timeout "
            f"{lock_timeout}: nothing was undone; retry, or raise --lock-timeout"
            f"{lock_holders(conn, schema)}"
        ) from None
    except BaseException as exc:
        if op_id is not None:
            record_end(conn, schema, op_id, "failed", report, first_line(exc))
        raise
    if dry_run:
        report.status = "dry-run"
        report.seconds = time.monotonic() - started
        return report
    if single:
        operations.release(conn, op_id)
        return report
    return run_batches(r, report, batch_size or 0, started)


def _refuse_bad_arguments(
    conn: psycopg.Connection,
    selector: Selector,
    on_conflict: str,
    batch_size: int | None,
    dry_run: bool,
) -> None:
    """Refuse an undo asked for with arguments it cannot run with (nothing changed)."""
    if on_conflict not in ON_CONFLICT:
        raise RecoveryError(f"--on-conflict {on_conflict!r}: use one of {', '.join(ON_CONFLICT)}")
    if batch_size is not None and batch_size < 1:
        raise RecoveryError("--batch-size must be a positive number of rows")
    if selector.is_empty():
        raise RecoveryError(
            "no selector given: name what to undo with --tag, --txid, --since/--until, "
            "--table, --user or --app"
        )
    if batch_size is not None and not dry_run:
        operations.refuse_in_transaction(
            conn, "a batched rollback", f"a transaction per batch of {batch_size} rows"
        )


def _start(
    conn: psycopg.Connection,
    selector: Selector,
    schema: str,
    options: dict[str, Any],
    dry_run: bool,
) -> tuple[sql.Composable, list[tuple[int, int, int, int]], int | None]:
    """The selector's WHERE clause, the statements it matches per table, and the
    operation's record (none for a dry run), committed unless a transaction is open."""
    op_id = None
    catch_up(conn, schema)  # the WAL source: every committed change is in the journal first
    with conn.transaction():
        require_schema(conn, schema)
        where = where_clause(conn, selector, schema)
        matching = matching_statements(conn, schema, where)
        if not matching:
            raise RecoveryError(f"no captured change matches {selector.describe()}")
        if not dry_run:
            # fetchone() is typed Optional; INSERT ... VALUES (one row) RETURNING returns one
            op_id = conn.execute(
                sql.SQL(
                    "INSERT INTO {}.operations (kind, status, selector, options) "
                    "VALUES ('rollback', 'planning', %s, %s) RETURNING op_id"
                ).format(sql.Identifier(schema)),
                [Jsonb(selector.as_dict()), Jsonb(options)],
            ).fetchone()[0]  # type: ignore[index]
    return where, matching, op_id


def _plan_and_apply(
    r: Run,
    report: RollbackReport,
    where: sql.Composable,
    matching: list[tuple[int, int, int, int]],
    selector: Selector,
    *,
    single: bool,
    started: float,
    approval: int | None,
    max_rows: int | None,
    max_tables: int | None,
    require_approval: bool,
) -> None:
    """Plan the undo and, in one transaction, apply it (or, batched, keep the plan and mark
    it applying); a dry run rolls that transaction back.  ApprovalNeeded becomes the
    recorded ApprovalPending once nothing is applied."""
    conn, dry_run, sql_out, on_conflict = r.conn, report.dry_run, r.sql_out, r.on_conflict
    try:
        with conn.transaction() as tx:
            build_plan(r, report, where, matching, lock=single)
            r.check_can_suspend()  # before the dry run's answer and any approval
            if dry_run:
                if sql_out is not None:
                    # --dry-run --sql: also write the statements the undo would apply.
                    r.record_only = True
                    apply_all(r, report)
                raise psycopg.Rollback(tx)  # a dry run leaves nothing (net tables)
            if report.conflicts and on_conflict == "fail":
                raise ConflictError(
                    f"{report.conflicts} row(s) changed after the selected changes: nothing "
                    "was undone; see the conflicts, then use --on-conflict skip or "
                    "overwrite",
                    report,
                )
            if require_approval:
                # In the applying transaction (batched: the one that commits the plan).
                report.approval = gate_plan(
                    r,
                    report,
                    selector,
                    approval,
                    max_rows,
                    max_tables,
                )
            if single:
                apply_all(r, report)
                finish(r, report, "done", started)
                r.end_tx()
            else:
                # Batched: keep the plan, then work through it in committed batches.
                set_status(r, "applying", report)
    except ap.ApprovalNeeded as need:
        raise ap.pending(conn, need) from None  # recorded now that nothing is applied


def resume_rollback(
    conn: psycopg.Connection,
    op_id: int,
    *,
    on_conflict: str | None = None,
    schema: str = DEFAULT_SCHEMA,
    progress: Progress | None = None,
) -> RollbackReport:
    """Continue a batched undo from its last committed batch.

    Commits every batch: refused inside an open transaction (RecoveryError)."""
    operations.refuse_in_transaction(
        conn, f"resuming undo operation {op_id}", "a transaction per batch"
    )
    catch_up(conn, schema)
    with conn.transaction():
        require_schema(conn, schema)
        row = conn.execute(
            sql.SQL(
                "SELECT status, selector, options, summary FROM {}.operations "
                "WHERE op_id = %s AND kind = 'rollback'"
            ).format(sql.Identifier(schema)),
            [op_id],
        ).fetchone()
    if row is None:
        raise RecoveryError(f"no undo operation {op_id}: `recovery operations` lists them")
    status, selector, options, summary = row
    if status == "done":
        raise RecoveryError(f"undo operation {op_id} is complete already: nothing to resume")
    if status not in ("applying", "stopped") or not options.get("batch_size"):
        raise RecoveryError(
            f"undo operation {op_id} is {status} and cannot be resumed: only a batched undo "
            "that started applying can"
        )
    oc = on_conflict or options["on_conflict"]
    if oc not in ON_CONFLICT:
        raise RecoveryError(f"--on-conflict {oc!r}: use one of {', '.join(ON_CONFLICT)}")
    # Marks it under way again (for `recovery operations`).  Not a guard: a second
    # resume running at the same time finds the rows of each batch locked, then
    # restored, so it applies nothing twice.
    operations.hold(conn, op_id)
    r = Run(
        conn,
        schema,
        op_id,
        f"undo_{op_id}",
        oc,
        options.get("fire_triggers", False),
        options.get("lock_timeout", "5s"),
        None,
        progress,
    )
    ids = [t["table_id"] for t in (summary or {}).get("tables", [])]
    with conn.transaction():
        infos = [load(conn, schema, tid) for tid in ids]
        missing = [
            t.label
            for t in infos
            if scalar(conn, "SELECT to_regclass(%s) IS NULL", [f'"{schema}"."{r.net(t)}"'])
        ]
        if missing:
            operations.release(conn, op_id)
            raise RecoveryError(f"the saved plan of operation {op_id} is gone: cannot resume")
        r.tables = fk_order(conn, infos)
    try:
        operations.claim_apply(conn, schema, op_id)
    except RecoveryError:
        operations.release(conn, op_id)
        raise
    results = []
    for t in r.tables:
        saved = next(x for x in summary["tables"] if x["table_id"] == t.table_id)
        res = TableResult(**{k: v for k, v in saved.items()})
        r.results[t.table_id] = res
        results.append(res)
    report = RollbackReport(
        op_id,
        status,
        selector,
        oc,
        False,
        results,
        undo_tag(op_id),
        batches=int((summary or {}).get("batches", 0)),
    )
    return run_batches(r, report, int(options["batch_size"]), time.monotonic())
