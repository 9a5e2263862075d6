"""units: exact money (parse and format nano-dollars) and calendar time (ISO text, parsing, UTC
windows with month, year and leap-day rollover)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from llmgw.errors import UsageError
from llmgw.units import MAX_NANOS, epoch_ms, iso_utc, parse_time, parse_usd, usd, window

USD = 1_000_000_000


def ms(s: str) -> int:
    """``2026-11-26T13:00:00`` (UTC) → epoch milliseconds (independently of ``units``)."""
    return int(datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp() * 1000)


# ---- money ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("nanos", "text"), [
    (0, "$0.00"),
    (200 * USD, "$200.00"),
    (150_000, "$0.00015"),
    (1, "$0.000000001"),
    (1_500, "$0.0000015"),
    (199_999_999_999, "$199.999999999"),
    (123_456_789_012, "$123.456789012"),
    (-1_500_000_000, "-$1.50"),
    (MAX_NANOS, "$9223372036.854775807"),
])
def test_usd_is_exact_with_the_decimals_the_value_needs(nanos: int, text: str) -> None:
    assert usd(nanos) == text
    assert usd(nanos, dollar=False) == text.replace("$", "")
    assert Decimal(usd(nanos, dollar=False)) == Decimal(nanos).scaleb(-9)


@pytest.mark.parametrize(("nanos", "places", "text"), [
    (61 * USD, 2, "$61.00"),
    (12_345_678_901, 2, "$12.35"),  # half-up
    (12_344_999_999, 2, "$12.34"),
    (150_000, 2, "$0.0002"),  # under a cent: rounded at its first significant digit, never $0.00
    (4_999, 2, "$0.000005"),
    (1, 2, "$0.000000001"),
    (9_600_000, 2, "$0.01"),
    (-150_000, 4, "-$0.0002"),
    (0, 2, "$0.00"),
    (12_300_000_000, 1, "$12.3"),
])
def test_rounded_usd_never_shows_a_non_zero_amount_as_zero(nanos: int, places: int, text: str) -> None:
    assert usd(nanos, places=places) == text


def test_usd_never_prints_zero_for_any_cheap_call() -> None:
    for n in [*range(1, 2000), *random.Random(1).sample(range(1, 10**8), 2000)]:
        for places in (2, 4, 6):
            assert Decimal(usd(n, places=places, dollar=False)) > 0, (n, places)


@pytest.mark.parametrize(("value", "nanos"), [
    ("150", 150 * USD), ("12.50", 12_500_000_000), ("$1_000", 1000 * USD), (" 7 ", 7 * USD),
    ("0.000000001", 1), ("1e3", 1000 * USD), (3, 3 * USD), (Decimal("0.15"), 150_000_000),
    (0.15, 150_000_000), ("0", 0), ("9223372036.854775807", MAX_NANOS),
])
def test_parse_usd_is_exact(value: object, nanos: int) -> None:
    assert parse_usd(value) == nanos
    assert isinstance(parse_usd(value), int)


@pytest.mark.parametrize(("value", "message"), [
    ("ten", '--limit: expected an amount in USD such as 150 or 12.50, got "ten"'),
    ("", '--limit: expected an amount in USD such as 150 or 12.50, got ""'),
    (True, "--limit: expected an amount in USD such as 150 or 12.50, got true"),
    ([1], "--limit: expected an amount in USD such as 150 or 12.50, got an array"),
    ("nan", '--limit: expected a finite amount in USD, got "nan"'),
    (float("inf"), "--limit: expected a finite amount in USD, got inf"),
    ("-5", '--limit: must not be negative, got "-5"'),
    ("0.0000000001", '--limit: "0.0000000001" is finer than a nano-dollar (use at most 9 decimals)'),
    ("1e-999999999", '--limit: "1e-999999999" is finer than a nano-dollar (use at most 9 decimals)'),
    ("1e30", '--limit: "1e30" is too large'),
    ("1e999999999", '--limit: "1e999999999" is too large'),
    ("9223372036.854775808", '--limit: "9223372036.854775808" is too large'),
])
def test_parse_usd_errors_are_usage_errors_naming_the_field(value: object, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_usd(value, "--limit")
    assert info.value.message == message and info.value.param == "--limit" and info.value.exit_code == 2
    with pytest.raises(UsageError) as info:
        parse_usd(value)
    assert info.value.message == message.removeprefix("--limit: ") and info.value.param is None


# ---- instants ------------------------------------------------------------------------------------


def test_iso_utc() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00Z"
    assert iso_utc(ms("2027-01-01T00:00:00")) == "2027-01-01T00:00:00Z"
    assert iso_utc(ms("2028-02-29T23:59:59") + 999) == "2028-02-29T23:59:59Z"  # truncated to the second
    assert iso_utc(ms("2026-11-27T08:30:00") + 250, millis=True) == "2026-11-27T08:30:00.250Z"
    assert iso_utc(ms("2026-11-27T08:30:00"), millis=True) == "2026-11-27T08:30:00.000Z"
    assert iso_utc(-1, millis=True) == "1969-12-31T23:59:59.999Z"


@pytest.mark.parametrize(("text", "iso"), [
    ("2027-01-01", "2027-01-01T00:00:00.000Z"),  # a date: 00:00 UTC
    ("2028-02-29", "2028-02-29T00:00:00.000Z"),
    ("2027-01-01T12:00:00Z", "2027-01-01T12:00:00.000Z"),
    ("2027-01-01t12:00:00z", "2027-01-01T12:00:00.000Z"),
    (" 2027-01-01T12:00:00.250Z ", "2027-01-01T12:00:00.250Z"),
    ("2027-01-01T12:00:00+02:00", "2027-01-01T10:00:00.000Z"),
    ("2027-01-01T10:00", "2027-01-01T10:00:00.000Z"),  # naive = UTC
    ("2027-01-01T00:00:00+00:00", "2027-01-01T00:00:00.000Z"),  # what older databases hold
])
def test_parse_time(text: str, iso: str) -> None:
    assert iso_utc(parse_time(text), millis=True) == iso


def test_parse_time_takes_toml_dates_and_datetimes() -> None:
    assert parse_time(date(2028, 2, 29)) == ms("2028-02-29T00:00:00")
    assert parse_time(datetime(2027, 1, 1, 12)) == ms("2027-01-01T12:00:00")
    assert parse_time(datetime(2027, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5)))) == ms("2027-01-01T17:00:00")
    assert epoch_ms(datetime(1969, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)) == -1


@pytest.mark.parametrize("value", ["next tuesday", "", "2027-02-29", "2027-13-01", "2027-01-01T25:00", 20270101, None])
def test_parse_time_errors_are_usage_errors_naming_the_field(value: object) -> None:
    with pytest.raises(UsageError) as info:
        parse_time(value, "--since")
    assert info.value.message.startswith("--since: expected YYYY-MM-DD or an ISO-8601 date-time such as "
                                         "2027-01-01T12:00:00Z (UTC unless it has an offset), got ")
    assert info.value.param == "--since"


# ---- windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("now", "period", "start", "end"), [
    ("2026-11-26T13:45:10", "day", "2026-11-26T00:00:00", "2026-11-27T00:00:00"),
    ("2026-11-26T00:00:00", "day", "2026-11-26T00:00:00", "2026-11-27T00:00:00"),
    ("2026-12-31T23:59:59.999", "day", "2026-12-31T00:00:00", "2027-01-01T00:00:00"),
    # ISO weeks start on Monday 00:00 UTC, also across a year boundary
    ("2026-11-26T13:00:00", "week", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),  # a Thursday
    ("2026-11-23T00:00:00", "week", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),  # Monday midnight
    ("2026-11-29T23:59:59.999", "week", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),  # Sunday night
    ("2024-12-31T12:00:00", "week", "2024-12-30T00:00:00", "2025-01-06T00:00:00"),  # ISO 2025-W01
    ("2021-01-03T12:00:00", "week", "2020-12-28T00:00:00", "2021-01-04T00:00:00"),  # ISO 2020-W53
    ("1970-01-01T00:00:00", "week", "1969-12-29T00:00:00", "1970-01-05T00:00:00"),
    # months, leap years included
    ("2026-11-26T13:00:00", "month", "2026-11-01T00:00:00", "2026-12-01T00:00:00"),
    ("2026-12-31T23:59:59.999", "month", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
    ("2024-02-29T23:59:59.999", "month", "2024-02-01T00:00:00", "2024-03-01T00:00:00"),
    ("2028-02-29T00:00:00", "month", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),  # leap day
    ("2028-02-29T23:59:59.999", "day", "2028-02-29T00:00:00", "2028-03-01T00:00:00"),
    ("2028-03-01T00:00:00", "month", "2028-03-01T00:00:00", "2028-04-01T00:00:00"),
    ("2028-02-29T12:00:00", "week", "2028-02-28T00:00:00", "2028-03-06T00:00:00"),  # Tuesday
    ("2027-01-31T23:59:59.999", "month", "2027-01-01T00:00:00", "2027-02-01T00:00:00"),
    ("2027-04-30T23:59:59.999", "month", "2027-04-01T00:00:00", "2027-05-01T00:00:00"),
    ("2023-02-15T00:00:00", "month", "2023-02-01T00:00:00", "2023-03-01T00:00:00"),
    ("2000-02-10T00:00:00", "month", "2000-02-01T00:00:00", "2000-03-01T00:00:00"),  # leap (div by 400)
    ("2100-02-10T00:00:00", "month", "2100-02-01T00:00:00", "2100-03-01T00:00:00"),  # not leap
    ("2026-03-01T00:00:00", "month", "2026-03-01T00:00:00", "2026-04-01T00:00:00"),
])
def test_calendar_windows(now: str, period: str, start: str, end: str) -> None:
    assert window(period, ms(now)) == (ms(start), ms(end))


def test_month_lengths_follow_leap_years() -> None:
    days = lambda y, m: (window("month", ms(f"{y}-{m:02d}-10T00:00:00"))[1]  # noqa: E731
                         - window("month", ms(f"{y}-{m:02d}-10T00:00:00"))[0]) // 86_400_000
    assert [days(2024, m) for m in range(1, 13)] == [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    assert days(2023, 2) == 28 and days(2100, 2) == 28 and days(2000, 2) == 29


def test_total_never_resets_and_years_are_calendar_years() -> None:
    assert window("total", ms("2026-11-26T00:00:00")) == (0, None)
    assert window("year", ms("2028-02-29T12:00:00")) == (ms("2028-01-01T00:00:00"), ms("2029-01-01T00:00:00"))
    assert window("year", ms("2026-12-31T23:59:59.999")) == (ms("2026-01-01T00:00:00"), ms("2027-01-01T00:00:00"))
    with pytest.raises(ValueError, match="unknown period 'fortnight'"):
        window("fortnight", 0)


def test_windows_agree_with_datetime_everywhere() -> None:
    """Random instants from 1950 to 2150 against the calendar as ``datetime`` computes it."""
    rng = random.Random(7)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for _ in range(3000):
        now = rng.randrange(ms("1950-01-01T00:00:00"), ms("2150-01-01T00:00:00"))
        dt = epoch + timedelta(milliseconds=now)
        day = dt.replace(hour=0, minute=0, second=0, microsecond=0)
        monday = day - timedelta(days=dt.isoweekday() - 1)
        first = day.replace(day=1)
        nxt = first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)
        to_ms = lambda d: int((d - epoch) / timedelta(milliseconds=1))  # noqa: E731
        assert window("day", now) == (to_ms(day), to_ms(day + timedelta(days=1)))
        assert window("week", now) == (to_ms(monday), to_ms(monday + timedelta(days=7)))
        assert window("month", now) == (to_ms(first), to_ms(nxt))
