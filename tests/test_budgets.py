"""Budgets: the in-memory book (reserve, settle, rollover, caps, events, reload),
the hard-cap proof under concurrency, the cost upper bound and clamping, and ``llmgw budget``."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmgw import paths
from llmgw.governance.bounds import (
    IMAGE_TOKENS,
    MAX_TOKENS_CEILING,
    bound_nanos,
    clamp_max_tokens,
    cost_bound,
    output_token_bound,
    prompt_token_bound,
    unbounded_features,
)
from llmgw.governance.budgets import (
    Budget,
    BudgetBook,
    BudgetExceeded,
    ledger_raises,
    ledger_spend,
    read_budgets,
)
from llmgw.pricing import Price
from llmgw.store import db as store_db
from llmgw.units import iso_utc, window

USD = 1_000_000_000


def ms(s: str) -> int:
    """``2026-11-26T13:00:00`` (UTC) → epoch milliseconds."""
    return int(datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp() * 1000)


def no_spend(scope: str, scope_id: str, since_ms: int) -> int:
    return 0


def budget(limit: int, *, id: str = "b1", scope: str = "customer", scope_id: str = "acme_corp",
           period: str = "month", hard: bool = True, warn_pct: int = 80, grace: int = 0, step: int = 0,
           ceiling: int = 0) -> Budget:
    return Budget(id, scope, scope_id, period, limit, hard, warn_pct, grace, step, ceiling)


def book_of(*budgets: Budget, now: int, spend: Any = no_spend, status: int = 429) -> BudgetBook:
    book = BudgetBook(error_status=status)
    book.load(list(budgets), spend, now)
    return book


# ---- reserve and settle ------------------------------------------------------------------------


NOW = ms("2026-11-26T13:00:00")


def test_reserve_and_settle_are_exact() -> None:
    b = budget(1_000_000)
    book = book_of(b, now=NOW)
    r = book.reserve([b], 300_001, NOW)
    st = book.status(b, NOW)
    assert (st["spent_nanos"], st["reserved_nanos"], st["remaining_nanos"]) == (0, 300_001, 699_999)
    assert book.settle(r, 123_457, NOW + 5) == []
    st = book.status(b, NOW + 5)
    assert (st["spent_nanos"], st["reserved_nanos"], st["remaining_nanos"]) == (123_457, 0, 876_543)
    assert book.settle(r, 999, NOW + 6) == []  # settling twice does nothing
    assert book.status(b, NOW)["spent_nanos"] == 123_457
    # a reservation that exactly fills the rest is admitted, one nano more is not
    r2 = book.reserve([b], 876_543, NOW)
    with pytest.raises(BudgetExceeded):
        book.reserve([b], 1, NOW)
    book.settle(r2, 0, NOW)  # failed request: everything released
    assert book.remaining([b], NOW) == 876_543


def test_reserve_is_all_or_nothing_across_levels() -> None:
    key_b = budget(10 * USD, id="bk", scope="key", scope_id="key_1")
    team_b = budget(10 * USD, id="bt", scope="team", scope_id="captioning", period="day")
    cust_b = budget(1 * USD, id="bc")
    book = book_of(key_b, team_b, cust_b, now=NOW)
    applicable = book.applicable("key_1", "captioning", "acme_corp")
    assert [b.id for b in applicable] == ["bk", "bt", "bc"]
    assert book.applicable("key_2", None, "other") == []
    with pytest.raises(BudgetExceeded) as ei:
        book.reserve(applicable, 2 * USD, NOW)
    assert "customer acme_corp" in ei.value.message
    for b in applicable:  # nothing was charged anywhere
        assert book.status(b, NOW)["reserved_nanos"] == 0
    r = book.reserve(applicable, USD // 2, NOW)
    book.settle(r, USD // 4, NOW)
    assert [book.status(b, NOW)["spent_nanos"] for b in applicable] == [USD // 4] * 3  # rolls up everywhere
    assert book.remaining(applicable, NOW) == USD - USD // 4


def test_budget_exceeded_error_shape() -> None:
    b = budget(200 * USD)
    book = book_of(b, now=NOW, spend=lambda scope, sid, since: 200 * USD)
    with pytest.raises(BudgetExceeded) as ei:
        book.reserve([b], 1, NOW)
    e = ei.value
    assert e.message == ("monthly budget of $200.00 for customer acme_corp exhausted ($200.00 spent); "
                         "resets 2026-12-01T00:00:00Z")
    assert (e.status, e.type, e.code, e.anthropic_type) == (429, "budget_exceeded", "month_budget_exceeded",
                                                            "budget_exceeded")
    assert e.headers == {"x-should-retry": "false"}  # and no Retry-After: the Anthropic SDK would sleep it
    assert e.openai_body() == {"error": {"message": e.message, "type": "budget_exceeded", "param": None,
                                         "code": "month_budget_exceeded"}}
    assert e.anthropic_body()["error"]["type"] == "budget_exceeded"
    assert e.reset_ms == ms("2026-12-01T00:00:00") and e.budget_id == "b1"
    # configurable to 402
    book402 = book_of(b, now=NOW, spend=lambda scope, sid, since: 200 * USD, status=402)
    with pytest.raises(BudgetExceeded) as ei:
        book402.reserve([b], 1, NOW)
    assert (ei.value.status, ei.value.anthropic_type) == (402, "budget_exceeded")
    # a request too big for what is left (not yet exhausted) says so; a total budget never resets
    t = budget(5 * USD, id="bt", scope="key", scope_id="key_9", period="total")
    book = book_of(t, now=NOW, spend=lambda scope, sid, since: 4 * USD)
    with pytest.raises(BudgetExceeded) as ei:
        book.reserve([t], 2 * USD, NOW)
    assert ei.value.code == "total_budget_exceeded"
    assert ei.value.message == ("total budget of $5.00 for key key_9 cannot cover this request (up to $2.00; "
                                "$4.00 spent, $0.00 reserved by requests in flight); it does not reset")


def test_error_names_the_budget_that_resets_last() -> None:
    day = budget(USD, id="bd", period="day")
    month = budget(USD, id="bm", period="month")
    book = book_of(day, month, now=NOW, spend=lambda scope, sid, since: USD)
    with pytest.raises(BudgetExceeded) as ei:
        book.reserve([day, month], 1, NOW)
    assert ei.value.budget_id == "bm" and "resets 2026-12-01" in ei.value.message


def test_rollover_happens_at_request_time() -> None:
    b = budget(10 * USD, period="day")
    book = book_of(b, now=NOW)
    r_old = book.reserve([b], 4 * USD, NOW)
    book.settle(book.reserve([b], 6 * USD, NOW), 6 * USD, NOW)
    with pytest.raises(BudgetExceeded):
        book.reserve([b], 1 * USD, NOW + 1000)
    midnight = ms("2026-11-27T00:00:00")
    with pytest.raises(BudgetExceeded):
        book.reserve([b], 1 * USD, midnight - 1)
    r_new = book.reserve([b], 9 * USD, midnight)  # new window: spent and reserved start at 0
    st = book.status(b, midnight)
    assert (st["spent_nanos"], st["reserved_nanos"], st["window_start_ms"]) == (0, 9 * USD, midnight)
    # the old window's in-flight request settles into the old window (as its ledger row will), not this one
    book.settle(r_old, 4 * USD, midnight + 10)
    assert book.status(b, midnight + 10)["spent_nanos"] == 0
    assert book.status(b, midnight + 10)["reserved_nanos"] == 9 * USD
    book.settle(r_new, 1 * USD, midnight + 20)
    assert book.status(b, midnight + 20)["spent_nanos"] == 1 * USD
    # a total budget never rolls over
    t = budget(USD, id="t", period="total")
    book = book_of(t, now=NOW)
    book.settle(book.reserve([t], USD, NOW), USD, NOW)
    with pytest.raises(BudgetExceeded):
        book.reserve([t], 1, ms("2099-01-01T00:00:00"))


def test_soft_budgets_admit_and_warn() -> None:
    b = budget(USD, hard=False, warn_pct=50)
    book = book_of(b, now=NOW)
    assert book.remaining([b], NOW) is None  # nothing to clamp to
    events = book.settle(book.reserve([b], 3 * USD, NOW), 3 * USD, NOW)
    assert [(e.kind, e.threshold) for e in events] == [("soft_cap", 50), ("soft_cap", 100)]
    assert book.status(b, NOW)["utilisation_pct"] == 300
    book.reserve([b], 100 * USD, NOW)  # still admitted


def test_grace_lets_a_hard_budget_overrun_by_a_fixed_amount() -> None:
    b = budget(1000, grace=200)
    book = book_of(b, now=NOW)
    r = book.reserve([b], 900, NOW)
    assert r.in_grace == ()
    book.settle(r, 900, NOW)
    r = book.reserve([b], 200, NOW)  # 1100 > 1000: admitted within grace
    assert r.in_grace == ("b1",)
    events = book.settle(r, 200, NOW)
    assert [(e.kind, e.threshold) for e in events] == [("hard_cap", 100), ("grace_used", 100)]
    with pytest.raises(BudgetExceeded):
        book.reserve([b], 101, NOW)
    assert book.remaining([b], NOW) == 0
    assert book.remaining([b], NOW, include_grace=True) == 100
    book.settle(book.reserve([b], 100, NOW), 100, NOW)  # exactly limit + grace
    with pytest.raises(BudgetExceeded) as ei:
        book.reserve([b], 0, NOW)  # exhausted: even a free request is refused
    assert "exhausted ($0.0000012 spent)" in ei.value.message


def test_zero_limit_blocks_everything_without_events() -> None:
    b = budget(0)
    book = book_of(b, now=NOW)
    with pytest.raises(BudgetExceeded):
        book.reserve([b], 0, NOW)
    # the remaining amount goes on every answer a budget applies to; nothing spent, so no warning
    assert book.warning_headers([b], NOW) == {"x-llmgw-budget-remaining": "0.00"}


def test_events_fire_once_per_window_per_threshold() -> None:
    b = budget(100 * USD, period="week", warn_pct=80)
    book = book_of(b, now=NOW)

    def spend(amount: int, now: int) -> list[tuple[str, int, int]]:
        return [(e.kind, e.threshold, e.period_start_ms) for e in book.settle(book.reserve([b], amount, now), amount, now)]

    week = ms("2026-11-23T00:00:00")
    assert spend(79 * USD, NOW) == []
    assert spend(1 * USD, NOW) == [("soft_cap", 80, week)]  # 80 % reached
    assert spend(5 * USD, NOW) == []  # still past 80 %: not again
    assert spend(15 * USD, NOW) == [("hard_cap", 100, week)]
    with pytest.raises(BudgetExceeded):
        book.reserve([b], 1, NOW)
    nxt = ms("2026-11-30T00:00:00")
    assert spend(85 * USD, nxt + 1) == [("soft_cap", 80, nxt)]  # the next week has its own events
    ev = book.settle(book.reserve([b], 15 * USD, nxt + 2), 15 * USD, nxt + 2)[0]
    assert ev.as_dict(nxt + 2) == {
        "ts_ms": nxt + 2, "kind": "hard_cap", "budget_id": "b1", "scope": "customer", "scope_id": "acme_corp",
        "period_start_ms": nxt, "threshold": 100, "detail": ev.detail}
    assert ev.detail["spent_nanos"] == 100 * USD and ev.detail["limit_nanos"] == 100 * USD
    assert ev.detail["message"] == "customer acme_corp weekly budget at 100% ($100.00 of $100.00)"


def test_status_and_warning_headers() -> None:
    b = budget(200 * USD, warn_pct=80)
    k = budget(50 * USD, id="bk", scope="key", scope_id="key_1", period="day", hard=False)
    book = book_of(b, k, now=NOW)
    assert book.warning_headers([b, k], NOW) == {"x-llmgw-budget-remaining": "200.00"}
    book.settle(book.reserve([b, k], 170 * USD, NOW), 170 * USD, NOW)
    r = book.reserve([b], 10 * USD, NOW)
    headers = book.warning_headers([b, k], NOW)
    assert headers == {"x-llmgw-budget-remaining": "20.00",  # the hard budget's (the soft one blocks nothing)
                       "x-llmgw-budget-warning": "key key_1 daily budget at 340%, "
                                                 "customer acme_corp monthly budget at 85%"}
    assert book.warning_headers([b], NOW) == {"x-llmgw-budget-remaining": "20.00",
                                              "x-llmgw-budget-warning": "customer acme_corp monthly budget at 85%"}
    st = book.status(b, NOW)
    assert st == {"id": "b1", "scope": "customer", "scope_id": "acme_corp", "period": "month", "hard": True,
                  "limit_nanos": 200 * USD, "spent_nanos": 170 * USD, "reserved_nanos": 10 * USD,
                  "remaining_nanos": 20 * USD, "grace_nanos": 0, "utilisation": 0.85, "utilisation_pct": 85,
                  "warn_pct": 80, "warn": True, "window_start_ms": ms("2026-11-01T00:00:00"),
                  "window_end_ms": ms("2026-12-01T00:00:00"), "base_limit_nanos": 200 * USD,
                  "raise_step_nanos": 0, "ceiling_nanos": 0, "raises": 0}
    book.settle(r, 0, NOW)


def test_reload_keeps_reservations_and_spent() -> None:
    b = budget(10 * USD)
    other = budget(5 * USD, id="b2", scope="key", scope_id="key_1")
    book = book_of(b, other, now=NOW, spend=lambda scope, sid, since: USD)
    r = book.reserve([b, other], 2 * USD, NOW)
    reads: list[tuple[str, str]] = []

    def spend(scope: str, sid: str, since: int) -> int:
        reads.append((scope, sid))
        return 7 * USD

    new = budget(3 * USD, id="b3", scope="team", scope_id="captioning", period="day")
    # b's limit changes, b2 is removed, b3 is new
    book.reload([budget(20 * USD, warn_pct=50), new], spend, NOW + 1)
    assert reads == [("team", "captioning")]  # only the new budget reads the ledger
    st = book.status("b1", NOW + 1)
    assert (st["limit_nanos"], st["spent_nanos"], st["reserved_nanos"]) == (20 * USD, USD, 2 * USD)
    assert book.status("b3", NOW + 1)["spent_nanos"] == 7 * USD
    assert book.get("b2") is None and len(book) == 2
    assert book.settle(r, USD, NOW + 2) == []  # the removed budget is skipped
    assert book.status("b1", NOW + 2)["spent_nanos"] == 2 * USD
    assert book.status("b1", NOW + 2)["reserved_nanos"] == 0
    # a budget whose period changed (same id) is a new budget: its spend is read again
    book.reload([budget(20 * USD, period="day"), new], spend, NOW + 3)
    assert book.status("b1", NOW + 3)["spent_nanos"] == 7 * USD


def _ledger_row(conn: sqlite3.Connection, ts_ms: int, cost: int, key: str | None, team: str | None,
                cust: str | None) -> None:
    conn.execute("INSERT INTO ledger (request_id, ts_ms, route, status, outcome, cost_nanos, key_id, team_id,"
                 " customer_id) VALUES ('r', ?, 'chat', 200, 'ok', ?, ?, ?, ?)", (ts_ms, cost, key, team, cust))


def test_load_from_the_ledger_equals_the_counters(tmp_path: Path) -> None:
    """After a restart, the counters rebuilt from the ledger equal the counters that were live."""
    conn = store_db.open_db(tmp_path / "llmgw.db")
    now = NOW
    with conn:
        for bid, scope, sid, period in (("bc", "customer", "acme_corp", "month"), ("bt", "team", "captioning", "day"),
                                        ("bk", "key", "key_1", "week"), ("bx", "key", "key_1", "total")):
            conn.execute("INSERT INTO budgets (id, scope, scope_id, period, limit_nanos, created_at, updated_at)"
                         " VALUES (?, ?, ?, ?, ?, 'x', 'x')", (bid, scope, sid, period, 1000 * USD))
        _ledger_row(conn, ms("2026-10-31T23:59:59.999"), 5 * USD, "key_1", "captioning", "acme_corp")  # last month
        _ledger_row(conn, ms("2026-11-02T10:00:00"), 7 * USD, "key_1", "captioning", "acme_corp")  # earlier week
        _ledger_row(conn, ms("2026-11-26T00:00:00"), 11 * USD, "key_2", "captioning", "acme_corp")  # today
        _ledger_row(conn, ms("2026-11-26T09:00:00"), 13 * USD, "key_1", None, "other")
    live = BudgetBook()
    live.load(read_budgets(conn), ledger_spend(conn), now)
    expect = {"bc": 18 * USD, "bt": 11 * USD, "bk": 13 * USD, "bx": 25 * USD}
    assert {b: live.status(b, now)["spent_nanos"] for b in expect} == expect
    # serve some requests, writing ledger rows stamped with the reservation time, then "restart"
    rng = random.Random(3)
    budgets = live.applicable("key_1", "captioning", "acme_corp")
    for i in range(50):
        t = now + i * 60_000
        r = live.reserve(budgets, 10**7, t)
        cost = rng.randrange(0, 10**7)
        live.settle(r, cost, t + 500)
        with conn:
            _ledger_row(conn, t, cost, "key_1", "captioning", "acme_corp")
    later = now + 50 * 60_000
    restarted = BudgetBook()
    restarted.load(read_budgets(conn), ledger_spend(conn), later)
    for b in budgets:
        assert restarted.status(b, later)["spent_nanos"] == live.status(b, later)["spent_nanos"]
    conn.close()


async def test_concurrency_proof_spend_never_exceeds_a_hard_cap() -> None:
    """200 interleaved requests against a budget that fits about 10 bounds: settled spend <= limit."""
    price = Price(input=150, output=600, cached_input=75, cache_write=150)
    body = {"model": "openai/gpt-4o-mini", "max_tokens": 200,
            "messages": [{"role": "user", "content": "Write a caption for this photo of a harbour at dawn."}]}
    raw = orjson.dumps(body)
    prompt_b, output_b, bound = cost_bound(body, len(raw), price, inbound="openai", default_max_tokens=4096)
    limit = bound * 10 + bound // 2
    b = budget(limit)
    key_b = budget(limit * 5, id="bk", scope="key", scope_id="key_1", period="day")
    book = book_of(b, key_b, now=NOW)
    budgets = book.applicable("key_1", None, "acme_corp")
    rng = random.Random(11)
    ledger: list[int] = []
    outcomes: list[str] = []

    async def request(i: int) -> None:
        now = NOW + i
        await asyncio.sleep(rng.random() / 200)
        try:
            r = book.reserve(budgets, bound, now)
        except BudgetExceeded:
            outcomes.append("rejected")
            return
        await asyncio.sleep(rng.random() / 100)  # the provider call; others interleave here
        prompt = rng.randrange(1, prompt_b + 1)
        completion = rng.randrange(0, output_b + 1)
        actual = prompt * price.input + completion * price.output
        assert actual <= bound
        ledger.append(actual)
        book.settle(r, actual, now + 10)
        outcomes.append("ok")

    await asyncio.gather(*(request(i) for i in range(200)))
    assert len(outcomes) == 200
    assert sum(ledger) <= limit
    st = book.status(b, NOW + 1000)
    assert st["spent_nanos"] == sum(ledger) and st["reserved_nanos"] == 0
    assert book.status(key_b, NOW + 1000)["spent_nanos"] == sum(ledger)
    assert 10 <= outcomes.count("ok") < 200 and outcomes.count("rejected") > 0


# ---- auto-raise ----------------------------------------------------------------------------------


def test_auto_raise_raises_instead_of_refusing_once_per_step_spent() -> None:
    b = budget(10 * USD, step=5 * USD, ceiling=22 * USD)
    book = book_of(b, now=NOW)
    book.settle(book.reserve([b], 4 * USD, NOW), 4 * USD, NOW)  # $4 spent: under the limit
    r = book.reserve([b], 6 * USD, NOW)  # fills the $10 exactly: no raise
    assert r.raised == ()
    # $4 spent, $6 in flight: the cap would refuse; $4 >= $10 - $5 is false, so no raise yet
    with pytest.raises(BudgetExceeded) as ei:
        book.reserve([b], 1 * USD, NOW)
    assert "auto-raised 0 times from $10.00; it rises again once $5.00 is spent" in ei.value.message
    book.settle(r, 6 * USD, NOW)  # $10 spent
    r = book.reserve([b], 1 * USD, NOW)  # now it rises to $15
    [ev] = r.raised
    assert (ev.kind, ev.budget_id, ev.threshold, ev.period_start_ms) == ("budget_raised", "b1", 1, window("month", NOW)[0])
    assert (ev.detail["old_limit_nanos"], ev.detail["limit_nanos"], ev.detail["spent_nanos"]) == (10 * USD, 15 * USD,
                                                                                                 10 * USD)
    assert "auto-raised from $10.00 to $15.00" in ev.detail["message"]
    st = book.status(b, NOW)
    assert (st["limit_nanos"], st["base_limit_nanos"], st["raises"], st["remaining_nanos"]) == (15 * USD, 10 * USD, 1,
                                                                                                 4 * USD)
    # requests in flight cannot raise again: $10 spent < $15 - $5 is false... equal: allowed only from $10
    r2 = book.reserve([b], 4 * USD, NOW)  # fills $15
    assert r2.raised == ()
    r3 = book.reserve([b], 1 * USD, NOW)  # $10 spent >= $15 - $5: second raise, to $20
    assert [e.threshold for e in r3.raised] == [2]
    with pytest.raises(BudgetExceeded):  # $10 spent < $20 - $5: the third waits for real spend
        book.reserve([b], 5 * USD, NOW)
    for x in (r, r2, r3):
        book.settle(x, x.amount, NOW)  # $16 spent
    [ev3] = book.reserve([b], 5 * USD, NOW).raised  # to the ceiling, $22, not $25
    assert ev3.detail["limit_nanos"] == 22 * USD and ev3.threshold == 3
    with pytest.raises(BudgetExceeded) as ei:  # past the ceiling: refused as without auto-raise
        book.reserve([b], 2 * USD, NOW)
    assert "at its ceiling of $22.00" in ei.value.message
    # a new window starts at the declared limit
    nxt = ms("2026-12-01T00:00:01")
    assert book.status(b, nxt)["limit_nanos"] == 10 * USD and book.status(b, nxt)["raises"] == 0


def test_auto_raise_is_all_or_nothing_across_levels() -> None:
    cust = budget(10 * USD, step=10 * USD, ceiling=100 * USD)
    key_b = budget(5 * USD, id="bk", scope="key", scope_id="key_1")
    book = book_of(cust, key_b, now=NOW)
    book.settle(book.reserve([cust, key_b], 4 * USD, NOW), 4 * USD, NOW)
    # the customer could raise, but the key budget refuses: nothing raised, nothing charged
    with pytest.raises(BudgetExceeded) as ei:
        book.reserve([cust, key_b], 7 * USD, NOW)
    assert "key key_1" in ei.value.message
    assert book.status(cust, NOW)["raises"] == 0 and book.status(cust, NOW)["reserved_nanos"] == 0
    book.names = {("customer", "acme_corp"): "Acme Corp"}
    r = book.reserve([cust], 7 * USD, NOW)
    assert [e.detail["limit_nanos"] for e in r.raised] == [20 * USD]
    assert "customer acme_corp (Acme Corp)" in r.raised[0].detail["message"]


def test_auto_raise_needs_a_hard_budget_and_a_ceiling_above_the_limit() -> None:
    assert not budget(10, step=5, ceiling=10).auto_raise
    assert not budget(10, step=5, ceiling=30, hard=False).auto_raise
    assert budget(10, step=5, ceiling=11).auto_raise


def test_auto_raises_are_rebuilt_from_their_events(tmp_path: Path) -> None:
    from llmgw.governance import events as govevents

    conn = store_db.open_db(tmp_path / "llmgw.db")
    with conn:
        conn.execute("INSERT INTO budgets (id, scope, scope_id, period, limit_nanos, raise_step_nanos, ceiling_nanos,"
                     " created_at, updated_at) VALUES ('b1', 'customer', 'acme_corp', 'month', ?, ?, ?, 'x', 'x')",
                     (10 * USD, 5 * USD, 30 * USD))
        _ledger_row(conn, NOW, 10 * USD, "key_1", None, "acme_corp")
    live = BudgetBook()
    live.load(read_budgets(conn), ledger_spend(conn), NOW, ledger_raises(conn))
    r = live.reserve(live.budgets(), USD, NOW)
    assert len(r.raised) == 1
    with conn:
        assert len(govevents.store(conn, [e.as_dict(NOW) for e in r.raised])) == 1
        assert govevents.store(conn, [e.as_dict(NOW) for e in r.raised]) == []  # once only
    restarted = BudgetBook()
    restarted.load(read_budgets(conn), ledger_spend(conn), NOW + 1, ledger_raises(conn))
    assert restarted.status("b1", NOW + 1)["limit_nanos"] == 15 * USD
    nxt = ms("2026-12-02T00:00:00")  # another window: no raise there
    restarted.load(read_budgets(conn), ledger_spend(conn), nxt, ledger_raises(conn))
    assert restarted.status("b1", nxt)["limit_nanos"] == 10 * USD
    conn.close()


# ---- the cost bound ----------------------------------------------------------------------------


PRICE = Price(input=150, output=600, cached_input=75, cache_write=300)

SAMPLES = [
    "Hello, world!",
    "Write a haiku about autumn leaves falling on a quiet pond.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n" * 20,
    '{"sku": 10482, "brand": null, "tags": ["red", "xl"], "price": 12.5}',
    "日本語のテキストはトークンに分割されます。東京は日本の首都です。" * 5,
    "Ünïcödé façade naïve résumé — “quotes” and ‘apostrophes’ … ½ ¼ ©",
    "😀🎉🚀👩‍👩‍👧‍👦🏳️‍🌈 emoji soup 🍕🍔🌮" * 3,
    "   \n\n\t\t   lots   of    whitespace   \n\n\n",
    "".join(chr(c) for c in range(0x0400, 0x0500)),  # Cyrillic block
    "a" * 5000,
    "".join(random.Random(5).choice("abcdefghijklmnopqrstuvwxyz0123456789 !?.,;:") for _ in range(4000)),
]


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "openai/gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text}], **extra}


def test_prompt_bound_covers_every_byte_of_text() -> None:
    """Structural: the bound is at least the UTF-8 bytes of all the text (a BPE token is >= 1 byte)."""
    for text in SAMPLES:
        body = _chat(text)
        raw = json.dumps(body).encode()  # ASCII-escaped: longer than the text
        p = prompt_token_bound(body, len(raw))
        text_bytes = sum(len(m["content"].encode()) for m in body["messages"])
        assert p >= text_bytes + 8 * 3
        assert p <= len(orjson.dumps(body)) + 8 * 3  # and it takes the tighter JSON length


def test_prompt_bound_against_real_tokenisers() -> None:
    quicktok = pytest.importorskip("quicktok")
    for name in ("o200k_base", "cl100k_base", "llama3", "qwen3"):
        enc = quicktok.get_encoding(name)
        for text in SAMPLES:
            assert len(enc.encode(text)) <= len(text.encode())  # bytes >= tokens
            body = _chat(text)
            # OpenAI's chat accounting: per message 3 + role + content tokens, plus 3 priming the reply
            tokens = 3 + sum(3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"])) for m in body["messages"])
            assert tokens <= prompt_token_bound(body, len(orjson.dumps(body))), (name, text[:20])
        # tools: TypeScript-like rendering with enums, counted against the bound
        tools = [{"type": "function", "function": {
            "name": "pick", "description": "Pick a colour.",
            "parameters": {"type": "object", "properties": {
                "c": {"type": "string", "enum": [chr(97 + i) for i in range(26)]}}}}}]
        rendered = ("namespace functions {\n// Pick a colour.\ntype pick = (_: {\nc?: "
                    + " | ".join(f'"{chr(97 + i)}"' for i in range(26)) + ",\n}) => any;\n} // namespace functions")
        body = _chat("pick one", tools=tools)
        tokens = len(enc.encode(rendered)) + 3 + sum(4 + len(enc.encode(m["content"])) for m in body["messages"])
        assert tokens <= prompt_token_bound(body, len(orjson.dumps(body)))


def test_images_count_a_fixed_bound_and_not_their_bytes() -> None:
    b64 = "iVBORw0KGgo" + "A" * 200_000
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in these images?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]}
    raw = orjson.dumps(body)
    p = prompt_token_bound(body, len(raw))
    assert 2 * IMAGE_TOKENS < p < 2 * IMAGE_TOKENS + 400  # the base64 bytes are not counted
    # Anthropic image blocks, also inside a tool result
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}}]},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]}
    p = prompt_token_bound(body, len(orjson.dumps(body)))
    assert 2 * IMAGE_TOKENS < p < 2 * IMAGE_TOKENS + 400
    # a schema property named "type" is not mistaken for anything
    body = _chat("x", tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"type": {"type": "string"}}}}}])
    assert prompt_token_bound(body, len(orjson.dumps(body))) > 1024


def test_tools_and_builtin_tools_add_their_overhead() -> None:
    plain = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    base = prompt_token_bound(plain, len(orjson.dumps(plain)))
    tool = {"name": "get_weather", "input_schema": {"type": "object"}}
    with_tool = {**plain, "tools": [tool]}
    assert prompt_token_bound(with_tool, len(orjson.dumps(with_tool))) >= base + 1024 + 2 * len(orjson.dumps(tool))
    builtin = {**plain, "tools": [{"type": "text_editor_20250429", "name": "str_replace_based_edit_tool"}]}
    assert prompt_token_bound(builtin, len(orjson.dumps(builtin))) >= base + 2048
    assert unbounded_features(builtin) == []
    server = {**plain, "tools": [{"type": "web_search_20250305", "name": "web_search"}], "mcp_servers": [{}]}
    assert unbounded_features(server) == ["tools[web_search_20250305]", "mcp_servers"]


def test_output_bound() -> None:
    def out(inbound: str = "openai", **kw: Any) -> int:
        return output_token_bound({"messages": [], **kw}, inbound=inbound, default_max_tokens=4096)

    assert out() == 4096
    assert out(max_tokens=100) == 100
    assert out(max_tokens=100, max_completion_tokens=300) == 300
    assert out(max_tokens=100, n=3) == 300
    assert out("anthropic", max_tokens=100, n=3) == 100
    assert out(max_tokens=None, n=None) == 4096
    assert out(max_tokens=10, prediction={"type": "content", "content": "x" * 50}) > 60
    assert output_token_bound({"input": ["a", "b"]}, inbound="openai", default_max_tokens=4096) == 0


def test_cost_bound_prices_the_prompt_at_its_dearest() -> None:
    body = _chat("hello", max_tokens=50, n=2)
    raw = len(orjson.dumps(body))
    p, o, cost = cost_bound(body, raw, PRICE, inbound="openai", default_max_tokens=4096)
    assert o == 100
    assert cost == p * 300 + 100 * 600  # cache writes (300) cost more than input (150)
    assert cost_bound(body, raw, None, inbound="openai", default_max_tokens=4096)[2] == 0
    # the bound is never below the real cost of any usage within it
    from llmgw.pricing import cost_nanos
    from llmgw.usage import Usage

    for u in (Usage(p, o), Usage(p, o, cached_tokens=p), Usage(p, o, cache_write_tokens=p),
              Usage(p, o, cached_tokens=p // 2, cache_write_tokens=p // 2)):
        assert cost_nanos(PRICE, u) <= cost


def test_clamp_max_tokens() -> None:
    prompt = 1000
    fixed = bound_nanos(prompt, 0, PRICE)  # 300_000
    assert fixed == 300_000
    assert clamp_max_tokens(fixed + 600 * 37, prompt, PRICE) == 37
    assert clamp_max_tokens(fixed + 600 * 37 - 1, prompt, PRICE) == 36
    assert clamp_max_tokens(fixed + 600 * 37, prompt, PRICE, cap=20) == 20
    assert clamp_max_tokens(fixed + 600 * 37, prompt, PRICE, 2) == 18  # n choices each pay
    assert clamp_max_tokens(fixed + 599, prompt, PRICE) is None  # not even one token
    assert clamp_max_tokens(fixed - 1, prompt, PRICE) is None
    free = Price(input=150, output=0, cached_input=150, cache_write=150)
    assert clamp_max_tokens(10**9, prompt, free) == MAX_TOKENS_CEILING
    assert clamp_max_tokens(10**9, prompt, free, cap=500) == 500
    assert clamp_max_tokens(0, prompt, None) == MAX_TOKENS_CEILING
    rng = random.Random(2)
    for _ in range(500):
        remaining, n = rng.randrange(0, 10**7), rng.randrange(1, 4)
        m = clamp_max_tokens(remaining, prompt, PRICE, n)
        if m is None:
            assert bound_nanos(prompt, n, PRICE) > remaining
        else:
            assert bound_nanos(prompt, m * n, PRICE) <= remaining < bound_nanos(prompt, (m + 1) * n, PRICE)


def test_clamped_request_fits_the_budget_it_was_clamped_to() -> None:
    b = budget(USD // 1000)  # $0.001
    book = book_of(b, now=NOW, spend=lambda scope, sid, since: USD // 1000 - 250_000)
    body = _chat("short", max_tokens=4096)
    p, _o, cost = cost_bound(body, len(orjson.dumps(body)), PRICE, inbound="openai", default_max_tokens=4096)
    with pytest.raises(BudgetExceeded):
        book.reserve([b], cost, NOW)
    left = book.remaining([b], NOW)
    assert left == 250_000
    m = clamp_max_tokens(left, p, PRICE, cap=4096)
    assert m is not None and 0 < m < 4096
    book.reserve([b], bound_nanos(p, m, PRICE), NOW)


# ---- the CLI -------------------------------------------------------------------------------------


class Cli:
    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        self.tmp = tmp

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("LLMGW_CONFIG", "LLMGW_HOME")}
        env.update(LLMGW_HOME=str(self.home), COLUMNS="200")
        proc = subprocess.run([sys.executable, "-m", "llmgw", "budget", *args], env=env, cwd=self.tmp,
                              capture_output=True, text=True, timeout=60)
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        return proc

    def db(self) -> sqlite3.Connection:
        return store_db.open_db(paths.db_path(self.home))

    def budgets(self) -> list[dict[str, Any]]:
        conn = self.db()
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM budgets ORDER BY scope, scope_id, period")]
        finally:
            conn.close()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    c = Cli(tmp_path)
    conn = c.db()
    with conn:
        conn.execute("INSERT INTO customers (id, name, created_at) VALUES ('acme_corp', 'Acme Corp', 'x')")
        conn.execute("INSERT INTO customers (id, name, created_at) VALUES ('globex', 'Globex', 'x')")
        conn.execute("INSERT INTO teams (id, customer_id, name, created_at) VALUES ('captioning', 'acme_corp', 'C', 'x')")
        conn.execute("INSERT INTO keys (id, name, key_hash, display, customer_id, team_id, created_at) VALUES "
                     "('key_1', 'vk_acme_corp', 'h1', 'sk-…1', 'acme_corp', 'captioning', 'x')")
        conn.execute("INSERT INTO keys (id, name, key_hash, display, customer_id, created_at) VALUES "
                     "('key_2', 'vk_globex', 'h2', 'sk-…2', 'globex', 'x')")
    conn.close()
    return c


def assert_fails(proc: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("llmgw: error: ") and fragment in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_cli_set_creates_and_updates_in_place(cli: Cli) -> None:
    p = cli("set", "--customer", "acme_corp", "--limit", "200", "--period", "month")
    assert p.returncode == 0, p.stderr
    bid = p.stdout.strip()
    assert bid.startswith("bud_")
    assert f"created {bid}: customer acme_corp monthly budget $200.00 (hard, warn at 80%)" in p.stderr
    [row] = cli.budgets()
    assert (row["id"], row["limit_nanos"], row["hard"], row["warn_pct"], row["grace_nanos"]) == (
        bid, 200 * USD, 1, 80, 0)
    # upsert on (scope, scope id, period): same id, new limit, unspecified options kept
    p = cli("set", "--customer", "acme_corp", "--limit", "$150.123456789", "--period", "month", "--warn-at", "90",
            "--grace", "10")
    assert p.returncode == 0 and p.stdout.strip() == bid, p.stderr
    [row] = cli.budgets()
    assert (row["limit_nanos"], row["hard"], row["warn_pct"], row["grace_nanos"]) == (150_123_456_789, 1, 90, 10 * USD)
    p = cli("set", "--customer", "acme_corp", "--limit", "150", "--period", "month", "--soft", "--grace", "0", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert (out["id"], out["hard"], out["warn_pct"], out["grace_nanos"], out["limit_nanos"]) == (bid, 0, 90, 0, 150 * USD)
    # a key by name or id, a team, another period
    assert cli("set", "--key", "vk_acme_corp", "--limit", "5", "--period", "day").returncode == 0
    assert cli("set", "--key", "key_1", "--limit", "6", "--period", "day").returncode == 0
    assert cli("set", "--team", "captioning", "--limit", "50", "--period", "week").returncode == 0
    rows = cli.budgets()
    assert [(r["scope"], r["scope_id"], r["period"], r["limit_nanos"]) for r in rows] == [
        ("customer", "acme_corp", "month", 150 * USD), ("key", "key_1", "day", 6 * USD),
        ("team", "captioning", "week", 50 * USD)]


@pytest.mark.parametrize(("args", "code", "fragment"), [
    (["--customer", "nobody", "--limit", "1", "--period", "month"], 4, "no customer 'nobody'"),
    (["--team", "nobody", "--limit", "1", "--period", "month"], 4, "no team 'nobody'"),
    (["--key", "nobody", "--limit", "1", "--period", "month"], 4, "no key 'nobody'"),
    (["--customer", "acme_corp", "--limit", "-5", "--period", "month"], 2, "--limit: must not be negative"),
    (["--customer", "acme_corp", "--limit", "ten", "--period", "month"], 2, "expected an amount in USD"),
    (["--customer", "acme_corp", "--limit", "nan", "--period", "month"], 2, "finite"),
    (["--customer", "acme_corp", "--limit", "0.0000000001", "--period", "month"], 2, "finer than a nano-dollar"),
    (["--customer", "acme_corp", "--limit", "1e30", "--period", "month"], 2, "too large"),
    (["--customer", "acme_corp", "--limit", "1", "--period", "year"], 2, "--period: expected one of day, week"),
    (["--customer", "acme_corp", "--limit", "1"], 2, "--period is required"),
    (["--customer", "acme_corp", "--period", "day"], 2, "--limit is required"),
    (["--limit", "1", "--period", "day"], 2, "exactly one of --customer, --team or --key"),
    (["--customer", "acme_corp", "--key", "key_1", "--limit", "1", "--period", "day"], 2, "exactly one"),
    (["--customer", "acme_corp", "--limit", "1", "--period", "day", "--warn-at", "0"], 2, "--warn-at"),
    (["--customer", "acme_corp", "--limit", "1", "--period", "day", "--grace", "-1"], 2, "--grace"),
    (["--customer", "acme_corp", "--limit", "1", "--period", "day", "--soft", "--grace", "1"], 2, "hard budgets only"),
])
def test_cli_set_rejects_bad_input_and_writes_nothing(cli: Cli, args: list[str], code: int, fragment: str) -> None:
    assert_fails(cli("set", *args), code, fragment)
    assert cli.budgets() == []


def test_cli_show_spend_from_the_ledger(cli: Cli) -> None:
    import time

    bid = cli("set", "--customer", "acme_corp", "--limit", "200", "--period", "month").stdout.strip()
    cli("set", "--key", "vk_acme_corp", "--limit", "10", "--period", "total", "--soft")
    cli("set", "--customer", "globex", "--limit", "1", "--period", "day")
    now = int(time.time() * 1000)
    conn = cli.db()
    with conn:
        _ledger_row(conn, now, 170_000_000_001, "key_1", "captioning", "acme_corp")
        _ledger_row(conn, now, 4 * USD, "key_2", None, "acme_corp")
        _ledger_row(conn, window("month", now)[0] - 1, 99 * USD, "key_1", "captioning", "acme_corp")  # last month
    conn.close()
    p = cli("show", "--json")
    assert p.returncode == 0, p.stderr
    report = {r["id"]: r for r in json.loads(p.stdout)}
    assert len(report) == 3
    r = report[bid]
    assert (r["spent_nanos"], r["remaining_nanos"], r["utilisation_pct"], r["warn"]) == (
        174_000_000_001, 25_999_999_999, 87, True)
    assert (r["limit_usd"], r["spent_usd"], r["remaining_usd"]) == ("200.00", "174.000000001", "25.999999999")
    assert r["resets"] == iso_utc(window("month", now)[1]) and r["window_start"] == iso_utc(window("month", now)[0])
    [key_report] = [r for r in report.values() if r["scope"] == "key"]
    assert (key_report["name"], key_report["spent_nanos"], key_report["utilisation_pct"], key_report["resets"]) == (
        "vk_acme_corp", 269_000_000_001, 2690, None)
    # --customer shows the customer's budgets and those of its keys, not another customer's
    p = cli("show", "--customer", "acme_corp", "--json")
    assert sorted(r["scope"] for r in json.loads(p.stdout)) == ["customer", "key"]
    p = cli("show", "--customer", "acme_corp")
    assert p.returncode == 0 and bid in p.stdout and "87%" in p.stdout and "globex" not in p.stdout
    assert_fails(cli("show", "--customer", "nobody"), 4, "no customer 'nobody'")


def test_cli_delete(cli: Cli) -> None:
    bid = cli("set", "--customer", "acme_corp", "--limit", "200", "--period", "month").stdout.strip()
    cli("set", "--team", "captioning", "--limit", "20", "--period", "day")
    assert_fails(cli("delete", "--id", "bud_nope"), 4, "no budget 'bud_nope'")
    assert_fails(cli("delete", "--team", "captioning", "--period", "week"), 4, "no week budget for team")
    assert_fails(cli("delete"), 2, "give either --id")
    p = cli("delete", "--team", "captioning", "--period", "day")
    assert p.returncode == 0 and "deleted" in p.stderr, p.stderr
    assert cli("delete", "--id", bid).returncode == 0
    assert cli.budgets() == []
