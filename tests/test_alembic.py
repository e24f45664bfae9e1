"""Alembic migrations under recovery guard: each revision's writes tagged with its id."""

from __future__ import annotations

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

ENV_PY = '''
import os
from alembic import context
from sqlalchemy import create_engine
import recovery.migrations

def run_migrations_online():
    engine = create_engine(os.environ["TEST_SQLALCHEMY_URL"])
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        recovery.migrations.guard_alembic(context, max_rows=1000)
        with context.begin_transaction():
            context.run_migrations()

run_migrations_online()
'''

REVISION = '''
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
'''


def _project(tmp_path: Path) -> Path:
    (tmp_path / "versions").mkdir()
    (tmp_path / "env.py").write_text(ENV_PY)
    (tmp_path / "script.py.mako").write_text("")
    ini = tmp_path / "alembic.ini"
    ini.write_text(f"[alembic]\nscript_location = {tmp_path}\n")
    revs = [
        ("a1a1a1a1a1a1", None, "    op.execute('UPDATE accounts SET balance = balance + 1000"
                               " WHERE id <= 10')"),
        ("b2b2b2b2b2b2", "a1a1a1a1a1a1",
         "    op.execute('DELETE FROM accounts WHERE id BETWEEN 191 AND 200')\n"
         "    op.add_column('accounts', sa.Column('flag', sa.Integer))"),
    ]
    for rev, down, body in revs:
        (tmp_path / "versions" / f"{rev}.py").write_text(
            REVISION.format(rev=rev, down=down, body=body))
    return ini


def test_alembic_upgrade_under_guard_then_undo_one_revision(db_url, conn, sql_exec, tmp_path):
    sql_exec("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL, note text)")
    sql_exec("INSERT INTO accounts SELECT g, g * 10, 'n' || g FROM generate_series(1, 200) g")
    before = rows(conn, "accounts")
    ini = _project(tmp_path)
    env = dict(os.environ, TEST_SQLALCHEMY_URL=sqlalchemy_url(db_url),
               PYTHONPATH=str(Path(__file__).resolve().parent.parent))
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
        res = CliRunner().invoke(main, [
            "--db", db_url, "guard", "--tag", "deploy-9", "--table", "accounts", "--",
            sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
            env=env, catch_exceptions=False)
    finally:
        stop.set()
        t.join()
    assert res.exit_code == 0, res.output
    tags = dict(sql_exec("SELECT tag, sum(nrows) FROM _recovery.stmt WHERE tag LIKE 'alembic:%'"
                         " GROUP BY tag"))
    assert tags == {"alembic:a1a1a1a1a1a1": 10, "alembic:b2b2b2b2b2b2": 10}

    # Undo the second migration only: its deleted rows come back (with the column it
    # added left NULL), the first migration's change and the legitimate notes stay.
    assert CliRunner().invoke(main, ["--db", db_url, "rollback", "--tag",
                                     "alembic:b2b2b2b2b2b2", "--yes"]).exit_code == 0
    now = {r[0]: r for r in rows(conn, "accounts")}
    assert len(now) == 200
    for id_, balance, note in before:
        want_balance = balance + 1000 if id_ <= 10 else balance
        want_note = "legit" if id_ in (5, 195) else note
        assert now[id_] == (id_, want_balance, want_note, None), id_

    res = CliRunner().invoke(main, ["--db", db_url, "rollback", "--tag",
                                    "alembic:a1a1a1a1a1a1", "--yes"])
    assert res.exit_code == 0, res.output
    assert rows(conn, "accounts") == [
        (i, b, "legit" if i in (5, 195) else n, None) for i, b, n in before]
    assert recovery.changes(conn, recovery.Selector(tags=("alembic:a1a1a1a1a1a1",))).rows == 10
