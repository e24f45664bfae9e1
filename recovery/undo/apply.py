"""Apply a planned undo: the phases in foreign-key order, in one transaction or in
committed batches (which resume_rollback() continues)."""

from __future__ import annotations

import psycopg

from .. import operations
from ..capture.tableinfo import TableInfo
from ..db import lock_holders, scalar
from ..errors import ConflictError, RecoveryError, first_line
from .record import finish, record_end, set_status
from .report import RollbackReport, TableResult
from .run import Run


def _phases(r: Run) -> list[tuple[str, list[TableInfo]]]:
    """The apply phases in order, each with its tables in the order to visit them.

    Re-inserts go parents first and deletes children first, so that foreign keys hold
    at every statement.  In a table that no foreign key references, deleting first
    cannot break a reference, and it frees the unique values that the re-inserted and
    restored rows take back: an undone key change re-inserts the old key while the new
    one still holds the row's other unique values (UNIQUE (email) would fail).
    """
    free = [
        t
        for t in r.tables
        if not scalar(
            r.conn,
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f' AND confrelid IN"
            " (SELECT %s::oid UNION SELECT relid FROM pg_partition_tree(%s)))",
            [t.relid, t.relid],
        )
    ]
    ids = {t.table_id for t in free}
    back = list(reversed(r.tables))
    return [
        ("delete", [t for t in back if t.table_id in ids]),
        ("insert", r.tables),
        ("update", r.tables),
        ("delete", [t for t in back if t.table_id not in ids]),
    ]


def apply_all(r: Run, report: RollbackReport) -> None:
    """Apply every phase in one transaction, status already computed and rows locked."""
    for phase, order in _phases(r):
        for t in order:
            res = r.results[t.table_id]
            if not (res.reinsert or res.restore or res.delete or res.partial):
                continue
            r.suspend_triggers(t)
            ins, upd, dele = r.apply(t, (phase,))
            res.inserted += ins
            res.updated += upd
            res.deleted += dele
    r.restore_triggers()


def run_batches(r: Run, report: RollbackReport, batch_size: int, started: float) -> RollbackReport:
    """Apply the saved plan in batches, each committed in a transaction of its own (the
    caller checked that no transaction of its caller is open)."""
    conn = r.conn
    r.batched = True
    try:
        with conn.transaction():
            # A table whose rows reference each other re-inserts (and deletes) its rows
            # in one statement: split by key, a child could come before its parent.
            self_ref: set[int] = set()
            for t in r.tables:
                row = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f'"
                    " AND conrelid = %s AND confrelid = %s)",
                    [t.relid, t.relid],
                ).fetchone()
                assert row is not None  # SELECT EXISTS (...) returns one row
                if row[0]:
                    self_ref.add(t.table_id)
            phases = _phases(r)
        for phase, order in phases:
            for t in order:
                res = r.results[t.table_id]
                limit = None if phase != "update" and t.table_id in self_ref else batch_size
                while True:
                    with conn.transaction():
                        r.begin_tx()
                        written = None
                        if r.fill_batch(t, phase, limit):
                            written = _batch(r, t, res, report)
                    if written is None:
                        break
                    if r.progress:
                        r.progress(t.label, written)
        with conn.transaction():
            r.begin_tx()
            finish(r, report, "done", started)
        operations.release(conn, r.op_id)
    except ConflictError:
        record_end(conn, r.schema, r.op_id, "stopped", report, "conflicts during batches")
        raise
    except psycopg.errors.LockNotAvailable:
        record_end(conn, r.schema, r.op_id, "stopped", report, "lock timeout")
        raise RecoveryError(
            f"a batch waited beyond lock_timeout {r.lock_timeout}: {report.batches} batch(es) "
            f"committed; resume with `recovery rollback --resume {r.op_id}`"
            f"{lock_holders(conn, r.schema)}"
        ) from None
    except BaseException as exc:
        record_end(conn, r.schema, r.op_id, "stopped", report, first_line(exc))
        raise
    return report


def _batch(r: Run, t: TableInfo, res: TableResult, report: RollbackReport) -> int:
    """Apply the batch of t (in its _rb_ table) in the current transaction; the rows
    written."""
    now = r.status(t, lock=True)
    if now.conflicts and r.on_conflict == "fail":
        raise ConflictError(
            f"{now.conflicts} row(s) of {t.label} changed while the undo ran: "
            f"stopped after {report.batches} committed batch(es); resume with "
            f"`recovery rollback --resume {r.op_id} --on-conflict skip`",
            report,
        )
    r.suspend_triggers(t)
    ins, upd, dele = r.apply(t, ("insert", "update", "delete"))
    r.restore_triggers()
    res.inserted += ins
    res.updated += upd
    res.deleted += dele
    report.batches += 1
    set_status(r, "applying", report)
    return ins + upd + dele
