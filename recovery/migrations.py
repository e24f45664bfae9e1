"""The Alembic integration, at its documented import path (`recovery.migrations`).

It lives in `recovery.guardrails.alembic`; see README "Alembic".
"""

from .guardrails.alembic import guard_alembic

__all__ = ["guard_alembic"]
