"""The snapshot and restore commands as automation uses them: exit codes, one-line errors,
--yes, --json, no database for a directory store, a snapshot killed midway, undoing a
restore.  Every refusal is checked to leave every row as it was.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard
from click.testing import CliRunner, Result

from recovery import list_operations
from recovery import snapshot as snap
from recovery.cli import main

from .conftest import rows

ROOT = Path(__file__).resolve().parents[1]
SHOP = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, tier text DEFAULT 'std');
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers,
                     total numeric(10,2) NOT NULL, note text,
                     updated_at timestamptz NOT NULL DEFAULT '2020-01-01');
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN NEW.updated_at := '2030-01-01'; RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
CREATE DOMAIN qty AS int CHECK (VALUE >= 0);
CREATE TABLE nokey (code text NOT NULL UNIQUE, n qty, note text);
INSERT INTO customers SELECT g, 'c' || g, CASE WHEN g % 2 = 0 THEN 'gold' END
  FROM generate_series(1, 20) g;
INSERT INTO orders (customer_id, total, note) SELECT 1 + g % 20, g * 1.5, 'n' || g
  FROM generate_series(1, 100) g;
INSERT INTO nokey SELECT 'k' || g, g, 'x' FROM generate_series(1, 5) g;
"""
TABLES = ("customers", "orders", "nokey")


@pytest.fixture
def shop(sql_exec) -> None:  # type: ignore[no-untyped-def]
    sql_exec(SHOP)


@pytest.fixture(params=["db", "dir"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "db" if request.param == "db" else str(tmp_path / "store")


OPS = "SELECT op_id, kind, status, error FROM _recovery.operations ORDER BY 1"


def data(conn: psycopg.Connection, ops: bool = True) -> dict[str, Any]:
    """Every user row, the snapshots (and operations) recorded, the recovery schema's tables.

    Bad input (exit 1) leaves all of it as it was; a refused restore (exit 2) records
    its failed operation, and changes nothing else."""
    out: dict[str, Any] = {t: rows(conn, t, "1, 2") for t in TABLES}
    for q in (
        "SELECT name, manifest FROM _recovery.snapshots ORDER BY 1",
        *([OPS] if ops else []),
        "SELECT relname FROM pg_class WHERE relnamespace = '_recovery'::regnamespace ORDER BY 1",
    ):
        conn.rollback()
        out[q] = conn.execute(q).fetchall()  # type: ignore[arg-type]
    conn.rollback()
    return out


def error_line(res: Result, code: int, *needles: str) -> str:
    """Exit code, and exactly one line on stderr: `error: ...` naming every needle."""
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def no_db(*args: str) -> Result:
    """The CLI with no database configured at all (no --db, no environment)."""
    return CliRunner().invoke(
        main,
        list(args),
        env={"RECOVERY_DB_URL": None, "DATABASE_URL": None},
        catch_exceptions=False,
    )


def store_args(store: str) -> list[str]:
    return ["--store", store]


# -- bad input: exit 1, one line, nothing changed -----------------------------------


def test_bad_input_exit_1_and_nothing_changes(cli, conn, shop, tmp_path, store) -> None:
    st = store_args(store)
    res = cli("snapshot", "create", "good", "--table", "orders", *st, "--yes")
    assert res.exit_code == 0, res.stderr
    before = data(conn)
    listed = json.loads(cli("snapshot", "list", *st, "--json").stdout)
    cases: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
        (("snapshot", "show", "nope", *st), ("no snapshot nope",)),
        (("snapshot", "verify", "nope", *st), ("no snapshot nope",)),
        (("snapshot", "drop", "nope", *st, "--yes"), ("no snapshot nope",)),
        (("restore", "nope", *st, "--yes"), ("no snapshot nope",)),
        (
            ("restore", "good", *st, "--table", "customers", "--yes"),
            ("holds no table 'customers'", "public.orders"),
        ),
        (
            ("snapshot", "create", "s", "--table", "orders", "--where", "total >", *st, "--yes"),
            ("does not parse", "total >"),
        ),
        (
            (
                "snapshot",
                "create",
                "s",
                "--table",
                "orders",
                "--where",
                "true); DROP TABLE customers; --",
                *st,
                "--yes",
            ),
            ("one boolean expression",),
        ),
        (
            ("snapshot", "create", "s", "--table", "orders", "--where", "nope > 1", *st, "--yes"),
            ('column "nope" does not exist',),
        ),
        (
            (
                "snapshot",
                "create",
                "s",
                "--table",
                "orders",
                "--where",
                "orders.customer_id <= 10",
                *st,
                "--yes",
            ),
            ("without the table name",),
        ),
        (
            (
                "snapshot",
                "create",
                "s",
                "--table",
                "orders",
                "--where",
                "x.customer_id <= 10",
                *st,
                "--yes",
            ),
            ('missing FROM-clause entry for table "x"',),
        ),
        (
            ("snapshot", "create", "s", "--table", "nosuch", *st, "--yes"),
            ("table 'nosuch' not found",),
        ),
        (
            ("snapshot", "create", "s", "--table", "nokey", *st, "--yes"),
            ("no primary key", "--key"),
        ),
        (
            ("snapshot", "create", "s", "--table", "nokey", "--key", "note", *st, "--yes"),
            ("allows NULL",),
        ),
        (("snapshot", "create", "good", "--table", "orders", *st, "--yes"), ("exists already",)),
        (
            ("snapshot", "create", "bad/name", "--table", "orders", *st, "--yes"),
            ("invalid snapshot name",),
        ),
        (("snapshot", "create", "s", *st, "--yes"), ("--table",)),
        (
            ("snapshot", "create", "s", "--table", "orders", "--table", "orders", *st, "--yes"),
            ("named twice",),
        ),
        (("restore", "good", *st, "--bogus"), ("--bogus",)),
    ]
    for args, needles in cases:
        res = cli(*args)
        error_line(res, 1, *needles)
        assert res.stdout == "", args
        assert data(conn) == before, args
    assert json.loads(cli("snapshot", "list", *st, "--json").stdout) == listed


def test_store_that_cannot_be_created_or_written(cli, conn, shop, tmp_path) -> None:
    before = data(conn)
    (tmp_path / "file").write_text("")
    res = cli(
        "snapshot",
        "create",
        "s",
        "--table",
        "orders",
        "--store",
        str(tmp_path / "file" / "store"),
        "--yes",
    )
    error_line(res, 1, "cannot be created", str(tmp_path / "file" / "store"))
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
    else:  # root writes anywhere a mode bit forbids: take a directory no one can write
        ro = Path("/proc/self")
    res = cli("snapshot", "create", "s", "--table", "orders", "--store", str(ro), "--yes")
    error_line(res, 1, "not writable", "--store")
    error_line(cli("snapshot", "list", "--store", str(tmp_path / "absent")), 1, "not a directory")
    assert data(conn) == before
    assert not (tmp_path / "absent").exists()


def test_manifest_of_a_newer_format(cli, conn, shop, tmp_path) -> None:
    store = tmp_path / "store"
    assert (
        cli(
            "snapshot", "create", "new", "--table", "orders", "--store", str(store), "--yes"
        ).exit_code
        == 0
    )
    path = store / "new" / "manifest.json"
    m = json.loads(path.read_text())
    m["format"] = 99
    path.write_text(json.dumps(m))
    sql_before = data(conn)
    for args in (
        ("snapshot", "show", "new"),
        ("snapshot", "verify", "new"),
        ("restore", "new", "--yes"),
        ("restore", "new", "--dry-run"),
    ):
        error_line(
            cli(*args, "--store", str(store)),
            1,
            "format 99 is newer",
            "upgrade the recovery package",
        )
    assert data(conn) == sql_before


def test_table_without_primary_key_works_with_key(cli, conn, sql_exec, shop, store) -> None:
    st = store_args(store)
    before = rows(conn, "nokey")
    error_line(
        cli("snapshot", "create", "nk", "--table", "nokey", *st, "--yes"),
        1,
        "table public.nokey has no primary key",
        "--key",
    )
    res = cli(
        "snapshot", "create", "nk", "--table", "nokey", "--key", "code", *st, "--yes", "--json"
    )
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["rows"] == 5
    sql_exec("UPDATE nokey SET n = 0, note = NULL WHERE code IN ('k1', 'k2')")
    sql_exec("DELETE FROM nokey WHERE code = 'k5'")
    sql_exec("INSERT INTO nokey VALUES ('k9', 9, 'later')")
    res = cli("restore", "nk", *st, "--yes")
    assert res.exit_code == 0, res.stderr
    assert rows(conn, "nokey") == [*before, ("k9", 9, "later")]


# -- damaged snapshots: exit 2, named, nothing changed ------------------------------


def _frame(text: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(text)


@pytest.mark.parametrize(
    "damage", ["flip", "truncate", "append", "other-rows", "bad-value", "missing"]
)
def test_damaged_file(cli, conn, sql_exec, shop, tmp_path, damage) -> None:
    store = str(tmp_path / "store")
    assert (
        cli("snapshot", "create", "d", "--table", "customers", "--store", store, "--yes").exit_code
        == 0
    )
    assert (
        cli(
            "snapshot",
            "create",
            "k",
            "--table",
            "nokey",
            "--key",
            "code",
            "--store",
            store,
            "--yes",
        ).exit_code
        == 0
    )
    name = "d" if damage != "bad-value" else "k"
    info = snap.find(None, name, store=store)
    f = Path(store) / name / info.manifest["items"][0]["data"]
    raw = f.read_bytes()
    text = zstandard.ZstdDecompressor().stream_reader(raw).read()
    if damage == "flip":
        b = bytearray(raw)
        b[len(b) // 2] ^= 0x55
        f.write_bytes(bytes(b))
    elif damage == "truncate":
        f.write_bytes(raw[: len(raw) // 2])
    elif damage == "append":
        f.write_bytes(raw + b"\x00")
    elif damage == "other-rows":  # a valid file, other data: only the sha256 tells
        f.write_bytes(_frame(text.replace(b"\tc3\t", b"\tc3x\t")))
    elif damage == "bad-value":  # a valid file whose value breaks the column's domain
        f.write_bytes(_frame(text.replace(b"k1\t1\t", b"k1\t-1\t")))
    else:
        f.unlink()
    sql_exec("UPDATE customers SET name = 'bad' WHERE id <= 3")
    sql_exec("UPDATE nokey SET n = 0")
    before = data(conn, ops=False)
    ops = len(conn.execute(OPS).fetchall())  # type: ignore[arg-type]
    conn.rollback()
    res = cli("snapshot", "verify", name, "--store", store)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: snapshot {name} is damaged: ")
    assert str(f) in res.stderr.strip().splitlines()[-1]
    res = cli("snapshot", "verify", name, "--store", store, "--json")
    line = error_line(res, 2, str(f))
    doc = json.loads(res.stdout)
    assert [i["ok"] for i in doc["items"]] == [False] and not doc["ok"], line
    for json_flag in ((), ("--json",)):
        res = cli("restore", name, "--store", store, "--yes", *json_flag)
        assert res.exit_code == 2, (damage, res.stdout, res.stderr)
        assert res.stderr.strip().splitlines()[-1].startswith("error: "), res.stderr
        assert str(f) in res.stderr and "damaged" in res.stderr, res.stderr
        assert data(conn, ops=False) == before, damage
    res = cli("restore", name, "--store", store, "--dry-run")
    assert res.exit_code == 2, (damage, res.stdout, res.stderr)
    assert data(conn, ops=False) == before
    recorded = conn.execute(OPS).fetchall()  # type: ignore[arg-type]
    conn.rollback()
    assert [(k, s) for _i, k, s, _e in recorded[ops:]] == [("restore", "failed")] * 2
    assert all(str(f) in e for *_x, e in recorded[ops:])


def test_damaged_database_store_snapshot(cli, conn, sql_exec, shop) -> None:
    assert cli("snapshot", "create", "d", "--table", "orders", "--yes").exit_code == 0
    item = snap.find(conn, "d").manifest["items"][0]
    sql_exec(f"UPDATE _recovery.{item['data']} SET note = 'z' WHERE id = 5")  # noqa: S608
    line = error_line(
        cli("snapshot", "verify", "d", "--json"), 2, f"_recovery.{item['data']}", "checksum"
    )
    assert "public.orders" in line
    sql_exec(f"DROP TABLE _recovery.{item['data']}")  # noqa: S608
    error_line(cli("snapshot", "verify", "d", "--json"), 2, "data table is missing")


# -- the contract of each command ---------------------------------------------------


def test_create_json_list_show_verify_drop(cli, conn, shop, store) -> None:
    st = store_args(store)
    res = cli(
        "snapshot",
        "create",
        "s1",
        "--table",
        "orders",
        "--where",
        "customer_id <= 10",
        "--table",
        "customers",
        "--where",
        "true",
        *st,
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)  # one JSON document, nothing else
    assert (doc["name"], doc["rows"]) == ("s1", 70)
    assert [(t["table"], t["rows"], t["where"]) for t in doc["tables"]] == [
        ("public.orders", 50, "customer_id <= 10"),
        ("public.customers", 20, "true"),
    ]
    listed = json.loads(cli("snapshot", "list", *st, "--json").stdout)
    assert [(i["name"], i["rows"]) for i in listed] == [("s1", 70)]
    shown = json.loads(cli("snapshot", "show", "s1", *st, "--json").stdout)
    assert shown["format"] == snap.FORMAT and [i["key"] for i in shown["items"]] == [["id"]] * 2
    res = cli("snapshot", "verify", "s1", *st)
    assert res.exit_code == 0 and "intact" in res.stdout
    before = data(conn)
    # drop: no terminal and no --yes refuses; --yes drops.
    error_line(cli("snapshot", "drop", "s1", *st), 1, "--yes")
    assert data(conn) == before
    assert len(json.loads(cli("snapshot", "list", *st, "--json").stdout)) == 1
    res = cli("snapshot", "drop", "s1", *st, "--yes", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["dropped"] == "s1"
    assert json.loads(cli("snapshot", "list", *st, "--json").stdout) == []
    error_line(cli("snapshot", "show", "s1", *st), 1, "no snapshot s1")
    conn.rollback()
    assert conn.execute(
        "SELECT count(*) FROM pg_class WHERE relnamespace ="
        " '_recovery'::regnamespace AND relname LIKE 'snap\\_%'"
    ).fetchone() == (0,)
    conn.rollback()
    if store != "db":
        assert os.listdir(store) == []


def test_directory_store_needs_no_database(cli, shop, tmp_path) -> None:
    store = str(tmp_path / "store")
    assert (
        cli("snapshot", "create", "s", "--table", "orders", "--store", store, "--yes").exit_code
        == 0
    )
    res = no_db("snapshot", "list", "--store", store, "--json")
    assert res.exit_code == 0, res.stderr
    assert [i["name"] for i in json.loads(res.stdout)] == ["s"]
    res = no_db("snapshot", "list", "--store", store)
    assert res.exit_code == 0 and "public.orders" in res.stdout
    assert no_db("snapshot", "show", "s", "--store", store).exit_code == 0
    assert no_db("snapshot", "verify", "s", "--store", store, "--json").exit_code == 0
    # The database store, and a restore, do need one: said in one line.
    error_line(no_db("snapshot", "list"), 1, "no database given")
    error_line(no_db("restore", "s", "--store", store, "--yes"), 1, "no database given")
    error_line(no_db("snapshot", "drop", "s", "--store", store), 1, "--yes")
    assert no_db("snapshot", "drop", "s", "--store", store, "--yes").exit_code == 0
    assert json.loads(no_db("snapshot", "list", "--store", store, "--json").stdout) == []


def test_restore_dry_run_yes_table_and_undo(cli, conn, sql_exec, shop, store) -> None:
    st = store_args(store)
    assert cli("capture", "enable", "orders", "customers").exit_code == 0
    original = data(conn)
    res = cli("snapshot", "create", "s", "--table", "orders", "--table", "customers", *st, "--yes")
    assert res.exit_code == 0, res.stderr
    sql_exec("UPDATE orders SET total = 0 WHERE customer_id <= 5")
    sql_exec("DELETE FROM orders WHERE customer_id = 7")
    sql_exec("UPDATE customers SET name = 'x' WHERE id IN (3, 4)")
    damaged = data(conn)
    # --dry-run: the plan, and nothing changes.
    res = cli("restore", "s", *st, "--dry-run", "--json")
    assert res.exit_code == 0, res.stderr
    plan = {t["table"]: t for t in json.loads(res.stdout)["tables"]}
    assert (plan["public.orders"]["restore"], plan["public.orders"]["reinsert"]) == (25, 5)
    assert (plan["public.customers"]["restore"], plan["public.customers"]["reinsert"]) == (2, 0)
    res = cli("restore", "s", *st, "--dry-run")
    assert res.exit_code == 0 and "dry run" in res.stdout
    assert data(conn) == damaged
    # No --yes and no terminal: the plan is shown, then a refusal.
    res = cli("restore", "s", *st)
    error_line(res, 1, "--yes")
    assert "public.orders" in res.stdout
    assert data(conn) == damaged
    # --table: that table only.
    res = cli("restore", "s", *st, "--table", "customers", "--yes")
    assert res.exit_code == 0, res.stderr
    now = data(conn)
    assert now["customers"] == original["customers"] and now["orders"] == damaged["orders"]
    res = cli("restore", "s", *st, "--table", "public.orders", "--yes")
    assert res.exit_code == 0, res.stderr
    tag = res.stdout.strip().splitlines()[-1].split("--tag ")[1]
    assert tag.startswith("recovery-restore-")
    assert data(conn)["orders"] == original["orders"]  # triggers suspended: updated_at kept
    # The restore was captured under its tag: rolling that tag back undoes it, row by row.
    res = cli("rollback", "--tag", tag, "--yes")
    assert res.exit_code == 0, res.stderr
    assert data(conn)["orders"] == damaged["orders"]
    assert data(conn)["customers"] == original["customers"]
    # And a restore with --json is one document naming its tag.
    res = cli("restore", "s", *st, "--yes", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["status"] == "done" and doc["tag"].startswith("recovery-restore-")
    assert data(conn)["orders"] == original["orders"]


# -- killed midway ------------------------------------------------------------------


def _admin(db_url: str) -> psycopg.Connection:
    return psycopg.connect(db_url, autocommit=True)


def test_killed_midway_leaves_nothing(cli, conn, db_url, sql_exec, store, tmp_path) -> None:
    # About 170 MB: a snapshot of it takes one or two seconds in either store.
    sql_exec(
        "CREATE TABLE big (id int, pad text);"
        " INSERT INTO big SELECT g, repeat(md5(g::text), 4)"
        "  FROM generate_series(1, 1000000) g;"
        " ALTER TABLE big ADD PRIMARY KEY (id)"
    )
    st = [] if store == "db" else ["--store", store]
    env = {k: v for k, v in os.environ.items() if k not in ("RECOVERY_DB_URL", "DATABASE_URL")}
    errors = tmp_path / "stderr"
    with open(errors, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "recovery",
                "snapshot",
                "create",
                "big",
                "--table",
                "big",
                "--db",
                db_url,
                "--yes",
                *st,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    backend = None
    deadline = time.monotonic() + 30
    try:
        with _admin(db_url) as admin:
            while time.monotonic() < deadline:
                assert proc.poll() is None, errors.read_text()
                if store == "db":
                    row = admin.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                        " AND state = 'active' AND query LIKE 'CREATE TABLE %%snap\\_%%'"
                    ).fetchone()
                    if row:
                        backend = row[0]
                        time.sleep(0.2)
                        break
                else:
                    tmp = list(Path(store).glob(".big.tmp-*/*.copy.zst"))
                    if tmp and tmp[0].stat().st_size > 0:
                        break
                time.sleep(0.01)
            else:
                pytest.fail("the snapshot never got under way")
            assert proc.poll() is None, "the snapshot finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            # The server aborts the dead client's transaction once it notices.
            while (
                backend is not None
                and admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [backend]
                ).fetchone()
            ):
                assert time.monotonic() < deadline, "the killed client's backend stays"
                time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The operation says it was interrupted (once the server let the dead session go).
    while not [o for o in list_operations(conn) if o.kind == "snapshot"][0].interrupted:
        assert time.monotonic() < deadline + 10, "the snapshot never showed as interrupted"
        time.sleep(0.05)
    assert [o for o in list_operations(conn) if o.kind == "snapshot"][0].status == "running"
    assert "running, interrupted" in cli("operations").stdout
    found = None if store == "db" else store
    assert snap.list_snapshots(conn, store=found) == []
    res = cli("snapshot", "list", *st, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == []
    if store != "db":  # the left-over directory is named, not listed
        assert "warning: not listed: .big.tmp-" in res.stderr
        assert "incomplete snapshot big" in res.stderr
    error_line(cli("snapshot", "show", "big", *st), 1, "no snapshot big")
    conn.rollback()
    assert (
        conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace ="
            " '_recovery'::regnamespace AND relname LIKE 'snap\\_%'"
        ).fetchall()
        == []
    )
    conn.rollback()
    if store != "db":  # the half-written snapshot is hidden, never under its name
        assert [p.name for p in Path(store).iterdir() if not p.name.startswith(".")] == []
    res = cli("snapshot", "create", "big", "--table", "big", *st, "--yes", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["rows"] == 1_000_000
    res = cli("snapshot", "verify", "big", *st, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["ok"]
    assert [i.name for i in snap.list_snapshots(conn, store=found)] == ["big"]
    newest = [o for o in list_operations(conn) if o.kind == "snapshot"][0]
    assert (newest.status, newest.interrupted) == ("done", False)
