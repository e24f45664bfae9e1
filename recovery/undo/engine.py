"""Selective undo: plan the net inverse of selected changes, check conflicts, apply it.

`rollback()` is the whole operation; `resume_rollback()` continues a batched one
that was interrupted.  See undo_sql.py for the SQL and README.md for semantics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .. import approval as ap
from .. import operations
from ..capture.tableinfo import TableInfo, load
from ..db import DEFAULT_SCHEMA, scalar
from ..errors import ApprovalRequired, ConflictError, RecoveryError, first_line
from ..schema import require_schema
from ..selector import Selector, where_clause
from . import queries as q

ON_CONFLICT = ("fail", "skip", "overwrite")
EXAMPLES = 5
WORK_MEM = "256MB"
Progress = Callable[[str, int], None]


@dataclass
class TableResult:
    table: str
    table_id: int
    changes: int = 0
    reinsert: int = 0
    restore: int = 0
    delete: int = 0
    already: int = 0
    conflicts: int = 0
    partial: int = 0
    conflict_examples: list[dict[str, Any]] = field(default_factory=list)
    inserted: int = 0
    updated: int = 0
    deleted: int = 0


@dataclass
class RollbackReport:
    """What an undo would do (dry run) or did."""

    op_id: int | None
    status: str
    selector: dict[str, Any]
    on_conflict: str
    dry_run: bool
    tables: list[TableResult]
    undo_tag: str | None
    seconds: float = 0.0
    batches: int = 0
    sql: list[str] = field(default_factory=list)
    approval: int | None = None  # the approval request it consumed, or is pending on

    @property
    def conflicts(self) -> int:
        return sum(t.conflicts for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conflicts"] = self.conflicts
        d.pop("sql")
        return d


class _NotRun:
    rowcount = 0


class Run:
    """State of one undo operation while it runs."""

    def __init__(
        self,
        conn: psycopg.Connection,
        schema: str,
        op_id: int | None,
        prefix: str,
        on_conflict: str,
        fire_triggers: bool,
        lock_timeout: str,
        sql_out: list[str] | None,
        progress: Progress | None,
        net_schema: str | None = None,
        tag: str | None = None,
    ) -> None:
        self.conn = conn
        self.schema = schema
        # Where the plan (net) tables live: the recovery schema for an undo (a batched
        # one resumes from them), pg_temp for a restore (one transaction).
        self.net_schema = net_schema or schema
        self.tag = tag if tag is not None else (undo_tag(op_id) if op_id is not None else None)
        self.op_id = op_id
        self.prefix = prefix
        self.overwrite = on_conflict == "overwrite"
        self.on_conflict = on_conflict
        self.fire_triggers = fire_triggers
        self.lock_timeout = lock_timeout
        self.sql_out = sql_out
        self.progress = progress
        self.tables: list[TableInfo] = []
        self.results: dict[int, TableResult] = {}
        self._suspended: list[tuple[TableInfo, list[tuple[str, str, str]]]] = []
        self._activity: dict[int, tuple[list[bool], bool]] = {}
        # Batched runs mark finished net rows (to resume); one transaction need not.
        self.batched = False
        # Dry run with sql_out: record the statements that change data, run none.
        self.record_only = False
        # Running inside the caller's open transaction (its blocks are savepoints):
        # settings it changes are put back by end_tx(), constraint modes are left alone.
        self.nested = False
        self._saved: dict[str, str | None] = {}

    def run(self, stmt: sql.SQL | sql.Composed, params: Sequence[Any] | None = None) -> Any:
        if self.sql_out is not None:
            self.sql_out.append(stmt.as_string(self.conn) + ";")
        if self.record_only:
            return _NotRun()
        return self.conn.execute(stmt, params)

    def net(self, t: TableInfo) -> str:
        return f"{self.prefix}_{t.table_id}"

    def set_local(self, name: str, value: str) -> None:
        """Set a setting to the end of the transaction (nested: until end_tx())."""
        if self.nested and name not in self._saved:
            row = self.conn.execute("SELECT current_setting(%s, true)", [name]).fetchone()
            self._saved[name] = row[0] if row else None
        self.conn.execute("SELECT set_config(%s, %s, true)", [name, value])

    def begin_tx(self) -> None:
        self.set_local("lock_timeout", self.lock_timeout)
        # The plan's joins are hash joins over the damaged rows: give them memory, so
        # they do not spill to disk (only this transaction's work_mem changes).
        self.set_local("work_mem", WORK_MEM)
        if not self.nested:
            # Deferrable foreign keys are checked once, at commit.  (Not in a caller's
            # transaction: its constraint modes are its own, and cannot be put back.)
            self.conn.execute("SET CONSTRAINTS ALL DEFERRED")
        if self.tag is not None:
            self.set_local("recovery.tag", self.tag)

    def end_tx(self) -> None:
        """At the end of a block that succeeded inside a caller's transaction: give it
        back its settings (the caller's later writes must not carry the undo's tag) and
        drop this run's temporary tables.  A transaction of its own ends them itself."""
        if not self.nested:
            return
        for name, value in self._saved.items():
            self.conn.execute("SELECT set_config(%s, %s, true)", [name, value or ""])
        self._saved = {}
        for t in self.tables:
            self.conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}, {}").format(
                    sql.Identifier("pg_temp", f"_rb_{t.table_id}"),
                    sql.Identifier("pg_temp", f"_rs_{t.table_id}"),
                )
            )

    # -- the table's own triggers ------------------------------------------------
    def suspend_triggers(self, t: TableInfo) -> None:
        """Disable the table's own triggers for this transaction, so restored rows are exact.

        Needs ownership of the table; the lock taken (SHARE ROW EXCLUSIVE) is held to
        commit and bounded by lock_timeout.  Foreign-key and capture triggers stay on.
        """
        if self.fire_triggers or any(x is t for x, _ in self._suspended):
            return
        rows = self.conn.execute(
            "SELECT tg.tgrelid::regclass::text, tg.tgname, tg.tgenabled FROM pg_trigger tg "
            "WHERE tg.tgrelid IN (SELECT %s::oid UNION SELECT relid FROM pg_partition_tree(%s)) "
            "AND NOT tg.tgisinternal AND tg.tgenabled <> 'D' AND tg.tgparentid = 0 "
            "AND tg.tgname NOT LIKE %s",
            [t.relid, t.relid, self.schema.replace("_", r"\_") + r"\_capture\_%"],
        ).fetchall()
        for rel, name, _state in rows:
            try:
                self.run(
                    sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
                        sql.SQL(rel), sql.Identifier(name)
                    )
                )
            except psycopg.errors.InsufficientPrivilege:
                raise RecoveryError(
                    f"cannot suspend trigger {name} of {t.label} during the undo (must be the "
                    "table's owner): run as the owner, or pass --fire-triggers to let it fire"
                ) from None
        self._suspended.append((t, [(r, n, s) for r, n, s in rows]))

    def restore_triggers(self) -> None:
        verbs = {"O": "ENABLE TRIGGER", "A": "ENABLE ALWAYS TRIGGER", "R": "ENABLE REPLICA TRIGGER"}
        for _t, rows in self._suspended:
            for rel, name, state in rows:
                self.run(
                    sql.SQL("ALTER TABLE {} {} {}").format(
                        sql.SQL(rel), sql.SQL(verbs[state]), sql.Identifier(name)
                    )
                )
        self._suspended = []

    # -- status and apply ---------------------------------------------------------
    def fill_batch(self, t: TableInfo, action: str | None, limit: int | None) -> int:
        b = f"_rb_{t.table_id}"
        # pg_temp: with no temporary table of that name yet, an unqualified name could
        # reach a table of the application's.
        self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("pg_temp", b)))
        cond = (
            sql.SQL("NOT done")
            if action is None
            else sql.SQL("NOT done AND action = {}").format(sql.Literal(action))
        )
        lim = sql.SQL("") if limit is None else sql.SQL(" LIMIT {}").format(sql.Literal(limit))
        cur = self.run(
            sql.SQL(
                "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT bn FROM {} WHERE {} ORDER BY bn{}"
            ).format(sql.Identifier(b), sql.Identifier(self.net_schema, self.net(t)), cond, lim)
        )
        # Temporary tables get no statistics from autovacuum: without them the planner
        # assumes one row and picks a nested loop over the whole batch.
        self.conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(b)))
        rowcount: int = cur.rowcount  # a Cursor or a _NotRun: run() returns either
        return rowcount

    def references(self, t: TableInfo) -> list[q.Reference]:
        """Foreign keys into t (a row to delete must not be referenced by a kept row)."""
        mine = {x.relid: x for x in self.tables}
        out = []
        for child, relid, cols, refd in self.conn.execute(
            "SELECT c.conrelid::regclass::text, c.conrelid::oid::bigint,"
            " array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i)"
            "  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),"
            " array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i)"
            "  JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)"
            " FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = %s"
            " AND c.conparentid = 0 ORDER BY c.conname",
            [t.relid],
        ):
            ct = mine.get(relid)
            out.append(
                q.Reference(
                    child,
                    tuple(cols),
                    tuple(refd),
                    self.net(ct) if ct else None,
                    tuple(k.name for k in ct.key) if ct else (),
                )
            )
        return out

    def activity(self, t: TableInfo) -> tuple[list[bool], bool]:
        """Which columns any net row writes or lost, and whether all rows are UPDATEs."""
        if t.table_id not in self._activity:
            row = self.conn.execute(q.net_activity(t, self.net_schema, self.net(t))).fetchone()
            assert row is not None
            self._activity[t.table_id] = ([bool(x) for x in row[:-1]], not row[-1])
        return self._activity[t.table_id]

    def build_net(self, t: TableInfo, where: sql.Composable, lo: int, hi: int) -> None:
        """Create the net table of t; the cheap projection when one statement is all."""
        net = sql.Identifier(self.net_schema, self.net(t))
        in_range = self.conn.execute(
            sql.SQL(
                "SELECT count(*), min(op::text) FROM {}.stmt WHERE table_id = %s"
                " AND stmt_id BETWEEN %s AND %s"
            ).format(sql.Identifier(self.schema)),
            [t.table_id, lo, hi],
        ).fetchone()
        assert in_range is not None
        if in_range[0] == 1:
            self.run(q.build_net_single(t, self.schema, self.net(t), lo, in_range[1]))
            kchg = self.conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE kchg)").format(net)
            ).fetchone()
            if kchg is not None and not kchg[0]:
                return
            self.run(sql.SQL("DROP TABLE {}").format(net))
        self.run(q.build_net(t, self.schema, self.net(t), where, lo, hi))

    def status(self, t: TableInfo, lock: bool) -> TableResult:
        """Compare the batch's net rows with the table now; count and keep examples."""
        st, b = f"_rs_{t.table_id}", f"_rb_{t.table_id}"
        if lock:
            self.run(q.lock_rows(t, self.net_schema, self.net(t), b))
        self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("pg_temp", st)))
        active, only_updates = self.activity(t)
        self.run(
            q.build_status(
                t, self.net_schema, self.net(t), st, b, self.references(t), active, only_updates
            )
        )
        self.conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(st)))
        res = TableResult(t.label, t.table_id)
        any_r = sql.SQL(" OR ").join(
            sql.SQL("{}").format(sql.Identifier(f"r{n}")) for n in range(len(t.writable))
        )
        for action, status, partial, present, n in self.conn.execute(
            sql.SQL(
                "SELECT action, status, {} AND cur_present, cur_present, count(*) FROM {}"
                " GROUP BY 1, 2, 3, 4"
            ).format(any_r, sql.Identifier(st))
        ):
            if status == "done":
                res.already += n
                continue
            if status == "conflict":
                res.conflicts += n
                if not self.overwrite:
                    # Unless on_conflict is fail: a conflicting row still gets its
                    # restorable cells, and a row to re-insert that is still absent is
                    # re-inserted with the later values of the conflicting cells.
                    if action == "update" and partial:
                        res.partial += n
                    elif action == "insert" and not present:
                        res.partial += n
                    continue
            if action == "insert":
                res.reinsert += n
            elif action == "update":
                res.restore += n
            elif action == "delete":
                res.delete += n
        if res.conflicts:
            for action, cols, key, values in self.conn.execute(
                q.conflict_examples(t, self.net_schema, self.net(t), st, EXAMPLES)
            ):
                res.conflict_examples.append(
                    {
                        "action": action,
                        "key": key,
                        "columns": cols,
                        "values": {
                            c: dict(zip(("restore_to", "left_by_change", "now"), values[c]))
                            for c in cols
                            if c in values
                        },
                    }
                )
        return res

    def apply(self, t: TableInfo, phases: Sequence[str]) -> tuple[int, int, int]:
        """Run the statements of these phases on the current batch (or plan).

        A batch holds rows of one action, but with overwrite a row to re-insert may
        need an UPDATE (re-created since) and a row to restore an INSERT (deleted
        since): a batch runs every phase, each acting only on the rows it concerns.
        """
        st = f"_rs_{t.table_id}"
        ins = upd = dele = 0
        if "insert" in phases:
            ins = self.run(
                q.apply_insert(t, self.net_schema, self.net(t), st, self.overwrite)
            ).rowcount
        if "update" in phases:
            masks = self.conn.execute(q.update_masks(t, st, self.overwrite)).fetchall()
            for mask in masks:
                if any(mask):
                    upd += self.run(
                        q.apply_update(t, self.net_schema, self.net(t), st, self.overwrite, mask)
                    ).rowcount
        if "delete" in phases:
            dele = self.run(
                q.apply_delete(t, self.net_schema, self.net(t), st, self.overwrite)
            ).rowcount
        if self.batched:
            self.run(
                sql.SQL("UPDATE {} n SET done = true FROM {} b WHERE b.bn = n.bn").format(
                    sql.Identifier(self.net_schema, self.net(t)),
                    sql.Identifier(f"_rb_{t.table_id}"),
                )
            )
        return ins, upd, dele


def undo_tag(op_id: int) -> str:
    """The tag carried by the writes of undo operation op_id (so it can be undone too)."""
    return f"recovery-undo-{op_id}"


def fk_order(conn: psycopg.Connection, tables: list[TableInfo]) -> list[TableInfo]:
    """Tables with parents before children (by foreign keys among them); stable otherwise."""
    rel = {t.relid: t for t in tables}
    edges = conn.execute(
        "SELECT DISTINCT coalesce(pp.relid, c.confrelid)::oid::bigint,"
        " coalesce(pc.relid, c.conrelid)::oid::bigint "
        "FROM pg_constraint c "
        "LEFT JOIN LATERAL (SELECT relid FROM pg_partition_ancestors(c.confrelid) "
        "  WHERE relid = ANY(%s) LIMIT 1) pp ON true "
        "LEFT JOIN LATERAL (SELECT relid FROM pg_partition_ancestors(c.conrelid) "
        "  WHERE relid = ANY(%s) LIMIT 1) pc ON true "
        "WHERE c.contype = 'f'",
        [list(rel), list(rel)],
    ).fetchall()
    parents: dict[int, set[int]] = {r: set() for r in rel}
    for parent, child in edges:
        if parent in rel and child in rel and parent != child:
            parents[child].add(parent)
    out: list[TableInfo] = []
    placed: set[int] = set()
    pending = sorted(rel, key=lambda r: rel[r].label)
    while pending:
        ready = [r for r in pending if parents[r] <= placed] or pending[:1]  # cycle: any order
        for r in ready:
            out.append(rel[r])
            placed.add(r)
            pending.remove(r)
    return out


def _analyze_journal(conn: psycopg.Connection, schema: str, table_ids: list[int]) -> None:
    """ANALYZE journal chunks whose statistics are missing or stale.

    A chunk written since autovacuum last looked has no useful statistics, and the
    planner then picks nested loops that are quadratic in the damaged rows.
    """
    names = [f"j_{tid}_%" for tid in table_ids] + ["stmt_%"]
    stale = conn.execute(
        "SELECT s.relid::regclass::text FROM pg_stat_user_tables s WHERE s.schemaname = %s"
        " AND s.relname LIKE ANY(%s) AND (coalesce(s.last_analyze, s.last_autoanalyze) IS NULL"
        "  OR s.n_mod_since_analyze > 0.1 * greatest(s.n_live_tup, 1000))",
        [schema, names],
    ).fetchall()
    for (rel,) in stale:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(rel)))


def _matching(
    conn: psycopg.Connection, schema: str, where: sql.Composable
) -> list[tuple[int, int, int, int]]:
    return conn.execute(
        sql.SQL(
            "SELECT st.table_id, min(st.stmt_id), max(st.stmt_id), sum(st.nrows)::bigint "
            "FROM {}.stmt st WHERE {} GROUP BY st.table_id ORDER BY st.table_id"
        ).format(sql.Identifier(schema), where)
    ).fetchall()


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
    if on_conflict not in ON_CONFLICT:
        raise RecoveryError(f"--on-conflict {on_conflict!r}: use one of {', '.join(ON_CONFLICT)}")
    if batch_size is not None and batch_size < 1:
        raise RecoveryError("--batch-size must be a positive number of rows")
    if selector.is_empty():
        raise RecoveryError(
            "no selector given: name what to undo with --tag, --txid, --since/--until, "
            "--table, --user or --app"
        )
    nested = conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    if batch_size is not None and not dry_run:
        operations.refuse_in_transaction(
            conn, "a batched rollback", f"a transaction per batch of {batch_size} rows"
        )
    started = time.monotonic()
    options = {
        "on_conflict": on_conflict,
        "batch_size": batch_size,
        "lock_timeout": lock_timeout,
        "fire_triggers": fire_triggers,
    }
    op_id = None
    # The record first, in a transaction of its own (`recovery operations` shows the
    # undo under way while it runs); inside a caller's transaction, in that one.
    with conn.transaction():
        require_schema(conn, schema)
        where = where_clause(conn, selector, schema)
        matching = _matching(conn, schema, where)
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
        try:
            with conn.transaction() as tx:
                _plan(r, report, where, matching, lock=single)
                if dry_run:
                    if sql_out is not None:
                        # --dry-run --sql: also write the statements the undo would apply.
                        r.record_only = True
                        _apply_all(r, report)
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
                    report.approval = _gate(
                        r,
                        report,
                        selector,
                        approval,
                        max_rows_without_approval,
                        max_tables_without_approval,
                    )
                if single:
                    _apply_all(r, report)
                    _finish(r, report, "done", started)
                    r.end_tx()
                else:
                    # Batched: keep the plan, then work through it in committed batches.
                    _set_status(r, "applying", report)
        except ap.ApprovalNeeded as need:
            raise ap.pending(conn, need) from None  # recorded now that nothing is applied
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
    return _run_batches(r, report, batch_size or 0, started)


def _plan(
    r: Run,
    report: RollbackReport,
    where: sql.Composable,
    matching: list[tuple[int, int, int, int]],
    lock: bool,
) -> None:
    """Build the net tables of the matching tables and compare them with the tables now
    (locking the rows to undo when `lock`): the report's per-table counts."""
    conn, schema = r.conn, r.schema
    r.begin_tx()
    infos = [load(conn, schema, tid) for tid, *_ in matching]
    r.tables = fk_order(conn, infos)
    changes = {tid: n for tid, _lo, _hi, n in matching}
    _analyze_journal(conn, schema, [t.table_id for t in r.tables])
    for t in r.tables:
        tid, lo, hi, _n = next(m for m in matching if m[0] == t.table_id)
        r.build_net(t, where, lo, hi)
        # Fresh statistics: without them the planner guesses one row and nests loops.
        r.run(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, r.net(t))))
    for t in r.tables:
        r.fill_batch(t, None, None)
        res = r.status(t, lock=lock)
        res.changes = int(changes[t.table_id])
        r.results[t.table_id] = res
    report.tables = [r.results[t.table_id] for t in r.tables]


def _gate(
    r: Run,
    report: RollbackReport,
    selector: Selector,
    approval: int | None,
    max_rows: int | None,
    max_tables: int | None,
) -> int | None:
    """Two-person approval of the planned undo (approval.py): the request it consumes,
    or None when it is within the thresholds; else ApprovalPending, nothing changed."""
    plan, rows, tables = ap.rollback_plan(
        selector.as_dict(), report.on_conflict, [asdict(t) for t in report.tables]
    )
    return ap.gate(
        r.conn,
        "rollback",
        plan,
        rows,
        tables,
        schema=r.schema,
        approval=approval,
        max_rows=max_rows,
        max_tables=max_tables,
        what="this undo",
    )


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


def _apply_all(r: Run, report: RollbackReport) -> None:
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


def _run_batches(r: Run, report: RollbackReport, batch_size: int, started: float) -> RollbackReport:
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
            _finish(r, report, "done", started)
        operations.release(conn, r.op_id)
    except ConflictError:
        record_end(conn, r.schema, r.op_id, "stopped", report, "conflicts during batches")
        raise
    except psycopg.errors.LockNotAvailable:
        record_end(conn, r.schema, r.op_id, "stopped", report, "lock timeout")
        raise RecoveryError(
            f"a batch waited beyond lock_timeout {r.lock_timeout}: {report.batches} batch(es) "
            f"committed; resume with `recovery rollback --resume {r.op_id}`"
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
    _set_status(r, "applying", report)
    return ins + upd + dele


def _set_status(r: Run, status: str, report: RollbackReport) -> None:
    report.status = status
    r.conn.execute(
        sql.SQL("UPDATE {}.operations SET status = %s, summary = %s WHERE op_id = %s").format(
            sql.Identifier(r.schema)
        ),
        [status, Jsonb(report.to_dict()), r.op_id],
    )


def _finish(r: Run, report: RollbackReport, status: str, started: float) -> None:
    for t in r.tables:
        r.conn.execute(
            sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(r.schema, r.net(t)))
        )
    report.status = status
    report.seconds = time.monotonic() - started
    r.conn.execute(
        sql.SQL(
            "UPDATE {}.operations SET status = %s, summary = %s, finished_at = clock_timestamp(),"
            " tag = %s WHERE op_id = %s"
        ).format(sql.Identifier(r.schema)),
        [status, Jsonb(report.to_dict()), report.undo_tag, r.op_id],
    )


def record_end(
    conn: psycopg.Connection,
    schema: str,
    op_id: int | None,
    status: str,
    report: RollbackReport,
    error: str,
) -> None:
    if op_id is None:
        return
    report.status = status
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "UPDATE {}.operations SET status = %s, summary = %s, error = %s,"
                " finished_at = clock_timestamp() WHERE op_id = %s"
            ).format(sql.Identifier(schema)),
            [status, Jsonb(json.loads(json.dumps(report.to_dict(), default=str))), error, op_id],
        )
    operations.release(conn, op_id)


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
            raise RecoveryError(f"the saved plan of operation {op_id} is gone: cannot resume")
        r.tables = fk_order(conn, infos)
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
    return _run_batches(r, report, int(options["batch_size"]), time.monotonic())
