"""The manifest of a snapshot: its format, the output settings of the saved text, its
head (who, when, from where), and reading it back (SnapshotInfo)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ..errors import ConflictError, RecoveryError

FORMAT = 1
# Output settings of the saved text (restore sets the same before COPY FROM).
SETTINGS = {
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "client_encoding": "UTF8",
    "TimeZone": "UTC",
    "bytea_output": "hex",
}
Progress = Callable[[int], None]


@dataclass
class SnapshotInfo:
    name: str
    store: str
    created_at: str
    created_by: str
    tables: list[dict[str, Any]]
    rows: int
    bytes: int
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("manifest")
        return d


def set_output(conn: psycopg.Connection) -> None:
    for k, v in SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, true)", [k, v])


def manifest_head(
    conn: psycopg.Connection, name: str, source: dict[str, Any] | None
) -> dict[str, Any]:
    head = conn.execute(
        "SELECT now()::text, session_user, current_database(),"
        " current_setting('server_version'), current_setting('lc_monetary')"
    ).fetchone()
    assert head is not None
    return {
        "format": FORMAT,
        "name": name,
        "created_at": head[0],
        "created_by": head[1],
        "database": head[2],
        "server_version": head[3],
        "settings": {**SETTINGS, "lc_monetary": head[4]},
        "source": source or {},
        "items": [],
    }


def snapshot_info(manifest: dict[str, Any], store: str) -> SnapshotInfo:
    items = manifest.get("items", [])
    return SnapshotInfo(
        manifest["name"],
        store,
        manifest["created_at"],
        manifest["created_by"],
        [
            {
                "table": f"{i['schema']}.{i['table']}",
                "rows": i["rows"],
                "bytes": i["bytes"],
                "columns": None if i["all_columns"] else [c["name"] for c in i["columns"]],
                "where": i["where"],
                "parts": len(i.get("parts", [])),
            }
            for i in items
        ],
        sum(i["rows"] for i in items),
        sum(i["bytes"] for i in items),
        manifest,
    )


def check_format(manifest: dict[str, Any], where: str) -> dict[str, Any]:
    fmt = manifest.get("format")
    if not isinstance(fmt, int):
        raise RecoveryError(f"{where}: not a snapshot manifest (no format number)")
    if fmt > FORMAT:
        raise RecoveryError(
            f"{where}: manifest format {fmt} is newer than this tool reads ({FORMAT}): "
            "upgrade the recovery package"
        )
    return manifest


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConflictError(f"{path}: manifest unreadable ({exc})") from None
    if not isinstance(doc, dict):
        raise ConflictError(f"{path}: manifest unreadable (not a JSON object)")
    return check_format(doc, str(path))
