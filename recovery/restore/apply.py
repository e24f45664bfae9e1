"""restore(): one snapshot restore in one transaction, from the record to the end.

The operation's record first, then in one transaction: the undo engine's setup, the
tables made to fit (prepare), the saved rows read (load), one plan per table (plan),
the approval gate, the statements in foreign-key order, and the end recorded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import psycopg
from psycopg import sql

from .. import approval as ap
from .. import operations
from ..capture.tableinfo import TableInfo
from ..db import DEFAULT_SCHEMA, lock_holders
from ..errors import ApprovalRequired, ConflictError, RecoveryError, first_line
from ..operations import record_end, record_start
from ..schema import installed_version
from ..snapshot import tabledef
from ..snapshot.stores import SETTINGS, Progress, SnapshotInfo, db_snapshots
from ..undo.engine import Run, fk_order
from .load import drop_loaded, load
from .plan import RestoreReport, RestoreTable, TablePlan, check_delete_new, missing, pick
from .prepare import check_types, finish_columns, prepare_table, table_info

_i = sql.Identifier

# Per table: its manifest item, its TableInfo now, its report line, whether it was
# recreated, and the columns added back.
_Prepared = tuple[dict[str, Any], TableInfo, RestoreTable, bool, list[str]]


def restore(
    conn: psycopg.Connection,
    info: SnapshotInfo,
    *,
    tables: Sequence[str] = (),
    dry_run: bool = False,
    delete_new: bool = False,
    fire_triggers: bool = False,
    lock_timeout: str = "5s",
    schema: str = DEFAULT_SCHEMA,
    progress: Progress | None = None,
    approval: int | None = None,
    max_rows_without_approval: int | None = None,
    max_tables_without_approval: int | None = None,
    require_approval: bool = True,
) -> RestoreReport:
    """Put a snapshot's rows back into the database conn is connected to.

    One transaction: rows changed since the snapshot get their saved values, rows
    gone are re-inserted, other rows are not written.  Raises ConflictError (exit 2)
    when a re-inserted row collides with a row added since (a unique value taken)
    or a directory snapshot's file does not match its manifest; nothing changes then.
    A restore larger than the approval thresholds needs an approved request, as an
    undo does (see rollback()): else ApprovalPending (exit 3), nothing changes.

    The operation's record is committed first, then the restore in one transaction;
    inside the caller's open transaction both go into it instead, as rollback() does
    (its settings put back after, its constraint modes left as they are).
    """
    items = pick(info, tables)
    if delete_new:
        check_delete_new(items)
    nested = conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    if info.store == "db":
        if info.name not in db_snapshots(conn, schema):
            raise RecoveryError(
                f"snapshot {info.name} is in another database's store: restore "
                "from a directory snapshot to reach another database"
            )
    started = time.monotonic()
    r = _start(conn, info, schema, tables, delete_new, fire_triggers, lock_timeout, dry_run)
    r.nested = nested
    op_id = r.op_id
    report = RestoreReport(op_id, info.name, info.store, "planned", dry_run, [], r.tag)
    try:
        try:
            if not dry_run:
                operations.claim_apply(conn, schema, op_id)
            with conn.transaction() as tx:
                _apply(
                    r,
                    report,
                    info,
                    items,
                    dry_run,
                    delete_new,
                    progress,
                    approval,
                    max_rows_without_approval,
                    max_tables_without_approval,
                    require_approval,
                    started,
                )
                if dry_run:
                    raise psycopg.Rollback(tx)  # a dry run leaves nothing
        except ap.ApprovalNeeded as need:
            raise ap.pending(conn, need) from None  # recorded now that nothing is applied
    except ApprovalRequired as exc:
        report.approval = getattr(exc, "req_id", None)
        _fail(conn, schema, op_id, report, "approval pending", started, "refused")
        raise
    except psycopg.errors.LockNotAvailable:
        _fail(conn, schema, op_id, report, "lock timeout", started)
        raise RecoveryError(
            f"rows or tables to restore are locked by another transaction beyond lock_timeout "
            f"{lock_timeout}: nothing was restored; retry, or raise --lock-timeout"
            f"{lock_holders(conn, schema)}"
        ) from None
    except BaseException as exc:
        _fail(conn, schema, op_id, report, first_line(exc), started)
        raise
    if dry_run:
        report.status = "dry-run"
        report.seconds = time.monotonic() - started
        return report
    operations.release(conn, op_id)
    return report


def _start(
    conn: psycopg.Connection,
    info: SnapshotInfo,
    schema: str,
    tables: Sequence[str],
    delete_new: bool,
    fire_triggers: bool,
    lock_timeout: str,
    dry_run: bool,
) -> Run:
    """The operation's record (none for a dry run) and the undo engine's Run for it."""
    op_id = None
    if not dry_run:
        # The record first, in a transaction of its own; inside a caller's, in that one.
        with conn.transaction():
            op_id = record_start(
                conn,
                schema,
                "restore",
                {
                    "snapshot": info.name,
                    "store": info.store,
                    "tables": list(tables),
                    "delete_new": delete_new,
                },
            )
    tag = f"recovery-restore-{op_id}" if op_id is not None else "recovery-restore"
    # The undo engine's transaction setup (lock_timeout, work_mem, deferred foreign
    # keys, the tag) and its suspension of the tables' own triggers.
    return Run(
        conn,
        schema,
        op_id,
        "_restore",
        "overwrite",
        fire_triggers,
        lock_timeout,
        None,
        None,
        tag=None if dry_run else tag,
    )


def _apply(
    r: Run,
    report: RestoreReport,
    info: SnapshotInfo,
    items: list[dict[str, Any]],
    dry_run: bool,
    delete_new: bool,
    progress: Progress | None,
    approval: int | None,
    max_rows: int | None,
    max_tables: int | None,
    require_approval: bool,
    started: float,
) -> None:
    """The restore in the current transaction: plan, approval, apply, record the end (a
    dry run stops after the counts; its caller rolls the transaction back)."""
    conn, schema = r.conn, r.schema
    r.begin_tx()
    settings = {**SETTINGS, "lc_monetary": info.manifest["settings"].get("lc_monetary")}
    for k, v in settings.items():
        if v:
            r.set_local(k, v)
    by_id, plans = _plan(r, report, info, items, dry_run, delete_new, progress)
    if dry_run:
        for t in r.tables:
            plans[t.table_id].counts(by_id[t.table_id][2])
        return
    if require_approval:
        report.approval = _gate(
            conn,
            info,
            items,
            r.tables,
            plans,
            by_id,
            schema,
            delete_new,
            approval,
            max_rows,
            max_tables,
        )
    _write(r, report, plans, by_id)
    _finish(r, report, info, items, plans, by_id, started)


def _plan(
    r: Run,
    report: RestoreReport,
    info: SnapshotInfo,
    items: list[dict[str, Any]],
    dry_run: bool,
    delete_new: bool,
    progress: Progress | None,
) -> tuple[dict[int, _Prepared], dict[int, TablePlan]]:
    """Make the tables fit, put them in foreign-key order, read the saved rows and plan
    each table: per table id, what was prepared and its plan."""
    conn, schema = r.conn, r.schema
    check_types(conn, items)
    prepared = []
    for item in items:
        res = RestoreTable(f"{item['schema']}.{item['table']}", item["rows"])
        relid, recreated, added = prepare_table(conn, item, res, dry_run)
        t = table_info(conn, item["n"], relid, item)
        prepared.append((item, t, res, recreated, added))
    r.tables = fk_order(conn, [p[1] for p in prepared])
    by_id = {p[1].table_id: p for p in prepared}
    plans: dict[int, TablePlan] = {}
    for t in r.tables:
        item, _t, res, _rec, _add = by_id[t.table_id]
        src = load(conn, info, item, schema, progress)
        plans[t.table_id] = TablePlan(conn, t, src, item, delete_new)
        for name in plans[t.table_id].fixed:
            res.notes.append(
                f"column {name} is GENERATED ALWAYS AS IDENTITY: its values "
                "are not restored in rows that exist (re-inserted rows keep "
                "theirs)"
            )
        report.tables.append(res)
    return by_id, plans


def _write(
    r: Run, report: RestoreReport, plans: dict[int, TablePlan], by_id: dict[int, _Prepared]
) -> None:
    """Run each table's statements; a row that collides is a ConflictError."""
    conn = r.conn
    try:
        # Parents first for inserts, children first for deletes.
        for t in r.tables:
            r.suspend_triggers(t)
            by_id[t.table_id][2].inserted = plans[t.table_id].insert()
        for t in r.tables:
            by_id[t.table_id][2].updated = plans[t.table_id].update()
        for t in reversed(r.tables):
            plan, res = plans[t.table_id], by_id[t.table_id][2]
            plan.count_new(res)
            res.deleted = plan.delete()
        r.restore_triggers()
        if not r.nested:
            # The checks deferred by begin_tx() now, to be told as a conflict.  (In a
            # caller's transaction nothing was deferred: its modes are its own.)
            conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
    except (
        psycopg.errors.UniqueViolation,
        psycopg.errors.ForeignKeyViolation,
        psycopg.errors.ExclusionViolation,
    ) as exc:
        raise ConflictError(
            f"restore refused, nothing was restored: {first_line(exc)} (a row added or "
            "changed since the snapshot holds that value)",
            report,
        ) from None


def _finish(
    r: Run,
    report: RestoreReport,
    info: SnapshotInfo,
    items: list[dict[str, Any]],
    plans: dict[int, TablePlan],
    by_id: dict[int, _Prepared],
    started: float,
) -> None:
    """Count what was done, finish the columns and tables put back, record the end and
    end the transaction."""
    conn, schema = r.conn, r.schema
    for t in r.tables:
        item, _t, res, recreated, added = by_id[t.table_id]
        res.reinsert, res.restore = res.inserted, res.updated
        res.already = res.saved - res.inserted - res.updated
        if not item["all_columns"]:
            res.already -= missing(plans[t.table_id], res)
        res.notes += finish_columns(conn, item, added)
        if recreated:
            res.notes += tabledef.after_load(conn, item["definition"])
    report.status = "done"
    report.seconds = time.monotonic() - started
    record_end(conn, schema, r.op_id, "done", report.to_dict(), None, started)
    if r.op_id is not None:
        conn.execute(
            sql.SQL("UPDATE {}.operations SET tag = %s WHERE op_id = %s").format(_i(schema)),
            [r.tag, r.op_id],
        )
    if r.nested and info.store != "db":
        drop_loaded(conn, items)
    r.end_tx()


def _fail(
    conn: psycopg.Connection,
    schema: str,
    op_id: int | None,
    report: RestoreReport,
    error: str,
    started: float,
    status: str = "failed",
) -> None:
    if op_id is None:
        return
    report.status = status
    with conn.transaction():
        record_end(conn, schema, op_id, status, report.to_dict(), error, started)
    operations.release(conn, op_id)


def _gate(
    conn: psycopg.Connection,
    info: SnapshotInfo,
    items: list[dict[str, Any]],
    tables: list[TableInfo],
    plans: dict[int, TablePlan],
    by_id: dict[int, tuple[Any, ...]],
    schema: str,
    delete_new: bool,
    approval: int | None,
    max_rows: int | None,
    max_tables: int | None,
) -> int | None:
    """Two-person approval of the restore (approval.py), in its transaction: the request
    it consumes, or None when within the thresholds; else ApprovalPending."""
    if (installed_version(conn, schema) or 0) < 3:
        return None  # no recovery schema (or an old one) here: nowhere to record approvals
    th = ap.thresholds(conn, schema)
    # Cheap: a restore writes at most the saved rows (plus, with --delete-new, rows
    # added since), so a small snapshot needs no counting.
    if (
        not delete_new
        and sum(int(i["rows"]) for i in items) <= (th.rows if max_rows is None else max_rows)
        and len(items) <= (th.tables if max_tables is None else max_tables)
    ):
        return None
    counted = []
    for t in tables:
        res = by_id[t.table_id][2]
        tmp = RestoreTable(res.table, res.saved)  # counts only: the report's stay as they are
        plans[t.table_id].counts(tmp)
        counted.append(tmp)
    plan, rows, ntables = ap.restore_plan(
        info.name, info.store, info.created_at, [asdict(x) for x in counted]
    )
    return ap.gate(
        conn,
        "restore",
        plan,
        rows,
        ntables,
        schema=schema,
        approval=approval,
        max_rows=max_rows,
        max_tables=max_tables,
        what="this restore",
    )
