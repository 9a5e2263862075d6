"""``llmgw report`` and ``llmgw tail`` against a real SQLite ledger under a temp LLMGW_HOME, run as
subprocesses: report totals equal the ledger to the nano-dollar, groups add up to the total, windows
are UTC calendar periods, and ``tail`` reads (and follows) the ledger next to a writer."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import wait_until
from llmgw import paths, reports
from llmgw.errors import UsageError
from llmgw.store.db import open_db
from llmgw.store.ledger import as_tuple, insert_sql, normalise_row

_SCRUB = ("LLMGW_CONFIG", "LLMGW_HOME", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")


def ms(iso: str) -> int:
    dt = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


# ---- a ledger to report on -----------------------------------------------------------------------

_seq = iter(range(1, 10**9))


def row(ts: str | int, *, customer: str | None = None, key: str | None = None, team: str | None = None,
        model: str | None = "openai/gpt-4o-mini", cost: int = 0, status: int = 200, error_type: str | None = None,
        tokens: tuple[int, int, int] = (0, 0, 0), cache: str | None = None) -> dict[str, Any]:
    n = next(_seq)
    return {
        "request_id": f"req_{n:06d}", "ts_ms": ts if isinstance(ts, int) else ms(ts), "route": "/v1/chat/completions",
        "model": model, "provider": model.split("/")[0] if model else None, "status": status,
        "outcome": "ok" if status < 400 and not error_type else "error", "error_type": error_type,
        "prompt_tokens": tokens[0], "completion_tokens": tokens[1], "cached_tokens": tokens[2], "cost_nanos": cost,
        "latency_ms": 12.5 + n, "key_id": key, "team_id": team, "customer_id": customer, "cache": cache,
    }


def insert(home: Path, rows: list[dict[str, Any]]) -> None:
    conn = open_db(paths.db_path(home))
    try:
        with conn:
            conn.executemany(insert_sql(), [as_tuple(normalise_row(r)) for r in rows])
    finally:
        conn.close()


def define(home: Path) -> None:
    """Customers, a team and keys (one without a customer), as the governance commands would write them."""
    home.mkdir(parents=True, exist_ok=True)
    conn = open_db(paths.db_path(home))
    now = "2026-10-01T00:00:00+00:00"
    try:
        with conn:
            conn.executemany("INSERT INTO customers (id, name, created_at) VALUES (?, ?, ?)",
                             [("acme", "Acme Corp", now), ("globex", "Globex Inc", now)])
            conn.execute("INSERT INTO teams (id, customer_id, name, created_at) VALUES (?, ?, ?, ?)",
                         ("captioning", "acme", "Captioning", now))
            conn.executemany(
                "INSERT INTO keys (id, name, key_hash, display, customer_id, team_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [("key_acme", "vk_acme", "h1", "sk-llmgw-…aaaa", "acme", "captioning", now),
                 ("key_globex", "vk_globex", "h2", "sk-llmgw-…bbbb", "globex", None, now),
                 ("key_internal", "vk_internal", "h3", "sk-llmgw-…cccc", None, None, now)])
    finally:
        conn.close()


ACME = {"customer": "acme", "key": "key_acme", "team": "captioning"}
GLOBEX = {"customer": "globex", "key": "key_globex"}
INTERNAL = {"key": "key_internal"}
BIG = 2**53 + 1  # 9,007,199.254740993 USD: not representable as a float; the sums must stay exact

# November 2026, by hand, plus its neighbours just outside
NOVEMBER = [
    row("2026-10-31T23:59:59.999Z", **ACME, cost=777_000_000_000, tokens=(9, 9, 9)),  # outside (before)
    row("2026-11-01T00:00:00.000Z", **ACME, cost=123_456_789, tokens=(1000, 200, 0)),  # first ms: inside
    row("2026-11-15T12:00:00Z", **ACME, model="anthropic/claude-haiku-4-5", cost=1, tokens=(10, 1, 5), cache="hit"),
    row("2026-11-27T08:30:00.250Z", **GLOBEX, cost=BIG, tokens=(500, 50, 100)),
    row("2026-11-27T23:59:59.999Z", **GLOBEX, status=429, error_type="budget_exceeded"),
    row("2026-11-10T00:00:00Z", **INTERNAL, cost=555_555, tokens=(7, 3, 0)),
    row("2026-11-11T00:00:00Z", model=None, status=401, error_type="authentication_error"),  # no key at all
    row("2026-11-30T23:59:59.999Z", **ACME, cost=2_000_500, error_type="stream_error", tokens=(40, 4, 0)),
    row("2026-12-01T00:00:00.000Z", **GLOBEX, cost=888_000_000_000),  # outside (after)
]


def random_rows(seed: int, n: int) -> list[dict[str, Any]]:
    """Rows spread over mid-June to mid-August 2025, every kind of group, NULLs included."""
    rnd = random.Random(seed)
    who = [ACME, GLOBEX, INTERNAL, {}, {"customer": "acme"}]
    models = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5", "openai/gpt-4o", None]
    start, span = ms("2025-06-15T00:00:00Z"), 61 * 86_400_000
    return [row(start + rnd.randrange(span), **rnd.choice(who), model=rnd.choice(models),
                cost=rnd.choice([0, 1, rnd.randrange(10**3), rnd.randrange(10**12)]),
                status=rnd.choice([200, 200, 200, 429, 502]),
                tokens=(rnd.randrange(5000), rnd.randrange(500), rnd.randrange(100)))
            for _ in range(n)]


RANDOM = random_rows(7, 600)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}"


def env_for(home: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    environ.update(LLMGW_HOME=str(home), COLUMNS="200")
    return environ


def run(home: Path, *args: str) -> Result:
    proc = subprocess.run([sys.executable, "-m", "llmgw", *args], env=env_for(home), capture_output=True, text=True,
                          timeout=60)
    res = Result(proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in res.out + res.err, res
    return res


def report_json(home: Path, *args: str) -> dict[str, Any]:
    res = run(home, "report", "--format", "json", *args)
    assert res.code == 0, res
    return json.loads(res.out)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    h = tmp_path_factory.mktemp("reports") / "home"
    define(h)
    insert(h, NOVEMBER + RANDOM)
    return h


def ledger_sum(home: Path, since: str | None, until: str | None, extra: str = "") -> tuple[int, int]:
    conn = sqlite3.connect(paths.db_path(home))
    try:
        where = ["1"]
        if since:
            where.append(f"ts_ms >= {ms(since)}")
        if until:
            where.append(f"ts_ms < {ms(until)}")
        if extra:
            where.append(extra)
        count, total = conn.execute(f"SELECT COUNT(*), SUM(cost_nanos) FROM ledger WHERE {' AND '.join(where)}").fetchone()
    finally:
        conn.close()
    return count, total or 0


def usd_text(nanos: int) -> str:
    """Exact USD text, independently of ``units.usd``: every decimal the amount needs, at least 2."""
    whole, _, frac = f"{Decimal(nanos).scaleb(-9):f}".partition(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"


# ---- report: exact numbers -----------------------------------------------------------------------


def test_report_by_customer_json_exact(home: Path) -> None:
    rep = report_json(home, "--by", "customer", "--period", "2026-11")
    assert rep["by"] == "customer"
    assert rep["window"]["since"] == "2026-11-01T00:00:00.000Z"
    assert rep["window"]["until"] == "2026-12-01T00:00:00.000Z"
    g = {x["id"]: x for x in rep["groups"]}
    assert [x["id"] for x in rep["groups"]] == ["globex", "acme", None]  # highest cost first, no-customer last
    assert g["globex"] == {"id": "globex", "name": "Globex Inc", "requests": 2, "errors": 1, "prompt_tokens": 500,
                           "completion_tokens": 50, "cached_tokens": 100, "cost_nanos": BIG,
                           "cost_usd": "9007199.254740993", "cache_hits": 0, "saved_nanos": 0, "saved_usd": "0.00"}
    acme_nanos = 123_456_789 + 1 + 2_000_500
    assert g["acme"] == {"id": "acme", "name": "Acme Corp", "requests": 3, "errors": 1, "prompt_tokens": 1050,
                         "completion_tokens": 205, "cached_tokens": 5, "cost_nanos": acme_nanos,
                         "cost_usd": "0.12545729", "cache_hits": 0, "saved_nanos": 0, "saved_usd": "0.00"}
    assert g[None]["requests"] == 2 and g[None]["errors"] == 1 and g[None]["name"] is None
    assert g[None]["cost_nanos"] == 555_555 and g[None]["cost_usd"] == "0.000555555"  # exact
    total_nanos = BIG + acme_nanos + 555_555
    assert rep["total"] == {"requests": 7, "errors": 3, "prompt_tokens": 1557, "completion_tokens": 258,
                            "cached_tokens": 105, "cost_nanos": total_nanos, "cost_usd": usd_text(total_nanos), "cache_hits": 0, "saved_nanos": 0, "saved_usd": "0.00"}
    assert rep["total"]["cost_nanos"] == ledger_sum(home, "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")[1]


@pytest.mark.parametrize("by", ["customer", "team", "key", "model", "provider"])
@pytest.mark.parametrize("window,since,until", [
    (("--period", "2025-07"), "2025-07-01T00:00:00Z", "2025-08-01T00:00:00Z"),
    (("--period", "2025-W27"), "2025-06-30T00:00:00Z", "2025-07-07T00:00:00Z"),
    (("--period", "2025-07-04"), "2025-07-04T00:00:00Z", "2025-07-05T00:00:00Z"),
    (("--since", "2025-06-20T06:00:00+02:00", "--until", "2025-08-02T13:14:15.678Z"),
     "2025-06-20T04:00:00Z", "2025-08-02T13:14:15.678Z"),
    (("--since", "2025-08-10"), "2025-08-10T00:00:00Z", None),
    (("--period", "2025"), "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
])
def test_report_total_equals_ledger_and_groups_add_up(home: Path, by: str, window: tuple[str, ...], since: str,
                                                      until: str | None) -> None:
    rep = report_json(home, "--by", by, *window)
    count, nanos = ledger_sum(home, since, until)
    assert count > 0
    assert rep["total"]["requests"] == count
    assert rep["total"]["cost_nanos"] == nanos  # the invariant: to the nano-dollar
    assert rep["total"]["cost_usd"] == usd_text(nanos)
    for col in ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_nanos"):
        assert sum(g[col] for g in rep["groups"]) == rep["total"][col], col
    # and each group against an independent computation from the rows we inserted
    column = reports.BY[by][0]
    lo, hi = ms(since), ms(until) if until else 2**62
    expected: dict[Any, int] = defaultdict(int)
    for r in NOVEMBER + RANDOM:
        if lo <= r["ts_ms"] < hi:
            expected[r[column]] += r["cost_nanos"]
    assert {g["id"]: g["cost_nanos"] for g in rep["groups"]} == dict(expected)
    costs = [g["cost_nanos"] for g in rep["groups"]]
    assert costs == sorted(costs, reverse=True)


def test_report_csv(home: Path) -> None:
    res = run(home, "report", "--by", "customer", "--period", "2026-11", "--format", "csv")
    assert res.code == 0, res
    assert res.err == ""
    table = list(csv.reader(io.StringIO(res.out)))
    assert table[0] == ["customer", "name", "requests", "errors", "prompt_tokens", "completion_tokens",
                        "cached_tokens", "cost_nanos", "cost_usd", "cache_hits", "saved_nanos", "saved_usd"]
    assert table[1] == ["globex", "Globex Inc", "2", "1", "500", "50", "100", str(BIG), "9007199.254740993", "0", "0", "0.00"]
    assert table[2] == ["acme", "Acme Corp", "3", "1", "1050", "205", "5", "125457290", "0.12545729", "0", "0", "0.00"]
    assert table[3] == ["(none)", "", "2", "1", "7", "3", "0", "555555", "0.000555555", "0", "0", "0.00"]
    total = BIG + 125_457_290 + 555_555
    assert table[4] == ["TOTAL", "", "7", "3", "1557", "258", "105", str(total), usd_text(total), "0", "0", "0.00"]
    assert len(table) == 5
    assert sum(int(r[7]) for r in table[1:-1]) == int(table[-1][7])


def test_report_csv_by_model_has_no_name_column(home: Path) -> None:
    res = run(home, "report", "--by", "model", "--period", "2026-11", "--format", "csv")
    assert res.code == 0, res
    table = list(csv.reader(io.StringIO(res.out)))
    assert table[0][:2] == ["model", "requests"]
    assert {r[0] for r in table[1:]} == {"openai/gpt-4o-mini", "anthropic/claude-haiku-4-5", "(none)", "TOTAL"}


def test_report_by_key_shows_key_names(home: Path) -> None:
    rep = report_json(home, "--by", "key", "--period", "2026-11")
    assert {(g["id"], g["name"]) for g in rep["groups"]} == {
        ("key_globex", "vk_globex"), ("key_acme", "vk_acme"), ("key_internal", "vk_internal"), (None, None)}
    res = run(home, "report", "--by", "key", "--period", "2026-11")
    assert res.code == 0, res
    assert "vk_globex" in res.out and "vk_internal" in res.out and "(none)" in res.out
    team = report_json(home, "--by", "team", "--period", "2026-11")
    assert {(g["id"], g["name"]) for g in team["groups"]} == {("captioning", "Captioning"), (None, None)}


def test_report_table(home: Path) -> None:
    res = run(home, "report", "--period", "2026-11")  # --by customer is the default
    assert res.code == 0, res
    lines = res.out.splitlines()
    assert any("Spend by customer, 2026-11" in line for line in lines)
    total = next(line for line in lines if "TOTAL" in line)
    assert "$" + usd_text(BIG + 125_457_290 + 555_555) in total and " 7 " in total
    assert any("Acme Corp" in line and "$0.125457" in line for line in lines)


@pytest.mark.parametrize("args,expected_ids", [
    (("--period", "2026-11-27"), {"req_globex_1", "req_globex_2"}),
    (("--period", "2026-W48"), {"req_globex_1", "req_globex_2"}),  # Mon 23 to Mon 30 November
    (("--since", "2026-11-27T08:30:00.250Z", "--until", "2026-11-27T23:59:59.999Z"), {"req_globex_1"}),
    (("--since", "2026-11-27T09:30:00.250+01:00", "--until", "2026-11-28"), {"req_globex_1", "req_globex_2"}),
    (("--period", "2026-W49"), {"req_acme_last", "req_globex_dec"}),  # Mon 30 November to Mon 7 December
])
def test_report_windows(home: Path, args: tuple[str, ...], expected_ids: set[str]) -> None:
    names = {NOVEMBER[3]["request_id"]: "req_globex_1", NOVEMBER[4]["request_id"]: "req_globex_2",
             NOVEMBER[7]["request_id"]: "req_acme_last", NOVEMBER[8]["request_id"]: "req_globex_dec"}
    rows = [r for r in NOVEMBER if names.get(r["request_id"]) in expected_ids]
    rep = report_json(home, "--by", "customer", *args)
    assert rep["total"]["requests"] == len(rows)
    assert rep["total"]["cost_nanos"] == sum(r["cost_nanos"] for r in rows)


def test_report_customer_filter(home: Path) -> None:
    rep = report_json(home, "--by", "key", "--period", "2026-11", "--customer", "acme")
    assert rep["customer"] == "acme"
    assert [g["id"] for g in rep["groups"]] == ["key_acme"]
    assert rep["total"]["cost_nanos"] == 123_456_789 + 1 + 2_000_500
    july = report_json(home, "--by", "model", "--period", "2025-07", "--customer", "acme")
    _, nanos = ledger_sum(home, "2025-07-01T00:00:00Z", "2025-08-01T00:00:00Z", "customer_id = 'acme'")
    assert july["total"]["cost_nanos"] == nanos
    res = run(home, "report", "--customer", "nobody")
    assert res.code == 4, res
    assert res.err.startswith("llmgw: error: unknown customer 'nobody'"), res


def test_report_default_period_is_the_current_month(tmp_path: Path) -> None:
    h = tmp_path / "home"
    now = datetime.now(UTC)
    month_start = ms(f"{now:%Y-%m}-01T00:00:00Z")
    insert(h, [row(month_start, customer="c", cost=5), row(month_start - 1, customer="c", cost=7),
               row(month_start + 1000, cost=11)])
    rep = report_json(h)
    assert rep["window"]["label"] == f"{now:%Y-%m}"
    assert rep["total"] == {"requests": 2, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0,
                            "cached_tokens": 0, "cost_nanos": 16, "cost_usd": "0.000000016", "cache_hits": 0, "saved_nanos": 0, "saved_usd": "0.00"}


def test_report_empty_window(home: Path) -> None:
    rep = report_json(home, "--period", "2001-01")
    assert rep["groups"] == []
    assert rep["total"]["requests"] == 0 and rep["total"]["cost_nanos"] == 0 and rep["total"]["cost_usd"] == "0.00"
    res = run(home, "report", "--period", "2001-01", "--format", "csv")
    assert res.out.splitlines()[-1] == "TOTAL,,0,0,0,0,0,0,0.00,0,0,0.00"


@pytest.mark.parametrize("args,fragment", [
    (("--period", "2026-13"), "bad --period '2026-13'"),
    (("--period", "2026-02-30"), "bad --period '2026-02-30'"),
    (("--period", "2026-W54"), "bad --period '2026-W54'"),
    (("--period", "november"), "YYYY-MM"),
    (("--period", "2026-11", "--since", "2026-11-01"), "either --period or --since/--until"),
    (("--since", "yesterday"), '--since: expected YYYY-MM-DD or an ISO-8601 date-time such as '
                               '2027-01-01T12:00:00Z (UTC unless it has an offset), got "yesterday"'),
    (("--since", "2026-11-02", "--until", "2026-11-01"), "must be before --until"),
])
def test_report_bad_window_is_a_usage_error(home: Path, args: tuple[str, ...], fragment: str) -> None:
    res = run(home, "report", *args)
    assert res.code == 2, res
    assert res.out == ""
    assert res.err.startswith("llmgw: error: ") and fragment in res.err, res


def test_report_bad_choice_and_missing_database(tmp_path: Path, home: Path) -> None:
    res = run(home, "report", "--by", "colour")
    assert res.code == 2, res
    res = run(tmp_path / "nowhere", "report")
    assert res.code == 4, res
    assert f"no llmgw home at {tmp_path / 'nowhere'}" in res.err
    assert not (tmp_path / "nowhere").exists()  # read-only: never creates state


# ---- reports module (in-process, injected clock) -------------------------------------------------


def test_parse_period_and_default_window() -> None:
    w = reports.parse_period("2024-02")
    assert (w.since_ms, w.until_ms) == (ms("2024-02-01T00:00:00Z"), ms("2024-03-01T00:00:00Z"))
    w = reports.parse_period("2026-12")
    assert w.until_ms == ms("2027-01-01T00:00:00Z")
    w = reports.parse_period("2026-w01")  # ISO week 1 of 2026 starts on Monday 29 December 2025
    assert (w.since_ms, w.until_ms, w.label) == (ms("2025-12-29T00:00:00Z"), ms("2026-01-05T00:00:00Z"), "2026-W01")
    w = reports.resolve_window(None, None, None, now_ms=ms("2026-03-31T23:59:59.999Z"))
    assert (w.since_ms, w.until_ms, w.label) == (ms("2026-03-01T00:00:00Z"), ms("2026-04-01T00:00:00Z"), "2026-03")
    w = reports.resolve_window(None, None, "2026-03-05T10:00:00")
    assert (w.since_ms, w.until_ms) == (None, ms("2026-03-05T10:00:00Z"))
    with pytest.raises(UsageError):
        reports.parse_period("2026-00")
    assert reports.iso_ms(ms("2026-11-27T08:30:00.250Z")) == "2026-11-27T08:30:00.250Z"


# ---- tail ----------------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    define(h)
    insert(h, [row("2026-11-27T10:00:00.001Z", **ACME, cost=150_000, tokens=(1234, 56, 0)),
               row("2026-11-27T10:00:01Z", **GLOBEX, cost=1, tokens=(1, 2, 0), cache="hit"),
               row("2026-11-27T10:00:02Z", **INTERNAL, status=429, error_type="budget_exceeded"),
               row("2026-11-27T10:00:03Z", **ACME, model="anthropic/claude-haiku-4-5", cost=2_000_000_001)])
    return h


def ids_in_ledger(home: Path) -> list[str]:
    conn = sqlite3.connect(paths.db_path(home))
    try:
        return [r[0] for r in conn.execute("SELECT request_id FROM ledger ORDER BY id")]
    finally:
        conn.close()


def test_tail_no_follow_last_json(small: Path) -> None:
    res = run(small, "tail", "--no-follow", "--last", "3", "--json")
    assert res.code == 0, res
    lines = [json.loads(line) for line in res.out.splitlines()]
    assert [x["request_id"] for x in lines] == ids_in_ledger(small)[-3:]
    first = lines[0]
    assert first["customer_id"] == "globex" and first["key_name"] == "vk_globex" and first["cache"] == "hit"
    assert first["ts"] == "2026-11-27T10:00:01.000Z" and first["cost_nanos"] == 1 and first["cost_usd"] == "0.000000001"
    assert lines[1]["status"] == 429 and lines[1]["error_type"] == "budget_exceeded"
    assert lines[2]["cost_nanos"] == 2_000_000_001
    assert "request_body" not in first and "response_body" not in first


def test_tail_text_and_filters(small: Path) -> None:
    res = run(small, "tail", "--no-follow")
    assert res.code == 0, res
    lines = res.out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("2026-11-27 10:00:00.001  req_")
    for part in ("acme", "vk_acme", "openai/gpt-4o-mini", "200", "1234/56", "$0.00015 ", "ms"):
        assert part in lines[0], lines[0]
    assert "hit" in lines[1]
    assert "429" in lines[2] and "budget_exceeded" in lines[2]
    assert "$2.000000001" in lines[3]  # exact, no rounding in a single row

    by_customer = run(small, "tail", "--no-follow", "--json", "--customer", "acme")
    assert [json.loads(x)["customer_id"] for x in by_customer.out.splitlines()] == ["acme", "acme"]
    by_key = run(small, "tail", "--no-follow", "--json", "--key", "vk_globex")
    assert [json.loads(x)["key_id"] for x in by_key.out.splitlines()] == ["key_globex"]
    assert run(small, "tail", "--no-follow", "--key", "key_internal").out.count("\n") == 1
    assert run(small, "tail", "--no-follow", "--last", "0").out == ""
    res = run(small, "tail", "--no-follow", "--key", "nope")
    assert res.code == 4 and "unknown key 'nope'" in res.err, res
    res = run(small, "tail", "--no-follow", "--last", "-1")
    assert res.code == 2, res


def test_readers_are_not_blocked_by_an_open_write_transaction(small: Path) -> None:
    """Like the daemon's writer mid-batch: report and tail answer at once and see only committed rows."""
    writer = open_db(paths.db_path(small))
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(insert_sql(), as_tuple(normalise_row(row("2026-11-27T11:00:00Z", **ACME, cost=10**9))))
        t0 = time.monotonic()
        res = run(small, "tail", "--no-follow", "--json")
        rep = report_json(small, "--period", "2026-11-27")
        assert time.monotonic() - t0 < 4  # not waiting for busy_timeout (5 s)
        assert res.code == 0 and len(res.out.splitlines()) == 4, res
        assert rep["total"]["requests"] == 4
    finally:
        writer.rollback()
        writer.close()


class Follower:
    """``llmgw tail --json`` running as a subprocess, read line by line with a deadline."""

    def __init__(self, home: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "llmgw", "tail", "--json", *args], env=env_for(home),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""

    def line(self, timeout: float = 5.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"no line from tail within {timeout} s"
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"tail exited: {self.proc.wait()} {self.stop()[1]}"
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def stop(self) -> tuple[int, str]:
        """Ctrl-C, as a person would; returns the exit code and stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err.decode()


def test_tail_follows_new_rows(small: Path) -> None:
    f = Follower(small, "--last", "1", "--customer", "acme")
    try:
        assert f.line()["request_id"] == ids_in_ledger(small)[-1]  # tail has read the ledger: it follows from here
        insert(small, [row("2026-11-27T12:00:00Z", **GLOBEX, cost=3)])  # filtered out
        new = row("2026-11-27T12:00:01Z", **ACME, cost=42, tokens=(5, 6, 0))
        insert(small, [new])
        got = f.line()
        assert got["request_id"] == new["request_id"] and got["cost_nanos"] == 42 and got["key_name"] == "vk_acme"
        batch = [row(f"2026-11-27T12:01:{i:02d}Z", **ACME, cost=i) for i in range(5)]
        insert(small, batch)
        assert [f.line()["request_id"] for _ in batch] == [r["request_id"] for r in batch]
    finally:
        code, err = f.stop()
    assert code == 0, err
    assert err == ""


def test_tail_follows_a_running_daemon(daemon_factory: Any) -> None:
    d = daemon_factory('[providers.demo]\ntype = "demo"\n')

    def ask(c: httpx.Client, i: int) -> None:
        r = c.post("/v1/chat/completions", json={"model": "demo/echo", "messages": [{"role": "user", "content": f"hi {i}"}]})
        assert r.status_code == 200, r.text

    with httpx.Client(base_url=d.url, headers={"Authorization": f"Bearer {d.key}"}) as c:
        ask(c, 0)
        wait_until(lambda: len(d.ledger()) == 1, 10, "the first row")
        f = Follower(d.home, "--last", "1")
        try:
            seen = [f.line(timeout=10)]  # tail is running and has read the ledger
            for i in range(1, 4):
                ask(c, i)
            seen += [f.line(timeout=10) for _ in range(3)]
        finally:
            code, err = f.stop()
    assert code == 0, err
    ledger = d.ledger()
    assert [s["request_id"] for s in seen] == [r["request_id"] for r in ledger]
    assert all(s["model"] == "demo/echo" and s["status"] == 200 and s["key_name"] == "test" for s in seen)
    rep = report_json(d.home, "--by", "key", "--since", "2000-01-01")
    assert rep["total"]["requests"] == 4
    assert rep["total"]["cost_nanos"] == sum(r["cost_nanos"] for r in ledger)
