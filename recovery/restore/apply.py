"""Restore a snapshot: put saved rows back, selectively, with the undo engine's logic.

A snapshot row is planned exactly like an undo's net row (undo_sql.py), with the
snapshot as the state to restore and the table as it is now as the state "the
change left": a row present now gets its saved values in the columns that differ
(an UPDATE per set of columns, so untouched cells and rows are not written), a row
gone is re-inserted, and with --delete-new a row added since inside the snapshot's
WHERE is deleted (refused while a kept row references it).  Foreign-key order,
suspension of the table's own triggers, row locks, lock_timeout and the apply
statements are the undo engine's.  Conflicts here are rows that change while the
restore runs: rows changed since the snapshot are what a restore is for.

Everything runs in one transaction: a table dropped since is recreated from the
manifest, a column dropped since is added back (at the end of the table), data
from a directory store is streamed with COPY into a temporary table and checked
against the manifest's sha256 and row count on the way; any failure leaves no trace.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import zstandard
from psycopg import sql

from .. import approval as ap
from .. import operations
from ..capture.tableinfo import Column, TableInfo
from ..db import DEFAULT_SCHEMA
from ..errors import ApprovalRequired, ConflictError, RecoveryError, first_line
from ..operations import record_end, record_start
from ..schema import installed_version
from ..snapshot import tabledef
from ..snapshot.stores import (
    SETTINGS,
    Progress,
    SnapshotInfo,
    db_snapshots,
    read_data,
    read_rows,
)
from ..undo.engine import Run, fk_order

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


def _pick(info: SnapshotInfo, tables: Sequence[str]) -> list[dict[str, Any]]:
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


def _current(conn: psycopg.Connection, item: dict[str, Any]) -> int | None:
    row = conn.execute(
        "SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s"
        " AND c.relkind IN ('r', 'p')",
        [item["schema"], item["table"]],
    ).fetchone()
    return int(row[0]) if row else None


def _prepare_table(
    conn: psycopg.Connection, item: dict[str, Any], res: RestoreTable, dry_run: bool = False
) -> tuple[int, bool, list[str]]:
    """Make the table fit the snapshot: recreate it, add back dropped columns.

    Returns (relid, recreated, columns added back).  A saved column whose type
    differs now is refused: restoring it would need a cast that may lose data.
    """
    label = f"{item['schema']}.{item['table']}"
    relid = _current(conn, item)
    recreated = False
    if relid is None:
        res.notes += tabledef.recreate(conn, item["definition"])
        relid = _current(conn, item)
        assert relid is not None
        recreated = True
    else:
        # A dropped partition: its saved rows need it back to have somewhere to go.
        res.notes += tabledef.missing_partitions(conn, item["definition"], dry_run)
    with tabledef.catalog_path(conn):
        now = {c["name"]: c for c in tabledef.columns(conn, relid)}
    added = []
    for c in item["columns"]:
        cur = now.get(c["name"])
        if cur is None:
            coll = (
                sql.SQL(" COLLATE {}").format(sql.SQL(c["collation"]))
                if c["collation"]
                else sql.SQL("")
            )
            with tabledef.catalog_path(conn):
                conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN {} {}{}").format(
                        _i(item["schema"], item["table"]), _i(c["name"]), sql.SQL(c["type"]), coll
                    )
                )
            added.append(c["name"])
            res.notes.append(f"added column {c['name']} back (at the end of the table)")
        elif cur["type"] != c["type"]:
            raise RecoveryError(
                f"column {c['name']} of {label} is {cur['type']} now, {c['type']} in the "
                f"snapshot: change it back first (ALTER TABLE {label} ALTER COLUMN "
                f"{c['name']} TYPE {c['type']} USING ...), then restore"
            )
    return relid, recreated, added


def _table_info(conn: psycopg.Connection, n: int, relid: int, item: dict[str, Any]) -> TableInfo:
    rows = conn.execute(
        "SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '',"
        " a.attidentity = 'a', t.typcategory = 'A' OR EXISTS (SELECT 1 FROM pg_type b"
        "  WHERE b.oid = t.typbasetype AND b.typcategory = 'A'), n.nspname, c.relname"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        [relid],
    ).fetchall()
    # A column the database store saved in another type (the text form of a type
    # that is not built in) is read back through a cast to its type now, as the undo
    # reads the journal's; a manifest without "stored" saved it in its own type.
    saved = {c["name"]: c.get("stored") for c in item["columns"]}
    cols = tuple(
        Column(attnum, name, typ, ((name, 0, saved[name] or typ),), False, bool(ident), bool(arr))
        for attnum, name, typ, gen, ident, arr, _n, _c in rows
        if name in saved and not gen
    )
    by_name = {c.name: c for c in cols}
    label = f"{item['schema']}.{item['table']}"
    missing = [k for k in item["key"] if k not in by_name]
    if missing:
        raise RecoveryError(f"key column {missing[0]} of the snapshot is not in {label} now")
    unique = conn.execute(
        "SELECT 1 FROM pg_index WHERE indrelid = %s AND indisunique AND indpred IS NULL"
        " AND indexprs IS NULL AND (SELECT array_agg(k ORDER BY k) FROM unnest(indkey::int2[]) k)"
        " = (SELECT array_agg(k ORDER BY k) FROM unnest(%s::int2[]) k)",
        [relid, [by_name[k].attnum for k in item["key"]]],
    ).fetchone()
    if unique is None:
        raise RecoveryError(
            f"{label} has no unique index on the snapshot's key ({', '.join(item['key'])}) now: "
            "create one, then restore"
        )
    return TableInfo(
        n, relid, rows[0][6], rows[0][7], cols, tuple(by_name[k] for k in item["key"]), ""
    )


def _check_types(conn: psycopg.Connection, items: Sequence[dict[str, Any]]) -> None:
    """Refuse, before anything changes, a saved column whose type does not exist now
    (a migration dropped it, or its extension): the message names the column, the
    type and the statements that create it again.  A table that is gone gets its
    enum, domain, composite and range types back with it (tabledef.recreate)."""
    for item in items:
        label = f"{item['schema']}.{item['table']}"
        gone = _current(conn, item) is None
        defined = {t["name"]: t["create"] for t in item["definition"].get("types", [])}
        with tabledef.catalog_path(conn):
            for c in item["columns"]:
                if _type_exists(conn, c["type"]):
                    continue
                # (A manifest from before "requires": the table's types that are gone.)
                needs = c.get("requires") or [{"type": n, "create": d} for n, d in defined.items()]
                missing = [n for n in needs if not _type_exists(conn, n["type"])]
                if gone and all(n["type"] in defined for n in missing):
                    continue  # recreated with the table
                names = ", ".join(n["type"] for n in missing) or c["type"]
                fixes = (
                    "; ".join(n.get("create") or f"create type {n['type']}" for n in missing)
                    or f"create type {c['type']}"
                )
                raise RecoveryError(
                    f"column {c['name']} of {label} has type {c['type']}, which does not "
                    f"exist now ({names} dropped since the snapshot): nothing was restored; "
                    f"create it again ({fixes}), then restore"
                )


def _type_exists(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT to_regtype(%s) IS NOT NULL", [name]).fetchone()
    return bool(row and row[0])


def _load(
    conn: psycopg.Connection,
    info: SnapshotInfo,
    item: dict[str, Any],
    schema: str,
    progress: Progress | None,
) -> sql.Composable:
    """The relation holding the saved rows: the snapshot table, or a temp table loaded
    by COPY from the directory store (checked against the manifest on the way)."""
    if info.store == "db":
        return _i(schema, item["data"])
    name = f"_snapdata_{item['n']}"
    with tabledef.catalog_path(conn):
        # (Left by an earlier restore in the same open transaction of a caller.)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(_i(name)))
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
                _i(name),
                sql.SQL(", ").join(
                    sql.SQL("{} {}").format(_i(c["name"]), sql.SQL(c["type"]))
                    for c in item["columns"]
                ),
            )
        )
    path = Path(info.store) / info.name / item["data"]
    digest = hashlib.sha256()
    try:
        with conn.cursor() as cur:
            with cur.copy(sql.SQL("COPY {} FROM STDIN").format(_i(name))) as cp:
                for chunk in read_data(path, digest):
                    cp.write(chunk)
                    if progress:
                        progress(len(chunk))
            loaded = cur.rowcount
    except FileNotFoundError:
        raise ConflictError(f"{path} is missing: the snapshot is damaged") from None
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
        # Text that COPY rejects: a damaged file, unless the file is what was saved.
        # (A value that breaks a domain's CHECK or NOT NULL is an IntegrityError.)
        if read_rows(path)[0] != item["sha256"]:
            raise ConflictError(
                f"{path} does not match its manifest (sha256): the snapshot "
                "is damaged; nothing was restored"
            ) from None
        raise
    except zstandard.ZstdError as exc:
        raise ConflictError(
            f"{path} cannot be decompressed ({exc}): the snapshot is damaged"
        ) from None
    if digest.hexdigest() != item["sha256"] or loaded != item["rows"]:
        raise ConflictError(
            f"{path} does not match its manifest (sha256 or row count): the "
            "snapshot is damaged; nothing was restored"
        )
    conn.execute(sql.SQL("ANALYZE {}").format(_i(name)))
    return _i(name)


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


class _Plan:
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
    items = _pick(info, tables)
    if delete_new:
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
    nested = conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    if info.store == "db":
        if info.name not in db_snapshots(conn, schema):
            raise RecoveryError(
                f"snapshot {info.name} is in another database's store: restore "
                "from a directory snapshot to reach another database"
            )
    started = time.monotonic()
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
    r = Run(
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
    r.nested = nested
    report = RestoreReport(
        op_id, info.name, info.store, "planned", dry_run, [], None if dry_run else tag
    )
    try:
        try:
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
    _check_types(conn, items)
    prepared = []
    for item in items:
        res = RestoreTable(f"{item['schema']}.{item['table']}", item["rows"])
        relid, recreated, added = _prepare_table(conn, item, res, dry_run)
        t = _table_info(conn, item["n"], relid, item)
        prepared.append((item, t, res, recreated, added))
    r.tables = fk_order(conn, [p[1] for p in prepared])
    by_id = {p[1].table_id: p for p in prepared}
    plans: dict[int, _Plan] = {}
    for t in r.tables:
        item, _t, res, _rec, _add = by_id[t.table_id]
        src = _load(conn, info, item, schema, progress)
        plans[t.table_id] = _Plan(conn, t, src, item, delete_new)
        for name in plans[t.table_id].fixed:
            res.notes.append(
                f"column {name} is GENERATED ALWAYS AS IDENTITY: its values "
                "are not restored in rows that exist (re-inserted rows keep "
                "theirs)"
            )
        report.tables.append(res)
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
    for t in r.tables:
        item, _t, res, recreated, added = by_id[t.table_id]
        res.reinsert, res.restore = res.inserted, res.updated
        res.already = res.saved - res.inserted - res.updated
        if not item["all_columns"]:
            res.already -= _missing(plans[t.table_id], res)
        res.notes += _finish_columns(conn, item, added)
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
        for item in items:  # the loaded copies of the files (else kept to the caller's end)
            conn.execute(
                sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(_i(f"_snapdata_{item['n']}"))
            )
    r.end_tx()


def _missing(plan: _Plan, res: RestoreTable) -> int:
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
    plans: dict[int, _Plan],
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


def _finish_columns(conn: psycopg.Connection, item: dict[str, Any], added: list[str]) -> list[str]:
    """Give columns added back their NOT NULL and default, where the rows allow."""
    notes = []
    ident = _i(item["schema"], item["table"])
    for c in item["columns"]:
        if c["name"] not in added:
            continue
        if c["default"]:
            with tabledef.catalog_path(conn):
                conn.execute(
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(
                        ident, _i(c["name"]), sql.SQL(c["default"])
                    )
                )
        if c["not_null"]:
            nulls = conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NULL)").format(
                    ident, _i(c["name"])
                )
            ).fetchone()
            if nulls and not nulls[0]:
                conn.execute(
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(
                        ident, _i(c["name"])
                    )
                )
            else:
                notes.append(
                    f"column {c['name']} was NOT NULL; rows added since the snapshot "
                    "have no value in it, so it is left nullable"
                )
    return notes
