"""The WAL capture source against the trigger source and against no capture.

Called from `python -m bench` (section `wal`).  Every figure is a ratio to a
baseline on the same server with the same settings (wal_level = logical, default
replica identity, no capture), measured in the same run, alternating the modes
between runs to cancel drift:

- bulk UPDATE of every row of a table: WAL capture (REPLICA IDENTITY FULL, the slot
  and the hooks), trigger capture, none;
- `drain()` of that UPDATE's backlog (rows/s), next to the server decoding alone
  (`count(*)` of the peek the drain reads);
- pgbench TPC-B: none, WAL capture with `recovery capture follow --interval 0.2`
  draining during the run (lag polled every 0.5 s from another connection), WAL
  capture with nothing draining during the run, trigger capture; WAL bytes per
  transaction of each.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

import psycopg

from recovery import embedded
from recovery.capture.drain import drain

if TYPE_CHECKING:
    from bench.__main__ import Bench

SCHEMA = "_recovery"
LAG_SQL = (
    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,"
    " pg_wal_lsn_diff(confirmed_flush_lsn, %s::pg_lsn)::bigint"
    f" FROM pg_replication_slots WHERE slot_name = {SCHEMA}.wal_slot()"
)
TARGETS = {
    "update_wal": "<= 1.10x",
    "pgbench_wal": ">= 0.95x",
    "drain_rows_per_second": ">= 150,000 rows/s",
}
FOLLOW_INTERVAL = "0.2"
LAG_POLL_S = 0.5


def _median(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _fmt(d: dict[str, float], unit: str = "x", digits: int = 2) -> str:
    return f"{d['median']:,.{digits}f}{unit} ({d['min']:,.{digits}f}..{d['max']:,.{digits}f})"


def _ratios(num: list[float], den: list[float]) -> dict[str, float]:
    return _median([a / b for a, b in zip(num, den)])


def run(b: Bench, pgbench_seconds: int) -> None:
    """The `wal` section: fills b.results["wal"]."""
    with b.conn() as c:
        level = c.execute("SHOW wal_level").fetchone()[0]  # type: ignore[index]
    if level != "logical":
        b.results["wal"] = {"skipped": f"wal_level is {level}, WAL capture needs logical"}
        return
    b.cli("init")
    out: dict[str, Any] = {"bulk": bulk_update(b)}
    out["pgbench"] = pgbench(b, pgbench_seconds)
    b.results["wal"] = out


def _flush(c: psycopg.Connection) -> None:
    """Make everything committed so far decodable (decoding reads only flushed WAL)."""
    with c.transaction():
        c.execute("SET LOCAL synchronous_commit = on")
        c.execute(f"SELECT {SCHEMA}.wal_flush()")


def bulk_update(b: Bench) -> dict[str, Any]:
    """UPDATE of every row: none, WAL source, trigger source; then the WAL backlog drained."""
    c = b.conn()
    lib = psycopg.connect(b.url)
    modes = ("plain", "wal", "trigger")
    secs: dict[str, list[float]] = {
        k: [] for k in (*modes, "decode", "drain", "enable_wal", "enable_trigger")
    }
    drained_rows: list[int] = []
    messages: list[int] = []
    for i in range(b.runs):
        for mode in modes if i % 2 == 0 else tuple(reversed(modes)):
            t = f"walb_{mode}"
            b.fresh(c, t)
            if mode != "plain":
                secs[f"enable_{mode}"].append(b.cli("capture", "enable", t, "--source", mode)[0])
            secs[mode].append(b.timed(c, f"UPDATE {t} SET a = a + 1"))
            if mode == "wal":
                # The server alone: decoding the same stream the drain reads, counted.
                _flush(c)
                c.execute("CHECKPOINT")
                t0 = time.perf_counter()
                row = c.execute(
                    f"SELECT count(*) FROM {SCHEMA}.wal_peek(pg_current_wal_flush_lsn())"
                ).fetchone()
                secs["decode"].append(time.perf_counter() - t0)
                assert row is not None
                messages.append(int(row[0]))
                # End to end: the library's drain, into the journal.
                c.execute("CHECKPOINT")
                t0 = time.perf_counter()
                result = drain(lib)
                secs["drain"].append(time.perf_counter() - t0)
                drained_rows.append(result.rows)
                assert result.rows == b.rows, (result.rows, b.rows, result.problems)
            if mode != "plain":
                b.cli("capture", "disable", t, "--yes")
            c.execute(f"DROP TABLE {t}")
    lib.close()
    c.close()
    return {
        "rows": b.rows,
        "seconds": {k: _median(v) for k, v in secs.items() if v},
        "ratios": {
            "update_wal": _ratios(secs["wal"], secs["plain"]),
            "update_trigger": _ratios(secs["trigger"], secs["plain"]),
            "update_wal_vs_trigger": _ratios(secs["wal"], secs["trigger"]),
        },
        "drain_rows": drained_rows,
        "drain_rows_per_second": _median([r / s for r, s in zip(drained_rows, secs["drain"])]),
        "decode_messages": messages,
        "decode_messages_per_second": _median([m / s for m, s in zip(messages, secs["decode"])]),
        "decode_rows_per_second": _median([r / s for r, s in zip(drained_rows, secs["decode"])]),
    }


class LagProbe:
    """Polls the slot's lag from a connection of its own every LAG_POLL_S seconds."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as c:
                while not self.done.is_set():
                    row = c.execute(LAG_SQL, ["0/0"]).fetchone()
                    if row is not None and row[0] is not None:
                        self.samples.append(int(row[0]))
                    self.done.wait(LAG_POLL_S)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        if self.error is not None:
            raise self.error


def pgbench(b: Bench, seconds: int) -> dict[str, Any]:
    bindir = embedded.find_bindir()
    if bindir is None or not (bindir / "pgbench").exists():
        return {"skipped": "pgbench not found"}
    exe = str(bindir / "pgbench")
    scale = max(int(10 * b.scale), 1)
    tables = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
    # wal: `capture follow` drains during the run (the lag is measured); wal_nodrain:
    # nothing drains until the run is over (the write path alone, and the backlog
    # drained afterwards by the library's drain(), timed).
    modes = ("none", "wal", "wal_nodrain", "trigger")
    tps: dict[str, list[float]] = {m: [] for m in modes}
    wal_per_tx: dict[str, list[float]] = {m: [] for m in modes}
    lag_max: list[int] = []
    lag_end: list[int] = []
    catch_up: list[float] = []
    backlog: list[dict[str, float]] = []
    c = b.conn()
    lib = psycopg.connect(b.url)
    for i in range(b.runs):
        # One initialisation per run, as the pgbench section; pgbench_history is given a
        # key (a table without one cannot be captured), for every mode alike.
        subprocess.run([exe, "-i", "-q", "-s", str(scale), b.url], check=True, capture_output=True)
        c.execute("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")
        for mode in modes if i % 2 == 0 else tuple(reversed(modes)):
            c.execute("TRUNCATE pgbench_history")
            c.execute("VACUUM ANALYZE")
            if mode != "none":
                source = "trigger" if mode == "trigger" else "wal"
                b.cli("capture", "enable", *tables, "--source", source)
            follow = probe = None
            log = tempfile.TemporaryFile()
            if mode == "wal":
                follow = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "recovery",
                        "capture",
                        "follow",
                        "--interval",
                        FOLLOW_INTERVAL,
                        "--db",
                        b.url,
                        "--quiet",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    env=dict(os.environ, PGOPTIONS=""),
                )
                probe = LagProbe(b.url)
                probe.start()
                time.sleep(1.5)  # the follower's start (imports, first drain)
            c.execute("CHECKPOINT")
            lsn0 = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            out = subprocess.run(
                [exe, "-c", "2", "-j", "2", "-T", str(seconds), "-n", b.url],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            row = c.execute(
                "SELECT pg_current_wal_lsn() - %s::pg_lsn, pg_current_wal_lsn()", [lsn0]
            ).fetchone()
            assert row is not None
            wal_bytes, lsn_end = float(row[0]), str(row[1])
            m = re.search(r"tps = ([0-9.]+)", out)
            n = re.search(r"number of transactions actually processed: (\d+)", out)
            assert m and n, out
            tps[mode].append(float(m.group(1)))
            wal_per_tx[mode].append(wal_bytes / max(int(n.group(1)), 1))
            if follow is not None and probe is not None:
                end = c.execute(LAG_SQL, [lsn_end]).fetchone()
                assert end is not None
                lag_end.append(int(end[0]))
                # How long the follower takes to pass the WAL position the run ended at.
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < 120:
                    row = c.execute(LAG_SQL, [lsn_end]).fetchone()
                    assert row is not None
                    if row[1] is not None and int(row[1]) >= 0:
                        break
                    if follow.poll() is not None:
                        break
                    time.sleep(0.05)
                catch_up.append(time.perf_counter() - t0)
                probe.stop()
                lag_max.append(max(probe.samples + [lag_end[-1]]))
                failed = follow.poll()
                if failed is None:
                    follow.terminate()
                    failed = follow.wait(timeout=60)
                if failed:
                    log.seek(0)
                    raise RuntimeError(
                        f"capture follow exited {failed}: {log.read().decode()[-2000:]}"
                    )
            log.close()
            if mode == "wal_nodrain":
                c.execute("CHECKPOINT")
                t0 = time.perf_counter()
                result = drain(lib)
                took = time.perf_counter() - t0
                backlog.append(
                    {
                        "rows": result.rows,
                        "transactions": result.transactions,
                        "seconds": took,
                        "rows_per_second": result.rows / took,
                    }
                )
            if mode != "none":
                b.cli("capture", "disable", *tables, "--yes")
    lib.close()
    c.close()
    return {
        "scale": scale,
        "clients": 2,
        "seconds": seconds,
        "tables": tables,
        "tps": {k: _median(v) for k, v in tps.items()},
        "wal_bytes_per_transaction": {k: _median(v) for k, v in wal_per_tx.items()},
        "ratios": {
            "wal_tps": _ratios(tps["wal"], tps["none"]),
            "wal_nodrain_tps": _ratios(tps["wal_nodrain"], tps["none"]),
            "trigger_tps": _ratios(tps["trigger"], tps["none"]),
            "wal_wal_bytes": _ratios(wal_per_tx["wal"], wal_per_tx["none"]),
            "wal_nodrain_wal_bytes": _ratios(wal_per_tx["wal_nodrain"], wal_per_tx["none"]),
            "trigger_wal_bytes": _ratios(wal_per_tx["trigger"], wal_per_tx["none"]),
        },
        "follow_interval_s": float(FOLLOW_INTERVAL),
        "lag_poll_s": LAG_POLL_S,
        "lag_max_bytes": lag_max,
        "lag_end_bytes": lag_end,
        "catch_up_seconds": catch_up,
        "backlog_drain": backlog,
    }


def report(results: dict[str, Any]) -> list[str]:
    """The Markdown of the `wal` section (nothing when it did not run)."""
    w = results.get("wal")
    if not w:
        return []
    if "skipped" in w:
        return [
            "## Capture sources side by side: WAL and trigger",
            "",
            f"Skipped: {w['skipped']}.",
            "",
        ]
    bu = w["bulk"]
    r = bu["ratios"]
    s = bu["seconds"]
    lines = [
        "## Capture sources side by side: WAL and trigger",
        "",
        "Same server and settings for every mode (wal_level = logical); the baseline is the "
        "table at its default replica identity with no capture.  Modes alternate between "
        "runs.",
        "",
        f"### Bulk UPDATE of every row ({bu['rows']:,} rows)",
        "",
        "| what | measured | target |",
        "|---|---|---|",
        f"| UPDATE, WAL capture (REPLICA IDENTITY FULL, slot, hooks) / none | "
        f"{_fmt(r['update_wal'])} | {TARGETS['update_wal']} |",
        f"| UPDATE, trigger capture / none | {_fmt(r['update_trigger'])} | |",
        f"| UPDATE, WAL capture / trigger capture | {_fmt(r['update_wal_vs_trigger'])} | |",
        f"| drain() of that UPDATE's backlog into the journal, rows/s | "
        f"{_fmt(bu['drain_rows_per_second'], '', 0)} | {TARGETS['drain_rows_per_second']} |",
        f"| the server decoding alone (count(*) of the drain's peek), rows/s | "
        f"{_fmt(bu['decode_rows_per_second'], '', 0)} | |",
        "",
        f"Seconds: UPDATE none {_fmt(s['plain'], ' s')}, WAL {_fmt(s['wal'], ' s')}, trigger "
        f"{_fmt(s['trigger'], ' s')}; drain {_fmt(s['drain'], ' s')}, decode alone "
        f"{_fmt(s['decode'], ' s')} ({bu['decode_messages'][0]:,} messages).",
        "",
    ]
    pg = w.get("pgbench", {})
    if "tps" in pg:
        pr = pg["ratios"]
        wb = pg["wal_bytes_per_transaction"]
        bl = pg["backlog_drain"]
        lines += [
            f"### pgbench TPC-B (scale {pg['scale']}, {pg['clients']} clients, "
            f"{pg['seconds']} s per run)",
            "",
            "Captured: all four tables (pgbench_history given a bigserial primary key, in "
            "every mode, baseline included: a table without a key cannot be captured).",
            "",
            "| what | measured | target |",
            "|---|---|---|",
            f"| TPS, WAL capture, `capture follow --interval {pg['follow_interval_s']}` "
            f"draining during the run / none | {_fmt(pr['wal_tps'])} | {TARGETS['pgbench_wal']} |",
            f"| TPS, WAL capture, nothing draining during the run / none | "
            f"{_fmt(pr['wal_nodrain_tps'])} | |",
            f"| TPS, trigger capture / none | {_fmt(pr['trigger_tps'])} | |",
            f"| largest slot lag seen (polled every {pg['lag_poll_s']} s), bytes | "
            f"{max(pg['lag_max_bytes']):,} (per run: "
            f"{', '.join(f'{x:,}' for x in pg['lag_max_bytes'])}) | keeps up |",
            f"| slot lag when pgbench ended, bytes | "
            f"{', '.join(f'{x:,}' for x in pg['lag_end_bytes'])} | |",
            f"| then caught up in, s | {', '.join(f'{x:.2f}' for x in pg['catch_up_seconds'])} | |",
            f"| WAL bytes per transaction, none | {_fmt(wb['none'], '', 0)} | |",
            f"| WAL bytes per transaction, WAL capture (writers only) / none | "
            f"{_fmt(pr['wal_nodrain_wal_bytes'])} ({wb['wal_nodrain']['median']:,.0f} B) | |",
            f"| same, with the drain's journal writes during the run / none | "
            f"{_fmt(pr['wal_wal_bytes'])} ({wb['wal']['median']:,.0f} B) | |",
            f"| WAL bytes per transaction, trigger capture / none | "
            f"{_fmt(pr['trigger_wal_bytes'])} ({wb['trigger']['median']:,.0f} B) | |",
            f"| drain() of a whole run's backlog afterwards (many small transactions), rows/s | "
            f"{_fmt(_median([x['rows_per_second'] for x in bl]), '', 0)} "
            f"({bl[0]['rows']:,} rows, {bl[0]['transactions']:,} transactions) | |",
            "",
            f"TPS without capture: {_fmt(pg['tps']['none'], '')}.",
            "",
        ]
    return lines
