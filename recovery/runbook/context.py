"""One execution of a run (its connection, parameters and results so far), and the
exceptions with which a step stops it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from ..errors import ConflictError
from .definition import Runbook, Step

Echo = Callable[[str], None]


class CheckFailed(ConflictError):
    """A sql_check's value is not what the runbook expects: a failed verification, exit 2."""


class Wait(Exception):
    """A step stops the run until `resume`: an approval (exit 3) or a pause (exit 0)."""

    def __init__(self, message: str, exit_code: int, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.result = result


class Execution:
    """One execution of a run: the connection, parameters and results so far."""

    def __init__(
        self,
        conn: psycopg.Connection,
        rb: Runbook,
        run_id: int,
        params: dict[str, Any],
        dry_run: bool,
        schema: str,
        echo: Echo | None,
    ) -> None:
        self.conn, self.rb, self.run_id, self.params = conn, rb, run_id, params
        self.dry_run, self.schema, self.echo = dry_run, schema, echo or (lambda _s: None)
        self.results: dict[str, dict[str, Any] | None] = {}
        self.step: Step | None = None
        self.n = 0
        self.args: dict[str, Any] = {}
        self.pending_approval: int | None = None

    def lookup(self, ref: str) -> Any:
        head, *path = ref.split(".")
        if head == "params":
            value: Any = self.params.get(path[0])
            path = path[1:]
        elif head == "run":
            value = {"id": self.run_id, "name": self.rb.name, "dry_run": self.dry_run}
        else:
            value = self.results.get(path[0])
            path = path[1:]
        for p in path:
            if isinstance(value, dict):
                value = value.get(p)
            elif isinstance(value, list) and p.isdigit() and int(p) < len(value):
                value = value[int(p)]
            else:
                return None
        return value

    def kind_of(self, step_id: str) -> str:
        return next(s.kind for s in self.rb.steps if s.id == step_id)
