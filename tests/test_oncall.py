"""On-call safety (issue 16): no hang on a silent server, no silent switch-off of capture,
and option values checked before anything connects or changes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from recovery import db as db_mod
from recovery.cli import main
from tests.conftest import rows
from tests.test_cli import assert_error


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


def test_silent_server_times_out_instead_of_hanging(
    silent_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    monkeypatch.setattr(db_mod, "CONNECT_TIMEOUT", 1)  # the default (10 s), shortened
    url = f"postgresql://postgres@127.0.0.1:{silent_server}/postgres"
    t0 = time.monotonic()
    res = CliRunner().invoke(main, ["--db", url, "changes"], catch_exceptions=False)
    elapsed = time.monotonic() - t0
    line = assert_error(res, "cannot reach the database", "timeout", "connect_timeout")
    assert f"127.0.0.1:{silent_server}" in line
    assert elapsed < 6, elapsed


def test_url_connect_timeout_wins(silent_server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    monkeypatch.setattr(db_mod, "CONNECT_TIMEOUT", 60)  # would hang the test if used
    url = f"postgresql://postgres@127.0.0.1:{silent_server}/postgres?connect_timeout=1"
    t0 = time.monotonic()
    res = CliRunner().invoke(main, ["--db", url, "changes"], catch_exceptions=False)
    assert_error(res, "timeout")
    assert time.monotonic() - t0 < 6


def _setup(conn: psycopg.Connection, cli) -> None:  # type: ignore[no-untyped-def]
    conn.execute("CREATE TABLE acc (id int PRIMARY KEY, bal int NOT NULL)")
    conn.execute("INSERT INTO acc SELECT g, 100 FROM generate_series(1, 5) g")
    conn.commit()
    assert cli("capture", "enable", "acc").exit_code == 0


def _capture_state(conn: psycopg.Connection) -> list[tuple]:  # type: ignore[type-arg]
    conn.rollback()
    out = conn.execute(
        "SELECT c.table_name, c.enabled, (SELECT count(*) FROM pg_trigger t"
        " WHERE t.tgrelid = c.relid AND t.tgname LIKE '\\_recovery\\_capture\\_%')"
        " FROM _recovery.captured c ORDER BY 1"
    ).fetchall()
    conn.rollback()
    return out


def test_capture_disable_asks_and_refuses_without_a_terminal(conn, cli) -> None:  # type: ignore[no-untyped-def]
    _setup(conn, cli)
    before = _capture_state(conn)
    assert before == [("acc", True, 5)]
    for args in (("capture", "disable", "acc"), ("capture", "disable", "--all")):
        res = cli(*args)
        assert_error(res, "refusing to change data without --yes")
        assert res.stdout == ""
        assert _capture_state(conn) == before
    # Asked on a terminal and answered no: nothing changes either (CliRunner's input is
    # not a terminal, so the refusal above is what a script sees; --yes is the way).
    res = cli("capture", "disable", "acc", "--yes")
    assert res.exit_code == 0 and res.stdout == "stopped capturing public.acc\n"
    assert _capture_state(conn) == [("acc", False, 0)]


@pytest.mark.parametrize("value", ["banana", "5 seconds", "-1s", "1.5.2s", ""])
def test_lock_timeout_is_checked_before_anything_runs(conn, cli, value: str) -> None:  # type: ignore[no-untyped-def]
    _setup(conn, cli)
    with psycopg.connect(conn.info.dsn, password=conn.info.password) as app:
        app.execute("SET recovery.tag = 'bad'")
        app.execute("UPDATE acc SET bal = 0 WHERE id <= 2")
    before = rows(conn, "acc")
    ops = conn.execute("SELECT count(*) FROM _recovery.operations").fetchone()
    conn.rollback()
    for cmd in (("rollback", "--tag", "bad", "--yes"), ("rollback", "--tag", "bad", "--dry-run")):
        res = cli(*cmd, "--lock-timeout", value)
        assert_error(res, "--lock-timeout", "is not a duration", "5s")
    assert rows(conn, "acc") == before
    assert conn.execute("SELECT count(*) FROM _recovery.operations").fetchone() == ops
    conn.rollback()


@pytest.mark.parametrize("value", ["500ms", "2s", "1min", "1000", "0"])
def test_lock_timeout_accepts_postgresql_durations(conn, cli, value: str) -> None:  # type: ignore[no-untyped-def]
    _setup(conn, cli)
    with psycopg.connect(conn.info.dsn, password=conn.info.password) as app:
        app.execute("SET recovery.tag = 'bad'")
        app.execute("UPDATE acc SET bal = 0 WHERE id <= 2")
    res = cli("rollback", "--tag", "bad", "--yes", "--lock-timeout", value)
    assert res.exit_code == 0, res.output
    assert rows(conn, "acc") == [(i, 100) for i in range(1, 6)]


@pytest.mark.parametrize(
    "args",
    [
        ("diff", "--tag", "x", "--limit", "-1"),
        ("operations", "--limit", "-5"),
        ("runbook", "list", "--runs", "--limit", "-1"),
    ],
)
def test_negative_limits_name_the_option(cli, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    res = cli(*args)
    assert_error(res, "--limit", "x>=0")


def test_json_errors_print_a_document_on_stdout(conn, cli, silent_server: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _setup(conn, cli)
    res = cli("changes", "--tag", "nope", "--json")
    line = assert_error(res, "no captured change has tag 'nope'")
    assert json.loads(res.stdout) == {"error": line[len("error: ") :], "exit_code": 1}
    # Before any database answers, too.
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    monkeypatch.setattr(db_mod, "CONNECT_TIMEOUT", 1)
    url = f"postgresql://postgres@127.0.0.1:{silent_server}/postgres"
    res = CliRunner().invoke(main, ["--db", url, "--json", "changes"], catch_exceptions=False)
    line = assert_error(res, "timeout")
    assert json.loads(res.stdout) == {"error": line[len("error: ") :], "exit_code": 1}


@pytest.mark.parametrize("batched", [False, True])
def test_lock_timeout_names_the_blocking_session(conn, cli, batched: bool) -> None:  # type: ignore[no-untyped-def]
    _setup(conn, cli)
    with psycopg.connect(conn.info.dsn, password=conn.info.password) as app:
        app.execute("SET recovery.tag = 'bad'")
        app.execute("UPDATE acc SET bal = 0 WHERE id <= 2")
    blocker = psycopg.connect(
        conn.info.dsn, password=conn.info.password, application_name="night-batch"
    )
    try:
        blocker.execute("UPDATE acc SET bal = 7 WHERE id = 1")  # held, not committed
        pid = blocker.info.backend_pid
        args = ["rollback", "--tag", "bad", "--yes", "--lock-timeout", "300ms"]
        if batched:
            args += ["--batch-size", "1"]
        res = cli(*args)
        line = assert_error(res, "lock_timeout 300ms", f"held by pid {pid}", "night-batch")
        assert "idle in transaction since" in line and "UPDATE acc SET bal = 7" in line
    finally:
        blocker.rollback()
        blocker.close()
    assert rows(conn, "acc") == [(1, 0), (2, 0), (3, 100), (4, 100), (5, 100)]


def test_ctrl_c_during_an_undo_says_nothing_changed(conn, cli, db_url) -> None:  # type: ignore[no-untyped-def]
    _setup(conn, cli)
    with psycopg.connect(conn.info.dsn, password=conn.info.password) as app:
        app.execute("SET recovery.tag = 'bad'")
        app.execute("UPDATE acc SET bal = 0 WHERE id <= 2")
    blocker = psycopg.connect(conn.info.dsn, password=conn.info.password)
    blocker.execute("UPDATE acc SET bal = 7 WHERE id = 2")  # the undo waits for it
    env = {k: v for k, v in os.environ.items() if k not in ("RECOVERY_DB_URL", "PGOPTIONS")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from recovery.cli import main; main()",
            "rollback",
            "--tag",
            "bad",
            "--yes",
            "--lock-timeout",
            "0",
            "--db",
            db_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'recovery'"
                " AND wait_event_type = 'Lock'"
            ).fetchone()
            conn.rollback()
            if waiting and waiting[0]:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the undo never waited for the lock")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        blocker.rollback()
        blocker.close()
    assert proc.returncode == 1, (out, err)
    assert err.strip().splitlines() == [
        "error: interrupted (Ctrl-C): the transaction in progress was rolled back, so nothing"
        " of it changed; a batched rollback keeps the batches it committed (`recovery"
        " operations` shows it, `recovery rollback --resume OP` goes on)"
    ]
    assert rows(conn, "acc") == [(1, 0), (2, 0), (3, 100), (4, 100), (5, 100)]
    rec = conn.execute(
        "SELECT kind, status, error FROM _recovery.operations ORDER BY op_id DESC LIMIT 1"
    ).fetchone()
    conn.rollback()
    assert rec == (
        "rollback",
        "failed",
        "interrupted (Ctrl-C): the transaction in progress was rolled back",
    )


def _wait_for_lock_wait(conn: psycopg.Connection) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        waiting = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'recovery'"
            " AND wait_event_type = 'Lock'"
        ).fetchone()
        conn.rollback()
        if waiting and waiting[0]:
            return
        time.sleep(0.1)
    pytest.fail("the undo never waited for the lock")


@pytest.mark.parametrize("second", ["rollback", "restore"])
def test_a_second_undo_at_the_same_time_is_refused_at_once(conn, cli, db_url, second) -> None:  # type: ignore[no-untyped-def]
    _setup(conn, cli)
    assert cli("snapshot", "create", "before", "--table", "acc").exit_code == 0
    with psycopg.connect(conn.info.dsn, password=conn.info.password) as app:
        app.execute("SET recovery.tag = 'dup'")
        app.execute("UPDATE acc SET bal = 0 WHERE id <= 2")
    blocker = psycopg.connect(conn.info.dsn, password=conn.info.password)
    blocker.execute("UPDATE acc SET bal = bal WHERE id = 2")  # the first undo waits here
    env = {k: v for k, v in os.environ.items() if k not in ("RECOVERY_DB_URL", "PGOPTIONS")}
    first = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from recovery.cli import main; main()",
            "rollback",
            "--tag",
            "dup",
            "--yes",
            "--lock-timeout",
            "0",
            "--db",
            db_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for_lock_wait(conn)
        op = conn.execute("SELECT max(op_id) FROM _recovery.operations").fetchone()
        conn.rollback()
        assert op is not None
        t0 = time.monotonic()
        if second == "rollback":
            res = cli("rollback", "--tag", "dup", "--yes")
        else:
            res = cli("restore", "before", "--yes")
        assert time.monotonic() - t0 < 5  # at once, not after the first one
        line = assert_error(
            res,
            f"another rollback is under way in this database: operation {op[0]}",
            "started by postgres",
            "nothing was changed",
        )
        assert "session pid" in line
        # A dry run plans without applying: it is not refused.
        assert cli("rollback", "--tag", "dup", "--dry-run").exit_code == 0
    finally:
        blocker.rollback()
        blocker.close()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, (out, err)
    assert rows(conn, "acc") == [(i, 100) for i in range(1, 6)]
    # The first one is done, the second was refused: afterwards, nothing is left to do.
    res = cli("rollback", "--tag", "dup", "--yes")
    assert res.exit_code == 0, res.output
    assert rows(conn, "acc") == [(i, 100) for i in range(1, 6)]


def test_one_rule_for_nothing_found(conn, cli) -> None:  # type: ignore[no-untyped-def]
    _setup(conn, cli)
    with psycopg.connect(conn.info.dsn, password=conn.info.password) as app:
        app.execute("SET recovery.tag = 't1'")
        app.execute("UPDATE acc SET bal = 1 WHERE id = 1")
    # A name no captured change has: bad input, exit 1, in every command.
    for cmd in ("changes", "diff"):
        for sel, needle in (
            (("--tag", "nope"), "no captured change has tag 'nope'"),
            (("--user", "nobody"), "no captured change has user 'nobody'"),
            (("--app", "no-such-app"), "no captured change has application 'no-such-app'"),
        ):
            assert_error(cli(cmd, *sel), needle, what=(cmd, sel))
    # A window that ends before it starts: bad input.
    assert_error(
        cli("changes", "--since", "2026-01-02", "--until", "2026-01-01"),
        "--since 2026-01-02 is not before --until 2026-01-01",
    )
    # Names that exist, in a combination that matches nothing: an empty answer, exit 0.
    res = cli("changes", "--tag", "t1", "--since", "2099-01-01", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["statements"] == 0
    res = cli("changes", "--tag", "t1", "--user", "postgres", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["rows"] == 1
    assert rows(conn, "acc")[0] == (1, 1)


def test_trigger_owner_check_is_in_the_plan(conn, cli, db_url, server_url) -> None:  # type: ignore[no-untyped-def]
    """A role that may undo but does not own a table with triggers learns it from the dry
    run, not at apply time after an approval."""
    with psycopg.connect(server_url, autocommit=True) as a:
        if not a.execute("SELECT 1 FROM pg_roles WHERE rolname = 'rc_undoer'").fetchone():
            a.execute("CREATE ROLE rc_undoer LOGIN")
    _setup(conn, cli)
    conn.execute(
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;"
        " CREATE TRIGGER acc_touch BEFORE UPDATE ON acc FOR EACH ROW EXECUTE FUNCTION touch();"
        " GRANT ALL ON SCHEMA _recovery TO rc_undoer;"
        " GRANT ALL ON ALL TABLES IN SCHEMA _recovery TO rc_undoer;"
        " GRANT ALL ON ALL SEQUENCES IN SCHEMA _recovery TO rc_undoer;"
        " GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA _recovery TO rc_undoer;"
        " GRANT SELECT, INSERT, UPDATE, DELETE ON acc TO rc_undoer"
    )
    conn.execute(
        sql.SQL("GRANT TEMPORARY ON DATABASE {} TO rc_undoer").format(
            sql.Identifier(conn.info.dbname)
        )
    )
    conn.commit()
    with psycopg.connect(conn.info.dsn, password=conn.info.password) as app:
        app.execute("SET recovery.tag = 'bad'")
        app.execute("UPDATE acc SET bal = 0 WHERE id <= 2")
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    info["user"] = "rc_undoer"
    info.pop("password", None)
    url = psycopg.conninfo.make_conninfo(**info)
    before = rows(conn, "acc")
    for mode in ("--dry-run", "--yes"):
        res = CliRunner().invoke(
            main, ["rollback", "--tag", "bad", mode, "--db", url], catch_exceptions=False
        )
        assert_error(
            res,
            "cannot suspend trigger acc_touch of public.acc",
            "--fire-triggers",
            "nothing was changed",
            what=mode,
        )
    assert rows(conn, "acc") == before
    # --fire-triggers is the way it names, and it works for that role.
    res = CliRunner().invoke(
        main,
        ["rollback", "--tag", "bad", "--yes", "--fire-triggers", "--db", url],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert rows(conn, "acc") == [(i, 100) for i in range(1, 6)]
    conn.execute("DROP OWNED BY rc_undoer")
    conn.commit()


def test_blocking_query_text_hides_passwords() -> None:
    from recovery.db import _hide_secrets

    assert _hide_secrets("ALTER ROLE app PASSWORD 'S3cret' VALID UNTIL 'x'") == (
        "ALTER ROLE app PASSWORD '***' VALID UNTIL 'x'"
    )
    assert (
        _hide_secrets("CREATE ROLE a LOGIN password 'S3cr") == "CREATE ROLE a LOGIN password '***"
    )
    assert _hide_secrets("SELECT dblink('postgresql://u:S3cret@h/db')") == (
        "SELECT dblink('postgresql://u:***@h/db')"
    )
    assert (
        _hide_secrets("UPDATE acc SET bal = 7 WHERE id = 1")
        == "UPDATE acc SET bal = 7 WHERE id = 1"
    )
