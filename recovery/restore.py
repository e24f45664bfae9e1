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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import zstandard
from psycopg import sql

from . import tabledef
from .db import DEFAULT_SCHEMA
from .errors import ConflictError, RecoveryError
from .snapshot import (SETTINGS, Progress, SnapshotInfo, _first_line, _record_end,
                       _record_start)
from .tableinfo import Column, TableInfo
from .undo import EXAMPLES, ON_CONFLICT, _apply_all, _fk_order, _Run

_i = sql.Identifier


@dataclass
class RestoreTable:
    table: str
    saved: int
    restore: int = 0          # rows present now that get saved values back
    reinsert: int = 0         # rows gone that are inserted again
    delete: int = 0           # rows added since, inside the WHERE (--delete-new)
    already: int = 0          # rows equal to the snapshot already
    conflicts: int = 0        # rows that changed while the restore ran
    new_rows: int | None = None   # rows added since inside the WHERE; None: cannot tell
    missing: int = 0          # rows gone that a columns-only snapshot cannot re-insert
    updated: int = 0
    inserted: int = 0
    deleted: int = 0
    notes: list[str] = field(default_factory=list)
    conflict_examples: list[dict[str, Any]] = field(default_factory=list)


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
        hit = [i for i in items if want in (f"{i['schema']}.{i['table']}", i["table"])]
        if not hit:
            raise RecoveryError(
                f"snapshot {info.name} holds no table {want!r}: it holds "
                + ", ".join(f"{i['schema']}.{i['table']}" for i in items))
        out += [h for h in hit if h not in out]
    return out


def _current(conn: psycopg.Connection, item: dict[str, Any]) -> int | None:
    row = conn.execute("SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n"
                       " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s"
                       " AND c.relkind IN ('r', 'p')", [item["schema"], item["table"]]).fetchone()
    return int(row[0]) if row else None


def _prepare_table(conn: psycopg.Connection, item: dict[str, Any], res: RestoreTable
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
    with tabledef.catalog_path(conn):
        now = {c["name"]: c for c in tabledef.columns(conn, relid)}
    added = []
    for c in item["columns"]:
        cur = now.get(c["name"])
        if cur is None:
            coll = sql.SQL(" COLLATE {}").format(sql.SQL(c["collation"])) if c["collation"] \
                else sql.SQL("")
            with tabledef.catalog_path(conn):
                conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}{}").format(
                    _i(item["schema"], item["table"]), _i(c["name"]), sql.SQL(c["type"]), coll))
            added.append(c["name"])
            res.notes.append(f"added column {c['name']} back (at the end of the table)")
        elif cur["type"] != c["type"]:
            raise RecoveryError(
                f"column {c['name']} of {label} is {cur['type']} now, {c['type']} in the "
                f"snapshot: change it back first (ALTER TABLE {label} ALTER COLUMN "
                f"{c['name']} TYPE {c['type']} USING ...), then restore")
    return relid, recreated, added


def _table_info(conn: psycopg.Connection, n: int, relid: int, item: dict[str, Any]) -> TableInfo:
    rows = conn.execute(
        "SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '',"
        " a.attidentity = 'a', t.typcategory = 'A' OR EXISTS (SELECT 1 FROM pg_type b"
        "  WHERE b.oid = t.typbasetype AND b.typcategory = 'A'), n.nspname, c.relname"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        [relid]).fetchall()
    saved = {c["name"] for c in item["columns"]}
    cols = tuple(Column(attnum, name, typ, ((name, 0, typ),), False, bool(ident), bool(arr))
                 for attnum, name, typ, gen, ident, arr, _n, _c in rows
                 if name in saved and not gen)
    by_name = {c.name: c for c in cols}
    label = f"{item['schema']}.{item['table']}"
    missing = [k for k in item["key"] if k not in by_name]
    if missing:
        raise RecoveryError(f"key column {missing[0]} of the snapshot is not in {label} now")
    unique = conn.execute(
        "SELECT 1 FROM pg_index WHERE indrelid = %s AND indisunique AND indpred IS NULL"
        " AND indexprs IS NULL AND (SELECT array_agg(k ORDER BY k) FROM unnest(indkey::int2[]) k)"
        " = (SELECT array_agg(k ORDER BY k) FROM unnest(%s::int2[]) k)",
        [relid, [by_name[k].attnum for k in item["key"]]]).fetchone()
    if unique is None:
        raise RecoveryError(
            f"{label} has no unique index on the snapshot's key ({', '.join(item['key'])}) now: "
            "create one, then restore")
    return TableInfo(n, relid, rows[0][6], rows[0][7], cols,
                     tuple(by_name[k] for k in item["key"]), "")


def _load(conn: psycopg.Connection, info: SnapshotInfo, item: dict[str, Any],
          schema: str, progress: Progress | None) -> sql.Composable:
    """The relation holding the saved rows: the snapshot table, or a temp table loaded
    by COPY from the directory store (checked against the manifest on the way)."""
    if info.store == "db":
        return _i(schema, item["data"])
    name = f"_snapdata_{item['n']}"
    with tabledef.catalog_path(conn):
        conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(
            _i(name), sql.SQL(", ").join(sql.SQL("{} {}").format(_i(c["name"]), sql.SQL(c["type"]))
                                         for c in item["columns"])))
    path = Path(info.store) / info.name / item["data"]
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f, conn.cursor() as cur:
            with cur.copy(sql.SQL("COPY {} FROM STDIN").format(_i(name))) as cp:
                dctx = zstandard.ZstdDecompressor()

                class _Hashing:
                    def read(self, n: int = -1) -> bytes:
                        b = f.read(n)
                        digest.update(b)
                        return b

                with dctx.stream_reader(_Hashing()) as r:  # type: ignore[arg-type]
                    while chunk := r.read(1 << 20):
                        cp.write(chunk)
                        if progress:
                            progress(len(chunk))
                digest.update(f.read())
            loaded = cur.rowcount
    except FileNotFoundError:
        raise ConflictError(f"{path} is missing: the snapshot is damaged") from None
    except psycopg.errors.DataError:
        # Text that COPY rejects: a damaged file, unless the file is what was saved.
        from .snapshot import read_rows

        if read_rows(path)[0] != item["sha256"]:
            raise ConflictError(f"{path} does not match its manifest (sha256): the snapshot "
                                "is damaged; nothing was restored") from None
        raise
    except zstandard.ZstdError as exc:
        raise ConflictError(f"{path} cannot be decompressed ({exc}): the snapshot is damaged") \
            from None
    if digest.hexdigest() != item["sha256"] or loaded != item["rows"]:
        raise ConflictError(f"{path} does not match its manifest (sha256 or row count): the "
                            "snapshot is damaged; nothing was restored")
    conn.execute(sql.SQL("ANALYZE {}").format(_i(name)))
    return _i(name)


def _new_rows_where(item: dict[str, Any]) -> sql.Composable | None:
    """Condition over the table (alias cur) for rows inside the snapshot's WHERE, or
    None when the snapshot's rows were chosen by other tables (--for-sql joins)."""
    if not item.get("reevaluable"):
        return None
    return sql.SQL("({})").format(sql.SQL(item["where"])) if item["where"] else sql.SQL("true")


def _build_net(r: _Run, t: TableInfo, src: sql.Composable, item: dict[str, Any],
               res: RestoreTable, delete_new: bool) -> None:
    cols = t.writable
    kc = [_i(f"k{n}") for n in range(len(t.key))]
    match = sql.SQL(" AND ").join(sql.SQL("cur.{c} = s.{c}").format(c=_i(k.name)) for k in t.key)
    present = sql.SQL("cur.{} IS NOT NULL").format(_i(t.key[0].name))

    def per_col(tc: str, ec: str) -> sql.Composable:
        return sql.SQL(", ").join(sql.SQL(
            "true AS {m}, {tc}.{c} AS {tcn}, {ec}.{c} AS {ecn}, false AS {lost}, {tc}.{c} AS {base},"
            " {ec}.{c} AS {e}").format(
                c=_i(c.name), tc=sql.SQL(tc), ec=sql.SQL(ec), m=_i(f"m{n}"), tcn=_i(f"tc{n}"),
                ecn=_i(f"ec{n}"), lost=_i(f"lost{n}"), base=_i(f"base{n}"), e=_i(f"e{n}"))
            for n, c in enumerate(cols))

    keys_s = sql.SQL(", ").join(sql.SQL("s.{} AS {}").format(_i(k.name), k2)
                                for k, k2 in zip(t.key, kc))
    # A columns-only snapshot (DROP COLUMN, ALTER TYPE) cannot re-insert a row.
    only_present = sql.SQL("") if item["all_columns"] else sql.SQL(" WHERE {}").format(present)
    saved = sql.SQL(
        "SELECT CASE WHEN {present} THEN 'update' ELSE 'insert' END AS action, {keys},"
        " true AS t_present, {present} AS e_present, {cols} FROM {src} s"
        " LEFT JOIN {tbl} cur ON {match}{only}"
    ).format(present=present, keys=keys_s, cols=per_col("s", "cur"), src=src, tbl=t.ident,
             match=match, only=only_present)
    parts = [saved]
    new_where = _new_rows_where(item)
    if delete_new and new_where is not None:
        nulls = sql.SQL(", ").join(
            sql.SQL("true, NULL::{t}, cur.{c}, false, NULL::{t}, cur.{c}").format(
                t=sql.SQL(c.type_name), c=_i(c.name)) for c in cols)
        parts.append(sql.SQL(
            "SELECT 'delete', {keys}, false, true, {nulls} FROM {tbl} cur WHERE {w}"
            " AND NOT EXISTS (SELECT 1 FROM {src} s WHERE {match})"
        ).format(keys=sql.SQL(", ").join(sql.SQL("cur.{}").format(_i(k.name)) for k in t.key),
                 nulls=nulls, tbl=t.ident, w=new_where, src=src, match=match))
    net = _i(r.net_schema, r.net(t))
    r.run(sql.SQL(
        "CREATE TEMP TABLE {net} ON COMMIT DROP AS SELECT row_number() OVER (ORDER BY {kc}) AS bn,"
        " false AS done, 1::bigint AS n_changes, false AS lost_row, x.* FROM ({u}) x"
    ).format(net=net, kc=sql.SQL(", ").join(kc), u=sql.SQL(" UNION ALL ").join(parts)))
    r.conn.execute(sql.SQL("ANALYZE {}").format(net))
    if new_where is not None:
        row = r.conn.execute(sql.SQL(
            "SELECT count(*) FROM {tbl} cur WHERE {w} AND NOT EXISTS (SELECT 1 FROM {src} s"
            " WHERE {match})").format(tbl=t.ident, w=new_where, src=src, match=match)).fetchone()
        res.new_rows = int(row[0]) if row else 0
    if not item["all_columns"]:
        row = r.conn.execute(sql.SQL(
            "SELECT count(*) FROM {src} s WHERE NOT EXISTS (SELECT 1 FROM {tbl} cur WHERE {match})"
        ).format(src=src, tbl=t.ident, match=match)).fetchone()
        res.missing = int(row[0]) if row else 0
        if res.missing:
            res.notes.append(f"{res.missing} saved row(s) are gone and this snapshot holds only "
                             "some columns: not re-inserted")


def restore(
    conn: psycopg.Connection,
    info: SnapshotInfo,
    *,
    tables: Sequence[str] = (),
    dry_run: bool = False,
    delete_new: bool = False,
    on_conflict: str = "fail",
    fire_triggers: bool = False,
    lock_timeout: str = "5s",
    schema: str = DEFAULT_SCHEMA,
    progress: Progress | None = None,
) -> RestoreReport:
    """Put a snapshot's rows back into the database conn is connected to.

    Raises ConflictError (exit 2) when rows change while it runs (on_conflict
    "fail"), when a re-inserted row would collide with a row added since, or when a
    directory snapshot's file does not match its manifest; nothing changes then.
    """
    if on_conflict not in ON_CONFLICT:
        raise RecoveryError(f"--on-conflict {on_conflict!r}: use one of {', '.join(ON_CONFLICT)}")
    items = _pick(info, tables)
    if delete_new:
        blind = [f"{i['schema']}.{i['table']}" for i in items if not i.get("reevaluable")]
        if blind:
            raise RecoveryError(
                f"--delete-new needs rows chosen by the table's own columns; the rows of "
                f"{blind[0]} were chosen by the migration's SQL (--for-sql): restore without it")
    if info.store == "db":
        from .snapshot import _db_snapshots

        if info.name not in _db_snapshots(conn, schema):
            raise RecoveryError(f"snapshot {info.name} is in another database's store: restore "
                                "from a directory snapshot to reach another database")
    started = time.monotonic()
    op_id = None if dry_run else _record_start(
        conn, schema, "restore", {"snapshot": info.name, "store": info.store,
                                  "tables": list(tables), "delete_new": delete_new})
    conn.commit()
    tag = f"recovery-restore-{op_id}" if op_id is not None else "recovery-restore"
    r = _Run(conn, schema, op_id, "_restore_net", on_conflict, fire_triggers, lock_timeout,
             None, None, net_schema="pg_temp", tag=None if dry_run else tag)
    report = RestoreReport(op_id, info.name, info.store, "planned", dry_run, [],
                           None if dry_run else tag)
    try:
        r.begin_tx()
        for k, v in {**SETTINGS, "lc_monetary": info.manifest["settings"].get("lc_monetary")
                     }.items():
            if v:
                conn.execute("SELECT set_config(%s, %s, true)", [k, v])
        prepared = []
        for item in items:
            res = RestoreTable(f"{item['schema']}.{item['table']}", item["rows"])
            relid, recreated, added = _prepare_table(conn, item, res)
            t = _table_info(conn, item["n"], relid, item)
            prepared.append((item, t, res, recreated, added))
        r.tables = _fk_order(conn, [p[1] for p in prepared])
        by_id = {p[1].table_id: p for p in prepared}
        for t in r.tables:
            item, _t, res, _rec, _add = by_id[t.table_id]
            src = _load(conn, info, item, schema, progress)
            _build_net(r, t, src, item, res, delete_new)
        for t in r.tables:
            item, _t, res, _rec, _add = by_id[t.table_id]
            r.fill_batch(t, None, None)
            st = r.status(t, lock=not dry_run)
            res.restore, res.reinsert, res.delete = st.restore, st.reinsert, st.delete
            res.already, res.conflicts = st.already, st.conflicts
            res.conflict_examples = st.conflict_examples[:EXAMPLES]
            r.results[t.table_id] = st
            report.tables.append(res)
        if dry_run:
            conn.rollback()
            report.status = "dry-run"
            report.seconds = time.monotonic() - started
            return report
        if report.conflicts and on_conflict == "fail":
            raise ConflictError(
                f"{report.conflicts} row(s) changed while the restore was planned: nothing was "
                "restored; retry, or use --on-conflict skip or overwrite", report)
        try:
            _apply_all(r, None)  # type: ignore[arg-type]
        except (psycopg.errors.UniqueViolation, psycopg.errors.ForeignKeyViolation,
                psycopg.errors.ExclusionViolation) as exc:
            raise ConflictError(
                f"restore refused, nothing was restored: {_first_line(exc)} (a row added or "
                "changed since the snapshot holds that value; see `recovery restore --dry-run`)",
                report) from None
        for t in r.tables:
            item, _t, res, recreated, added = by_id[t.table_id]
            st = r.results[t.table_id]
            res.inserted, res.updated, res.deleted = st.inserted, st.updated, st.deleted
            res.notes += _finish_columns(conn, item, added)
            if recreated:
                res.notes += tabledef.after_load(conn, item["definition"])
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        report.status = "done"
        report.seconds = time.monotonic() - started
        _record_end(conn, schema, op_id, "done", report.to_dict(), None, started)
        if op_id is not None:
            conn.execute(sql.SQL("UPDATE {}.operations SET tag = %s WHERE op_id = %s").format(
                _i(schema)), [tag, op_id])
        conn.commit()
        return report
    except psycopg.errors.LockNotAvailable:
        conn.rollback()
        _fail(conn, schema, op_id, report, "lock timeout", started)
        raise RecoveryError(
            f"rows or tables to restore are locked by another transaction beyond lock_timeout "
            f"{lock_timeout}: nothing was restored; retry, or raise --lock-timeout") from None
    except (psycopg.errors.ForeignKeyViolation, psycopg.errors.UniqueViolation) as exc:
        conn.rollback()
        _fail(conn, schema, op_id, report, _first_line(exc), started)
        raise ConflictError(f"restore refused, nothing was restored: {_first_line(exc)}",
                            report) from None
    except BaseException as exc:
        conn.rollback()
        _fail(conn, schema, op_id, report, _first_line(exc), started)
        raise


def _fail(conn: psycopg.Connection, schema: str, op_id: int | None, report: RestoreReport,
          error: str, started: float) -> None:
    if op_id is None:
        return
    report.status = "failed"
    _record_end(conn, schema, op_id, "failed", report.to_dict(), error, started)
    conn.commit()


def _finish_columns(conn: psycopg.Connection, item: dict[str, Any], added: list[str]) -> list[str]:
    """Give columns added back their NOT NULL and default, where the rows allow."""
    notes = []
    ident = _i(item["schema"], item["table"])
    for c in item["columns"]:
        if c["name"] not in added:
            continue
        if c["default"]:
            with tabledef.catalog_path(conn):
                conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT {}").format(
                    ident, _i(c["name"]), sql.SQL(c["default"])))
        if c["not_null"]:
            nulls = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NULL)")
                                 .format(ident, _i(c["name"]))).fetchone()
            if nulls and not nulls[0]:
                conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(
                    ident, _i(c["name"])))
            else:
                notes.append(f"column {c['name']} was NOT NULL; rows added since the snapshot "
                             "have no value in it, so it is left nullable")
    return notes
