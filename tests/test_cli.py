"""The CLI contract of PRODUCT.md: exit codes, one-line errors, --yes, --json, the views.

Most tests go through click's CliRunner (the `cli` fixture); a few run the real
`python -m recovery` and the `recovery` console script in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import psycopg
import pytest
from click.testing import CliRunner, Result
from psycopg import sql

from recovery.cli import main
from recovery.schema import SCHEMA_VERSION
from tests.conftest import rows

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
SCRIPT = Path(sys.executable).with_name("recovery")
PASSWORD = "Sup3rS3cretPw"
USER_TABLES = ("items", "orders", "nokey", "fresh")
ORIGINAL_ITEMS = [(i, f"item{i}", i * 10) for i in range(1, 6)]
STMT_Q = (
    "SELECT stmt_id, gen, table_id, op, txid, tag, db_user, nrows FROM _recovery.stmt ORDER BY 1"
)


# -- helpers -------------------------------------------------------------------------


def url_as(db_url: str, user: str) -> str:
    """The test database's URL for another role (the test cluster trusts local logins)."""
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    info["user"] = user
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**info)


def write(
    db_url: str, statements: Sequence[str], tag: str | None = None, app: str = "shop-app"
) -> int:
    """Run statements in one committed transaction, as an application; return its txid."""
    with psycopg.connect(db_url, application_name=app) as c:
        if tag is not None:
            c.execute("SELECT set_config('recovery.tag', %s, true)", [tag])
        for s in statements:
            c.execute(s)  # type: ignore[arg-type]
        txid = c.execute("SELECT txid_current()").fetchone()[0]  # type: ignore[index]
    return int(txid)


def state(conn: psycopg.Connection) -> dict[str, Any]:
    """Every user row and everything recovery keeps: equal before and after a refusal."""
    out: dict[str, Any] = {t: rows(conn, t) for t in USER_TABLES}
    for q in (
        STMT_Q,
        "SELECT * FROM _recovery.captured ORDER BY 1",
        "SELECT * FROM _recovery.columns ORDER BY 1, 2",
        "SELECT op_id, kind, status, selector, summary FROM _recovery.operations ORDER BY 1",
        "SELECT id, table_id, kind, detail FROM _recovery.events ORDER BY 1",
        "SELECT * FROM _recovery.meta ORDER BY 1",
        "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger"
        " WHERE NOT tgisinternal ORDER BY 1, 2",
        "SELECT relname FROM pg_class WHERE relnamespace = '_recovery'::regnamespace ORDER BY 1",
    ):
        conn.rollback()
        out[q] = conn.execute(q).fetchall()  # type: ignore[arg-type]
    conn.rollback()
    return out


def journal(conn: psycopg.Connection, where: str = "true") -> list[tuple[Any, ...]]:
    conn.rollback()
    out = conn.execute(
        "SELECT stmt_id, gen, table_id, op, tag, nrows FROM _recovery.stmt WHERE "  # noqa: S608
        + where
        + " ORDER BY stmt_id"
    ).fetchall()
    conn.rollback()
    return out


def assert_error(res: Result, *needles: str, code: int = 1, what: object = None) -> str:
    """Exit code, and exactly one line on stderr: `error: ...` naming every needle."""
    assert res.exit_code == code, (what, res.exit_code, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, (what, res.stderr)
    assert lines[0].startswith("error: "), (what, lines[0])
    for n in needles:
        assert n in lines[0], (what, n, lines[0])
    return lines[0]


def run_as(url: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, [*args, "--db", url], input=input, catch_exceptions=False)


def subprocess_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RECOVERY_DB_URL", "DATABASE_URL", "PGOPTIONS")
    }
    env["PYTHONWARNINGS"] = "error"
    return env


def run_proc(
    argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env or subprocess_env(),
        cwd=cwd or ROOT,
        timeout=60,
    )


@pytest.fixture
def shop(sql_exec, cli):  # type: ignore[no-untyped-def]
    """items and orders captured; nokey (no primary key) and fresh (not captured) are not."""
    sql_exec("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int)")
    sql_exec("CREATE TABLE orders (id int PRIMARY KEY, item_id int REFERENCES items, note text)")
    sql_exec("CREATE TABLE nokey (v text)")
    sql_exec("CREATE TABLE fresh (id int PRIMARY KEY, v text)")
    sql_exec("INSERT INTO items SELECT g, 'item' || g, g * 10 FROM generate_series(1, 5) g")
    sql_exec("INSERT INTO orders VALUES (1, 1, 'first'), (2, 2, 'second')")
    sql_exec("INSERT INTO nokey VALUES ('a'), ('b')")
    sql_exec("INSERT INTO fresh VALUES (1, 'one')")
    res = cli("capture", "enable", "items", "orders")
    assert res.exit_code == 0, res.output
    assert res.stdout.split() == ["capturing", "public.items", "capturing", "public.orders"]


@pytest.fixture(scope="session")
def stranger(server_url: str) -> Iterator[str]:
    """A login role that owns nothing in the test databases."""
    name = "recovery_test_stranger"
    with psycopg.connect(server_url, autocommit=True) as a:
        if not a.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone():
            a.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(server_url, autocommit=True) as a:
        try:
            a.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        except psycopg.Error:
            pass


# -- bad input: one line, exit 1, nothing changed --------------------------------------


def test_capture_enable_unknown_table(cli, conn, shop):  # type: ignore[no-untyped-def]
    before = state(conn)
    res = cli("capture", "enable", "fresh", "no_such_table")
    assert_error(res, "no_such_table")
    assert res.stdout == ""
    # All or nothing: fresh, named first, is not captured either.
    assert state(conn) == before


def test_capture_enable_table_without_key(cli, conn, shop):  # type: ignore[no-untyped-def]
    before = state(conn)
    res = cli("capture", "enable", "nokey")
    assert_error(res, "nokey", "--key")
    assert res.stdout == ""
    assert state(conn) == before
    # The fix the message names works: with a unique NOT NULL key it is captured.
    with psycopg.connect(conn.info.dsn, autocommit=True) as c:
        c.execute("ALTER TABLE nokey ALTER v SET NOT NULL, ADD UNIQUE (v)")
    res = cli("capture", "enable", "nokey", "--key", "v")
    assert res.exit_code == 0, res.output


# Each case: the arguments, and what its one-line error must name.  All run against one
# database with captured history (tag deploy-1), which none of them may change.
BAD_INPUT = [
    # an unknown tag
    *[
        ((*cmd, "--tag", "deploy-2"), ("deploy-2",))
        for cmd in (
            ("changes",),
            ("diff",),
            ("rollback", "--yes"),
            ("rollback",),
            ("rollback", "--dry-run"),
        )
    ],
    (("changes", "--json", "--tag", "deploy-2"), ("deploy-2",)),
    # a selector matching nothing
    *[
        (("rollback", *sel, mode), (sel[1],))
        for mode in ("--yes", "--dry-run")
        for sel in (
            ("--since", "2099-01-01 00:00:00+00"),
            ("--until", "2000-01-01"),
            ("--user", "nobody"),
            ("--app", "no-such-app"),
            ("--txid", "1"),
            ("--table", "fresh"),
            ("--table", "no_such_table"),
        )
    ],
    # no selector at all
    (("rollback",), ("--tag",)),
    (("rollback", "--yes"), ("--tag",)),
    (("rollback", "--dry-run"), ("--tag",)),
    # a malformed time
    (("changes", "--since", "banana"), ("--since", "banana")),
    (("diff", "--until", "banana"), ("--until", "banana")),
    (("rollback", "--yes", "--since", "banana"), ("--since", "banana")),
    (("rollback", "--dry-run", "--until", "banana"), ("--until", "banana")),
    (("changes", "--since", "2026-13-45"), ("--since", "2026-13-45")),
    # a malformed duration, with or without --yes
    *[
        (("prune", "--older-than", d, *yes), ("--older-than", repr(d)))
        for d in ("banana", "-1d", "7 fortnights", "")
        for yes in ((), ("--yes",))
    ],
    # usage errors: exit 2 means conflicts, so a typo must not look like one
    (("rollback", "--txid", "abc", "--yes"), ("--txid",)),
    (("rollback", "--tag", "deploy-1", "--on-conflict", "bogus", "--yes"), ("--on-conflict",)),
    (("diff", "--limit", "x"), ("--limit",)),
    (("changes", "--bogus"), ("--bogus",)),
    (("prune", "--yes"), ("--older-than",)),
    (("bogus",), ("bogus",)),
    (("capture", "bogus"), ("bogus",)),
    (("changes", "--schema-name", "BAD"), ("BAD",)),
    (("--schema-name", "Bad-Name", "changes"), ("Bad-Name",)),
]


def test_bad_input_one_line_exit_1_nothing_changed(cli, conn, db_url, shop):  # type: ignore[no-untyped-def]
    write(db_url, ["UPDATE items SET qty = 0 WHERE id = 1"], tag="deploy-1")
    before = state(conn)
    for argv, needles in BAD_INPUT:
        res = cli(*argv)
        line = assert_error(res, *needles, what=argv)
        if "--json" in argv:
            # One JSON document on stdout even for an error (issue 16).
            assert json.loads(res.stdout) == {"error": line[len("error: ") :], "exit_code": 1}
        else:
            assert res.stdout == "", argv
    assert state(conn) == before


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://nobody:{PASSWORD}@127.0.0.1:1/x",
        f"postgresql+psycopg://nobody:{PASSWORD}@127.0.0.1:1/x",
        f"postgresql://nobody@127.0.0.1:1/x?password={PASSWORD}&connect_timeout=5",
        f"host=127.0.0.1 port=1 user=nobody password={PASSWORD} dbname=x",
        f"host=127.0.0.1 port=1 user=nobody password='{PASSWORD}' dbname=x",
    ],
)
def test_unreachable_database_hides_password(url):  # type: ignore[no-untyped-def]
    for args in (
        ("changes",),
        ("capture", "status"),
        ("rollback", "--tag", "t", "--yes"),
        ("init",),
    ):
        res = run_as(url, *args)
        line = assert_error(res, "cannot reach the database", "127.0.0.1")
        assert PASSWORD not in res.output + res.stderr, line
        assert res.stdout == ""
    # --traceback shows more, but still no password.
    res = run_as(url, "changes", "--traceback")
    assert res.exit_code == 1
    assert "cannot reach the database" in res.stderr
    assert PASSWORD not in res.output + res.stderr


def test_unreachable_database_from_environment_in_subprocess():
    env = subprocess_env()
    env["RECOVERY_DB_URL"] = f"postgresql://nobody:{PASSWORD}@127.0.0.1:1/x"
    p = run_proc([str(SCRIPT), "changes"], env=env)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the database"), p.stderr
    assert PASSWORD not in p.stderr
    # No database at all: say how to give one.
    p = run_proc([str(SCRIPT), "changes"])
    assert p.returncode == 1
    assert p.stderr.startswith("error: ") and "--db" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("viewer_grants", [False, True], ids=["no-grants", "viewer-grants"])
def test_capture_enable_without_privilege(
    db_url,
    conn,
    shop,
    stranger,  # type: ignore[no-untyped-def]
    viewer_grants,
):
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute(sql.SQL("GRANT SELECT ON fresh, items TO {}").format(sql.Identifier(stranger)))
        if viewer_grants:
            c.execute(
                sql.SQL(
                    "GRANT USAGE ON SCHEMA _recovery TO {0};"
                    " GRANT SELECT ON ALL TABLES IN SCHEMA _recovery TO {0}"
                ).format(sql.Identifier(stranger))
            )
    before = state(conn)
    url = url_as(db_url, stranger)
    for args in (
        ("capture", "enable", "fresh"),
        ("capture", "disable", "items", "--yes"),
        ("capture", "enable", "--all"),
    ):
        res = run_as(url, *args)
        assert_error(res, "permission denied")
        assert res.stdout == ""
        assert state(conn) == before


def test_database_url_sources(db_url, shop):  # type: ignore[no-untyped-def]
    """--db, then RECOVERY_DB_URL, then DATABASE_URL; SQLAlchemy-style URLs accepted."""
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    sqla = f"postgresql+psycopg://{info['user']}@/{info['dbname']}?host={info['host']}" + (
        f"&port={info['port']}" if info.get("port") else ""
    )
    bad = "postgresql://nobody@127.0.0.1:1/x"

    def run(args: list[str], env: dict[str, str | None]) -> Result:
        return CliRunner().invoke(main, args, env=env, catch_exceptions=False)

    env_cases: list[tuple[list[str], dict[str, str | None], bool]] = [
        (["--db", sqla], {"RECOVERY_DB_URL": bad, "DATABASE_URL": bad}, True),
        (["--db", bad], {"RECOVERY_DB_URL": db_url, "DATABASE_URL": db_url}, False),
        ([], {"RECOVERY_DB_URL": db_url, "DATABASE_URL": bad}, True),
        ([], {"RECOVERY_DB_URL": bad, "DATABASE_URL": db_url}, False),
        ([], {"RECOVERY_DB_URL": None, "DATABASE_URL": sqla}, True),
    ]
    for args, env, ok in env_cases:
        res = run(["capture", "status", "--json", *args], env)
        if ok:
            assert res.exit_code == 0, (args, env, res.output)
            assert [s["table"] for s in json.loads(res.stdout)] == ["public.items", "public.orders"]
        else:
            assert_error(res, "cannot reach the database", what=(args, env))


def test_rollback_on_a_terminal_asks(conn, db_url, shop):  # type: ignore[no-untyped-def]
    write(db_url, ["UPDATE items SET qty = 0 WHERE id <= 3"], tag="bad")
    before = state(conn)
    for answer, code in (("n", 1), ("y", 0)):
        master, slave = os.openpty()
        try:
            p = subprocess.Popen(
                [str(SCRIPT), "rollback", "--tag", "bad", "--db", db_url],
                stdin=slave,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=subprocess_env(),
            )
            os.write(master, f"{answer}\n".encode())
            out, err = p.communicate(timeout=60)
        finally:
            os.close(slave)
            os.close(master)
        assert p.returncode == code, (answer, out, err)
        assert "Apply this undo? [y/N]" in out, out
        if answer == "n":
            assert err.strip() == "error: cancelled: nothing changed"
            assert state(conn) == before
        else:
            assert re.search(r"undo operation \d+ done", out), out
            assert rows(conn, "items") == ORIGINAL_ITEMS


# -- --yes, terminals, conflicts -------------------------------------------------------


def test_rollback_without_yes_and_no_terminal_refuses(cli, conn, db_url, shop):  # type: ignore[no-untyped-def]
    write(db_url, ["UPDATE items SET qty = 0 WHERE id <= 3"], tag="bad")
    before = state(conn)
    # Typed input does not count as a terminal: refuse rather than read "y" from a pipe.
    for stdin in (None, "y\n"):
        res = cli("rollback", "--tag", "bad", input=stdin)
        assert_error(res, "--yes")
        assert "public.items" in res.stdout  # the plan it would have asked about
        assert state(conn) == before
    res = cli("prune", "--older-than", "0s")
    assert_error(res, "--yes")
    assert state(conn) == before


def test_rollback_with_yes_applies_and_can_itself_be_undone(cli, conn, db_url, shop):  # type: ignore[no-untyped-def]
    write(
        db_url,
        ["UPDATE items SET qty = 0 WHERE id <= 3", "DELETE FROM orders WHERE id = 2"],
        tag="bad",
    )
    damaged = (rows(conn, "items"), rows(conn, "orders"))
    res = cli("rollback", "--tag", "bad", "--yes")
    assert res.exit_code == 0, res.output
    assert res.stderr == ""
    assert rows(conn, "items") == ORIGINAL_ITEMS
    assert rows(conn, "orders") == [(1, 1, "first"), (2, 2, "second")]
    m = re.search(r"undo operation (\d+) done", res.stdout)
    assert m, res.stdout
    op = int(m.group(1))
    ops = json.loads(cli("operations", "--json").stdout)
    assert [(o["op_id"], o["kind"], o["status"], o["selector"]) for o in ops] == [
        (op, "rollback", "done", {"tags": ["bad"]})
    ]
    # The undo is tagged, so it can be undone in turn.
    assert f"recovery-undo-{op}" in res.stdout
    res = cli("rollback", "--tag", f"recovery-undo-{op}", "--yes")
    assert res.exit_code == 0, res.output
    assert (rows(conn, "items"), rows(conn, "orders")) == damaged


def test_rollback_conflict_exit_2(cli, conn, db_url, shop):  # type: ignore[no-untyped-def]
    write(db_url, ["UPDATE items SET qty = 0 WHERE id <= 3"], tag="bad")
    write(db_url, ["UPDATE items SET qty = 99 WHERE id = 2"])  # a later, legitimate write
    before = state(conn)
    user_before = {t: before[t] for t in USER_TABLES}

    res = cli("rollback", "--tag", "bad", "--yes")
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert re.search(r"conflict public\.items \[id=2\] update: qty", res.stderr), res.stderr
    assert "restore to 20" in res.stderr and "now 99" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: 1 row(s) changed")
    after = state(conn)
    assert {t: after[t] for t in USER_TABLES} == user_before
    assert after[STMT_Q] == before[STMT_Q]

    res = cli("rollback", "--tag", "bad", "--yes", "--json")
    assert res.exit_code == 2
    doc = json.loads(res.stdout)
    assert doc["conflicts"] == 1
    (t,) = doc["tables"]
    assert (t["table"], t["changes"], t["conflicts"]) == ("public.items", 3, 1)
    (ex,) = t["conflict_examples"]
    assert {k: str(v) for k, v in ex["key"].items()} == {"id": "2"}
    assert ex["columns"] == ["qty"]
    assert ex["values"]["qty"] == {"restore_to": "20", "left_by_change": "0", "now": "99"}
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert rows(conn, "items") == user_before["items"]
    ops = json.loads(cli("operations", "--json").stdout)
    assert [o["status"] for o in ops] == ["refused", "refused"]

    # Skipping the conflict undoes the rest and keeps the later write.
    res = cli("rollback", "--tag", "bad", "--yes", "--on-conflict", "skip")
    assert res.exit_code == 0, res.output
    assert rows(conn, "items") == [
        (1, "item1", 10),
        (2, "item2", 99),
        (3, "item3", 30),
        (4, "item4", 40),
        (5, "item5", 50),
    ]


# -- --json: exactly one document on stdout --------------------------------------------

JSON_COMMANDS = [
    (("init",), dict),
    (("capture", "status"), list),
    (("changes",), dict),
    (("changes", "--tag", "bad"), dict),
    (("diff", "--tag", "bad"), list),
    (("rollback", "--tag", "bad", "--dry-run"), dict),
    (("operations",), list),
]


def test_json_is_one_document(cli, conn, db_url, shop):  # type: ignore[no-untyped-def]
    write(db_url, ["UPDATE items SET qty = 0 WHERE id <= 3"], tag="bad")
    assert (
        cli(
            "rollback", "--txid", str(write(db_url, ["DELETE FROM orders WHERE id = 1"])), "--yes"
        ).exit_code
        == 0
    )
    for command, kind in JSON_COMMANDS:
        for argv in ([*command, "--json"], ["--json", *command]):
            before = state(conn)
            res = cli(*argv)
            assert res.exit_code == 0, (argv, res.output)
            assert res.stderr == "", argv
            doc = json.loads(res.stdout)  # raises on anything but exactly one document
            assert isinstance(doc, kind) and doc, argv
            if command != ("init",):
                assert state(conn) == before, argv
            if command[0] == "rollback":
                assert doc["status"] == "dry-run" and doc["dry_run"] is True
                assert doc["tables"][0]["restore"] == 3 and doc["op_id"] is None
            if command == ("init",):
                assert doc["version"] == doc["previous_version"] == SCHEMA_VERSION


def test_json_in_subprocess(db_url, shop):  # type: ignore[no-untyped-def]
    write(db_url, ["UPDATE items SET qty = 0 WHERE id <= 3"], tag="bad")
    p = run_proc([PYTHON, "-m", "recovery", "--json", "capture", "status", "--db", db_url])
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [(s["table"], s["state"], s["statements"], s["rows"]) for s in doc] == [
        ("public.items", "on", 1, 3),
        ("public.orders", "on", 0, 0),
    ]
    p = run_proc([str(SCRIPT), "rollback", "--tag", "bad", "--dry-run", "--json", "--db", db_url])
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["status"] == "dry-run"


# -- the views: capture status, changes, diff ------------------------------------------


def test_capture_status(cli, conn, db_url, shop, sql_exec):  # type: ignore[no-untyped-def]
    write(
        db_url,
        [
            "INSERT INTO items VALUES (6, 'item6', 60), (7, 'item7', 70)",
            "UPDATE items SET qty = qty + 1 WHERE id <= 3",
        ],
    )
    res = cli("capture", "status")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["table", "state", "source", "key", "statements", "rows", "journal"]
    assert re.fullmatch(r"public\.items\s+on\s+trigger\s+id\s+2\s+5\s+\d+ (B|kB|MB)", lines[2]), (
        lines
    )
    assert re.fullmatch(r"public\.orders\s+on\s+trigger\s+id\s+0\s+0\s+\d+ (B|kB|MB)", lines[3]), (
        lines
    )

    doc = json.loads(cli("capture", "status", "--json").stdout)
    by = {s["table"]: s for s in doc}
    assert set(by) == {"public.items", "public.orders"}
    items = by["public.items"]
    assert (items["state"], items["enabled"], items["key"], items["key_source"]) == (
        "on",
        True,
        ["id"],
        "primary key",
    )
    assert (items["statements"], items["rows"], items["problems"]) == (2, 5, [])
    journal_bytes = conn.execute(
        "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree("
        "(SELECT format('_recovery.j_%s', table_id)::regclass FROM _recovery.captured"
        " WHERE table_name = 'items'))"
    ).fetchone()[0]
    conn.rollback()
    assert items["journal_bytes"] == journal_bytes > 0

    # Capture that no longer works is reported as stopped, with the fix.  (The event
    # trigger, enabled ALWAYS, would put a disabled capture trigger back: without it,
    # nothing does.)
    sql_exec(
        "DROP EVENT TRIGGER _recovery_follow_ddl;"
        " ALTER TABLE items DISABLE TRIGGER _recovery_capture_u"
    )
    doc = json.loads(cli("capture", "status", "--json").stdout)
    items = next(s for s in doc if s["table"] == "public.items")
    assert items["state"] == "stopped"
    assert any("capture enable" in p for p in items["problems"]), items
    res = cli("capture", "status")
    assert re.search(r"public\.items\s+stopped", res.stdout)
    assert "public.items: " in res.stdout and "capture enable" in res.stdout
    # ... and the fix it names works.
    assert cli("capture", "enable", "items").exit_code == 0
    doc = json.loads(cli("capture", "status", "--json").stdout)
    assert next(s for s in doc if s["table"] == "public.items")["state"] == "on"
    write(db_url, ["UPDATE items SET qty = 0 WHERE id = 7"], tag="after-fix")
    assert json.loads(cli("changes", "--tag", "after-fix", "--json").stdout)["rows"] == 1

    # Disabled: off, history kept.
    assert cli("capture", "disable", "orders", "--yes").exit_code == 0
    doc = json.loads(cli("capture", "status", "--json").stdout)
    orders = next(s for s in doc if s["table"] == "public.orders")
    assert (orders["state"], orders["enabled"]) == ("off", False)
    assert re.search(r"public\.orders\s+off", cli("capture", "status").stdout)


def test_changes_counts_are_exact(cli, conn, db_url, shop):  # type: ignore[no-untyped-def]
    user = conn.execute("SELECT session_user").fetchone()[0]  # type: ignore[index]
    conn.rollback()
    t1 = write(
        db_url,
        [
            "UPDATE items SET qty = qty + 1 WHERE id <= 3",
            "INSERT INTO orders VALUES (3, 3, 'x'), (4, 4, 'y')",
            "UPDATE items SET name = 'renamed' WHERE id = 1",
            "UPDATE items SET qty = 0 WHERE id = 999",
        ],  # no row: not recorded
        tag="a",
    )
    t2 = write(db_url, ["DELETE FROM orders WHERE id = 1"], tag="b", app="other-app")
    t3 = write(db_url, ["INSERT INTO items VALUES (6, 'item6', 60)"])

    doc = json.loads(cli("changes", "--json").stdout)
    assert (doc["statements"], doc["rows"]) == (5, 8)
    assert doc["by_table"] == [
        {"table": "public.items", "operation": "insert", "statements": 1, "rows": 1},
        {"table": "public.items", "operation": "update", "statements": 2, "rows": 4},
        {"table": "public.orders", "operation": "delete", "statements": 1, "rows": 1},
        {"table": "public.orders", "operation": "insert", "statements": 1, "rows": 2},
    ]
    assert [(t["tag"], t["statements"], t["rows"]) for t in doc["by_tag"]] == [
        ("a", 3, 6),
        ("b", 1, 1),
        (None, 1, 1),
    ]
    assert [
        (t["txid"], t["tag"], t["user"], t["app"], t["statements"], t["rows"])
        for t in doc["by_transaction"]
    ] == [
        (t1, "a", user, "shop-app", 3, 6),
        (t2, "b", user, "other-app", 1, 1),
        (t3, None, user, "shop-app", 1, 1),
    ]
    assert doc["first"] <= doc["last"]

    def count(*selector: str) -> tuple[int, int, list[int]]:
        d = json.loads(cli("changes", *selector, "--json").stdout)
        return d["statements"], d["rows"], [t["txid"] for t in d["by_transaction"]]

    assert count("--tag", "a") == (3, 6, [t1])
    assert count("--tag", "a", "--tag", "b") == (4, 7, [t1, t2])
    assert count("--table", "orders") == (2, 3, [t1, t2])
    assert count("--table", "orders", "--tag", "a") == (1, 2, [t1])
    assert count("--txid", str(t2), "--txid", str(t3)) == (2, 2, [t2, t3])
    assert count("--app", "other-app") == (1, 1, [t2])
    assert count("--user", user) == (5, 8, [t1, t2, t3])
    assert count("--since", doc["by_transaction"][1]["first"]) == (2, 2, [t2, t3])
    assert count("--until", doc["by_transaction"][1]["first"]) == (3, 6, [t1])

    res = cli("changes")
    assert res.exit_code == 0
    assert "8 row change(s) in 5 statement(s)" in res.stdout
    assert re.search(r"public\.items\s+update\s+2\s+4", res.stdout)
    assert re.search(r"public\.orders\s+insert\s+1\s+2", res.stdout)
    assert re.search(r"^a\s+3\s+6\s", res.stdout, re.M)
    assert re.search(r"^\(untagged\)\s+1\s+1\s", res.stdout, re.M)
    assert re.search(rf"^{t2}\s+b\s+{user}\s+other-app\s+1\s+1\s", res.stdout, re.M)


def test_table_selector_follows_cascades_only(cli, conn, db_url, sql_exec, shop):  # type: ignore[no-untyped-def]
    sql_exec(
        "CREATE TABLE lines (id int PRIMARY KEY,"
        " item_id int REFERENCES items ON DELETE CASCADE, n int)"
    )
    sql_exec("INSERT INTO lines VALUES (1, 4, 1), (2, 5, 1), (3, 1, 1)")
    assert cli("capture", "enable", "lines").exit_code == 0
    # One transaction: a direct write to lines, and a delete on items that cascades.
    write(
        db_url, ["UPDATE lines SET n = 2 WHERE id = 3", "DELETE FROM items WHERE id >= 4"], tag="x"
    )
    doc = json.loads(cli("changes", "--table", "items", "--json").stdout)
    assert [(t["table"], t["operation"], t["rows"]) for t in doc["by_table"]] == [
        ("public.items", "delete", 2),
        ("public.lines", "delete", 2),
    ]
    doc = json.loads(cli("changes", "--table", "lines", "--json").stdout)
    assert [(t["table"], t["operation"], t["rows"]) for t in doc["by_table"]] == [
        ("public.lines", "delete", 2),
        ("public.lines", "update", 1),
    ]
    # Undoing the items change brings back the cascaded rows, not the direct write.
    res = cli("rollback", "--table", "items", "--yes")
    assert res.exit_code == 0, res.output
    assert rows(conn, "items") == ORIGINAL_ITEMS
    assert rows(conn, "lines") == [(1, 4, 1), (2, 5, 1), (3, 1, 2)]


def test_diff_shows_before_and_after_of_changed_columns(cli, db_url, shop):  # type: ignore[no-untyped-def]
    txid = write(
        db_url,
        [
            "UPDATE items SET qty = 500 WHERE id = 5",
            "UPDATE items SET qty = qty WHERE id = 4",  # nothing changed
            "INSERT INTO orders VALUES (9, 5, 'new')",
            "DELETE FROM orders WHERE id = 2",
            "UPDATE orders SET note = NULL WHERE id = 1",
        ],
        tag="d",
    )
    doc = json.loads(cli("diff", "--tag", "d", "--json").stdout)
    got = [(d["table"], d["operation"], d["txid"], d["tag"], d["key"], d["columns"]) for d in doc]
    assert got == [
        ("public.items", "update", txid, "d", {"id": "5"}, {"qty": ["50", "500"]}),
        ("public.items", "update", txid, "d", {"id": "4"}, {}),
        (
            "public.orders",
            "insert",
            txid,
            "d",
            {"id": "9"},
            {"id": [None, "9"], "item_id": [None, "5"], "note": [None, "new"]},
        ),
        (
            "public.orders",
            "delete",
            txid,
            "d",
            {"id": "2"},
            {"id": ["2", None], "item_id": ["2", None], "note": ["second", None]},
        ),
        ("public.orders", "update", txid, "d", {"id": "1"}, {"note": ["first", None]}),
    ]
    res = cli("diff", "--tag", "d")
    assert res.exit_code == 0
    out = res.stdout
    assert re.search(rf"^public\.items update \[id=5\] txid {txid} d ", out, re.M)
    assert "\n    qty: 50 -> 500\n" in out
    assert "\n    note: NULL -> new\n" in out
    assert "\n    note: second -> NULL\n" in out
    assert "\n    note: first -> NULL" in out
    # --limit caps the rows shown per table.
    doc = json.loads(cli("diff", "--tag", "d", "--limit", "1", "--json").stdout)
    assert [(d["table"], d["key"]) for d in doc] == [
        ("public.items", {"id": "5"}),
        ("public.orders", {"id": "9"}),
    ]


# -- prune -----------------------------------------------------------------------------


def _table_id(conn: psycopg.Connection, name: str) -> int:
    tid = conn.execute(
        "SELECT table_id FROM _recovery.captured WHERE table_name = %s", [name]
    ).fetchone()[0]  # type: ignore[index]
    conn.rollback()
    return int(tid)


def test_prune_drops_old_chunks(cli, conn, db_url, shop):  # type: ignore[no-untyped-def]
    write(db_url, ["UPDATE items SET qty = 0 WHERE id = 1"], tag="old")
    write(db_url, ["DELETE FROM orders WHERE id = 2"], tag="old")
    tid = _table_id(conn, "items")
    assert len(journal(conn)) == 2
    # orders is not captured while prune runs: its old chunk goes too, and capture
    # resumes in the new one when it is enabled again.
    assert cli("capture", "disable", "orders", "--yes").exit_code == 0

    res = cli("prune", "--older-than", "0s", "--yes", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["dropped_chunks"], doc["dropped_statements"], doc["generation"]) == ([1], 2, 2)
    assert doc["dropped_bytes"] > 0
    # Everything older than the cutoff is gone, the journal rows with it.
    assert journal(conn) == []
    for t in (tid, _table_id(conn, "orders")):
        assert conn.execute(f"SELECT count(*) FROM _recovery.j_{t}").fetchone()[0] == 0  # noqa: S608
    assert conn.execute("SELECT to_regclass('_recovery.stmt_1')").fetchone()[0] is None
    conn.rollback()
    assert_error(cli("changes", "--tag", "old"), "'old'")
    assert cli("capture", "enable", "orders").exit_code == 0
    doc = json.loads(cli("capture", "status", "--json").stdout)
    assert [(s["table"], s["state"], s["statements"]) for s in doc] == [
        ("public.items", "on", 0),
        ("public.orders", "on", 0),
    ]

    # New writes land in the new chunk and can be undone.
    write(
        db_url,
        [
            "UPDATE items SET name = 'broken' WHERE id <= 2",
            "INSERT INTO orders VALUES (7, 3, 'new')",
        ],
        tag="new",
    )
    assert [(g, op, tag, n) for _s, g, _t, op, tag, n in journal(conn)] == [
        (2, "U", "new", 2),
        (2, "I", "new", 1),
    ]
    assert json.loads(cli("changes", "--tag", "new", "--json").stdout)["rows"] == 3
    res = cli("rollback", "--tag", "new", "--yes")
    assert res.exit_code == 0, res.output
    # The pruned change stays (its history is gone); the new one is undone.
    assert rows(conn, "items") == [(1, "item1", 0)] + ORIGINAL_ITEMS[1:]
    assert rows(conn, "orders") == [(1, 1, "first")]

    # Text output, and a second prune drops the chunk just filled.
    res = cli("prune", "--older-than", "0s", "--yes")
    assert res.exit_code == 0, res.output
    assert re.match(r"dropped 1 chunk\(s\), 4 statement\(s\), \d+ bytes older than ", res.stdout)
    assert journal(conn) == []


def test_prune_long_retention_keeps_everything(cli, conn, db_url, shop):  # type: ignore[no-untyped-def]
    write(db_url, ["UPDATE items SET qty = 0 WHERE id <= 2"], tag="old")
    before = journal(conn)
    res = cli("prune", "--older-than", "7d", "--yes", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["dropped_chunks"], doc["dropped_statements"], doc["dropped_bytes"]) == ([], 0, 0)
    assert journal(conn) == before
    res = cli("prune", "--older-than", "30 days", "--yes", "--json")
    assert json.loads(res.stdout)["dropped_statements"] == 0  # at most the empty chunk 2
    assert journal(conn) == before
    # One tag, written across chunks, is undone whole.
    write(db_url, ["UPDATE items SET name = 'x' WHERE id = 5", "DELETE FROM orders"], tag="old")
    assert [g for _s, g, *_ in journal(conn)] == [1, 3, 3]
    res = cli("rollback", "--tag", "old", "--yes")
    assert res.exit_code == 0, res.output
    assert rows(conn, "items") == ORIGINAL_ITEMS
    assert rows(conn, "orders") == [(1, 1, "first"), (2, 2, "second")]


# -- help and docs ---------------------------------------------------------------------


def _walk(
    cmd: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _walk(sub, (*path, name))


def test_every_command_has_help():
    seen = []
    for path, cmd in _walk(main):
        seen.append(" ".join(path))
        assert (cmd.help or "").strip(), f"`recovery {' '.join(path)}` has no help text"
        for p in cmd.params:
            if isinstance(p, click.Option) and p.name != "help":
                assert (p.help or "").strip(), f"option {p.opts} of `{' '.join(path)}` has no help"
        res = CliRunner().invoke(main, [*path, "--help"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        assert cmd.help.strip().splitlines()[0][:30] in " ".join(res.stdout.split())
    for must in (
        "init",
        "capture enable",
        "capture disable",
        "capture status",
        "changes",
        "diff",
        "rollback",
        "operations",
        "prune",
    ):
        assert must in seen


def test_every_command_is_in_the_readme():
    readme = ROOT / "README.md"
    assert readme.exists(), "README.md is missing"
    text = readme.read_text()
    missing = [
        name
        for name in sorted(main.commands)
        if not re.search(rf"(\brecovery\s+{re.escape(name)}\b|`{re.escape(name)}\b)", text)
    ]
    assert not missing, f"commands not mentioned in README.md: {missing}"


def test_python_m_recovery_help(tmp_path):  # type: ignore[no-untyped-def]
    p = run_proc([PYTHON, "-m", "recovery", "--help"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Usage: ") and p.stderr == ""
    for name in main.commands:
        assert re.search(rf"^\s+{re.escape(name)}\s", p.stdout, re.M), name
    p = run_proc([str(SCRIPT), "--help"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Usage: recovery ")
    p = run_proc([str(SCRIPT), "rollback", "--help"], cwd=tmp_path)
    assert p.returncode == 0 and "--on-conflict" in p.stdout


def test_subprocess_rollback_needs_yes(conn, db_url, shop):  # type: ignore[no-untyped-def]
    write(db_url, ["UPDATE items SET qty = 0 WHERE id <= 3"], tag="bad")
    before = state(conn)
    for argv in ([PYTHON, "-m", "recovery"], [str(SCRIPT)]):
        p = run_proc([*argv, "rollback", "--tag", "bad", "--db", db_url])
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert p.stderr.strip().splitlines() == [
            "error: refusing to change data without --yes: no terminal to ask"
        ]
        assert state(conn) == before
    p = run_proc([str(SCRIPT), "rollback", "--tag", "bad", "--yes", "--quiet", "--db", db_url])
    assert p.returncode == 0, p.stderr
    assert (p.stdout, p.stderr) == ("", "")
    assert rows(conn, "items") == ORIGINAL_ITEMS
