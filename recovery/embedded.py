"""Throwaway PostgreSQL clusters for the demo, the tests and the benchmarks.

Prefers the machine's own PostgreSQL binaries (pg_config --bindir, PATH, the usual
Debian and Homebrew locations) and falls back to the pgserver package.  As root,
the server runs as the `postgres` OS user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RecoveryError

_FAST = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
# WAL capture (logical decoding) needs wal_level = logical and replication slots; every
# throwaway cluster has them, so that both capture sources work on it.  64 slots: one
# per database and recovery schema that captures from the WAL.
LOGICAL = {"wal_level": "logical", "max_replication_slots": "64", "max_wal_senders": "16"}


@dataclass
class Cluster:
    """A running throwaway server; `url` connects to its `postgres` database."""

    url: str
    kind: str
    datadir: Path
    _stop: Any = field(repr=False, default=None)

    def url_for(self, dbname: str) -> str:
        base, _, _query = self.url.partition("?")
        head = base.rsplit("/", 1)[0]
        return f"{head}/{dbname}" + (f"?{_query}" if _query else "")

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def find_bindir() -> Path | None:
    """Locate a directory holding initdb, pg_ctl and postgres, or None."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            candidates.append(out)
        except (OSError, subprocess.CalledProcessError):
            pass
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    candidates += sorted(glob.glob("/opt/homebrew/opt/postgresql*/bin"), reverse=True)
    candidates += sorted(glob.glob("/usr/local/opt/postgresql*/bin"), reverse=True)
    candidates += ["/usr/local/pgsql/bin"]
    for c in candidates:
        p = Path(c)
        if all((p / exe).exists() for exe in ("initdb", "pg_ctl", "postgres")):
            return p
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def start_local(
    bindir: Path, *, fast: bool = True, conf: dict[str, str] | None = None, logical: bool = True
) -> Cluster:
    """Start a cluster from the machine's binaries in a new temporary directory
    (`logical=False`: the server's default wal_level, without logical decoding)."""
    root = Path(tempfile.mkdtemp(prefix="recovery-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise RecoveryError("running as root and no `postgres` OS user exists") from None
        os.chown(root, pw.pw_uid, pw.pw_gid)
    env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
    subprocess.run(
        _as_server_user(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
        env=env,
    )
    if conf:  # extra settings (the benchmark's WAL archiving), appended to postgresql.conf
        with open(data / "postgresql.conf", "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = '{v.replace(chr(39), chr(39) * 2)}'\n")
    port = _free_port()
    opts = [
        "-c",
        f"port={port}",
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"unix_socket_directories={root}",
        "-c",
        "max_connections=100",
    ]
    for key, value in LOGICAL.items() if logical else ():
        opts += ["-c", f"{key}={value}"]
    if fast:
        opts += _FAST
    subprocess.run(
        _as_server_user(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-t",
                "60",
                "-l",
                str(root / "log"),
                "-o",
                " ".join(opts),
                "start",
            ]
        ),
        check=True,
        capture_output=True,
        env=env,
    )

    def stop() -> None:
        subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            env=env,
        )
        shutil.rmtree(root, ignore_errors=True)

    return Cluster(f"postgresql://postgres@127.0.0.1:{port}/postgres", "local", data, stop)


def start_pgserver() -> Cluster:
    """Start the PostgreSQL shipped by the pgserver package (the embedded default)."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns, at import, when XDG_RUNTIME_DIR is unset: harmless.
            warnings.simplefilter("ignore")
            # pgserver's __init__ re-exports get_server without __all__: import it from
            # the module that defines it (what `pgserver.get_server` is).
            from pgserver.postgres_server import get_server
    except ImportError:
        raise RecoveryError(
            "no PostgreSQL binaries found and pgserver is not installed: "
            "pip install 'recovery[embedded]', or pass --db URL"
        ) from None
    root = Path(tempfile.mkdtemp(prefix="recovery-pgserver-"))
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (root shells, CI): harmless.
        warnings.simplefilter("ignore")
        server = get_server(root / "data", cleanup_mode="delete")
        uri = server.get_uri()
        # pgserver starts with its own options; the settings WAL capture needs are made
        # with ALTER SYSTEM and take effect on a restart (pg_ctl restart keeps the
        # options the server was started with).
        if server.psql("SHOW wal_level").split()[2:3] != ["logical"]:
            for key, value in LOGICAL.items():
                server.psql(f"ALTER SYSTEM SET {key} = '{value}'")
            from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

            pg_ctl(["-w", "restart"], pgdata=server.pgdata, user=server.system_user)

    def stop() -> None:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    return Cluster(uri, "pgserver", root / "data", stop)


def start(prefer: str = "auto", *, fast: bool = True) -> Cluster:
    """Start a throwaway cluster: `local` binaries, `pgserver`, or `auto` (local first)."""
    if prefer not in ("auto", "local", "pgserver"):
        raise RecoveryError(f"unknown server kind {prefer!r}: use auto, local or pgserver")
    if prefer in ("auto", "local"):
        bindir = find_bindir()
        if bindir is not None:
            return start_local(bindir, fast=fast)
        if prefer == "local":
            raise RecoveryError("no PostgreSQL binaries found (initdb, pg_ctl, postgres)")
    return start_pgserver()
