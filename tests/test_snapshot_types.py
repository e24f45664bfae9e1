"""Snapshots of columns whose type is not built in (enums, domains, composites, ranges,
arrays of them, extension types): the database store saves them as text, so the
migration a snapshot protects can drop the type; restore casts them back, and says
how to recreate a type that is gone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest
import zstandard
from click.testing import Result

from recovery.errors import ConflictError
from recovery.restore import restore
from recovery.snapshot import checksum, manifest
from recovery.snapshot import stores as snap

from .conftest import rows

S1 = """
CREATE TYPE mood2 AS ENUM ('ok', 'it''s "odd"', 'bad');
CREATE TABLE s1 (id int PRIMARY KEY, name text, m mood2);
INSERT INTO s1 VALUES (1, 'a', 'ok'), (2, 'b', 'it''s "odd"'), (3, 'c', NULL);
"""
MIGRATION = "ALTER TABLE s1 DROP COLUMN m;\nDROP TYPE mood2;\n"
CREATE_MOOD2 = "CREATE TYPE \"public\".\"mood2\" AS ENUM ('ok', 'it''s \"odd\"', 'bad')"
BEFORE = [(1, "a", "ok"), (2, "b", 'it\'s "odd"'), (3, "c", None)]


@pytest.fixture(params=["db", "dir"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    return [] if request.param == "db" else ["--store", str(tmp_path / "store")]


def error_line(res: Result, code: int, *needles: str) -> str:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def columns(conn: psycopg.Connection, table: str) -> list[tuple[str, str]]:
    conn.rollback()
    out = conn.execute(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum",
        [table],
    ).fetchall()
    conn.rollback()
    return out


def snapshot_column_types(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    """Every column of every snapshot table of the database store, with its type."""
    conn.rollback()
    out = conn.execute(
        "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod)"
        " FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid"
        " WHERE c.relnamespace = '_recovery'::regnamespace AND c.relname LIKE 'snap\\_%%'"
        " AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1, a.attnum"
    ).fetchall()
    conn.rollback()
    return out


def test_a_migration_dropping_a_type_runs_and_restore_asks_for_the_type(
    conn, sql_exec, cli, tmp_path, store
) -> None:
    sql_exec(S1)
    mig = tmp_path / "migration.sql"
    mig.write_text(MIGRATION)
    res = cli("snapshot", "create", "pre-42", "--for-sql", str(mig), "--json", *store)
    assert res.exit_code == 0, res.output
    info = snap.find(conn, "pre-42", store=store[1] if store else None)
    (item,) = info.manifest["items"]
    by_name = {c["name"]: c for c in item["columns"]}
    # The manifest keeps the original type, and says how the database store holds it.
    assert by_name["m"]["type"] == "public.mood2"
    assert by_name["m"]["requires"] == [
        {"type": "public.mood2", "create": CREATE_MOOD2, "labels": ["ok", 'it\'s "odd"', "bad"]}
    ]
    if not store:
        assert by_name["m"]["stored"] == "text" and "stored" not in by_name["id"]
        assert snapshot_column_types(conn) == [
            ("snap_1_1", "id", "integer"),
            ("snap_1_1", "m", "text"),
        ]
    else:
        assert "stored" not in by_name["m"]
    # The migration the snapshot protects runs.
    sql_exec(MIGRATION)
    assert rows(conn, "s1") == [(1, "a"), (2, "b"), (3, "c")]
    # The type is gone: refused before anything changes, with the statement to run.
    for args in (("--dry-run",), ("--yes",)):
        line = error_line(
            cli("restore", "pre-42", *args, *store),
            1,
            "column m of public.s1",
            "public.mood2",
            "does not exist now",
            CREATE_MOOD2,
        )
        assert rows(conn, "s1") == [(1, "a"), (2, "b"), (3, "c")]
        assert columns(conn, "s1") == [("id", "integer"), ("name", "text")]
    fix = re.search(r"create it again \((.*)\), then restore", line)
    assert fix is not None and fix.group(1) == CREATE_MOOD2
    sql_exec(fix.group(1))
    out = cli("restore", "pre-42", "--yes", *store)
    assert out.exit_code == 0, out.output
    assert rows(conn, "s1") == BEFORE
    assert columns(conn, "s1") == [("id", "integer"), ("name", "text"), ("m", "mood2")]
    # Restoring again writes nothing.
    again = cli("restore", "pre-42", "--yes", "--json", *store)
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert [(t["updated"], t["inserted"], t["already"]) for t in doc["tables"]] == [(0, 0, 3)]
    assert rows(conn, "s1") == BEFORE


TYPES = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN dmood AS mood CHECK (VALUE <> 'sad');
CREATE TYPE reading AS (v float8, d date);
CREATE TYPE moodpair AS (a mood, b int);
CREATE TYPE moodrange AS RANGE (subtype = mood);
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TABLE t (id int PRIMARY KEY, e mood, ea mood[], dm dmood, r reading, mp moodpair,
                mr moodrange, pi posint, plain text, n numeric);
"""
# Written by a session whose output settings differ from the snapshot's.
WRITE = """
SET datestyle = 'SQL, DMY'; SET extra_float_digits = 0;
INSERT INTO t VALUES
  (1, 'ok', '{sad,happy}', 'happy', ROW(1::float8 / 3, '03/04/2020'), ROW('sad', 1),
   '[sad,happy)', 7, 'x', 1.50),
  (2, NULL, '{}', NULL, ROW(-0::float8, NULL), NULL, 'empty', NULL, NULL, NULL),
  (3, 'happy', '{NULL,ok}', 'ok', ROW('Infinity', 'infinity'), ROW(NULL, NULL),
   '(,)', 1, 'it''s', -0.0);
"""
# As text under the snapshot's settings (ISO dates, exact floats).
AS_TEXT = [
    (
        "1",
        "ok",
        "{sad,happy}",
        "happy",
        "(0.3333333333333333,2020-04-03)",
        "(sad,1)",
        "[sad,happy)",
        "7",
        "x",
        "1.50",
    ),
    ("2", None, "{}", None, "(-0,)", None, "empty", None, None, None),
    ("3", "happy", "{NULL,ok}", "ok", "(Infinity,infinity)", "(,)", "(,)", "1", "it's", "0.0"),
]
TEXT_ROWS = (
    "SELECT id::text, e::text, ea::text, dm::text, r::text, mp::text, mr::text,"
    " pi::text, plain, n::text FROM {} ORDER BY id"
)


def text_rows(conn: psycopg.Connection, table: str = "t") -> list[tuple[str | None, ...]]:
    conn.rollback()
    with conn.transaction():
        manifest.set_output(conn)
        out = conn.execute(TEXT_ROWS.format(table)).fetchall()  # type: ignore[arg-type]
    conn.rollback()
    return out


def test_drop_type_cascade_leaves_the_saved_columns(conn, sql_exec) -> None:
    sql_exec(TYPES)
    sql_exec(WRITE)
    assert text_rows(conn) == AS_TEXT
    info = snap.create(conn, "pre", snap.table_specs(conn, ["t"], []))
    stored = {c["name"]: c.get("stored") for c in info.manifest["items"][0]["columns"]}
    assert stored == {
        "id": None,
        "e": "text",
        "ea": "text",
        "dm": "text",
        "r": "text",
        "mp": "text",
        "mr": "text",
        "pi": "integer",
        "plain": None,
        "n": None,
    }
    # Nothing in _recovery depends on an application type: every one can be dropped
    # (CASCADE takes the application's columns, not the snapshot's).
    sql_exec(
        "DROP TYPE moodpair CASCADE; DROP TYPE mood CASCADE; DROP TYPE reading CASCADE;"
        " DROP DOMAIN posint CASCADE"
    )
    assert columns(conn, "t") == [("id", "integer"), ("plain", "text"), ("n", "numeric")]
    assert snapshot_column_types(conn) == [
        ("snap_1_1", c, t)
        for c, t in [
            ("id", "integer"),
            ("e", "text"),
            ("ea", "text"),
            ("dm", "text"),
            ("r", "text"),
            ("mp", "text"),
            ("mr", "text"),
            ("pi", "integer"),
            ("plain", "text"),
            ("n", "numeric"),
        ]
    ]
    assert text_rows(conn, "_recovery.snap_1_1") == AS_TEXT
    assert snap.verify(conn, snap.find(conn, "pre")).ok
    # The first column whose type is gone, with every type it needs, dependencies first.
    with pytest.raises(snap.RecoveryError) as exc:
        restore(conn, snap.find(conn, "pre"))
    msg = str(exc.value)
    assert "column e of public.t has type public.mood" in msg
    assert """CREATE TYPE "public"."mood" AS ENUM ('sad', 'ok', 'happy')""" in msg
    conn.rollback()
    needs = {
        c["name"]: [n["type"] for n in c.get("requires", [])]
        for c in info.manifest["items"][0]["columns"]
    }
    assert needs == {
        "id": [],
        "e": ["public.mood"],
        "ea": ["public.mood"],
        "dm": ["public.mood", "public.dmood"],
        "r": ["public.reading"],
        "mp": ["public.mood", "public.moodpair"],
        "mr": ["public.mood", "public.moodrange"],
        "pi": ["public.posint"],
        "plain": [],
        "n": [],
    }
    # Each type created again from the manifest: restore brings every column back.
    made: list[str] = []
    for c in info.manifest["items"][0]["columns"]:
        for n in c.get("requires", []):
            if n["type"] not in made:
                sql_exec(n["create"])
                made.append(n["type"])
    rep = restore(conn, snap.find(conn, "pre"))
    conn.commit()
    assert rep.tables[0].updated == 3
    assert text_rows(conn) == AS_TEXT


def _damage_file(path: Path) -> None:
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
        text = r.read()
    path.write_bytes(zstandard.ZstdCompressor().compress(text.replace(b"happy", b"sad", 1)))


@pytest.mark.parametrize("where", ["db", "db-second-session", "db-no-second-session", "dir"])
def test_checksums_and_verify_agree_for_text_stored_columns(
    conn, sql_exec, tmp_path, monkeypatch, where
) -> None:
    sql_exec(TYPES)
    sql_exec(WRITE)
    seen: list[tuple[int, str, str] | None] = []
    if where == "db-second-session":
        real = checksum.SideChecksum.result

        def spy(self):  # type: ignore[no-untyped-def]
            out = real(self)
            seen.append(out)
            return out

        monkeypatch.setattr(checksum.SideChecksum, "MIN_PAGES", 0)
        monkeypatch.setattr(checksum.SideChecksum, "result", spy)
    elif where == "db-no-second-session":

        def refuse(*_a, **_k):  # type: ignore[no-untyped-def]
            raise psycopg.OperationalError("too many connections")

        monkeypatch.setattr(checksum.SideChecksum, "MIN_PAGES", 0)
        monkeypatch.setattr(snap.psycopg, "connect", refuse)
    store = str(tmp_path / "store") if where == "dir" else None
    info = snap.create(conn, "pre", snap.table_specs(conn, ["t"], []), store=store)
    monkeypatch.undo()  # (psycopg.connect again, for the writes below)
    found = snap.find(conn, "pre", store=store)
    assert snap.verify(conn, found).ok
    (item,) = found.manifest["items"]
    if where == "db-second-session":
        assert seen and seen[0] is not None  # the second session's checksum was taken
        assert (seen[0][0], seen[0][1], seen[0][2]) == (
            3,
            item["checksum"],
            item["checksum_method"],
        )
    if store is None:
        # The checksum recomputed over the copy is the one recorded, whoever computed it.
        with conn.transaction():
            manifest.set_output(conn)
            assert checksum.db_checksum(conn, "_recovery", item["data"]) == (
                3,
                item["checksum"],
                item["checksum_method"],
            )
        conn.commit()
        assert text_rows(conn, f"_recovery.{item['data']}") == AS_TEXT
    # Changed, deleted rows: restore brings back exactly what was saved.
    sql_exec(
        "UPDATE t SET e = 'sad', ea = '{ok}', dm = NULL, r = ROW(2, '2021-01-01'),"
        " mp = ROW('ok', 2), mr = '[ok,ok]', pi = 9, plain = 'y' WHERE id = 1;"
        " DELETE FROM t WHERE id = 3"
    )
    rep = restore(conn, found)
    conn.commit()
    assert (rep.tables[0].updated, rep.tables[0].inserted) == (1, 1)
    assert text_rows(conn) == AS_TEXT
    assert info.rows == 3
    # A damaged copy is still detected.
    if store is None:
        sql_exec(f"UPDATE _recovery.{item['data']} SET e = 'sad' WHERE id = 3")
    else:
        _damage_file(Path(store) / "pre" / item["data"])
    with pytest.raises(ConflictError, match="damaged"):
        snap.verify(conn, snap.find(conn, "pre", store=store))
    conn.rollback()


def test_drop_extension_citext(conn, sql_exec, cli, tmp_path, store) -> None:
    available = sql_exec("SELECT 1 FROM pg_available_extensions WHERE name = 'citext'")
    if not available:
        pytest.skip("citext is not in pg_available_extensions on this server")
    sql_exec(
        "CREATE EXTENSION citext; CREATE TABLE u (id int PRIMARY KEY, email citext,"
        " tags citext[]); INSERT INTO u VALUES (1, 'Ann@X.org', '{A,b}'),"
        " (2, NULL, NULL)"
    )
    before = rows(conn, "u")
    mig = tmp_path / "migration.sql"
    mig.write_text("ALTER TABLE u DROP COLUMN email, DROP COLUMN tags;\nDROP EXTENSION citext;\n")
    res = cli("snapshot", "create", "pre", "--for-sql", str(mig), *store)
    assert res.exit_code == 0, res.output
    if not store:
        assert [t for _r, _c, t in snapshot_column_types(conn)] == ["integer", "text", "text"]
    sql_exec(mig.read_text())
    error_line(
        cli("restore", "pre", "--yes", *store),
        1,
        "column email of public.u",
        "public.citext",
        'CREATE EXTENSION "citext" SCHEMA "public"',
    )
    assert rows(conn, "u") == [(1,), (2,)]
    sql_exec("CREATE EXTENSION citext")
    out = cli("restore", "pre", "--yes", *store)
    assert out.exit_code == 0, out.output
    assert rows(conn, "u") == before
    assert columns(conn, "u") == [("id", "integer"), ("email", "citext"), ("tags", "citext[]")]
