"""What a restore does per table: which tables, the counts and the statements, the report.

A snapshot row is planned exactly like an undo's net row (undo/queries.py): see the
package docstring.  `TablePlan` holds one table's restore statements and the counts
they act on; `RestoreReport` and `RestoreTable` are what restore() returns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..capture.tableinfo import TableInfo
from ..errors import RecoveryError
from ..snapshot.stores import SnapshotInfo

_i = sql.Identifier


@dataclass
class RestoreTable:
    table: str
    saved: int
    restore: int = 0  # rows present now that get saved values back
    reinsert: int = 0  # rows gone that are inserted again
    delete: int = 0  # rows added since, inside the WHERE (--delete-new)
    already: int = 0  # rows equal to the snapshot already
    conflicts: int = 0  # rows that changed while the restore ran
    new_rows: int | None = None  # rows added since inside the WHERE; None: cannot tell
    missing: int = 0  # rows gone that a columns-only snapshot cannot re-insert
    updated: int = 0
    inserted: int = 0
    deleted: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class RestoreReport:
    op_id: int | None
    snapshot: str
    store: str
    status: str
    dry_run: bool
    tables: list[RestoreTable]
    tag: str | None
    seconds: float = 0.0
    approval: int | None = None  # the approval request it consumed, or is pending on

    @property
    def conflicts(self) -> int:
        return sum(t.conflicts for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conflicts"] = self.conflicts
        return d


def pick(info: SnapshotInfo, tables: Sequence[str]) -> list[dict[str, Any]]:
    items = info.manifest["items"]
    if not tables:
        return list(items)
    out = []
    for want in tables:
        # As the snapshot lists it (schema.table, table), or as SQL names it, the way
        # `snapshot create --table` takes it: "Mixed"."Order Items", public.orders.
        sql_name = _sql_name(want)
        hit = [
            i
            for i in items
            if want in (f"{i['schema']}.{i['table']}", i["table"])
            or sql_name in ((i["schema"], i["table"]), (i["table"],))
        ]
        if not hit:
            raise RecoveryError(
                f"snapshot {info.name} holds no table {want!r}: it holds "
                + ", ".join(f"{i['schema']}.{i['table']}" for i in items)
            )
        out += [h for h in hit if h not in out]
    return out


_NAME_PART = r'\s*(?:"((?:[^"]|"")+)"|([^".\s]+))\s*'


def _sql_name(name: str) -> tuple[str, ...] | None:
    """The parts of a (possibly schema-qualified) SQL name: quoted parts as written,
    unquoted ones folded to lower case; None if it is no such name."""
    if not re.fullmatch(rf"{_NAME_PART}(?:\.{_NAME_PART})*", name):
        return None
    return tuple(q.replace('""', '"') if q else u.lower() for q, u in re.findall(_NAME_PART, name))


def _new_rows_where(item: dict[str, Any]) -> sql.Composable | None:
    """Condition over the table (alias cur) for rows inside the snapshot's WHERE, or
    None when the snapshot's rows were chosen by other tables (--for-sql joins)."""
    if not item.get("reevaluable"):
        return None
    return sql.SQL("({})").format(sql.SQL(item["where"])) if item["where"] else sql.SQL("true")


def _references(conn: psycopg.Connection, t: TableInfo) -> list[sql.Composable]:
    """Per foreign key into t: a condition saying the row (alias cur) is referenced."""
    out: list[sql.Composable] = []
    for child, cols, refd in conn.execute(
        "SELECT c.conrelid::regclass::text,"
        " array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i)"
        "  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),"
        " array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i)"
        "  JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)"
        " FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = %s"
        " AND c.conparentid = 0 ORDER BY c.conname",
        [t.relid],
    ):
        out.append(
            sql.SQL("EXISTS (SELECT 1 FROM {} x WHERE {})").format(
                sql.SQL(child),
                sql.SQL(" AND ").join(
                    sql.SQL("x.{} = cur.{}").format(_i(c), _i(r)) for c, r in zip(cols, refd)
                ),
            )
        )
    return out


class TablePlan:
    """The statements that restore one table, and the counts they act on.

    Set-based and lean: one UPDATE ... FROM writes the saved values into rows that
    differ from them (compared as text, so every type works and -0 vs 0 or json
    whitespace count as different), one INSERT ... SELECT re-inserts rows that are
    gone, and with --delete-new one DELETE removes rows added since inside the
    snapshot's WHERE that no row references (those are kept and counted as
    conflicts, as the undo engine does).  Rows changed since the snapshot are what a
    restore is for, so they are overwritten; the UPDATE locks each row it writes.
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        t: TableInfo,
        src: sql.Composable,
        item: dict[str, Any],
        delete_new: bool,
    ) -> None:
        self.conn, self.t, self.src, self.item = conn, t, src, item
        key = {k.name for k in t.key}
        cols = t.writable
        # s.<col> through Column.value(): cast back from the text it may be stored in.
        self.match = sql.SQL(" AND ").join(
            sql.SQL("cur.{} = {}").format(_i(k.name), k.value("s")) for k in t.key
        )
        self.present = sql.SQL("cur.{} IS NOT NULL").format(_i(t.key[0].name))
        # GENERATED ALWAYS identity columns cannot be written by an UPDATE: they are
        # left out of the comparison too (else a row would count as restored, and stay
        # "to restore" forever), and reported.
        self.fixed = [c.name for c in cols if c.name not in key and c.identity_always]
        diffs = [
            sql.SQL("(cur.{})::text IS DISTINCT FROM ({})::text").format(_i(c.name), c.value("s"))
            for c in cols
            if c.name not in key and not c.identity_always
        ]
        self.differs = sql.SQL(" OR ").join(diffs) if diffs else sql.SQL("false")
        self.sets = [c for c in cols if c.name not in key and not c.identity_always]
        self.cols = cols
        self.new_where = _new_rows_where(item)
        self.delete_new = delete_new and self.new_where is not None
        self.refs = _references(conn, t) if self.delete_new else []

    def counts(self, res: RestoreTable) -> None:
        row = self.conn.execute(
            sql.SQL(
                "SELECT count(*) FILTER (WHERE NOT ({p})), count(*) FILTER (WHERE {p} AND ({d}))"
                " FROM {src} s LEFT JOIN {tbl} cur ON {m}"
            ).format(p=self.present, d=self.differs, src=self.src, tbl=self.t.ident, m=self.match)
        ).fetchone()
        assert row is not None
        gone, differ = int(row[0]), int(row[1])
        if self.item["all_columns"]:
            res.reinsert = gone
        else:
            res.missing = gone
        res.restore = differ
        res.already = res.saved - gone - differ
        self.count_new(res)

    def count_new(self, res: RestoreTable) -> None:
        if self.new_where is None:
            return
        row = self.conn.execute(
            sql.SQL(
                "SELECT count(*), count(*) FILTER (WHERE {refd}) FROM {tbl} cur WHERE {w}"
                " AND NOT EXISTS (SELECT 1 FROM {src} s WHERE {m})"
            ).format(
                refd=sql.SQL(" OR ").join(self.refs) if self.refs else sql.SQL("false"),
                tbl=self.t.ident,
                w=self.new_where,
                src=self.src,
                m=self.match,
            )
        ).fetchone()
        assert row is not None
        res.new_rows = int(row[0])
        if self.delete_new:
            res.delete = int(row[0]) - int(row[1])
            res.conflicts = int(row[1])
            if res.conflicts:
                res.notes.append(
                    f"{res.conflicts} row(s) added since are referenced by other rows: kept"
                )

    def insert(self) -> int:
        if not self.item["all_columns"]:
            return 0
        t = self.t
        overriding = (
            sql.SQL(" OVERRIDING SYSTEM VALUE")
            if any(c.identity_always for c in self.cols)
            else sql.SQL("")
        )
        names = sql.SQL(", ").join(_i(c.name) for c in self.cols)
        return self.conn.execute(
            sql.SQL(
                "INSERT INTO {tbl} ({names}){ov} SELECT {vals} FROM {src} s"
                " WHERE NOT EXISTS (SELECT 1 FROM {tbl} cur WHERE {m})"
            ).format(
                tbl=t.ident,
                names=names,
                ov=overriding,
                vals=sql.SQL(", ").join(c.value("s") for c in self.cols),
                src=self.src,
                m=self.match,
            )
        ).rowcount

    def update(self) -> int:
        if not self.sets:
            return 0
        return self.conn.execute(
            sql.SQL("UPDATE {tbl} cur SET {sets} FROM {src} s WHERE {m} AND ({d})").format(
                tbl=self.t.ident,
                src=self.src,
                m=self.match,
                d=self.differs,
                sets=sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(_i(c.name), c.value("s")) for c in self.sets
                ),
            )
        ).rowcount

    def delete(self) -> int:
        if not self.delete_new:
            return 0
        keep = sql.SQL("").join(sql.SQL(" AND NOT {}").format(r) for r in self.refs)
        return self.conn.execute(
            sql.SQL(
                "DELETE FROM {tbl} cur WHERE {w}"
                " AND NOT EXISTS (SELECT 1 FROM {src} s WHERE {m}){k}"
            ).format(tbl=self.t.ident, w=self.new_where, src=self.src, m=self.match, k=keep)
        ).rowcount


def missing(plan: TablePlan, res: RestoreTable) -> int:
    """Rows of a columns-only snapshot that are gone (cannot be re-inserted): counted."""
    row = plan.conn.execute(
        sql.SQL(
            "SELECT count(*) FROM {src} s WHERE NOT EXISTS (SELECT 1 FROM {tbl} cur WHERE {m})"
        ).format(src=plan.src, tbl=plan.t.ident, m=plan.match)
    ).fetchone()
    res.missing = int(row[0]) if row else 0
    if res.missing:
        res.notes.append(
            f"{res.missing} saved row(s) are gone and this snapshot holds only "
            "some columns: not re-inserted"
        )
    return res.missing


def check_delete_new(items: Sequence[dict[str, Any]]) -> None:
    """Refuse --delete-new for snapshots whose rows added since cannot be told apart."""
    blind = [f"{i['schema']}.{i['table']}" for i in items if not i.get("reevaluable")]
    if blind:
        raise RecoveryError(
            f"--delete-new needs rows chosen by the table's own columns; the rows of "
            f"{blind[0]} were chosen by the migration's SQL (--for-sql): restore without it"
        )
    # With a WHERE, a row that existed outside it when the snapshot was taken and
    # was moved into it since cannot be told from a row inserted since: deleting
    # it would lose a row that was never new.
    narrowed = [f"{i['schema']}.{i['table']}" for i in items if i.get("where")]
    if narrowed:
        raise RecoveryError(
            f"--delete-new needs a snapshot of whole tables; {narrowed[0]} was saved with "
            "--where, and a row moved into that WHERE since cannot be told from a new "
            "one: restore without --delete-new (rows added since are kept and counted)"
        )
