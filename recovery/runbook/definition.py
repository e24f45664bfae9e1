"""What a runbook is once read: its parameters and steps (spec.py reads and checks them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import RecoveryError


class RunbookInvalid(RecoveryError):
    """A runbook with problems: `errors` holds one line per problem (file:line, fix)."""

    def __init__(self, errors: list[str]) -> None:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(errors[0] + more)
        self.errors = errors


@dataclass
class Param:
    name: str
    type: str
    default: Any = None
    required: bool = True
    choices: list[Any] | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    description: str = ""


@dataclass
class Step:
    id: str
    kind: str
    args: dict[str, Any]
    when: str | None = None
    cond: Any = None  # the parsed `when`


@dataclass
class Runbook:
    name: str
    description: str
    params: dict[str, Param]
    steps: list[Step]
    file: str
    definition: dict[str, Any] = field(repr=False, default_factory=dict)
