"""Two-person approval, enforced by the database: large undos and restores wait for an
approval by another database user, for the exact plan, used once.

The people are real login roles (unique per test, the cluster trusts local logins)
with the least privileges the README grants: an operator role and an approver role.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from recovery import ApprovalRequired, RecoveryError, Selector, enable_capture, rollback
from recovery import approval as ap
from recovery import snapshot as snap
from recovery.approval import ApprovalPending
from recovery.cli import main
from recovery.db import connect
from recovery.restore import restore

README = Path(__file__).resolve().parent.parent / "README.md"
BAD = Selector(tags=("bad",))
ORIG = [(g, f"v{g}", g * 10) for g in range(1, 11)]
_n = itertools.count()


def url_as(db_url: str, user: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    info["user"] = user
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**info)


@dataclass
class People:
    operator: str
    approver: str
    alice: str
    bob: str
    carol: str
    db_url: str
    opened: list[psycopg.Connection] = field(default_factory=list)

    def url(self, who: str) -> str:
        return url_as(self.db_url, getattr(self, who))

    def connect(self, who: str) -> psycopg.Connection:
        c = connect(self.url(who))
        self.opened.append(c)
        return c

    def cli(self, who: str, *args: str) -> Result:
        return CliRunner().invoke(main, [*args, "--db", self.url(who)], catch_exceptions=False)

    def grant(self, sql_exec) -> None:  # type: ignore[no-untyped-def]
        """The README's grants (its role names replaced by this test's), run after the
        tables, journal chunks and snapshots exist; DML on the application's tables."""
        text = README.read_text().split("## Two-person approval", 1)[1]
        block = re.search(r"```sql\n(-- People who run undos.*?)```", text, re.S)
        assert block, "the README's role setup is missing"
        stmts = block.group(1)
        for old, new in (
            ("recovery_operator", self.operator),
            ("recovery_approver", self.approver),
            ("alice", self.alice),
            ("bob", self.bob),
        ):
            stmts = re.sub(rf"\b{old}\b", new, stmts)
        # The login roles exist already (cluster-wide); grant them the group roles instead.
        stmts = re.sub(r"CREATE ROLE (\w+) LOGIN IN ROLE ([\w, ]+);", r"GRANT \2 TO \1;", stmts)
        sql_exec(stmts)
        sql_exec(
            sql.SQL(
                "GRANT {} TO {}; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN "
                "SCHEMA public TO {}"
            )
            .format(
                sql.Identifier(self.operator),
                sql.Identifier(self.carol),
                sql.Identifier(self.operator),
            )
            .as_string(None)
        )
        sql_exec(
            sql.SQL("GRANT {} TO {}")
            .format(sql.Identifier(self.approver), sql.Identifier(self.carol))
            .as_string(None)
        )


@pytest.fixture
def people(server_url: str, db_url: str) -> Iterator[People]:
    n = f"{os.getpid()}_{next(_n)}"
    p = People(
        f"rq_operator_{n}",
        f"rq_approver_{n}",
        f"rq_alice_{n}",
        f"rq_bob_{n}",
        f"rq_carol_{n}",
        db_url,
    )
    groups, logins = (p.operator, p.approver), (p.alice, p.bob, p.carol)
    with psycopg.connect(server_url, autocommit=True) as a:
        # The group roles are created by the README's statements (grant()).
        for name in logins:
            a.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    try:
        yield p
    finally:
        for c in p.opened:
            c.close()
        with psycopg.connect(server_url, autocommit=True) as a:
            everyone = [
                r[0]
                for r in a.execute(
                    "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [[*logins, *groups]]
                )
            ]
        with psycopg.connect(db_url, autocommit=True) as a:
            a.execute(
                sql.SQL("DROP OWNED BY {}").format(
                    sql.SQL(", ").join(map(sql.Identifier, everyone))
                )
            )
        with psycopg.connect(server_url, autocommit=True) as a:
            for name in everyone:
                a.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def table_rows(conn: psycopg.Connection, table: str = "t") -> list[tuple]:  # type: ignore[type-arg]
    conn.rollback()
    out = conn.execute(
        sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(table))
    ).fetchall()
    conn.rollback()
    return out


def requests(conn: psycopg.Connection) -> list[tuple]:  # type: ignore[type-arg]
    conn.rollback()
    out = conn.execute(
        "SELECT req_id, kind, status, requested_by, rows, tables, required,"
        " executed_by, executed_at IS NOT NULL FROM _recovery.approval_requests"
        " ORDER BY req_id"
    ).fetchall()
    conn.rollback()
    return out


def approvals(conn: psycopg.Connection, req: int) -> list[str]:
    conn.rollback()
    out = [
        r[0]
        for r in conn.execute(
            "SELECT approved_by FROM _recovery.approvals WHERE req_id = %s ORDER BY 1", [req]
        )
    ]
    conn.rollback()
    return out


def set_meta(sql_exec, **values: int) -> None:  # type: ignore[no-untyped-def]
    for key, value in values.items():
        sql_exec("UPDATE _recovery.meta SET value = %s WHERE key = %s", [str(value), key])


@pytest.fixture
def damaged(conn, sql_exec):  # type: ignore[no-untyped-def]
    """t (id, v, n) with rows 1..10, captured; a bad deploy changed rows 1..6."""
    sql_exec("CREATE TABLE t (id int PRIMARY KEY, v text, n int)")
    sql_exec("INSERT INTO t SELECT g, 'v' || g, g * 10 FROM generate_series(1, 10) g")
    enable_capture(conn, ["t"])
    sql_exec(
        "SET recovery.tag = 'bad'; UPDATE t SET v = 'broken' WHERE id <= 4;"
        " DELETE FROM t WHERE id IN (5, 6)"
    )
    set_meta(sql_exec, approval_rows=5)
    after = table_rows(conn)
    assert len(after) == 8 and after[0] == (1, "broken", 10)
    return after


# -- the whole flow ------------------------------------------------------------------


def test_large_undo_waits_for_another_users_approval(conn, sql_exec, people, damaged):
    people.grant(sql_exec)
    alice, bob = people.connect("alice"), people.connect("bob")
    with pytest.raises(ApprovalPending) as exc:
        rollback(alice, BAD)
    req = exc.value.req_id
    assert exc.value.exit_code == 3
    assert str(exc.value) == (
        "this undo changes 6 rows in 1 tables, more than the approval threshold (5 rows or 5 "
        "tables): nothing was changed; another database user must run `recovery approve "
        f"{req}`, then run this command again"
    )
    assert table_rows(conn) == damaged
    assert requests(conn) == [(req, "rollback", "pending", people.alice, 6, 1, 1, None, False)]
    stored = ap.get(conn, req)
    assert stored.plan == {
        "kind": "rollback",
        "selector": {"tags": ["bad"]},
        "on_conflict": "fail",
        "tables": [
            {
                "table": "public.t",
                "reinsert": 2,
                "restore": 4,
                "delete": 0,
                "partial": 0,
                "conflicts": 0,
            }
        ],
    }
    assert stored.plan_hash == ap.plan_hash(stored.plan)
    op = conn.execute(
        "SELECT status, error, requested_by, summary->>'approval'"
        " FROM _recovery.operations ORDER BY op_id DESC LIMIT 1"
    ).fetchone()
    conn.rollback()
    assert op == ("refused", "approval pending", people.alice, str(req))

    # The same command again: the same request, still pending, still nothing changed.
    with pytest.raises(ApprovalPending) as again:
        rollback(alice, BAD)
    assert again.value.req_id == req
    assert table_rows(conn) == damaged

    # The requester's own approval does not count.
    with pytest.raises(
        ApprovalRequired, match="an approval by the user who requested the operation does not count"
    ):
        ap.approve(alice, req)
    assert approvals(conn, req) == []
    assert requests(conn)[0][2] == "pending"

    # Another user approves (twice: the same as once).
    assert ap.approve(bob, req).status == "approved"
    assert ap.approve(bob, req).approved_by == [people.bob]
    assert approvals(conn, req) == [people.bob]

    # The same command again runs under that approval, and consumes it.
    report = rollback(alice, BAD)
    assert report.status == "done" and report.approval == req
    assert table_rows(conn) == ORIG
    assert requests(conn) == [
        (req, "rollback", "executed", people.alice, 6, 1, 1, people.alice, True)
    ]
    # An approval is good for one run.
    with pytest.raises(ApprovalRequired, match="used already"):
        ap.authorize(alice, req, stored.plan_hash)
    alice.rollback()
    with pytest.raises(RecoveryError, match=f"approval request {req} is executed already"):
        ap.approve(people.connect("carol"), req)


def test_a_changed_plan_needs_a_new_approval(conn, sql_exec, people, damaged):
    people.grant(sql_exec)
    alice, bob = people.connect("alice"), people.connect("bob")
    with pytest.raises(ApprovalPending) as first:
        rollback(alice, BAD)
    old = first.value.req_id
    ap.approve(bob, old)
    # One more damaged row after the approval: not the plan that was approved.
    sql_exec("SET recovery.tag = 'bad'; UPDATE t SET n = -1 WHERE id = 7")
    damaged_now = table_rows(conn)
    with pytest.raises(ApprovalPending) as second:
        rollback(alice, BAD)
    new = second.value.req_id
    assert new != old
    assert "7 rows in 1 tables" in str(second.value)
    assert table_rows(conn) == damaged_now
    # Naming the old approval says why it does not apply.
    with pytest.raises(
        ApprovalPending,
        match=r"^the plan changed since it was approved: it needs "
        r"a new approval .*approve " + str(new),
    ) as named:
        rollback(alice, BAD, approval=old)
    assert named.value.req_id == new
    # Another selector for the same rows is another plan, too.
    with pytest.raises(ApprovalPending) as other:
        rollback(alice, Selector(tags=("bad",), tables=("t",)))
    assert other.value.req_id not in (old, new)
    assert table_rows(conn) == damaged_now
    assert [r[2] for r in requests(conn)] == ["approved", "pending", "pending"]
    # Approved, the new plan runs; the old approval stays unused.
    ap.approve(bob, new)
    assert rollback(alice, BAD).approval == new
    assert table_rows(conn) == ORIG
    assert [r[2] for r in requests(conn)] == ["approved", "executed", "pending"]


def test_approvals_count_per_database_user(conn, sql_exec, people, damaged):
    people.grant(sql_exec)
    set_meta(sql_exec, approvals_required=2)
    alice, bob, carol = (people.connect(w) for w in ("alice", "bob", "carol"))
    with pytest.raises(ApprovalPending, match="2 more database users must each run") as exc:
        rollback(alice, BAD)
    req = exc.value.req_id
    assert ap.approve(bob, req).status == "pending"
    with pytest.raises(ApprovalPending, match="another database user must run"):
        rollback(alice, BAD)
    assert table_rows(conn) == damaged
    # SET ROLE does not make bob someone else: approvals count by session_user.
    bob.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(people.approver)))
    assert ap.approve(bob, req).approved_by == [people.bob]
    bob.execute("RESET ROLE")
    bob.commit()
    # An approver cannot run the request on the strength of their own approval.
    assert ap.approve(carol, req).status == "approved"
    with pytest.raises(ApprovalPending) as by_carol:
        rollback(carol, BAD, approval=req)
    assert "does not count" in str(by_carol.value)
    assert by_carol.value.req_id != req
    assert table_rows(conn) == damaged
    # Neither can anybody forge an approval by writing the tables.
    for statement in (
        f"INSERT INTO _recovery.approvals (req_id, approved_by, plan_hash) SELECT {req},"
        " 'x', plan_hash FROM _recovery.approval_requests",
        "UPDATE _recovery.approval_requests SET status = 'approved'",
        "DELETE FROM _recovery.approvals",
        "UPDATE _recovery.meta SET value = '1000000' WHERE key = 'approval_rows'",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            alice.execute(statement)  # type: ignore[arg-type]
        alice.rollback()
    # The requester, with two approvals by others, runs it.
    report = rollback(alice, BAD)
    assert report.approval == req and table_rows(conn) == ORIG
    assert requests(conn)[0][2:] == ("executed", people.alice, 6, 1, 2, people.alice, True)


def test_small_plans_and_overrides(conn, sql_exec, people, damaged):
    people.grant(sql_exec)
    alice = people.connect("alice")
    set_meta(sql_exec, approval_rows=6)  # 6 rows is not more than 6: no approval
    with pytest.raises(ApprovalPending):  # a caller's own threshold wins
        rollback(alice, BAD, max_rows_without_approval=3)
    # A caller's threshold only lowers the meta table's: 100 cannot lift the 6 (a runbook
    # parameter must not switch the rule off).
    with pytest.raises(ApprovalPending, match=r"\(6 rows or 0 tables\)"):
        rollback(alice, BAD, max_rows_without_approval=100, max_tables_without_approval=0)
    set_meta(sql_exec, approval_rows=3)
    with pytest.raises(ApprovalPending, match=r"\(3 rows or 5 tables\)"):
        rollback(alice, BAD, max_rows_without_approval=1_000_000)
    set_meta(sql_exec, approval_rows=6)
    assert table_rows(conn) == damaged
    report = rollback(alice, BAD, dry_run=True, max_rows_without_approval=0)  # dry runs: never
    assert report.status == "dry-run"
    report = rollback(alice, BAD)
    assert report.status == "done" and report.approval is None
    assert table_rows(conn) == ORIG
    # require_approval=False (a scratch database, the demo) skips the check.
    sql_exec("SET recovery.tag = 'bad2'; DELETE FROM t")
    assert (
        rollback(
            conn, Selector(tags=("bad2",)), max_rows_without_approval=0, require_approval=False
        ).status
        == "done"
    )
    assert table_rows(conn) == ORIG
    # Both refusals above were the same plan by the same user: one request.
    assert [r[2] for r in requests(conn)] == ["pending"]


def test_batched_undo_is_gated_before_its_first_batch(conn, sql_exec, people, damaged):
    people.grant(sql_exec)
    alice, bob = people.connect("alice"), people.connect("bob")
    with pytest.raises(ApprovalPending) as exc:
        rollback(alice, BAD, batch_size=2)
    req = exc.value.req_id
    assert table_rows(conn) == damaged
    assert conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = '_recovery' AND tablename LIKE 'undo%'"
    ).fetchone() == (0,)
    conn.rollback()
    ap.approve(bob, req)
    report = rollback(alice, BAD, batch_size=2)
    assert report.status == "done" and report.batches == 3 and report.approval == req
    assert table_rows(conn) == ORIG
    assert requests(conn)[0][2] == "executed"


def test_restore_is_gated_the_same_way(conn, sql_exec, people, tmp_path):
    sql_exec("CREATE TABLE t (id int PRIMARY KEY, v text, n int)")
    sql_exec("INSERT INTO t SELECT g, 'v' || g, g * 10 FROM generate_series(1, 10) g")
    sql_exec("CREATE TABLE s (id int PRIMARY KEY, v text)")
    sql_exec("INSERT INTO s VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    enable_capture(conn, ["s"])
    info = snap.create(conn, "pre", snap.table_specs(conn, ["t"], []))
    small = snap.create(conn, "small", snap.table_specs(conn, ["s"], []), store=str(tmp_path))
    set_meta(sql_exec, approval_rows=5)
    people.grant(sql_exec)
    alice, bob = people.connect("alice"), people.connect("bob")
    sql_exec("UPDATE t SET v = 'x' WHERE id <= 5; DELETE FROM t WHERE id > 7")
    sql_exec("UPDATE s SET v = 'z'")
    damaged = table_rows(conn)
    with pytest.raises(ApprovalPending, match="^this restore changes 8 rows in 1 tables") as exc:
        restore(alice, snap.find(alice, "pre"))
    req = exc.value.req_id
    assert table_rows(conn) == damaged
    assert conn.execute(
        "SELECT kind, status, error FROM _recovery.operations ORDER BY op_id DESC LIMIT 1"
    ).fetchone() == ("restore", "refused", "approval pending")
    conn.rollback()
    stored = ap.get(conn, req)
    assert stored.kind == "restore" and stored.plan["snapshot"] == "pre"
    assert stored.plan["tables"] == [
        {"table": "public.t", "reinsert": 3, "restore": 5, "delete": 0}
    ]
    # A restore's approval is no undo's.
    with pytest.raises(RecoveryError, match=f"approval request {req} is for a restore"):
        rollback(alice, Selector(tables=("s",)), approval=req, max_rows_without_approval=0)
    assert table_rows(conn, "s") == [(1, "z"), (2, "z"), (3, "z")]
    ap.approve(bob, req)
    done = restore(alice, snap.find(alice, "pre"))
    assert done.status == "done" and done.approval == req
    assert table_rows(conn) == ORIG
    assert requests(conn)[0][2:4] == ("executed", people.alice)
    # A snapshot with fewer rows than the threshold restores without approval.
    assert restore(alice, small).status == "done"
    assert table_rows(conn, "s") == [(1, "a"), (2, "b"), (3, "c")]
    assert info.rows == 10 and len(requests(conn)) == 1


# -- the CLI ---------------------------------------------------------------------------


def test_cli_exit_codes_and_json(conn, sql_exec, people, damaged):
    people.grant(sql_exec)
    out = people.cli("alice", "rollback", "--tag", "bad", "--yes")
    assert out.exit_code == 3
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: this undo changes 6 rows in 1 tables")
    req = int(re.search(r"recovery approve (\d+)", lines[0]).group(1))  # type: ignore[union-attr]
    assert table_rows(conn) == damaged
    out = people.cli("alice", "rollback", "--tag", "bad", "--yes", "--json")
    assert out.exit_code == 3
    assert json.loads(out.stdout)["approval"] == req
    # Listing, as an approver.
    out = people.cli("bob", "approve", "--list", "--json")
    assert out.exit_code == 0
    doc = json.loads(out.stdout)
    assert [
        (d["req_id"], d["kind"], d["status"], d["requested_by"], d["rows"], d["tables"])
        for d in doc
    ] == [(req, "rollback", "pending", people.alice, 6, 1)]
    assert doc[0]["plan"]["selector"] == {"tags": ["bad"]} and doc[0]["approvals"] == []
    out = people.cli("bob", "approve", "--list")
    assert out.exit_code == 0 and people.alice in out.stdout and "0/1" in out.stdout
    # Bad input: exit 1.
    assert people.cli("bob", "approve", "999", "--yes").exit_code == 1
    assert "no approval request 999" in people.cli("bob", "approve", "999", "--yes").stderr
    assert people.cli("bob", "approve").exit_code == 1
    no_tty = people.cli("bob", "approve", str(req))
    assert no_tty.exit_code == 1 and "without --yes" in no_tty.stderr
    assert "requested by " + people.alice in no_tty.stdout
    # The requester's own approval: still needs another user's, exit 3.
    own = people.cli("alice", "approve", str(req), "--yes")
    assert own.exit_code == 3 and "does not count" in own.stderr
    # Another user's approval.
    ok = people.cli("bob", "approve", str(req), "--yes", "--json")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["status"] == "approved"
    assert json.loads(ok.stdout)["approvals"][0]["approved_by"] == people.bob
    done = people.cli(
        "alice", "rollback", "--tag", "bad", "--yes", "--json", "--approval", str(req)
    )
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["approval"] == req
    assert table_rows(conn) == ORIG
    assert people.cli("bob", "approve", str(req), "--yes").exit_code == 1  # executed already
    assert people.cli("bob", "approve", "--list", "--json").stdout.strip() == "[]"
    # closed requests stay viewable
    closed = json.loads(people.cli("bob", "approve", "--list", "--all", "--json").stdout)
    assert [(d["req_id"], d["status"], d["executed_by"]) for d in closed] == [
        (req, "executed", people.alice)
    ]
    assert people.cli("bob", "approve", str(req), "--all").exit_code == 1  # --all needs --list


def test_cli_refuse_and_restore(conn, sql_exec, people, damaged):
    people.grant(sql_exec)
    out = people.cli("alice", "rollback", "--tag", "bad", "--yes")
    req = int(re.search(r"recovery approve (\d+)", out.stderr).group(1))  # type: ignore[union-attr]
    refused = people.cli("bob", "approve", str(req), "--refuse", "--yes")
    assert refused.exit_code == 0 and "refused" in refused.stdout
    assert requests(conn)[0][2:3] == ("refused",)
    assert requests(conn)[0][7:] == (people.bob, True)
    again = people.cli("alice", "rollback", "--tag", "bad", "--yes", "--approval", str(req))
    assert again.exit_code == 3 and f"approval request {req} was refused" in again.stderr
    assert people.cli("bob", "approve", str(req), "--yes").exit_code == 1
    assert table_rows(conn) == damaged
    # restore --approval: the same contract.
    sql_exec("CREATE TABLE u (id int PRIMARY KEY, v text)")
    sql_exec("INSERT INTO u SELECT g, 'u' || g FROM generate_series(1, 20) g")
    snap.create(conn, "pre-u", snap.table_specs(conn, ["u"], []))
    sql_exec(
        sql.SQL(
            "GRANT SELECT ON ALL TABLES IN SCHEMA _recovery TO {0};"
            " GRANT SELECT, INSERT, UPDATE, DELETE ON u TO {0}"
        )
        .format(sql.Identifier(people.operator))
        .as_string(None)
    )
    sql_exec("DELETE FROM u WHERE id > 10")
    out = people.cli("alice", "restore", "pre-u", "--yes")
    assert out.exit_code == 3 and "this restore changes 10 rows" in out.stderr
    rreq = int(re.search(r"recovery approve (\d+)", out.stderr).group(1))  # type: ignore[union-attr]
    assert people.cli("alice", "restore", "pre-u", "--yes", "--approval", str(req)).exit_code == 1
    assert people.cli("carol", "approve", str(rreq), "--yes").exit_code == 0
    out = people.cli("alice", "restore", "pre-u", "--yes", "--approval", str(rreq), "--json")
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["approval"] == rreq
    assert len(table_rows(conn, "u")) == 20


# -- the SQL functions themselves --------------------------------------------------------


def test_sql_functions_refuse_what_they_must(conn, sql_exec, people, damaged):
    people.grant(sql_exec)
    alice, bob = people.connect("alice"), people.connect("bob")
    with pytest.raises(ApprovalPending) as exc:
        rollback(alice, BAD)
    req = exc.value.req_id
    h = ap.get(conn, req).plan_hash
    with pytest.raises(psycopg.Error, match="the plan changed") as wrong:
        bob.execute("SELECT _recovery.approve(%s::bigint, 'abc')", [req])
    assert wrong.value.sqlstate == "RC004"
    bob.rollback()
    with pytest.raises(psycopg.Error, match="not approved yet") as early:
        alice.execute("SELECT _recovery.authorize(%s::bigint, %s)", [req, h])
    assert early.value.sqlstate == "RC002"
    alice.rollback()
    with pytest.raises(psycopg.Error, match="no approval request 12345") as none:
        bob.execute("SELECT _recovery.approve(12345, 'x')")
    assert none.value.sqlstate == "RC003"
    bob.rollback()
    bob.execute("SELECT _recovery.approve(%s::bigint, %s)", [req, h])
    bob.commit()
    with pytest.raises(psycopg.Error, match="the plan changed since it was approved"):
        alice.execute("SELECT _recovery.authorize(%s::bigint, 'other')", [req])
    alice.rollback()
    # An approver may not request or consume through the functions it was not granted.
    sql_exec(
        sql.SQL("REVOKE {} FROM {}")
        .format(sql.Identifier(people.operator), sql.Identifier(people.bob))
        .as_string(None)
    )
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        bob.execute("SELECT _recovery.authorize(%s::bigint, %s)", [req, h])
    bob.rollback()
    # A plan shown to the approver must be the plan the hash is for (only the schema's
    # owner can write the table; the approver's client checks it anyway).
    sql_exec('UPDATE _recovery.approval_requests SET plan = plan || \'{"on_conflict": "x"}\'')
    with pytest.raises(RecoveryError, match="does not match its hash"):
        ap.approve(people.connect("carol"), req)
    sql_exec('UPDATE _recovery.approval_requests SET plan = plan || \'{"on_conflict": "fail"}\'')
    # A failed apply leaves the approval unconsumed: authorize, then roll back.
    alice.execute("SELECT _recovery.authorize(%s::bigint, %s)", [req, h])
    alice.rollback()
    assert requests(conn)[0][2] == "approved"
    # Re-running init keeps the functions, the grants and the records.
    from recovery.schema import init

    init(conn)
    assert rollback(alice, BAD).approval == req
    assert table_rows(conn) == ORIG
