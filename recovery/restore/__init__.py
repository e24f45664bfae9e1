"""Restore a snapshot's rows (`apply`: restore() and its transaction)."""

from .apply import RestoreReport, RestoreTable, restore

__all__ = ["RestoreReport", "RestoreTable", "restore"]
