"""What the undo engine needs to know about a captured table: columns, key, journal."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..errors import RecoveryError


@dataclass(frozen=True)
class Column:
    attnum: int
    name: str
    type_name: str
    # (journal column, first statement id stored in it, storage type), newest first
    versions: tuple[tuple[str, int, str], ...]
    generated: bool
    identity_always: bool
    # An array (or a domain over one): array_agg() cannot carry its values.
    array: bool = False

    def value(self, alias: str) -> sql.Composable:
        """Expression giving this column's value, in its current type, from a journal row."""
        a = sql.Identifier(alias)
        (jcol, since, stype), *older = self.versions
        expr: sql.Composable = sql.SQL("{}.{}").format(a, sql.Identifier(jcol))
        if stype != self.type_name:
            expr = sql.SQL("{}::text::{}").format(expr, sql.SQL(self.type_name))
        for ojcol, _osince, otype in older:
            old: sql.Composable = sql.SQL("{}.{}").format(a, sql.Identifier(ojcol))
            if otype != self.type_name:
                old = sql.SQL("{}::text::{}").format(old, sql.SQL(self.type_name))
            expr = sql.SQL("CASE WHEN {}.rec_stmt >= {} THEN {} ELSE {} END").format(
                a, sql.Literal(since), expr, old
            )
            since = _osince
        return expr


@dataclass(frozen=True)
class TableInfo:
    table_id: int
    relid: int
    schema_name: str
    table_name: str
    columns: tuple[Column, ...]
    key: tuple[Column, ...]
    journal: str

    @property
    def label(self) -> str:
        return f"{self.schema_name}.{self.table_name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema_name, self.table_name)

    @property
    def writable(self) -> tuple[Column, ...]:
        """Columns a restore writes (stored generated columns are recomputed)."""
        return tuple(c for c in self.columns if not c.generated)


def load(conn: psycopg.Connection, schema: str, table_id: int) -> TableInfo:
    """Read a captured table's current definition, mapped onto its journal columns."""
    s = sql.Identifier(schema)
    row = conn.execute(
        sql.SQL(
            "SELECT c.relid, n.nspname, pc.relname, c.key_attnums FROM {}.captured c "
            "LEFT JOIN pg_class pc ON pc.oid = c.relid "
            "LEFT JOIN pg_namespace n ON n.oid = pc.relnamespace WHERE c.table_id = %s"
        ).format(s),
        [table_id],
    ).fetchone()
    if row is None:
        raise RecoveryError(f"capture id {table_id} is unknown")
    relid, nsp, rel, key_attnums = row
    if rel is None:
        raise RecoveryError(
            f"captured table id {table_id} was dropped: recreate it before undoing its changes"
        )
    cols = []
    for attnum, name, typ, generated, ident in conn.execute(
        "SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attgenerated <> '',"
        " a.attidentity = 'a' FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0"
        " AND NOT a.attisdropped ORDER BY a.attnum",
        [relid],
    ):
        versions = conn.execute(
            sql.SQL(
                "SELECT jcol, since_stmt, type_name FROM {}.columns WHERE table_id = %s "
                "AND attnum = %s ORDER BY since_stmt DESC"
            ).format(s),
            [table_id, attnum],
        ).fetchall()
        if not versions:
            continue  # added while capture could not follow: no history for it
        storage = conn.execute(
            sql.SQL(
                "SELECT {}.storage_type(a.atttypid, a.atttypmod), t.typcategory = 'A' "
                "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = %s AND a.attnum = %s"
            ).format(s),
            [relid, attnum],
        ).fetchone()
        assert storage is not None
        # Values stored in the current storage type need no cast (a domain's value is
        # assigned back to the domain column implicitly), except the text form of a
        # non-built-in type (an enum, a composite): text is not assigned to those
        # implicitly, so such a value keeps its cast (::text::type).
        vers = tuple(
            (j, int(since), t if t != storage[0] or t == "text" else typ)
            for j, since, t in versions
        )
        # An array (or a domain over one, whose category is the array's), whatever
        # its journal storage.
        cols.append(
            Column(
                attnum,
                name,
                typ,
                vers,
                bool(generated),
                bool(ident),
                storage[0].endswith("]") or bool(storage[1]),
            )
        )
    by_num = {c.attnum: c for c in cols}
    try:
        key = tuple(by_num[k] for k in key_attnums)
    except KeyError:
        raise RecoveryError(
            f"the key of {nsp}.{rel} changed since capture started: run `recovery capture "
            "enable` again"
        ) from None
    return TableInfo(table_id, relid, nsp, rel, tuple(cols), key, f"j_{table_id}")
