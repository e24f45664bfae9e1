"""Two-person approval: an operation larger than the thresholds waits for another user.

`requests` records, approves and consumes requests and gates an operation on them (the
rules live in sql/approval.sql); `plans` builds the plan an undo or a restore submits,
and its hash.
"""

from .plans import plan_hash, restore_plan, rollback_plan
from .requests import (
    DEFAULTS,
    OPEN,
    ApprovalNeeded,
    ApprovalPending,
    Request,
    Thresholds,
    approve,
    authorize,
    gate,
    get,
    list_requests,
    needs_approval,
    pending,
    request,
    thresholds,
)

__all__ = [
    "DEFAULTS",
    "OPEN",
    "ApprovalNeeded",
    "ApprovalPending",
    "Request",
    "Thresholds",
    "approve",
    "authorize",
    "gate",
    "get",
    "list_requests",
    "needs_approval",
    "pending",
    "plan_hash",
    "request",
    "restore_plan",
    "rollback_plan",
    "thresholds",
]
