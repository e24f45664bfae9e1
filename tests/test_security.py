"""Capture under an unprivileged application role: it works, it cannot be tampered with.

The application connects as its own role, with DML on its tables and nothing on the
recovery schema, as it would in production.  A read-only viewer gets the grant the
README documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from recovery import Selector, enable_capture, rollback
from recovery.cli import main
from tests.conftest import rows

APP = "recovery_test_app"
VIEWER = "recovery_test_viewer"
ORIGINAL = [(1, "ann", 100), (2, "bob", 200), (3, "cy", 300)]


def url_as(db_url: str, user: str) -> str:
    """The test database's URL for another role (the test cluster trusts local logins)."""
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    info["user"] = user
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**info)


@pytest.fixture(scope="session")
def roles(server_url: str) -> Iterator[None]:
    with psycopg.connect(server_url, autocommit=True) as a:
        for name in (APP, VIEWER):
            if not a.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone():
                a.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield
    with psycopg.connect(server_url, autocommit=True) as a:
        for name in (APP, VIEWER):
            try:
                a.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            except psycopg.Error:
                pass


@pytest.fixture
def app_url(db_url: str, conn: psycopg.Connection, sql_exec, roles) -> str:  # type: ignore[no-untyped-def]
    """accounts (captured) with DML granted to the app role; its URL."""
    sql_exec("CREATE TABLE accounts (id serial PRIMARY KEY, owner text NOT NULL, balance int)")
    sql_exec("INSERT INTO accounts (owner, balance) VALUES ('ann', 100), ('bob', 200), ('cy', 300)")
    enable_capture(conn, ["accounts"])
    sql_exec(
        sql.SQL(
            "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO {0};"
            " GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {0}"
        )
        .format(sql.Identifier(APP))
        .as_string(None)
    )
    return url_as(db_url, APP)


def journal(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    conn.rollback()
    out = conn.execute(
        "SELECT st.stmt_id, st.op, st.txid, st.db_user, st.tag, st.depth, st.nrows,"
        " st.at > now() - interval '5 minutes' AND st.at <= clock_timestamp()"
        " FROM _recovery.stmt st ORDER BY st.stmt_id"
    ).fetchall()
    conn.rollback()
    return out


def recovery_state(conn: psycopg.Connection) -> dict[str, Any]:
    out: dict[str, Any] = {"accounts": rows(conn, "accounts")}
    for q in (
        "SELECT * FROM _recovery.stmt ORDER BY stmt_id",
        "SELECT * FROM _recovery.captured ORDER BY 1",
        "SELECT * FROM _recovery.meta ORDER BY 1",
        "SELECT op_id, kind, status FROM _recovery.operations ORDER BY 1",
        "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'accounts'::regclass ORDER BY 1",
        "SELECT relname FROM pg_class WHERE relnamespace = '_recovery'::regnamespace ORDER BY 1",
    ):
        conn.rollback()
        out[q] = conn.execute(q).fetchall()  # type: ignore[arg-type]
    tid = conn.execute("SELECT table_id FROM _recovery.captured").fetchone()[0]  # type: ignore[index]
    out["journal"] = conn.execute(
        sql.SQL("SELECT * FROM {} ORDER BY rec_stmt, rec_img, rec_ord").format(
            sql.Identifier("_recovery", f"j_{tid}")
        )
    ).fetchall()
    conn.rollback()
    return out


def test_app_role_writes_are_captured_as_the_app(app_url, conn):  # type: ignore[no-untyped-def]
    txids = []
    with psycopg.connect(app_url) as app:
        assert app.execute("SELECT session_user").fetchone()[0] == APP  # type: ignore[index]
        app.execute("SET recovery.tag = 'deploy-7'")
        app.execute("INSERT INTO accounts (owner, balance) VALUES ('dee', 400), ('eve', 500)")
        app.execute("UPDATE accounts SET balance = balance + 1 WHERE id <= 3")
        txids.append(app.execute("SELECT txid_current()").fetchone()[0])  # type: ignore[index]
        app.commit()
        app.execute("DELETE FROM accounts WHERE owner = 'eve'")
        txids.append(app.execute("SELECT txid_current()").fetchone()[0])  # type: ignore[index]
        app.commit()
        app.execute("TRUNCATE accounts")
        txids.append(app.execute("SELECT txid_current()").fetchone()[0])  # type: ignore[index]
        app.commit()
    t1, t2, t3 = txids
    got = [row[1:] for row in journal(conn)]
    assert [(op, txid, user, tag, n, recent) for op, txid, user, tag, _d, n, recent in got] == [
        ("I", t1, APP, "deploy-7", 2, True),
        ("U", t1, APP, "deploy-7", 3, True),
        ("D", t2, APP, "deploy-7", 1, True),
        ("T", t3, APP, "deploy-7", 4, True),
    ]
    assert len({depth for _s, _op, _t, _u, _tag, depth, _n, _r in journal(conn)}) == 1
    # What was captured is complete: undoing the app's work restores the table exactly.
    report = rollback(conn, Selector(users=(APP,)))
    assert report.status == "done"
    assert rows(conn, "accounts") == ORIGINAL


FORBIDDEN = [
    "SELECT * FROM _recovery.stmt",
    "SELECT * FROM _recovery.stmt_1",
    "SELECT * FROM _recovery.{j}",
    "SELECT * FROM _recovery.{j}_1",
    "SELECT * FROM _recovery.captured",
    "INSERT INTO _recovery.stmt (gen, stmt_id, table_id, op, txid, at, db_user, depth, nrows)"
    " VALUES (1, 999, 1, 'U', 1, now(), 'x', 0, 1)",
    "INSERT INTO _recovery.{j} (rec_gen, rec_stmt, rec_ord, rec_img) VALUES (1, 999, 1, 'B')",
    "INSERT INTO _recovery.captured (relid, schema_name, table_name, key_attnums, key_source)"
    " VALUES (1, 'x', 'y', '{{1}}', 'pk')",
    "UPDATE _recovery.stmt SET tag = 'forged'",
    "UPDATE _recovery.{j} SET rec_ord = 0",
    "UPDATE _recovery.captured SET enabled = false",
    "DELETE FROM _recovery.stmt",
    "DELETE FROM _recovery.{j}",
    "DELETE FROM _recovery.captured",
    "TRUNCATE _recovery.stmt",
    "TRUNCATE _recovery.{j}",
    "SELECT _recovery.build_capture(1)",
    "SELECT _recovery.drop_capture(1)",
    "SELECT nextval('_recovery.stmt_seq')",
    "DROP TABLE _recovery.{j}",
    "DROP TABLE _recovery.stmt",
    "DROP SCHEMA _recovery CASCADE",
    "ALTER TABLE _recovery.{j} DETACH PARTITION _recovery.{j}_1",
    "ALTER TABLE accounts DISABLE TRIGGER _recovery_capture_u",
    "ALTER TABLE accounts DISABLE TRIGGER ALL",
    "DROP TRIGGER _recovery_capture_d ON accounts",
    "SET session_replication_role = replica",
]


def test_app_role_cannot_touch_the_journal(app_url, conn):  # type: ignore[no-untyped-def]
    with psycopg.connect(app_url) as app:
        app.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
        app.commit()
    tid = conn.execute("SELECT table_id FROM _recovery.captured").fetchone()[0]  # type: ignore[index]
    before = recovery_state(conn)
    with psycopg.connect(app_url) as app:
        for statement in FORBIDDEN:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement.format(j=f"j_{tid}"))  # type: ignore[arg-type]
                pytest.fail(f"the app role was allowed: {statement}")
            app.rollback()
            assert recovery_state(conn) == before, statement
    # Capture still works for the app afterwards.
    with psycopg.connect(app_url) as app:
        app.execute("UPDATE accounts SET balance = 1 WHERE id = 2")
    assert [(op, user, n) for _s, op, _t, user, _tag, _d, n, _at in journal(conn)] == [
        ("U", APP, 1),
        ("U", APP, 1),
    ]


def test_lookalike_functions_and_tables_are_never_used(app_url, db_url, conn, sql_exec):  # type: ignore[no-untyped-def]
    sql_exec(
        sql.SQL("GRANT CREATE ON DATABASE {} TO {}")
        .format(sql.Identifier(conn.info.dbname), sql.Identifier(APP))
        .as_string(None)
    )
    tid = conn.execute("SELECT table_id FROM _recovery.captured").fetchone()[0]  # type: ignore[index]
    conn.rollback()
    with psycopg.connect(app_url, autocommit=True) as app:
        app.execute("CREATE SCHEMA evil")
        app.execute("CREATE TABLE evil.marker (fn text)")
        # Tables named like the journal's, holding nothing.
        for name in (
            "stmt",
            "stmt_1",
            "captured",
            "meta",
            f"j_{tid}",
            f"j_{tid}_1",
            "rec_old",
            "rec_new",
            "stmt_seq_t",
        ):
            app.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier("evil", name)))
        app.execute("CREATE SEQUENCE evil.stmt_seq START 1000000")

        def fn(signature: str, returns: str, value: str) -> None:
            name = signature.split("(")[0]
            app.execute(
                f"CREATE FUNCTION evil.{signature} RETURNS {returns} LANGUAGE plpgsql AS $$"
                f" BEGIN INSERT INTO evil.marker VALUES ('{name}'); RETURN {value}; END $$"
            )

        fn("nextval(regclass)", "bigint", "-1")
        fn("nextval(text)", "bigint", "-2")
        fn("txid_current()", "bigint", "42")
        fn("current_setting(text, boolean)", "text", "'evil-tag'")
        fn("current_setting(text)", "text", "'evil-tag'")
        fn("clock_timestamp()", "timestamptz", "'2000-01-01'")
        fn("now()", "timestamptz", "'2000-01-01'")
        fn("row_number()", "bigint", "-7")
        fn("left(text, integer)", "text", "'X'")
        fn("left(text, bigint)", "text", "'X'")
        fn("pg_trigger_depth()", "integer", "99")
        fn("shape(oid)", "text", "'x'")
        fn("shape(regclass)", "text", "'x'")
        fn("format(text)", "text", "'x'")
        fn("set_config(text, text, boolean)", "text", "'x'")
        fn("nullif(text, text)", "text", "'x'")

    # A plain write first, for the depth a top-level statement gets.
    with psycopg.connect(app_url) as app:
        app.execute("UPDATE accounts SET balance = balance WHERE id = 1")
    ((base_stmt, *_, depth, _n, _r),) = journal(conn)
    with psycopg.connect(app_url) as app:
        # The look-alikes come before pg_catalog for everything this session runs.
        app.execute("SET search_path = evil, pg_catalog, public, pg_temp")
        app.execute("SET recovery.tag = 'deploy-evil'")
        app.execute("INSERT INTO accounts (owner, balance) VALUES ('dee', 400)")
        app.execute("UPDATE accounts SET balance = 0 WHERE id <= 2")
        app.execute("DELETE FROM accounts WHERE id = 3")
        t1 = app.execute("SELECT pg_catalog.txid_current()").fetchone()[0]  # type: ignore[index]
        app.commit()
        app.execute("TRUNCATE accounts")
        t2 = app.execute("SELECT pg_catalog.txid_current()").fetchone()[0]  # type: ignore[index]
        app.commit()

    assert sql_exec("SELECT fn FROM evil.marker") == []
    for name in (
        "stmt",
        "stmt_1",
        "captured",
        "meta",
        f"j_{tid}",
        f"j_{tid}_1",
        "rec_old",
        "rec_new",
    ):
        assert (
            sql_exec(
                sql.SQL("SELECT * FROM {}").format(sql.Identifier("evil", name)).as_string(None)
            )
            == []
        ), name
    got = journal(conn)[1:]
    assert [r[1:] for r in got] == [
        ("I", t1, APP, "deploy-evil", depth, 1, True),
        ("U", t1, APP, "deploy-evil", depth, 2, True),
        ("D", t1, APP, "deploy-evil", depth, 1, True),
        ("T", t2, APP, "deploy-evil", depth, 3, True),
    ]
    # Statement ids come from the real sequence, in order.
    assert [r[0] for r in got] == list(range(base_stmt + 1, base_stmt + 5))
    j = sql.Identifier("_recovery", f"j_{tid}")
    assert conn.execute(
        sql.SQL(
            "SELECT rec_stmt, rec_img, array_agg(rec_ord ORDER BY rec_ord) FROM {}"
            " WHERE rec_stmt > %s GROUP BY 1, 2 ORDER BY 1, 2"
        ).format(j),
        [base_stmt],
    ).fetchall() == [
        (got[0][0], "A", [1]),
        (got[1][0], "A", [1, 2]),
        (got[1][0], "B", [1, 2]),
        (got[2][0], "B", [1]),
        (got[3][0], "B", [1, 2, 3]),
    ]
    conn.rollback()
    # And the before-images are right: undoing deploy-evil gives the table back.
    assert rollback(conn, Selector(tags=("deploy-evil",))).status == "done"
    assert rows(conn, "accounts") == ORIGINAL


def _cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--db", url], catch_exceptions=False)


def test_viewer_reads_changes_and_changes_nothing(app_url, db_url, conn, sql_exec):  # type: ignore[no-untyped-def]
    # The grant the README documents for a read-only viewer.
    sql_exec(
        sql.SQL(
            "GRANT USAGE ON SCHEMA _recovery TO {0};"
            " GRANT SELECT ON ALL TABLES IN SCHEMA _recovery TO {0}"
        )
        .format(sql.Identifier(VIEWER))
        .as_string(None)
    )
    with psycopg.connect(app_url) as app:
        app.execute("SET recovery.tag = 'deploy-9'")
        app.execute("UPDATE accounts SET balance = -1 WHERE id <= 2")
    viewer = url_as(db_url, VIEWER)
    res = _cli(viewer, "changes", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["statements"], doc["rows"]) == (1, 2)
    assert [(t["tag"], t["user"]) for t in doc["by_transaction"]] == [("deploy-9", APP)]
    res = _cli(viewer, "changes", "--tag", "deploy-9")
    assert res.exit_code == 0 and "2 row change(s) in 1 statement(s)" in res.stdout
    # The other read-only commands the README promises the viewer.
    res = _cli(viewer, "capture", "status", "--json")
    assert res.exit_code == 0, res.output
    assert [(t["table"], t["state"], t["rows"]) for t in json.loads(res.stdout)] == [
        ("public.accounts", "on", 2)
    ]
    res = _cli(viewer, "diff", "--tag", "deploy-9", "--json")
    assert res.exit_code == 0, res.output
    assert [(d["key"], d["columns"]) for d in json.loads(res.stdout)] == [
        ({"id": "1"}, {"balance": ["100", "-1"]}),
        ({"id": "2"}, {"balance": ["200", "-1"]}),
    ]
    res = _cli(viewer, "operations", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == []

    before = recovery_state(conn)
    for args in (
        ("rollback", "--tag", "deploy-9", "--yes"),
        ("capture", "disable", "accounts", "--yes"),
        ("capture", "enable", "accounts"),
        ("prune", "--older-than", "0s", "--yes"),
        ("init",),
    ):
        res = _cli(viewer, *args)
        assert res.exit_code == 1, (args, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, res.stderr)
        assert "permission denied" in lines[0] or "cannot install" in lines[0], lines[0]
        assert recovery_state(conn) == before, args
    with psycopg.connect(viewer) as v:
        for stmt in (
            "UPDATE _recovery.stmt SET tag = 'x'",
            "DELETE FROM _recovery.captured",
            "INSERT INTO _recovery.meta VALUES ('k', 'v')",
            "SELECT _recovery.build_capture(1)",
            "UPDATE accounts SET balance = 5",
            "TRUNCATE _recovery.stmt",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                v.execute(stmt)  # type: ignore[arg-type]
            v.rollback()
    assert recovery_state(conn) == before
