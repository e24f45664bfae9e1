"""Connections: URL resolution, password redaction, errors a user can act on."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from .errors import RecoveryError

DEFAULT_SCHEMA = "_recovery"
# Seconds to wait for a server to answer a new connection (libpq's connect_timeout).
CONNECT_TIMEOUT = 10
_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


def resolve_url(url: str | None) -> str:
    """Return the database URL from the argument, RECOVERY_DB_URL or DATABASE_URL."""
    url = url or os.environ.get("RECOVERY_DB_URL") or os.environ.get("DATABASE_URL")
    if not url:
        raise RecoveryError(
            "no database given: pass --db postgresql://user@host/dbname or set RECOVERY_DB_URL"
        )
    # SQLAlchemy-style URLs name a driver; libpq wants the plain scheme.
    return re.sub(r"^postgres(ql)?\+[a-z0-9_]+://", "postgresql://", url)


# user:password@ in a URL, up to the last @ of the authority (a password may hold an @).
_URL_PASSWORD = re.compile(r"(://[^:/?#@\s]*:)[^/?#\s]*@")
# password=... in key=value connection strings and URL query strings, quoted or not.
_KW_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)", re.IGNORECASE)


# PASSWORD '...' in SQL (CREATE/ALTER ROLE), up to the closing quote or the end of a cut text.
_SQL_PASSWORD = re.compile(r"(\bpassword\s+')[^']*('|$)", re.IGNORECASE)


def _hide_secrets(query: str) -> str:
    """A query text with passwords replaced by *** (SQL PASSWORD '...', URLs, keywords)."""
    return _SQL_PASSWORD.sub(r"\1***\2", redact(query))


def redact(text: str) -> str:
    """Return a URL, connection string or message with any password replaced by ***."""
    return _KW_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def _redact_all(text: str, url: str) -> str:
    """Redact text, and also the password libpq finds in url wherever it appears."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    text = redact(text)
    if password and len(str(password)) > 1:
        text = text.replace(str(password), "***")
    return text


def check_schema_name(name: str) -> str:
    """Validate the recovery schema name (lower-case identifier)."""
    if not _SCHEMA_RE.match(name):
        raise RecoveryError(
            f"invalid schema name {name!r}: use lower-case letters, digits and underscores"
        )
    return name


def connect(url: str | None = None, *, autocommit: bool = False) -> psycopg.Connection:
    """Open a psycopg connection with the settings recovery relies on."""
    real = resolve_url(url)
    extra: dict[str, Any] = {}
    try:
        given = psycopg.conninfo.conninfo_to_dict(real)
    except psycopg.ProgrammingError:
        given = {}  # reported below, by connect itself
    # A server that accepts the connection and never answers must not hang a command
    # (on call, a hang is worse than an error): wait CONNECT_TIMEOUT seconds unless
    # the URL (connect_timeout=) or the environment (PGCONNECT_TIMEOUT) says otherwise.
    if "connect_timeout" not in given and not os.environ.get("PGCONNECT_TIMEOUT"):
        extra["connect_timeout"] = CONNECT_TIMEOUT
    try:
        conn = psycopg.connect(real, autocommit=autocommit, application_name="recovery", **extra)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection failed"
        if "timeout" in first.lower():
            first += (
                " (no answer from the server in time: check the host and port, or wait"
                " longer with connect_timeout=N in the URL or PGCONNECT_TIMEOUT)"
            )
        raise RecoveryError(
            _redact_all(f"cannot reach the database at {real}: {first}", real)
        ) from None
    except psycopg.ProgrammingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise RecoveryError(_redact_all(f"invalid database URL {real}: {first}", real)) from None
    # Exact text forms for value comparison, whatever the server defaults are.
    conn.execute("SET extra_float_digits = 3")
    conn.execute("SET bytea_output = 'hex'")
    # Times printed for reuse (--since '...') must read back the same in any session.
    conn.execute("SET DateStyle = 'ISO, YMD'")
    if not autocommit:
        conn.commit()
    return conn


@contextmanager
def connection(url: str | None = None) -> Iterator[psycopg.Connection]:
    """Context manager around connect() that always closes."""
    conn = connect(url)
    try:
        yield conn
    finally:
        conn.close()


def resolve_table(conn: psycopg.Connection, name: str) -> tuple[int, str, str]:
    """Return (oid, schema, table) of a table given as NAME or SCHEMA.NAME; error if absent.

    A name is split on the first unquoted dot; quoted parts keep their case, as in SQL.
    """
    try:
        # A savepoint when the caller's transaction is open: a name that is not valid
        # SQL (`Mixed Table`) makes to_regclass raise, and that must not end the
        # caller's transaction (capture enable of several tables runs in one).
        with conn.transaction():
            row = conn.execute(
                "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = to_regclass(%s)",
                [name.strip()],
            ).fetchone()
    except (
        psycopg.errors.InvalidName,
        psycopg.errors.SyntaxError,
        psycopg.errors.FeatureNotSupported,
    ):
        row = None  # not SQL syntax for a name ("Mixed Table", "a.b.c.d"): try it as typed
    if row is None:
        # Unquoted mixed-case names are folded by PostgreSQL; try them as typed.
        parts = name.split(".", 1)
        cand = ".".join(str(sql.Identifier(p).as_string(None)) for p in parts)
        row = conn.execute(
            "SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
            [cand],
        ).fetchone()
    if row is None or row[3] not in ("r", "p"):
        raise RecoveryError(
            f"table {name!r} not found: check the name (schema.table; quote mixed case)"
        )
    return int(row[0]), row[1], row[2]


def qualified(schema: str, table: str) -> sql.Identifier:
    """Identifier for schema.table."""
    return sql.Identifier(schema, table)


def scalar(
    conn: psycopg.Connection, query: sql.Composable | str, params: Sequence[Any] | None = None
) -> Any:
    """The first column of the one row a query returns (a SELECT without FROM, EXISTS)."""
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]  # str or Composable
    if row is None:
        raise RecoveryError(f"internal: no row from {query!r}")
    return row[0]


def lock_holders(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA, limit: int = 3) -> str:
    """Who holds locks that an undo or restore may be waiting for, as text for an error
    message ("" when nobody, or when it cannot be read).

    Other sessions holding a lock stronger than a plain read on an application table (a
    transaction that wrote rows holds RowExclusiveLock on the table until it ends; SELECT
    ... FOR UPDATE holds RowShareLock), with pid, user, application, state and since when,
    and the start of their current or last query: what an on-call engineer needs to find
    the blocking session and end it (pg_terminate_backend) or wait for it.
    """
    try:
        with conn.transaction():
            found = conn.execute(
                "SELECT a.pid, a.usename, coalesce(nullif(a.application_name, ''), '-'),"
                " coalesce(a.state, '?'), to_char(coalesce(a.xact_start, a.query_start),"
                " 'YYYY-MM-DD\"T\"HH24:MI:SSOF'), left(regexp_replace(coalesce(a.query, ''),"
                " '\\s+', ' ', 'g'), 60), count(*) OVER ()"
                " FROM pg_stat_activity a WHERE a.pid <> pg_backend_pid() AND a.pid IN ("
                "  SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                "  JOIN pg_namespace n ON n.oid = c.relnamespace"
                "  WHERE l.granted AND l.mode <> 'AccessShareLock' AND l.database = "
                "   (SELECT oid FROM pg_database WHERE datname = current_database())"
                "  AND n.nspname NOT IN ('pg_catalog', 'information_schema', %s)"
                "  AND n.nspname NOT LIKE 'pg\\_%%')"
                " ORDER BY a.xact_start NULLS LAST, a.pid LIMIT %s",
                [schema, limit],
            ).fetchall()
    except psycopg.Error:
        return ""
    if not found:
        return ""
    # Another session's query may carry a secret (ALTER ROLE ... PASSWORD '...', a URL).
    parts = [
        f"pid {pid} (user {user}, application {app}, {state} since {since}: "
        f"{_hide_secrets(query)!r})"
        for pid, user, app, state, since, query, _ in found
    ]
    more = int(found[0][6]) - len(found)
    tail = f" and {more} more" if more > 0 else ""
    return "; held by " + ", ".join(parts) + tail
