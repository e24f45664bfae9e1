"""Runbooks end to end: the shipped runbooks against a seeded bad deploy (every affected row
checked), two-person approval through a run, a run killed in the middle of its apply step
and resumed, bad files and bad parameters (one-line errors, nothing runs), checks, pauses,
notifications, and the condition language."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

import recovery
from recovery.cli import main
from recovery.errors import RecoveryError
from recovery.runbook.conditions import condition_refs, evaluate, parse_condition
from tests.conftest import rows

ROOT = Path(__file__).resolve().parents[1]
BOOKS = ROOT / "runbooks"
ROLLBACK = str(BOOKS / "bad-deploy-rollback.yaml")
PRE = str(BOOKS / "pre-deploy-snapshot.yaml")
RESTORE = str(BOOKS / "restore-from-snapshot.yaml")
ROLLBACK_STEPS = [
    "freeze",
    "damage",
    "sample",
    "plan",
    "approve",
    "apply",
    "recheck",
    "nothing_left",
    "check",
    "report",
]
_roles = itertools.count()


# -- helpers -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports (./runbook-reports/run-N) land in the test's own directory."""
    monkeypatch.chdir(tmp_path)


def invoke(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, [*args, "--db", url], catch_exceptions=False)


def url_as(db_url: str, user: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    info["user"] = user
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**info)


def write(db_url: str, statements: list[str], tag: str | None = None) -> None:
    """Statements in one committed transaction, as an application (tagged or not)."""
    with psycopg.connect(db_url, application_name="shop-app") as c:
        if tag is not None:
            c.execute("SELECT set_config('recovery.tag', %s, true)", [tag])
        for s in statements:
            c.execute(s)  # type: ignore[arg-type]


def query(conn: psycopg.Connection, q: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn.rollback()
    out = conn.execute(q, params).fetchall()  # type: ignore[arg-type]
    conn.rollback()
    return out


def runs(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return query(
        conn,
        "SELECT run_id, name, status, dry_run, error FROM _recovery.runbook_runs ORDER BY run_id",
    )


def steps(conn: psycopg.Connection, run_id: int) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        sid: (status, result)
        for sid, status, result in query(
            conn,
            "SELECT step_id, status, result FROM _recovery.runbook_steps WHERE run_id = %s"
            " ORDER BY step_no",
            [run_id],
        )
    }


def ok(res: Result) -> Result:
    assert res.exit_code == 0, (res.exit_code, res.stdout, res.stderr)
    return res


def runbook_file(tmp_path: Path, text: str, name: str = "book.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- the seeded bad deploy -----------------------------------------------------------


@pytest.fixture
def shop(conn: psycopg.Connection, sql_exec: Any) -> dict[str, list[tuple[Any, ...]]]:
    """customers and orders (ON DELETE CASCADE), captured; returns the rows before."""
    sql_exec("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text)")
    sql_exec(
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES"
        " customers ON DELETE CASCADE, total numeric(10, 2) NOT NULL, status text NOT NULL)"
    )
    sql_exec(
        "INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com'"
        " FROM generate_series(1, 50) g"
    )
    sql_exec(
        "INSERT INTO orders SELECT g, g % 50 + 1, g * 1.5, 'new' FROM generate_series(1, 200) g"
    )
    recovery.enable_capture(conn, ["customers", "orders"])
    return state(conn)


def state(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {"customers": rows(conn, "customers"), "orders": rows(conn, "orders")}


def bad_deploy(db_url: str, tag: str = "deploy-42") -> None:
    """Prices zeroed, two customers deleted (8 orders cascade), 5 bogus orders; then
    untagged legitimate writes that must survive: a status column, a new customer."""
    write(
        db_url,
        [
            "UPDATE orders SET total = 0 WHERE id % 4 = 0",
            "DELETE FROM customers WHERE id IN (3, 7)",
            "INSERT INTO orders SELECT g, 1, 9.99, 'bogus' FROM generate_series(1001, 1005) g",
        ],
        tag=tag,
    )
    write(
        db_url,
        [
            "UPDATE orders SET status = 'shipped' WHERE id % 10 = 0",
            "INSERT INTO customers VALUES (51, 'customer 51', 'c51@example.com')",
        ],
    )


def expected(before: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "customers": before["customers"] + [(51, "customer 51", "c51@example.com")],
        "orders": [(i, c, t, "shipped" if i % 10 == 0 else s) for i, c, t, s in before["orders"]],
    }


# 46 orders restored, 2 customers + 8 cascaded orders re-inserted, 5 bogus orders deleted.
PLAN_ROWS = 61


# -- bad-deploy-rollback -------------------------------------------------------------


def test_bad_deploy_rollback_end_to_end(db_url, conn, shop, tmp_path):  # type: ignore[no-untyped-def]
    bad_deploy(db_url)
    res = ok(
        invoke(
            db_url,
            "runbook",
            "run",
            ROLLBACK,
            "--param",
            "tag=deploy-42",
            "--param",
            "check_query=SELECT count(*) FROM orders WHERE status = 'bogus'",
        )
    )
    assert state(conn) == expected(shop)
    [(run_id, name, status, dry_run, error)] = runs(conn)
    assert (name, status, dry_run, error) == ("bad-deploy-rollback", "done", False, None)
    done = steps(conn, run_id)
    assert list(done) == ROLLBACK_STEPS
    assert {s for s, _r in done.values()} == {"done"}
    plan, apply = done["plan"][1], done["apply"][1]
    assert (plan["rows"], plan["table_count"], plan["conflicts"]) == (PLAN_ROWS, 2, 0)
    assert {t["table"]: (t["reinsert"], t["restore"], t["delete"]) for t in plan["tables"]} == {
        "public.customers": (2, 0, 0),
        "public.orders": (8, 46, 5),
    }
    assert done["approve"][1]["needed"] is False
    assert (apply["status"], apply["rows"], apply["conflicts"]) == ("done", PLAN_ROWS, 0)
    assert done["damage"][1]["rows"] == 50 + 2 + 8 + 5
    assert done["recheck"][1]["rows"] == 0 and done["nothing_left"][1]["actual"] == 0
    assert done["check"][1]["query"] == "SELECT count(*) FROM orders WHERE status = 'bogus'"
    assert f"undo operation {apply['op_id']}" in done["report"][1]["message"]
    assert query(conn, "SELECT name FROM _recovery.marks") == [
        (f"rollback-deploy-42-run-{run_id}",)
    ]
    for line in (
        "[4/10] plan (rollback_plan): 61 row(s) of 2 table(s) to undo, 0 conflict(s)",
        f"[6/10] apply (rollback_apply): operation {apply['op_id']}: 61 row(s) changed "
        "in 2 table(s)",
        "[8/10] nothing_left (sql_check): ok: 0",
    ):
        assert line in res.stdout.splitlines()
    report = tmp_path / "runbook-reports" / f"run-{run_id}"
    assert f"report: {report}\n" in res.stdout
    assert {p.name for p in report.iterdir()} >= {"report.md", "report.json", "report.html"}

    # The same runbook again finds nothing left to undo and changes nothing.
    ok(invoke(db_url, "runbook", "run", ROLLBACK, "--param", "tag=deploy-42"))
    assert state(conn) == expected(shop)
    again = steps(conn, run_id + 1)
    assert again["plan"][1]["rows"] == 0 and again["apply"][1]["rows"] == 0


def test_dry_run_changes_nothing(db_url, conn, shop):  # type: ignore[no-untyped-def]
    bad_deploy(db_url)
    before = state(conn)
    res = ok(
        invoke(
            db_url,
            "runbook",
            "run",
            ROLLBACK,
            "--param",
            "tag=deploy-42",
            "--dry-run",
            "--param",
            "max_rows=10",
        )
    )
    assert state(conn) == before
    for table in ("marks", "operations", "approval_requests"):
        assert query(conn, f"SELECT count(*) FROM _recovery.{table}") == [(0,)], table
    [(run_id, _n, status, dry_run, _e)] = runs(conn)
    assert (status, dry_run) == ("done", True)
    done = steps(conn, run_id)
    status_of = {k: v[0] for k, v in done.items()}
    assert status_of == {
        "freeze": "skipped",
        "damage": "done",
        "sample": "done",
        "plan": "done",
        "approve": "done",
        "apply": "skipped",
        "recheck": "done",
        "nothing_left": "skipped",
        "check": "skipped",
        "report": "done",
    }
    assert done["apply"][1] == {
        "dry_run": True,
        "args": {"tag": ["deploy-42"], "on_conflict": "fail", "approval": "approve"},
    }
    assert done["plan"][1]["rows"] == PLAN_ROWS
    assert (done["approve"][1]["needed"], done["approve"][1]["req_id"]) == (True, None)
    assert "approve (approval): needed (not requested: dry run)" in res.stdout
    assert done["report"][1]["sent"] is False
    assert (
        'apply (rollback_apply): would run with {"approval": "approve", "on_conflict": '
        '"fail", "tag": ["deploy-42"]}' in res.stdout
    )
    assert "freeze (mark): would run with" in res.stdout


def test_conflicts_refuse_with_exit_2(db_url, conn, shop):  # type: ignore[no-untyped-def]
    bad_deploy(db_url)
    write(db_url, ["UPDATE orders SET total = 7 WHERE id = 8"])  # a later edit of a zeroed price
    before = state(conn)
    res = invoke(db_url, "runbook", "run", ROLLBACK, "--param", "tag=deploy-42")
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert "error: step apply (rollback_apply) failed: 1 row(s) changed after" in res.stderr
    assert state(conn) == before
    [(run_id, _n, status, _d, error)] = runs(conn)
    assert status == "failed" and error.startswith("step apply (rollback_apply) failed")
    done = steps(conn, run_id)
    assert done["approve"][0] == "skipped" and done["apply"][0] == "failed"
    assert "recheck" not in done
    # skip undoes everything else and keeps the later edit
    ok(
        invoke(
            db_url,
            "runbook",
            "run",
            ROLLBACK,
            "--param",
            "tag=deploy-42",
            "--param",
            "on_conflict=skip",
        )
    )
    want = expected(shop)
    want["orders"] = [(i, c, 7 if i == 8 else t, s) for i, c, t, s in want["orders"]]
    assert state(conn) == want


# -- pre-deploy-snapshot, then restore-from-snapshot ---------------------------------


@pytest.mark.parametrize("store", ["db", "directory"])
def test_snapshot_then_restore(db_url, conn, shop, tmp_path, store):  # type: ignore[no-untyped-def]
    migration = tmp_path / "migration.sql"
    migration.write_text(
        "UPDATE orders SET total = total * 100 WHERE status = 'new'"
        " AND id <= 50;\nDELETE FROM orders WHERE id > 190;\n"
    )
    where = "db" if store == "db" else str(tmp_path / "snaps")
    recovery.disable_capture(conn, ["orders"])
    res = ok(
        invoke(
            db_url,
            "runbook",
            "run",
            PRE,
            "--param",
            f"migration={migration}",
            "--param",
            "name=pre-43",
            "--param",
            f"store={where}",
            "--param",
            "tables=orders, customers",
        )
    )
    [(run_id, _n, status, _d, _e)] = runs(conn)
    done = steps(conn, run_id)
    assert status == "done" and {s for s, _r in done.values()} == {"done"}
    assert [s["kind"] for s in done["scope"][1]["statements"]] == ["UPDATE", "DELETE"]
    assert done["save"][1]["rows"] == 60 and done["verify"][1]["ok"] is True
    assert done["capture"][1]["tables"] == ["public.orders", "public.customers"]
    assert query(conn, "SELECT name FROM _recovery.marks") == [("before-pre-43",)]
    assert "snapshot pre-43 holds 60 row(s)" in done["report"][1]["message"]
    assert "capturing public.orders, public.customers" in res.stdout
    assert query(conn, "SELECT count(*) FROM _recovery.captured WHERE enabled") == [(2,)]

    before = state(conn)
    write(db_url, migration.read_text().strip().rstrip(";").split(";\n"), tag="deploy-43")
    write(db_url, ["UPDATE orders SET status = 'shipped' WHERE id = 100"])  # not in the snapshot
    assert state(conn) != before
    ok(
        invoke(
            db_url,
            "runbook",
            "run",
            RESTORE,
            "--param",
            "snapshot=pre-43",
            "--param",
            f"store={where}",
        )
    )
    want = dict(
        before, orders=[(i, c, t, "shipped" if i == 100 else s) for i, c, t, s in before["orders"]]
    )
    assert state(conn) == want
    [_, (run_id, name, status, _d, _e)] = runs(conn)
    done = steps(conn, run_id)
    assert (name, status) == ("restore-from-snapshot", "done")
    assert done["plan"][1]["rows"] == 60 and done["restore"][1]["rows"] == 60
    assert done["recheck"][1]["rows"] == 0 and done["check"][0] == "skipped"
    assert done["restore"][1]["tag"] == f"recovery-restore-{done['restore'][1]['op_id']}"


# -- approvals: two database users ---------------------------------------------------


@pytest.fixture
def two_users(server_url: str, db_url: str) -> Iterator[tuple[str, str]]:
    """Two login roles (cluster-wide, so uniquely named), dropped at the end."""
    names = [f"rb_{who}_{os.getpid()}_{next(_roles)}" for who in ("alice", "bob")]
    with psycopg.connect(server_url, autocommit=True) as a:
        for n in names:
            a.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(n)))
    try:
        yield url_as(db_url, names[0]), url_as(db_url, names[1])
    finally:
        with psycopg.connect(db_url, autocommit=True) as a:
            for n in names:
                a.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(n)))
        with psycopg.connect(server_url, autocommit=True) as a:
            for n in names:
                a.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(n)))


def _wait_for_approval(db_url: str, conn: psycopg.Connection, alice: str) -> tuple[int, int]:
    res = invoke(
        alice, "runbook", "run", ROLLBACK, "--param", "tag=deploy-42", "--param", "max_rows=10"
    )
    assert res.exit_code == 3, (res.stdout, res.stderr)
    [(run_id, _n, status, _d, _e)] = runs(conn)
    done = steps(conn, run_id)
    req = done["approve"][1]["req_id"]
    assert status == "waiting" and done["approve"][0] == "waiting" and "apply" not in done
    assert res.stderr.strip() == (
        f'approval needed: another database user runs "recovery '
        f'approve {req}", then "recovery runbook resume {run_id}"'
    )
    return run_id, req


def test_approval_by_another_user(db_url, conn, shop, two_users):  # type: ignore[no-untyped-def]
    alice, bob = two_users
    bad_deploy(db_url)
    before = state(conn)
    run_id, req = _wait_for_approval(db_url, conn, alice)
    assert state(conn) == before
    # Still pending: resume waits again (exit 3), nothing changes.
    res = invoke(alice, "runbook", "resume", str(run_id))
    assert res.exit_code == 3 and "approval needed" in res.stderr
    # The requester's own approval is refused.
    res = invoke(alice, "approve", str(req), "--yes")
    assert res.exit_code == 3, (res.stdout, res.stderr)
    assert invoke(alice, "runbook", "resume", str(run_id)).exit_code == 3
    assert state(conn) == before
    # Another user approves; the run goes on from the approval step.
    ok(invoke(bob, "approve", str(req), "--yes"))
    res = ok(invoke(alice, "runbook", "resume", str(run_id)))
    assert state(conn) == expected(shop)
    assert runs(conn)[0][2] == "done"
    done = steps(conn, run_id)
    assert done["approve"][1]["req_id"] == req and done["approve"][1]["status"] == "approved"
    assert done["apply"][1]["approval"] == req and done["apply"][1]["rows"] == PLAN_ROWS
    assert query(
        conn, "SELECT status FROM _recovery.approval_requests WHERE req_id = %s", [req]
    ) == [("executed",)]
    assert "[5/10] approve (approval): request" in res.stdout
    listing = ok(invoke(db_url, "runbook", "list", "--runs")).stdout
    assert f"{run_id}" in listing and "bad-deploy-rollback  done" in listing


def test_plan_changed_after_approval_is_refused(db_url, conn, shop, two_users):  # type: ignore[no-untyped-def]
    alice, bob = two_users
    bad_deploy(db_url)
    run_id, req = _wait_for_approval(db_url, conn, alice)
    ok(invoke(bob, "approve", str(req), "--yes"))
    # The deploy wrote more after the plan was approved: the plan to apply differs.
    write(db_url, ["UPDATE orders SET total = 0 WHERE id = 1"], tag="deploy-42")
    before = state(conn)
    res = invoke(alice, "runbook", "resume", str(run_id))
    assert res.exit_code == 3, (res.stdout, res.stderr)
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("error: step apply (rollback_apply) failed: ")
    assert "approval" in line
    assert state(conn) == before
    assert runs(conn)[0][2] == "failed"
    assert steps(conn, run_id)["apply"][0] == "failed"
    assert query(
        conn, "SELECT status FROM _recovery.approval_requests WHERE req_id = %s", [req]
    ) == [("approved",)]  # not consumed by the refused apply
    # The refused apply recorded the new plan as a request; approved, resume applies it.
    new_req = steps(conn, run_id)["apply"][1]["approval_pending"]
    assert new_req != req and f"recovery approve {new_req}" in line
    ok(invoke(bob, "approve", str(new_req), "--yes"))
    ok(invoke(alice, "runbook", "resume", str(run_id)))
    assert state(conn) == expected(shop)  # order 1's price, zeroed later, is back too
    assert steps(conn, run_id)["apply"][1]["approval"] == new_req


# -- a run killed in the middle of its apply step ------------------------------------


def _terminate_clients(conn: psycopg.Connection) -> None:
    """The killed client's server process goes away (it would, once it notices)."""
    for _ in range(200):
        left = query(
            conn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE"
            " datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'",
        )
        if not left:
            return
        time.sleep(0.05)
    raise AssertionError("the killed run's connection does not go away")


def test_killed_apply_resumes_to_the_same_state(db_url, conn, sql_exec, tmp_path):  # type: ignore[no-untyped-def]
    sql_exec("CREATE TABLE big (id int PRIMARY KEY, v int NOT NULL, note text)")
    sql_exec("INSERT INTO big SELECT g, g, 'n' || g FROM generate_series(1, 300000) g")
    recovery.enable_capture(conn, ["big"])
    original = rows(conn, "big")
    write(db_url, ["UPDATE big SET v = -v"], tag="big-deploy")
    write(db_url, ["UPDATE big SET note = 'kept' WHERE id % 1000 = 0"])
    want = [(i, v, "kept" if i % 1000 == 0 else n) for i, v, n in original]
    # A runbook's max_rows can only lower the schema's threshold: raise that (the owner's).
    sql_exec("UPDATE _recovery.meta SET value = '1000000' WHERE key = 'approval_rows'")
    env = {k: v for k, v in os.environ.items() if k not in ("RECOVERY_DB_URL", "DATABASE_URL")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recovery",
            "runbook",
            "run",
            ROLLBACK,
            "--param",
            "tag=big-deploy",
            "--param",
            "batch_size=20000",
            "--param",
            "max_rows=1000000",
            "--db",
            db_url,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    try:
        while True:
            seen = query(
                conn,
                "SELECT s.status, o.status, (o.summary->>'batches')::int"
                " FROM _recovery.runbook_steps s, _recovery.operations o"
                " WHERE s.step_id = 'apply' AND o.kind = 'rollback'",
            )
            if seen and seen[0][:2] == ("started", "applying") and seen[0][2] >= 2:
                break
            assert proc.poll() is None, (
                "the run ended before it could be killed",
                proc.communicate(),
            )
            assert time.monotonic() < deadline, "the apply step never got under way"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    _terminate_clients(conn)
    [(run_id, _n, status, _d, _e)] = runs(conn)
    assert status == "running"  # the truth the kill left: the apply step started, not done
    killed = steps(conn, run_id)["apply"]
    assert killed[0] == "started"
    now = rows(conn, "big")
    assert now != want and any(a == b for a, b in zip(now, want))  # midway
    [(op_id, op_status)] = query(
        conn, "SELECT op_id, status FROM _recovery.operations WHERE kind = 'rollback'"
    )
    assert op_status == "applying"
    assert killed[1]["op_id"] == op_id  # kept as soon as the first batch committed

    res = ok(invoke(db_url, "runbook", "resume", str(run_id)))
    assert f"continuing batched undo operation {op_id}" in res.stdout
    assert rows(conn, "big") == want
    assert runs(conn)[0][2] == "done"
    done = steps(conn, run_id)
    assert done["apply"][1]["op_id"] == op_id and done["apply"][1]["rows"] == 300000
    assert done["nothing_left"][0] == "done"
    assert query(
        conn,
        "SELECT op_id, status FROM _recovery.operations WHERE kind = 'rollback' ORDER BY op_id",
    ) == [(op_id, "done")]  # the same operation, continued


def test_resume_after_crash_around_finished_steps(db_url, conn, shop):  # type: ignore[no-untyped-def]
    """A crash after a step's work committed but before the step was recorded done: the
    mark and the one-transaction undo are found, not made again."""
    bad_deploy(db_url)
    ok(invoke(db_url, "runbook", "run", ROLLBACK, "--param", "tag=deploy-42"))
    [(run_id, *_)] = runs(conn)
    ops = query(conn, "SELECT op_id FROM _recovery.operations ORDER BY op_id")
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("UPDATE _recovery.runbook_runs SET status = 'running', finished_at = NULL")
        c.execute(
            "UPDATE _recovery.runbook_steps SET status = 'started', finished_at = NULL,"
            " result = jsonb_build_object('args', result->'args')"
            " WHERE step_id IN ('freeze', 'apply')"
        )
        c.execute("DELETE FROM _recovery.runbook_steps WHERE step_no > 6")
    res = ok(invoke(db_url, "runbook", "resume", str(run_id)))
    assert "freeze (mark): recovered after the interruption, not run again" in res.stdout
    assert "apply (rollback_apply): recovered after the interruption, not run again" in res.stdout
    assert query(conn, "SELECT op_id FROM _recovery.operations ORDER BY op_id") == ops
    assert state(conn) == expected(shop)
    done = steps(conn, run_id)
    assert done["apply"][1]["op_id"] == ops[0][0] and done["apply"][1]["rows"] == PLAN_ROWS
    assert list(done) == ROLLBACK_STEPS and runs(conn)[0][2] == "done"
    res = invoke(db_url, "runbook", "resume", str(run_id))
    assert res.exit_code == 1 and "is done already" in res.stderr


# -- bad runbooks and bad parameters: one-line errors, nothing runs -------------------

GOOD_HEAD = "name: t\nparameters:\n  tag: {type: string}\nsteps:\n"
BAD = {
    "yaml syntax": (
        "name: t\nsteps:\n  - id: a\n    kind: mark\n   name: x\n",
        5,
        "YAML syntax error",
    ),
    "unknown kind": (
        GOOD_HEAD + "  - id: a\n    kind: rollbak\n",
        6,
        "step a: unknown kind 'rollbak': use one of capture_on, capture_off, mark",
    ),
    "missing parameter": (
        GOOD_HEAD + "  - id: a\n    kind: changes\n    tag: ${params.tga}\n",
        7,
        "params.tga names no parameter: declare it under parameters",
    ),
    "forward reference": (
        GOOD_HEAD + "  - id: a\n    kind: changes\n    when: steps.b.rows > 0\n"
        "  - id: b\n    kind: changes\n",
        7,
        "refers to a later step (a forward reference, which makes a cycle)",
    ),
    "cycle": (
        GOOD_HEAD + '  - id: a\n    kind: changes\n    when: "steps.a.rows > 0"\n',
        7,
        "steps.a.rows refers to the step itself (a cycle)",
    ),
    "forward reference in a value": (
        GOOD_HEAD + "  - id: a\n    kind: mark\n    name: m${steps.b.rows}\n"
        "  - id: b\n    kind: changes\n",
        7,
        "a forward reference",
    ),
    "unknown top-level key": (
        "name: t\nstep:\n  - id: a\n    kind: changes\n",
        2,
        "unknown top-level key 'step'",
    ),
    "unknown step key": (
        GOOD_HEAD + "  - id: a\n    kind: changes\n    tags: [x]\n",
        7,
        "step a: unknown key 'tags' for kind changes: it takes tag, txid",
    ),
    "missing argument": (
        GOOD_HEAD + "  - id: a\n    kind: mark\n",
        5,
        "step a: kind mark needs argument 'name'",
    ),
    "tables not a list": (
        GOOD_HEAD + "  - id: a\n    kind: capture_on\n    tables: orders\n",
        7,
        "step a: tables must be a list, e.g. [orders, customers]",
    ),
    "duplicate id": (
        GOOD_HEAD + "  - id: a\n    kind: changes\n  - id: a\n    kind: changes\n",
        7,
        "duplicate step id 'a'",
    ),
    "bad default": (
        "name: t\nparameters:\n  n: {type: int, default: lots}\nsteps:\n"
        "  - id: a\n    kind: changes\n",
        3,
        "default of parameter n must be a whole number, not 'lots'",
    ),
    "bad condition": (
        GOOD_HEAD + '  - id: a\n    kind: changes\n    when: "params.tag =="\n',
        7,
        "condition 'params.tag ==' does not parse",
    ),
    "unknown field": (
        GOOD_HEAD + "  - id: p\n    kind: rollback_plan\n    tag: x\n"
        "  - id: a\n    kind: changes\n    when: steps.p.rowz > 1\n",
        10,
        "a rollback_plan step has no field rowz",
    ),
    "approval of a non-plan": (
        GOOD_HEAD + "  - id: p\n    kind: changes\n  - id: a\n    kind: approval\n    for: p\n",
        9,
        "for must name a rollback_plan or restore_plan step",
    ),
    "duplicate key": (
        "name: t\nname: u\nsteps:\n  - id: a\n    kind: changes\n",
        2,
        "duplicate key 'name'",
    ),
    "bound on text": (
        "name: t\nparameters:\n  s:\n    type: string\n    min: 1\nsteps:\n"
        "  - id: a\n    kind: changes\n",
        5,
        "parameter s: min needs type int or number",
    ),
    "unknown parameter type": (
        "name: t\nparameters:\n  s: {type: list}\nsteps:\n  - id: a\n    kind: changes\n",
        3,
        "parameter s has type 'list': use one of string, int",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_runbooks(db_url, conn, shop, tmp_path, case):  # type: ignore[no-untyped-def]
    text, line, needle = BAD[case]
    path = runbook_file(tmp_path, text)
    for command in (["validate", path], ["run", path, "--param", "tag=x"]):
        res = invoke(db_url, "runbook", *command)
        assert res.exit_code == 1, (case, res.stdout, res.stderr)
        errors = res.stderr.strip().splitlines()
        assert errors and all(e.startswith(f"error: {path}:") for e in errors), errors
        assert any(e.startswith(f"error: {path}:{line}: ") and needle in e for e in errors), (
            case,
            errors,
        )
    assert runs(conn) == []


def test_several_problems_are_all_reported(db_url, tmp_path):  # type: ignore[no-untyped-def]
    path = runbook_file(
        tmp_path,
        "name: t\nsteps:\n  - id: a\n    kind: nope\n  - id: b\n    kind: mark\n    nam: x\n",
    )
    res = invoke(db_url, "runbook", "validate", path, "--json")
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["valid"] is False and len(doc["errors"]) == 3
    assert [e.split(":")[1] for e in doc["errors"]] == ["4", "7", "5"]


@pytest.mark.parametrize(
    "params,needle",
    [
        ([], "runbook bad-deploy-rollback needs parameter tag (string: the deploy's recovery.tag"),
        (["tag=x", "colour=red"], "unknown parameter 'colour' for runbook bad-deploy-rollback"),
        (["tag=x", "max_rows=lots"], "parameter max_rows must be a whole number, not 'lots'"),
        (["tag=x", "max_rows=-1"], "parameter max_rows must be at least 0, not -1"),
        (
            ["tag=x", "on_conflict=maybe"],
            "parameter on_conflict must be one of fail, skip, overwrite",
        ),
        (["tag=x", "tables=orders,nosuch"], "table 'nosuch' not found"),
        (["tag=x", "tag=y"], "--param tag is given twice"),
        (["tag"], "--param 'tag': write it as NAME=VALUE"),
    ],
)
def test_bad_parameters(db_url, conn, shop, params, needle):  # type: ignore[no-untyped-def]
    bad_deploy(db_url)
    before = state(conn)
    args = [a for p in params for a in ("--param", p)]
    res = invoke(db_url, "runbook", "run", ROLLBACK, *args)
    assert res.exit_code == 1, (res.stdout, res.stderr)
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("error: ") and needle in line, line
    assert runs(conn) == [] and state(conn) == before


def test_shipped_runbooks_are_valid_and_listed(db_url):  # type: ignore[no-untyped-def]
    for book in (ROLLBACK, PRE, RESTORE):
        ok(invoke(db_url, "runbook", "validate", book))
    res = ok(invoke(db_url, "runbook", "list", "--dir", str(BOOKS)))
    for name in ("bad-deploy-rollback", "pre-deploy-snapshot", "restore-from-snapshot"):
        assert name in res.stdout
    assert "--param tag=<string>  required" in res.stdout
    assert "--param max_rows=<int>  default 10000" in res.stdout
    doc = json.loads(ok(invoke(db_url, "runbook", "list", "--dir", str(BOOKS), "--json")).stdout)
    assert [d["name"] for d in doc] == [
        "bad-deploy-rollback",
        "pre-deploy-snapshot",
        "restore-from-snapshot",
    ]
    assert doc[0]["parameters"]["tables"] == {
        "type": "table",
        "default": None,
        "required": False,
        "description": doc[0]["parameters"]["tables"]["description"],
    }


# -- checks, pauses, notifications ---------------------------------------------------

CHECKS = """name: checks
parameters:
  n: {type: int, default: 3}
steps:
  - id: before
    kind: mark
    name: "m-${run.id}"
  - id: count
    kind: sql_check
    query: "SELECT count(*) FROM customers WHERE id <= ${params.n}"
    expect: ${params.n}
  - id: rows
    kind: sql_check
    query: "SELECT id FROM customers WHERE email LIKE ${params.n} || '%'"
    expect: {rows: 0}
  - id: wrong
    kind: sql_check
    query: "SELECT count(*) FROM customers"
    expect: 49
  - id: after
    kind: mark
    name: "n-${run.id}"
"""


def test_failed_check_exits_2_and_resume_does_not_repeat(db_url, conn, shop, tmp_path):  # type: ignore[no-untyped-def]
    path = runbook_file(tmp_path, CHECKS)
    res = invoke(db_url, "runbook", "run", path)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert res.stderr.strip() == (
        "error: step wrong (sql_check) failed: verification failed: "
        "expected 49, got 50 from SELECT count(*) FROM customers"
    )
    [(run_id, _n, status, _d, _e)] = runs(conn)
    done = steps(conn, run_id)
    assert status == "failed" and list(done) == ["before", "count", "rows", "wrong"]
    assert done["count"][1]["query"] == "SELECT count(*) FROM customers WHERE id <= 3"
    assert done["wrong"][0] == "failed" and done["wrong"][1]["actual"] == 50
    # Resume starts at the failed step: the mark (done) is not made again.
    res = invoke(db_url, "runbook", "resume", str(run_id))
    assert res.exit_code == 2 and "expected 49, got 50" in res.stderr
    assert query(conn, "SELECT name FROM _recovery.marks") == [(f"m-{run_id}",)]


@pytest.mark.parametrize(
    "q,needle",
    [
        ("DELETE FROM customers RETURNING 1", "sql_check query must be a SELECT"),
        ("SELECT 1; DELETE FROM customers", "sql_check query must be one SELECT"),
        (
            "SELECT count(*) FROM (SELECT set_config('x.y', 'z', false)) s WHERE nextval('s') > 0",
            "read-only transaction",
        ),
    ],
)
def test_checks_cannot_write(db_url, conn, shop, sql_exec, tmp_path, q, needle):  # type: ignore[no-untyped-def]
    sql_exec("CREATE SEQUENCE s")
    path = runbook_file(
        tmp_path,
        f'name: w\nsteps:\n  - id: c\n    kind: sql_check\n    query: "{q}"\n    expect: 1\n',
    )
    res = invoke(db_url, "runbook", "run", path)
    assert res.exit_code == 1, (res.stdout, res.stderr)
    assert needle in res.stderr
    assert state(conn) == shop
    assert query(conn, "SELECT last_value, is_called FROM s") == [(1, False)]


def test_pause_then_resume(db_url, conn, shop, tmp_path):  # type: ignore[no-untyped-def]
    path = runbook_file(
        tmp_path,
        "name: p\nsteps:\n  - id: one\n    kind: mark\n"
        "    name: p1-${run.id}\n  - id: hold\n    kind: pause\n"
        "    message: check the dashboards\n  - id: two\n"
        "    kind: mark\n    name: p2-${run.id}\n",
    )
    res = ok(invoke(db_url, "runbook", "run", path))
    [(run_id, _n, status, _d, _e)] = runs(conn)
    assert status == "waiting"
    assert (
        f'paused: check the dashboards; continue with "recovery runbook resume {run_id}"'
        in res.stdout
    )
    assert query(conn, "SELECT name FROM _recovery.marks") == [(f"p1-{run_id}",)]
    # One session at a time executes a run.
    with psycopg.connect(db_url) as other:
        other.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))", [f"_recovery.runbook_runs.{run_id}"]
        )
        res = invoke(db_url, "runbook", "resume", str(run_id))
        assert res.exit_code == 1 and "being executed by another session" in res.stderr
    doc = json.loads(ok(invoke(db_url, "runbook", "resume", str(run_id), "--json")).stdout)
    assert (doc["run_id"], doc["status"], doc["exit_code"]) == (run_id, "done", 0)
    assert [(s["step_id"], s["status"]) for s in doc["steps"]] == [
        ("one", "done"),
        ("hold", "done"),
        ("two", "done"),
    ]
    assert runs(conn)[0][2] == "done"
    [listed] = json.loads(ok(invoke(db_url, "runbook", "list", "--runs", "--json")).stdout)
    assert (listed["run_id"], listed["status"], listed["at_step"]) == (run_id, "done", None)
    assert query(conn, "SELECT name FROM _recovery.marks ORDER BY 1") == [
        (f"p1-{run_id}",),
        (f"p2-{run_id}",),
    ]


def test_notify_webhook(db_url, conn, tmp_path):  # type: ignore[no-untyped-def]
    got: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    closed = HTTPServer(("127.0.0.1", 0), Hook)
    dead_port = closed.server_address[1]
    closed.server_close()
    try:
        path = runbook_file(
            tmp_path,
            "name: n\nparameters:\n  url: {type: string}\nsteps:\n"
            "  - id: tell\n    kind: notify\n"
            "    message: run ${run.id} says hi\n"
            "    webhook: ${params.url}\n",
        )
        ok(
            invoke(
                db_url,
                "runbook",
                "run",
                path,
                "--param",
                f"url=http://127.0.0.1:{server.server_address[1]}/hook",
            )
        )
        res = ok(
            invoke(
                db_url, "runbook", "run", path, "--param", f"url=http://127.0.0.1:{dead_port}/hook"
            )
        )
    finally:
        server.shutdown()
        server.server_close()
    [(first, *_), (second, *_)] = runs(conn)
    assert [g["message"] for g in got] == [f"run {first} says hi"]
    assert got[0]["runbook"] == "n" and got[0]["run_id"] == first
    assert steps(conn, first)["tell"][1]["sent"] is True
    failed = steps(conn, second)["tell"]
    assert failed[0] == "done" and failed[1]["sent"] is False
    assert failed[1]["warning"].startswith(f"webhook http://127.0.0.1:{dead_port}/hook failed")
    assert "(warning: webhook" in res.stdout and runs(conn)[1][2] == "done"


# -- the condition language ----------------------------------------------------------

VALUES = {
    "steps.plan.rows": 12000,
    "steps.plan.tables": 2,
    "params.tag": "deploy-42",
    "params.none": None,
    "steps.ok.flag": True,
}


@pytest.mark.parametrize(
    "text,value",
    [
        ("steps.plan.rows > 10000", True),
        ("steps.plan.rows <= 10000 or steps.plan.tables >= 2", True),
        ("not (steps.plan.rows > 10000) and true", False),
        ("params.tag == 'deploy-42' and params.tag != \"x\"", True),
        ("params.none == null", True),
        ("params.none > 3", False),
        ("steps.ok.flag", True),
        ("1.5 < 2", True),
        ("steps.plan.tables > -1", True),
    ],
)
def test_conditions(text, value):  # type: ignore[no-untyped-def]
    tree = parse_condition(text)
    assert evaluate(tree, VALUES.__getitem__) is value
    assert set(condition_refs(tree)) <= set(VALUES)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "steps.plan.rows >",
        "(1 < 2",
        "1 < 2 3",
        "a + 1",
        "steps.plan.rows > 1 and",
        "lambda: 1",
    ],
)
def test_conditions_that_do_not_parse(text):  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        parse_condition(text)


def test_condition_comparing_unlike_values():  # type: ignore[no-untyped-def]
    with pytest.raises(RecoveryError, match="cannot compare"):
        evaluate(parse_condition("params.tag > 3"), VALUES.__getitem__)
