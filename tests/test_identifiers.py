"""Identifiers: any table, schema or column name PostgreSQL allows is captured and undone.

Names are drawn from SQL reserved words, every name the generated SQL and PL/pgSQL
declare or use (variables of the capture function, aliases and columns of the undo
engine's statements), names with quotes, spaces, dots, percent signs, dollars,
backslashes, braces, unicode and mixed case, and names of 63 bytes (PostgreSQL's
limit, multibyte too).  Each drawn table gets tagged INSERT, UPDATE, key UPDATE,
DELETE and TRUNCATE, each checked against an uncaptured twin; then `rollback` by
the tag must bring back every row exactly, through the library or the CLI.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from recovery import Selector, changes, diff, disable_capture, enable_capture, rollback
from recovery.cli import main
from recovery.db import connect

RESERVED = [
    "select",
    "user",
    "order",
    "table",
    "from",
    "group",
    "check",
    "default",
    "where",
    "and",
    "or",
    "not",
    "null",
    "true",
    "false",
    "limit",
    "offset",
    "column",
    "primary",
    "references",
    "all",
    "any",
    "as",
    "case",
    "end",
    "cast",
    "current_user",
    "session_user",
    "distinct",
    "union",
    "window",
    "with",
    "desc",
    "asc",
    "constraint",
    "foreign",
    "unique",
    "grant",
    "to",
    "using",
    "on",
    "only",
    "returning",
    "into",
    "do",
    "in",
    "is",
    "like",
    "join",
    "left",
    "natural",
    "lateral",
    "array",
    "both",
    "leading",
    "trailing",
    "analyze",
    "collate",
    "fetch",
    "for",
    "having",
    "when",
    "else",
    "then",
    "values",
    "set",
    "update",
    "delete",
    "insert",
    "truncate",
    "begin",
    "declare",
    "if",
    "loop",
    "raise",
    "perform",
    "execute",
    "return",
    "exception",
    "strict",
    "current_date",
    "localtime",
    "variadic",
]
# Names that recovery/sql/schema.sql (build_capture and the generated capture
# functions), undo/ (net_sql, apply_sql), capture/journal.py and restore/ declare or use.
INTERNAL = [
    "s",
    "n",
    "r",
    "c",
    "j",
    "a",
    "b",
    "t",
    "k",
    "d",
    "m",
    "p",
    "q",
    "x",
    "g",
    "e",
    "st",
    "ev",
    "bt",
    "cur",
    "kev",
    "kev0",
    "k0",
    "k1",
    "b0",
    "b1",
    "a0",
    "a1",
    "m0",
    "tc0",
    "ec0",
    "e0",
    "ln0",
    "lnx",
    "lost0",
    "base0",
    "r0",
    "o0",
    "m_0",
    "eqt_0",
    "eqe_0",
    "eqf_0",
    "lost_0",
    "ref0",
    "rec_gen",
    "rec_stmt",
    "rec_ord",
    "rec_img",
    "rec_old",
    "rec_new",
    "tg_op",
    "tg_relid",
    "tg_table_name",
    "tg_table_schema",
    "new",
    "old",
    "nrows",
    "stmt_id",
    "table_id",
    "txid",
    "at",
    "db_user",
    "app",
    "tag",
    "pos",
    "chosen",
    "simple",
    "gen",
    "op",
    "depth",
    "found",
    "bn",
    "action",
    "done",
    "status",
    "ord",
    "has_a",
    "has_b",
    "has_before",
    "has_after",
    "t_present",
    "e_present",
    "lost_row",
    "n_changes",
    "kchg",
    "cur_present",
    "now_cols",
    "lost_cols",
    "conflict_cols",
    "_none",
    "row_",
    "tid",
    "rel",
    "fname",
    "tgt",
    "body",
    "guard",
    "hwm",
    "missing",
    "jparent",
    "jleaf",
    "typ",
    "relid",
    "attnum",
    "cap",
    "per",
    "xid",
    "total",
    "item",
    "tname",
    "bare",
    "tcap",
    "setting",
    "prev",
    "stmt",
    "stmt_seq",
    "captured",
    "columns",
    "meta",
    "events",
    "operations",
    "snapshots",
    "j_1",
    "j_1_1",
    "stmt_1",
    "_rb_1",
    "_rs_1",
    "undo_1_1",
    "_snapdata_1",
    "_where_check",
    "value",
    "key",
    "kind",
    "detail",
    "shape",
]
ODD = [
    'a"b',
    '"',
    '""',
    'a""b',
    "Mixed Table",
    " lead",
    "trail ",
    "a b",
    "a.b",
    ".",
    "a.b.c",
    "%s",
    "%%",
    "%",
    "%I",
    "%L",
    "%1$s",
    "$1",
    "$$",
    "$b$",
    "$fn$",
    "a\\b",
    "\\",
    "'",
    "it's",
    "''",
    "{}",
    "{s}",
    "{0}",
    "--",
    "/*",
    "*/",
    ";",
    "a;b",
    "(",
    ")",
    ",",
    "=",
    "ü",
    "日本",
    "Ünïcödé",
    "Ab",
    "ALLCAPS",
    "mIxEd",
    "1abc",
    "42",
    "0",
    "_",
    "__",
    "tab\tname",
    "new\nline",
    "a/b",
    "../x",
    "..",
    "/",
    "~",
    "*",
    "?",
    "C:\\x",
    # 63 bytes, PostgreSQL's limit (NAMEDATALEN - 1), in one- and multibyte characters.
    "x" * 63,
    "ü" * 31 + "x",
    "日" * 21,
    "a" + "日" * 20 + "b",
    'q"' * 31 + "q",
    "%s" * 31 + "%",
    "A" * 61 + "ü",
]
SYSTEM_COLUMNS = {"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"}
POOL = list(dict.fromkeys(RESERVED + INTERNAL + ODD))

# Characters for freely drawn names: the tricky ones, letters, some unicode.
ALPHABET = st.sampled_from(list("ab_Z09 .\"'%$\\{}-;/üß日本\t") + ["é", "Ω", "😀"])


def fits(name: str) -> bool:
    """A name PostgreSQL keeps as written: 1 to 63 bytes, no NUL."""
    return 0 < len(name.encode()) <= 63 and "\x00" not in name


names = st.one_of(
    st.sampled_from(POOL),
    st.text(ALPHABET, min_size=1, max_size=63).filter(fits),
)
KINDS = ("int", "text", "numeric", "jsonb", "enum", "boolean")


@dataclass(frozen=True)
class Case:
    schema: str
    table: str
    enum: str
    key: tuple[tuple[str, str], ...]  # (column, "int" | "text")
    values: tuple[tuple[str, str], ...]  # (column, one of KINDS)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    schema = draw(names.filter(lambda n: not n.startswith("pg_") and n not in TAKEN_SCHEMAS))
    table = draw(names)
    enum = draw(names.filter(lambda n: n not in (table, "_" + table)))
    nkey = draw(st.integers(1, 2))
    nval = draw(st.integers(1, 3))
    cols = draw(
        st.lists(
            names.filter(lambda n: n not in SYSTEM_COLUMNS),
            min_size=nkey + nval,
            max_size=nkey + nval,
            unique=True,
        )
    )
    key = tuple((c, draw(st.sampled_from(("int", "text")))) for c in cols[:nkey])
    values = tuple((c, draw(st.sampled_from(KINDS))) for c in cols[nkey:])
    return Case(schema, table, enum, key, values)


TWIN = "recovery twin"  # the uncaptured copy of each drawn table lives here
TAKEN_SCHEMAS = {"public", "_recovery", "information_schema", TWIN}
LABELS = ["sad", "it's ok", 'Happy "Ü"', "%s"]

# -- helpers ------------------------------------------------------------------------------


def _i(*parts: str) -> sql.Identifier:
    return sql.Identifier(*parts)


def col_type(case: Case, kind: str) -> sql.Composable:
    if kind == "enum":
        return _i(case.schema, case.enum)
    return sql.SQL(kind)


def key_value(kind: str, n: int, pos: int) -> sql.Composable:
    if kind == "int":
        return sql.Literal(n if pos == 0 else n % 2)
    return sql.Literal(f"k{n}'%s\"" if pos == 0 else ("x", "y")[n % 2])


def cell(case: Case, kind: str, n: int) -> sql.Composable:
    """The value of a value column of this kind in row n (NULL in some rows)."""
    if kind == "int":
        v: object = None if n == 3 else n * 7 - 20
    elif kind == "text":
        v = ["it's", "", 'a"b', "%s", "日本", None, "tab\t \\", "x"][n % 8]
    elif kind == "numeric":
        v = None if n == 4 else f"{n}.{n}0"
    elif kind == "jsonb":
        v = None if n == 2 else json.dumps({"k": n, "s": "x  y", "a": [1, None]})
    elif kind == "enum":
        v = None if n == 5 else LABELS[n % len(LABELS)]
    else:
        v = None if n == 5 else n % 2 == 0
    return sql.SQL("{}::{}").format(sql.Literal(v), col_type(case, kind))


def changed(case: Case, name: str, kind: str) -> sql.Composable:
    """An expression that changes a value of this kind (NULLs too)."""
    c = _i(name)
    return {
        "int": sql.SQL("coalesce({}, 0) + 1").format(c),
        "text": sql.SQL("coalesce({}, '') || '!'").format(c),
        "numeric": sql.SQL("coalesce({}, 0) * 2 + 0.10").format(c),
        "jsonb": sql.SQL("jsonb_build_object('was', {})").format(c),
        "enum": sql.SQL("(CASE WHEN {} = 'sad' THEN {} ELSE 'sad' END)::{}").format(
            c, sql.Literal(LABELS[2]), col_type(case, "enum")
        ),
        "boolean": sql.SQL("NOT coalesce({}, false)").format(c),
    }[kind]


def ddl(case: Case, schema: str) -> sql.Composable:
    cols = [sql.SQL("{} {} NOT NULL").format(_i(n), sql.SQL(k)) for n, k in case.key]
    cols += [sql.SQL("{} {}").format(_i(n), col_type(case, k)) for n, k in case.values]
    return sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY ({}))").format(
        _i(schema, case.table),
        sql.SQL(", ").join(cols),
        sql.SQL(", ").join(_i(n) for n, _ in case.key),
    )


def insert(case: Case, schema: str, ns: range) -> sql.Composable:
    rows = [
        sql.SQL("({})").format(
            sql.SQL(", ").join(
                [key_value(k, n, p) for p, (_, k) in enumerate(case.key)]
                + [cell(case, k, n) for _, k in case.values]
            )
        )
        for n in ns
    ]
    return sql.SQL("INSERT INTO {} VALUES {}").format(
        _i(schema, case.table), sql.SQL(", ").join(rows)
    )


def writes(case: Case, schema: str) -> list[sql.Composable]:
    """The tagged writes: INSERT, UPDATE of the values, UPDATE of the key, DELETE, TRUNCATE."""
    t = _i(schema, case.table)
    k0, k0kind = case.key[0]
    klast, klastkind = case.key[-1]
    pick = sql.SQL("{}::text IN ({}, {})").format(
        _i(k0),
        sql.Literal(str(1 if k0kind == "int" else "k1'%s\"")),
        sql.Literal(str(4 if k0kind == "int" else "k4'%s\"")),
    )
    odd = sql.SQL("{}::text IN ({}, {}, {})").format(
        _i(k0), *[sql.Literal(str(n if k0kind == "int" else f"k{n}'%s\"")) for n in (1, 3, 5)]
    )
    newkey = (
        sql.SQL("{} + 100").format(_i(klast))
        if klastkind == "int"
        else sql.SQL("{} || '~'").format(_i(klast))
    )
    gone = sql.SQL("{}::text IN ({}, {})").format(
        _i(k0), *[sql.Literal(str(n if k0kind == "int" else f"k{n}'%s\"")) for n in (6, 8)]
    )
    return [
        insert(case, schema, range(7, 9)),
        sql.SQL("UPDATE {} SET {} WHERE {}").format(
            t,
            sql.SQL(", ").join(
                sql.SQL("{} = {}").format(_i(n), changed(case, n, k)) for n, k in case.values
            ),
            odd,
        ),
        sql.SQL("UPDATE {} SET {} = {} WHERE {}").format(t, _i(klast), newkey, pick),
        sql.SQL("DELETE FROM {} WHERE {}").format(t, gone),
        sql.SQL("TRUNCATE {}").format(t),
    ]


def state(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    """Every row as its text form, sorted (the whole table, byte for byte)."""
    conn.rollback()
    out = sorted(
        r[0]
        for r in conn.execute(sql.SQL("SELECT ROW(x.*)::text FROM {} x").format(_i(schema, table)))
    )
    conn.rollback()
    return out


def qualified(schema: str, table: str) -> str:
    """The table's name as SQL writes it, as `capture enable` and `--table` take it."""
    return _i(schema, table).as_string(None)


def run_cli(url: str, *args: str) -> Result:
    res = CliRunner().invoke(main, [*args, "--db", url], catch_exceptions=False)
    assert res.exit_code == 0, (args, res.exit_code, res.stdout, res.stderr)
    return res


def journal(conn: psycopg.Connection, tag: str) -> list[tuple[str, str, int]]:
    conn.rollback()
    out = conn.execute(
        "SELECT c.schema_name || '.' || c.table_name, st.op::text, st.nrows::int "
        "FROM _recovery.stmt st JOIN _recovery.captured c USING (table_id) "
        "WHERE st.tag = %s ORDER BY st.stmt_id",
        [tag],
    ).fetchall()
    conn.rollback()
    return out


def triggers(conn: psycopg.Connection, schema: str, table: str) -> list[tuple[str, str]]:
    conn.rollback()
    out = conn.execute(
        "SELECT tgname::text, tgenabled::text FROM pg_trigger t JOIN pg_class c "
        "ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND NOT t.tgisinternal ORDER BY 1",
        [schema, table],
    ).fetchall()
    conn.rollback()
    return out


def captured(conn: psycopg.Connection) -> list[tuple[str, str, bool]]:
    conn.rollback()
    out = conn.execute(
        "SELECT schema_name, table_name, enabled FROM _recovery.captured ORDER BY table_id"
    ).fetchall()
    conn.rollback()
    return out


CAPTURE_TRIGGERS = [
    ("_recovery_capture_b", "A"),
    ("_recovery_capture_d", "A"),
    ("_recovery_capture_i", "A"),
    ("_recovery_capture_t", "A"),
    ("_recovery_capture_u", "A"),
]

# -- one database for the whole file: a fresh schema per example -----------------------------


def _with_db(url: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


@pytest.fixture(scope="module")
def ident_url(server_url: str, template: str) -> Iterator[str]:
    name = f"ident_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _with_db(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("snapshots"))


@pytest.fixture(scope="module")
def ident_conn(ident_url: str) -> Iterator[psycopg.Connection]:
    c = connect(ident_url)
    try:
        yield c
    finally:
        c.close()


_tags = itertools.count()


def round_trip(url: str, conn: psycopg.Connection, case: Case, via: str, store_dir: str) -> None:
    """Create the drawn table (and its uncaptured twin), capture it, write, undo, compare."""
    tag = f"ident-{next(_tags)}"
    name = qualified(case.schema, case.table)
    with psycopg.connect(url, autocommit=True) as app:
        try:
            app.execute(
                sql.SQL("CREATE SCHEMA {}; CREATE SCHEMA {}").format(_i(case.schema), _i(TWIN))
            )
            if any(k == "enum" for _, k in case.values):
                app.execute(
                    sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
                        _i(case.schema, case.enum), sql.SQL(", ").join(map(sql.Literal, LABELS))
                    )
                )
            for schema in (case.schema, TWIN):
                app.execute(ddl(case, schema))
                app.execute(insert(case, schema, range(1, 7)))
            before = state(conn, case.schema, case.table)
            assert before == state(conn, TWIN, case.table) and len(before) == 6

            if via == "api":
                assert enable_capture(conn, [name]) == [f"{case.schema}.{case.table}"]
            else:
                run_cli(url, "capture", "enable", name)
            assert triggers(conn, case.schema, case.table) == CAPTURE_TRIGGERS

            app.execute(sql.SQL("SET recovery.tag = {}").format(sql.Literal(tag)))
            counts = []
            for stmt, plain in zip(writes(case, case.schema), writes(case, TWIN)):
                # The same write on the uncaptured twin: same row count, same rows after.
                present = len(state(conn, case.schema, case.table))
                twin = app.execute(plain)
                cur = app.execute(stmt)
                assert cur.rowcount == twin.rowcount
                assert state(conn, case.schema, case.table) == state(conn, TWIN, case.table)
                counts.append(present if cur.rowcount == -1 else cur.rowcount)  # TRUNCATE
            app.execute("RESET recovery.tag")
            label = f"{case.schema}.{case.table}"
            assert journal(conn, tag) == [(label, op, n) for op, n in zip("IUUDT", counts) if n]
            assert state(conn, case.schema, case.table) == []

            # What the journal shows of them (journal.py's SQL, over these names).
            summary = changes(conn, Selector(tags=(tag,)))
            assert (summary.statements, summary.rows) == (len(counts), sum(counts))
            rows_changed = diff(conn, Selector(tags=(tag,)), limit=1000)
            assert len(rows_changed) == sum(counts)
            assert {frozenset(r.key) for r in rows_changed} == {frozenset(n for n, _ in case.key)}

            if via == "cli":
                run_cli(url, "rollback", "--tag", tag, "--yes")
            else:
                report = rollback(
                    conn, Selector(tags=(tag,)), batch_size=2 if via == "batched" else None
                )
                assert (report.status, report.conflicts) == ("done", 0)
            assert state(conn, case.schema, case.table) == before
            # The same undo again finds everything as it should be: changes nothing.
            again = rollback(conn, Selector(tags=(tag,)))
            assert (again.status, again.conflicts) == ("done", 0)
            assert sum(t.inserted + t.updated + t.deleted for t in again.tables) == 0
            assert state(conn, case.schema, case.table) == before

            # A snapshot of the table, the same damage again, and a restore from it
            # (the restore's SQL; the directory store loads through COPY).
            snap = f"snap-{tag}"
            store = ["--store", store_dir] if via == "cli" else []
            run_cli(url, "snapshot", "create", snap, "--table", name, *store)
            for stmt in writes(case, case.schema)[:-1]:
                app.execute(stmt)
            assert state(conn, case.schema, case.table) != before
            run_cli(url, "restore", snap, "--table", name, "--delete-new", "--yes", *store)
            assert state(conn, case.schema, case.table) == before

            if via == "cli":
                run_cli(url, "capture", "disable", name, "--yes")
            else:
                assert disable_capture(conn, [name]) == [label]
            assert state(conn, case.schema, case.table) == before
            assert triggers(conn, case.schema, case.table) == []
        finally:
            conn.rollback()
            app.execute("RESET recovery.tag")
            app.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(_i(TWIN)))
            app.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(_i(case.schema)))


def simple(name: str, *, schema: str = "s") -> Case:
    """A case where `name` is the table and its key column, beside a column of each kind."""
    return Case(
        schema,
        name,
        "mood",
        ((name, "int"),),
        tuple((f"v{n}", kind) for n, kind in enumerate(KINDS)),
    )


KNOWN = [
    "s",
    "n",
    "r",
    "c",
    "t",
    "rec_img",
    'a"b',
    "Mixed Table",
    "x" * 63,
    "ü" * 31 + "x",
    "%s",
    "$1",
    "../x",
]


@pytest.mark.parametrize("via", ["api", "batched", "cli"])
@pytest.mark.parametrize("name", KNOWN)
def test_known_bad_names(ident_url, ident_conn, store_dir, name, via):
    round_trip(ident_url, ident_conn, simple(name), via, store_dir)


@pytest.mark.parametrize("via", ["api", "batched", "cli"])
@pytest.mark.parametrize(
    "case",
    [
        # Every column is a name the capture function or the undo SQL uses itself.
        Case(
            "s",
            "t",
            "mood",
            (("s", "int"), ("n", "text")),
            (("r", "numeric"), ("c", "jsonb"), ("rec_img", "enum")),
        ),
        Case(
            "rec_old",
            "rec_new",
            "j",
            (("k0", "int"),),
            (("b0", "boolean"), ("rec_stmt", "int"), ("tg_op", "text")),
        ),
        Case(
            "order",
            "select",
            "user",
            (("table", "text"), ("from", "int")),
            (("group", "enum"), ("check", "boolean"), ("default", "jsonb")),
        ),
        Case("a.b", 'a"b', "%s", (("$1", "int"),), (("%%", "text"), ("a\\b", "enum"))),
        Case(
            "日" * 21,
            "ü" * 31 + "x",
            "x" * 63,
            (("y" * 63, "text"), ("日本", "int")),
            (("Mixed Table", "numeric"), ("z" * 61 + "ü", "boolean")),
        ),
        Case(
            "_recovery x",
            "stmt",
            "captured",
            (("stmt_id", "int"),),
            (("rec_gen", "int"), ("rec_ord", "text"), ("depth", "boolean")),
        ),
    ],
    ids=["internal-vars", "transition-tables", "reserved", "punctuation", "long", "journal"],
)
def test_chosen_cases(ident_url, ident_conn, store_dir, case, via):
    round_trip(ident_url, ident_conn, case, via, store_dir)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
@given(case=cases(), via=st.sampled_from(["api", "batched", "cli"]))
@example(case=simple("s"), via="api")
@example(case=simple('a"b', schema="Mixed Table"), via="cli")
@example(
    case=Case("select", "select", "user", (("select", "int"),), (("x", "int"),)), via="batched"
)  # a column named like the alias of a query over the table
def test_any_names_round_trip(ident_url, ident_conn, case, via, store_dir):
    round_trip(ident_url, ident_conn, case, via, store_dir)


# -- the CLI: several names in one command, one needing quotes -------------------------------

A_AND_MIXED = """
CREATE TABLE a (id int PRIMARY KEY, v text);
CREATE TABLE "Mixed Table" ("Id" int PRIMARY KEY, "Some Value" text, n int);
INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 5) g;
INSERT INTO "Mixed Table" SELECT g, 'm' || g, g FROM generate_series(1, 5) g;
"""
DAMAGE = (
    "UPDATE a SET v = 'bad' WHERE id < 3; DELETE FROM a WHERE id = 5; "
    "INSERT INTO a VALUES (9, 'new'); "
    'UPDATE "Mixed Table" SET "Some Value" = NULL, n = -n WHERE "Id" > 2; '
    'DELETE FROM "Mixed Table" WHERE "Id" = 1; '
    "INSERT INTO \"Mixed Table\" VALUES (10, 'new', 0)"
)


def both(conn: psycopg.Connection) -> tuple[list[str], list[str]]:
    return state(conn, "public", "a"), state(conn, "public", "Mixed Table")


@pytest.mark.parametrize("names", [("a", "Mixed Table"), ("Mixed Table", "a")])
def test_cli_names_needing_quotes_after_plain_ones(cli, conn, sql_exec, names):
    sql_exec(A_AND_MIXED)
    before = both(conn)

    def ok(*args: str) -> Result:
        res = cli(*args)
        assert res.exit_code == 0, (args, res.stdout, res.stderr)
        return res

    ok("capture", "enable", *names)
    assert sorted(captured(conn)) == [("public", "Mixed Table", True), ("public", "a", True)]
    assert triggers(conn, "public", "a") == CAPTURE_TRIGGERS
    assert triggers(conn, "public", "Mixed Table") == CAPTURE_TRIGGERS

    ok("capture", "disable", *names, "--yes")
    assert sorted(captured(conn)) == [("public", "Mixed Table", False), ("public", "a", False)]
    assert triggers(conn, "public", "a") == triggers(conn, "public", "Mixed Table") == []

    ok("capture", "enable", *names)
    assert sorted(captured(conn)) == [("public", "Mixed Table", True), ("public", "a", True)]
    sql_exec(f"SET recovery.tag = 'bad'; {DAMAGE}")
    damaged = both(conn)
    assert damaged[0] != before[0] and damaged[1] != before[1]
    ok("rollback", "--table", names[0], "--table", names[1], "--yes")
    assert both(conn) == before

    ok("snapshot", "create", "snap", "--table", names[0], "--table", names[1])
    conn.rollback()
    saved = conn.execute(
        "SELECT i->>'schema', i->>'table', (i->>'rows')::int FROM "
        "_recovery.snapshots, jsonb_array_elements(manifest->'items') i "
        "WHERE name = 'snap' ORDER BY 2"
    ).fetchall()
    conn.rollback()
    assert saved == [("public", "Mixed Table", 5), ("public", "a", 5)]
    sql_exec(DAMAGE)
    assert both(conn) == damaged
    ok("restore", "snap", "--table", names[0], "--table", names[1], "--yes", "--delete-new")
    assert both(conn) == before
