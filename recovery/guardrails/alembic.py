"""Alembic integration: each migration's writes tagged with its revision id, and its
destructive statements snapshotted first.

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

Snapshots (snapshot=True, the default).  While a revision's upgrade() runs, every
statement it sends (op.execute, op.drop_column, ORM or Core statements on the
migration's connection) whose first keyword can destroy data -- UPDATE, DELETE,
INSERT ... ON CONFLICT, MERGE, TRUNCATE, DROP, ALTER, WITH, DO, CALL, and SELECTs
calling functions -- is rendered with its parameters as literals and analysed with
PostgreSQL's parser (recovery.sqlscope, the analysis of `snapshot create --for-sql`).
The rows and columns it could overwrite or remove (FK cascades included; what
cannot be bounded, such as a DO block, falls back to the whole tables its code
names) are saved into the database store just before the statement runs, in the
migration's own transaction: the snapshot sees the rows as they are at that point
(after the revision's earlier statements) and commits with the migration, or
vanishes with its rollback.  Statements that destroy nothing in an existing table
(CREATE, plain INSERT, ADD COLUMN, SET, COMMENT, Alembic's version bookkeeping) are
let through without a snapshot.

The snapshots are named `alembic-<revision>-<n>`, n counting the revision's
destructive statements from 1 (a revision run again, e.g. after a downgrade, gets
`alembic-<revision>-<n>-2`, then `-3`...).  `recovery snapshot list` lists them,
`recovery snapshot show alembic-<revision>-1` shows the statement each was taken
for, and `recovery restore alembic-<revision>-1` puts its rows back (a dropped
column is added back).  When several statements of a revision touch the same rows,
restore the snapshots last statement first: each holds the rows as its statement
found them.

Cost: per destructive statement, a parse, some catalog reads, and one
CREATE TABLE AS of the rows at risk (a column drop saves the key and that column of
every row).  Pass `snapshot=False` to turn it off.

Limits.  Only upgrade() is watched, not downgrade().  A statement that does not
parse, or that the analysis fails on or cannot bound to any table, runs without a
snapshot, with a warning on the `recovery.migrations` logger; so do the rows of a
table without a primary key (restore finds rows by it).  An error while saving fails
the migration (its transaction rolls back).  An executemany of more than MANY_LIMIT
parameter sets saves the whole tables it could touch.  Functions called from CREATE
or plain INSERT statements, and trigger bodies, are not followed.  Snapshots need
the psycopg (3) driver (`postgresql+psycopg://` URLs); inside an autocommit_block()
each snapshot commits on its own, just before its statement.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from ..capture.triggers import enable, enable_all
from ..db import DEFAULT_SCHEMA, connect
from ..errors import RecoveryError
from ..schema import require_schema
from ..snapshot import sqlscope
from ..snapshot import stores as snapshot
from .guard import settings

PREFIX = "alembic:"
SNAPSHOT_PREFIX = "alembic-"
# An executemany of more parameter sets than this is saved as whole tables.
MANY_LIMIT = 200

log = logging.getLogger("recovery.migrations")

# Leading whitespace, comments and opening parentheses before a statement's first word.
_LEAD = re.compile(r"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/|\()*", re.DOTALL)
_WORD = re.compile(r"[A-Za-z]+")
_ON_CONFLICT = re.compile(r"\bON\s+CONFLICT\b", re.IGNORECASE)
_ANALYSED = frozenset(
    {"UPDATE", "DELETE", "MERGE", "TRUNCATE", "DROP", "ALTER", "WITH", "DO", "CALL"}
)
_BAD_NAME = re.compile(r"[^A-Za-z0-9._-]")
# The migration connections watched: SQLAlchemy Connection -> its hook.
_HOOKS: weakref.WeakKeyDictionary[Any, _Snapshots] = weakref.WeakKeyDictionary()


def revision_tag(revision: str) -> str:
    """The tag of one migration's writes."""
    return f"{PREFIX}{revision}"


def first_keyword(statement: str) -> str:
    """The first word of a statement, upper-cased, past whitespace, comments and '('."""
    m = _WORD.match(statement, _LEAD.match(statement).end())  # type: ignore[union-attr]
    return m.group(0).upper() if m else ""


def should_analyze(statement: str, *, version_table: str = "alembic_version") -> bool:
    """The cheap pre-filter: whether a statement may destroy data, by its first keyword.

    UPDATE, DELETE, MERGE, TRUNCATE, DROP, ALTER, WITH, DO, CALL; INSERT only with
    ON CONFLICT; SELECT and EXPLAIN only when they may call a function ('(' in them,
    the analysis then checks for volatile user functions).  Statements naming
    Alembic's version table are its bookkeeping.  A text of several statements is
    judged by the first word of each.
    """
    if re.search(rf"(?<![\w$]){re.escape(version_table)}(?![\w$])", statement, re.IGNORECASE):
        return False
    words = [first_keyword(statement)]
    if ";" in statement.rstrip().rstrip(";"):
        try:
            import pglast

            words = [first_keyword(s) for s in pglast.split(statement, with_parser=False)]
        except Exception:  # noqa: BLE001 (the scanner failed: let the analysis decide)
            return True
    for word in words:
        if (
            word in _ANALYSED
            or (word == "INSERT" and _ON_CONFLICT.search(statement))
            or (word in ("SELECT", "EXPLAIN", "VALUES") and "(" in statement)
        ):
            return True
    return False


def render_sql(
    conn: psycopg.Connection, statement: str, parameters: Any, executemany: bool = False
) -> tuple[str, bool]:
    """The statement as the server runs it, parameters rendered as literals (psycopg's
    client-side binding), and whether to widen its targets to whole tables.

    An executemany gives one statement per parameter set, joined by ';'; past
    MANY_LIMIT sets, only the first, to be widened to the whole tables it names.
    Without parameters the text is taken as it is (with an empty mapping or sequence,
    '%%' is unescaped as the driver does).
    """
    if parameters is None:
        return statement, False
    cur = psycopg.ClientCursor(conn)
    if not executemany:
        return _mogrify(cur, statement, parameters), False
    sets = list(parameters)
    if not sets:
        return statement, False
    if len(sets) > MANY_LIMIT:
        return _mogrify(cur, statement, sets[0]), True
    return ";\n".join(_mogrify(cur, statement, p).rstrip().rstrip(";") for p in sets), False


def _mogrify(cur: psycopg.ClientCursor[Any], statement: str, params: Any) -> str:
    if not params:
        try:
            return cur.mogrify(statement, params)
        except psycopg.ProgrammingError:  # a bare '%' the driver would not accept either
            return statement
    return cur.mogrify(statement, params)


def snapshot_name(revision: str, n: int, run: int = 1) -> str:
    """`alembic-<revision>-<n>`, with `-<run>` from a revision's second run on."""
    rev = _BAD_NAME.sub("_", revision)[:80]
    return f"{SNAPSHOT_PREFIX}{rev}-{n}" + (f"-{run}" if run > 1 else "")


class _NotSaved(Exception):
    """A statement that runs without a snapshot (logged, not raised)."""


class _Snapshots:
    """The before_cursor_execute hook of one migration connection."""

    def __init__(self, schema: str, version_table: str) -> None:
        self.schema = schema
        self.version_table = version_table
        self.enabled = True
        self.revision: str | None = None
        self.n = 0  # snapshots taken in this run of the revision
        self.run = 1  # suffix of this run's names (1: none)
        self.taken: list[str] = []

    def begin(self, revision: str) -> None:
        self.revision, self.n, self.run = revision, 0, 1

    def end(self) -> None:
        self.revision = None

    def __call__(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if not self.enabled or self.revision is None:
            return
        if not should_analyze(statement, version_table=self.version_table):
            return
        raw = cursor.connection
        try:
            text, widen = render_sql(raw, statement, parameters, executemany)
        except Exception as exc:  # noqa: BLE001 (parameters psycopg cannot render)
            log.warning(
                "alembic %s: statement not snapshotted (its parameters cannot be rendered: %s): %s",
                self.revision,
                exc,
                statement[:200],
            )
            return
        self.take(raw, text, widen)

    def take(self, raw: psycopg.Connection, text: str, widen: bool = False) -> str | None:
        """Analyse one statement's text and save what it could destroy; the name, or None.

        What the analysis refuses or fails on (text that does not parse, nothing to
        save, nothing it can bound) is logged and the statement runs unsaved; so does a
        table without a primary key.  An error while saving is raised (the migration
        fails and rolls back)."""

        rev = self.revision or "?"
        if not raw.autocommit and raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            # Open the transaction the statement will run in (psycopg starts one on the
            # first statement), so that the snapshot commits or rolls back with it.
            raw.execute("SELECT 1")
        try:
            # A savepoint in the migration's transaction (in autocommit: a transaction of
            # its own): a refused analysis or save leaves the migration's work intact.
            with raw.transaction():
                try:
                    stmts = sqlscope.analyze(raw, text, source=f"alembic {rev}")
                except RecoveryError:
                    raise
                except Exception as exc:  # noqa: BLE001 (the parser's coverage, not data)
                    raise _NotSaved(f"the analysis failed: {type(exc).__name__}: {exc}") from exc
                if widen:
                    for st in stmts:
                        for t in st.targets:
                            if t.columns is None:
                                t.where = t.from_sql = None
                                t.bounded = False
                                t.reason = (
                                    f"executemany of more than {MANY_LIMIT} parameter "
                                    "sets: whole table"
                                )
                names = {t.relid: f"{t.schema}.{t.table}" for st in stmts for t in st.targets}
                specs = self._keyed(raw, snapshot.specs_for_sql(stmts), names)
                if not specs:
                    return None
                require_schema(raw, self.schema)
                name = self._free_name(raw, rev)
                info = snapshot.save_in_transaction(
                    raw,
                    name,
                    specs,
                    schema=self.schema,
                    source={"alembic": rev, "statement": text[:2000]},
                )
        except (RecoveryError, _NotSaved) as exc:
            msg = str(exc)
            if "nothing to save" in msg:
                log.debug("alembic %s: destroys nothing: %s", rev, text[:200])
            else:
                log.warning("alembic %s: statement not snapshotted (%s): %s", rev, msg, text[:200])
            return None
        self.n += 1
        self.taken.append(name)
        log.info(
            "alembic %s: snapshot %s (%s) before: %s",
            rev,
            name,
            ", ".join(f"{t['table']} {t['rows']} rows" for t in info.tables),
            text[:200],
        )
        return name

    def _keyed(self, raw: psycopg.Connection, specs: list[Any], names: dict[int, str]) -> list[Any]:
        """Specs of tables with a primary key (restore finds rows by it); the others are
        logged and left out."""
        out = []
        for spec in specs:
            if raw.execute(
                "SELECT 1 FROM pg_index WHERE indrelid = %s AND indisprimary", [spec.relid]
            ).fetchone():
                out.append(spec)
            else:
                log.warning(
                    "alembic %s: rows of %s not snapshotted: it has no primary key",
                    self.revision,
                    names.get(spec.relid, spec.relid),
                )
        return out

    def _free_name(self, raw: psycopg.Connection, rev: str) -> str:
        query = sql.SQL("SELECT 1 FROM {}.snapshots WHERE name = %s").format(
            sql.Identifier(self.schema)
        )
        while True:
            name = snapshot_name(rev, self.n + 1, self.run)
            if raw.execute(query, [name]).fetchone() is None:
                return name
            self.run += 1


def guard_alembic(
    context: Any,
    *,
    tables: Sequence[str] = (),
    capture_schema: str = "public",
    max_rows: int | None = None,
    max_rows_per_table: Mapping[str, int] | None = None,
    schema: str = DEFAULT_SCHEMA,
    snapshot: bool = True,
) -> None:
    """Tag (and cap) each Alembic revision's upgrade(); make sure capture is on first;
    with `snapshot`, save what each destructive statement could destroy just before
    it runs (see the module docstring).

    `context` is env.py's `alembic.context`, already configured with a connection.
    With `tables`, capture is enabled on those; otherwise on every table with a
    primary key in `capture_schema` (tables a migration creates have no past to undo).
    """
    bind = context.get_bind()
    if snapshot and not isinstance(bind.connection.driver_connection, psycopg.Connection):
        raise RecoveryError(
            "guard_alembic(snapshot=True) needs the psycopg (3) driver: use a "
            "postgresql+psycopg:// URL, or pass snapshot=False"
        )
    url = bind.engine.url.render_as_string(hide_password=False)
    # Capture is switched on over a connection of its own, committed before the
    # migration's transaction takes any lock.  (enable and enable_all run in a
    # transaction of their own there: one that fails leaves nothing open.)
    with connect(url) as conn:
        if tables:
            enable(conn, list(tables), schema=schema)
        else:
            try:
                enable_all(conn, in_schema=capture_schema, schema=schema)
            except RecoveryError:  # no table with a key yet: nothing to capture
                pass
    hook = _HOOKS.get(bind)
    if snapshot:
        version_table = getattr(context.get_context(), "version_table", "alembic_version")
        if hook is None:
            from sqlalchemy import event

            hook = _HOOKS[bind] = _Snapshots(schema, version_table)
            event.listen(bind, "before_cursor_execute", hook)
        hook.schema, hook.version_table, hook.enabled = schema, version_table, True
    elif hook is not None:
        hook.enabled = False
    for script in context.script.walk_revisions():
        module = script.module
        if getattr(module.upgrade, "_recovery_tag", None):
            continue
        values = settings(revision_tag(script.revision), max_rows, max_rows_per_table or {})

        def upgrade(
            *args: Any,
            _orig: Any = module.upgrade,
            _values: dict[str, str] = values,
            _rev: str = script.revision,
            **kwargs: Any,
        ) -> Any:
            connection = context.get_bind()
            for k, v in _values.items():
                connection.exec_driver_sql("SELECT set_config(%s, %s, false)", (k, v))
            hook = _HOOKS.get(connection)
            if hook is not None:
                hook.begin(_rev)
            try:
                return _orig(*args, **kwargs)
            finally:
                if hook is not None:
                    hook.end()
                for k in _values:
                    connection.exec_driver_sql("SELECT set_config(%s, '', false)", (k,))

        upgrade._recovery_tag = values["recovery.tag"]  # type: ignore[attr-defined]
        module.upgrade = upgrade
