"""Guardrails: tags and blast-radius caps for a command, a connection or an engine
(`guard`), and the Alembic hook (`alembic`, documented as `recovery.migrations`).
The caps themselves are enforced by the capture hooks in the database."""

from .guard import GuardReport, GuardResult, guard, parse_per_table, run_guarded

__all__ = ["GuardReport", "GuardResult", "guard", "parse_per_table", "run_guarded"]
