"""Install and upgrade the recovery schema (`recovery init`)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

from .db import DEFAULT_SCHEMA, check_schema_name
from .errors import RecoveryError

SCHEMA_VERSION = 5


@dataclass
class InitResult:
    schema: str
    previous_version: int | None
    version: int
    ddl_follow: bool


# The server-side SQL, by concern, in the order it is installed: the tables, the
# capture generator and DDL followers, the caps the capture hooks enforce, two-person
# approval, then the privileges over all of it.
SQL_FILES = ("tables.sql", "capture.sql", "wal.sql", "guard.sql", "approval.sql", "grants.sql")


def _schema_sql(schema: str) -> sql.Composed:
    text = "\n".join(
        resources.files("recovery").joinpath("sql").joinpath(name).read_text() for name in SQL_FILES
    )
    return sql.SQL(text).format(s=sql.Identifier(schema), s_lit=sql.Literal(schema))


def installed_version(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA) -> int | None:
    """Return the installed schema version, or None when the schema is absent."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f'"{schema}".meta']).fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute(
        sql.SQL("SELECT value FROM {}.meta WHERE key = 'schema_version'").format(
            sql.Identifier(schema)
        )
    ).fetchone()
    return int(row[0]) if row else 0


def require_schema(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA) -> None:
    """Raise a clear error unless the recovery schema is installed and current."""
    version = installed_version(conn, schema)
    if version is None:
        raise RecoveryError(f"schema {schema} is not installed here: run `recovery init` first")
    if version < SCHEMA_VERSION:
        raise RecoveryError(
            f"schema {schema} is version {version}, this tool needs {SCHEMA_VERSION}: "
            "run `recovery init` to upgrade it in place"
        )
    if version > SCHEMA_VERSION:
        raise RecoveryError(
            f"schema {schema} is version {version}, newer than this tool ({SCHEMA_VERSION}): "
            "upgrade the recovery package"
        )


def init(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA) -> InitResult:
    """Install the recovery schema, or upgrade it in place; safe to run again.

    One transaction of its own, committed; inside a caller's open transaction, a
    savepoint of it (the schema is there once the caller commits)."""
    check_schema_name(schema)
    try:
        with conn.transaction():
            previous = installed_version(conn, schema)
            if previous is not None and previous > SCHEMA_VERSION:
                raise RecoveryError(
                    f"schema {schema} is version {previous}, newer than this tool "
                    f"({SCHEMA_VERSION}): upgrade the recovery package"
                )
            # Serialise concurrent `init` runs.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"recovery-init:{schema}"])
            conn.execute(_schema_sql(schema))
            # Upgrades from older versions go here, each a step from N to N+1, run in
            # this same transaction.  1 -> 2 adds the snapshots table, 2 -> 3 the approval
            # and runbook tables; the idempotent script above creates them, nothing
            # captured is touched.
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                ).format(sql.Identifier(schema)),
                [str(SCHEMA_VERSION)],
            )
            ddl_follow = _install_event_trigger(conn, schema)
            # Rebuild capture functions so that they match this version's generator.
            conn.execute(
                sql.SQL(
                    "SELECT {s}.build_capture(table_id) FROM {s}.captured WHERE enabled"
                ).format(s=sql.Identifier(schema))
            )
            # 3 -> 4: every journal in text form, a disabled or dropped table's too.
            conn.execute(
                sql.SQL("SELECT {s}.journal_as_text(table_id) FROM {s}.captured").format(
                    s=sql.Identifier(schema)
                )
            )
    except psycopg.errors.InsufficientPrivilege as exc:
        raise RecoveryError(
            f"cannot install schema {schema}: {exc.diag.message_primary}; "
            "run `recovery init` as a role with CREATE on the database"
        ) from None
    return InitResult(schema, previous, SCHEMA_VERSION, ddl_follow)


# The event triggers recovery installs: name suffix, the command tags they follow,
# and the function they run.  on_ddl rebuilds a captured table's capture after its
# DDL; on_type_ddl rewrites journal labels after an enum value is renamed.
_EVENT_TRIGGERS = (
    ("follow_ddl", "ddl_command_end", ("ALTER TABLE", "CREATE TABLE"), "on_ddl"),
    ("follow_types", "ddl_command_end", ("ALTER TYPE",), "on_type_ddl"),
    # A column dropped by DROP TYPE/DOMAIN/EXTENSION ... CASCADE: no ALTER TABLE runs.
    ("follow_drops", "sql_drop", ("DROP TYPE", "DROP DOMAIN", "DROP EXTENSION"), "on_drop"),
)


def _install_event_trigger(conn: psycopg.Connection, schema: str) -> bool:
    """Install the DDL-following event triggers when this role may; report whether the
    one following table DDL (follow_ddl) exists.

    They are enabled ALWAYS, so that DDL run by a session in replica mode is followed too.
    """
    is_super = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    present = True
    for suffix, event, tags, fn in _EVENT_TRIGGERS:
        name = f"{schema}_{suffix}"
        row = conn.execute(
            "SELECT evtenabled FROM pg_event_trigger WHERE evtname = %s", [name]
        ).fetchone()
        if not is_super or not is_super[0]:
            # Event triggers need a superuser.  Without one, a capture function that
            # sees a changed table shape skips capture (the write still succeeds) and
            # `capture status` reports the table as stopped until `capture enable`.
            present = present and (row is not None or suffix != "follow_ddl")
            continue
        if row is None:
            conn.execute(
                sql.SQL(
                    "CREATE EVENT TRIGGER {} ON {} WHEN TAG IN ({}) EXECUTE FUNCTION {}.{}()"
                ).format(
                    sql.Identifier(name),
                    sql.SQL("sql_drop") if event == "sql_drop" else sql.SQL("ddl_command_end"),
                    sql.SQL(", ").join(map(sql.Literal, tags)),
                    sql.Identifier(schema),
                    sql.Identifier(fn),
                )
            )
        if row is None or row[0] != "A":
            conn.execute(
                sql.SQL("ALTER EVENT TRIGGER {} ENABLE ALWAYS").format(sql.Identifier(name))
            )
    return present
