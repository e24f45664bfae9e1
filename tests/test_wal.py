"""The WAL capture source: slot, hooks, drain, and the undo on top of it.

Every test asserts exact end states (rows as text) and, where the journal itself is
the point, the exact journal rows.  The scenario runner (test_scenarios.py) runs every
undo case under both sources as well.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from recovery import (
    RecoveryError,
    Selector,
    capture_status,
    disable_capture,
    enable_capture,
    rollback,
)
from recovery.capture.drain import drain
from recovery.db import connect

BAD = Selector(tags=("bad",))


def snap(conn: psycopg.Connection, table: str) -> list[str]:
    conn.rollback()
    out = [r[0] for r in conn.execute(f"SELECT x::text, x.* FROM {table} x ORDER BY 2, 1")]
    conn.rollback()
    return out


def journal(conn: psycopg.Connection, tid: int = 1) -> list[tuple]:  # type: ignore[type-arg]
    """Every journal row of capture id tid with its statement: (stmt order, op, tag,
    rec_ord, image, the row as text), after a drain."""
    drain(conn)
    rows = conn.execute(
        "SELECT dense_rank() OVER (ORDER BY s.stmt_id), s.op::text, s.tag, j.rec_ord,"
        " j.rec_img::text, (j.c1, j.c2, j.c3)::text"
        f" FROM _recovery.j_{tid} j JOIN _recovery.stmt s ON s.stmt_id = j.rec_stmt"
        " ORDER BY s.stmt_id, j.rec_ord, j.rec_img"
    ).fetchall()
    conn.rollback()
    return rows


@pytest.fixture
def acc(conn, sql_exec):  # type: ignore[no-untyped-def]
    sql_exec("CREATE TABLE acc (id int PRIMARY KEY, v text, n int)")
    sql_exec("INSERT INTO acc SELECT g, 'v' || g, g * 10 FROM generate_series(1, 6) g")
    enable_capture(conn, ["acc"], source="wal")
    return "acc"


def test_enable_sets_identity_publication_slot_and_disable_puts_them_back(conn, sql_exec):
    sql_exec("CREATE TABLE a (id int PRIMARY KEY, v text)")
    sql_exec("CREATE TABLE b (id int NOT NULL, v text)")
    sql_exec("CREATE UNIQUE INDEX b_id ON b (id)")
    sql_exec("ALTER TABLE b REPLICA IDENTITY USING INDEX b_id")
    enable_capture(conn, ["a"], source="wal")
    enable_capture(conn, ["b"], key=["id"], source="wal")
    conn.rollback()
    assert sql_exec(
        "SELECT relname, relreplident::text FROM pg_class WHERE relname IN ('a', 'b') ORDER BY 1"
    ) == [("a", "f"), ("b", "f")]
    assert sql_exec(
        "SELECT tablename::text FROM pg_publication_tables "
        "WHERE pubname = _recovery.wal_publication() ORDER BY 1"
    ) == [("a",), ("b",)]
    states = {s.table: s for s in capture_status(conn)}
    assert {t: (s.source, s.state, s.problems) for t, s in states.items()} == {
        "public.a": ("wal", "on", []),
        "public.b": ("wal", "on", []),
    }
    disable_capture(conn, ["a"])
    assert sql_exec("SELECT relreplident::text FROM pg_class WHERE relname = 'a'") == [("d",)]
    assert sql_exec(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = _recovery.wal_slot()"
    ) == [(1,)]
    disable_capture(conn, ["b"])
    assert sql_exec(
        "SELECT c.relreplident::text, i.relname::text FROM pg_class c JOIN pg_index x "
        "ON x.indrelid = c.oid AND x.indisreplident JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE c.relname = 'b'"
    ) == [("i", "b_id")]
    # The last WAL-captured table gone: no slot holds WAL, no publication is left.
    assert sql_exec(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = _recovery.wal_slot()"
    ) == [(0,)]
    assert sql_exec("SELECT count(*) FROM pg_publication") == [(0,)]
    # No hook is left on either table.
    assert sql_exec(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid IN ('a'::regclass, 'b'::regclass)"
        " AND NOT tgisinternal"
    ) == [(0,)]


def test_journal_rows_who_and_order(conn, sql_exec, acc):
    with psycopg.connect(conn.info.dsn, autocommit=True) as app:
        app.execute("SET application_name = 'billing'")
        app.execute(
            "BEGIN; SET LOCAL recovery.tag = 'bad'; UPDATE acc SET n = 0 WHERE id <= 2;"
            " UPDATE acc SET v = 'x' WHERE id = 1; DELETE FROM acc WHERE id = 6;"
            " SET LOCAL recovery.tag = 'other'; INSERT INTO acc VALUES (7, 'v7', 70); COMMIT"
        )
        app.execute("UPDATE acc SET n = 99 WHERE id = 3")
    assert journal(conn) == [
        (1, "U", "bad", 1, "A", "(1,v1,0)"),
        (1, "U", "bad", 1, "B", "(1,v1,10)"),
        (1, "U", "bad", 2, "A", "(2,v2,0)"),
        (1, "U", "bad", 2, "B", "(2,v2,20)"),
        # the same row again: a statement of its own
        (2, "U", "bad", 1, "A", "(1,x,0)"),
        (2, "U", "bad", 1, "B", "(1,v1,0)"),
        (3, "D", "bad", 1, "B", "(6,v6,60)"),
        (4, "I", "other", 1, "A", "(7,v7,70)"),
        (5, "U", None, 1, "A", "(3,v3,99)"),
        (5, "U", None, 1, "B", "(3,v3,30)"),
    ]
    who = conn.execute(
        "SELECT DISTINCT db_user, app, depth FROM _recovery.stmt ORDER BY 1"
    ).fetchall()
    assert who == [(conn.info.user, "billing", 1)]
    # one transaction id for the first transaction, as txid_current() reports it
    txids = conn.execute("SELECT count(DISTINCT txid) FROM _recovery.stmt").fetchone()
    assert txids == (2,)


def test_bad_deploy_interleaved_with_legit_writes_cli(cli, conn, sql_exec, acc):
    sql_exec("SET recovery.tag = 'bad'; UPDATE acc SET v = 'broken', n = -1 WHERE id <= 4")
    sql_exec("UPDATE acc SET n = 1000 WHERE id = 2")  # a legitimate later write, other column
    sql_exec("UPDATE acc SET v = 'legit' WHERE id = 3")  # a later write of the same column
    sql_exec("INSERT INTO acc VALUES (8, 'v8', 80)")
    r = cli("rollback", "--tag", "bad", "--on-conflict", "skip", "--yes")
    assert r.exit_code == 0, r.output
    assert snap(conn, "acc") == [
        "(1,v1,10)",
        "(2,v2,1000)",
        "(3,legit,30)",
        "(4,v4,40)",
        "(5,v5,50)",
        "(6,v6,60)",
        "(8,v8,80)",
    ]
    # planned again: nothing left to do
    again = cli("--json", "rollback", "--tag", "bad", "--on-conflict", "skip", "--dry-run")
    doc = json.loads(again.output)
    assert [(t["reinsert"], t["restore"], t["delete"]) for t in doc["tables"]] == [(0, 0, 0)]


def test_unchanged_toast_value_is_taken_from_the_old_row(conn, sql_exec):
    sql_exec("CREATE TABLE doc (id int PRIMARY KEY, big text, n int)")
    sql_exec("ALTER TABLE doc ALTER COLUMN big SET STORAGE EXTERNAL")  # out of line, uncompressed
    sql_exec("INSERT INTO doc VALUES (1, repeat('abc\\t', 200000), 1), (2, 'small', 2)")
    enable_capture(conn, ["doc"], source="wal")
    sql_exec("SET recovery.tag = 'bad'; UPDATE doc SET n = n + 100")
    drain(conn)
    images = conn.execute(
        "SELECT j.rec_img::text, j.c1, md5(j.c2), j.c3 FROM _recovery.j_1 j ORDER BY 2, 1"
    ).fetchall()
    conn.rollback()
    big = sql_exec("SELECT md5(repeat('abc\\t', 200000))")[0][0]
    assert images == [
        ("A", 1, big, 101),
        ("B", 1, big, 1),
        ("A", 2, sql_exec("SELECT md5('small')")[0][0], 102),
        ("B", 2, sql_exec("SELECT md5('small')")[0][0], 2),
    ]
    rollback(conn, BAD)
    assert sql_exec("SELECT id, md5(big), n FROM doc ORDER BY 1") == [
        (1, big, 1),
        (2, sql_exec("SELECT md5('small')")[0][0], 2),
    ]


def test_truncate_is_journaled_in_commit_order_and_undone(conn, sql_exec, acc):
    sql_exec("UPDATE acc SET n = 11 WHERE id = 1")
    sql_exec("SET recovery.tag = 'bad'; TRUNCATE acc")
    sql_exec("INSERT INTO acc VALUES (9, 'new', 90)")
    rows = journal(conn)
    assert [r[:3] for r in rows if r[4] == "B"][:2] == [(1, "U", None), (2, "T", "bad")]
    assert len([r for r in rows if r[1] == "T"]) == 6
    rollback(conn, BAD)
    assert snap(conn, "acc") == [
        "(1,v1,11)",
        "(2,v2,20)",
        "(3,v3,30)",
        "(4,v4,40)",
        "(5,v5,50)",
        "(6,v6,60)",
        "(9,new,90)",
    ]
    # no provisional statement id is left behind
    assert sql_exec("SELECT count(*) FROM _recovery.stmt WHERE stmt_id < 0") == [(0,)]


def test_partitioned_table_through_parent_and_partition(conn, sql_exec):
    sql_exec(
        "CREATE TABLE o (region text, id int, v text, PRIMARY KEY (region, id))"
        " PARTITION BY LIST (region);"
        " CREATE TABLE o_eu PARTITION OF o FOR VALUES IN ('eu');"
        " CREATE TABLE o_us (id int NOT NULL, v text, region text NOT NULL);"
        " ALTER TABLE o ATTACH PARTITION o_us FOR VALUES IN ('us');"
        " INSERT INTO o SELECT r, g, 'v' || g FROM generate_series(1, 3) g, "
        " unnest(ARRAY['eu', 'us']) r"
    )
    enable_capture(conn, ["o"], source="wal")
    sql_exec("CREATE TABLE o_ap PARTITION OF o FOR VALUES IN ('ap')")  # after enable
    assert sql_exec(
        "SELECT relname::text, relreplident::text FROM pg_class WHERE relname ~ '^o(_|$)' "
        "AND relkind IN ('r', 'p') ORDER BY 1"
    ) == [("o", "f"), ("o_ap", "f"), ("o_eu", "f"), ("o_us", "f")]
    sql_exec(
        "SET recovery.tag = 'bad'; UPDATE o SET v = 'bad' WHERE id = 1;"
        " UPDATE o_us SET v = 'direct' WHERE id = 2; DELETE FROM o_eu WHERE id = 3;"
        " INSERT INTO o VALUES ('ap', 1, 'a1'); UPDATE o SET region = 'ap' WHERE region = 'us'"
        " AND id = 3"
    )
    rollback(conn, BAD)
    assert snap(conn, "o") == [
        "(eu,1,v1)",
        "(eu,2,v2)",
        "(eu,3,v3)",
        "(us,1,v1)",
        "(us,2,v2)",
        "(us,3,v3)",
    ]


def test_backlog_spanning_schema_changes_is_journaled_by_each_change_s_columns(conn, sql_exec):
    sql_exec("CREATE TABLE s (id int PRIMARY KEY, a text, b int, c int)")
    sql_exec("INSERT INTO s SELECT g, 'a' || g, g, g FROM generate_series(1, 4) g")
    enable_capture(conn, ["s"], source="wal")
    # nothing drains in between: the slot holds every change and DDL in order
    sql_exec("SET recovery.tag = 'bad'; UPDATE s SET b = -b WHERE id = 1")
    sql_exec("ALTER TABLE s RENAME COLUMN a TO title")
    sql_exec("SET recovery.tag = 'bad'; UPDATE s SET title = 'T' WHERE id = 2")
    sql_exec("ALTER TABLE s ALTER COLUMN b TYPE bigint")
    sql_exec("SET recovery.tag = 'bad'; UPDATE s SET b = 5000000000 WHERE id = 3")
    sql_exec("ALTER TABLE s DROP COLUMN c")
    sql_exec("ALTER TABLE s ADD COLUMN d text DEFAULT 'dd'")
    sql_exec(
        "SET recovery.tag = 'bad'; UPDATE s SET d = 'changed' WHERE id = 4;"
        " DELETE FROM s WHERE id = 2"
    )
    rollback(conn, BAD)
    assert snap(conn, "s") == ["(1,a1,1,dd)", "(2,a2,2,dd)", "(3,a3,3,dd)", "(4,a4,4,dd)"]


def test_moving_between_sources_keeps_one_journal(conn, sql_exec, cli):
    sql_exec("CREATE TABLE m (id int PRIMARY KEY, v text)")
    sql_exec("INSERT INTO m SELECT g, 'v' || g FROM generate_series(1, 3) g")
    enable_capture(conn, ["m"], source="trigger")
    sql_exec("SET recovery.tag = 'bad'; UPDATE m SET v = 'a' WHERE id = 1")
    enable_capture(conn, ["m"], source="wal")
    sql_exec("SET recovery.tag = 'bad'; UPDATE m SET v = 'b' WHERE id IN (1, 2)")
    enable_capture(conn, ["m"], source="trigger")
    sql_exec("SET recovery.tag = 'bad'; UPDATE m SET v = 'c' WHERE id IN (1, 3)")
    conn.rollback()
    got = conn.execute(
        "SELECT s.op::text, (j.c1, j.c2)::text FROM _recovery.j_1 j JOIN _recovery.stmt s"
        " ON s.stmt_id = j.rec_stmt WHERE j.rec_img = 'A' ORDER BY s.stmt_id, j.rec_ord"
    ).fetchall()
    conn.rollback()
    assert got == [
        ("U", "(1,a)"),
        ("U", "(1,b)"),
        ("U", "(2,b)"),
        ("U", "(1,c)"),
        ("U", "(3,c)"),
    ]
    r = cli("capture", "status")
    assert "trigger" in r.output and r.exit_code == 0
    rollback(conn, BAD)
    assert snap(conn, "m") == ["(1,v1)", "(2,v2)", "(3,v3)"]


def test_caps_hold_on_wal_captured_tables(conn, sql_exec, acc):
    with pytest.raises(psycopg.Error) as exc:
        sql_exec("SET recovery.max_rows = '3'; UPDATE acc SET n = 0")
    assert exc.value.sqlstate == "RC001"
    assert snap(conn, "acc")[0] == "(1,v1,10)"
    # an uncapped session is not limited
    sql_exec("UPDATE acc SET n = 0")
    assert sql_exec("SELECT count(*) FROM acc WHERE n = 0") == [(6,)]


def test_cascaded_changes_keep_their_depth(conn, sql_exec):
    sql_exec(
        "CREATE TABLE p (id int PRIMARY KEY); CREATE TABLE c (id int PRIMARY KEY,"
        " p int REFERENCES p ON DELETE CASCADE);"
        " INSERT INTO p VALUES (1), (2); INSERT INTO c VALUES (10, 1), (11, 1), (20, 2)"
    )
    enable_capture(conn, ["p", "c"], source="wal")
    sql_exec("SET recovery.tag = 'bad'; DELETE FROM p WHERE id = 1; DELETE FROM c WHERE id = 20")
    drain(conn)
    got = conn.execute(
        "SELECT c.table_name, s.op::text, s.depth, s.nrows FROM _recovery.stmt s"
        " JOIN _recovery.captured c USING (table_id) ORDER BY s.stmt_id"
    ).fetchall()
    conn.rollback()
    # the cascade deleted rows 10 and 11 in one statement, run by the foreign key's trigger
    assert got == [("p", "D", 1, 1), ("c", "D", 2, 2), ("c", "D", 1, 1)]
    rollback(conn, Selector(tables=("p",)), on_conflict="fail")
    assert snap(conn, "p") == ["(1)", "(2)"]
    assert snap(conn, "c") == ["(10,1)", "(11,1)"]


def test_drain_killed_at_any_moment_loses_and_duplicates_nothing(conn, sql_exec, db_url):
    sql_exec("CREATE TABLE big (id int PRIMARY KEY, v text)")
    sql_exec("INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 60000) g")
    enable_capture(conn, ["big"], source="wal")
    sql_exec("SET recovery.tag = 'bad'; UPDATE big SET v = v || '!'")
    sql_exec("SET recovery.tag = 'bad'; DELETE FROM big WHERE id % 3 = 0")
    env = dict(os.environ, RECOVERY_DB_URL=db_url)
    for delay in (0.3, 0.8, 1.5, 2.5):
        p = subprocess.Popen(
            [sys.executable, "-m", "recovery", "capture", "follow", "--once"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
    drain(conn)
    stats = conn.execute(
        "SELECT s.op::text, j.rec_img::text, count(*), count(DISTINCT (j.rec_stmt, j.rec_ord)),"
        " count(DISTINCT j.c1) FROM _recovery.j_1 j JOIN _recovery.stmt s"
        " ON s.stmt_id = j.rec_stmt GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    nrows = conn.execute("SELECT op::text, sum(nrows) FROM _recovery.stmt GROUP BY 1 ORDER BY 1")
    assert stats == [
        ("D", "B", 20000, 20000, 20000),
        ("U", "A", 60000, 60000, 60000),
        ("U", "B", 60000, 60000, 60000),
    ]
    assert nrows.fetchall() == [("D", 20000), ("U", 60000)]
    conn.rollback()
    rollback(conn, BAD, require_approval=False)
    assert sql_exec("SELECT count(*), count(*) FILTER (WHERE v = 'v' || id) FROM big") == [
        (60000, 60000)
    ]


def test_follow_drains_and_stops_on_sigterm(conn, sql_exec, db_url, acc):
    env = dict(os.environ, RECOVERY_DB_URL=db_url)
    p = subprocess.Popen(
        [sys.executable, "-m", "recovery", "capture", "follow", "--interval", "0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)
        sql_exec("UPDATE acc SET n = 1 WHERE id = 1")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            n = sql_exec("SELECT count(*) FROM _recovery.stmt")[0][0]
            if n:
                break
            time.sleep(0.1)
        if n != 1:
            p.terminate()
            out, err = p.communicate(timeout=20)
            raise AssertionError(f"follow did not drain: {out!r} {err!r}")
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert "drained 1 row(s) in 1 statement(s) from 1 transaction(s)" in out


def test_status_reports_a_missing_slot(conn, sql_exec, acc, cli):
    sql_exec("SELECT pg_drop_replication_slot(_recovery.wal_slot())")
    r = cli("capture", "status")
    assert r.exit_code == 0
    assert "replication slot recovery_" in r.output and "is missing" in r.output
    states = capture_status(conn)
    assert states[0].state == "stopped"
    # capture comes back with enable
    enable_capture(conn, ["acc"], source="wal")
    assert capture_status(conn)[0].state == "on"
    sql_exec("SET recovery.tag = 'bad'; UPDATE acc SET n = 0 WHERE id = 1")
    rollback(conn, BAD)
    assert snap(conn, "acc")[0] == "(1,v1,10)"


def test_wal_source_refused_where_the_server_lacks_logical_decoding(tmp_path):
    from recovery import embedded

    bindir = embedded.find_bindir()
    if bindir is None or os.environ.get("RECOVERY_TEST_DSN"):
        pytest.skip("needs the machine's PostgreSQL binaries")
    cluster = embedded.start_local(bindir, logical=False)
    try:
        from click.testing import CliRunner

        from recovery.cli import main
        from recovery.schema import init

        with connect(cluster.url) as c:
            init(c)
            c.execute("CREATE TABLE t (id int PRIMARY KEY)")
            c.commit()
        r = CliRunner().invoke(
            main, ["capture", "enable", "t", "--source", "wal", "--db", cluster.url]
        )
        assert r.exit_code == 1
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and "wal_level" in lines[0] and "logical" in lines[0], r.output
        with connect(cluster.url) as c:
            assert c.execute("SELECT count(*) FROM _recovery.captured").fetchone() == (0,)
            assert c.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass"
            ).fetchone() == (0,)
    finally:
        cluster.stop()


def test_lost_slot_is_reported_and_capture_recovers(tmp_path):
    from click.testing import CliRunner

    from recovery import embedded
    from recovery.cli import main
    from recovery.schema import init

    bindir = embedded.find_bindir()
    if bindir is None or os.environ.get("RECOVERY_TEST_DSN"):
        pytest.skip("needs the machine's PostgreSQL binaries")
    cluster = embedded.start_local(bindir, conf={"max_slot_wal_keep_size": "1MB"})
    url = cluster.url

    def run(*args: str):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(main, [*args, "--db", url])

    try:
        with connect(url) as c:
            init(c)
            c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            c.execute("CREATE TABLE junk (id int, v text)")
            c.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
            c.commit()
            enable_capture(c, ["t"], source="wal")
            c.execute("SET recovery.tag = 'lost'")
            c.execute("UPDATE t SET v = 'x' WHERE id = 1")
            c.commit()
            c.execute("RESET recovery.tag")
            # far more WAL than max_slot_wal_keep_size, then checkpoints remove it
            for _ in range(3):
                c.execute(
                    "INSERT INTO junk SELECT g, repeat('x', 200) FROM generate_series(1, 100000) g"
                )
                c.commit()
                c.execute("SELECT pg_switch_wal()")
                c.execute("CHECKPOINT")
                c.commit()
            assert c.execute("SELECT wal_status FROM pg_replication_slots").fetchone() == ("lost",)
        r = run("capture", "status")
        assert r.exit_code == 0
        assert "lost WAL it needed" in r.output
        r = run("rollback", "--tag", "lost", "--yes")
        assert r.exit_code == 1
        assert "were not captured" in r.output and "capture enable" in r.output
        assert len(r.output.strip().splitlines()) == 1
        r = run("capture", "enable", "t", "--source", "wal")
        assert r.exit_code == 0, r.output
        with connect(url) as c:
            assert c.execute("SELECT wal_status FROM pg_replication_slots").fetchone() != ("lost",)
            gap = c.execute(
                "SELECT detail FROM _recovery.events WHERE kind = 'wal' AND detail LIKE "
                "'%recreated%'"
            ).fetchall()
            assert len(gap) == 1 and "were not captured" in gap[0][0]
            c.execute("SET recovery.tag = 'bad'")
            c.execute("UPDATE t SET v = 'y' WHERE id = 2")
            c.commit()
        r = run("rollback", "--tag", "bad", "--yes")
        assert r.exit_code == 0, r.output
        with connect(url) as c:
            assert c.execute("SELECT * FROM t ORDER BY 1").fetchall() == [(1, "x"), (2, "b")]
    finally:
        cluster.stop()


def test_composite_key_quoted_names_generated_identity_and_table_renames(conn, sql_exec):
    sql_exec(
        'CREATE SCHEMA "Sales Dept"; CREATE TABLE "Sales Dept"."Order Lines" ('
        ' "Order ID" int, "line#" int, n int GENERATED ALWAYS AS IDENTITY,'
        ' "Qty" int, total int GENERATED ALWAYS AS ("Qty" * 10) STORED, "s" text,'
        ' PRIMARY KEY ("Order ID", "line#"));'
        ' INSERT INTO "Sales Dept"."Order Lines" ("Order ID", "line#", "Qty", s)'
        " SELECT o, l, o + l, 'x' FROM generate_series(1, 2) o, generate_series(1, 2) l"
    )
    enable_capture(conn, ['"Sales Dept"."Order Lines"'], source="wal")
    before = snap(conn, '"Sales Dept"."Order Lines"')
    sql_exec(
        'SET recovery.tag = \'bad\'; UPDATE "Sales Dept"."Order Lines" SET "Qty" = 0,'
        " s = E'tab\\there' WHERE \"line#\" = 1"
    )
    sql_exec('ALTER TABLE "Sales Dept"."Order Lines" RENAME TO "Lines"')
    sql_exec('ALTER TABLE "Sales Dept"."Lines" SET SCHEMA public')
    sql_exec(
        'SET recovery.tag = \'bad\'; DELETE FROM "Lines" WHERE "Order ID" = 2 AND "line#" = 2;'
        ' INSERT INTO "Lines" ("Order ID", "line#", "Qty", s) VALUES (3, 1, 5, \'new\')'
    )
    rollback(conn, BAD)
    assert snap(conn, '"Lines"') == before


def test_the_undo_s_own_writes_are_captured_after_its_drain(conn, sql_exec, acc):
    """The drain marks its session with a replication origin (PostgreSQL 16: pgoutput
    then skips the journal rows it wrote); the undo that follows on the same connection
    must not carry it, or its writes would escape capture."""
    sql_exec("SET recovery.tag = 'bad'; UPDATE acc SET n = 0 WHERE id <= 2")
    report = rollback(conn, BAD)
    assert snap(conn, "acc")[:2] == ["(1,v1,10)", "(2,v2,20)"]
    assert conn.execute("SELECT pg_replication_origin_session_is_setup()").fetchone() == (False,)
    conn.rollback()
    drain(conn)
    undo_tag = f"recovery-undo-{report.op_id}"
    rows = conn.execute(
        "SELECT s.op::text, j.rec_img::text, (j.c1, j.c2, j.c3)::text FROM _recovery.j_1 j"
        " JOIN _recovery.stmt s ON s.stmt_id = j.rec_stmt WHERE s.tag = %s ORDER BY 3, 2",
        [undo_tag],
    ).fetchall()
    conn.rollback()
    assert rows == [
        ("U", "B", "(1,v1,0)"),
        ("U", "A", "(1,v1,10)"),
        ("U", "B", "(2,v2,0)"),
        ("U", "A", "(2,v2,20)"),
    ]
    # and it can be undone in turn
    rollback(conn, Selector(tags=(undo_tag,)))
    assert snap(conn, "acc")[:2] == ["(1,v1,0)", "(2,v2,0)"]


def test_an_undo_that_suspends_the_table_s_triggers_keeps_the_wal_hooks(conn, sql_exec):
    sql_exec(
        "CREATE TABLE u (id int PRIMARY KEY, v text, touched int DEFAULT 0);"
        " CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN NEW.touched := NEW.touched + 1; RETURN NEW; END $$;"
        " CREATE TRIGGER u_touch BEFORE UPDATE ON u FOR EACH ROW EXECUTE FUNCTION touch();"
        " INSERT INTO u VALUES (1, 'a'), (2, 'b')"
    )
    enable_capture(conn, ["u"], source="wal")
    sql_exec("SET recovery.tag = 'bad'; UPDATE u SET v = 'x'")
    report = rollback(conn, BAD)
    assert snap(conn, "u") == ["(1,a,0)", "(2,b,0)"]  # the trigger was suspended
    drain(conn)
    got = conn.execute(
        "SELECT tag, db_user, nrows FROM _recovery.stmt WHERE tag LIKE 'recovery-undo-%'"
    ).fetchall()
    conn.rollback()
    assert got == [(f"recovery-undo-{report.op_id}", conn.info.user, 2)]
    assert sql_exec(
        "SELECT tgname::text, tgenabled::text FROM pg_trigger WHERE tgrelid = 'u'::regclass"
        " AND NOT tgisinternal ORDER BY 1"
    ) == [
        ("_recovery_wal_cap", "A"),
        ("_recovery_wal_t", "A"),
        ("_recovery_wal_who", "A"),
        ("u_touch", "O"),
    ]


def test_commands_wait_for_a_streaming_follow_and_a_killed_follow_loses_nothing(
    conn, sql_exec, db_url, acc, cli
):
    env = dict(os.environ, RECOVERY_DB_URL=db_url)

    def start() -> subprocess.Popen:  # type: ignore[type-arg]
        p = subprocess.Popen(
            [sys.executable, "-m", "recovery", "capture", "follow", "--interval", "0.2"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until it holds the slot
            if sql_exec(
                "SELECT active_pid IS NOT NULL FROM pg_replication_slots"
                " WHERE slot_name = _recovery.wal_slot()"
            ) == [(True,)]:
                return p
            time.sleep(0.1)
        p.kill()
        raise AssertionError(f"follow did not start: {p.communicate()[1]}")

    p = start()
    try:
        sql_exec("SET recovery.tag = 'bad'; UPDATE acc SET n = -1 WHERE id <= 3")
        # the command cannot read the slot follow holds: it waits for follow's journal
        r = cli("changes", "--tag", "bad")
        assert r.exit_code == 0, r.output
        assert "3 row change(s) in 1 statement(s)" in r.output
        for i in range(5):
            sql_exec(f"SET recovery.tag = 'bad'; UPDATE acc SET v = 'k{i}' WHERE id = 4")
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=20)
        p = start()  # again, from the last confirmed position
        r = cli("rollback", "--tag", "bad", "--yes")
        assert r.exit_code == 0, r.output
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)
    assert snap(conn, "acc") == [
        "(1,v1,10)",
        "(2,v2,20)",
        "(3,v3,30)",
        "(4,v4,40)",
        "(5,v5,50)",
        "(6,v6,60)",
    ]
    # each change journaled once
    assert sql_exec("SELECT count(*), sum(nrows) FROM _recovery.stmt WHERE tag = 'bad'") == [(6, 8)]


def test_messages_recovery_did_not_write_are_ignored_and_recorded(conn, sql_exec, acc):
    """pg_logical_emit_message is open to every role: garbage or forged messages under
    recovery's prefixes never stop the drain, never attribute a change to someone else,
    never reorder or reshape the journal."""
    sql_exec("SELECT pg_logical_emit_message(true, 'recovery.who:_recovery', 'garbage')")
    sql_exec(
        "SELECT pg_logical_emit_message(true, 'recovery.shape:_recovery',"
        ' \'{"t": 1, "c": [["id", "c1"], ["v", "c2"], ["n", "c2"]]}\')'
    )
    sql_exec("SET recovery.tag = 'bad'; UPDATE acc SET n = 0 WHERE id = 1")
    sql_exec(
        "SELECT pg_logical_emit_message(true, 'recovery.truncate:_recovery',"
        ' \'{"p": 1, "g": 1}\')'
    )
    sql_exec(
        "BEGIN; SELECT pg_logical_emit_message(true, 'recovery.who:_recovery',"
        ' \'["alice", "payroll", null, 1, 1, "guess"]\'); SET LOCAL recovery.said = \'=\';'
        " UPDATE acc SET n = 1 WHERE id = 2; COMMIT"
    )
    assert journal(conn) == [
        (1, "U", "bad", 1, "A", "(1,v1,0)"),
        (1, "U", "bad", 1, "B", "(1,v1,10)"),
        (2, "U", None, 1, "A", "(2,v2,1)"),
        (2, "U", None, 1, "B", "(2,v2,20)"),
    ]
    assert sql_exec("SELECT db_user FROM _recovery.stmt ORDER BY stmt_id") == [
        (conn.info.user,),
        ("unknown",),  # hidden by the forged recovery.said: never attributed to alice
    ]
    assert sql_exec("SELECT detail FROM _recovery.events WHERE kind = 'wal' ORDER BY id") == [
        (
            "4 message(s) under recovery's prefixes without the hooks' key were ignored "
            "(written by someone else with pg_logical_emit_message)",
        )
    ]
    assert capture_status(conn)[0].state == "on"


def test_two_retypes_and_a_rename_between_drains(conn, sql_exec):
    sql_exec("CREATE TABLE r (id int PRIMARY KEY, w int)")
    sql_exec("INSERT INTO r VALUES (1, 1), (2, 2)")
    enable_capture(conn, ["r"], source="wal")
    sql_exec("SET recovery.tag = 'bad'; UPDATE r SET w = 10 WHERE id = 1")
    sql_exec("ALTER TABLE r ALTER COLUMN w TYPE bigint")
    sql_exec("ALTER TABLE r ALTER COLUMN w TYPE text")
    sql_exec("SET recovery.tag = 'bad'; UPDATE r SET w = 'abc' WHERE id = 2")
    sql_exec("ALTER TABLE r ADD COLUMN y int")
    sql_exec("ALTER TABLE r ADD COLUMN z int")
    rollback(conn, BAD)
    assert snap(conn, "r") == ["(1,1,,)", "(2,2,,)"]
    # one journal version per retype, not one per rebuild
    assert sql_exec("SELECT count(*) FROM _recovery.columns WHERE table_id = 1 AND attnum = 2") == [
        (3,)
    ]


def test_moving_to_trigger_after_a_write_in_the_same_transaction_is_refused(conn, sql_exec, acc):
    conn.execute("UPDATE acc SET n = 5 WHERE id = 1")
    with pytest.raises(RecoveryError, match="in a transaction of its own"):
        enable_capture(conn, ["acc"], source="trigger")
    conn.rollback()
    # a drain earlier in the transaction (it holds the drain's lock) does not hang it
    from recovery import changes

    changes(conn, Selector(tables=("acc",)))
    enable_capture(conn, ["acc"], source="trigger")
    conn.commit()
    assert capture_status(conn)[0].source == "trigger"


def test_disabled_in_a_transaction_then_moved_to_trigger_keeps_the_backlog(conn, sql_exec, acc):
    sql_exec("SET recovery.tag = 'bad'; UPDATE acc SET n = 0 WHERE id = 1")
    with conn.transaction():
        disable_capture(conn, ["acc"])
    conn.commit()
    enable_capture(conn, ["acc"], source="trigger")
    sql_exec("SET recovery.tag = 'bad'; UPDATE acc SET n = -1 WHERE id = 2")
    rollback(conn, BAD)
    assert snap(conn, "acc")[:2] == ["(1,v1,10)", "(2,v2,20)"]


def test_a_trigger_writing_another_captured_table_keeps_each_table_s_depth(conn, sql_exec):
    sql_exec(
        "CREATE TABLE main (id int PRIMARY KEY, v int); CREATE TABLE audit (id serial"
        " PRIMARY KEY, main_id int); CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN INSERT INTO audit (main_id) VALUES (NEW.id); RETURN NEW; END $$;"
        " CREATE TRIGGER main_note BEFORE UPDATE ON main FOR EACH ROW EXECUTE FUNCTION note();"
        " INSERT INTO main VALUES (1, 1), (2, 2), (3, 3)"
    )
    enable_capture(conn, ["main", "audit"], source="wal")
    sql_exec("SET recovery.tag = 'bad'; UPDATE main SET v = 0")
    sql_exec("UPDATE main SET v = 9 WHERE id = 1")
    drain(conn)
    got = conn.execute(
        "SELECT c.table_name, s.op::text, s.depth, s.nrows FROM _recovery.stmt s"
        " JOIN _recovery.captured c USING (table_id) WHERE c.table_name = 'main'"
        " ORDER BY s.stmt_id"
    ).fetchall()
    conn.rollback()
    assert [g[:3] for g in got] == [("main", "U", 1)] * len(got)
    assert sum(g[3] for g in got) == 4
    audit = sql_exec(
        "SELECT DISTINCT s.depth FROM _recovery.stmt s JOIN _recovery.captured c"
        " USING (table_id) WHERE c.table_name = 'audit'"
    )
    assert audit == [(2,)]


def test_creating_the_slot_does_not_wait_forever_for_a_long_transaction(
    conn, sql_exec, db_url, monkeypatch
):
    from recovery.capture import wal

    monkeypatch.setattr(wal, "SLOT_WAIT", 1)
    sql_exec("CREATE TABLE w (id int PRIMARY KEY)")
    with psycopg.connect(db_url) as long_one:
        long_one.execute("SELECT txid_current()")  # an open transaction with an id
        with pytest.raises(RecoveryError, match="waits for every running transaction") as exc:
            enable_capture(conn, ["w"], source="wal")
        assert f"pid {long_one.info.backend_pid}" in str(exc.value)
    conn.rollback()
    assert sql_exec("SELECT count(*) FROM _recovery.captured") == [(0,)]
    assert sql_exec(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = _recovery.wal_slot()"
    ) == [(0,)]


def test_a_dropped_last_table_leaves_a_slot_that_status_names_and_disable_drops(
    conn, sql_exec, acc, cli
):
    sql_exec("DROP TABLE acc")
    r = cli("capture", "status")
    assert r.exit_code == 0
    assert "holds WAL but no table is captured from the WAL any more" in r.output
    r = cli("capture", "disable", "--all", "--yes")
    assert r.exit_code == 0, r.output
    assert sql_exec(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = _recovery.wal_slot()"
    ) == [(0,)]
    assert sql_exec("SELECT count(*) FROM pg_publication") == [(0,)]
