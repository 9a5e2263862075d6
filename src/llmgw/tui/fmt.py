"""Compact text for the dashboard's cells: money, bars, sparklines, rates, times (plain strings).

No Textual and no styling here (``app`` adds colour), so every cell's text is testable alone.
Money is rounded half-up from integer nano-dollars with ``Decimal``, never through a float.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

NANOS_PER_USD = 1_000_000_000
SPARK = "▁▂▃▄▅▆▇█"
DASH = "—"


def money(nanos: int) -> str:
    """``$123.45``, ``$0.0042`` (under a cent: 4 decimals), ``$12.3k``, ``$4.56M``; ``$0`` for zero."""
    if nanos == 0:
        return "$0"
    sign = "-" if nanos < 0 else ""
    d = Decimal(abs(nanos)).scaleb(-9)
    if d >= 1_000_000:
        s = f"{(d / 1_000_000).quantize(Decimal('0.01'), ROUND_HALF_UP)}M"
    elif d >= 10_000:
        s = f"{(d / 1000).quantize(Decimal('0.1'), ROUND_HALF_UP)}k"
    elif d >= Decimal("0.01"):
        s = str(d.quantize(Decimal("0.01"), ROUND_HALF_UP))
    else:
        s = str(d.quantize(Decimal("0.0001"), ROUND_HALF_UP))
    return f"{sign}${s}"


def pct_used(spent: int, limit: int) -> int:
    """Whole percent of ``limit`` spent, rounded down (an empty limit: 100 once anything is spent)."""
    if limit <= 0:
        return 100 if spent > 0 else 0
    return spent * 100 // limit


def bar(spent: int, limit: int, width: int = 8) -> str:
    """``█████░░░ 61%``: ``width`` cells filled in proportion (full at or past the limit)."""
    pct = pct_used(spent, limit)
    if spent <= 0:
        filled = 0
    elif limit <= 0:
        filled = width
    else:
        filled = max(1, min(width, spent * width // limit))  # something spent always shows
    label = f"{pct}%" if pct < 1000 else ">999%"
    return "█" * filled + "░" * (width - filled) + f" {label:>4}"


def spark(values: list[int]) -> str:
    """One character per value, ``▁`` for zero and ``▂``..``█`` scaled to the largest value."""
    top = max(values, default=0)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[0] if v <= 0 else SPARK[1 + min(6, v * 6 // top)] for v in values)


def hit_rate(rate: float | None) -> str:
    """``42%``, or a dash when there was no cache lookup at all."""
    return DASH if rate is None else f"{round(rate * 100)}%"


def when(ms: int | None, now_ms: int) -> str:
    """``10:00:05`` (UTC) for a time on the same UTC day as ``now_ms``, else the day: ``11-25``."""
    if ms is None:
        return DASH
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    if dt.date() == datetime.fromtimestamp(now_ms // 1000, UTC).date():
        return dt.strftime("%H:%M:%S")
    return dt.strftime("%m-%d")


def stamp(ms: int) -> str:
    """``2026-11-27 10:00:05 UTC``"""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(ms: int | None, now_ms: int) -> str:
    """``5s``, ``3m``, ``2h``, ``4d`` since ``ms``; a dash for never."""
    if ms is None:
        return DASH
    s = max(0, (now_ms - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def cache_label(value: str | None) -> str:
    """``hit-exact`` → ``exact``, ``hit-semantic`` → ``sem``, others as they are, none → a dash."""
    if not value:
        return DASH
    return {"hit-exact": "exact", "hit-semantic": "sem"}.get(value, value[:6])


def tokens(row: dict[str, Any]) -> str:
    """``in/out`` tokens, shortened past 10k (``12k``)."""
    def k(n: int) -> str:
        return f"{n // 1000}k" if n >= 10_000 else str(n)
    return f"{k(int(row['prompt_tokens']))}/{k(int(row['completion_tokens']))}"


def latency(ms: float | None) -> str:
    if ms is None:
        return DASH
    return f"{ms / 1000:.1f}s" if ms >= 10_000 else f"{ms:.0f}ms"


def model(name: str | None, width: int) -> str:
    """A model name in ``width`` cells: whole if it fits, else without its ``provider/`` prefix, clipped."""
    if name and len(name) > width and "/" in name:
        name = name.split("/", 1)[1]
    return clip(name, width)


def clip(text: str | None, width: int) -> str:
    """``text`` cut to ``width`` with an ellipsis (a dash for none)."""
    if not text:
        return DASH
    return text if len(text) <= width else text[: width - 1] + "…"
