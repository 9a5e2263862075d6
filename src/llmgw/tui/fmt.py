"""Compact text for the dashboard's cells: money, bars, sparklines, rates, times (plain strings).

No Textual and no styling here (``app`` adds colour), so every cell's text is testable alone.
Money and times are ``units``' formats, shortened to fit a cell.
"""

from __future__ import annotations

from typing import Any

from ..units import DAY_MS, iso_utc, usd

SPARK = "▁▂▃▄▅▆▇█"
DASH = "—"


def money(nanos: int) -> str:
    """``units.usd`` to the cent (``$123.45``; less than a cent to its first digit, ``$0.0002``), from
    $10k in thousands (``$12.3k``), from $1M in millions (``$4.56M``); ``$0`` for zero."""
    if nanos == 0:
        return "$0"
    a, sign = abs(nanos), (1 if nanos > 0 else -1)
    if a >= 10**15:
        return usd(sign * (a // 10**6), places=2) + "M"
    if a >= 10**13:
        return usd(sign * (a // 10**3), places=1) + "k"
    return usd(nanos, places=2)


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
    return iso_utc(ms)[11:19] if ms // DAY_MS == now_ms // DAY_MS else iso_utc(ms)[5:10]


def stamp(ms: int) -> str:
    """``2026-11-27 10:00:05 UTC``"""
    return iso_utc(ms).replace("T", " ").replace("Z", " UTC")


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


_PERIOD_SHORT = {"day": "d", "week": "wk", "month": "mo", "total": "total"}
_ERROR_SHORT = {"budget_exceeded": "budget", "rate_limit_exceeded": "rate-limit", "model_not_allowed": "model-denied",
                "invalid_api_key": "bad-key", "key_disabled": "key-disabled", "provider_no_api_key": "no-provider-key"}


def error_label(code: str) -> str:
    """A ledger error code as a short word: ``month_budget_exceeded`` → ``budget/mo``."""
    head, _, tail = code.partition("_budget_exceeded")
    if tail == "" and head in _PERIOD_SHORT and code.endswith("_budget_exceeded"):
        return "budget/" + _PERIOD_SHORT[head]
    return _ERROR_SHORT.get(code, code)


def error_codes(codes: list[tuple[str, int]], width: int) -> str:
    """The top error codes with their counts, most first, in ``width`` cells: ``budget/mo ×3, http_502 ×1``
    (a dash for none)."""
    if not codes:
        return DASH
    return clip(", ".join(f"{error_label(c)} ×{n}" for c, n in codes), width)
