"""The state of one undo while it runs, and the per-table steps it takes: build the
net table, compare it with the table now, apply it (also used by restore)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from ..capture.tableinfo import TableInfo
from ..errors import RecoveryError
from . import apply_sql, net_sql
from .report import Progress, TableResult, undo_tag

EXAMPLES = 5
WORK_MEM = "256MB"


class _NotRun:
    rowcount = 0


def _hooks(schema: str) -> tuple[str, str]:
    """LIKE patterns of recovery's own capture triggers (both sources): never suspended."""
    esc = schema.replace("_", r"\_")
    return esc + r"\_capture\_%", esc + r"\_wal\_%"


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
    def check_can_suspend(self) -> None:
        """Raise RecoveryError at planning time when the undo would need to suspend a
        table's own triggers that this role may not (only the owner can): said by the dry
        run, before anyone approves a plan that could not be applied."""
        if self.fire_triggers:
            return
        for t in self.tables:
            res = self.results.get(t.table_id)
            if res is None or not (res.reinsert or res.restore or res.delete or res.partial):
                continue
            row = self.conn.execute(
                "SELECT tg.tgname FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid "
                "WHERE tg.tgrelid IN (SELECT %s::oid UNION SELECT relid FROM "
                "pg_partition_tree(%s)) AND NOT tg.tgisinternal AND tg.tgenabled <> 'D' "
                "AND tg.tgparentid = 0 AND tg.tgname NOT LIKE %s AND tg.tgname NOT LIKE %s "
                "AND NOT pg_has_role(current_user, c.relowner, 'USAGE') "
                "ORDER BY tg.tgname LIMIT 1",
                [t.relid, t.relid, *_hooks(self.schema)],
            ).fetchone()
            if row is not None:
                raise RecoveryError(
                    f"cannot suspend trigger {row[0]} of {t.label} during the undo (must be "
                    "the table's owner): run as the owner, or pass --fire-triggers to let "
                    "it fire; nothing was changed"
                )

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
            "AND tg.tgname NOT LIKE %s AND tg.tgname NOT LIKE %s",
            [t.relid, t.relid, *_hooks(self.schema)],
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

    def references(self, t: TableInfo) -> list[apply_sql.Reference]:
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
                apply_sql.Reference(
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
            row = self.conn.execute(
                net_sql.net_activity(t, self.net_schema, self.net(t))
            ).fetchone()
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
            self.run(net_sql.build_net_single(t, self.schema, self.net(t), lo, in_range[1]))
            kchg = self.conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE kchg)").format(net)
            ).fetchone()
            if kchg is not None and not kchg[0]:
                return
            self.run(sql.SQL("DROP TABLE {}").format(net))
        self.run(net_sql.build_net(t, self.schema, self.net(t), where, lo, hi))

    def status(self, t: TableInfo, lock: bool) -> TableResult:
        """Compare the batch's net rows with the table now; count and keep examples."""
        st, b = f"_rs_{t.table_id}", f"_rb_{t.table_id}"
        if lock:
            self.run(apply_sql.lock_rows(t, self.net_schema, self.net(t), b))
        self.conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("pg_temp", st)))
        active, only_updates = self.activity(t)
        self.run(
            apply_sql.build_status(
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
                apply_sql.conflict_examples(t, self.net_schema, self.net(t), st, EXAMPLES)
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
                apply_sql.apply_insert(t, self.net_schema, self.net(t), st, self.overwrite)
            ).rowcount
        if "update" in phases:
            masks = self.conn.execute(apply_sql.update_masks(t, st, self.overwrite)).fetchall()
            for mask in masks:
                if any(mask):
                    upd += self.run(
                        apply_sql.apply_update(
                            t, self.net_schema, self.net(t), st, self.overwrite, mask
                        )
                    ).rowcount
        if "delete" in phases:
            dele = self.run(
                apply_sql.apply_delete(t, self.net_schema, self.net(t), st, self.overwrite)
            ).rowcount
        if self.batched:
            self.run(
                sql.SQL("UPDATE {} n SET done = true FROM {} b WHERE b.bn = n.bn").format(
                    sql.Identifier(self.net_schema, self.net(t)),
                    sql.Identifier(f"_rb_{t.table_id}"),
                )
            )
        return ins, upd, dele
