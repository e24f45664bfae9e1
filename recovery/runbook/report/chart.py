"""The inline SVG bar chart of one table's rows changed per minute."""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .sections import cell_text, parse_iso

SELECTED_COLOUR = "#d62728"
RECOVERY_COLOUR = "#1f77b4"
OTHER_COLOUR = "#b0b0b0"


def esc(v: Any) -> str:
    return html.escape(cell_text(v), quote=True)


def nice_step(n: int) -> int:
    if n <= 0:
        return 1
    base: int = 10 ** (len(str(n)) - 1)  # int ** int is typed Any (a negative power is a float)
    for m in (1, 2, 5, 10):
        if n <= m * base:
            return m * base
    return 10 * base


def floor_minute(d: datetime) -> datetime:
    return d.replace(second=0, microsecond=0)


@dataclass(frozen=True)
class _Frame:
    """The chart's geometry: the plot area, the minute slots and the value scale."""

    first: datetime
    last: datetime
    slots: int
    ymax: int
    width: int = 1000
    height: int = 230
    left: int = 60
    top: int = 20
    pw: int = 1000 - 60 - 20
    ph: int = 230 - 20 - 46

    @property
    def slot_w(self) -> float:
        return self.pw / self.slots

    @property
    def bar_w(self) -> float:
        return max(1.0, self.slot_w * 0.8)

    def y(self, v: float) -> float:
        return self.top + self.ph - self.ph * v / self.ymax


def svg_chart(
    table: str,
    pts: list[dict[str, Any]],
    start: datetime,
    end: datetime,
    tags: str,
    markers: list[tuple[str, datetime]],
) -> str:
    first, last = floor_minute(start), floor_minute(end)
    totals = [
        (p.get("selected") or 0) + (p.get("other") or 0) + (p.get("recovery") or 0) for p in pts
    ]
    f = _Frame(
        first,
        last,
        int((last - first).total_seconds() // 60) + 1,
        nice_step(max(totals, default=0)),
    )
    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{f.width}" '
        f'height="{f.height}" viewBox="0 0 {f.width} {f.height}" role="img" '
        f'data-table="{esc(table)}" aria-label="{esc(f"rows changed per minute in {table}")}">',
        f'<text x="{f.left}" y="13" font-weight="600">{esc(table)}</text>',
    ]
    out += _axes(f)
    out += _bars(f, table, pts, totals, tags)
    out += _markers(f, markers)
    out.append("</svg>")
    return "".join(out)


def _axes(f: _Frame) -> list[str]:
    """The value grid, the time ticks and labels, the axes and their titles."""
    left, top, pw, ph, first, last = f.left, f.top, f.pw, f.ph, f.first, f.last
    out = []
    ymax = f.ymax
    for v in (0, ymax // 2 if ymax % 2 == 0 else ymax / 2, ymax):
        yy = f.y(v)
        out.append(
            f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{yy:.1f}" '
            f'y2="{yy:.1f}"/><text x="{left - 6}" y="{yy + 4:.1f}" '
            f'text-anchor="end">{esc(f"{v:g}")}</text>'
        )
    # Time axis: ticks on round minutes, at most ~12 labels.
    step = next(
        (s for s in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440) if f.slots / s <= 12),
        2880,
    )
    for i in range(f.slots):
        t = first + timedelta(minutes=i)
        if (t.hour * 60 + t.minute) % step:
            continue
        x = left + (i + 0.5) * f.slot_w
        out.append(
            f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" '
            f'y2="{top + ph + 4}"/><text x="{x:.1f}" y="{top + ph + 16}" '
            f'text-anchor="middle">{esc(t.strftime("%H:%M"))}</text>'
        )
    out.append(
        f'<line class="axis" x1="{left}" x2="{left + pw}" y1="{top + ph}" '
        f'y2="{top + ph}"/><line class="axis" x1="{left}" x2="{left}" y1="{top}" '
        f'y2="{top + ph}"/>'
    )
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{f.height - 6}" text-anchor="middle">'
        f"{esc(f'minute (UTC), {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}')}</text>"
        f'<text x="14" y="{top + ph / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2:.1f})">rows</text>'
    )
    return out


def _bars(
    f: _Frame, table: str, pts: list[dict[str, Any]], totals: list[int], tags: str
) -> list[str]:
    """One grey bar per minute, with the selected and recovery's segments over it."""
    out = []
    bar_w, ph, ymax = f.bar_w, f.ph, f.ymax
    for p, total in zip(pts, totals):
        at = parse_iso(p.get("minute"))
        i = int((floor_minute(at) - f.first).total_seconds() // 60) if at is not None else -1
        if not 0 <= i < f.slots or at is None:
            continue
        x = f.left + i * f.slot_w + (f.slot_w - bar_w) / 2
        sel, oth, rep = p.get("selected") or 0, p.get("other") or 0, p.get("recovery") or 0
        tip = f"{at:%Y-%m-%d %H:%M} UTC, {table}: {total} rows ({sel} under {tags}, {oth} other"
        tip += f", {rep} written by recovery)" if rep else ")"
        out.append(
            f'<rect class="bar" data-minute="{esc(p.get("minute"))}" data-rows="{total}" '
            f'data-selected="{sel}" data-other="{oth}" data-recovery="{rep}" '
            f'x="{x:.2f}" y="{f.y(total):.2f}" width="{bar_w:.2f}" '
            f'height="{ph * total / ymax:.2f}" fill="{OTHER_COLOUR}">'
            f"<title>{esc(tip)}</title></rect>"
        )
        # Segments over the grey bar: selected at the bottom, recovery's writes on top.
        for cls, lo, n, colour in (
            ("selected", 0, sel, SELECTED_COLOUR),
            ("recovery", sel + oth, rep, RECOVERY_COLOUR),
        ):
            if n:
                out.append(
                    f'<rect class="seg seg-{cls}" pointer-events="none" x="{x:.2f}" '
                    f'y="{f.y(lo + n):.2f}" width="{bar_w:.2f}" '
                    f'height="{ph * n / ymax:.2f}" fill="{colour}"/>'
                )
    return out


def _markers(f: _Frame, markers: list[tuple[str, datetime]]) -> list[str]:
    """A vertical line and a label per marker (the run's start, finish, marks)."""
    out = []
    for n, (label, when) in enumerate(markers):
        if f.first <= floor_minute(when) <= f.last:
            x = f.left + ((when - f.first).total_seconds() / 60) * f.slot_w
            # Labels on separate lines (start and finish are often close), kept inside.
            anchor, dx = ("end", -3) if x > f.left + f.pw - 90 else ("start", 3)
            out.append(
                f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{f.top}" '
                f'y2="{f.top + f.ph}"/><text x="{x + dx:.1f}" y="{f.top + 10 + 12 * n}" '
                f'text-anchor="{anchor}">{esc(label)}</text>'
            )
    return out
