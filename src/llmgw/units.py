"""Money and calendar time: the one module that converts, parses and formats them.

Invariants:

* Money is an ``int`` of nano-dollars (1e-9 USD). ``parse_usd`` is exact (an amount finer than a
  nano-dollar is refused, never rounded) and no float takes part in it; ``usd`` is the one formatter.
* Time is an ``int`` of epoch milliseconds, UTC. Nothing here reads a clock: every function takes
  the instant as an argument (business time comes from ``clock``). Windows are half-open
  ``[start, end)`` and calendar-aligned in UTC.
* Text times are ISO-8601 UTC with a ``Z``: ``2027-01-01T00:00:00Z``.
* A value a user gave that cannot be read is a ``UsageError`` whose message starts with the field
  (``what: reason``, ``param=what``); without ``what`` the message is the reason alone.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation

from .errors import UsageError
from .tomltext import show

NANOS_PER_USD = 1_000_000_000
MAX_NANOS = 2**63 - 1  # what an SQLite INTEGER holds
DAY_MS = 86_400_000
PERIODS = ("day", "week", "month", "total")  # budget periods (``window`` also knows "year")

_MAX_USD = Decimal(MAX_NANOS).scaleb(-9)
_NANO = Decimal("1e-9")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_MS = timedelta(milliseconds=1)


def _bad(what: str | None, reason: str) -> UsageError:
    return UsageError(f"{what}: {reason}" if what else reason, param=what)


# ---- money ---------------------------------------------------------------------------------------


def parse_usd(value: object, what: str | None = None) -> int:
    """USD (``150``, ``12.50``, ``"$1_000"``, a TOML ``Decimal``; a float as written) → nano-dollars.

    ``UsageError`` unless it is a finite, non-negative amount of at most 9 decimals that fits the database.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise _bad(what, f"expected an amount in USD such as 150 or 12.50, got {show(value)}")
    text = value.strip().removeprefix("$").replace("_", "") if isinstance(value, str) else str(value)
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise _bad(what, f"expected an amount in USD such as 150 or 12.50, got {show(value)}") from None
    if not amount.is_finite():
        raise _bad(what, f"expected a finite amount in USD, got {show(value)}")
    if amount < 0:
        raise _bad(what, f"must not be negative, got {show(value)}")
    if amount > _MAX_USD:
        raise _bad(what, f"{show(value)} is too large")
    exact = amount.quantize(_NANO)
    if exact != amount:
        raise _bad(what, f"{show(value)} is finer than a nano-dollar (use at most 9 decimals)")
    return int(exact.scaleb(9))


def usd(nanos: int, *, places: int = 9, dollar: bool = True) -> str:
    """``$200.00``, ``$0.00015``, ``-$1.50``; ``dollar=False``: ``0.00015`` (headers, JSON, CSV).

    The rule: round half-up to ``places`` decimals (the default, 9, is exact), then drop trailing
    zeros down to cents. A non-zero amount never shows as zero: when it would round to nothing it is
    rounded at its first significant digit instead (``usd(150_000, places=2) == "$0.0002"``).
    """
    a = abs(nanos)
    if places < 9:
        r = (a + 10 ** (8 - places) * 5) // 10 ** (9 - places)
        if r == 0 and a:
            places = 10 - len(str(a))
            r = (a + 10 ** (8 - places) * 5) // 10 ** (9 - places) if places < 9 else a
        a = r
    else:
        places = 9
    whole, frac = divmod(a, 10**places)
    digits = f"{frac:0{places}d}".rstrip("0").ljust(min(2, places), "0") if places else ""
    return f"{'-' if nanos < 0 else ''}{'$' if dollar else ''}{whole}{'.' if digits else ''}{digits}"


# ---- calendar time -------------------------------------------------------------------------------


def epoch_ms(dt: date) -> int:
    """A ``datetime`` (naive = UTC) or a ``date`` (its 00:00 UTC) → epoch milliseconds, exactly."""
    if not isinstance(dt, datetime):
        return _day_ms(dt)
    return ((dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt) - _EPOCH) // _MS


def iso_utc(ms: int, *, millis: bool = False) -> str:
    """``2026-12-01T00:00:00Z`` (whole seconds, truncated), or with ``millis``
    ``2026-12-01T00:00:00.250Z``."""
    text = f"{_EPOCH + timedelta(milliseconds=ms):%Y-%m-%dT%H:%M:%S}"
    return f"{text}.{ms % 1000:03d}Z" if millis else text + "Z"


def parse_time(value: object, what: str | None = None) -> int:
    """``YYYY-MM-DD`` (00:00 UTC), an ISO-8601 date-time (UTC unless it has an offset; ``Z`` allowed)
    or a TOML date / date-time → epoch milliseconds; ``UsageError`` for anything else."""
    if isinstance(value, date):
        return epoch_ms(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return epoch_ms(datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text))
        except ValueError:
            pass
    raise _bad(what, "expected YYYY-MM-DD or an ISO-8601 date-time such as 2027-01-01T12:00:00Z "
                     f"(UTC unless it has an offset), got {show(value)}")


def _day_ms(d: date) -> int:
    return (d.toordinal() - _EPOCH_ORDINAL) * DAY_MS


def window(period: str, now_ms: int) -> tuple[int, int | None]:
    """``(start_ms, end_ms)`` of the UTC calendar window holding ``now_ms``; the end is exclusive.

    ``day``: midnight to midnight; ``week``: ISO week, from Monday 00:00; ``month``: from the 1st;
    ``year``: from 1 January; ``total``: ``(0, None)`` (never ends).
    """
    if period == "total":
        return 0, None
    day = now_ms // DAY_MS
    if period == "day":
        return day * DAY_MS, (day + 1) * DAY_MS
    if period == "week":
        monday = day - (day + 3) % 7  # 1970-01-01 was a Thursday (weekday 3, Monday = 0)
        return monday * DAY_MS, (monday + 7) * DAY_MS
    d = date.fromordinal(day + _EPOCH_ORDINAL)
    if period == "month":
        return _day_ms(d.replace(day=1)), _day_ms(date(d.year + d.month // 12, d.month % 12 + 1, 1))
    if period == "year":
        return _day_ms(date(d.year, 1, 1)), _day_ms(date(d.year + 1, 1, 1))
    raise ValueError(f"unknown period {period!r} (expected one of {', '.join(PERIODS)} or year)")
