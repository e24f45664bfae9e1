"""Alembic integration: each migration's writes tagged with its revision id.

In the Alembic project's env.py, in run_migrations_online(), after
`context.configure(connection=connection, ...)` and before
`context.run_migrations()`:

    import recovery.migrations
    recovery.migrations.guard_alembic(context, max_rows=100_000)

Every captured table of the database (or the ones named) gets capture on before
the first migration runs, and each revision's upgrade() runs with
`recovery.tag = 'alembic:<revision>'` (and the cap, if given) on the migration's
connection.  `recovery rollback --tag alembic:<revision>` then undoes exactly that
migration's data changes, while writes made meanwhile by other sessions survive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .capture import enable, enable_all
from .db import DEFAULT_SCHEMA, connect
from .errors import RecoveryError
from .guard import settings

PREFIX = "alembic:"


def revision_tag(revision: str) -> str:
    """The tag of one migration's writes."""
    return f"{PREFIX}{revision}"


def guard_alembic(
    context: Any,
    *,
    tables: Sequence[str] = (),
    capture_schema: str = "public",
    max_rows: int | None = None,
    max_rows_per_table: Mapping[str, int] | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> None:
    """Tag (and cap) each Alembic revision's upgrade(); make sure capture is on first.

    `context` is env.py's `alembic.context`, already configured with a connection.
    With `tables`, capture is enabled on those; otherwise on every table with a
    primary key in `capture_schema` (tables a migration creates have no past to undo).
    """
    bind = context.get_bind()
    url = bind.engine.url.render_as_string(hide_password=False)
    # Capture is switched on over a connection of its own, committed before the
    # migration's transaction takes any lock.
    with connect(url) as conn:
        if tables:
            enable(conn, list(tables), schema=schema)
        else:
            try:
                enable_all(conn, in_schema=capture_schema, schema=schema)
            except RecoveryError:  # no table with a key yet: nothing to capture
                conn.rollback()
    for script in context.script.walk_revisions():
        module = script.module
        if getattr(module.upgrade, "_recovery_tag", None):
            continue
        values = settings(revision_tag(script.revision), max_rows, max_rows_per_table or {})

        def upgrade(*args: Any, _orig: Any = module.upgrade, _values: dict[str, str] = values,
                    **kwargs: Any) -> Any:
            connection = context.get_bind()
            for k, v in _values.items():
                connection.exec_driver_sql("SELECT set_config(%s, %s, false)", (k, v))
            try:
                return _orig(*args, **kwargs)
            finally:
                for k in _values:
                    connection.exec_driver_sql("SELECT set_config(%s, '', false)", (k,))

        upgrade._recovery_tag = values["recovery.tag"]  # type: ignore[attr-defined]
        module.upgrade = upgrade
