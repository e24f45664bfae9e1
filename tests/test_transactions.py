"""The caller's transaction is the caller's: no library function ends one it did not open.

Every public function a Python user calls with a connection of their own is called
here inside the caller's open transaction, after an uncommitted write of the caller's
(`INSERT INTO mine VALUES (1)`).  Afterwards that write is still there, in the same
transaction, invisible to other sessions until the caller commits, and committed
with whatever the function wrote; or the function refused, saying it must run outside
an open transaction, and the write is still there.  Called on an idle connection, each
leaves it idle (its own work committed).  A static check keeps `.commit()` and
`.rollback()` out of the package, but for the CLI, the demo and an allow-list of the
places that only end transactions they opened.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from recovery import (
    ConflictError,
    RecoveryError,
    Selector,
    capture_status,
    changes,
    create_mark,
    diff,
    disable_capture,
    enable_capture,
    guard,
    init,
    list_marks,
    list_operations,
    prune,
    resume_rollback,
    rollback,
    sqlscope,
)
from recovery import approval as ap
from recovery import snapshot as snap
from recovery.approval import ApprovalPending
from recovery.db import connect
from recovery.marks import resolve_time
from recovery.restore import restore
from recovery.runbook import engine as runbook
from recovery.runbook import report
from recovery.schema import SCHEMA_VERSION

PACKAGE = Path(__file__).resolve().parent.parent / "recovery"
IDLE, INTRANS = psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS
BAD = Selector(tags=("bad",))
ORIGINAL = [(1, "v1"), (2, "v2"), (3, "v3"), (4, "v4"), (5, "v5")]
DAMAGED = [(1, "v1"), (2, "bad"), (3, "bad"), (5, "v5"), (6, "bogus")]
REFUSED = r"commits as it goes \(.+\): call it outside an open transaction \(commit or roll back"
RUNBOOK = "name: t\nsteps:\n  - id: count\n    kind: changes\n    tag: [bad]\n"


# -- the world: a captured table damaged by a tagged change ---------------------------


@pytest.fixture
def world(conn: psycopg.Connection, sql_exec: Any, tmp_path: Path) -> dict[str, Any]:
    """items (captured; a snapshot `before` and a mark `m0` taken before the bad change),
    the caller's own table `mine`, two tables not captured yet (one whose name needs
    quotes), a pending approval request and a finished runbook run."""
    sql_exec("CREATE TABLE mine (x int)")
    sql_exec("CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)")
    sql_exec("INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 5) g")
    sql_exec(
        'CREATE TABLE plain (id int PRIMARY KEY); CREATE TABLE "Order Items" (id int PRIMARY KEY)'
    )
    enable_capture(conn, ["items"])
    info = snap.create(conn, "before", snap.table_specs(conn, ["items"], []))
    m0 = create_mark(conn, "m0")
    sql_exec(
        "SET recovery.tag = 'bad'; UPDATE items SET v = 'bad' WHERE id IN (2, 3);"
        " DELETE FROM items WHERE id = 4; INSERT INTO items VALUES (6, 'bogus')"
    )
    req = ap.request(conn, "rollback", {"kind": "rollback", "what": "a test plan"}, 100, 1)
    run = runbook.run(conn, runbook.loads(RUNBOOK), {}, report_dir=str(tmp_path / "reports"))
    assert conn.info.transaction_status == IDLE
    return {"info": info, "m0": m0, "req": req.req_id, "run": run.run_id}


def begin(conn: psycopg.Connection) -> None:
    """The caller's own uncommitted write."""
    conn.execute("INSERT INTO mine VALUES (1)")
    assert conn.info.transaction_status == INTRANS


def others(db_url: str, query: str) -> list[tuple[Any, ...]]:
    """What another session sees (committed data only)."""
    with psycopg.connect(db_url) as c:
        return c.execute(query).fetchall()  # type: ignore[arg-type]


def still_mine(
    conn: psycopg.Connection,
    db_url: str,
    expect: list[tuple[Any, ...]] | None = None,
) -> None:
    """The caller's transaction is open and usable, holds its write, which nobody else
    sees yet; the caller's commit makes it visible."""
    expect = expect or [(1,)]
    assert conn.info.transaction_status == INTRANS
    assert conn.execute("SELECT x FROM mine ORDER BY x").fetchall() == expect
    assert others(db_url, "SELECT x FROM mine") == []
    conn.commit()
    assert others(db_url, "SELECT x FROM mine ORDER BY x") == expect


def q(conn: psycopg.Connection, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """A query of the test's, in the caller's transaction when one is open (else in one
    of its own: an idle connection stays idle)."""
    with conn.transaction():
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def items(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return q(conn, "SELECT id, v FROM items ORDER BY id")


def settings(conn: psycopg.Connection) -> list[Any]:
    """The settings undo, restore, prune and verify change for their own work (a tag
    never set reads as the empty one: both mean no tag)."""
    return [
        q(conn, "SELECT coalesce(current_setting(%s, true), '')", [k])[0][0]
        for k in (
            "lock_timeout",
            "work_mem",
            "recovery.tag",
            "TimeZone",
            "DateStyle",
            "IntervalStyle",
            "extra_float_digits",
        )
    ]


# -- functions that only read: each asserts its exact result ---------------------------


def _r_changes(conn: psycopg.Connection, w: dict[str, Any]) -> None:
    res = changes(conn, BAD)
    assert (res.statements, res.rows) == (3, 4)
    assert [(t["operation"], t["rows"]) for t in res.by_table] == [
        ("delete", 1),
        ("insert", 1),
        ("update", 2),
    ]


def _r_diff(conn: psycopg.Connection, w: dict[str, Any]) -> None:
    assert [(r.operation, r.key, r.columns.get("v")) for r in diff(conn, BAD)] == [
        ("update", {"id": "2"}, ["v2", "bad"]),
        ("update", {"id": "3"}, ["v3", "bad"]),
        ("delete", {"id": "4"}, ["v4", None]),
        ("insert", {"id": "6"}, [None, "bogus"]),
    ]


def _r_marks(conn: psycopg.Connection, w: dict[str, Any]) -> None:
    assert [(m.name, m.at) for m in list_marks(conn)] == [("m0", w["m0"].at)]
    at = resolve_time(conn, "m0", "since")
    assert q(conn, "SELECT %s::timestamptz = %s::timestamptz", [at, w["m0"].at]) == [(True,)]


def _r_operations(conn: psycopg.Connection, w: dict[str, Any]) -> None:
    assert [(o.kind, o.status, o.interrupted) for o in list_operations(conn)] == [
        ("snapshot", "done", False)
    ]


def _r_approvals(conn: psycopg.Connection, w: dict[str, Any]) -> None:
    req = ap.get(conn, w["req"])
    assert (req.kind, req.status, req.rows, req.tables) == ("rollback", "pending", 100, 1)
    assert [r.req_id for r in ap.list_requests(conn, status=ap.OPEN)] == [w["req"]]


def _r_snapshots(conn: psycopg.Connection, w: dict[str, Any]) -> None:
    before = settings(conn)
    specs = snap.table_specs(conn, ["items"], ["id > 1"])
    assert [(s.where, s.parts) for s in specs] == [("id > 1", [])]
    assert [(i.name, i.rows) for i in snap.list_snapshots(conn)] == [("before", 5)]
    info = snap.find(conn, "before")
    assert snap.verify(conn, info).ok
    assert settings(conn) == before  # the output settings verify used are put back


def _r_sqlscope(conn: psycopg.Connection, w: dict[str, Any]) -> None:
    stmts = sqlscope.analyze(conn, "DELETE FROM items WHERE id > 3")
    sqlscope.estimate(conn, stmts)
    assert [(t.schema, t.table, t.where) for s in stmts for t in s.targets] == [
        ("public", "items", "id > 3")
    ]


def _r_capture_status(conn: psycopg.Connection, w: dict[str, Any]) -> None:
    assert [(s.table, s.state) for s in capture_status(conn)] == [("public.items", "on")]


def _r_report(conn: psycopg.Connection, w: dict[str, Any]) -> None:
    doc = report.build(conn, w["run"])
    assert (doc["run"]["run_id"], doc["run"]["status"]) == (w["run"], "done")
    assert [(s["step_id"], s["status"]) for s in runbook.run_steps(conn, w["run"])] == [
        ("count", "done")
    ]
    assert [(r["run_id"], r["status"]) for r in runbook.list_runs(conn)] == [(w["run"], "done")]


def _r_rollback_dry_run(conn: psycopg.Connection, w: dict[str, Any]) -> None:
    before = settings(conn)
    plan = rollback(conn, BAD, dry_run=True, sql_out=[])
    assert [(t.reinsert, t.restore, t.delete, t.conflicts) for t in plan.tables] == [(1, 2, 1, 0)]
    assert (plan.status, plan.op_id) == ("dry-run", None)
    assert items(conn) == DAMAGED
    # No plan left behind in the caller's transaction.
    assert q(conn, "SELECT count(*) FROM pg_class WHERE relname ~ '^(undo_dry|_r[bs]_)'") == [(0,)]
    assert settings(conn) == before


def _r_restore_dry_run(conn: psycopg.Connection, w: dict[str, Any]) -> None:
    before = settings(conn)
    plan = restore(conn, w["info"], dry_run=True)
    assert [(t.reinsert, t.restore, t.already, t.new_rows) for t in plan.tables] == [(1, 2, 2, 1)]
    assert items(conn) == DAMAGED
    assert settings(conn) == before


READS: dict[str, Callable[[psycopg.Connection, dict[str, Any]], None]] = {
    "journal.changes": _r_changes,
    "journal.diff": _r_diff,
    "marks.list_marks, resolve_time": _r_marks,
    "operations.list_operations": _r_operations,
    "approval.get, list_requests": _r_approvals,
    "snapshot.table_specs, list_snapshots, find, verify": _r_snapshots,
    "sqlscope.analyze, estimate": _r_sqlscope,
    "capture.status": _r_capture_status,
    "report.build, runbook.run_steps, list_runs": _r_report,
    "undo.rollback (dry run)": _r_rollback_dry_run,
    "restore.restore (dry run)": _r_restore_dry_run,
}


@pytest.mark.parametrize("name", list(READS))
def test_reads_keep_the_callers_transaction(conn, db_url, world, name):  # type: ignore[no-untyped-def]
    begin(conn)
    READS[name](conn, world)
    still_mine(conn, db_url)


@pytest.mark.parametrize("name", list(READS))
def test_reads_leave_an_idle_connection_idle(conn, world, name):  # type: ignore[no-untyped-def]
    READS[name](conn, world)
    assert conn.info.transaction_status == IDLE


# -- functions that write: their work joins the caller's transaction --------------------
# Each returns (query, what another session sees before the caller commits, after).

Seen = tuple[str, list[tuple[Any, ...]], list[tuple[Any, ...]]]
MARKS = "SELECT name FROM _recovery.marks ORDER BY name"
ITEMS = "SELECT id, v FROM items ORDER BY id"


def _w_mark(conn: psycopg.Connection, w: dict[str, Any]) -> Seen:
    assert create_mark(conn, "m1", note="mine").note == "mine"
    assert [m.name for m in list_marks(conn)] == ["m0", "m1"]
    return MARKS, [("m0",)], [("m0",), ("m1",)]


def _w_request(conn: psycopg.Connection, w: dict[str, Any]) -> Seen:
    req = ap.request(conn, "restore", {"kind": "restore", "what": "another plan"}, 7, 2)
    assert (req.kind, req.status, req.rows) == ("restore", "pending", 7)
    q = "SELECT kind, status FROM _recovery.approval_requests ORDER BY req_id"
    return q, [("rollback", "pending")], [("rollback", "pending"), ("restore", "pending")]


def _w_refuse(conn: psycopg.Connection, w: dict[str, Any]) -> Seen:
    assert ap.approve(conn, w["req"], refuse=True).status == "refused"
    q = "SELECT status FROM _recovery.approval_requests ORDER BY req_id"
    return q, [("pending",)], [("refused",)]


def _w_prune(conn: psycopg.Connection, w: dict[str, Any]) -> Seen:
    before = settings(conn)
    res = prune(conn, "7d")
    assert (res.dropped_chunks, res.dropped_statements) == ([], 0)
    assert settings(conn) == before  # the caller keeps its own lock_timeout
    q = "SELECT kind FROM _recovery.events WHERE kind = 'prune'"
    return q, [], [("prune",)]


def _w_rollback(conn: psycopg.Connection, w: dict[str, Any]) -> Seen:
    before = settings(conn)
    rep = rollback(conn, BAD)
    assert (rep.status, [(t.inserted, t.updated, t.deleted) for t in rep.tables]) == (
        "done",
        [(1, 2, 1)],
    )
    assert items(conn) == ORIGINAL
    # The caller's later writes are its own: not tagged as the undo's, same settings.
    assert settings(conn) == before
    q(conn, "UPDATE items SET v = 'mine' WHERE id = 5 RETURNING id")
    assert q(conn, "SELECT tag FROM _recovery.stmt ORDER BY stmt_id DESC LIMIT 1") == [(None,)]
    assert [(o.kind, o.status) for o in list_operations(conn)][0] == ("rollback", "done")
    return ITEMS, DAMAGED, [*ORIGINAL[:4], (5, "mine")]


def _w_restore(conn: psycopg.Connection, w: dict[str, Any]) -> Seen:
    before = settings(conn)
    rep = restore(conn, w["info"])
    assert (rep.status, [(t.inserted, t.updated) for t in rep.tables]) == ("done", [(1, 2)])
    assert items(conn) == [*ORIGINAL, (6, "bogus")]
    assert settings(conn) == before
    return ITEMS, DAMAGED, [*ORIGINAL, (6, "bogus")]


def _w_save_in_transaction(conn: psycopg.Connection, w: dict[str, Any]) -> Seen:
    before = settings(conn)
    info = snap.save_in_transaction(conn, "mine-too", snap.table_specs(conn, ["items"], []))
    assert (info.name, info.rows) == ("mine-too", 5)
    assert settings(conn) == before
    q = "SELECT name FROM _recovery.snapshots ORDER BY snap_id"
    return q, [("before",)], [("before",), ("mine-too",)]


def _w_drop(conn: psycopg.Connection, w: dict[str, Any]) -> Seen:
    snap.drop(conn, snap.find(conn, "before"))
    assert snap.list_snapshots(conn) == []
    return "SELECT name FROM _recovery.snapshots", [("before",)], []


def _w_capture(conn: psycopg.Connection, w: dict[str, Any]) -> Seen:
    # "Order Items" needs quotes, after a name that does not: the first stays enabled.
    assert enable_capture(conn, ["plain", "Order Items"]) == ["public.plain", "public.Order Items"]
    assert disable_capture(conn, ["items"]) == ["public.items"]
    query = 'SELECT table_name, enabled FROM _recovery.captured ORDER BY table_name COLLATE "C"'
    return query, [("items", True)], [("Order Items", True), ("items", False), ("plain", True)]


def _w_init(conn: psycopg.Connection, w: dict[str, Any]) -> Seen:
    res = init(conn)
    assert (res.previous_version, res.version) == (SCHEMA_VERSION, SCHEMA_VERSION)
    q = "SELECT value FROM _recovery.meta WHERE key = 'schema_version'"
    return q, [(str(SCHEMA_VERSION),)], [(str(SCHEMA_VERSION),)]


WRITES: dict[str, Callable[[psycopg.Connection, dict[str, Any]], Seen]] = {
    "marks.create_mark": _w_mark,
    "approval.request": _w_request,
    "approval.approve (refuse)": _w_refuse,
    "prune.prune": _w_prune,
    "undo.rollback": _w_rollback,
    "restore.restore": _w_restore,
    "snapshot.save_in_transaction": _w_save_in_transaction,
    "snapshot.drop": _w_drop,
    "capture.enable, disable": _w_capture,
    "schema.init": _w_init,
}


@pytest.mark.parametrize("name", list(WRITES))
def test_writes_join_the_callers_transaction(conn, db_url, world, name):  # type: ignore[no-untyped-def]
    begin(conn)
    query, before, after = WRITES[name](conn, world)
    assert others(db_url, query) == before  # nothing committed behind the caller's back
    still_mine(conn, db_url)
    assert others(db_url, query) == after  # committed with the caller's write


@pytest.mark.parametrize("name", list(WRITES))
def test_writes_on_an_idle_connection_commit_their_own(conn, db_url, world, name):  # type: ignore[no-untyped-def]
    query, _before, after = WRITES[name](conn, world)
    assert conn.info.transaction_status == IDLE
    assert others(db_url, query) == after


def test_caller_rolls_back_a_composed_undo(conn, db_url, world):  # type: ignore[no-untyped-def]
    """The caller's rollback takes the undo and its record with it."""
    begin(conn)
    assert rollback(conn, BAD).status == "done"
    conn.rollback()
    assert items(conn) == DAMAGED
    assert [o.kind for o in list_operations(conn)] == ["snapshot"]
    assert others(db_url, "SELECT x FROM mine") == []


# -- operations that commit as they go: refused, nothing changed ------------------------

REFUSALS: dict[str, tuple[Callable[[psycopg.Connection, dict[str, Any]], Any], str]] = {
    "undo.rollback (batched)": (
        lambda c, w: rollback(c, BAD, batch_size=2),
        "a batched rollback " + REFUSED,
    ),
    "undo.resume_rollback": (
        lambda c, w: resume_rollback(c, 1),
        "resuming undo operation 1 " + REFUSED,
    ),
    "snapshot.create": (
        lambda c, w: snap.create(c, "s2", snap.table_specs(c, ["items"], [])),
        "snapshot create " + REFUSED,
    ),
    "runbook.run": (
        lambda c, w: runbook.run(c, runbook.loads(RUNBOOK), {}),
        "a runbook run " + REFUSED,
    ),
    "runbook.resume": (
        lambda c, w: runbook.resume(c, w["run"]),
        "resuming runbook run 1 " + REFUSED,
    ),
    "guard.guard": (
        lambda c, w: guard(c, tag="t").__enter__(),
        r"guard\(\) needs a connection with no transaction open: commit or roll back",
    ),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_operations_that_commit_as_they_go_refuse(conn, db_url, world, name):  # type: ignore[no-untyped-def]
    call, message = REFUSALS[name]
    begin(conn)
    with pytest.raises(RecoveryError, match=message):
        call(conn, world)
    assert items(conn) == DAMAGED
    still_mine(conn, db_url)
    assert others(db_url, "SELECT kind, status FROM _recovery.operations") == [("snapshot", "done")]
    assert others(db_url, "SELECT count(*) FROM _recovery.runbook_runs") == [(1,)]


# -- expected errors inside the caller's transaction leave it usable --------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: changes(c, Selector(since="not a time")), "--since 'not a time' is neither"),
        (lambda c: diff(c, Selector(tags=("bad",), until="m9")), "--until 'm9' is neither"),
        (lambda c: create_mark(c, "m0"), "mark 'm0' exists already"),
        (
            lambda c: enable_capture(c, ["plain", "no such table"]),
            "table 'no such table' not found",
        ),
        (lambda c: snap.table_specs(c, ["items"], ["nosuch > 1"]), "--where 'nosuch > 1' on"),
        (lambda c: ap.get(c, 999), "no approval request 999"),
        (
            lambda c: rollback(c, Selector(tags=("bad",), txids=("1",))),
            "no captured change matches",
        ),
    ],
    ids=[
        "bad time",
        "bad mark",
        "mark taken",
        "bad table after a good one",
        "bad where",
        "no request",
        "nothing to undo",
    ],
)
def test_expected_errors_leave_the_transaction_usable(conn, db_url, world, call, message):  # type: ignore[no-untyped-def]
    begin(conn)
    with pytest.raises(RecoveryError, match=re.escape(message)):
        call(conn)
    conn.execute("INSERT INTO mine VALUES (2)")  # not aborted
    still_mine(conn, db_url, [(1,), (2,)])
    assert others(db_url, "SELECT table_name FROM _recovery.captured") == [("items",)]
    assert others(db_url, MARKS) == [("m0",)]


def test_conflict_inside_the_callers_transaction(conn, db_url, world, sql_exec):  # type: ignore[no-untyped-def]
    """A refused undo is recorded in the caller's transaction; nothing else changes."""
    sql_exec("UPDATE items SET v = 'later' WHERE id = 2")
    begin(conn)
    with pytest.raises(ConflictError, match="1 row"):
        rollback(conn, BAD)
    assert items(conn) == [(1, "v1"), (2, "later"), (3, "bad"), (5, "v5"), (6, "bogus")]
    assert [(o.kind, o.status, o.error) for o in list_operations(conn)][0] == (
        "rollback",
        "refused",
        "conflicts",
    )
    still_mine(conn, db_url)
    assert others(db_url, "SELECT status FROM _recovery.operations WHERE kind = 'rollback'") == [
        ("refused",)
    ]


def test_approval_request_inside_the_callers_transaction(conn, db_url, world):  # type: ignore[no-untyped-def]
    """An undo over the threshold records its request in the caller's transaction, says
    so, and changes nothing; the request is there for others once the caller commits."""
    begin(conn)
    with pytest.raises(ApprovalPending, match="recorded in your open transaction") as err:
        rollback(conn, BAD, max_rows_without_approval=1)
    req = ap.get(conn, err.value.req_id)
    assert (req.kind, req.status, req.rows, req.tables) == ("rollback", "pending", 4, 1)
    assert items(conn) == DAMAGED
    assert [(o.kind, o.status, o.error) for o in list_operations(conn)][0] == (
        "rollback",
        "refused",
        "approval pending",
    )
    query = "SELECT req_id FROM _recovery.approval_requests ORDER BY req_id"
    assert others(db_url, query) == [(world["req"],)]
    still_mine(conn, db_url)
    assert others(db_url, query) == [(world["req"],), (req.req_id,)]


def test_autocommit_connection(db_url, world):  # type: ignore[no-untyped-def]
    """On an autocommit connection each operation is a transaction of its own."""
    with connect(db_url, autocommit=True) as ac:
        create_mark(ac, "m1")
        assert rollback(ac, BAD, dry_run=True).tables[0].restore == 2
        assert rollback(ac, BAD).status == "done"
        assert ac.info.transaction_status == IDLE
    assert others(db_url, ITEMS) == ORIGINAL
    assert others(db_url, MARKS) == [("m0",), ("m1",)]


# -- the rule, statically: who may call .commit() / .rollback() --------------------------

# The CLI (recovery/cli/: its commands and the demo) owns its connections.  Any
# other call of .commit() or .rollback() must be here, by module and function, with the
# reason it ends only a transaction of its own.
ALLOWED = {
    (
        "db.py",
        "connect",
    ): "connect() opened the connection itself: it commits the session settings it made",
    (
        "guardrails/guard.py",
        "_applied_psycopg",
    ): "guard() takes only an idle connection: a block that fails leaves a transaction "
    "begun inside the block, which is rolled back (as `with conn.transaction()` would) "
    "so that the session's tag can be put back for good",
    (
        "guardrails/guard.py",
        "_applied",
    ): "the same for a SQLAlchemy Connection (refused unless idle): guard()'s settings are "
    "committed on their own; a failed block's transaction is rolled back",
    (
        "guardrails/guard.py",
        "on_checkout",
    ): "a pool connection as SQLAlchemy hands it out (no one's transaction open): the "
    "settings are committed on their own",
    (
        "guardrails/guard.py",
        "on_checkin",
    ): "a connection going back to SQLAlchemy's pool, which resets it with a rollback "
    "anyway: rolled back to put the settings back",
    (
        "runbook/state.py",
        "settle",
    ): "run() and resume() refuse a connection with a transaction open and own it until "
    "they return: what a step left open is the run's own",
}
OWNERS = {"cli/approval.py", "cli/demo.py"}
# SQL that ends (or begins) a transaction, run as such: conn.execute("COMMIT").
TX_SQL = re.compile(
    r"^\s*(BEGIN|COMMIT|ROLLBACK|ABORT|END|START\s+TRANSACTION)"
    r"(\s+(WORK|TRANSACTION))?(\s+AND\s+(NO\s+)?CHAIN)?\s*;?\s*$",
    re.I,
)


def _calls(source: str) -> list[tuple[str, int, str]]:
    """(enclosing function, line, what) of every .commit()/.rollback() call, and of every
    transaction-control statement run as SQL text, in a module."""
    found: list[tuple[str, int, str]] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = func
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = child.name
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute)
                and child.func.attr in ("commit", "rollback")
                and not child.args
            ):
                found.append((func, child.lineno, f".{child.func.attr}()"))
            if (
                isinstance(child, ast.Call)
                and child.args
                and isinstance(child.args[0], ast.Constant)
                and isinstance(child.args[0].value, str)
                and TX_SQL.match(child.args[0].value)
                and getattr(child.func, "attr", getattr(child.func, "id", None))
                in ("execute", "exec_driver_sql", "SQL", "text")
            ):
                found.append((func, child.lineno, repr(child.args[0].value)))
            visit(child, name)

    visit(ast.parse(source), "<module>")
    return found


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_no_library_function_ends_a_transaction_it_did_not_open() -> None:
    offenders = [
        f"recovery/{_rel(p)}:{line} in {func}(): {what}"
        for p in sorted(PACKAGE.rglob("*.py"))
        if _rel(p) not in OWNERS
        for func, line, what in _calls(p.read_text())
        if (_rel(p), func) not in ALLOWED
    ]
    assert offenders == [], (
        "a library function commits or rolls back: use `with conn.transaction():` (a "
        "savepoint inside the caller's transaction), or refuse to run inside one "
        "(operations.refuse_in_transaction); only if it ends a transaction it opened "
        "itself, add it to ALLOWED with the reason"
    )
    assert all(reason for reason in ALLOWED.values())


def test_the_static_check_sees_calls() -> None:
    """The scan finds what it looks for (so an empty result means something)."""
    assert _calls(
        "def f(c):\n    c.execute('COMMIT')\n    c.rollback()\n"
        "def g(c):\n    with c.transaction() as tx:\n        raise Rollback(tx)\n"
    ) == [("f", 2, "'COMMIT'"), ("f", 3, ".rollback()")]
    found = [(f, w) for p in sorted(PACKAGE.rglob("*.py")) for f, _n, w in _calls(p.read_text())]
    assert ("settle", ".rollback()") in found
