"""The inline SVG bar chart of one table's rows changed per minute."""

from __future__ import annotations

import html
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


def svg_chart(
    table: str,
    pts: list[dict[str, Any]],
    start: datetime,
    end: datetime,
    tags: str,
    markers: list[tuple[str, datetime]],
) -> str:
    width, height, left, right, top, bottom = 1000, 230, 60, 20, 20, 46
    pw, ph = width - left - right, height - top - bottom
    first, last = floor_minute(start), floor_minute(end)
    slots = int((last - first).total_seconds() // 60) + 1
    slot_w = pw / slots
    bar_w = max(1.0, slot_w * 0.8)
    totals = [
        (p.get("selected") or 0) + (p.get("other") or 0) + (p.get("recovery") or 0) for p in pts
    ]
    ymax = nice_step(max(totals, default=0))

    def y(v: float) -> float:
        return top + ph - ph * v / ymax

    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'data-table="{esc(table)}" aria-label="{esc(f"rows changed per minute in {table}")}">',
        f'<text x="{left}" y="13" font-weight="600">{esc(table)}</text>',
    ]
    for v in (0, ymax // 2 if ymax % 2 == 0 else ymax / 2, ymax):
        yy = y(v)
        out.append(
            f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{yy:.1f}" '
            f'y2="{yy:.1f}"/><text x="{left - 6}" y="{yy + 4:.1f}" '
            f'text-anchor="end">{esc(f"{v:g}")}</text>'
        )
    # Time axis: ticks on round minutes, at most ~12 labels.
    step = next(
        (s for s in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440) if slots / s <= 12), 2880
    )
    for i in range(slots):
        t = first + timedelta(minutes=i)
        if (t.hour * 60 + t.minute) % step:
            continue
        x = left + (i + 0.5) * slot_w
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
        f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">'
        f"{esc(f'minute (UTC), {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}')}</text>"
        f'<text x="14" y="{top + ph / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2:.1f})">rows</text>'
    )
    for p, total in zip(pts, totals):
        at = parse_iso(p.get("minute"))
        i = int((floor_minute(at) - first).total_seconds() // 60) if at is not None else -1
        if not 0 <= i < slots or at is None:
            continue
        x = left + i * slot_w + (slot_w - bar_w) / 2
        sel, oth, rep = p.get("selected") or 0, p.get("other") or 0, p.get("recovery") or 0
        tip = f"{at:%Y-%m-%d %H:%M} UTC, {table}: {total} rows ({sel} under {tags}, {oth} other"
        tip += f", {rep} written by recovery)" if rep else ")"
        out.append(
            f'<rect class="bar" data-minute="{esc(p.get("minute"))}" data-rows="{total}" '
            f'data-selected="{sel}" data-other="{oth}" data-recovery="{rep}" '
            f'x="{x:.2f}" y="{y(total):.2f}" width="{bar_w:.2f}" '
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
                    f'y="{y(lo + n):.2f}" width="{bar_w:.2f}" '
                    f'height="{ph * n / ymax:.2f}" fill="{colour}"/>'
                )
    for n, (label, when) in enumerate(markers):
        if first <= floor_minute(when) <= last:
            x = left + ((when - first).total_seconds() / 60) * slot_w
            # Labels on separate lines (start and finish are often close), kept inside.
            anchor, dx = ("end", -3) if x > left + pw - 90 else ("start", 3)
            out.append(
                f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" '
                f'y2="{top + ph}"/><text x="{x + dx:.1f}" y="{top + 10 + 12 * n}" '
                f'text-anchor="{anchor}">{esc(label)}</text>'
            )
    out.append("</svg>")
    return "".join(out)
