"""The demo and the benchmark runner, at small scale, so that neither can rot."""

import json
import subprocess
import sys
from pathlib import Path

from recovery.cli.demo import run_demo

ROOT = Path(__file__).resolve().parent.parent


def test_demo_checks_every_row(server_url):
    lines: list[str] = []
    result = run_demo(server_url, rows=3000, echo=lines.append)
    assert result["ok"], "\n".join(lines)
    assert set(result["mismatches"].values()) == {0}
    undo = result["undo"]
    assert undo["status"] == "done"
    by_table = {t["table"]: t for t in undo["tables"]}
    # The deploy deleted customers with their orders, items and payments: all re-inserted.
    assert by_table["public.customers"]["inserted"] > 0
    assert by_table["public.payments"]["inserted"] > 0
    # The support agent's hand fix is the one conflict, and it is kept.
    assert undo["conflicts"] == 1
    assert any("every row is as it should be" in line for line in lines)


def test_demo_cli_with_db_leaves_no_scratch_database(server_url):
    import psycopg

    with psycopg.connect(server_url) as c:
        before = {r[0] for r in c.execute("SELECT datname FROM pg_database")}
    out = subprocess.run(
        [sys.executable, "-m", "recovery", "demo", "--db", server_url, "--rows", "1500", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(out.stdout)
    assert doc["ok"] is True
    with psycopg.connect(server_url) as c:
        after = {r[0] for r in c.execute("SELECT datname FROM pg_database")}
    assert after == before


def test_benchmark_smoke(db_url, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--scale",
            "0.002",
            "--runs",
            "1",
            "--pgbench-seconds",
            "1",
            "--db",
            db_url,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "UPDATE of every row, capture on / off" in out.stdout
    assert "CLI peak memory" in out.stdout
    assert "Floors: what the mechanisms cost" in out.stdout
    assert "floor of a restore" in out.stdout
