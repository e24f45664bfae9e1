"""Exceptions that carry the CLI exit code of PRODUCT.md."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its class name when it has none): for
    one-line errors and for the records of failed operations."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C): the transaction in progress was rolled back"
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]


class RecoveryError(Exception):
    """Bad input, connection or privilege problem: exit 1, nothing changed."""

    exit_code = 1


class ConflictError(RecoveryError):
    """Refused because of conflicts or a failed verification: exit 2, nothing changed."""

    exit_code = 2

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class ApprovalRequired(RecoveryError):
    """Refused because approval is needed or a blast-radius cap was hit: exit 3."""

    exit_code = 3


class CapExceeded(RecoveryError):
    """A blast-radius cap was hit: the writing transaction aborted, exit 3."""

    exit_code = 3
