"""Alembic migrations under recovery guard: each revision's writes tagged with its id."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

import recovery
from recovery.cli import main
from tests.conftest import rows, sqlalchemy_url

pytest.importorskip("alembic")

ENV_PY = """
import json
import os
from alembic import context
from sqlalchemy import create_engine
import recovery.migrations

def run_migrations_online():
    engine = create_engine(os.environ["TEST_SQLALCHEMY_URL"])
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None{configure})
        recovery.migrations.guard_alembic(context, {guard})
        with context.begin_transaction():
            context.run_migrations()

run_migrations_online()
"""

REVISION = """
from alembic import op
import sqlalchemy as sa

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None

def upgrade():
{body}

def downgrade():
    pass
"""


ACCOUNT_REVS = [
    (
        "a1a1a1a1a1a1",
        None,
        "    op.execute('UPDATE accounts SET balance = balance + 1000 WHERE id <= 10')",
    ),
    (
        "b2b2b2b2b2b2",
        "a1a1a1a1a1a1",
        "    op.execute('DELETE FROM accounts WHERE id BETWEEN 191 AND 200')\n"
        "    op.add_column('accounts', sa.Column('flag', sa.Integer))",
    ),
]


def _project(
    tmp_path: Path,
    revs: list[tuple[str, str | None, str]] = ACCOUNT_REVS,
    guard: str = "max_rows=1000",
    configure: str = "",
) -> Path:
    """An Alembic project: env.py calls guard_alembic(context, <guard>) after
    context.configure(..., <configure>); one file per (revision, down_revision, body)."""
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(
        ENV_PY.replace("{guard}", guard).replace("{configure}", configure)
    )
    (tmp_path / "script.py.mako").write_text("")
    ini = tmp_path / "alembic.ini"
    ini.write_text(f"[alembic]\nscript_location = {tmp_path}\n")
    for rev, down, body in revs:
        (tmp_path / "versions" / f"{rev}.py").write_text(
            REVISION.format(rev=rev, down=down, body=body)
        )
    return ini


def test_alembic_upgrade_under_guard_then_undo_one_revision(db_url, conn, sql_exec, tmp_path):
    sql_exec("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, note text)")
    sql_exec("INSERT INTO accounts SELECT g, g * 10, 'n' || g FROM generate_series(1, 200) g")
    before = rows(conn, "accounts")
    ini = _project(tmp_path)
    env = dict(
        os.environ,
        TEST_SQLALCHEMY_URL=sqlalchemy_url(db_url),
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
    )
    stop = threading.Event()

    def legit() -> None:
        # Like a well-behaved application beside a migration: one row per statement,
        # and a short lock_timeout, retried later, so that neither a row lock nor the
        # migration's ALTER TABLE (which waits for this session's table lock) can
        # deadlock with it.
        with psycopg.connect(db_url, autocommit=True) as c:
            c.execute("SET lock_timeout = '50ms'")
            while not stop.is_set():
                for id_ in (5, 195):
                    try:
                        c.execute("UPDATE accounts SET note = 'legit' WHERE id = %s", [id_])
                    except psycopg.errors.LockNotAvailable:
                        pass
                time.sleep(0.05)

    # The first legitimate write lands before the migration starts, so the expected
    # state does not depend on which client reaches row 195 first.
    sql_exec("UPDATE accounts SET note = 'legit' WHERE id IN (5, 195)")
    t = threading.Thread(target=legit)
    t.start()
    try:
        res = CliRunner().invoke(
            main,
            [
                "--db",
                db_url,
                "guard",
                "--tag",
                "deploy-9",
                "--table",
                "accounts",
                "--",
                sys.executable,
                "-m",
                "alembic",
                "-c",
                str(ini),
                "upgrade",
                "head",
            ],
            env=env,
            catch_exceptions=False,
        )
    finally:
        stop.set()
        t.join()
    assert res.exit_code == 0, res.output
    tags = dict(
        sql_exec(
            "SELECT tag, sum(nrows) FROM _recovery.stmt WHERE tag LIKE 'alembic:%' GROUP BY tag"
        )
    )
    assert tags == {"alembic:a1a1a1a1a1a1": 10, "alembic:b2b2b2b2b2b2": 10}

    # Undo the second migration only: its deleted rows come back (with the column it
    # added left NULL), the first migration's change and the legitimate notes stay.
    assert (
        CliRunner()
        .invoke(main, ["--db", db_url, "rollback", "--tag", "alembic:b2b2b2b2b2b2", "--yes"])
        .exit_code
        == 0
    )
    now = {r[0]: r for r in rows(conn, "accounts")}
    assert len(now) == 200
    for id_, balance, note in before:
        want_balance = balance + 1000 if id_ <= 10 else balance
        want_note = "legit" if id_ in (5, 195) else note
        assert now[id_] == (id_, want_balance, want_note, None), id_

    res = CliRunner().invoke(
        main, ["--db", db_url, "rollback", "--tag", "alembic:a1a1a1a1a1a1", "--yes"]
    )
    assert res.exit_code == 0, res.output
    assert rows(conn, "accounts") == [
        (i, b, "legit" if i in (5, 195) else n, None) for i, b, n in before
    ]
    assert recovery.changes(conn, recovery.Selector(tags=("alembic:a1a1a1a1a1a1",))).rows == 10


# -- snapshots of each revision's destructive statements ---------------------------------

SHOP_REV = "c3c3c3c3c3c3"
SHOP_REVS = [
    (
        SHOP_REV,
        None,
        """\
    # 1: a join UPDATE that corrupts the orders of gold customers
    op.execute("UPDATE orders o SET amount = 0, status = 'void' FROM customers c"
               " WHERE c.id = o.customer_id AND c.tier = 'gold'")
    # 2: a DELETE whose foreign key cascades (some of those orders were corrupted by 1)
    op.execute("DELETE FROM customers WHERE id > 24")
    # 3: a column gone
    op.drop_column("customers", "tier")
    # neither destroys anything: no snapshot
    op.add_column("orders", sa.Column("note", sa.Text))
    op.execute("INSERT INTO customers VALUES (100, 'new')")""",
    )
]


def _shop(sql_exec) -> None:  # type: ignore[no-untyped-def]
    sql_exec("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, tier text)")
    sql_exec(
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES"
        " customers ON DELETE CASCADE, amount int NOT NULL, status text NOT NULL)"
    )
    sql_exec(
        "INSERT INTO customers SELECT g, 'c' || g, CASE WHEN g % 5 = 0 THEN 'gold'"
        " WHEN g % 2 = 0 THEN 'silver' END FROM generate_series(1, 30) g"
    )
    sql_exec(
        "INSERT INTO orders SELECT g, g % 30 + 1, g * 7, CASE WHEN g % 3 = 0 THEN"
        " 'cancelled' ELSE 'open' END FROM generate_series(1, 120) g"
    )


def _upgrade(db_url: str, ini: Path, *tables: str, ok: bool = True) -> None:
    """`alembic upgrade head` under `recovery guard`, as a deploy would run it."""
    env = dict(
        os.environ,
        TEST_SQLALCHEMY_URL=sqlalchemy_url(db_url),
        PYTHONPATH=str(Path(__file__).resolve().parent.parent),
    )
    res = CliRunner().invoke(
        main,
        [
            "--db",
            db_url,
            "guard",
            "--tag",
            "deploy-10",
            *[f"--table={t}" for t in tables],
            "--",
            sys.executable,
            "-m",
            "alembic",
            "-c",
            str(ini),
            "upgrade",
            "head",
        ],
        env=env,
        catch_exceptions=False,
    )
    assert (res.exit_code == 0) == ok, res.output


def _cli_json(db_url: str, *args: str):  # type: ignore[no-untyped-def]
    res = CliRunner().invoke(main, ["--db", db_url, "--json", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_alembic_snapshots_each_destructive_statement_then_restore(
    db_url, conn, sql_exec, tmp_path
):
    _shop(sql_exec)
    customers, orders = rows(conn, "customers"), rows(conn, "orders")
    tier = {c[0]: c[2] for c in customers}
    _upgrade(db_url, _project(tmp_path, SHOP_REVS, "max_rows=1000"), "customers", "orders")
    assert [c[0] for c in rows(conn, "customers")] == [*range(1, 25), 100]

    listed = _cli_json(db_url, "snapshot", "list")
    names = [f"alembic-{SHOP_REV}-{n}" for n in (1, 2, 3)]
    assert [s["name"] for s in listed] == names

    def saved(name: str) -> dict[str, tuple[list[str], set[int]]]:
        """Per table of a snapshot: its saved columns and the keys of its rows."""
        manifest = _cli_json(db_url, "snapshot", "show", name)
        assert manifest["source"]["alembic"] == SHOP_REV
        out = {}
        for item in manifest["items"]:
            assert item["key"] == ["id"]
            keys = {r[0] for r in sql_exec(f'SELECT id FROM _recovery."{item["data"]}"')}  # noqa: S608
            out[item["table"]] = ([c["name"] for c in item["columns"]], keys)
        return out

    all_cols = {
        "customers": ["id", "name", "tier"],
        "orders": ["id", "customer_id", "amount", "status"],
    }
    # 1: the orders the join UPDATE rewrote, whole rows, nothing of customers.
    assert saved(names[0]) == {
        "orders": (all_cols["orders"], {o[0] for o in orders if tier[o[1]] == "gold"})
    }
    # 2: the customers deleted and the orders their delete cascaded to.
    assert saved(names[1]) == {
        "customers": (all_cols["customers"], set(range(25, 31))),
        "orders": (all_cols["orders"], {o[0] for o in orders if o[1] > 24}),
    }
    # 3: key and dropped column of every customer left at that point.
    assert saved(names[2]) == {"customers": (["id", "tier"], set(range(1, 25)))}
    assert (
        "UPDATE orders o SET amount = 0"
        in _cli_json(db_url, "snapshot", "show", names[0])["source"]["statement"]
    )

    # Last statement's snapshot first.  The other way round, snapshot 1 would re-insert
    # orders of customers only snapshot 2 brings back (refused: foreign key), and
    # snapshot 2, holding those orders as statement 1 left them (amount 0), would then
    # put the corruption back.
    for name in reversed(names):
        res = CliRunner().invoke(main, ["--db", db_url, "restore", name, "--yes"])
        assert res.exit_code == 0, res.output
    sql_exec("DELETE FROM customers WHERE id = 100")  # added by the migration itself
    assert rows(conn, "customers") == customers
    assert [o[:4] for o in rows(conn, "orders")] == orders
    assert {o[4] for o in rows(conn, "orders")} == {None}  # the column the migration added


def test_alembic_snapshot_false_takes_none(db_url, conn, sql_exec, tmp_path):
    _shop(sql_exec)
    _upgrade(db_url, _project(tmp_path, SHOP_REVS, "snapshot=False"), "customers", "orders")
    assert _cli_json(db_url, "snapshot", "list") == []
    assert (
        sql_exec("SELECT count(*) FROM _recovery.stmt WHERE tag = %s", [f"alembic:{SHOP_REV}"])[0][
            0
        ]
        > 0
    )


def test_alembic_snapshot_goes_with_a_failed_revision(db_url, conn, sql_exec, tmp_path):
    """transaction_per_migration: the revision that fails takes its snapshot (and its
    delete) with it; the one before keeps both."""
    sql_exec("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
    sql_exec("INSERT INTO accounts SELECT g, g FROM generate_series(1, 20) g")
    revs = [
        ("d1d1d1d1d1d1", None, "    op.execute('DELETE FROM accounts WHERE id <= 2')"),
        (
            "e2e2e2e2e2e2",
            "d1d1d1d1d1d1",
            "    op.execute('DELETE FROM accounts WHERE id > 18')\n"
            "    raise RuntimeError('the migration breaks')",
        ),
    ]
    ini = _project(tmp_path, revs, configure=", transaction_per_migration=True")
    _upgrade(db_url, ini, "accounts", ok=False)
    assert [s["name"] for s in _cli_json(db_url, "snapshot", "list")] == ["alembic-d1d1d1d1d1d1-1"]
    assert [r[0] for r in rows(conn, "accounts")] == list(range(3, 21))
    res = CliRunner().invoke(main, ["--db", db_url, "restore", "alembic-d1d1d1d1d1d1-1", "--yes"])
    assert res.exit_code == 0, res.output
    assert [r[0] for r in rows(conn, "accounts")] == list(range(1, 21))


def test_prefilter_and_rendering(conn):
    from recovery.guardrails.alembic import first_keyword, render_sql, should_analyze

    assert first_keyword(" -- note\n /* a */ (\n update t set x = 1") == "UPDATE"
    assert first_keyword("/* only a comment */") == ""
    for text in [
        "UPDATE t SET x = 1",
        "delete from t",
        "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
        "TRUNCATE t",
        "DROP TABLE t",
        "ALTER TABLE t DROP x",
        "WITH d AS (DELETE FROM t) SELECT 1",
        "DO $$BEGIN END$$",
        "CALL p()",
        "SELECT purge()",
        "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 2",
        "CREATE TABLE a (i int); DELETE FROM t",
    ]:
        assert should_analyze(text), text
    for text in [
        "CREATE TABLE t (id int)",
        "INSERT INTO t VALUES (1)",
        "SET x = 1",
        "COMMENT ON TABLE t IS 'x'",
        "SELECT 1",
        "select x from t",
        "UPDATE alembic_version SET version_num='b' WHERE version_num = 'a'",
        "INSERT INTO alembic_version (version_num) VALUES ('a')",
        "CREATE TABLE a (i int); INSERT INTO a VALUES (1)",
    ]:
        assert not should_analyze(text), text
    assert not should_analyze("DELETE FROM my_versions", version_table="my_versions")
    assert should_analyze("DELETE FROM alembic_version_log")

    # Parameters become literals the way psycopg binds them; SQLAlchemy's '%%'
    # (escaped for the pyformat style) is unescaped as the driver does.
    q = "UPDATE t SET x = %(x)s WHERE id = %(id)s AND y LIKE 'a%%'"
    assert render_sql(conn, q, {"x": "it's", "id": 3}) == (
        "UPDATE t SET x = 'it''s' WHERE id = 3 AND y LIKE 'a%'",
        False,
    )
    assert render_sql(conn, "DELETE FROM t WHERE id = %s", (4,)) == (
        "DELETE FROM t WHERE id = 4",
        False,
    )
    assert render_sql(conn, "DELETE FROM t WHERE y LIKE 'a%%'", {}) == (
        "DELETE FROM t WHERE y LIKE 'a%'",
        False,
    )
    assert render_sql(conn, "DELETE FROM t WHERE y LIKE 'a%'", None) == (
        "DELETE FROM t WHERE y LIKE 'a%'",
        False,
    )
    many = [{"id": 1}, {"id": 2}]
    assert render_sql(conn, "DELETE FROM t WHERE id = %(id)s", many, executemany=True) == (
        "DELETE FROM t WHERE id = 1;\nDELETE FROM t WHERE id = 2",
        False,
    )
    from recovery.guardrails.alembic import MANY_LIMIT

    lots = [{"id": i} for i in range(MANY_LIMIT + 1)]
    assert render_sql(conn, "DELETE FROM t WHERE id = %(id)s", lots, executemany=True) == (
        "DELETE FROM t WHERE id = 0",
        True,
    )


def test_snapshot_hook_in_the_callers_transaction(conn, sql_exec, caplog):
    """The hook on a psycopg connection inside a migration-like open transaction: text
    that does not parse is let through with a warning, a destructive statement is saved
    without committing (a rollback takes the snapshot with it), names stay unique."""
    from recovery.guardrails.alembic import MANY_LIMIT, _Snapshots

    sql_exec("CREATE TABLE t (id int PRIMARY KEY, x int)")
    sql_exec("CREATE TABLE nokey (x int)")
    sql_exec("INSERT INTO t SELECT g, g FROM generate_series(1, 500) g")
    sql_exec("INSERT INTO nokey VALUES (1)")
    hook = _Snapshots("_recovery", "alembic_version")
    conn.rollback()
    conn.execute("UPDATE t SET x = 0 WHERE id = 1")  # the migration's earlier work
    cur = conn.cursor()
    idle = psycopg.pq.TransactionStatus.INTRANS

    hook(None, cur, "UPDATE t SET x = 1", {}, None, False)  # not in an upgrade(): ignored
    hook.begin("r1")
    with caplog.at_level("WARNING", logger="recovery.migrations"):
        hook(None, cur, "UPDATE t SET = WHERE", {}, None, False)
    assert "not snapshotted" in caplog.text and "line 1" in caplog.text
    assert conn.info.transaction_status == idle
    hook(None, cur, "CREATE TABLE u (i int)", {}, None, False)  # filtered out
    hook(None, cur, "DELETE FROM t WHERE id <= %(n)s", {"n": 3}, None, False)
    hook(
        None,
        cur,
        "UPDATE t SET x = %(x)s WHERE id = %(id)s",
        [{"x": 9, "id": i} for i in (7, 8)],
        None,
        True,
    )
    hook(
        None,
        cur,
        "DELETE FROM t WHERE id = %(id)s",
        [{"id": i} for i in range(MANY_LIMIT + 1)],
        None,
        True,
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="recovery.migrations"):
        hook(None, cur, "DELETE FROM nokey", {}, None, False)
    assert "no primary key" in caplog.text
    caplog.clear()
    with (
        caplog.at_level("WARNING", logger="recovery.migrations"),
        pytest.MonkeyPatch.context() as mp,
    ):  # the parser's coverage, not the data
        mp.setattr("recovery.sqlscope.analyze", lambda *a, **k: 1 / 0)
        hook(None, cur, "DELETE FROM t", {}, None, False)
    assert "the analysis failed: ZeroDivisionError" in caplog.text
    # A statement that may destroy rows but finds none now still gets its snapshot
    # (one per destructive statement; it would also keep a dropped table's definition).
    hook(None, cur, "DELETE FROM t WHERE id > 1000", {}, None, False)
    assert hook.taken == [f"alembic-r1-{n}" for n in (1, 2, 3, 4)]
    assert conn.info.transaction_status == idle  # nothing committed
    saved = {n: m for n, m in conn.execute("SELECT name, manifest FROM _recovery.snapshots")}
    keys = {
        n: sorted(r[0] for r in conn.execute(f'SELECT id FROM _recovery."{m["items"][0]["data"]}"'))
        for n, m in saved.items()
    }  # noqa: S608
    assert keys == {
        "alembic-r1-1": [1, 2, 3],
        "alembic-r1-2": [7, 8],
        "alembic-r1-3": list(range(1, 501)),
        "alembic-r1-4": [],
    }
    # It saw the transaction's own earlier write.
    assert conn.execute(
        'SELECT x FROM _recovery."{}" WHERE id = 1'.format(
            saved["alembic-r1-1"]["items"][0]["data"]
        )
    ).fetchone() == (0,)
    assert saved["alembic-r1-1"]["source"] == {
        "alembic": "r1",
        "statement": "DELETE FROM t WHERE id <= 3",
    }
    conn.rollback()
    assert sql_exec("SELECT count(*) FROM _recovery.snapshots") == [(0,)]

    # Committed with the migration; a second run of the revision gets new names.
    for _run in range(2):
        hook.begin("r1")
        hook(None, cur, "DELETE FROM t WHERE id = 1", {}, None, False)
        hook(None, cur, "DELETE FROM t WHERE id = 2", {}, None, False)
        conn.commit()
    assert [r[0] for r in sql_exec("SELECT name FROM _recovery.snapshots ORDER BY snap_id")] == [
        "alembic-r1-1",
        "alembic-r1-2",
        "alembic-r1-1-2",
        "alembic-r1-2-2",
    ]
