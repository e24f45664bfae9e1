"""Snapshots: save chosen rows before a risky change, list, verify and drop them.

Two stores, one manifest format:

- the database store (default): per saved table a copy `_recovery.snap_<id>_<n>`
  made with CREATE TABLE AS, and the manifest in `_recovery.snapshots`; written in
  one transaction, so a killed snapshot leaves nothing;
- a directory store (`DIR/NAME/`): per table a zstd-compressed COPY text file and
  `manifest.json`; written under a hidden temporary name, fsynced, then renamed, so a
  half-written snapshot never lists.  It survives the database and restores into
  another one.

Rows are read in one REPEATABLE READ transaction (all tables from the same moment)
with fixed output settings (ISO dates, exact floats, UTF8, UTC), recorded in the
manifest and set again to restore: COPY's text form round-trips every type exactly.
`restore.py` puts rows back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import zstandard
from psycopg import sql

from .. import operations
from ..capture.triggers import key_attnums
from ..db import DEFAULT_SCHEMA, resolve_table
from ..errors import ConflictError, RecoveryError, first_line
from ..schema import installed_version, require_schema
from . import tabledef

FORMAT = 1
DEFAULT_DIR = "./snapshots"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Output settings of the saved text (restore sets the same before COPY FROM).
SETTINGS = {
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "client_encoding": "UTF8",
    "TimeZone": "UTC",
    "bytea_output": "hex",
}
ZSTD_LEVEL = 3
# Checksum of a row x: "record" by the column types' hash functions, "text" by its text.
# Schema-qualified, with exact argument types: no look-alike function can be chosen.
CHECKSUM_EXPRS = {
    "record": "pg_catalog.hash_record_extended(x, 0::int8)",
    "text": "pg_catalog.hashtextextended(x::text, 0::int8)",
}
Progress = Callable[[int], None]


@dataclass
class Part:
    """Rows of one table at risk: a WHERE over the table as a statement named it."""

    from_sql: str | None
    where: str | None
    reason: str
    bounded: bool = True


@dataclass
class Spec:
    """What to save of one table (relid), before it is resolved into a manifest item."""

    relid: int
    parts: list[Part] = field(default_factory=list)
    columns: tuple[str, ...] | None = None  # None: whole rows
    where: str | None = None  # the user's --where (restore can re-evaluate it)


@dataclass
class SnapshotInfo:
    name: str
    store: str
    created_at: str
    created_by: str
    tables: list[dict[str, Any]]
    rows: int
    bytes: int
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("manifest")
        return d


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise RecoveryError(
            f"invalid snapshot name {name!r}: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit), at most 100"
        )
    return name


def check_where(where: str) -> str:
    """A --where must be one boolean expression (PostgreSQL's own parser decides)."""
    import pglast

    try:
        stmts = pglast.parse_sql(f"SELECT 1 WHERE ({where})")  # noqa: S608 (parsed, not run)
    except pglast.parser.ParseError as exc:
        raise RecoveryError(f"--where {where!r} does not parse: {exc.args[0]}") from None
    if len(stmts) != 1:
        raise RecoveryError(f"--where {where!r} must be one boolean expression")
    return where


def _set_output(conn: psycopg.Connection) -> None:
    for k, v in SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, true)", [k, v])


def _select(
    conn: psycopg.Connection, spec: Spec, cols: Sequence[str], stored: dict[str, str] | None = None
) -> sql.Composable:
    """SELECT of the saved rows and columns of a table; a column in `stored` is cast to
    its storage type (the text form of a non-built-in type, under the output settings)."""
    row = conn.execute(
        "SELECT n.nspname, c.relname, c.relkind = 'r' FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        [spec.relid],
    ).fetchone()
    assert row is not None
    # ONLY: rows of plain inheritance children belong to those tables, and restoring
    # them through the parent would put them in the wrong table.  (A partitioned
    # table's rows are all in its partitions: no ONLY there.)
    tbl = sql.SQL("{}{}").format(
        sql.SQL("ONLY ") if row[2] else sql.SQL(""), sql.Identifier(row[0], row[1])
    )
    stored = stored or {}
    names = sql.SQL(", ").join(
        sql.SQL("(x.{c})::{t} AS {c}").format(c=sql.Identifier(c), t=sql.SQL(stored[c]))
        if c in stored
        else sql.SQL("x.{}").format(sql.Identifier(c))
        for c in cols
    )
    if spec.where is not None:
        return sql.SQL("SELECT {} FROM {} x WHERE ({})").format(names, tbl, sql.SQL(spec.where))
    if not spec.parts or any(p.where is None for p in spec.parts):
        return sql.SQL("SELECT {} FROM {} x").format(names, tbl)
    # Several statements' WHEREs, each over the table as that statement named it
    # (with its alias): the union of the rows, by physical row identity.
    subs = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT tableoid, ctid FROM {} WHERE ({})").format(
            sql.SQL(p.from_sql or ""), sql.SQL(p.where or "true")
        )
        for p in spec.parts
    )
    return sql.SQL("SELECT {} FROM {} x WHERE (x.tableoid, x.ctid) IN ({})").format(
        names, tbl, subs
    )


def _item(
    conn: psycopg.Connection, n: int, spec: Spec, key: Sequence[str] | None
) -> tuple[dict[str, Any], list[str]]:
    """The manifest entry of a table (without data facts) and the columns to save."""
    d = tabledef.describe(conn, spec.relid)
    label = f"{d['schema']}.{d['table']}"
    attnums, source = key_attnums(conn, spec.relid, label, key)
    by_num = {c["attnum"]: c["name"] for c in d["columns"]}
    key_cols = [by_num[a] for a in attnums]
    if spec.columns is None:
        cols = [c["name"] for c in d["columns"]]
    else:
        missing = [c for c in spec.columns if c not in by_num.values()]
        if missing:
            raise RecoveryError(f"column {missing[0]!r} not found in table {label}")
        cols = [
            c["name"] for c in d["columns"] if c["name"] in key_cols or c["name"] in spec.columns
        ]
    needs = _type_needs(conn, spec.relid, d.get("types", []))
    item = {
        "n": n,
        "schema": d["schema"],
        "table": d["table"],
        "key": key_cols,
        "key_source": source,
        "all_columns": spec.columns is None,
        "columns": [
            {**c, "requires": needs[c["name"]]} if c["name"] in needs else c
            for c in d["columns"]
            if c["name"] in cols
        ],
        "where": spec.where,
        "parts": [asdict(p) for p in spec.parts],
        # Restore can count (and with --delete-new remove) rows added since the
        # snapshot only when the rows were chosen by the table's own columns.
        "reevaluable": spec.where is not None
        or not spec.parts
        or any(p.where is None for p in spec.parts),
        "definition": d,
    }
    return item, cols


# Per column of a non-built-in type, the types it is made of (through arrays, domains,
# composites' attributes and ranges' subtypes), the deepest first: what a restore needs
# to exist again, and how to make it.  (An array comes with its element type, a
# multirange with its range: they are followed, not listed.)
_TYPE_NEEDS = """
WITH RECURSIVE r(col, t, depth) AS (
    SELECT a.attname::text, a.atttypid, 0 FROM pg_attribute a
    WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped AND a.atttypid >= 16384
    UNION ALL
    SELECT r.col, s.x, r.depth + 1 FROM r JOIN pg_type pt ON pt.oid = r.t
    CROSS JOIN LATERAL (
        SELECT pt.typelem WHERE pt.typcategory = 'A' AND pt.typelem <> 0
        UNION ALL SELECT pt.typbasetype WHERE pt.typtype = 'd'
        UNION ALL SELECT a.atttypid FROM pg_attribute a WHERE pt.typtype = 'c'
            AND a.attrelid = pt.typrelid AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL SELECT g.rngsubtype FROM pg_range g WHERE g.rngtypid = pt.oid{multi}
    ) s(x)
    WHERE r.depth < 20 AND s.x >= 16384
)
SELECT r.col, format_type(t.oid, NULL), e.extname, en.nspname,
       CASE WHEN t.typtype = 'e' THEN array(SELECT l.enumlabel::text FROM pg_enum l
            WHERE l.enumtypid = t.oid ORDER BY l.enumsortorder) END
FROM r JOIN pg_type t ON t.oid = r.t
LEFT JOIN pg_depend d ON d.classid = 'pg_type'::regclass AND d.objid = t.oid
    AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
LEFT JOIN pg_extension e ON e.oid = d.refobjid
LEFT JOIN pg_namespace en ON en.oid = e.extnamespace
WHERE NOT (t.typcategory = 'A' AND t.typelem <> 0) AND t.typtype <> 'm'
GROUP BY r.col, t.oid, t.typtype, e.extname, en.nspname
ORDER BY r.col, max(r.depth) DESC, 2
"""
_MULTIRANGE = """
        UNION ALL SELECT g.rngtypid FROM pg_range g WHERE g.rngmultitypid = pt.oid"""


def _type_needs(
    conn: psycopg.Connection, relid: int, types: Sequence[dict[str, str]]
) -> dict[str, list[dict[str, Any]]]:
    """Per column of a non-built-in type, the types a restore needs, dependencies first:
    each with the statement that creates it (an enum's with its labels), or the
    extension it comes from."""
    creates = {t["name"]: t["create"] for t in types}
    out: dict[str, list[dict[str, Any]]] = {}
    with tabledef.catalog_path(conn):
        multi = sql.SQL(_MULTIRANGE if conn.info.server_version >= 140000 else "")
        found = conn.execute(sql.SQL(_TYPE_NEEDS).format(multi=multi), [relid]).fetchall()
    for col, name, ext, ext_schema, labels in found:
        need: dict[str, Any] = {"type": name}
        if ext:
            need.update(
                extension=ext,
                create=sql.SQL("CREATE EXTENSION {} SCHEMA {}")
                .format(sql.Identifier(ext), sql.Identifier(ext_schema))
                .as_string(conn),
            )
        elif name in creates:
            need["create"] = creates[name]
        if labels is not None:
            need["labels"] = labels
        out.setdefault(col, []).append(need)
    return out


def create(
    conn: psycopg.Connection,
    name: str,
    specs: Sequence[Spec],
    *,
    store: str | None = None,
    key: Sequence[str] | None = None,
    source: dict[str, Any] | None = None,
    schema: str = DEFAULT_SCHEMA,
    progress: Progress | None = None,
) -> SnapshotInfo:
    """Save the rows of each spec into the database store (store None or "db") or a directory.

    Everything is read in one REPEATABLE READ transaction.  Nothing is left behind
    on failure: the database store writes in that transaction, the directory store
    under a hidden temporary directory that is removed (or, if the process dies,
    never lists).

    It commits as it goes (the operation's record, then the snapshot in a transaction
    of its own, whose rows a second session may read): refused inside an open
    transaction (RecoveryError).  save_in_transaction() saves inside one.
    """
    check_name(name)
    if not specs:
        raise RecoveryError("nothing to save: name a table with --table, or a file with --for-sql")
    operations.refuse_in_transaction(
        conn,
        "snapshot create",
        "the operation's record, then a REPEATABLE READ transaction "
        "of its own; save_in_transaction() saves inside yours",
    )
    in_db = store in (None, "db")
    # Bad input (a snapshot that exists, a table without a key, a --key or column that
    # is not there) is refused before the operation is recorded: exit 1 leaves no
    # trace, as elsewhere.
    with conn.transaction():
        if in_db:
            require_schema(conn, schema)
            exists = conn.execute(
                sql.SQL("SELECT 1 FROM {}.snapshots WHERE name = %s").format(
                    sql.Identifier(schema)
                ),
                [name],
            ).fetchone()
            if exists:
                raise RecoveryError(
                    f"snapshot {name} exists already: drop it or choose another name"
                )
        else:
            base = _store_dir(store, create=True)
            if (base / name).exists():
                raise RecoveryError(
                    f"snapshot {name} exists already in {base}: drop it or choose another name"
                )
        for spec in specs:
            _item(conn, 0, spec, key)
    started = time.monotonic()
    with conn.transaction():
        op_id = record_start(conn, schema, "snapshot", {"name": name, "store": store or "db"})
    tmp: Path | None = None
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            manifest = _manifest_head(conn, name, source)
            items = []
            for n, spec in enumerate(specs, 1):
                items.append(_item(conn, n, spec, key))
            _set_output(conn)
            if in_db:
                _save_db(conn, name, specs, items, manifest, schema, progress, concurrent=True)
                where = "db"
            else:
                base = _store_dir(store)
                tmp = base / f".{name}.tmp-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                for (item, cols), spec in zip(items, specs):
                    fname = (
                        f"{item['n']:04d}-{_safe(item['schema'])}.{_safe(item['table'])}.copy.zst"
                    )
                    rows, size, digest = _copy_out(
                        conn, _select(conn, spec, cols), tmp / fname, progress
                    )
                    item.update(data=fname, rows=rows, bytes=size, sha256=digest)
                    manifest["items"].append(item)
                _write_durably(tmp / "manifest.json", json.dumps(manifest, indent=2).encode())
                _fsync_dir(tmp)
                os.rename(tmp, base / name)
                tmp = None
                _fsync_dir(base)
                where = str(base)
            info = _info(manifest, where)
            record_end(conn, schema, op_id, "done", info.to_dict(), None, started)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if op_id is not None:
            with conn.transaction():
                record_end(conn, schema, op_id, "failed", None, first_line(exc), started)
            operations.release(conn, op_id)
        raise
    operations.release(conn, op_id)
    return info


def _manifest_head(
    conn: psycopg.Connection, name: str, source: dict[str, Any] | None
) -> dict[str, Any]:
    head = conn.execute(
        "SELECT now()::text, session_user, current_database(),"
        " current_setting('server_version'), current_setting('lc_monetary')"
    ).fetchone()
    assert head is not None
    return {
        "format": FORMAT,
        "name": name,
        "created_at": head[0],
        "created_by": head[1],
        "database": head[2],
        "server_version": head[3],
        "settings": {**SETTINGS, "lc_monetary": head[4]},
        "source": source or {},
        "items": [],
    }


class _SideChecksum:
    """The checksum of a whole table's rows, computed by a second session while the
    first copies them (CREATE TABLE AS uses one core; this uses another).

    The second session imports the first one's snapshot (pg_export_snapshot), so it
    reads exactly the rows being copied, with the same output settings, and computes
    what _db_checksum computes over the copy (same types, same hash), which `verify`
    recomputes later.  Only for a whole table whose rows the first session has not
    written (a snapshot in its own transaction), and only when big enough to pay for
    a connection; anything unexpected (no second connection allowed, an error) falls
    back to reading the copy, so this changes the time taken, never the result.
    """

    MIN_PAGES = 2000  # about 16 MB: below that, a second read of the copy is cheap

    def __init__(self, side: psycopg.Connection, query: sql.Composable) -> None:
        self.query = query
        self.out: tuple[int, str, str] | None = None
        self.side = side
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @classmethod
    def start(
        cls, conn: psycopg.Connection, spec: Spec, query: sql.Composable
    ) -> _SideChecksum | None:
        if spec.where is not None or (spec.parts and not all(p.where is None for p in spec.parts)):
            return None  # a WHERE may call now() or random(): read the copy instead
        facts = conn.execute(
            "SELECT coalesce(sum(c.relpages), 0), coalesce(bool_or(c.relrowsecurity), false),"
            " current_user = session_user, (SELECT format('%%I.%%I', n.nspname, t.relname)"
            "  FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace WHERE t.oid = %s)"
            " FROM pg_class c WHERE c.oid = %s"
            " OR c.oid IN (SELECT relid FROM pg_partition_tree(%s))",
            [spec.relid, spec.relid, spec.relid],
        ).fetchone()
        # Another role (SET ROLE) or row security could let a second session see other
        # rows: then read the copy.
        if not facts or facts[0] < cls.MIN_PAGES or facts[1] or not facts[2]:
            return None
        # The copy's lock first: a DDL queued on the table then waits for this session,
        # and the second session, which asks for the same lock with a short
        # lock_timeout, gives up (the copy is read instead) rather than waiting behind
        # that DDL while this session waits for it.
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.SQL(facts[3])))
        # (Not in a savepoint: a snapshot cannot be exported from a subtransaction.)
        snap_id = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        side = None
        try:
            kwargs = {"password": conn.info.password} if conn.info.password else {}
            side = psycopg.connect(conn.info.dsn, **kwargs)  # type: ignore[arg-type]
            side.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            side.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snap_id)))
            _set_output(side)
            # One core for each session: no parallel workers competing with the copy.
            side.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            side.execute("SET LOCAL lock_timeout = '500ms'")
            return cls(side, query)
        except BaseException as exc:
            if side is not None:
                side.close()
            if isinstance(exc, psycopg.Error):
                return None
            raise

    def _run(self) -> None:
        exprs = CHECKSUM_EXPRS
        try:
            for m in ("record", "text"):
                try:
                    with self.side.transaction():
                        row = self.side.execute(
                            sql.SQL(
                                "SELECT count(*), coalesce(sum({}), 0)::text FROM ({}) x"
                            ).format(sql.SQL(exprs[m]), self.query)
                        ).fetchone()
                except (psycopg.errors.UndefinedFunction, psycopg.errors.FeatureNotSupported):
                    continue
                if row is not None:
                    self.out = (int(row[0]), str(row[1]), m)
                return
        except psycopg.Error:
            self.out = None

    def result(self) -> tuple[int, str, str] | None:
        """Wait for the checksum (None if it could not be had); close the session."""
        try:
            self.thread.join()
        except BaseException:  # interrupted while waiting: stop the server's scan too
            self.side.cancel()
            raise
        finally:
            if not self.thread.is_alive():
                self.side.close()
        return self.out


def _save_db(
    conn: psycopg.Connection,
    name: str,
    specs: Sequence[Spec],
    items: list[tuple[dict[str, Any], list[str]]],
    manifest: dict[str, Any],
    schema: str,
    progress: Progress | None,
    concurrent: bool = False,
) -> None:
    """Write a database-store snapshot in the caller's transaction.

    concurrent: the transaction has written none of the saved rows and is REPEATABLE
    READ (so a second session can import its snapshot): checksums may be computed
    by a second session while the rows are copied (_SideChecksum)."""
    snap_id = conn.execute(
        sql.SQL(
            "INSERT INTO {}.snapshots (name, manifest) VALUES (%s, '{{}}') RETURNING snap_id"
        ).format(sql.Identifier(schema)),
        [name],
    ).fetchone()[0]  # type: ignore[index]
    for (item, cols), spec in zip(items, specs):
        data = f"snap_{snap_id}_{item['n']}"
        # A column of a type that is not built in is saved in its storage type (the
        # text form, or a domain's built-in base type), so that no snapshot table
        # depends on an application's type: the migration that drops the type (or
        # the extension) runs, and DROP ... CASCADE cannot take the saved values.
        stored = _storage_types(conn, schema, spec.relid, cols)
        item["columns"] = [
            {**c, "stored": stored[c["name"]]} if c["name"] in stored else c
            for c in item["columns"]
        ]
        select = _select(conn, spec, cols, stored)
        side = _SideChecksum.start(conn, spec, select) if concurrent else None
        try:
            cur = conn.execute(
                sql.SQL("CREATE TABLE {} AS {}").format(sql.Identifier(schema, data), select)
            )
        except BaseException:
            if side:
                side.side.cancel()  # do not read on for a copy that failed
                side.result()
            raise
        got = side.result() if side else None
        if got is not None and got[0] == cur.rowcount:
            rows, checksum, method = got
        else:
            rows, checksum, method = _db_checksum(conn, schema, data)
        item.update(
            data=data,
            rows=rows,
            checksum=checksum,
            checksum_method=method,
            bytes=_relsize(conn, schema, data),
        )
        manifest["items"].append(item)
        if progress:
            progress(item["bytes"])
    conn.execute(
        sql.SQL("UPDATE {}.snapshots SET manifest = %s WHERE snap_id = %s").format(
            sql.Identifier(schema)
        ),
        [json.dumps(manifest), snap_id],
    )


def _storage_types(
    conn: psycopg.Connection, schema: str, relid: int, cols: Sequence[str]
) -> dict[str, str]:
    """The saved columns whose type is not built in, and the built-in type each is
    stored in: the journal's storage type (text, or a domain's built-in base type)."""
    found = conn.execute(
        sql.SQL(
            "SELECT a.attname::text, {}.storage_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped"
            " AND a.atttypid >= 16384"
        ).format(sql.Identifier(schema)),
        [relid],
    ).fetchall()
    return {name: typ for name, typ in found if name in cols}


def save_in_transaction(
    conn: psycopg.Connection,
    name: str,
    specs: Sequence[Spec],
    *,
    source: dict[str, Any] | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> SnapshotInfo:
    """Save into the database store inside the caller's open transaction (no commit): in
    a savepoint of it (with none open, in a transaction of its own).

    For hooks that snapshot just before a statement of a migration runs, in the
    migration's own transaction: the snapshot commits with the migration, or goes
    with it when it rolls back (then nothing was destroyed).  The output settings
    are changed for this transaction only while saving, then put back (on failure,
    the savepoint's rollback puts them back).
    """
    check_name(name)
    with conn.transaction():
        require_schema(conn, schema)
        items = [_item(conn, n, spec, None) for n, spec in enumerate(specs, 1)]
        manifest = _manifest_head(conn, name, source)
        saved = {
            k: conn.execute("SELECT current_setting(%s)", [k]).fetchone()[0]  # type: ignore[index]
            for k in SETTINGS
        }
        _set_output(conn)
        _save_db(conn, name, specs, items, manifest, schema, None)
        for k, v in saved.items():
            # Local: a value the migration SET LOCAL stays local, a session one is unchanged.
            conn.execute("SELECT set_config(%s, %s, true)", [k, v])
    return _info(manifest, "db")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60]


def _relsize(conn: psycopg.Connection, schema: str, table: str) -> int:
    row = conn.execute(
        "SELECT pg_total_relation_size(%s::regclass)",
        [sql.Identifier(schema, table).as_string(conn)],
    ).fetchone()
    return int(row[0]) if row else 0


def _db_checksum(
    conn: psycopg.Connection, schema: str, table: str, method: str | None = None
) -> tuple[int, str, str]:
    """Row count, an order-independent checksum of a snapshot table's rows, and its method.

    The sum of a 64-bit hash of each row: any changed, lost or added row changes it
    (but for a 2^-64 chance).  "record": the column types' own hash functions
    (hash_record_extended, PostgreSQL 14+), about twice as fast as "text": a hash of
    each row's text, for tables with a type that has no hash function (json, xml,
    point...).  The record hash follows each type's equality, so it does not see a
    change between equal values (numeric 1.0 and 1.00); the text hash does.
    """
    exprs = CHECKSUM_EXPRS
    for m in [method] if method else ["record", "text"]:
        # sum(bigint) adds in 128-bit integers: the same value as a numeric sum (so
        # checksums recorded by earlier versions still verify), without a numeric
        # conversion per row.
        query = sql.SQL("SELECT count(*), coalesce(sum({}), 0)::text FROM {} x").format(
            sql.SQL(exprs[m]), sql.Identifier(schema, table)
        )
        try:
            with conn.transaction():
                row = conn.execute(query).fetchone()
        except (psycopg.errors.UndefinedFunction, psycopg.errors.FeatureNotSupported):
            if method:
                raise
            continue
        assert row is not None
        return int(row[0]), str(row[1]), m
    raise AssertionError("unreachable: the text hash works for every type")


def _copy_out(
    conn: psycopg.Connection, query: sql.Composable, path: Path, progress: Progress | None
) -> tuple[int, int, str]:
    """COPY the query's rows to a zstd file; return (rows, file bytes, sha256)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "wb") as raw:

        class _Tee:
            def write(self, b: bytes) -> int:
                nonlocal size
                digest.update(b)
                size += len(b)
                return raw.write(b)

        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        with cctx.stream_writer(_Tee(), closefd=False) as z, conn.cursor() as cur:  # type: ignore[arg-type]
            # The server sends a message per row: gather them into blocks, so the
            # compressor and the progress bar are called per MB, not per row.
            buf = bytearray()
            with cur.copy(sql.SQL("COPY ({}) TO STDOUT").format(query)) as cp:
                for chunk in cp:
                    buf += chunk
                    if len(buf) >= 1 << 20:
                        z.write(buf)
                        if progress:
                            progress(len(buf))
                        buf.clear()
            z.write(buf)
            if progress:
                progress(len(buf))
            rows = cur.rowcount
        raw.flush()
        os.fsync(raw.fileno())
    return rows, size, digest.hexdigest()


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _store_dir(store: str | None, create: bool = False) -> Path:
    base = Path(store or DEFAULT_DIR)
    if create:
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecoveryError(
                f"snapshot store {base} cannot be created: {exc.strerror}"
            ) from None
    if not base.is_dir():
        raise RecoveryError(f"snapshot store {base} is not a directory")
    if create:
        try:  # a real write: permissions, read-only mounts and ACLs all show up
            with tempfile.TemporaryFile(dir=base):
                pass
        except OSError:
            raise RecoveryError(
                f"snapshot store {base} is not writable: choose another --store"
            ) from None
    return base


def _info(manifest: dict[str, Any], store: str) -> SnapshotInfo:
    items = manifest.get("items", [])
    return SnapshotInfo(
        manifest["name"],
        store,
        manifest["created_at"],
        manifest["created_by"],
        [
            {
                "table": f"{i['schema']}.{i['table']}",
                "rows": i["rows"],
                "bytes": i["bytes"],
                "columns": None if i["all_columns"] else [c["name"] for c in i["columns"]],
                "where": i["where"],
                "parts": len(i.get("parts", [])),
            }
            for i in items
        ],
        sum(i["rows"] for i in items),
        sum(i["bytes"] for i in items),
        manifest,
    )


def _check_format(manifest: dict[str, Any], where: str) -> dict[str, Any]:
    fmt = manifest.get("format")
    if not isinstance(fmt, int):
        raise RecoveryError(f"{where}: not a snapshot manifest (no format number)")
    if fmt > FORMAT:
        raise RecoveryError(
            f"{where}: manifest format {fmt} is newer than this tool reads ({FORMAT}): "
            "upgrade the recovery package"
        )
    return manifest


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConflictError(f"{path}: manifest unreadable ({exc})") from None
    if not isinstance(doc, dict):
        raise ConflictError(f"{path}: manifest unreadable (not a JSON object)")
    return _check_format(doc, str(path))


# -- finding snapshots -------------------------------------------------------------
def db_snapshots(conn: psycopg.Connection, schema: str) -> dict[str, dict[str, Any]]:
    with conn.transaction():
        if installed_version(conn, schema) is None:
            return {}
        require_schema(conn, schema)
        rows = conn.execute(
            sql.SQL("SELECT name, manifest FROM {}.snapshots ORDER BY snap_id").format(
                sql.Identifier(schema)
            )
        ).fetchall()
    return {n: m for n, m in rows}


def list_snapshots(
    conn: psycopg.Connection | None,
    *,
    store: str | None = None,
    schema: str = DEFAULT_SCHEMA,
    problems: list[str] | None = None,
) -> list[SnapshotInfo]:
    """Complete snapshots: in the database (store None or "db") or in a directory.

    A directory whose manifest cannot be read (damaged, or from a newer version) is
    left out of the list and named in `problems`, rather than hiding the others.
    """
    if store in (None, "db"):
        if conn is None:
            raise RecoveryError("no database given: pass --db, or --store DIR for a directory")
        return [_info(m, "db") for m in db_snapshots(conn, schema).values()]
    if store == DEFAULT_DIR and not Path(store).exists():
        return []  # nothing saved in the default store yet
    base = _store_dir(store)
    out = []
    for d in sorted(base.iterdir()):
        m = re.fullmatch(r"\.(.+)\.tmp-(\d+)", d.name)
        if m and d.is_dir() and problems is not None:
            # Hidden, never listed or restorable; said, so that the space is not lost
            # silently.  (Not removed here: the create may still be running.)
            problems.append(
                f"{d.name}: incomplete snapshot {m.group(1)}, being written by process "
                f"{m.group(2)} or left by a create that did not finish; once no create is "
                f"running, delete {d}"
            )
        if d.name.startswith(".") or not (d / "manifest.json").is_file():
            continue  # a snapshot being written (or killed while written) is hidden
        try:
            out.append(_info(_read_manifest(d / "manifest.json"), str(base)))
        except (RecoveryError, KeyError, TypeError) as exc:
            if problems is None:
                raise
            problems.append(f"{d.name}: {exc}")
    return out


def find(
    conn: psycopg.Connection | None,
    name: str,
    *,
    store: str | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> SnapshotInfo:
    """The snapshot called name: in the given store; else the database, then ./snapshots."""
    check_name(name)  # also keeps a name like ../x inside the store
    if store not in (None, "db"):
        path = _store_dir(store) / name
        if not (path / "manifest.json").is_file():
            raise RecoveryError(
                f"no snapshot {name} in {store}: `recovery snapshot list "
                f"--store {store}` lists them"
            )
        return _info(_read_manifest(path / "manifest.json"), str(_store_dir(store)))
    if conn is not None:
        found = db_snapshots(conn, schema).get(name)
        if found is not None:
            return _info(_check_format(found, f"snapshot {name}"), "db")
    if store is None and (Path(DEFAULT_DIR) / name / "manifest.json").is_file():
        return _info(_read_manifest(Path(DEFAULT_DIR) / name / "manifest.json"), DEFAULT_DIR)
    raise RecoveryError(
        f"no snapshot {name}: `recovery snapshot list` lists them "
        "(add --store DIR for a directory store)"
    )


# -- verify and drop ---------------------------------------------------------------
@dataclass
class VerifyResult:
    name: str
    store: str
    ok: bool
    items: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_data(path: Path, digest: Any) -> Iterator[bytes]:
    """The decompressed COPY text of a data file, in blocks of up to 1 MB, while every
    byte of the file (anything after the compressed frame too) goes into `digest`."""
    with open(path, "rb") as f:

        class _Hashing:
            def read(self, n: int = -1) -> bytes:
                b = f.read(n)
                digest.update(b)
                return b

        with zstandard.ZstdDecompressor().stream_reader(_Hashing()) as r:  # type: ignore[arg-type]
            while chunk := r.read(1 << 20):
                yield chunk
        digest.update(f.read())


def read_rows(path: Path) -> tuple[str, int]:
    """sha256 of a data file and the number of rows it holds (decompressed)."""
    digest = hashlib.sha256()
    rows = sum(chunk.count(b"\n") for chunk in read_data(path, digest))
    return digest.hexdigest(), rows


def verify(
    conn: psycopg.Connection | None, info: SnapshotInfo, schema: str = DEFAULT_SCHEMA
) -> VerifyResult:
    """Re-read every saved table; raise ConflictError (exit 2) naming what is damaged."""
    results = []
    bad = []
    for item in info.manifest["items"]:
        label = f"{item['schema']}.{item['table']}"
        if info.store == "db":
            assert conn is not None
            # Rolled back: the output settings go with it (a caller's transaction,
            # when one is open, keeps its own).
            with conn.transaction() as tx:
                _set_output(conn)
                try:
                    rows, check, _m = _db_checksum(
                        conn, schema, item["data"], item.get("checksum_method", "text")
                    )
                    problem = None
                    if rows != item["rows"]:
                        problem = f"{rows} rows, the manifest says {item['rows']}"
                    elif check != item["checksum"]:
                        problem = "checksum differs from the one recorded at creation"
                except psycopg.errors.UndefinedTable:
                    problem = "data table is missing"
                raise psycopg.Rollback(tx)
            where = f"{schema}.{item['data']}"
        else:
            path = Path(info.store) / info.name / item["data"]
            where = str(path)
            try:
                digest, rows = read_rows(path)
                problem = None
                if digest != item["sha256"]:
                    problem = "sha256 differs from the manifest's"
                elif rows != item["rows"]:
                    problem = f"{rows} rows, the manifest says {item['rows']}"
            except FileNotFoundError:
                problem = "file is missing"
            except zstandard.ZstdError as exc:
                problem = f"cannot be decompressed ({exc})"
        results.append(
            {
                "table": label,
                "data": where,
                "rows": item["rows"],
                "ok": problem is None,
                "problem": problem,
            }
        )
        if problem:
            bad.append(f"{where} ({label}): {problem}")
    res = VerifyResult(info.name, info.store, not bad, results)
    if bad:
        raise ConflictError(f"snapshot {info.name} is damaged: " + "; ".join(bad), res)
    return res


def drop(conn: psycopg.Connection | None, info: SnapshotInfo, schema: str = DEFAULT_SCHEMA) -> None:
    """Remove a snapshot and its data (a database one in a transaction of its own, or a
    savepoint of the caller's)."""
    if info.store == "db":
        assert conn is not None
        with conn.transaction():
            for item in info.manifest["items"]:
                conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, item["data"]))
                )
            conn.execute(
                sql.SQL("DELETE FROM {}.snapshots WHERE name = %s").format(sql.Identifier(schema)),
                [info.name],
            )
        return
    path = Path(info.store) / info.name
    # Hide it first (a rename is atomic), then delete: never a half-deleted snapshot.
    hidden = Path(info.store) / f".{info.name}.dropping-{os.getpid()}"
    os.rename(path, hidden)
    shutil.rmtree(hidden)


# -- operation records -------------------------------------------------------------
def record_start(
    conn: psycopg.Connection, schema: str, kind: str, options: dict[str, Any]
) -> int | None:
    """Record an operation when the recovery schema is here (a restore into a fresh
    database, or a directory snapshot of a database without it, works without).
    Call inside a transaction: it is not ended here."""
    try:
        with conn.transaction():  # a savepoint: an unreadable schema leaves it usable
            version = installed_version(conn, schema)
    except psycopg.Error:
        return None
    if version is None or version < 2:
        return None
    row = conn.execute(
        sql.SQL(
            "INSERT INTO {}.operations (kind, status, options) VALUES (%s, 'running', %s)"
            " RETURNING op_id"
        ).format(sql.Identifier(schema)),
        [kind, json.dumps(options)],
    ).fetchone()
    op_id = int(row[0]) if row else None
    operations.hold(conn, op_id)  # released by the caller once the end is committed
    return op_id


def record_end(
    conn: psycopg.Connection,
    schema: str,
    op_id: int | None,
    status: str,
    summary: dict[str, Any] | None,
    error: str | None,
    started: float,
) -> None:
    if op_id is None:
        return
    if summary is not None:
        summary = {**summary, "seconds": round(time.monotonic() - started, 3)}
    conn.execute(
        sql.SQL(
            "UPDATE {}.operations SET status = %s, summary = %s, error = %s,"
            " finished_at = clock_timestamp() WHERE op_id = %s"
        ).format(sql.Identifier(schema)),
        [status, json.dumps(summary, default=str) if summary is not None else None, error, op_id],
    )


def table_specs(
    conn: psycopg.Connection, tables: Sequence[str], wheres: Sequence[str]
) -> list[Spec]:
    """Specs for `--table T [--where SQL]`: one --where for one table, or one per table.

    Reads only, in a transaction of its own or a savepoint of the caller's (left open)."""
    if wheres and len(wheres) != len(tables):
        raise RecoveryError(
            "give one --where per --table, in the same order (--where true for a whole table)"
        )
    with conn.transaction():
        return _table_specs(conn, tables, wheres)


def _table_specs(
    conn: psycopg.Connection, tables: Sequence[str], wheres: Sequence[str]
) -> list[Spec]:
    specs = []
    seen = set()
    for n, t in enumerate(tables):
        relid, _s, _t = resolve_table(conn, t)
        if relid in seen:
            raise RecoveryError(f"table {t} is named twice: give it once")
        seen.add(relid)
        where = check_where(wheres[n]) if wheres else None
        if where is not None:
            try:
                with conn.transaction():
                    conn.execute(
                        sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE ({})").format(
                            sql.Identifier(_s, _t), sql.SQL(where)
                        )
                    )
            except psycopg.Error as exc:
                raise RecoveryError(f"--where {where!r} on {_s}.{_t}: {first_line(exc)}") from None
            # The snapshot and the restore read the table under an alias, which hides
            # its name: a column qualified with it (orders.total) would fail there,
            # after the snapshot started.  Refuse it now, with the fix.
            try:
                with conn.transaction():
                    conn.execute(
                        sql.SQL("EXPLAIN SELECT 1 FROM {} AS _where_check WHERE ({})").format(
                            sql.Identifier(_s, _t), sql.SQL(where)
                        )
                    )
            except psycopg.Error:
                raise RecoveryError(
                    f"--where {where!r} on {_s}.{_t}: name the columns without "
                    f"the table name ({_t}.col -> col)"
                ) from None
        specs.append(Spec(relid, where=where))
    return specs


def specs_for_sql(stmts: Sequence[Any]) -> list[Spec]:
    """Specs from sqlscope's analysis: per table, the union of what its statements risk.

    Row parts of one table are united; their columns too (a table that one
    statement updates and another loses a column of is saved whole).
    """
    by_rel: dict[int, Spec] = {}
    for st in stmts:
        for t in st.targets:
            spec = by_rel.setdefault(t.relid, Spec(t.relid, columns=()))
            spec.parts.append(
                Part(t.from_sql, t.where, f"statement {st.number}: {t.reason}", t.bounded)
            )
            if t.columns is None or spec.columns is None:
                spec.columns = None
            else:
                spec.columns = tuple(dict.fromkeys([*spec.columns, *t.columns]))
    return list(by_rel.values())
