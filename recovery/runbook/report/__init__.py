"""The incident report of a runbook run: Markdown, JSON and a self-contained HTML page.

`build()` reads one run (`runbook_runs`, `runbook_steps`), the approval requests its
steps name (`approval_requests`, `approvals`) and the captured statements of the
tables it touched (`stmt`, `captured`) into one JSON-ready document;
`render_markdown()` and `render_html()` turn that document (or report.json read
back) into text; `write_report()` writes all three files.  The runbook engine
calls `write_report()` at the end of every run.

Every step result is read tolerantly: any field may be missing, and what is there
is rendered.  The HTML page needs no network and no script: inline CSS and one
inline SVG bar chart per affected table (one bar per minute, rows written under
the selected tag in a strong colour, the repair's own writes in blue, other
writes in grey).

Time window of the chart (all times UTC):
  * start: 30 minutes before the first captured change of the affected tables
    under the selected tag(s) (the bad deploy), so the spike shows against the
    traffic before it; with no selected tag, or none of its changes captured,
    10 minutes before the first captured change of the affected tables in the
    24 hours before the run started (the run's start minus 10 minutes when there
    is none);
  * end: the run's finish, or now for a run that has not finished.
"Affected tables" are the tables named in the results of the run's plan, apply and
restore steps; a run that names none gets all captured tables that changed in
the window.  "Selected tags" are the tags of those steps' selectors.
"""

from .chart import OTHER_COLOUR, RECOVERY_COLOUR, SELECTED_COLOUR
from .html import render_html
from .markdown import render_markdown
from .model import COUNT_FIELDS, REPORT_VERSION, build
from .queries import BEFORE_TAG, LEAD, LOOKBACK, RECOVERY_TAG_RE
from .sections import fmt_duration, fmt_time
from .summary import APPLY_KINDS, PLAN_KINDS
from .write import write_report

__all__ = [
    "APPLY_KINDS",
    "BEFORE_TAG",
    "COUNT_FIELDS",
    "LEAD",
    "LOOKBACK",
    "OTHER_COLOUR",
    "PLAN_KINDS",
    "RECOVERY_COLOUR",
    "RECOVERY_TAG_RE",
    "REPORT_VERSION",
    "SELECTED_COLOUR",
    "build",
    "fmt_duration",
    "fmt_time",
    "render_html",
    "render_markdown",
    "write_report",
]
