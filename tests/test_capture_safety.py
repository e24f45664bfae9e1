"""Capture never makes an application's write fail and never switches itself off silently.

The four repros of the issue that set this rule, each on a fresh database, with the
exact end state asserted: a table name needing quotes after one that does not, a
column named like a variable of the generated capture code, application types the
journal must not pin, and legacy inheritance children.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from recovery import RecoveryError, Selector, disable_capture, enable_capture, init, rollback
from recovery.capture import all_tables

from .test_capture import state, tagged, texts


def captured_names(sql_exec) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        r[0]
        for r in sql_exec(
            "SELECT schema_name || '.' || table_name FROM _recovery.captured WHERE enabled "
            "ORDER BY 1"
        )
    ]


def capture_triggers(sql_exec, table: str) -> int:  # type: ignore[no-untyped-def]
    return int(
        sql_exec(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass "
            "AND tgname LIKE '\\_recovery\\_capture\\_%%'",
            [table],
        )[0][0]
    )


# -- 0. a helper never ends its caller's transaction -------------------------------------


def test_enable_keeps_tables_before_a_name_that_needs_quotes(conn, sql_exec, cli):
    sql_exec(
        'CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE "Mixed Table" (id int PRIMARY KEY);'
        "CREATE TABLE b (id int PRIMARY KEY)"
    )
    out = cli("capture", "enable", "a", "Mixed Table", "b")
    assert out.exit_code == 0, out.output
    assert captured_names(sql_exec) == ["public.Mixed Table", "public.a", "public.b"]
    for t in ("a", '"Mixed Table"', "b"):
        assert capture_triggers(sql_exec, t) == 5  # before, insert, update, delete, truncate

    out = cli("capture", "disable", "a", "Mixed Table", "--yes")
    assert out.exit_code == 0, out.output
    assert captured_names(sql_exec) == ["public.b"]
    assert capture_triggers(sql_exec, "a") == capture_triggers(sql_exec, '"Mixed Table"') == 0


def test_enable_is_all_or_nothing_and_respects_the_callers_transaction(conn, sql_exec):
    sql_exec(
        'CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE "Mixed Table" (id int PRIMARY KEY);'
        "CREATE TABLE mine (id int)"
    )
    # A missing table after two good ones: nothing is enabled, and the error names it.
    with pytest.raises(RecoveryError, match="'nope' not found"):
        enable_capture(conn, ["a", "Mixed Table", "nope"])
    assert captured_names(sql_exec) == []

    # Inside a transaction of the caller's: the caller's write and the enable both
    # stay in that transaction, which the caller commits.
    conn.execute("INSERT INTO mine VALUES (1)")
    assert enable_capture(conn, ["a", "Mixed Table"]) == ["public.a", "public.Mixed Table"]
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert conn.execute("SELECT count(*) FROM mine").fetchone() == (1,)
    assert captured_names(sql_exec) == []  # not committed yet
    conn.commit()
    assert captured_names(sql_exec) == ["public.Mixed Table", "public.a"]
    assert sql_exec("SELECT id FROM mine") == [(1,)]

    # A failing enable inside the caller's transaction leaves that transaction usable.
    conn.execute("INSERT INTO mine VALUES (2)")
    with pytest.raises(RecoveryError, match="not found"):
        enable_capture(conn, ["no such table"])
    conn.execute("INSERT INTO mine VALUES (3)")
    conn.commit()
    assert sql_exec("SELECT id FROM mine ORDER BY 1") == [(1,), (2,), (3,)]


# -- 1. no column name collides with the generated code ----------------------------------


@pytest.mark.parametrize("col", ["s", "n", "cap", "r", "c", "j", "tg_op", "rec_old", "rec_new"])
def test_column_named_like_a_capture_variable(conn, sql_exec, col):
    q = psycopg.sql.Identifier(col).as_string(None)
    sql_exec(f"CREATE TABLE w ({q} int PRIMARY KEY, v text)")
    sql_exec(f"INSERT INTO w ({q}, v) VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    enable_capture(conn, ["w"])
    before = texts(conn, "w")
    tagged(sql_exec, "bad", f"UPDATE w SET v = 'x' WHERE {q} = 1")
    tagged(sql_exec, "bad", f"UPDATE w SET {q} = 10 WHERE {q} = 2")
    tagged(sql_exec, "bad", f"INSERT INTO w ({q}, v) VALUES (4, 'four')")
    tagged(sql_exec, "bad", f"DELETE FROM w WHERE {q} = 3")
    assert texts(conn, "w") == ["(1,x)", "(10,two)", "(4,four)"]
    tagged(sql_exec, "bad", "TRUNCATE w")
    assert texts(conn, "w") == []
    report = rollback(conn, Selector(tags=("bad",)))
    assert report.status == "done" and report.conflicts == 0
    assert texts(conn, "w") == before


# -- 2. the journal never pins the application's types ------------------------------------

TYPES = """
CREATE SCHEMA other;
CREATE TYPE other.mood AS ENUM ('calm', 'angry');
CREATE TYPE other.pair AS (f float8, d date, m other.mood, b bytea);
CREATE DOMAIN other.moody AS other.mood;
CREATE DOMAIN other.small AS int CHECK (VALUE < 100);
CREATE TABLE t (id int PRIMARY KEY, ot other.mood, moods other.mood[], p other.pair,
                dm other.moody, sm other.small, v text);
INSERT INTO t VALUES
    (1, 'calm', '{calm,angry}', '(0.1,2020-01-02,calm,\\\\x00ff)', 'angry', 5, 'one'),
    (2, 'angry', NULL, NULL, NULL, NULL, 'two'),
    (3, NULL, '{}', '(,,,)', 'calm', 99, 'three');
"""


def test_journal_does_not_pin_types_and_values_come_back_exactly(conn, sql_exec):
    sql_exec(TYPES)
    enable_capture(conn, ["t"])
    before = texts(conn, "t")
    # Written under output settings other than recovery's own: the journal's text
    # forms are still read back exactly.
    tagged(
        sql_exec,
        "bad",
        "SET datestyle = 'SQL, DMY'; SET extra_float_digits = 0;"
        "SET bytea_output = 'escape'; SET intervalstyle = 'sql_standard';"
        "UPDATE t SET ot = 'angry', moods = '{angry}', "
        "p = '(0.30000000000000004,2021-03-04,angry,\\\\x01)', dm = 'calm',"
        " sm = 7, v = 'x'; DELETE FROM t WHERE id = 2",
    )
    # Nothing in the journal depends on the application's types.
    deps = sql_exec(
        "SELECT count(*) FROM pg_depend d JOIN pg_class c ON c.oid = d.objid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = '_recovery' AND d.refclassid = 'pg_type'::regclass "
        "AND d.refobjid IN (SELECT oid FROM pg_type WHERE typnamespace = 'other'::regnamespace)"
    )
    assert deps == [(0,)]
    report = rollback(conn, Selector(tags=("bad",)))
    assert report.status == "done" and report.conflicts == 0
    assert texts(conn, "t") == before

    # The repro: a migration drops the enum column and the type; it succeeds, and so
    # does the same for the domains and the composite.
    tagged(sql_exec, "late", "UPDATE t SET v = 'later' WHERE id = 1")
    sql_exec(
        "ALTER TABLE t DROP COLUMN ot, DROP COLUMN moods, DROP COLUMN p, DROP COLUMN dm,"
        " DROP COLUMN sm; DROP DOMAIN other.moody; DROP DOMAIN other.small;"
        " DROP TYPE other.pair; DROP TYPE other.mood"
    )
    assert state(conn, "public.t") == ("on", [])
    # History of the remaining columns is intact and undoable.
    rollback(conn, Selector(tags=("late",)))
    assert texts(conn, "t") == ["(1,one)", "(2,two)", "(3,three)"]


def test_drop_type_cascade_keeps_the_journal(conn, sql_exec):
    sql_exec(
        "CREATE TYPE mood AS ENUM ('calm', 'angry');"
        "CREATE TABLE t (id int PRIMARY KEY, m mood, v text);"
        "INSERT INTO t VALUES (1, 'calm', 'one')"
    )
    enable_capture(conn, ["t"])
    tagged(sql_exec, "bad", "UPDATE t SET m = 'angry', v = 'x'")
    journal = sql_exec("SELECT j::text FROM _recovery.j_1 j ORDER BY 1")
    sql_exec("DROP TYPE mood CASCADE")  # drops t.m, and nothing of recovery's
    assert sql_exec("SELECT j::text FROM _recovery.j_1 j ORDER BY 1") == journal
    assert journal == [("(1,1,1,A,1,angry,x)",), ("(1,1,1,B,1,calm,one)",)]
    rollback(conn, Selector(tags=("bad",)))
    assert texts(conn, "t") == ["(1,one)"]


def test_init_converts_an_older_journal_that_pins_a_type(conn, sql_exec):
    sql_exec(
        "CREATE TYPE mood AS ENUM ('calm', 'angry');"
        "CREATE TABLE t (id int PRIMARY KEY, m mood, v text);"
        "INSERT INTO t VALUES (1, 'calm', 'one'), (2, 'angry', 'two')"
    )
    enable_capture(conn, ["t"])
    tagged(sql_exec, "bad", "UPDATE t SET m = 'angry', v = 'x' WHERE id = 1")
    # A journal as versions before 4 wrote it: the column in the enum type itself.
    sql_exec(
        "ALTER TABLE _recovery.j_1 ALTER COLUMN c2 TYPE mood USING c2::mood;"
        "UPDATE _recovery.columns SET type_name = 'mood' WHERE jcol = 'c2';"
        "UPDATE _recovery.meta SET value = '3' WHERE key = 'schema_version'"
    )
    res = init(conn)
    assert res.previous_version == 3
    assert sql_exec(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = '_recovery.j_1'::regclass AND attname = 'c2'"
    ) == [("text",)]
    assert sql_exec("SELECT type_name FROM _recovery.columns WHERE jcol = 'c2'") == [("text",)]
    rollback(conn, Selector(tags=("bad",)))
    assert texts(conn, "t") == ["(1,calm,one)", "(2,angry,two)"]
    sql_exec("ALTER TABLE t DROP COLUMN m; DROP TYPE mood")


# -- 3. legacy inheritance: refused with a reason, shown in status ---------------------------


INHERITS = """
CREATE TABLE parent (id int PRIMARY KEY, v text);
CREATE TABLE child (extra int) INHERITS (parent);
CREATE TABLE plain (id int PRIMARY KEY);
CREATE TABLE nokey (v text);
"""


def test_inheritance_parent_and_child_are_refused(conn, sql_exec, cli):
    sql_exec(INHERITS)
    for name, why in (
        ("parent", "has legacy inheritance children (child)"),
        ("child", "inherits from parent"),
    ):
        out = cli("capture", "enable", "plain", name)
        assert out.exit_code == 1 and why in out.stderr, out.output
        assert out.stderr.count("\n") == 1  # one line
    assert captured_names(sql_exec) == []  # all or nothing: plain was not enabled either

    found = all_tables(conn, "public")
    assert found.tables == ["public.plain"]
    assert [t for t, _ in found.skipped] == ["public.child", "public.nokey", "public.parent"]
    out = cli("--json", "capture", "enable", "--all")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["enabled"] == ["public.plain"]
    assert [(d["table"], d["reason"].split(":")[0]) for d in doc["skipped"]] == [
        ("public.child", "public.child inherits from parent (legacy inheritance)"),
        ("public.nokey", "public.nokey has no primary key"),
        ("public.parent", "public.parent has legacy inheritance children (child)"),
    ]
    # Named on stderr too, one line each.
    assert [ln.split(":")[0] for ln in out.stderr.splitlines()] == ["not captured"] * 3
    assert captured_names(sql_exec) == ["public.plain"]


def test_a_captured_table_that_gains_an_inheritance_child_says_so(conn, sql_exec):
    sql_exec("CREATE TABLE parent (id int PRIMARY KEY, v text); INSERT INTO parent VALUES (1, 'a')")
    enable_capture(conn, ["parent"])
    assert state(conn, "public.parent") == ("on", [])
    # The DDL succeeds exactly as without capture ...
    sql_exec(
        "CREATE TABLE child (extra int) INHERITS (parent);INSERT INTO child VALUES (2, 'b', 0)"
    )
    # ... and status says plainly what is not covered.
    st, problems = state(conn, "public.parent")
    assert st == "stopped"
    assert len(problems) == 1 and "legacy inheritance children (child)" in problems[0]
    sql_exec("ALTER TABLE child NO INHERIT parent")
    assert state(conn, "public.parent") == ("on", [])


# -- capture never fails the application's DDL ---------------------------------------------


def test_a_rebuild_that_fails_after_ddl_never_fails_the_ddl(conn, sql_exec):
    # 1,596 columns: the journal (4 columns of its own) is at PostgreSQL's limit of
    # 1,600, so following an ADD COLUMN fails inside the event trigger.
    cols = ", ".join(f"c{i} int" for i in range(1, 1596))
    sql_exec(f"CREATE TABLE wide (id int PRIMARY KEY, {cols}); INSERT INTO wide (id) VALUES (1)")
    enable_capture(conn, ["wide"])
    tagged(sql_exec, "before", "UPDATE wide SET c1 = 1")
    sql_exec("ALTER TABLE wide ADD COLUMN extra int")  # succeeds as without capture
    sql_exec("UPDATE wide SET c2 = 2")  # and so do writes
    st, problems = state(conn, "public.wide")
    assert st == "stopped"
    assert any("capture could not follow ALTER TABLE" in p for p in problems), problems
    assert sql_exec("SELECT id, c1, c2, extra FROM wide") == [(1, 1, 2, None)]
    # Dropping the column again: the shape fits the journal, capture follows again.
    sql_exec("ALTER TABLE wide DROP COLUMN extra")
    assert state(conn, "public.wide") == ("on", [])
    tagged(sql_exec, "after", "UPDATE wide SET c3 = 3")
    assert sql_exec("SELECT count(*) FROM _recovery.stmt WHERE tag = 'after'") == [(1,)]
    assert sql_exec("SELECT count(*) FROM _recovery.stmt WHERE tag IS NULL") == [(0,)]


def test_enum_value_renamed_after_capture_reads_back_as_the_same_value(conn, sql_exec):
    sql_exec(
        "CREATE TYPE mood AS ENUM ('calm', 'sad'); CREATE DOMAIN dm AS mood;"
        "CREATE TABLE t (id int PRIMARY KEY, m mood, ms mood[], d dm);"
        "INSERT INTO t VALUES (1, 'calm', '{calm,sad}', 'sad'), (2, 'sad', NULL, 'calm')"
    )
    enable_capture(conn, ["t"])
    tagged(sql_exec, "bad", "UPDATE t SET m = 'calm', ms = '{calm}', d = 'calm'")
    sql_exec("ALTER TYPE mood RENAME VALUE 'sad' TO 'blue'; ALTER TYPE mood ADD VALUE 'new'")
    tagged(sql_exec, "bad2", "UPDATE t SET m = 'new' WHERE id = 1")
    sql_exec("ALTER TYPE mood RENAME VALUE 'new' TO 'newer'")
    rollback(conn, Selector(tags=("bad", "bad2")))
    assert texts(conn, "t") == ['(1,calm,"{calm,blue}",blue)', "(2,blue,,calm)"]


def test_undo_refuses_a_table_that_gained_an_inheritance_child(conn, sql_exec):
    sql_exec("CREATE TABLE p (id int PRIMARY KEY, v int); INSERT INTO p VALUES (1, 1)")
    enable_capture(conn, ["p"])
    sql_exec("CREATE TABLE pc (extra int) INHERITS (p); INSERT INTO pc VALUES (2, 2, 0)")
    tagged(sql_exec, "bad", "DELETE FROM p WHERE id = 2; UPDATE p SET v = 9 WHERE id = 1")
    with pytest.raises(RecoveryError, match="cannot undo the changes of public.p has legacy"):
        rollback(conn, Selector(tags=("bad",)))
    assert texts(conn, "p") == ["(1,9)"] and texts(conn, "pc") == []


def test_drop_type_cascade_of_a_captured_column_keeps_capture_on(conn, sql_exec):
    sql_exec(
        "CREATE TYPE mood AS ENUM ('calm', 'angry');"
        "CREATE TABLE t (id int PRIMARY KEY, m mood, v text);"
        "INSERT INTO t VALUES (1, 'calm', 'one')"
    )
    enable_capture(conn, ["t"])
    sql_exec("DROP TYPE mood CASCADE")
    assert state(conn, "public.t") == ("on", [])
    tagged(sql_exec, "after", "UPDATE t SET v = 'x'; INSERT INTO t VALUES (2, 'two')")
    assert sql_exec(
        "SELECT op::text, nrows FROM _recovery.stmt WHERE tag = 'after' ORDER BY stmt_id"
    ) == [("U", 1), ("I", 1)]
    rollback(conn, Selector(tags=("after",)))
    assert texts(conn, "t") == ["(1,one)"]


def test_enum_renames_not_followed_are_applied_in_one_pass(conn, sql_exec):
    sql_exec(
        "CREATE TYPE mood AS ENUM ('a', 'b'); CREATE TABLE t (id int PRIMARY KEY, m mood);"
        "INSERT INTO t VALUES (1, 'a'), (2, 'b')"
    )
    enable_capture(conn, ["t"])
    tagged(sql_exec, "bad", "UPDATE t SET m = CASE m WHEN 'a' THEN 'b'::mood ELSE 'a' END")
    # Two renames while the follower is off, then one DDL it sees: a -> tmp, b -> a.
    sql_exec(
        "ALTER EVENT TRIGGER _recovery_follow_types DISABLE;"
        "ALTER TYPE mood RENAME VALUE 'a' TO 'tmp'; ALTER TYPE mood RENAME VALUE 'b' TO 'a';"
        "ALTER EVENT TRIGGER _recovery_follow_types ENABLE ALWAYS;"
        "ALTER TYPE mood ADD VALUE 'c'"
    )
    rollback(conn, Selector(tags=("bad",)))
    assert texts(conn, "t") == ["(1,tmp)", "(2,a)"]


def test_init_converts_the_journal_of_a_disabled_table(conn, sql_exec):
    sql_exec(
        "CREATE TYPE mood AS ENUM ('calm', 'angry');"
        "CREATE TABLE u (id int PRIMARY KEY, m mood); INSERT INTO u VALUES (1, 'calm')"
    )
    enable_capture(conn, ["u"])
    tagged(sql_exec, "bad", "UPDATE u SET m = 'angry'")
    disable_capture(conn, ["u"])
    sql_exec(
        "ALTER TABLE _recovery.j_1 ALTER COLUMN c2 TYPE mood USING c2::mood;"
        "UPDATE _recovery.columns SET type_name = 'mood' WHERE jcol = 'c2';"
        "UPDATE _recovery.meta SET value = '3' WHERE key = 'schema_version'"
    )
    init(conn)
    assert sql_exec(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = '_recovery.j_1'::regclass AND attname = 'c2'"
    ) == [("text",)]
    sql_exec("ALTER TABLE u DROP COLUMN m; DROP TYPE mood")  # not blocked by the journal
