"""A directory store (`DIR/NAME/`): per table a zstd-compressed COPY text file and
`manifest.json`; written under a hidden temporary name, fsynced, then renamed, so a
half-written snapshot never lists.  It survives the database and restores into
another one."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import zstandard
from psycopg import sql

from ..errors import RecoveryError
from .items import select_rows
from .manifest import Progress, SnapshotInfo, read_manifest, snapshot_info
from .spec import Spec

DEFAULT_DIR = "./snapshots"
ZSTD_LEVEL = 3


class DirStore:
    """A directory store: one directory per snapshot under `store`."""

    def __init__(self, store: str) -> None:
        self.store = store
        self.path = Path(store)
        self.label = str(self.path)
        self.tmp: Path | None = None  # the hidden directory of a save under way

    def refuse_existing(self, conn: psycopg.Connection, name: str) -> None:
        """Raise RecoveryError when a snapshot called name exists already (creating the
        store's directory, and checking it can be written)."""
        base = store_dir(self.store, create=True)
        if (base / name).exists():
            raise RecoveryError(
                f"snapshot {name} exists already in {base}: drop it or choose another name"
            )

    def save(
        self,
        conn: psycopg.Connection,
        name: str,
        specs: Sequence[Spec],
        items: list[tuple[dict[str, Any], list[str]]],
        manifest: dict[str, Any],
        progress: Progress | None,
    ) -> None:
        """COPY each table out under a hidden name, fsync, then rename into view."""
        base = store_dir(self.store)
        self.tmp = tmp = base / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for (item, cols), spec in zip(items, specs):
            fname = f"{item['n']:04d}-{_safe(item['schema'])}.{_safe(item['table'])}.copy.zst"
            rows, size, digest = copy_out(
                conn, select_rows(conn, spec, cols), tmp / fname, progress
            )
            item.update(data=fname, rows=rows, bytes=size, sha256=digest)
            manifest["items"].append(item)
        write_durably(tmp / "manifest.json", json.dumps(manifest, indent=2).encode())
        fsync_dir(tmp)
        os.rename(tmp, base / name)
        self.tmp = None
        fsync_dir(base)

    def discard(self) -> None:
        """Remove what a failed save left (a save killed with the process never lists)."""
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def snapshots(
        self, conn: psycopg.Connection | None, problems: list[str] | None
    ) -> list[SnapshotInfo]:
        if self.store == DEFAULT_DIR and not self.path.exists():
            return []  # nothing saved in the default store yet
        base = store_dir(self.store)
        out = []
        for d in sorted(base.iterdir()):
            m = re.fullmatch(r"\.(.+)\.tmp-(\d+)", d.name)
            if m and d.is_dir() and problems is not None:
                # Hidden, never listed or restorable; said, so that the space is not lost
                # silently.  (Not removed here: the create may still be running.)
                problems.append(
                    f"{d.name}: incomplete snapshot {m.group(1)}, being written by process "
                    f"{m.group(2)} or left by a create that did not finish; once no create is "
                    f"running, delete {d}"
                )
            if d.name.startswith(".") or not (d / "manifest.json").is_file():
                continue  # a snapshot being written (or killed while written) is hidden
            try:
                out.append(snapshot_info(read_manifest(d / "manifest.json"), str(base)))
            except (RecoveryError, KeyError, TypeError) as exc:
                if problems is None:
                    raise
                problems.append(f"{d.name}: {exc}")
        return out

    def find(self, conn: psycopg.Connection | None, name: str) -> SnapshotInfo | None:
        """The snapshot called name; RecoveryError if the store has none."""
        store = self.store
        path = store_dir(store) / name
        if not (path / "manifest.json").is_file():
            raise RecoveryError(
                f"no snapshot {name} in {store}: `recovery snapshot list "
                f"--store {store}` lists them"
            )
        return snapshot_info(read_manifest(path / "manifest.json"), str(store_dir(store)))

    def verify_item(
        self, conn: psycopg.Connection | None, info: SnapshotInfo, item: dict[str, Any]
    ) -> tuple[str, str | None]:
        """Where a saved table is, and what is wrong with it (None: nothing)."""
        path = Path(info.store) / info.name / item["data"]
        try:
            digest, rows = read_rows(path)
            problem = None
            if digest != item["sha256"]:
                problem = "sha256 differs from the manifest's"
            elif rows != item["rows"]:
                problem = f"{rows} rows, the manifest says {item['rows']}"
        except FileNotFoundError:
            problem = "file is missing"
        except zstandard.ZstdError as exc:
            problem = f"cannot be decompressed ({exc})"
        return str(path), problem

    def drop(self, conn: psycopg.Connection | None, info: SnapshotInfo) -> None:
        """Remove a snapshot's directory."""
        path = Path(info.store) / info.name
        # Hide it first (a rename is atomic), then delete: never a half-deleted snapshot.
        hidden = Path(info.store) / f".{info.name}.dropping-{os.getpid()}"
        os.rename(path, hidden)
        shutil.rmtree(hidden)


def in_default_dir(name: str) -> SnapshotInfo | None:
    """The snapshot called name in ./snapshots, if it is there."""
    if (Path(DEFAULT_DIR) / name / "manifest.json").is_file():
        return snapshot_info(read_manifest(Path(DEFAULT_DIR) / name / "manifest.json"), DEFAULT_DIR)
    return None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60]


def copy_out(
    conn: psycopg.Connection, query: sql.Composable, path: Path, progress: Progress | None
) -> tuple[int, int, str]:
    """COPY the query's rows to a zstd file; return (rows, file bytes, sha256)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "wb") as raw:

        class _Tee:
            def write(self, b: bytes) -> int:
                nonlocal size
                digest.update(b)
                size += len(b)
                return raw.write(b)

        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        with cctx.stream_writer(_Tee(), closefd=False) as z, conn.cursor() as cur:  # type: ignore[arg-type]
            # The server sends a message per row: gather them into blocks, so the
            # compressor and the progress bar are called per MB, not per row.
            buf = bytearray()
            with cur.copy(sql.SQL("COPY ({}) TO STDOUT").format(query)) as cp:
                for chunk in cp:
                    buf += chunk
                    if len(buf) >= 1 << 20:
                        z.write(buf)
                        if progress:
                            progress(len(buf))
                        buf.clear()
            z.write(buf)
            if progress:
                progress(len(buf))
            rows = cur.rowcount
        raw.flush()
        os.fsync(raw.fileno())
    return rows, size, digest.hexdigest()


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_dir(store: str | None, create: bool = False) -> Path:
    base = Path(store or DEFAULT_DIR)
    if create:
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecoveryError(
                f"snapshot store {base} cannot be created: {exc.strerror}"
            ) from None
    if not base.is_dir():
        raise RecoveryError(f"snapshot store {base} is not a directory")
    if create:
        try:  # a real write: permissions, read-only mounts and ACLs all show up
            with tempfile.TemporaryFile(dir=base):
                pass
        except OSError:
            raise RecoveryError(
                f"snapshot store {base} is not writable: choose another --store"
            ) from None
    return base


def read_data(path: Path, digest: Any) -> Iterator[bytes]:
    """The decompressed COPY text of a data file, in blocks of up to 1 MB, while every
    byte of the file (anything after the compressed frame too) goes into `digest`."""
    with open(path, "rb") as f:

        class _Hashing:
            def read(self, n: int = -1) -> bytes:
                b = f.read(n)
                digest.update(b)
                return b

        with zstandard.ZstdDecompressor().stream_reader(_Hashing()) as r:  # type: ignore[arg-type]
            while chunk := r.read(1 << 20):
                yield chunk
        digest.update(f.read())


def read_rows(path: Path) -> tuple[str, int]:
    """sha256 of a data file and the number of rows it holds (decompressed)."""
    digest = hashlib.sha256()
    rows = sum(chunk.count(b"\n") for chunk in read_data(path, digest))
    return digest.hexdigest(), rows
