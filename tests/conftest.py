"""Test fixtures: a real PostgreSQL for the whole session, a fresh database per test.

RECOVERY_TEST_DSN names a server to use (its user must be able to CREATE DATABASE);
otherwise a throwaway cluster is started from the machine's PostgreSQL binaries or,
failing that (or with RECOVERY_TEST_PG=pgserver), from the pgserver package.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from click.testing import CliRunner, Result

from recovery import embedded
from recovery.cli import main
from recovery.db import connect
from recovery.schema import init

TEMPLATE = "recovery_test_tpl"
_counter = itertools.count()


def _with_db(url: str, dbname: str) -> str:
    conninfo = psycopg.conninfo.conninfo_to_dict(url)
    conninfo["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**conninfo)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    dsn = os.environ.get("RECOVERY_TEST_DSN")
    if dsn:
        yield dsn
        return
    cluster = embedded.start(os.environ.get("RECOVERY_TEST_PG", "auto"))
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def template(server_url: str) -> str:
    """A database with the recovery schema installed, cloned by every test."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    conn = connect(_with_db(server_url, TEMPLATE))
    init(conn)
    conn.close()
    return TEMPLATE


@contextmanager
def fresh_database(server_url: str, template: str, prefix: str = "t") -> Iterator[str]:
    """A new database cloned from the template, dropped afterwards; yields its URL."""
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _with_db(server_url, name)
    finally:
        drop_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """Drop a test database, and first the replication slots of it (WAL capture's): a
    database with a logical slot cannot be dropped."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE database = %s AND active_pid IS NOT NULL",
            [name],
        )
        admin.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE database = %s",
            [name],
        )
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db_url(server_url: str, template: str) -> Iterator[str]:
    """URL of a new database for this test (recovery schema installed, nothing captured)."""
    with fresh_database(server_url, template) as url:
        yield url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    c = connect(db_url)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def sql_exec(db_url: str):  # type: ignore[no-untyped-def]
    """Run SQL in its own committed transaction (as an application would)."""

    def run(query: str, params: object = None) -> list[tuple]:  # type: ignore[type-arg]
        with psycopg.connect(db_url, autocommit=True) as c:
            cur = c.execute(query, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    return run


@pytest.fixture
def cli(db_url: str):  # type: ignore[no-untyped-def]
    """Invoke the CLI in-process against the test database."""

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(
            main, [*args, "--db", db_url], input=input, catch_exceptions=False
        )

    return run


def rows(conn: psycopg.Connection, table: str, order: str = "1") -> list[tuple]:  # type: ignore[type-arg]
    """All rows of a table as tuples, in a stable order, read in a fresh transaction."""
    assert re.fullmatch(r'[\w."]+', table) and re.fullmatch(r"[\w, ]+", order)
    conn.rollback()
    out = conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()  # noqa: S608
    conn.rollback()
    return out


def sqlalchemy_url(db_url: str) -> str:
    """The test database as a SQLAlchemy URL (psycopg driver), password included."""
    import sqlalchemy as sa

    info = psycopg.conninfo.conninfo_to_dict(db_url)
    return sa.engine.URL.create(
        "postgresql+psycopg",
        username=str(info.get("user") or "") or None,
        password=str(info["password"]) if info.get("password") else None,
        database=str(info["dbname"]),
        query={"host": str(info.get("host", "")), "port": str(info.get("port", "5432"))},
    ).render_as_string(hide_password=False)
