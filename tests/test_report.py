"""Incident report of a runbook run: the document, its Markdown, and the HTML page drawn by a
real headless Chromium.

The run is seeded directly in runbook_runs / runbook_steps with the results a real dry run
and a real rollback (with a conflict kept) returned; the captured statements are real
writes whose times are then moved onto a fixed timeline, minutes apart, so that every
count per minute is exact.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from recovery import capture
from recovery.errors import RecoveryError
from recovery.restore import RestoreReport, RestoreTable
from recovery.runbook import report
from recovery.selector import Selector
from recovery.undo import rollback

DAY = "2024-05-01 "

SHOP = """
CREATE TABLE orders (id int PRIMARY KEY, total numeric(10,2) NOT NULL, note text);
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE audit (id serial PRIMARY KEY, msg text);
INSERT INTO orders SELECT g, g * 10, NULL FROM generate_series(1, 50) g;
INSERT INTO customers SELECT g, 'c' || g FROM generate_series(1, 5) g;
"""

# (time, tag, SQL): the history of the shop, one captured statement per line.
HISTORY = [
    ("2024-04-28 08:00:00", None, "UPDATE orders SET note = 'ancient' WHERE id = 50"),
    (DAY + "09:20:30", None, "UPDATE orders SET note = 'early' WHERE id = 1"),
    (
        DAY + "10:02:10",
        None,
        "INSERT INTO orders VALUES (101, 1, NULL), (102, 2, NULL), (103, 3, NULL)",
    ),
    (DAY + "10:05:45", None, "UPDATE orders SET note = 'x' WHERE id IN (2, 3)"),
    (DAY + "10:07:05", None, "INSERT INTO customers VALUES (6, 'c6')"),
    # The bad deploy, and other traffic in the same minute.
    (DAY + "10:10:15", "deploy-42", "UPDATE orders SET total = 0 WHERE id <= 40"),
    (DAY + "10:10:40", "deploy-42", "UPDATE customers SET name = upper(name) WHERE id <= 3"),
    (DAY + "10:10:50", None, "UPDATE orders SET note = 'other' WHERE id IN (45, 46)"),
    (DAY + "10:11:20", "deploy-42", "DELETE FROM orders WHERE id BETWEEN 41 AND 50"),
    (DAY + "10:12:00", None, "INSERT INTO audit (msg) SELECT 'm' FROM generate_series(1, 4)"),
    # A legitimate later write to a row the deploy broke: the rollback must keep it.
    (DAY + "10:13:05", None, "UPDATE orders SET total = 99 WHERE id = 5"),
]
UNDONE_AT = DAY + "10:21:10"


def _move_new_statements(sql_exec, at: str) -> None:  # type: ignore[no-untyped-def]
    """Put the statements captured just now at `at` (a fixed point in the past)."""
    sql_exec("UPDATE _recovery.stmt SET at = %s WHERE at > now() - interval '1 hour'", [at])


def _ts(conn: psycopg.Connection, text: str) -> Any:
    return conn.execute("SELECT %s::timestamptz", [text]).fetchone()[0]  # type: ignore[index]


def _add_run(
    conn: psycopg.Connection,
    name: str,
    started: str,
    finished: str | None,
    status: str,
    params: dict[str, Any],
    steps: list[tuple[Any, ...]],
    error: str | None = None,
    unreached: tuple[tuple[str, str], ...] = (),
) -> int:
    """A runbook_runs row and its steps: (step_id, kind, status, started, finished, result,
    error); times are clock times on DAY.  `unreached` (id, kind): defined, never started."""
    definition = {
        "name": name,
        "description": f"{name}: seeded by the test",
        "parameters": {k: {"required": True} for k in params},
        "steps": [{"id": s[0], "kind": s[1]} for s in steps]
        + [{"id": i, "kind": k} for i, k in unreached],
    }
    run_id = conn.execute(
        "INSERT INTO _recovery.runbook_runs (name, file, params, definition, status, started_by,"
        " started_at, finished_at, error) VALUES (%s, %s, %s, %s, %s, 'alice', %s, %s, %s)"
        " RETURNING run_id",
        [
            name,
            f"runbooks/{name}.yaml",
            Jsonb(params),
            Jsonb(definition),
            status,
            DAY + started,
            DAY + finished if finished else None,
            error,
        ],
    ).fetchone()[0]  # type: ignore[index]
    for no, (sid, kind, st, s_at, f_at, result, err) in enumerate(steps):
        conn.execute(
            "INSERT INTO _recovery.runbook_steps (run_id, step_no, step_id, kind, status,"
            " started_at, finished_at, result, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                run_id,
                no,
                sid,
                kind,
                st,
                DAY + s_at if s_at else None,
                DAY + f_at if f_at else None,
                Jsonb(result) if result is not None else None,
                err,
            ],
        )
    conn.commit()
    return int(run_id)


@pytest.fixture
def incident(conn, sql_exec) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The bad deploy, a real dry run and rollback (on-conflict skip), and the run's rows."""
    sql_exec(SHOP)
    capture.enable(conn, ["orders", "customers", "audit"])
    for at, tag, stmt in HISTORY:
        sql_exec((f"SET recovery.tag = '{tag}'; " if tag else "") + stmt)
        _move_new_statements(sql_exec, at)
    sel = Selector(tags=("deploy-42",))
    plan = rollback(conn, sel, on_conflict="skip", dry_run=True).to_dict()
    done = rollback(conn, sel, on_conflict="skip").to_dict()
    _move_new_statements(sql_exec, UNDONE_AT)
    req = conn.execute(
        "INSERT INTO _recovery.approval_requests (kind, plan, plan_hash, rows, tables, required,"
        " requested_by, requested_at, status, executed_at, executed_by) VALUES ('rollback', %s,"
        " 'h1', 52, 2, 1, 'alice', %s, 'executed', %s, 'alice') RETURNING req_id",
        [Jsonb(plan), DAY + "10:20:02.5", DAY + "10:21:00"],
    ).fetchone()[0]  # type: ignore[index]
    conn.execute(
        "INSERT INTO _recovery.approvals (req_id, approved_by, approved_at, plan_hash)"
        " VALUES (%s, 'bob', %s, 'h1'), (%s, 'carol', %s, 'h1')",
        [req, DAY + "10:20:38", req, DAY + "10:20:30"],
    )
    check = {
        "query": "SELECT count(*) FROM orders WHERE total = 0",
        "expect": 0,
        "actual": 0,
        "ok": True,
    }
    message = "Rolled back deploy-42 | 1 conflict kept <see report>"
    run_id = _add_run(
        conn,
        "bad-deploy",
        "10:19:58",
        "10:21:14",
        "done",
        {"tag": "deploy-42", "channel": "#incidents"},
        [
            ("plan", "rollback_plan", "done", "10:20:00", "10:20:02.5", plan, None),
            ("approve", "approval", "done", "10:20:02.5", "10:20:40", {"req_id": req}, None),
            ("apply", "rollback_apply", "done", "10:20:40", "10:21:12", done, None),
            ("check", "sql_check", "done", "10:21:12", "10:21:12.25", check, None),
            ("tell", "notify", "done", "10:21:13", "10:21:13.4", {"message": message}, None),
            ("page", "notify", "skipped", None, None, None, None),
        ],
    )
    return {
        "run_id": run_id,
        "req_id": req,
        "plan": plan,
        "done": done,
        "check": check,
        "message": message,
    }


def _pts(*rows: tuple[str, int, int, int]) -> list[dict[str, Any]]:
    return [
        {"minute": f"2024-05-01T{m}:00+00:00", "selected": s, "other": o, "recovery": r}
        for m, s, o, r in rows
    ]


ORDERS = _pts(
    ("10:02", 0, 3, 0),
    ("10:05", 0, 2, 0),
    ("10:10", 40, 2, 0),
    ("10:11", 10, 0, 0),
    ("10:13", 0, 1, 0),
    ("10:21", 0, 0, 49),
)
CUSTOMERS = _pts(("10:07", 0, 1, 0), ("10:10", 3, 0, 0), ("10:21", 0, 0, 3))


def test_build_exact_document(conn, incident) -> None:  # type: ignore[no-untyped-def]
    doc = report.build(conn, incident["run_id"])
    # Read-only, and no transaction left open on the caller's connection.
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert json.loads(json.dumps(doc)) == doc
    assert doc["report_version"] == 1
    assert doc["run"] == {
        "run_id": incident["run_id"],
        "name": "bad-deploy",
        "description": "bad-deploy: seeded by the test",
        "file": "runbooks/bad-deploy.yaml",
        "params": {"tag": "deploy-42", "channel": "#incidents"},
        "status": "done",
        "dry_run": False,
        "started_by": "alice",
        "started_at": "2024-05-01T10:19:58+00:00",
        "finished_at": "2024-05-01T10:21:14+00:00",
        "duration_seconds": 76.0,
        "error": None,
    }
    # The timeline, in step order, with exact durations and one-line summaries.
    assert [
        (s["no"], s["id"], s["kind"], s["status"], s["duration_seconds"], s["summary"], s["error"])
        for s in doc["steps"]
    ] == [
        (
            0,
            "plan",
            "rollback_plan",
            "done",
            2.5,
            "plan: 52 rows in 2 tables (re-insert 10, restore 42, delete 0); 1 conflict; "
            "--tag deploy-42",
            None,
        ),
        (
            1,
            "approve",
            "approval",
            "done",
            37.5,
            f"request #{incident['req_id']} (rollback, 52 rows, 2 tables): approved by carol, bob",
            None,
        ),
        (
            2,
            "apply",
            "rollback_apply",
            "done",
            32.0,
            "inserted 10, updated 42, deleted 0 in 2 tables; 1 conflict kept (on-conflict skip); "
            "--tag deploy-42",
            None,
        ),
        (3, "check", "sql_check", "done", 0.25, "ok: got 0, expected 0", None),
        (4, "tell", "notify", "done", 0.4, f"notified: {incident['message']}", None),
        (5, "page", "notify", "skipped", None, "", None),
    ]
    assert (doc["steps"][0]["started_at"], doc["steps"][0]["finished_at"]) == (
        "2024-05-01T10:20:00+00:00",
        "2024-05-01T10:20:02.500000+00:00",
    )
    assert doc["approvals"] == [
        {
            "step_id": "approve",
            "req_id": incident["req_id"],
            "kind": "rollback",
            "rows": 52,
            "tables": 2,
            "required": 1,
            "requested_by": "alice",
            "requested_at": "2024-05-01T10:20:02.500000+00:00",
            "status": "executed",
            "executed_by": "alice",
            "executed_at": "2024-05-01T10:21:00+00:00",
            "approved": [
                {"by": "carol", "at": "2024-05-01T10:20:30+00:00"},
                {"by": "bob", "at": "2024-05-01T10:20:38+00:00"},
            ],
        }
    ]
    # Blast radius from the plan; what the apply did; the conflict it kept (row 5's later
    # total of 99 survives), with the example the undo engine recorded.
    assert doc["blast_radius"] == [
        {
            "step_id": "plan",
            "table": "public.customers",
            "reinsert": 0,
            "restore": 3,
            "delete": 0,
            "conflicts": 0,
            "total": 3,
        },
        {
            "step_id": "plan",
            "table": "public.orders",
            "reinsert": 10,
            "restore": 39,
            "delete": 0,
            "conflicts": 1,
            "total": 49,
        },
    ]
    assert doc["applied"] == [
        {
            "step_id": "apply",
            "table": "public.customers",
            "inserted": 0,
            "updated": 3,
            "deleted": 0,
            "conflicts": 0,
        },
        {
            "step_id": "apply",
            "table": "public.orders",
            "inserted": 10,
            "updated": 39,
            "deleted": 0,
            "conflicts": 1,
        },
    ]
    assert doc["conflicts"] == [
        {
            "step_id": "apply",
            "table": "public.orders",
            "conflicts": 1,
            "on_conflict": "skip",
            "examples": [
                {
                    "action": "update",
                    "key": {"id": 5},
                    "columns": ["total"],
                    "values": {
                        "total": {"restore_to": "50.00", "left_by_change": "0.00", "now": "99.00"}
                    },
                }
            ],
            "notes": [],
        }
    ]
    assert doc["verification"] == [
        {"step_id": "check", "status": "done", **incident["check"], "error": None}
    ]
    assert doc["notifications"] == [
        {"step_id": "tell", "status": "done", "message": incident["message"]},
        {"step_id": "page", "status": "skipped", "message": None},
    ]
    # The chart: affected tables only (audit is captured but untouched by the plan), the
    # window from 30 min before deploy-42's first change to the run's finish (09:20 and the
    # 28th are outside it), deploy-42 apart from other writes and from the repair's own.
    assert doc["affected_tables"] == ["public.customers", "public.orders"]
    assert doc["selected_tags"] == ["deploy-42"]
    assert doc["window"] == {
        "start": "2024-05-01T09:40:15+00:00",
        "end": "2024-05-01T10:21:14+00:00",
        "rule": "from 30 min before the first captured change under the selected tag "
        "(deploy-42) to the run's finish",
    }
    assert doc["series"] == {"public.customers": CUSTOMERS, "public.orders": ORDERS}


def test_markdown(conn, incident) -> None:  # type: ignore[no-untyped-def]
    md = report.render_markdown(report.build(conn, incident["run_id"]))
    req = incident["req_id"]
    expected = f"""# Incident report: runbook bad-deploy (run {incident["run_id"]})

- **status**: done
- **runbook file**: runbooks/bad-deploy.yaml
- **description**: bad-deploy: seeded by the test
- **parameters**: tag=deploy-42, channel=#incidents
- **started by**: alice
- **started**: 2024-05-01 10:19:58 UTC
- **finished**: 2024-05-01 10:21:14 UTC
- **duration**: 1 min 16 s
- **selected tags**: deploy-42
- **affected tables**: public.customers, public.orders

## Timeline

| # | step | kind | status | started | finished | duration | summary | error |
|---|---|---|---|---|---|---|---|---|
| 0 | plan | rollback_plan | done | 2024-05-01 10:20:00 UTC | 2024-05-01 10:20:02.500 UTC | 2.5 s | plan: 52 rows in 2 tables (re-insert 10, restore 42, delete 0); 1 conflict; --tag deploy-42 |  |
| 1 | approve | approval | done | 2024-05-01 10:20:02.500 UTC | 2024-05-01 10:20:40 UTC | 37.5 s | request #{req} (rollback, 52 rows, 2 tables): approved by carol, bob |  |
| 2 | apply | rollback_apply | done | 2024-05-01 10:20:40 UTC | 2024-05-01 10:21:12 UTC | 32 s | inserted 10, updated 42, deleted 0 in 2 tables; 1 conflict kept (on-conflict skip); --tag deploy-42 |  |
| 3 | check | sql_check | done | 2024-05-01 10:21:12 UTC | 2024-05-01 10:21:12.250 UTC | 0.25 s | ok: got 0, expected 0 |  |
| 4 | tell | notify | done | 2024-05-01 10:21:13 UTC | 2024-05-01 10:21:13.400 UTC | 0.4 s | notified: Rolled back deploy-42 \\| 1 conflict kept \\<see report\\> |  |
| 5 | page | notify | skipped |  |  |  |  |  |

## Approvals

| step | request | kind | rows | tables | requested by | requested at | approved by | approved at | status | executed by | executed at |
|---|---|---|---|---|---|---|---|---|---|---|---|
| approve | #{req} | rollback | 52 | 2 | alice | 2024-05-01 10:20:02.500 UTC | carol, bob | 2024-05-01 10:20:30 UTC, 2024-05-01 10:20:38 UTC | executed | alice | 2024-05-01 10:21:00 UTC |

## Blast radius

| step | table | re-insert | restore | delete | total | conflicts |
|---|---|---|---|---|---|---|
| plan | public.customers | 0 | 3 | 0 | 3 | 0 |
| plan | public.orders | 10 | 39 | 0 | 49 | 1 |

## Changes applied

| step | table | inserted | updated | deleted | conflicts |
|---|---|---|---|---|---|
| apply | public.customers | 0 | 3 | 0 | 0 |
| apply | public.orders | 10 | 39 | 0 | 1 |

## Conflicts kept

| step | table | conflicts | on conflict | examples |
|---|---|---|---|---|
| apply | public.orders | 1 | skip | update row id=5 (total: restore to 50.00, left by change 0.00, now 99.00) |

## Verification

| step | result | query | expected | actual | error |
|---|---|---|---|---|---|
| check | ok | SELECT count(\\*) FROM orders WHERE total = 0 | 0 | 0 |  |

## Notifications

| step | status | message |
|---|---|---|
| tell | done | Rolled back deploy-42 \\| 1 conflict kept \\<see report\\> |
| page | skipped |  |

## Rows changed per minute

Window: 2024-05-01 09:40:15 UTC to 2024-05-01 10:21:14 UTC (from 30 min before the first captured change under the selected tag (deploy-42) to the run's finish).

| minute (UTC) | table | deploy-42 | other | recovery | total |
|---|---|---|---|---|---|
| 2024-05-01 10:07 | public.customers | 0 | 1 | 0 | 1 |
| 2024-05-01 10:10 | public.customers | 3 | 0 | 0 | 3 |
| 2024-05-01 10:21 | public.customers | 0 | 0 | 3 | 3 |
| 2024-05-01 10:02 | public.orders | 0 | 3 | 0 | 3 |
| 2024-05-01 10:05 | public.orders | 0 | 2 | 0 | 2 |
| 2024-05-01 10:10 | public.orders | 40 | 2 | 0 | 42 |
| 2024-05-01 10:11 | public.orders | 10 | 0 | 0 | 10 |
| 2024-05-01 10:13 | public.orders | 0 | 1 | 0 | 1 |
| 2024-05-01 10:21 | public.orders | 0 | 0 | 49 | 49 |

_Generated """  # noqa: E501 (Markdown table rows, exactly as written)
    assert md.startswith(expected), md
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{3})? UTC by recovery\._\n", md[len(expected) :]
    )


def test_unfinished_run_with_partial_results_falls_back(conn, incident) -> None:  # type: ignore[no-untyped-def]
    """A failed run with no plan: every captured table, the 24-hour rule, a tag with no
    captured change; missing result fields are rendered as missing, never a crash."""
    run_id = _add_run(
        conn,
        "check-only",
        "10:30:00",
        "10:31:00",
        "failed",
        {"tag": "deploy-43"},
        [
            (
                "snap",
                "snapshot",
                "done",
                "10:30:00",
                "10:30:00.5",
                {"name": "pre-fix", "rows": 12, "tables": "public.orders"},
                None,
            ),
            (
                "plan",
                "rollback_plan",
                "failed",
                "10:30:01",
                "10:30:01",
                None,
                "no captured change matches --tag deploy-43",
            ),
            (
                "check",
                "sql_check",
                "failed",
                "10:30:02",
                None,
                {"query": "SELECT 1 WHERE false", "ok": False},
                None,
            ),
            (
                "tell",
                "notify",
                "done",
                "10:30:03",
                "10:30:04",
                {"message": "<script>alert(1)</script> & more"},
                None,
            ),
        ],
        error="step check failed",
        unreached=(("apply", "rollback_apply"),),
    )
    conn.execute("BEGIN")
    doc = report.build(conn, run_id)
    # A transaction the caller had open is left open.
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    conn.rollback()
    assert doc["run"]["status"] == "failed" and doc["run"]["error"] == "step check failed"
    assert doc["run"]["duration_seconds"] == 60.0
    assert [
        (s["id"], s["status"], s["duration_seconds"], s["summary"], s["error"])
        for s in doc["steps"]
    ] == [
        ("snap", "done", 0.5, "name=pre-fix, rows=12, tables=public.orders", None),
        ("plan", "failed", 0.0, "", "no captured change matches --tag deploy-43"),
        ("check", "failed", None, "FAILED", None),
        ("tell", "done", 1.0, "notified: <script>alert(1)</script> & more", None),
        ("apply", "not run", None, "", None),
    ]
    assert doc["approvals"] == doc["blast_radius"] == doc["applied"] == doc["conflicts"] == []
    assert doc["verification"] == [
        {
            "step_id": "check",
            "status": "failed",
            "query": "SELECT 1 WHERE false",
            "expect": None,
            "actual": None,
            "ok": False,
            "error": None,
        }
    ]
    assert doc["selected_tags"] == ["deploy-43"]
    assert doc["window"] == {
        "start": "2024-05-01T09:10:30+00:00",
        "end": "2024-05-01T10:31:00+00:00",
        "rule": "from 10 min before the first captured change of the affected tables in the "
        "24 h before the run started, to the run's finish",
    }
    # Every captured table that changed in the window; deploy-42 is "other" here.
    assert doc["affected_tables"] == ["public.audit", "public.customers", "public.orders"]
    other = [{**p, "selected": 0, "other": p["selected"] + p["other"]} for p in ORDERS]
    assert doc["series"] == {
        "public.audit": _pts(("10:12", 0, 4, 0)),
        "public.customers": [
            {**p, "selected": 0, "other": p["selected"] + p["other"]} for p in CUSTOMERS
        ],
        "public.orders": _pts(("09:20", 0, 1, 0)) + other,
    }
    md = report.render_markdown(doc)
    for line in (
        "No approval was requested.",
        "No plan was made.",
        "Nothing was applied.",
        "No conflict.",
        "| tell | done | \\<script\\>alert(1)\\</script\\> & more |",
        "| check | FAILED | SELECT 1 WHERE false |  |  |  |",
        "| 4 | apply | rollback_apply | not run |  |  |  |  |  |",
    ):
        assert line in md, line
    page = report.render_html(doc)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert page.count('class="bar"') == 1 + 3 + 7


def test_running_run_waiting_for_approval(conn, incident) -> None:  # type: ignore[no-untyped-def]
    """A run still waiting (no finish: the window ends now), a restore plan, an approval that
    no one has given yet and one the database no longer holds, no tag at all."""
    plan = RestoreReport(
        None,
        "pre-42",
        "db",
        "dry-run",
        True,
        [
            RestoreTable(
                "public.orders",
                saved=50,
                restore=3,
                reinsert=1,
                new_rows=0,
                notes=["column note added back"],
            )
        ],
        None,
    ).to_dict()
    req = conn.execute(
        "INSERT INTO _recovery.approval_requests (kind, plan, plan_hash, rows, tables, required)"
        " VALUES ('restore', '{}', 'h2', 4, 1, 2) RETURNING req_id"
    ).fetchone()[0]  # type: ignore[index]
    run_id = conn.execute(
        "INSERT INTO _recovery.runbook_runs (name, definition, status, dry_run, started_at)"
        " VALUES ('restore-orders', '{}', 'waiting', true, now() - interval '5 seconds')"
        " RETURNING run_id"
    ).fetchone()[0]  # type: ignore[index]
    for no, (sid, kind, st, result) in enumerate(
        [
            ("plan", "restore_plan", "done", plan),
            ("approve", "approval", "waiting", {"req_id": req}),
            ("old", "approval", "done", {"req_id": 999999, "approved_by": ["dave"]}),
        ]
    ):
        conn.execute(
            "INSERT INTO _recovery.runbook_steps (run_id, step_no, step_id, kind, status,"
            " started_at, finished_at, result) VALUES (%s, %s, %s, %s, %s, now(),"
            " CASE WHEN %s = 'done' THEN now() END, %s)",
            [run_id, no, sid, kind, st, st, Jsonb(result)],
        )
    conn.commit()
    doc = report.build(conn, run_id)
    assert doc["run"]["finished_at"] is None and doc["run"]["duration_seconds"] is None
    assert doc["run"]["params"] == {} and doc["run"]["file"] is None
    assert [s["summary"] for s in doc["steps"]] == [
        "plan: 4 rows in 1 table (re-insert 1, restore 3, delete 0); snapshot pre-42",
        f"request #{req} (restore, 4 rows, 1 table): waiting for approval (0 of 2)",
        "request #999999: approved by dave",
    ]
    assert [(a["req_id"], a["status"], a["approved"]) for a in doc["approvals"]] == [
        (req, "pending", []),
        (999999, None, [{"by": "dave", "at": None}]),
    ]
    assert doc["blast_radius"] == [
        {
            "step_id": "plan",
            "table": "public.orders",
            "reinsert": 1,
            "restore": 3,
            "delete": 0,
            "conflicts": 0,
            "total": 4,
            "notes": ["column note added back"],
        }
    ]
    assert doc["applied"] == [] and doc["conflicts"] == [] and doc["selected_tags"] == []
    # Nothing of orders was captured in the 10 minutes before the run: an empty series.
    assert doc["series"] == {"public.orders": []}
    assert doc["window"]["rule"].startswith("from 10 min before the run started to its finish")
    assert doc["window"]["end"] >= doc["window"]["start"]
    md = report.render_markdown(doc)
    assert "- **status**: waiting (dry run)" in md and "- **finished**: not finished" in md
    assert "No captured change of the affected tables in the window." in md
    assert "| plan | public.orders | 1 | 3 | 0 | 4 | 0 | column note added back |" in md
    page = report.render_html(doc)
    assert "public.orders: no captured change in the window." in page
    assert 'class="bar"' not in page


def test_write_report_files_and_errors(conn, incident, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    run_id = incident["run_id"]
    paths = report.write_report(conn, run_id)
    out = tmp_path / "runbook-reports" / f"run-{run_id}"
    assert paths == {
        "md": out / "report.md",
        "json": out / "report.json",
        "html": out / "report.html",
    }
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]
    doc = json.loads(paths["json"].read_text())
    assert doc["series"] == {"public.customers": CUSTOMERS, "public.orders": ORDERS}
    # The files agree: Markdown and HTML are renderings of report.json.
    assert paths["md"].read_text() == report.render_markdown(doc)
    assert paths["html"].read_text() == report.render_html(doc)
    # Self-contained: no script, nothing to fetch.
    page = paths["html"].read_text()
    assert "<script" not in page and " src=" not in page and "href=" not in page
    assert re.findall(r"https?://[^\s\"']+", page) == ["http://www.w3.org/2000/svg"] * 2
    # An explicit directory, created as needed; writing again replaces the files.
    again = report.write_report(conn, run_id, tmp_path / "a" / "b")
    assert again["md"].read_text().startswith("# Incident report: runbook bad-deploy")
    with pytest.raises(RecoveryError, match=r"no runbook run 999999"):
        report.build(conn, 999999)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


# --- The page in a real browser -------------------------------------------------------------


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail(
            "chromium is not installed, and this test draws the report in it: "
            "apt-get install -y chromium (.ci/run installs it before the tests)"
        )
    return exe


def _browser(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            exe,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def _png_rgb(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit RGB or RGBA PNG (no Pillow needed)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour, _c, _f, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3))
        prev = line
    return width, height, rows


def _count_colour(rows: list[bytes], rgb: tuple[int, int, int], tol: int = 16) -> int:
    n = 0
    for row in rows:
        for i in range(0, len(row), 3):
            if (
                abs(row[i] - rgb[0]) <= tol
                and abs(row[i + 1] - rgb[1]) <= tol
                and abs(row[i + 2] - rgb[2]) <= tol
            ):
                n += 1
    return n


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def test_html_chart_drawn_by_headless_chromium(conn, incident, tmp_path) -> None:  # type: ignore[no-untyped-def]
    exe = _chromium()
    paths = report.write_report(conn, incident["run_id"], tmp_path / "report")
    url = paths["html"].resolve().as_uri()
    dom = _browser(exe, tmp_path / "profile", "--dump-dom", url).stdout
    # The browser parsed the page into one chart per affected table, one bar per minute
    # with data, each with its tooltip.
    charts = re.findall(r'<svg class="chart"[^>]*data-table="([^"]+)"', dom)
    assert charts == ["public.customers", "public.orders"]
    bars = re.findall(
        r'<rect class="bar" data-minute="([^"]+)" data-rows="(\d+)"'
        r"[^>]*><title>([^<]*)</title></rect>",
        dom,
    )
    expected = [
        (p["minute"], str(p["selected"] + p["other"] + p["recovery"])) for p in CUSTOMERS + ORDERS
    ]
    assert [(m, r) for m, r, _t in bars] == expected
    assert bars[5][2] == (
        "2024-05-01 10:10 UTC, public.orders: 42 rows (40 under deploy-42, 2 other)"
    )
    assert dom.count('class="seg seg-selected"') == 3 and dom.count("seg-recovery") == 2
    assert "09:40" in dom and "10:20" in dom  # time labels on the axis
    # And it drew them: the screenshot shows the selected tag's red, the repair's blue and
    # the grey of other writes, in sizeable areas.
    shot = tmp_path / "shot.png"
    _browser(exe, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,900", url)
    width, height, rows = _png_rgb(shot)
    assert (width, height) == (1200, 900)
    assert len({row for row in rows}) > 100  # not a blank page
    red = _count_colour(rows, _rgb(report.SELECTED_COLOUR))
    blue = _count_colour(rows, _rgb(report.RECOVERY_COLOUR))
    grey = _count_colour(rows, _rgb(report.OTHER_COLOUR), tol=6)
    print(f"pixels: red {red}, blue {blue}, grey {grey}")
    assert red > 3000 and blue > 2000 and grey > 500, (red, blue, grey)
