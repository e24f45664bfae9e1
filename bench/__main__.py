"""Benchmarks: every figure as a ratio against a baseline measured in the same run.

    python -m bench                 # default scale: 1M-row table, 3 runs each
    python -m bench --scale 0.01    # smoke (seconds)
    python -m bench --scale 10      # 10M rows

Starts its own PostgreSQL (the machine's binaries, durable default settings),
prints a Markdown report, writes it to docs/BENCHMARKS.md (with --write) and the
raw figures to bench/results.json.  Each figure is the median of --runs runs,
with the spread (min..max).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from recovery import embedded

from . import wal as wal_section

ROOT = Path(__file__).resolve().parent.parent
TABLE_SQL = (
    "CREATE TABLE {t} (id int PRIMARY KEY, a int NOT NULL, b text NOT NULL, c numeric NOT NULL,"
    " d timestamptz NOT NULL)"
)
FILL_SQL = (
    "INSERT INTO {t} SELECT g, g, md5(g::text), g * 1.5, timestamptz '2026-01-01' + g * interval"
    " '1 second' FROM generate_series(1, {n}) g"
)
CLASSIC_TRIGGER = """
CREATE TABLE IF NOT EXISTS audit_log (id bigserial PRIMARY KEY, tbl text, op text,
    old_row jsonb, new_row jsonb, at timestamptz DEFAULT now(), txid bigint DEFAULT txid_current());
CREATE OR REPLACE FUNCTION classic_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log (tbl, op, old_row, new_row) VALUES (TG_TABLE_NAME, TG_OP,
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
END $$;
"""

FLOOR_FUNCTIONS = """
CREATE TABLE IF NOT EXISTS floor_journal (stmt bigint, id int, a int, b text, c numeric,
    d timestamptz);
CREATE OR REPLACE FUNCTION floor_noop() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RETURN NULL; END $$;
CREATE OR REPLACE FUNCTION floor_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO floor_journal SELECT txid_current(), r.* FROM rec_old r; RETURN NULL; END $$;
"""
PGBENCH_NOOP = """
CREATE OR REPLACE FUNCTION bench_noop() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$ BEGIN RETURN NULL; END $$;
CREATE OR REPLACE FUNCTION bench_noop_b() RETURNS trigger LANGUAGE plpgsql
AS $$ BEGIN RETURN NULL; END $$;
"""
# As capture has them: the BEFORE function plain (no SECURITY DEFINER, no SET), the
# AFTER one SECURITY DEFINER with a pinned search_path.
NOOP_TRIGGERS = [
    ("BEFORE INSERT OR UPDATE OR DELETE", "", "bench_noop_b"),
    ("AFTER INSERT", "REFERENCING NEW TABLE AS rec_new", "bench_noop"),
    ("AFTER UPDATE", "REFERENCING OLD TABLE AS rec_old NEW TABLE AS rec_new", "bench_noop"),
    ("AFTER DELETE", "REFERENCING OLD TABLE AS rec_old", "bench_noop"),
]
FLOOR_UNDO = "UPDATE floor_t t SET a = s.a FROM floor_saved s WHERE t.id = s.id"


def _median(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


class Bench:
    def __init__(self, url: str, scale: float, runs: int) -> None:
        self.url = url
        self.scale = scale
        self.runs = runs
        self.rows = max(int(1_000_000 * scale), 1000)
        self.results: dict[str, Any] = {}

    def conn(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def timed(self, c: psycopg.Connection, query: str) -> float:
        c.execute("CHECKPOINT")
        t0 = time.perf_counter()
        c.execute(query)
        return time.perf_counter() - t0

    def fresh(self, c: psycopg.Connection, name: str) -> None:
        c.execute(f"DROP TABLE IF EXISTS {name}")
        c.execute(TABLE_SQL.format(t=name))
        c.execute(FILL_SQL.format(t=name, n=self.rows))
        c.execute(f"VACUUM ANALYZE {name}")

    def cli(self, *args: str) -> tuple[float, int]:
        """Run the recovery CLI in a child; return (seconds, peak RSS in MB of that child)."""
        probe = (
            "import resource, subprocess, sys, time;"
            "t = time.perf_counter();"
            "r = subprocess.run(sys.argv[1:]);"
            "d = time.perf_counter() - t;"
            "print(d, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
            "sys.exit(r.returncode)"
        )
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                probe,
                sys.executable,
                "-m",
                "recovery",
                *args,
                "--db",
                self.url,
                "--yes",
                "--quiet",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if args[:1] == ("init",):
            # Scratch databases: nobody to approve the large undos and restores measured.
            with psycopg.connect(self.url, autocommit=True) as c:
                c.execute(
                    "UPDATE _recovery.meta SET value = '1000000000'"
                    " WHERE key IN ('approval_rows', 'approval_tables')"
                )
        return float(out[0]), int(out[1]) // 1024

    # -- sections --------------------------------------------------------------
    def capture_and_undo(self) -> None:
        """Bulk UPDATE, DELETE, INSERT with and without capture; undo of the UPDATE by the CLI."""
        c = self.conn()
        self.cli("init")
        figures: dict[str, list[float]] = {
            k: []
            for k in (
                "update_plain",
                "update_capture",
                "update_classic",
                "undo_update",
                "delete_plain",
                "delete_capture",
                "insert_plain",
                "insert_capture",
                "delete_classic",
                "insert_classic",
            )
        }
        rss: list[int] = []
        n = self.rows
        for run in range(self.runs):
            tag = f"bench-update-{run}"
            self.fresh(c, "plain_t")
            figures["update_plain"].append(self.timed(c, "UPDATE plain_t SET a = a + 1"))
            self.fresh(c, "cap_t")
            self.cli("capture", "enable", "cap_t")
            c.execute("SELECT set_config('recovery.tag', %s, false)", [tag])
            figures["update_capture"].append(self.timed(c, "UPDATE cap_t SET a = a + 1"))
            c.execute("RESET recovery.tag")
            secs, mb = self.cli("rollback", "--tag", tag)
            figures["undo_update"].append(secs)
            rss.append(mb)
            # DELETE of every row, then INSERT of as many into the empty table.
            figures["delete_plain"].append(self.timed(c, "DELETE FROM plain_t"))
            figures["delete_capture"].append(self.timed(c, "DELETE FROM cap_t"))
            figures["insert_plain"].append(self.timed(c, FILL_SQL.format(t="plain_t", n=n)))
            figures["insert_capture"].append(self.timed(c, FILL_SQL.format(t="cap_t", n=n)))
            self.cli("capture", "disable", "cap_t", "--yes")
            c.execute("DROP TABLE cap_t")
            self.fresh(c, "classic_t")
            c.execute(CLASSIC_TRIGGER)
            c.execute(
                "CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON classic_t "
                "FOR EACH ROW EXECUTE FUNCTION classic_audit()"
            )
            figures["update_classic"].append(self.timed(c, "UPDATE classic_t SET a = a + 1"))
            figures["delete_classic"].append(self.timed(c, "DELETE FROM classic_t"))
            figures["insert_classic"].append(self.timed(c, FILL_SQL.format(t="classic_t", n=n)))
            c.execute("DROP TABLE classic_t; TRUNCATE audit_log")

        def per_run(num: str, den: str) -> list[float]:
            return [a / b for a, b in zip(figures[num], figures[den])]

        ratio = {
            "capture_update": per_run("update_capture", "update_plain"),
            "classic_update": per_run("update_classic", "update_plain"),
            "undo_update": per_run("undo_update", "update_plain"),
            "undo_vs_captured_update": per_run("undo_update", "update_capture"),
            "capture_delete": per_run("delete_capture", "delete_plain"),
            "capture_insert": per_run("insert_capture", "insert_plain"),
            "classic_delete": per_run("delete_classic", "delete_plain"),
            "classic_insert": per_run("insert_classic", "insert_plain"),
        }
        self.results["capture"] = {
            "rows": n,
            "seconds": {k: _median(v) for k, v in figures.items()},
            "ratios": {k: _median(v) for k, v in ratio.items()},
            "undo_rows_per_second": n / statistics.median(figures["undo_update"]),
            "cli_peak_rss_mb": max(rss),
        }
        c.close()

    def floors(self) -> None:
        """What the mechanisms cost before any of our work: the floor under each target.

        Statement-level AFTER triggers with transition tables are the capture mechanism
        (FIELD.md: the cheapest that keeps typed before-images); an in-place UPDATE ...
        FROM is the least an undo or a restore must write.  These figures say how far
        below the targets the mechanisms themselves already are on this machine.
        """
        c = self.conn()
        c.execute(FLOOR_FUNCTIONS)
        figures: dict[str, list[float]] = {
            k: []
            for k in ("plain", "tt_noop", "before_copy", "update_from", "update_from_captured")
        }
        for _ in range(self.runs):
            # Each UPDATE of every row starts from a freshly loaded table, and each
            # undo follows its UPDATE on that table: the same state in every mode.
            self.fresh(c, "floor_t")
            c.execute("DROP TABLE IF EXISTS floor_saved")
            c.execute("CREATE TABLE floor_saved AS SELECT * FROM floor_t")
            c.execute("VACUUM ANALYZE floor_saved")
            figures["plain"].append(self.timed(c, "UPDATE floor_t SET a = a + 1"))
            # The minimal undo: every row back from a typed copy, one UPDATE ... FROM.
            c.execute("VACUUM ANALYZE floor_t")
            figures["update_from"].append(self.timed(c, FLOOR_UNDO))
            # The capture mechanism with a trigger that does nothing.
            self.fresh(c, "floor_t")
            c.execute(
                "CREATE TRIGGER floor_noop AFTER UPDATE ON floor_t REFERENCING OLD TABLE"
                " AS rec_old NEW TABLE AS rec_new FOR EACH STATEMENT EXECUTE FUNCTION"
                " floor_noop()"
            )
            figures["tt_noop"].append(self.timed(c, "UPDATE floor_t SET a = a + 1"))
            # Before-images only, typed (FIELD.md's 1.06-1.3x): no after-image, no pairing.
            self.fresh(c, "floor_t")
            c.execute(
                "CREATE TRIGGER floor_copy AFTER UPDATE ON floor_t REFERENCING OLD TABLE"
                " AS rec_old FOR EACH STATEMENT EXECUTE FUNCTION floor_copy()"
            )
            c.execute("TRUNCATE floor_journal")
            figures["before_copy"].append(self.timed(c, "UPDATE floor_t SET a = a + 1"))
            # The minimal undo whose own writes are kept (so that it can be undone).
            c.execute("TRUNCATE floor_journal")
            c.execute("VACUUM ANALYZE floor_t")
            figures["update_from_captured"].append(self.timed(c, FLOOR_UNDO))
            c.execute("DROP TABLE floor_t, floor_saved")
            c.execute("TRUNCATE floor_journal")
        c.execute("DROP TABLE floor_journal")

        def per_run(num: str) -> dict[str, float]:
            return _median([a / b for a, b in zip(figures[num], figures["plain"])])

        self.results["floors"] = {
            "rows": self.rows,
            "seconds": {k: _median(v) for k, v in figures.items()},
            "ratios": {k: per_run(k) for k in figures if k != "plain"},
        }
        c.close()

    def memory_scales(self) -> None:
        """Peak RSS of the CLI for each operation, on a table of a tenth of the scale and on
        the full one: it must not grow with the rows."""
        c = self.conn()
        self.cli("init")
        store = ROOT / "bench" / "_memstore"
        ops = [
            "changes",
            "diff",
            "rollback",
            "snapshot create (directory)",
            "snapshot verify",
            "restore (directory)",
            "snapshot create (database)",
        ]
        rss: dict[str, dict[str, int]] = {op: {} for op in ops}
        sizes = {"small": max(self.rows // 10, 1000), "large": self.rows}
        for size, rows in sizes.items():
            shutil.rmtree(store, ignore_errors=True)
            c.execute("DROP TABLE IF EXISTS mem_t")
            c.execute(TABLE_SQL.format(t="mem_t"))
            c.execute(FILL_SQL.format(t="mem_t", n=rows))
            self.cli("capture", "enable", "mem_t")
            tag = f"bench-mem-{size}"
            c.execute("SELECT set_config('recovery.tag', %s, false)", [tag])
            c.execute("UPDATE mem_t SET a = a + 1")
            c.execute("RESET recovery.tag")
            rss["changes"][size] = self.cli("changes", "--tag", tag)[1]
            rss["diff"][size] = self.cli("diff", "--tag", tag, "--limit", "1000")[1]
            rss["snapshot create (directory)"][size] = self.cli(
                "snapshot", "create", "mem", "--table", "mem_t", "--store", str(store)
            )[1]
            rss["snapshot create (database)"][size] = self.cli(
                "snapshot", "create", f"mem-{size}", "--table", "mem_t"
            )[1]
            if size == "large" and "capture" in self.results:
                # The capture section undid this same 1M-row UPDATE three times already.
                rss["rollback"][size] = self.results["capture"]["cli_peak_rss_mb"]
            else:
                rss["rollback"][size] = self.cli("rollback", "--tag", tag)[1]
            rss["snapshot verify"][size] = self.cli(
                "snapshot", "verify", "mem", "--store", str(store)
            )[1]
            rss["restore (directory)"][size] = self.cli("restore", "mem", "--store", str(store))[1]
            self.cli("snapshot", "drop", f"mem-{size}")
            self.cli("capture", "disable", "mem_t", "--yes")
        shutil.rmtree(store, ignore_errors=True)
        c.execute("DROP TABLE IF EXISTS mem_t")
        self.results["memory"] = {
            "rows_small": sizes["small"],
            "rows_large": sizes["large"],
            "rss_mb": rss,
        }
        c.close()

    def undo_kinds(self) -> None:
        """Undo (CLI end to end) of 10% deleted and 10% inserted rows, against the bad statement."""
        self.cli("init")
        c = self.conn()
        n = self.rows
        figures: dict[str, list[float]] = {
            k: [] for k in ("delete", "undo_delete", "insert", "undo_insert")
        }
        for run in range(self.runs):
            self.fresh(c, "kinds_t")
            self.cli("capture", "enable", "kinds_t")
            c.execute("SELECT set_config('recovery.tag', %s, false)", [f"bench-del-{run}"])
            figures["delete"].append(self.timed(c, "DELETE FROM kinds_t WHERE id % 10 = 0"))
            c.execute("SELECT set_config('recovery.tag', %s, false)", [f"bench-ins-{run}"])
            figures["insert"].append(
                self.timed(
                    c,
                    FILL_SQL.format(t="kinds_t", n=n // 10).replace(
                        "generate_series(1,", f"generate_series({n + 1}, {n} +"
                    ),
                )
            )
            c.execute("RESET recovery.tag")
            figures["undo_delete"].append(self.cli("rollback", "--tag", f"bench-del-{run}")[0])
            figures["undo_insert"].append(self.cli("rollback", "--tag", f"bench-ins-{run}")[0])
            self.cli("capture", "disable", "kinds_t")
            c.execute("DROP TABLE kinds_t")
        self.results["undo_kinds"] = {
            "rows": n // 10,
            "seconds": {k: _median(v) for k, v in figures.items()},
            "ratios": {
                "undo_delete": _median(
                    [a / b for a, b in zip(figures["undo_delete"], figures["delete"])]
                ),
                "undo_insert": _median(
                    [a / b for a, b in zip(figures["undo_insert"], figures["insert"])]
                ),
            },
            "rows_per_second": {
                "undo_delete": (n // 10) / statistics.median(figures["undo_delete"]),
                "undo_insert": (n // 10) / statistics.median(figures["undo_insert"]),
            },
        }
        c.close()

    def damage_not_size(self) -> None:
        """Undo of the same number of damaged rows in a table and in one ten times larger."""
        self.cli("init")
        c = self.conn()
        big = self.rows
        small = max(big // 10, 1000)
        damaged = max(big // 100, 100)
        secs: dict[str, list[float]] = {"small": [], "big": []}
        for run in range(self.runs):
            for size, rows in (("small", small), ("big", big)):
                c.execute("DROP TABLE IF EXISTS size_t")
                c.execute(TABLE_SQL.format(t="size_t"))
                c.execute(FILL_SQL.format(t="size_t", n=rows))
                c.execute("VACUUM ANALYZE size_t")
                self.cli("capture", "enable", "size_t")
                tag = f"bench-size-{size}-{run}"
                c.execute("SELECT set_config('recovery.tag', %s, false)", [tag])
                step = rows // damaged
                c.execute(f"UPDATE size_t SET a = -a WHERE id % {step} = 0")
                c.execute("RESET recovery.tag")
                secs[size].append(self.cli("rollback", "--tag", tag)[0])
                self.cli("capture", "disable", "size_t", "--yes")
                c.execute("DROP TABLE size_t")
        self.results["damage_not_size"] = {
            "damaged": damaged,
            "small": small,
            "big": big,
            "seconds": {k: _median(v) for k, v in secs.items()},
            "ratio": _median([b / a for a, b in zip(secs["small"], secs["big"])]),
        }
        c.close()

    def snapshots(self) -> None:
        """Snapshot create and restore, both stores, against CTAS, COPY, pg_dump, pg_restore."""
        from recovery import snapshot as snap
        from recovery.restore import restore

        self.cli("init")
        bindir = embedded.find_bindir()
        have_dump = bindir is not None and (bindir / "pg_dump").exists()
        if have_dump:
            # pg_dump refuses a server newer than itself (e.g. PG 15 tools, pgserver's 16).
            assert bindir is not None
            ver = subprocess.run(
                [str(bindir / "pg_dump"), "--version"], capture_output=True, text=True
            ).stdout
            m = re.search(r"\)\s+(\d+)", ver)
            with psycopg.connect(self.url) as vc:
                server = vc.info.server_version // 10000
            have_dump = m is not None and int(m.group(1)) >= server
        c = self.conn()
        lib = psycopg.connect(self.url)
        store = ROOT / "bench" / "_store"
        dump = ROOT / "bench" / "_dump.fc"
        figures: dict[str, list[float]] = {
            k: []
            for k in (
                "ctas",
                "snap_db",
                "pg_dump",
                "snap_dir",
                "copy_from",
                "update_from_copy",
                "restore_dir",
                "pg_restore",
                "restore_dir_dropped",
            )
        }
        env = dict(os.environ, PGOPTIONS="")
        for run in range(self.runs):
            shutil.rmtree(store, ignore_errors=True)
            self.fresh(c, "snap_t")
            c.execute("DROP TABLE IF EXISTS ctas_t")
            figures["ctas"].append(self.timed(c, "CREATE TABLE ctas_t AS SELECT * FROM snap_t"))
            c.execute("DROP TABLE ctas_t")
            c.execute("CHECKPOINT")
            t0 = time.perf_counter()
            snap.create(lib, f"db{run}", snap.table_specs(lib, ["snap_t"], []))
            figures["snap_db"].append(time.perf_counter() - t0)
            if have_dump:
                c.execute("CHECKPOINT")
                t0 = time.perf_counter()
                subprocess.run(
                    [str(bindir / "pg_dump"), "-Fc", "-t", "snap_t", "-f", str(dump), self.url],
                    check=True,
                    capture_output=True,
                    env=env,
                )
                figures["pg_dump"].append(time.perf_counter() - t0)
            c.execute("CHECKPOINT")
            t0 = time.perf_counter()
            snap.create(lib, "dir", snap.table_specs(lib, ["snap_t"], []), store=str(store))
            figures["snap_dir"].append(time.perf_counter() - t0)
            # The baseline of a restore: COPY FROM of the same rows into an empty copy.
            text = bytearray()
            with lib.cursor().copy("COPY snap_t TO STDOUT") as cp:
                for chunk in cp:
                    text += chunk
            lib.rollback()
            c.execute("DROP TABLE IF EXISTS copy_t")
            c.execute(TABLE_SQL.format(t="copy_t"))
            c.execute("CHECKPOINT")
            t0 = time.perf_counter()
            with lib.cursor().copy("COPY copy_t FROM STDIN") as cp:
                for i in range(0, len(text), 1 << 20):
                    cp.write(text[i : i + (1 << 20)])
            lib.commit()
            figures["copy_from"].append(time.perf_counter() - t0)
            del text
            # The floor of a restore: with the saved rows already loaded, one in-place
            # UPDATE ... FROM writing every row back (no file read, no comparison).
            c.execute("UPDATE snap_t SET a = -a, b = 'x'")
            c.execute("VACUUM ANALYZE snap_t, copy_t")
            figures["update_from_copy"].append(
                self.timed(
                    c,
                    "UPDATE snap_t t SET a = s.a, b = s.b, c = s.c, d = s.d FROM copy_t s"
                    " WHERE t.id = s.id",
                )
            )
            c.execute("DROP TABLE copy_t")
            # Every row changed, then restored from each store.
            # (The database store's restore differs only by not loading a file: left out
            # to keep the default run under ten minutes.)
            for key, where in (("restore_dir", str(store)),):
                c.execute("UPDATE snap_t SET a = -a, b = 'x'")
                c.execute("VACUUM ANALYZE snap_t")
                c.execute("CHECKPOINT")
                name = "dir" if where != "db" else f"db{run}"
                t0 = time.perf_counter()
                restore(lib, snap.find(lib, name, store=where))
                figures[key].append(time.perf_counter() - t0)
            # The table dropped: recreated and loaded, against pg_restore of the dump.
            c.execute("DROP TABLE snap_t")
            c.execute("CHECKPOINT")
            t0 = time.perf_counter()
            restore(lib, snap.find(lib, "dir", store=str(store)))
            figures["restore_dir_dropped"].append(time.perf_counter() - t0)
            if have_dump:
                c.execute("DROP TABLE snap_t")
                c.execute("CHECKPOINT")
                t0 = time.perf_counter()
                subprocess.run(
                    [str(bindir / "pg_restore"), "-d", self.url, str(dump)],
                    check=True,
                    capture_output=True,
                    env=env,
                )
                figures["pg_restore"].append(time.perf_counter() - t0)
            snap.drop(lib, snap.find(lib, f"db{run}", store="db"))
            c.execute("DROP TABLE IF EXISTS snap_t")
        size = sum(f.stat().st_size for f in (store / "dir").iterdir())
        shutil.rmtree(store, ignore_errors=True)
        dump.unlink(missing_ok=True)
        lib.close()

        def ratio(a: str, b: str) -> dict[str, float] | None:
            if not figures[a] or not figures[b]:
                return None
            return _median([x / y for x, y in zip(figures[a], figures[b])])

        self.results["snapshots"] = {
            "rows": self.rows,
            "dir_bytes": size,
            "seconds": {k: _median(v) for k, v in figures.items() if v},
            "ratios": {
                "db_vs_ctas": ratio("snap_db", "ctas"),
                "dir_vs_pg_dump": ratio("snap_dir", "pg_dump"),
                "restore_dir_vs_copy_from": ratio("restore_dir", "copy_from"),
                "restore_dropped_vs_pg_restore": ratio("restore_dir_dropped", "pg_restore"),
                "update_from_vs_copy_from": ratio("update_from_copy", "copy_from"),
                "restore_floor_vs_copy_from": _median(
                    [(a + b) / b for a, b in zip(figures["update_from_copy"], figures["copy_from"])]
                ),
            },
        }
        c.close()

    def pitr(self) -> None:
        """Recovering from a bad deploy by point-in-time recovery, against `recovery rollback`.

        A cluster of its own with WAL archiving: base backup (pg_basebackup), capture
        on, the bad deploy (tagged UPDATE of 10% of the rows), then legitimate writes:
        updates to rows the deploy damaged and to rows it did not, and inserts.  PITR
        route: restore the backup into a second cluster with recovery_target_time just
        before the deploy, wait for it to be promoted, copy the damaged rows (the
        deploy's own WHERE: the operator must know it) back into the live table.
        Counted for each route: seconds, and legitimate writes lost (checked row by row
        against the expected state).
        """
        bindir = embedded.find_bindir()
        if bindir is None or not (bindir / "pg_basebackup").exists():
            self.results["pitr"] = {"skipped": "pg_basebackup not found"}
            return
        work = Path(tempfile.mkdtemp(prefix="recovery-bench-pitr-"))
        archive = work / "archive"
        archive.mkdir()
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            for d in (work, archive):
                os.chown(d, pw.pw_uid, pw.pw_gid)
        live = embedded.start_local(
            bindir,
            fast=False,
            conf={
                "wal_level": "replica",
                "archive_mode": "on",
                "archive_command": f"cp %p {archive}/%f",
            },
        )
        second = None
        n = self.rows
        try:
            url = live.url
            c = psycopg.connect(url, autocommit=True)
            c.execute(TABLE_SQL.format(t="pitr_t"))
            c.execute(FILL_SQL.format(t="pitr_t", n=n))
            c.execute("VACUUM ANALYZE pitr_t")
            run = functools.partial(self.cli_at, url)
            run("init")
            run("capture", "enable", "pitr_t")
            t0 = time.perf_counter()
            subprocess.run(
                embedded._as_server_user(
                    [
                        str(bindir / "pg_basebackup"),
                        "-D",
                        str(work / "base"),
                        "-X",
                        "stream",
                        "-c",
                        "fast",
                        "-d",
                        url,
                    ]
                ),
                check=True,
                capture_output=True,
            )
            backup_s = time.perf_counter() - t0
            time.sleep(1.1)
            target = c.execute("SELECT clock_timestamp()::text").fetchone()[0]  # type: ignore[index]
            time.sleep(1.1)
            bad = "id % 10 = 0"
            c.execute("SET recovery.tag = 'bench-bad-deploy'")
            t0 = time.perf_counter()
            c.execute(f"UPDATE pitr_t SET c = 0, b = 'corrupted' WHERE {bad}")  # noqa: S608
            deploy_s = time.perf_counter() - t0
            c.execute("RESET recovery.tag")
            # Legitimate writes after the deploy: 1% of rows (half of them damaged ones)
            # get a new a; 1% new rows.
            c.execute("UPDATE pitr_t SET a = -a WHERE id % 100 IN (0, 5)")
            c.execute(
                FILL_SQL.format(t="pitr_t", n=n // 100).replace(
                    "generate_series(1,", f"generate_series({n + 1}, {n} +"
                )
            )
            legit = c.execute(
                "SELECT count(*) FROM pitr_t WHERE id %% 100 IN (0, 5) OR id > %s", [n]
            ).fetchone()[0]  # type: ignore[index]
            c.execute("SELECT pg_switch_wal()")
            c.execute("CHECKPOINT")
            time.sleep(1.0)  # let the archiver copy the last segment
            # Expected after a perfect recovery: damaged columns back, legitimate writes kept.
            c.execute(
                "CREATE TABLE expected AS SELECT id, a, CASE WHEN id %% 10 = 0 AND id <= %s"
                " THEN md5(id::text) ELSE b END AS b, CASE WHEN id %% 10 = 0 AND id <= %s"
                " THEN id * 1.5 ELSE c END AS c, d FROM pitr_t",
                [n, n],
            )
            c.execute("CREATE TABLE damaged_state AS SELECT * FROM pitr_t")

            def lost() -> int:
                return c.execute(
                    "SELECT count(*) FROM expected e FULL JOIN pitr_t t USING (id)"
                    " WHERE (e.id %% 100 IN (0, 5) OR e.id > %s OR t.id > %s)"
                    " AND (e.*)::text IS DISTINCT FROM (t.*)::text",
                    [n, n],
                ).fetchone()[0]  # type: ignore[index]

            def wrong() -> int:
                return c.execute(
                    "SELECT count(*) FROM expected e FULL JOIN pitr_t t USING (id)"
                    " WHERE (e.*)::text IS DISTINCT FROM (t.*)::text"
                ).fetchone()[0]  # type: ignore[index]

            # PITR route.
            t0 = time.perf_counter()
            data2 = work / "restored"
            subprocess.run(
                embedded._as_server_user(["cp", "-a", str(work / "base"), str(data2)]), check=True
            )
            with open(data2 / "postgresql.auto.conf", "a") as f:
                f.write(
                    f"restore_command = 'cp {archive}/%f %p'\n"
                    f"recovery_target_time = '{target}'\n"
                    "recovery_target_action = 'promote'\narchive_mode = 'off'\n"
                )
            (data2 / "recovery.signal").touch()
            if os.geteuid() == 0:
                os.chown(data2 / "recovery.signal", pw.pw_uid, pw.pw_gid)
            port = embedded._free_port()
            subprocess.run(
                embedded._as_server_user(
                    [
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(data2),
                        "-w",
                        "-t",
                        "600",
                        "-l",
                        str(work / "restored.log"),
                        "-o",
                        f"-c port={port} -c listen_addresses=127.0.0.1"
                        f" -c unix_socket_directories={work} "
                        # the primary's settings (recovery needs at least its
                        # max_wal_senders; WAL capture its wal_level)
                        + " ".join(f"-c {k}={v}" for k, v in embedded.LOGICAL.items()),
                        "start",
                    ]
                ),
                check=True,
                capture_output=True,
            )
            second = data2
            url2 = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            c2 = psycopg.connect(url2, autocommit=True)
            while c2.execute("SELECT pg_is_in_recovery()").fetchone()[0]:  # type: ignore[index]
                time.sleep(0.1)
            text = bytearray()
            with c2.cursor().copy(f"COPY (SELECT * FROM pitr_t WHERE {bad}) TO STDOUT") as cp:
                for chunk in cp:
                    text += chunk
            c.execute("CREATE TEMP TABLE back (LIKE pitr_t)")
            with c.cursor().copy("COPY back FROM STDIN") as cp:
                cp.write(bytes(text))
            c.execute(
                "UPDATE pitr_t t SET a = b.a, b = b.b, c = b.c, d = b.d FROM back b"
                " WHERE b.id = t.id"
            )
            pitr_s = time.perf_counter() - t0
            c2.close()
            pitr_lost, pitr_wrong = lost(), wrong()
            # Back to the damaged state, then our route.
            c.execute("SET session_replication_role = replica")  # not captured, not tagged
            c.execute(
                "UPDATE pitr_t t SET a = x.a, b = x.b, c = x.c, d = x.d FROM damaged_state x"
                " WHERE x.id = t.id"
            )
            c.execute("RESET session_replication_role")
            secs, _mb = run("rollback", "--tag", "bench-bad-deploy", "--on-conflict", "skip")
            ours_lost, ours_wrong = lost(), wrong()
            c.close()
        finally:
            if second is not None:
                subprocess.run(
                    embedded._as_server_user(
                        [str(bindir / "pg_ctl"), "-D", str(second), "-m", "immediate", "stop"]
                    ),
                    capture_output=True,
                )
            live.stop()
            shutil.rmtree(work, ignore_errors=True)
        self.results["pitr"] = {
            "rows": n,
            "damaged": n // 10,
            "legitimate_writes": legit,
            "seconds": {
                "base_backup": backup_s,
                "bad_deploy": deploy_s,
                "pitr": pitr_s,
                "rollback": secs,
            },
            "ratio": pitr_s / secs,
            "lost": {"pitr": pitr_lost, "rollback": ours_lost},
            "wrong_rows": {"pitr": pitr_wrong, "rollback": ours_wrong},
        }

    def cli_at(self, url: str, *args: str) -> tuple[float, int]:
        saved, self.url = self.url, url
        try:
            return self.cli(*args)
        finally:
            self.url = saved

    def pgbench(self, seconds: int) -> None:
        """TPC-B TPS (2 clients) without capture, with capture on all four tables, classic."""
        pgbench = embedded.find_bindir()
        if pgbench is None or not (pgbench / "pgbench").exists():
            self.results["pgbench"] = {"skipped": "pgbench not found"}
            return
        exe = str(pgbench / "pgbench")
        scale = max(int(10 * self.scale), 1)
        # classic last: its triggers go with the tables at the next initialisation.
        modes = ("none", "capture", "noop", "classic")
        tps: dict[str, list[float]] = {m: [] for m in modes}
        wal: dict[str, list[float]] = {m: [] for m in modes}
        tables = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
        c = self.conn()
        for _ in range(self.runs):
            # One initialisation per run (it takes as long as a measurement); each mode
            # then starts from an empty history and a vacuumed database.
            subprocess.run(
                [exe, "-i", "-q", "-s", str(scale), self.url], check=True, capture_output=True
            )
            # pgbench_history has no key; give it one (for every mode alike).
            c.execute("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")
            for mode in modes:
                c.execute("TRUNCATE pgbench_history")
                c.execute("VACUUM ANALYZE")
                if mode == "capture":
                    self.cli("capture", "enable", *tables)
                elif mode == "noop":
                    # The floor: the same triggers as capture (a BEFORE and the AFTER
                    # statement triggers with transition tables, a SECURITY DEFINER
                    # function with a pinned search_path) doing nothing.
                    c.execute(PGBENCH_NOOP)
                    for t in tables:
                        for i, (when, ref, fn) in enumerate(NOOP_TRIGGERS):
                            c.execute(
                                f"CREATE TRIGGER noop_{i} {when}"
                                f" ON {t} {ref} FOR EACH STATEMENT EXECUTE FUNCTION"
                                f" {fn}()"
                            )
                elif mode == "classic":
                    c.execute(CLASSIC_TRIGGER)
                    for t in tables:
                        c.execute(
                            f"CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON {t}"
                            " FOR EACH ROW EXECUTE FUNCTION classic_audit()"
                        )
                c.execute("CHECKPOINT")
                lsn0 = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
                out = subprocess.run(
                    [exe, "-c", "2", "-j", "2", "-T", str(seconds), "-n", self.url],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                w = c.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", [lsn0]).fetchone()[0]  # type: ignore[index]
                m = re.search(r"tps = ([0-9.]+)", out)
                assert m, out
                tps[mode].append(float(m.group(1)))
                wal[mode].append(float(w))
                if mode == "capture":
                    self.cli("capture", "disable", *tables, "--yes")
                if mode == "noop":
                    for t in tables:
                        for i in range(len(NOOP_TRIGGERS)):
                            c.execute(f"DROP TRIGGER noop_{i} ON {t}")
                c.execute("DROP TABLE IF EXISTS audit_log")
        self.results["pgbench"] = {
            "scale": scale,
            "clients": 2,
            "seconds": seconds,
            "tps": {k: _median(v) for k, v in tps.items()},
            "ratios": {
                "capture_tps": _median([a / b for a, b in zip(tps["capture"], tps["none"])]),
                "classic_tps": _median([a / b for a, b in zip(tps["classic"], tps["none"])]),
                "noop_tps": _median([a / b for a, b in zip(tps["noop"], tps["none"])]),
                # WAL per transaction: a slower mode runs fewer transactions in the time.
                "capture_wal": _median(
                    [
                        (wc / tc) / (wn / tn)
                        for wc, tc, wn, tn in zip(
                            wal["capture"], tps["capture"], wal["none"], tps["none"]
                        )
                    ]
                ),
                "classic_wal": _median(
                    [
                        (wc / tc) / (wn / tn)
                        for wc, tc, wn, tn in zip(
                            wal["classic"], tps["classic"], wal["none"], tps["none"]
                        )
                    ]
                ),
            },
        }
        c.close()


def _fmt(d: dict[str, float], unit: str = "x") -> str:
    return f"{d['median']:.2f}{unit} ({d['min']:.2f}..{d['max']:.2f})"


def report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `python -m bench --scale {meta['scale']} --runs {meta['runs']} --write` on "
        f"{meta['date']}: {meta['machine']}, {meta['server']}.  Every figure is a ratio to a "
        "baseline measured in the same run: median of the runs, (min..max) in brackets.",
        "",
    ]
    cap = results.get("capture")
    if cap:
        lines += [
            f"## Capture overhead and undo ({cap['rows']:,}-row table)",
            "",
            "| what | ratio | target |",
            "|---|---|---|",
            f"| UPDATE of every row, capture on / off | {_fmt(cap['ratios']['capture_update'])} "
            "| <= 1.15x |",
            f"| same, classic per-row jsonb audit trigger / off | "
            f"{_fmt(cap['ratios']['classic_update'])} | |",
            f"| undo of that UPDATE (`recovery rollback`, CLI end to end) / the plain UPDATE | "
            f"{_fmt(cap['ratios']['undo_update'])} | <= 1.25x |",
            f"| same undo / the UPDATE as it ran (with capture on) | "
            f"{_fmt(cap['ratios']['undo_vs_captured_update'])} | |",
            f"| DELETE of every row, capture on / off | "
            f"{_fmt(cap['ratios']['capture_delete'])} | |",
            f"| same, classic trigger / off | {_fmt(cap['ratios']['classic_delete'])} | |",
            f"| INSERT of as many rows, capture on / off | {_fmt(cap['ratios']['capture_insert'])} "
            "| |",
            f"| same, classic trigger / off | {_fmt(cap['ratios']['classic_insert'])} | |",
            "",
            f"Plain UPDATE: {_fmt(cap['seconds']['update_plain'], ' s')}; undo: "
            f"{_fmt(cap['seconds']['undo_update'], ' s')}, "
            f"{cap['undo_rows_per_second']:,.0f} rows/s.",
            "",
        ]
    if "memory" in results:
        m = results["memory"]
        lines += [
            "## CLI peak memory",
            "",
            f"| operation | {m['rows_small']:,} rows | {m['rows_large']:,} rows | target |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {op} | {v['small']} MB | {v['large']} MB | < 150 MB |"
            for op, v in m["rss_mb"].items()
        ]
        lines.append("")
    if "undo_kinds" in results:
        u = results["undo_kinds"]
        lines += [
            f"## Undo of deletes and inserts ({u['rows']:,} rows each, CLI end to end)",
            "",
            "| what | ratio | rows/s |",
            "|---|---|---|",
            f"| undo of a DELETE / the DELETE | {_fmt(u['ratios']['undo_delete'])} | "
            f"{u['rows_per_second']['undo_delete']:,.0f} |",
            f"| undo of an INSERT / the INSERT | {_fmt(u['ratios']['undo_insert'])} | "
            f"{u['rows_per_second']['undo_insert']:,.0f} |",
            "",
        ]
    if "damage_not_size" in results:
        d = results["damage_not_size"]
        lines += [
            "## Cost follows the damage, not the table",
            "",
            "| what | ratio | target |",
            "|---|---|---|",
            f"| undo of {d['damaged']:,} damaged rows in a {d['big']:,}-row table / in a "
            f"{d['small']:,}-row table | {_fmt(d['ratio'])} | flat (about 1x) |",
            "",
            f"Seconds: {_fmt(d['seconds']['small'], ' s')} and {_fmt(d['seconds']['big'], ' s')}.",
            "",
        ]
    if "snapshots" in results:
        sn = results["snapshots"]
        r = sn["ratios"]

        def row(label: str, key: str, target: str = "") -> str:
            return f"| {label} | {_fmt(r[key]) if r.get(key) else 'n/a'} | {target} |"

        lines += [
            f"## Snapshots ({sn['rows']:,}-row table, library calls)",
            "",
            "| what | ratio | target |",
            "|---|---|---|",
            row(
                "snapshot, database store / CREATE TABLE AS of the same rows",
                "db_vs_ctas",
                "<= 1.2x",
            ),
            row(
                "snapshot, directory store / `pg_dump -Fc -t` of the table",
                "dir_vs_pg_dump",
                "<= 1.0x",
            ),
            row(
                "restore of every row changed, directory store / COPY FROM of the same data",
                "restore_dir_vs_copy_from",
                "<= 2x",
            ),
            row(
                "restore of the dropped table (recreated), directory store / `pg_restore`",
                "restore_dropped_vs_pg_restore",
            ),
            row(
                "floor: one in-place UPDATE ... FROM of every row from a loaded copy / COPY FROM",
                "update_from_vs_copy_from",
            ),
            row(
                "floor of a restore: load the rows (COPY FROM) + that UPDATE / COPY FROM",
                "restore_floor_vs_copy_from",
                "floor of <= 2x",
            ),
            "",
            "Seconds: "
            + ", ".join(f"{k} {_fmt(v, ' s')}" for k, v in sn["seconds"].items())
            + f"; directory snapshot {sn['dir_bytes'] / 1e6:.1f} MB.",
            "",
        ]
    pt = results.get("pitr", {})
    if "ratio" in pt:
        lines += [
            f"## Against the PITR route ({pt['rows']:,} rows, {pt['damaged']:,} damaged, "
            f"{pt['legitimate_writes']:,} legitimate writes after the deploy)",
            "",
            "| route | seconds | legitimate writes lost | rows not as expected |",
            "|---|---|---|---|",
            f"| PITR: restore the base backup to a second cluster (recovery_target_time before "
            f"the deploy), copy the damaged rows back | {pt['seconds']['pitr']:.1f} | "
            f"{pt['lost']['pitr']:,} | {pt['wrong_rows']['pitr']:,} |",
            f"| `recovery rollback --tag` (CLI end to end) | {pt['seconds']['rollback']:.1f} | "
            f"{pt['lost']['rollback']:,} | {pt['wrong_rows']['rollback']:,} |",
            "",
            f"PITR / rollback: {pt['ratio']:.2f}x (one run).  The base backup itself took "
            f"{pt['seconds']['base_backup']:.1f} s before the deploy; restoring the whole "
            "cluster instead of copying rows back would lose every write since the deploy.",
            "",
        ]
    fl = results.get("floors")
    if fl:
        r = fl["ratios"]
        lines += [
            f"## Floors: what the mechanisms cost before any of our work ({fl['rows']:,} rows)",
            "",
            "Measured like the rest, in the same run, each against a plain UPDATE of every row"
            " of a freshly loaded table.  A target below its floor cannot be met by the"
            " mechanism it names.",
            "",
            "| what | ratio | floor of |",
            "|---|---|---|",
            f"| UPDATE with a statement trigger with OLD and NEW transition tables doing "
            f"nothing / plain | {_fmt(r['tt_noop'])} | capture <= 1.15x |",
            f"| UPDATE with a trigger copying the typed before-images only (no after-image) / "
            f"plain | {_fmt(r['before_copy'])} | capture <= 1.15x |",
            f"| undo as one UPDATE ... FROM a typed copy of every row / plain UPDATE | "
            f"{_fmt(r['update_from'])} | undo <= 1.25x |",
            f"| same, with its own writes kept by the before-image trigger / plain UPDATE | "
            f"{_fmt(r['update_from_captured'])} | undo <= 1.25x |",
            "",
            "Seconds: " + ", ".join(f"{k} {_fmt(v, ' s')}" for k, v in fl["seconds"].items()) + ".",
            "",
        ]
    pg = results.get("pgbench", {})
    if "tps" in pg:
        lines += [
            f"## pgbench TPC-B (scale {pg['scale']}, {pg['clients']} clients, "
            f"{pg['seconds']} s per run)",
            "",
            "| what | ratio | target |",
            "|---|---|---|",
            f"| TPS, capture on all four tables / none | {_fmt(pg['ratios']['capture_tps'])} "
            "| >= 0.90x |",
            f"| TPS, classic per-row jsonb trigger / none | {_fmt(pg['ratios']['classic_tps'])} "
            "| |",
            f"| TPS, the capture triggers doing nothing / none (the mechanism's floor) | "
            f"{_fmt(pg['ratios']['noop_tps'])} | |",
            f"| WAL bytes per transaction, capture / none | "
            f"{_fmt(pg['ratios']['capture_wal'])} | |",
            f"| WAL bytes per transaction, classic / none | "
            f"{_fmt(pg['ratios']['classic_wal'])} | |",
            "",
            f"TPS without capture: {_fmt(pg['tps']['none'], '')}.",
            "",
        ]
    lines += wal_section.report(results)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1 = a 1M-row table")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pgbench-seconds", type=int, default=8)
    ap.add_argument(
        "--db", help="Use this server (its user must create tables) instead of starting one."
    )
    ap.add_argument(
        "--only",
        help="Comma-separated sections to run (capture, memory, "
        "undo_kinds, damage, snapshots, pitr, floors, pgbench, wal); default all.",
    )
    ap.add_argument(
        "--write", action="store_true", help="Write docs/BENCHMARKS.md and bench/results.json."
    )
    args = ap.parse_args(argv)
    cluster = None
    if args.db:
        url = args.db
    else:
        cluster = embedded.start("auto", fast=False)
        url = cluster.url
    try:
        b = Bench(url, args.scale, args.runs)
        with psycopg.connect(url) as c:
            server = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        b.results["meta"] = {
            "scale": args.scale,
            "runs": args.runs,
            "date": datetime.date.today().isoformat(),
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()}",
            "server": f"PostgreSQL {server}",
        }
        sections = {
            "capture": b.capture_and_undo,
            "memory": b.memory_scales,
            "undo_kinds": b.undo_kinds,
            "damage": b.damage_not_size,
            "snapshots": b.snapshots,
            "pitr": b.pitr,
            "floors": b.floors,
            "pgbench": lambda: b.pgbench(args.pgbench_seconds),
            "wal": lambda: wal_section.run(b, args.pgbench_seconds),
        }
        only = args.only.split(",") if args.only else list(sections)
        unknown = [x for x in only if x not in sections]
        if unknown:
            ap.error(f"unknown section {unknown[0]}: choose from {', '.join(sections)}")
        if args.write and args.only:
            ap.error("--write records the whole suite: run it without --only")
        for name in only:
            sections[name]()
        text = report(b.results)
        print(text)
        if args.write:
            (ROOT / "docs").mkdir(exist_ok=True)
            (ROOT / "docs" / "BENCHMARKS.md").write_text(text + "\n")
            (ROOT / "bench" / "results.json").write_text(
                json.dumps(b.results, indent=2, default=str) + "\n"
            )
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(ROOT / "bench" / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
