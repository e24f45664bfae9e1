"""The one interface of the two snapshot stores (`dbstore.DbStore`, the database;
`dirstore.DirStore`, a directory), and the store that --store names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import psycopg

from ..db import DEFAULT_SCHEMA
from .dbstore import DbStore
from .dirstore import DirStore
from .manifest import Progress, SnapshotInfo
from .spec import Spec


class Store(Protocol):
    """Where snapshots are kept: the database (DbStore) or a directory (DirStore)."""

    # What SnapshotInfo.store says of a snapshot in it: "db", or the directory.
    label: str

    def refuse_existing(self, conn: psycopg.Connection, name: str) -> None:
        """Raise RecoveryError if a snapshot called name exists already."""

    def save(
        self,
        conn: psycopg.Connection,
        name: str,
        specs: Sequence[Spec],
        items: list[tuple[dict[str, Any], list[str]]],
        manifest: dict[str, Any],
        progress: Progress | None,
    ) -> None:
        """Save the rows of each spec (read in conn's transaction) and the manifest."""

    def discard(self) -> None:
        """Remove what a save that failed left behind."""

    def snapshots(
        self, conn: psycopg.Connection | None, problems: list[str] | None
    ) -> list[SnapshotInfo]:
        """The complete snapshots of the store."""
        ...

    def find(self, conn: psycopg.Connection | None, name: str) -> SnapshotInfo | None:
        """The snapshot called name, or None."""

    def verify_item(
        self, conn: psycopg.Connection | None, info: SnapshotInfo, item: dict[str, Any]
    ) -> tuple[str, str | None]:
        """Where a saved table is, and what is wrong with it (None: nothing)."""
        ...

    def drop(self, conn: psycopg.Connection | None, info: SnapshotInfo) -> None:
        """Remove a snapshot and its data."""


def store_for(store: str | None, schema: str = DEFAULT_SCHEMA) -> Store:
    """The store named by --store: the database (None or "db") or a directory."""
    if store in (None, "db"):
        return DbStore(schema)
    assert store is not None
    return DirStore(store)
