"""Snapshot and restore across every kind of column and table shape, on a real PostgreSQL.

A table with a column per type (and the values each type finds hard) goes through
both stores and comes back byte-identical: compared as the text of every row and as
the Python values psycopg loads.  Then the table shapes a restore meets: foreign
keys with cascades and self-references, partitions, quoted mixed-case names, and
tables with triggers of their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.adapt import Loader

from recovery.db import connect
from recovery.errors import RecoveryError
from recovery.restore import restore
from recovery.snapshot import checksum
from recovery.snapshot import stores as snap

from .conftest import _with_db, rows

TYPES = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s "quoted"');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text, m mood);
CREATE TYPE floatrange AS RANGE (subtype = float8);
CREATE SCHEMA "Extra Types";
CREATE TYPE "Extra Types"."Color" AS ENUM ('red', 'green', 'blue');
CREATE DOMAIN "Extra Types".shade AS "Extra Types"."Color" DEFAULT 'red' CHECK (VALUE <> 'blue');
CREATE DOMAIN intlist AS int[] CHECK (cardinality(VALUE) < 10);
"""

# Column name -> type; id is the primary key.
COLUMNS = {
    "i2": "smallint",
    "i4": "integer",
    "i8": "bigint",
    "num": "numeric",
    "nump": "numeric(40,20)",
    "f4": "real",
    "f8": "double precision",
    "txt": "text",
    "vc": "varchar(20)",
    "ch": "char(5)",
    "by": "bytea",
    "b": "boolean",
    "d": "date",
    "t": "time",
    "ttz": "timetz",
    "ts": "timestamp",
    "tstz": "timestamptz",
    "iv": "interval",
    "u": "uuid",
    "j": "json",
    "jb": "jsonb",
    "a2": "int[]",
    "ta": "text[]",
    "lb": "int[]",
    "e": "mood",
    "ea": "mood[]",
    "dm": "posint",
    "comp": "pair",
    "comps": "pair[]",
    "r4": "int4range",
    "rtz": "tstzrange",
    "fr": "floatrange",
    "ip": "inet",
    "cd": "cidr",
    "mac": "macaddr",
    "mny": "money",
    "bt": "bit(8)",
    "vb": "varbit",
    "tsv": "tsvector",
    "x": "xml",
    "col": '"Extra Types"."Color"',
    "sh": '"Extra Types".shade',
    "il": "intlist",
    "dma": "posint[]",
}
# On PostgreSQL 14+ also a multirange of the user-defined range (created with it).
MULTIRANGE = {"fmr": "floatmultirange"}

HUGE = "1234567890123456789012345678901234567890.123456789012345678901234567890123456789"
TEXTS = [
    "emoji 😀 👩‍👩‍👧 family, combining e\u0301 vs \u00e9, RTL שלום مرحبا",
    "back\\slash \\\\ two, \\N like COPY's null, tab\there, newline\nthere, cr\rhere",
    "quotes ' and \" and `, semicolon; comma, {braces} (parens) [brackets]",
    "",
    "NULL",
]
ALL_BYTES = bytes(range(256))


def _rows_sql(server: int) -> list[dict[str, str]]:
    """Rows as SQL literals per column (missing columns are NULL)."""
    r: list[dict[str, str]] = [
        {  # minimums, NaN, the far past
            "i2": "-32768",
            "i4": "-2147483648",
            "i8": "-9223372036854775808",
            "num": "'NaN'",
            "nump": "'-12345678901234567890.12345678901234567890'",
            "f4": "'NaN'",
            "f8": "'NaN'",
            "vc": "'ünïcödé'",
            "ch": "'ab'",
            "b": "false",
            "d": "'-infinity'",
            "t": "'00:00'",
            "ttz": "'00:00:00-15:59'",
            "ts": "'-infinity'",
            "tstz": "'-infinity'",
            "iv": "'-178000000 years'",
            "u": "'00000000-0000-0000-0000-000000000000'",
            "j": """'{"a" :1,  "a":2}'""",
            "jb": """'{"b": [1, 2.50, null], "a": "é"}'""",
            "a2": "'{{1,2,3},{4,5,6}}'",
            "ta": """'{a,NULL,"b c","\\"q\\"","",NULL}'""",
            "lb": "'[0:1]={1,2}'",
            "e": "'sad'",
            "ea": "'{sad,happy}'",
            "dm": "1",
            "comp": "ROW(1, 'x, \"y\"', 'ok')::pair",
            "comps": "ARRAY[ROW(1,'a,b','ok')::pair, NULL]",
            "r4": "'[1,10)'",
            "rtz": "'empty'",
            "fr": "'[-1.5,2.25)'",
            "ip": "'192.168.0.1/24'",
            "cd": "'10.0.0.0/8'",
            "mac": "'08:00:2b:01:02:03'",
            "mny": "'-92233720368547758.08'",
            "bt": "B'00000000'",
            "vb": "B''",
            "tsv": "'a fat cat:1A sat:2B,3'",
            "x": "'<a b=\"1\">x &amp; y</a>'",
            "col": "'green'",
            "sh": "'red'",
            "il": "'{1,NULL,3}'",
            "dma": "'{1,2}'",
            "fmr": "'{[1,2), [3.5,4]}'",
        },
        {  # maximums, Infinity, the far future
            "i2": "32767",
            "i4": "2147483647",
            "i8": "9223372036854775807",
            "num": f"'{HUGE}'",
            "nump": "'99999999999999999999.99999999999999999999'",
            "f4": "'Infinity'",
            "f8": "'Infinity'",
            "vc": "''",
            "ch": "'abcde'",
            "b": "true",
            "d": "'infinity'",
            "t": "'24:00:00'",
            "ttz": "'23:59:59.999999+15:59'",
            "ts": "'infinity'",
            "tstz": "'infinity'",
            "iv": "'178000000 years'",
            "u": "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
            "j": "'[]'",
            "jb": "'null'",
            "a2": "'{{NULL,-1},{2,NULL}}'",
            "ta": "'{}'",
            "lb": "'[-3:-2]={7,8}'",
            "e": "'it''s \"quoted\"'",
            "ea": "'{}'",
            "dm": "2147483647",
            "comp": "ROW(NULL, NULL, NULL)::pair",
            "comps": "'{}'",
            "r4": "'empty'",
            "rtz": "'[2020-01-01 00:00+00,infinity)'",
            "fr": "'empty'",
            "ip": "'2001:db8::ff00:42:8329/64'",
            "cd": "'2001:db8::/32'",
            "mac": "'ff:ff:ff:ff:ff:ff'",
            "mny": "'92233720368547758.07'",
            "bt": "B'11111111'",
            "vb": "B'1'",
            "tsv": "''",
            "x": "'text<b/>more'",
            "col": "'blue'",
            "sh": "'green'",
            "il": "'{}'",
            "dma": "'{NULL}'",
            "fmr": "'{}'",
        },
        {  # -Infinity, -0, dates at the edges of the range
            "i2": "0",
            "i4": "0",
            "i8": "0",
            "num": "'-0.000000000000000000001'",
            "nump": "'0'",
            "f4": "'-Infinity'",
            "f8": "'-Infinity'",
            "ch": "''",
            "d": "'4713-01-01 BC'",
            "t": "'23:59:59.999999'",
            "ttz": "'12:34:56.789+05:30'",
            "ts": "'4713-01-01 00:00:00 BC'",
            "tstz": "'294276-12-31 23:59:59.999999+00'",
            "iv": "'1 year 2 mons 3 days 04:05:06.789'",
            "j": "'\"\\u0000 escaped nul\"'",
            "jb": '\'{"n": 1.0, "big": 1e100}\'',
            "a2": "'{{{1}},{{2}}}'",
            "ta": '\'{"NULL","\\\\","\\t"}\'',
            "e": "'happy'",
            "dm": "42",
            "comp": "ROW(2, '', 'sad')::pair",
            "r4": "'(,5]'",
            "rtz": "'(,)'",
            "fr": "'(,0]'",
            "ip": "'::1'",
            "mny": "'0'",
            "bt": "B'10101010'",
            "vb": "B'0101010101'",
            "x": "'<?xml version=\"1.0\"?><r/>'",
        },
        {  # -0, denormals, 0.1, ordinary values
            "i4": "7",
            "num": "'1.0'",
            "nump": "'0.1'",
            "f4": "'-0'",
            "f8": "'-0'",
            "d": "'2000-02-29'",
            "t": "'12:00'",
            "ts": "'2000-02-29 12:00:00.000001'",
            "tstz": "'2000-02-29 12:00:00.000001+14'",
            "iv": "'-1 days +02:00'",
            "j": "'  {\"spaces\" : [ 1 , 2 ] }  '",
            "jb": "'[]'",
            "e": "'ok'",
            "r4": "'[0,0]'",
            "rtz": "'[2000-01-01 00:00+05,2000-01-02 00:00-05]'",
            "mny": "'12.34'",
            "vb": "B'0'",
            "x": "'<r>\n  <s/>\n</r>'",
            "b": "true",
        },
        {"f4": "'1e-40'", "f8": "'1e-310'", "i4": "8", "num": "'0'"},
        {"f4": "'0.1'", "f8": "'0.1'", "i4": "9", "num": "'-1.50'"},
        {"f4": "'3.4028235e38'", "f8": "'1.7976931348623157e308'", "i4": "10"},
        {"f4": "'1.4e-45'", "f8": "'5e-324'", "i4": "11"},
        {},  # NULL in every non-key column
    ]
    if server >= 140000:  # numeric infinity
        r[1]["nump"] = "'99999999999999999999.99999999999999999999'"
        r[5]["num"] = "'Infinity'"
        r[6]["num"] = "'-Infinity'"
    if server >= 170000:  # interval infinity
        r[4]["iv"] = "'infinity'"
        r[5]["iv"] = "'-infinity'"
    return r


def columns(c: psycopg.Connection) -> dict[str, str]:
    """The matrix's columns for this server: multiranges from 14; xml only where the server
    was built with libxml (pgserver's is not)."""
    cols = {**COLUMNS, **(MULTIRANGE if c.info.server_version >= 140000 else {})}
    try:
        with c.transaction():
            c.execute("SELECT '<a/>'::xml")
    except psycopg.errors.FeatureNotSupported:
        del cols["x"]
    return cols


def create_matrix(c: psycopg.Connection) -> None:
    """The types and the table `tm`, filled (the row ids: 1..9)."""
    c.execute(TYPES)
    cols = columns(c)
    c.execute(
        "CREATE TABLE tm (id int PRIMARY KEY, "
        + ", ".join(f"{n} {t}" for n, t in cols.items())
        + ")"
    )
    for n, r in enumerate(_rows_sql(c.info.server_version), 1):
        vals = [r.get(col, "NULL") for col in cols]
        params: list[Any] = []
        if 1 <= n <= len(TEXTS):
            vals[list(COLUMNS).index("txt")] = "%s"
            params.append(TEXTS[n - 1])
        if n <= 3:
            vals[list(COLUMNS).index("by")] = "%s"
            params.append([ALL_BYTES, b"\x00\x00\x00", b""][n - 1])
        c.execute(f"INSERT INTO tm VALUES ({n}, {', '.join(vals)})", params)  # type: ignore[arg-type]
    c.commit()


class _Lenient(Loader):
    """The default loader of a date/time type, or the text when Python cannot hold the value
    (infinity, BC dates, 24:00, intervals beyond timedelta)."""

    base: Any = None

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self._inner = self.base(oid, context)

    def load(self, data: Any) -> Any:
        try:
            return self._inner.load(data)
        except psycopg.DataError:
            return ("text", bytes(data).decode())


def _lenient(c: psycopg.Connection) -> psycopg.Connection:
    for name in ("date", "time", "timetz", "timestamp", "timestamptz", "interval"):
        oid = c.adapters.types[name].oid
        base = c.adapters.get_loader(oid, psycopg.pq.Format.TEXT)
        c.adapters.register_loader(name, type(f"Lenient_{name}", (_Lenient,), {"base": base}))
    return c


def _norm(v: Any) -> Any:
    """Python values made comparable: NaN equal to NaN, -0.0 unlike 0.0, 1.0 unlike 1.00."""
    if isinstance(v, float):
        return ("float", repr(v))
    if isinstance(v, Decimal):
        return ("numeric", str(v))
    if isinstance(v, (list, tuple)):
        return type(v)(_norm(x) for x in v)
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def text_rows(c: psycopg.Connection, table: str = "tm") -> list[str]:
    c.rollback()
    # (the alias is no column name: a column of that name would win over the row)
    out = [
        r[0]
        for r in c.execute(
            f"SELECT whole_row::text FROM {table} whole_row"  # noqa: S608
            " ORDER BY id"
        )
    ]
    c.rollback()
    return out


def value_rows(c: psycopg.Connection, table: str = "tm") -> list[Any]:
    return [_norm(r) for r in rows(c, table)]


@pytest.fixture
def lconn(db_url: str) -> Iterator[psycopg.Connection]:
    c = _lenient(connect(db_url))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(params=["db", "dir"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "db" if request.param == "db" else str(tmp_path / "store")


@pytest.fixture
def second_db(server_url: str, db_url: str) -> Iterator[str]:
    """URL of a second, empty database (no recovery schema, no types)."""
    other = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"] + "_second"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{other}"')
    try:
        yield _with_db(server_url, str(other))
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{other}" WITH (FORCE)')


def test_the_values_are_what_the_matrix_says(lconn) -> None:
    """The fixture itself: each hard value made it into the table as meant."""
    create_matrix(lconn)
    got = {r[0]: r for r in rows(lconn, "tm")}
    assert len(got) == 9
    cols = ["id", *COLUMNS]
    one, two, three = (dict(zip(cols, got[n])) for n in (1, 2, 3))
    assert one["by"] == ALL_BYTES and two["by"] == b"\x00\x00\x00" and three["by"] == b""
    assert [dict(zip(cols, got[n]))["txt"] for n in range(1, 6)] == TEXTS
    assert (one["i8"], two["i8"]) == (-(2**63), 2**63 - 1)
    assert repr(dict(zip(cols, got[4]))["f8"]) == "-0.0"
    assert dict(zip(cols, got[5]))["f8"] == 1e-310
    assert one["d"] == ("text", "-infinity") and two["t"] == ("text", "24:00:00")
    assert all(v is None for v in got[9][1:])
    assert text_rows(lconn)[0].startswith("(1,-32768,-2147483648,-9223372036854775808,NaN,")
    lconn.rollback()
    assert lconn.execute("SELECT j::text FROM tm WHERE id = 1").fetchone() == ('{"a" :1,  "a":2}',)


def _damage(c: psycopg.Connection) -> None:
    """Every row changed (each takes the next row's values), two rows deleted."""
    cols = columns(c)
    names = ", ".join(cols)
    nxt = ", ".join(f"n.{x}" for x in cols)
    c.execute(
        f"UPDATE tm SET ({names}) = (SELECT {nxt} FROM tm n"  # noqa: S608
        " WHERE n.id = tm.id % 9 + 1)"
    )
    c.execute("DELETE FROM tm WHERE id IN (2, 9)")
    c.commit()


def test_matrix_round_trip_after_changes_and_deletes(lconn, store) -> None:
    create_matrix(lconn)
    before_text, before_values = text_rows(lconn), value_rows(lconn)
    info = snap.create(lconn, "m", snap.table_specs(lconn, ["tm"], []), store=store)
    assert info.rows == 9
    snap.verify(lconn, snap.find(lconn, "m", store=store))
    _damage(lconn)
    assert text_rows(lconn) != before_text and len(text_rows(lconn)) == 7
    found = snap.find(lconn, "m", store=store)
    plan = restore(lconn, found, dry_run=True)
    assert (plan.tables[0].restore, plan.tables[0].reinsert, plan.tables[0].already) == (7, 2, 0)
    done = restore(lconn, found)
    assert (done.tables[0].updated, done.tables[0].inserted) == (7, 2)
    assert text_rows(lconn) == before_text
    assert value_rows(lconn) == before_values
    # Changes equality would hide: -0 and 0, json whitespace, 1.0 and 1.00, NaN.
    lconn.execute("UPDATE tm SET f8 = 0, f4 = 0 WHERE id = 4")
    lconn.execute("""UPDATE tm SET j = '{"a":1,"a":2}' WHERE id = 1""")
    lconn.execute("UPDATE tm SET num = 1.00 WHERE id = 4")
    lconn.execute("UPDATE tm SET ch = 'ab ' WHERE id = 1")  # char(5): the same padded text
    lconn.execute("UPDATE tm SET lb = '{1,2}' WHERE id = 1")  # lower bound 1 instead of 0
    lconn.commit()
    assert text_rows(lconn) != before_text
    plan = restore(lconn, found, dry_run=True)
    assert (plan.tables[0].restore, plan.tables[0].reinsert, plan.tables[0].already) == (2, 0, 7)
    restore(lconn, found)
    assert text_rows(lconn) == before_text
    assert value_rows(lconn) == before_values
    again = restore(lconn, found, dry_run=True)
    assert (again.tables[0].restore, again.tables[0].reinsert) == (0, 0)
    # Dropped: recreated from the manifest (the types are still here), rows exact.
    lconn.execute("DROP TABLE tm")
    lconn.commit()
    assert restore(lconn, found).tables[0].inserted == 9
    assert text_rows(lconn) == before_text
    assert value_rows(lconn) == before_values


def test_checksum_by_a_second_session_equals_the_one_verify_computes(lconn, monkeypatch) -> None:
    """A whole table's checksum is computed by a second session while the rows are
    copied (big tables only; forced here for every size): for every type of the
    matrix it is the checksum verify recomputes over the copy, by the same method."""
    seen: list[tuple[int, str, str] | None] = []
    real = checksum.SideChecksum.result

    def spy(self):  # type: ignore[no-untyped-def]
        out = real(self)
        seen.append(out)
        return out

    monkeypatch.setattr(checksum.SideChecksum, "MIN_PAGES", 0)
    monkeypatch.setattr(checksum.SideChecksum, "result", spy)
    create_matrix(lconn)
    lconn.execute(
        "CREATE TABLE plain_t AS SELECT g AS id, md5(g::text) AS v"
        " FROM generate_series(1, 500) g; ALTER TABLE plain_t ADD PRIMARY KEY (id)"
    )
    lconn.commit()
    info = snap.create(lconn, "m", snap.table_specs(lconn, ["tm", "plain_t"], []))
    assert [s is not None for s in seen] == [True, True]  # the second session did both
    found = snap.find(lconn, "m")
    methods = {i["table"]: i["checksum_method"] for i in found.manifest["items"]}
    assert methods == {"tm": "text", "plain_t": "record"}  # json and xml have no hash
    assert [(s[0], s[2]) for s in seen if s] == [(9, "text"), (500, "record")]
    assert snap.verify(lconn, found).ok
    assert info.rows == 509
    # With a WHERE (it may call now() or random()), the copy is read instead.
    seen.clear()
    snap.create(lconn, "w", snap.table_specs(lconn, ["plain_t"], ["id <= 100"]))
    assert seen == []
    assert snap.verify(lconn, snap.find(lconn, "w")).ok


def test_checksum_falls_back_when_no_second_session(lconn, monkeypatch) -> None:
    def refuse(*_a, **_k):  # type: ignore[no-untyped-def]
        raise psycopg.OperationalError("too many connections")

    monkeypatch.setattr(checksum.SideChecksum, "MIN_PAGES", 0)
    monkeypatch.setattr(snap.psycopg, "connect", refuse)
    lconn.execute(
        "CREATE TABLE plain_t AS SELECT g AS id, md5(g::text) AS v"
        " FROM generate_series(1, 50) g; ALTER TABLE plain_t ADD PRIMARY KEY (id)"
    )
    lconn.commit()
    info = snap.create(lconn, "m", snap.table_specs(lconn, ["plain_t"], []))
    assert info.rows == 50
    assert snap.verify(lconn, snap.find(lconn, "m")).ok


def test_matrix_dropped_table_and_fresh_database(lconn, second_db, tmp_path) -> None:
    create_matrix(lconn)
    before_text, before_values = text_rows(lconn), value_rows(lconn)
    store = str(tmp_path / "store")
    snap.create(lconn, "m", snap.table_specs(lconn, ["tm"], []), store=store)
    lconn.execute("DROP TABLE tm")
    lconn.commit()
    found = snap.find(None, "m", store=store)
    rep = restore(lconn, found)
    assert rep.tables[0].inserted == 9
    assert text_rows(lconn) == before_text
    assert value_rows(lconn) == before_values
    # Another database, with neither the types nor the recovery schema.
    with _lenient(connect(second_db)) as c2:
        assert c2.execute(
            "SELECT count(*) FROM pg_type t JOIN pg_namespace n"
            " ON n.oid = t.typnamespace WHERE n.nspname = 'public'"
        ).fetchone() == (0,)
        c2.rollback()
        rep = restore(c2, found)
        assert rep.tables[0].inserted == 9
        assert any("created type public.pair" in n for n in rep.tables[0].notes)
        assert text_rows(c2) == before_text
        assert value_rows(c2) == before_values
        # The recreated types are the same types: the domain's CHECK and the enum's order.
        with pytest.raises(psycopg.errors.CheckViolation):
            c2.execute("INSERT INTO tm (id, dm) VALUES (100, 0)")
        c2.rollback()
        assert c2.execute("SELECT enum_range(NULL::mood)::text").fetchone() == (
            '{sad,ok,happy,"it\'s \\"quoted\\""}',
        )
        c2.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            c2.execute("INSERT INTO tm (id, sh) VALUES (100, 'blue')")
        c2.rollback()


def test_fresh_database_gets_types_used_only_inside_others(conn, second_db, tmp_path) -> None:
    """A multirange of a user range, an array of a composite of a domain over an enum:
    each type is created in the other database, dependencies first."""
    multi = conn.info.server_version >= 140000
    conn.execute(
        "CREATE SCHEMA s2; CREATE TYPE s2.lvl AS ENUM ('lo', 'hi');"
        "CREATE DOMAIN s2.lvl_d AS s2.lvl NOT NULL DEFAULT 'lo';"
        "CREATE TYPE s2.cell AS (l s2.lvl_d, n numeric(5,2));"
        "CREATE TYPE s2.num_range AS RANGE (subtype = numeric);"
        "CREATE TABLE t (id int PRIMARY KEY, cells s2.cell[]"
        + (", mr s2.num_multirange" if multi else "")
        + ")"
    )
    conn.execute(
        "INSERT INTO t VALUES (1, ARRAY[ROW('hi', 1.5)::s2.cell, ROW('lo', NULL)::s2.cell]"
        + (", '{[1,2), [3,4)}'" if multi else "")
        + "), (2, NULL"
        + (", NULL" if multi else "")
        + ")"
    )
    conn.commit()
    before = text_rows(conn, "t")
    store = str(tmp_path / "store")
    snap.create(conn, "s", snap.table_specs(conn, ["t"], []), store=store)
    with connect(second_db) as c2:
        rep = restore(c2, snap.find(None, "s", store=store))
        assert rep.tables[0].inserted == 2
        assert text_rows(c2, "t") == before
        assert [n for n in rep.tables[0].notes if n.startswith("created type")] == [
            "created type s2.lvl",
            "created type s2.lvl_d",
            "created type s2.cell",
            *(["created type s2.num_range"] if multi else []),
        ]


# -- table shapes ------------------------------------------------------------------


def test_cascades_and_self_reference_restore_in_foreign_key_order(conn, sql_exec, store) -> None:
    sql_exec("""
    CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL);
    CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL
                        REFERENCES parent ON DELETE CASCADE ON UPDATE CASCADE, qty int);
    CREATE TABLE emp (id int PRIMARY KEY, boss int REFERENCES emp ON DELETE CASCADE, name text);
    INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 10) g;
    INSERT INTO child SELECT g, 1 + g % 10, g FROM generate_series(1, 50) g;
    INSERT INTO emp VALUES (1, NULL, 'ceo'), (2, 1, 'cto'), (3, 1, 'cfo'), (4, 2, 'dev'),
                           (5, 4, 'intern'), (6, 3, 'clerk'), (7, NULL, 'board');
    """)
    before = {t: rows(conn, t) for t in ("parent", "child", "emp")}
    # Children first in the list: the restore must order them itself.
    snap.create(conn, "fk", snap.table_specs(conn, ["child", "emp", "parent"], []), store=store)
    sql_exec("DELETE FROM parent WHERE id IN (1, 2, 3)")  # cascades to 15 children
    sql_exec("UPDATE parent SET id = 100 WHERE id = 4")  # cascades a key change to 5 children
    sql_exec("UPDATE child SET qty = -1 WHERE id % 7 = 0")
    sql_exec("DELETE FROM emp WHERE id = 2")  # cascades to 4 and 5
    sql_exec("UPDATE emp SET boss = 7 WHERE id = 3")
    assert len(rows(conn, "child")) == 35 and len(rows(conn, "emp")) == 4
    found = snap.find(conn, "fk", store=store)
    plan = restore(conn, found, dry_run=True, delete_new=True)
    by = {t.table: t for t in plan.tables}
    assert (by["public.parent"].reinsert, by["public.parent"].new_rows) == (4, 1)
    assert (by["public.child"].reinsert, by["public.emp"].reinsert) == (15, 3)
    assert by["public.emp"].restore == 1
    done = restore(conn, found, delete_new=True)
    assert [t.table for t in done.tables] == ["public.emp", "public.parent", "public.child"]
    assert {t: rows(conn, t) for t in ("parent", "child", "emp")} == before
    again = restore(conn, found, dry_run=True, delete_new=True)
    assert all(t.restore == t.reinsert == t.delete == 0 for t in again.tables)


def test_partitioned_table_rows_deleted_in_two_partitions(conn, sql_exec, store) -> None:
    sql_exec("""
    CREATE TABLE ev (id int, region text, v int, note text, PRIMARY KEY (id, region))
      PARTITION BY LIST (region);
    CREATE TABLE ev_eu PARTITION OF ev FOR VALUES IN ('eu');
    CREATE TABLE ev_us PARTITION OF ev FOR VALUES IN ('us');
    CREATE TABLE ev_other PARTITION OF ev DEFAULT;
    INSERT INTO ev SELECT g, (ARRAY['eu', 'us', 'ap'])[1 + g % 3], g, 'n' || g
      FROM generate_series(1, 90) g;
    """)
    before = rows(conn, "ev")
    snap.create(conn, "p", snap.table_specs(conn, ["ev"], ["v <= 60"]), store=store)
    sql_exec("DELETE FROM ev WHERE region IN ('eu', 'us') AND v % 2 = 0")  # two partitions
    sql_exec("UPDATE ev SET note = 'bad' WHERE region = 'ap'")
    sql_exec("INSERT INTO ev VALUES (1000, 'eu', 1, 'new')")  # inside the WHERE: kept
    found = snap.find(conn, "p", store=store)
    plan = restore(conn, found, dry_run=True)
    assert (plan.tables[0].reinsert, plan.tables[0].restore, plan.tables[0].new_rows) == (20, 20, 1)
    restore(conn, found)
    after = rows(conn, "ev", "1, 2")
    expected = sorted(
        [r for r in before if r[2] <= 60]
        + [
            (r[0], r[1], r[2], "bad" if r[1] == "ap" else r[3])
            for r in before
            if r[2] > 60 and not (r[1] in ("eu", "us") and r[2] % 2 == 0)
        ]
        + [(1000, "eu", 1, "new")]
    )
    assert after == expected
    # Each row went back into its own partition.
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM ev_eu WHERE v <= 60").fetchone() == (21,)
    conn.rollback()


def test_mixed_case_quoted_names(conn, sql_exec, store, cli) -> None:
    sql_exec("""
    CREATE SCHEMA "Mixed";
    CREATE TABLE "Mixed"."Order Items" ("Id" serial PRIMARY KEY, "Qty" int NOT NULL,
                                         "Note Text" text, "select" text);
    INSERT INTO "Mixed"."Order Items" ("Qty", "Note Text", "select")
      SELECT g, 'n' || g, 's' || g FROM generate_series(1, 20) g;
    """)
    table = '"Mixed"."Order Items"'

    def items() -> list[tuple[Any, ...]]:
        conn.rollback()
        out = conn.execute('SELECT * FROM "Mixed"."Order Items" ORDER BY 1').fetchall()
        conn.rollback()
        return out

    before = items()
    res = cli(
        "snapshot",
        "create",
        "mc",
        "--table",
        table,
        "--where",
        '"Qty" <= 10',
        "--store",
        store,
        "--yes",
    )
    assert res.exit_code == 0, res.stderr
    sql_exec('UPDATE "Mixed"."Order Items" SET "Note Text" = NULL, "select" = \'x\'')
    sql_exec('DELETE FROM "Mixed"."Order Items" WHERE "Id" IN (1, 2, 15)')
    # --table as the snapshot was made with it (quoted), or as the snapshot lists it.
    for name in (table, "Mixed.Order Items"):
        res = cli("restore", "mc", "--store", store, "--table", name, "--dry-run", "--json")
        assert res.exit_code == 0, (name, res.stderr)
        plan = json.loads(res.stdout)
        assert (plan["tables"][0]["restore"], plan["tables"][0]["reinsert"]) == (8, 2)
    res = cli("restore", "mc", "--store", store, "--table", table, "--yes")
    assert res.exit_code == 0, res.stderr
    after = items()
    assert after == [r if r[0] <= 10 else (r[0], r[1], None, "x") for r in before if r[0] != 15]
    if store != "db":  # dropped: recreated with its quoted names and its sequence
        sql_exec('DROP TABLE "Mixed"."Order Items"')
        res = cli("restore", "mc", "--store", store, "--yes")
        assert res.exit_code == 0, res.stderr
        assert items() == before[:10]
        sql_exec('INSERT INTO "Mixed"."Order Items" ("Qty") VALUES (99)')
        assert items()[-1] == (11, 99, None, None)


TRIGGERS = """
CREATE TABLE doc (id int PRIMARY KEY, body text, version int NOT NULL DEFAULT 1,
                  updated_at timestamptz NOT NULL DEFAULT '2020-01-01');
CREATE TABLE doc_log (doc_id int, what text);
CREATE FUNCTION doc_touch() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN NEW.updated_at := '2030-01-01'; NEW.version := OLD.version + 1; RETURN NEW; END $$;
CREATE TRIGGER doc_touch BEFORE UPDATE ON doc FOR EACH ROW EXECUTE FUNCTION doc_touch();
CREATE FUNCTION doc_log() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO doc_log VALUES (NEW.id, TG_OP); RETURN NEW; END $$;
CREATE TRIGGER doc_log AFTER INSERT ON doc FOR EACH ROW EXECUTE FUNCTION doc_log();
INSERT INTO doc (id, body) SELECT g, 'b' || g FROM generate_series(1, 10) g;
TRUNCATE doc_log;
"""


@pytest.mark.parametrize("fire", [False, True])
def test_own_triggers_suspended_or_fired(conn, sql_exec, store, fire, cli) -> None:
    sql_exec(TRIGGERS)
    before = rows(conn, "doc")
    snap.create(conn, "tr", snap.table_specs(conn, ["doc"], []), store=store)
    sql_exec("UPDATE doc SET body = 'bad' WHERE id <= 4")  # version 2, updated_at 2030
    sql_exec("DELETE FROM doc WHERE id IN (9, 10)")
    sql_exec("TRUNCATE doc_log")
    if fire:  # through the CLI's flag
        res = cli("restore", "tr", "--store", store, "--fire-triggers", "--yes")
        assert res.exit_code == 0, res.stderr
    else:
        restore(conn, snap.find(conn, "tr", store=store))
    after = rows(conn, "doc")
    if not fire:
        assert after == before
        assert rows(conn, "doc_log") == []
    else:  # the restore's UPDATE and INSERT fired them: the trigger's values win
        assert after == [
            (i, f"b{i}", 3, datetime(2030, 1, 1, tzinfo=timezone.utc)) if i <= 4 else before[i - 1]
            for i in range(1, 11)
        ]
        assert rows(conn, "doc_log", "1") == [(9, "INSERT"), (10, "INSERT")]
    # The triggers are on again afterwards, either way.
    conn.rollback()
    assert conn.execute(
        "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'doc'::regclass"
        " AND NOT tgisinternal ORDER BY 1"
    ).fetchall() == [("doc_log", "O"), ("doc_touch", "O")]
    conn.rollback()
    sql_exec("UPDATE doc SET body = 'later' WHERE id = 1")
    assert rows(conn, "doc")[0][2:] == (4 if fire else 2, datetime(2030, 1, 1, tzinfo=timezone.utc))


def test_recreated_table_keeps_its_definition(conn, second_db, tmp_path) -> None:
    """Identity, collation, checks, exclusion and partial and expression indexes come back
    in another database, and the identity continues after the restored rows."""
    conn.execute("""
    CREATE TABLE booking (
      id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      room text COLLATE "C" NOT NULL CHECK (room <> ''),
      during tstzrange NOT NULL,
      guests int NOT NULL DEFAULT 1,
      total numeric(8,2) GENERATED ALWAYS AS (guests * 10.5) STORED,
      code text,
      CONSTRAINT no_overlap EXCLUDE USING gist (during WITH &&),
      CONSTRAINT few CHECK (guests BETWEEN 1 AND 8));
    CREATE UNIQUE INDEX booking_code ON booking (lower(code)) WHERE code IS NOT NULL;
    INSERT INTO booking (room, during, guests, code) VALUES
      ('b', '[2024-01-01,2024-01-03)', 2, 'X1'), ('a', '[2024-01-03,2024-01-05)', 1, NULL),
      ('B', '[2024-02-01,2024-02-02)', 8, 'x2');
    """)
    conn.commit()
    before = text_rows(conn, "booking")
    store = str(tmp_path / "store")
    snap.create(conn, "b", snap.table_specs(conn, ["booking"], []), store=store)
    with connect(second_db) as c2:
        restore(c2, snap.find(None, "b", store=store))
        assert text_rows(c2, "booking") == before
        c2.execute("INSERT INTO booking (room, during) VALUES ('c', '[2029-01-01,2029-01-02)')")
        assert c2.execute("SELECT id, total FROM booking WHERE room = 'c'").fetchone() == (
            4,
            Decimal("10.50"),
        )  # the identity continues after the restored rows
        c2.commit()

        def fails(stmt: str, err: type[Exception]) -> None:
            with pytest.raises(err):
                c2.execute(stmt)  # type: ignore[arg-type]
            c2.rollback()

        fails(
            "INSERT INTO booking (room, during) VALUES ('c', '[2024-01-02,2024-01-04)')",
            psycopg.errors.ExclusionViolation,
        )
        fails(
            "INSERT INTO booking (room, during, code) VALUES ('c', '[2025-01-01,2025-01-02)',"
            " 'x1')",
            psycopg.errors.UniqueViolation,
        )
        fails(
            "INSERT INTO booking (room, during, guests) VALUES ('c', '[2026-01-01,2026-01-02)', 9)",
            psycopg.errors.CheckViolation,
        )
        fails(
            "INSERT INTO booking (room, during) VALUES ('', '[2027-01-01,2027-01-02)')",
            psycopg.errors.CheckViolation,
        )
        fails(
            "INSERT INTO booking (id, room, during) VALUES (50, 'c', '[2028-01-01,2028-01-02)')",
            psycopg.errors.GeneratedAlways,
        )
        assert [r[0] for r in c2.execute("SELECT room FROM booking ORDER BY room")] == [
            "B",
            "a",
            "b",
            "c",
        ]  # COLLATE "C"
        c2.rollback()


PARTITIONED = """
CREATE SCHEMA arch;
CREATE TABLE ev (id bigserial, at date NOT NULL, region text NOT NULL, v int,
                 note text DEFAULT 'none', PRIMARY KEY (id, at, region),
                 CHECK (v IS DISTINCT FROM -1))
  PARTITION BY RANGE (at);
CREATE INDEX ev_v ON ev (v);
CREATE TABLE ev_2026q1 PARTITION OF ev FOR VALUES FROM ('2026-01-01') TO ('2026-04-01')
  PARTITION BY LIST (region);
CREATE TABLE ev_2026q1_eu PARTITION OF ev_2026q1 FOR VALUES IN ('eu');
CREATE TABLE ev_2026q1_rest PARTITION OF ev_2026q1 DEFAULT;
CREATE TABLE arch.ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
ALTER TABLE arch.ev_2025 ADD CONSTRAINT old_small CHECK (v < 1000);
CREATE TABLE ev_later PARTITION OF ev DEFAULT;
INSERT INTO ev (at, region, v) SELECT date '2025-06-01' + (g * 7), (ARRAY['eu', 'us'])[1 + g % 2],
  g FROM generate_series(1, 60) g;
"""

# Where each row lives: (partition, id), for every row of the table.
PLACED = (
    "SELECT c.relnamespace::regnamespace::text || '.' || c.relname, e.id"
    " FROM ev e JOIN pg_class c ON c.oid = e.tableoid ORDER BY 2"
)


def _placed(c: psycopg.Connection) -> list[tuple[Any, ...]]:
    c.rollback()
    out = c.execute(PLACED).fetchall()
    c.rollback()
    return out


def _layout(c: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Every relation of the partition tree with its bound, and the indexes on each."""
    out = c.execute(
        "SELECT t.relid::regclass::text, t.level, pg_get_expr(k.relpartbound, k.oid),"
        " ARRAY(SELECT pg_get_indexdef(i.indexrelid) ~ ' \\(v\\)' FROM pg_index i"
        "  WHERE i.indrelid = t.relid ORDER BY 1),"
        " ARRAY(SELECT conname::text FROM pg_constraint WHERE conrelid = t.relid"
        "  AND contype = 'c' ORDER BY 1)"
        " FROM pg_partition_tree('ev') t JOIN pg_class k ON k.oid = t.relid ORDER BY 1"
    ).fetchall()
    c.rollback()
    return out


def test_dropped_partitioned_table_is_recreated_with_its_partitions(conn, sql_exec, store) -> None:
    sql_exec(PARTITIONED)
    before, placed, layout = rows(conn, "ev"), _placed(conn), _layout(conn)
    snap.create(conn, "p", snap.table_specs(conn, ["ev"], []), store=store)
    found = snap.find(conn, "p", store=store)
    sql_exec("DROP TABLE ev")
    if store == "db":
        found = snap.find(conn, "p", store=store)
    done = restore(conn, found)
    assert any("recreated partition public.ev_2026q1_eu" in n for n in done.tables[0].notes)
    assert rows(conn, "ev") == before
    assert _placed(conn) == placed  # each row in its own partition again
    assert _layout(conn) == layout  # bounds, sub-partitions, the default, cloned indexes
    # The sequence went past the saved rows; constraints hold.
    sql_exec("INSERT INTO ev (at, region, v) VALUES ('2026-02-01', 'eu', 5)")
    assert rows(conn, "ev")[-1][0] == 61
    with pytest.raises(psycopg.errors.CheckViolation):
        sql_exec("INSERT INTO ev (at, region, v) VALUES ('2025-02-01', 'eu', 5000)")


def test_dropped_partition_is_recreated_and_refilled(conn, sql_exec, store) -> None:
    sql_exec(PARTITIONED)
    before, placed, layout = rows(conn, "ev"), _placed(conn), _layout(conn)
    snap.create(conn, "p", snap.table_specs(conn, ["ev"], []), store=store)
    sql_exec("DROP TABLE ev_2026q1_eu; DROP TABLE arch.ev_2025")
    sql_exec("UPDATE ev SET note = 'later' WHERE id = 60")  # a row of a partition still there
    found = snap.find(conn, "p", store=store)
    # A dry run says so, and runs no DDL (it would lock the table for the whole plan).
    plan = restore(conn, found, dry_run=True)
    assert (
        "partition arch.ev_2025 is gone: the restore recreates it (FOR VALUES FROM "
        "('2025-01-01') TO ('2026-01-01'))" in plan.tables[0].notes
    )
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert conn.execute("SELECT to_regclass('arch.ev_2025')").fetchone() == (None,)
    conn.rollback()
    done = restore(conn, found)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    notes = done.tables[0].notes
    assert (
        "recreated partition arch.ev_2025 (FOR VALUES FROM ('2025-01-01') TO "
        "('2026-01-01'))" in notes
    )
    assert any(n.startswith("recreated partition public.ev_2026q1_eu") for n in notes)
    assert rows(conn, "ev") == before  # the later write is a change since: restored too
    assert _placed(conn) == placed
    assert _layout(conn) == layout
    # A partition renamed since is not "missing": its range is taken, so it is not
    # recreated under the old name (noted), and the rows go back into the renamed one.
    sql_exec("ALTER TABLE ev_2026q1_eu RENAME TO ev_q1_europe; DELETE FROM ev_q1_europe")
    done = restore(conn, found)
    assert any(
        n.startswith("partition public.ev_2026q1_eu not recreated (") for n in done.tables[0].notes
    )
    assert rows(conn, "ev") == before
    assert _placed(conn) == [(t.replace("ev_2026q1_eu", "ev_q1_europe"), i) for t, i in placed]


def test_dropped_single_partition_snapshot_comes_back_as_a_partition(conn, sql_exec, store) -> None:
    sql_exec(PARTITIONED)
    before, placed, layout = rows(conn, "ev"), _placed(conn), _layout(conn)
    snap.create(conn, "p", snap.table_specs(conn, ["arch.ev_2025"], []), store=store)
    sql_exec("DROP TABLE arch.ev_2025")
    done = restore(conn, snap.find(conn, "p", store=store))
    assert (
        done.tables[0]
        .notes[0]
        .startswith(
            "recreated table arch.ev_2025 as a partition of public.ev (FOR VALUES FROM "
            "('2025-01-01')"
        )
    )
    assert rows(conn, "ev") == before
    assert _placed(conn) == placed
    assert _layout(conn) == layout
    # With its parent gone too, the rows still come back, in a plain table, and the
    # note says how to attach it.
    saved = rows(conn, "arch.ev_2025")
    sql_exec("DROP TABLE ev")
    done = restore(conn, snap.find(conn, "p", store=store))
    assert (
        "arch.ev_2025 was a partition of public.ev, which is gone too: recreated as a plain "
        "table; attach it with ALTER TABLE public.ev ATTACH PARTITION arch.ev_2025 FOR VALUES"
        " FROM ('2025-01-01') TO ('2026-01-01')"
    ) in done.tables[0].notes
    assert "created sequence public.ev_id_seq" in done.tables[0].notes
    assert rows(conn, "arch.ev_2025") == saved
    # Its default draws from the sequence again, past the saved rows.
    sql_exec("INSERT INTO arch.ev_2025 (at, region, v) VALUES ('2025-03-03', 'eu', 1)")
    assert rows(conn, "arch.ev_2025")[-1][0] == max(r[0] for r in saved) + 1


def test_partitioned_table_from_a_manifest_without_its_layout_is_refused(
    conn, sql_exec, tmp_path
) -> None:
    sql_exec(PARTITIONED)
    store = str(tmp_path / "store")
    snap.create(conn, "p", snap.table_specs(conn, ["ev"], []), store=store)
    manifest = Path(store) / "p" / "manifest.json"
    doc = json.loads(manifest.read_text())
    for key in ("partition_by", "partitions"):  # as written before layouts were kept
        doc["items"][0]["definition"].pop(key)
    manifest.write_text(json.dumps(doc))
    sql_exec("DROP TABLE ev")
    with pytest.raises(RecoveryError, match="does not keep its partition layout"):
        restore(conn, snap.find(None, "p", store=store))
    conn.rollback()
    assert conn.execute("SELECT to_regclass('ev')").fetchone() == (None,)
    conn.rollback()


def test_dropped_partitioned_table_into_a_second_database(
    conn, sql_exec, second_db, tmp_path
) -> None:
    sql_exec(PARTITIONED)
    before, placed, layout = rows(conn, "ev"), _placed(conn), _layout(conn)
    store = str(tmp_path / "store")
    snap.create(conn, "p", snap.table_specs(conn, ["ev"], []), store=store)
    with connect(second_db) as c2:
        restore(c2, snap.find(None, "p", store=store))
        assert rows(c2, "ev") == before
        assert _placed(c2) == placed
        assert _layout(c2) == layout
