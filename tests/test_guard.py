"""recovery guard: tagged and capped runs of real client programs, and the Python API."""

from __future__ import annotations

import shutil
import sys
import threading
import time

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import recovery
from recovery.cli import main
from tests.conftest import rows, sqlalchemy_url

PSQL = shutil.which("psql")


def run(db_url: str, *args: str):  # type: ignore[no-untyped-def]
    """The CLI with --db before the arguments (guard passes everything after -- on)."""
    return CliRunner().invoke(main, ["--db", db_url, *args], catch_exceptions=False)


@pytest.fixture
def accounts(db_url, sql_exec, conn):  # type: ignore[no-untyped-def]
    sql_exec("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, note text)")
    sql_exec("INSERT INTO accounts SELECT g, g * 10, 'n' || g FROM generate_series(1, 200) g")
    recovery.enable_capture(conn, ["accounts"])
    return rows(conn, "accounts")


def _legit_traffic(db_url: str, stop: threading.Event) -> None:
    """Untagged writes from another client while the guarded command runs (the first
    round is written before the thread starts, so the expected state does not depend
    on which of the two clients reaches a row first)."""
    with psycopg.connect(db_url, autocommit=True) as c:
        # One row per statement and a short lock_timeout, as a well-behaved application
        # beside a migration: several rows in one statement could deadlock with it
        # (a real deadlock, but not what these tests are about).
        c.execute("SET lock_timeout = '50ms'")
        while not stop.is_set():
            for id_ in range(10, 201, 10):
                try:
                    c.execute("UPDATE accounts SET note = 'legit' WHERE id = %s", [id_])
                except psycopg.errors.LockNotAvailable:
                    pass
            time.sleep(0.05)


def _start_legit(db_url: str) -> tuple[threading.Event, threading.Thread]:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("INSERT INTO accounts VALUES (2000, 1, 'legit insert')")
        c.execute("UPDATE accounts SET note = 'legit' WHERE id % 10 = 0 AND id <= 200")
    stop = threading.Event()
    t = threading.Thread(target=_legit_traffic, args=(db_url, stop))
    t.start()
    return stop, t


@pytest.mark.skipif(PSQL is None, reason="psql is not installed")
def test_guard_psql_migration_then_undo_keeps_untagged_writes(db_url, conn, accounts, tmp_path):
    migration = tmp_path / "migration.sql"
    migration.write_text(
        "UPDATE accounts SET balance = balance * 2 WHERE id <= 100;\n"
        "SELECT pg_sleep(0.3);\n"
        "DELETE FROM accounts WHERE id BETWEEN 191 AND 200;\n"
        "INSERT INTO accounts VALUES (1000, 1, 'migration');\n"
    )
    stop, t = _start_legit(db_url)
    try:
        res = run(
            db_url,
            "guard",
            "--tag",
            "mig-7",
            "--",
            PSQL,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(migration),
            db_url,
        )
    finally:
        stop.set()
        t.join()
    assert res.exit_code == 0, res.output
    assert "recovery rollback --tag mig-7 --since" in res.output
    doc = recovery.changes(conn, recovery.Selector(tags=("mig-7",)))
    assert {(r["table"], r["operation"], r["rows"]) for r in doc.by_table} == {
        ("public.accounts", "update", 100),
        ("public.accounts", "delete", 10),
        ("public.accounts", "insert", 1),
    }

    res = run(db_url, "rollback", "--tag", "mig-7", "--yes")
    assert res.exit_code == 0, res.output
    expected = {r[0]: (r[0], r[1], "legit" if r[0] % 10 == 0 else r[2]) for r in accounts}
    expected[2000] = (2000, 1, "legit insert")
    assert rows(conn, "accounts") == [expected[k] for k in sorted(expected)]


def test_guard_python_backfill_script(db_url, conn, accounts, tmp_path):
    script = tmp_path / "backfill.py"
    script.write_text(
        "import sys, psycopg\n"
        "with psycopg.connect(sys.argv[1]) as c:\n"
        "    c.execute('UPDATE accounts SET note = upper(note) WHERE id <= 50')\n"
    )
    res = run(
        db_url,
        "guard",
        "--tag",
        "bf-1",
        "--table",
        "accounts",
        "--",
        sys.executable,
        str(script),
        db_url,
    )
    assert res.exit_code == 0, res.output
    assert rows(conn, "accounts")[0] == (1, 10, "N1")
    assert run(db_url, "rollback", "--tag", "bf-1", "--yes").exit_code == 0
    assert rows(conn, "accounts") == accounts


def test_guard_keeps_the_command_exit_code(db_url, accounts):
    res = run(db_url, "guard", "--tag", "x", "--", sys.executable, "-c", "import sys; sys.exit(7)")
    assert res.exit_code == 7


@pytest.mark.skipif(PSQL is None, reason="psql is not installed")
def test_cap_aborts_the_transaction_and_guard_exits_3(db_url, conn, accounts):
    res = run(
        db_url,
        "guard",
        "--tag",
        "big",
        "--max-rows",
        "50",
        "--",
        PSQL,
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "UPDATE accounts SET balance = 0 WHERE id <= 30; "
        "UPDATE accounts SET balance = 0 WHERE id > 100",
        db_url,
    )
    assert res.exit_code == 3, res.output
    assert "blast-radius cap hit" in res.output
    assert "this transaction wrote 130 rows, more than recovery.max_rows = 50" in res.output
    assert "raise the cap" in res.output
    assert rows(conn, "accounts") == accounts  # nothing the transaction wrote stays

    res = run(
        db_url,
        "guard",
        "--tag",
        "big2",
        "--max-rows-per-table",
        "accounts=5",
        "--",
        PSQL,
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "UPDATE accounts SET balance = 0 WHERE id <= 6",
        db_url,
    )
    assert res.exit_code == 3
    assert "wrote 6 rows to public.accounts, more than its cap of 5" in res.output
    assert rows(conn, "accounts") == accounts


def test_a_later_set_of_the_tag_keeps_the_cap(db_url, conn, accounts):
    with psycopg.connect(db_url, options="-c recovery.tag=t1 -c recovery.max_rows=5") as c:
        c.execute("SET recovery.tag = 'other'")
        with pytest.raises(psycopg.Error) as err:
            c.execute("UPDATE accounts SET balance = 0 WHERE id <= 6")
        assert err.value.sqlstate == "RC001"
    assert rows(conn, "accounts") == accounts


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tag", "ok", "--", "no-such-command-xyz"], "not found"),
        (["--tag", "has space", "--", "true"], "cannot be passed safely"),
        (["--tag", "quo'te", "--", "true"], "cannot be passed safely"),
        (["--tag", "ok", "--max-rows", "-1", "--", "true"], "0 or more"),
        (["--tag", "ok", "--max-rows-per-table", "accounts", "--", "true"], "TABLE=N"),
        (["--tag", "ok"], "no command given"),
    ],
)
def test_guard_bad_input(db_url, conn, accounts, tmp_path, args, message):
    marker = tmp_path / "ran"
    if args[-1] == "true":
        args = [*args[:-1], sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    res = run(db_url, "guard", *args)
    assert res.exit_code == 1, res.output
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    assert rows(conn, "accounts") == accounts


def test_python_api_psycopg(db_url, conn, accounts):
    app = psycopg.connect(db_url)
    with recovery.guard(app, tag="api-1", max_rows=100) as report:
        app.execute("UPDATE accounts SET balance = -1 WHERE id <= 40")
        app.commit()
        with pytest.raises(psycopg.Error):
            app.execute("UPDATE accounts SET balance = -2 WHERE id <= 150")
        app.rollback()
    app.execute("UPDATE accounts SET note = 'after' WHERE id = 200")  # untagged again
    app.commit()
    app.close()
    assert report.changes is not None and report.changes.rows == 40
    assert report.undo_command.startswith("recovery rollback --tag api-1")
    recovery.rollback(conn, recovery.Selector(tags=("api-1",)))
    expected = [r if r[0] != 200 else (200, 2000, "after") for r in accounts]
    assert rows(conn, "accounts") == expected


class _Base(DeclarativeBase):
    pass


class Account(_Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]
    note: Mapped[str | None]


def _engine(db_url: str) -> sa.Engine:
    return sa.create_engine(sqlalchemy_url(db_url))


def test_python_api_sqlalchemy_orm_backfill(db_url, conn, accounts):
    engine = _engine(db_url)
    with recovery.guard(engine, tag="orm-1") as report:
        with Session(engine) as session:
            for acc in session.scalars(sa.select(Account).where(Account.id <= 20)):
                acc.note = f"orm {acc.id}"
            session.commit()
    with Session(engine) as session:  # after the block: untagged
        session.get(Account, 150).note = "untagged"  # type: ignore[union-attr]
        session.commit()
    engine.dispose()
    assert report.changes is not None and report.changes.rows == 20
    tags = {r[0] for r in conn.execute("SELECT DISTINCT tag FROM _recovery.stmt")}
    conn.rollback()
    assert tags == {"orm-1", None}
    recovery.rollback(conn, recovery.Selector(tags=("orm-1",)))
    expected = [r if r[0] != 150 else (150, 1500, "untagged") for r in accounts]
    assert rows(conn, "accounts") == expected


def test_guard_exit_code_of_a_signal(db_url, accounts):
    res = run(
        db_url,
        "guard",
        "--tag",
        "x",
        "--",
        sys.executable,
        "-c",
        "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
    )
    assert res.exit_code == 128 + 15


def test_per_table_cap_must_name_a_captured_table(db_url, sql_exec, accounts, tmp_path):
    sql_exec("CREATE TABLE other (id int PRIMARY KEY)")
    marker = tmp_path / "ran"
    for name in ("other", "no_such_table"):
        res = run(
            db_url,
            "guard",
            "--tag",
            "x",
            "--max-rows-per-table",
            f"{name}=1",
            "--",
            sys.executable,
            "-c",
            f"open({str(marker)!r}, 'w')",
        )
        assert res.exit_code == 1, res.output
        assert len(res.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_api_settings_survive_a_rollback_and_go_away_after(db_url, conn, accounts):
    app = psycopg.connect(db_url)

    def current() -> tuple[str | None, str | None]:
        row = app.execute(
            "SELECT current_setting('recovery.tag', true),"
            " current_setting('recovery.max_rows', true)"
        ).fetchone()
        app.rollback()
        return (row[0] or None, row[1] or None)  # type: ignore[index]

    app.execute("SELECT 1")  # a transaction is open: refused
    with pytest.raises(recovery.RecoveryError, match="no transaction open"):
        with recovery.guard(app, tag="g1", max_rows=5):
            pass
    app.rollback()
    with recovery.guard(app, tag="g1", max_rows=5):
        app.execute("UPDATE accounts SET balance = 1 WHERE id = 1")
        app.rollback()  # the block's own rollback keeps the tag
        assert current() == ("g1", "5")
    assert current() == (None, None)
    app.rollback()
    assert current() == (None, None)

    with pytest.raises(psycopg.Error) as err:  # a cap hit inside the block propagates
        with recovery.guard(app, tag="g2", max_rows=2):
            app.execute("UPDATE accounts SET balance = 1 WHERE id <= 3")
    assert err.value.sqlstate == "RC001"
    assert current() == (None, None)
    app.execute("UPDATE accounts SET note = 'after' WHERE id = 5")
    app.commit()
    assert conn.execute(
        "SELECT tag FROM _recovery.stmt ORDER BY stmt_id DESC LIMIT 1"
    ).fetchone() == (None,)
    conn.rollback()
    app.close()


def test_resume_takes_no_dry_run(db_url, accounts):
    res = run(db_url, "rollback", "--resume", "1", "--dry-run", "--yes")
    assert res.exit_code == 1
    assert "--resume" in res.stderr


ORM_SCRIPT = """
import sys
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

class Base(DeclarativeBase):
    pass

class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]
    note: Mapped[str | None]

engine = sa.create_engine(sys.argv[1])
with Session(engine) as session:
    for acc in session.scalars(sa.select(Account).where(Account.id <= 60).order_by(Account.id)):
        acc.balance = acc.balance * 3
        if acc.id % 20 == 0:
            session.commit()
    session.commit()
"""


@pytest.mark.parametrize("kind", ["psycopg", "sqlalchemy-orm"])
def test_guard_backfill_scripts_with_concurrent_untagged_writes(
    db_url, conn, accounts, tmp_path, kind
):
    script = tmp_path / "backfill.py"
    if kind == "psycopg":
        script.write_text(
            "import sys, time, psycopg\n"
            "with psycopg.connect(sys.argv[1]) as c:\n"
            "    for lo in range(1, 61, 20):\n"
            "        c.execute('UPDATE accounts SET balance = balance * 3'\n"
            "                  ' WHERE id BETWEEN %s AND %s', [lo, lo + 19])\n"
            "        c.commit()\n"
            "        time.sleep(0.1)\n"
        )
        target = db_url
    else:
        script.write_text(ORM_SCRIPT)
        target = sqlalchemy_url(db_url)
    stop, t = _start_legit(db_url)
    try:
        res = run(
            db_url,
            "guard",
            "--tag",
            f"bf-{kind}",
            "--max-rows",
            "100",
            "--",
            sys.executable,
            str(script),
            target,
        )
    finally:
        stop.set()
        t.join()
    assert res.exit_code == 0, res.output
    assert recovery.changes(conn, recovery.Selector(tags=(f"bf-{kind}",))).rows == 60
    assert run(db_url, "rollback", "--tag", f"bf-{kind}", "--yes").exit_code == 0
    expected = {r[0]: (r[0], r[1], "legit" if r[0] % 10 == 0 else r[2]) for r in accounts}
    expected[2000] = (2000, 1, "legit insert")
    assert rows(conn, "accounts") == [expected[k] for k in sorted(expected)]
