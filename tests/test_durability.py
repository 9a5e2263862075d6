"""No provider call without a row that can be written (issue 13), through the real daemon.

Every integer a ledger row holds is bounded before the provider call; a ledger that cannot record
(the writer down, the database locked) refuses requests with a typed 503 before any upstream
attempt and ``/healthz`` says so; an Idempotency-Key store that fails never becomes a bare 500; a
budget created while requests are in flight counts them; ``server.request_timeout`` bounds a
stream; a non-stream client that hangs up is recorded as 499; the home and its files are private.
The subprocess fault suite (SIGKILL, a full disk) is tests/test_faults.py.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import UPSTREAM_ENV, upstream_config, wait_until
from llmgw import paths
from llmgw.governance import hierarchy
from llmgw.governance.bounds import CLIENT_RETRY_MAX, MAX_TOKENS, bound_usage, client_retry_count, cost_bound
from llmgw.governance.budgets import upsert_budget
from llmgw.pricing import Price
from llmgw.store import db as store_db
from llmgw.units import MAX_NANOS
from llmgw.usage import Usage

CHAT = "/v1/chat/completions"
MODEL = "openai/gpt-4o-mini"
MSG = [{"role": "user", "content": "hello"}]


def upstream_calls(upstream: Any) -> int:
    return sum(1 for r in upstream.requests if r["path"] in (CHAT, "/v1/messages"))


def customer(d: Any, cid: str) -> str:
    conn = d.db()
    try:
        with conn:
            hierarchy.create_customer(conn, cid)
    finally:
        conn.close()
    return d.mint(name=cid, customer_id=cid)


def set_budget(d: Any, cid: str, limit_nanos: int, *, hard: bool = True) -> None:
    conn = d.db()
    try:
        with store_db.transaction(conn):
            upsert_budget(conn, "customer", cid, "month", limit_nanos, hard=hard)
    finally:
        conn.close()


def post(d: Any, key: str, body: dict[str, Any], headers: dict[str, str] | None = None,
         timeout: float = 30) -> httpx.Response:
    return httpx.post(d.url + CHAT, headers={"Authorization": f"Bearer {key}", **(headers or {})}, json=body,
                      timeout=timeout)


# ---- 1. everything the row holds is bounded ------------------------------------------------------


def test_client_retry_count_is_parsed_strictly_and_clamped() -> None:
    assert client_retry_count(None) is None and client_retry_count("") is None
    assert client_retry_count("2") == 2
    assert client_retry_count("99999999999999999999") == CLIENT_RETRY_MAX
    assert client_retry_count("9" * 5000) == CLIENT_RETRY_MAX
    for bad in ("²", "-1", "1.5", "abc", "١"):  # a superscript and an Arabic-Indic digit are digits to str.isdigit
        with pytest.raises(Exception) as e:
            client_retry_count(bad)
        assert getattr(e.value, "status", None) == 400 and e.value.param == "x-stainless-retry-count"  # type: ignore[attr-defined]


def test_cost_bound_and_usage_stay_within_64_bits() -> None:
    price = Price(input=150, output=600, cached_input=75, cache_write=150)
    _, _, bound = cost_bound({"model": "m", "messages": MSG, "max_tokens": 2**63 - 1}, 50, price,
                             inbound="openai", default_max_tokens=4096)
    assert bound == MAX_NANOS
    u = Usage(prompt_tokens=10**30, completion_tokens=-5, cached_tokens=3, cache_write_tokens=0)
    assert bound_usage(u)
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens) == (MAX_TOKENS, 0, 3)
    assert not bound_usage(Usage(prompt_tokens=1, completion_tokens=2))


@pytest.mark.parametrize("value, recorded", [("99999999999999999999", CLIENT_RETRY_MAX),
                                             ("9" * 5000, CLIENT_RETRY_MAX), ("1", 1)])
def test_retry_count_header_never_loses_the_row(gw: Any, upstream: Any, value: str, recorded: int) -> None:
    r = post(gw, gw.key, {"model": MODEL, "messages": MSG}, {"x-stainless-retry-count": value})
    assert r.status_code == 200
    row = gw.ledger()[-1]
    assert row["status"] == 200 and row["client_retry"] == recorded and row["cost_nanos"] > 0


def test_a_unicode_digit_retry_count_is_a_typed_400_with_a_row(gw: Any, upstream: Any) -> None:
    before = upstream_calls(upstream)
    r = post(gw, gw.key, {"model": MODEL, "messages": MSG}, {"x-stainless-retry-count": "²".encode()})  # type: ignore[dict-item]
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "x-stainless-retry-count"
    assert upstream_calls(upstream) == before
    row = gw.ledger()[-1]
    assert row["status"] == 400 and row["client_retry"] is None


def test_max_tokens_beyond_any_budget_under_a_soft_budget_is_recorded(gw: Any, upstream: Any) -> None:
    key = customer(gw, "soft")
    set_budget(gw, "soft", 10**9, hard=False)
    gw.synced()
    big = 2**63 - 1
    with openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0) as c:
        c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=big)
        chunks = list(c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=big, stream=True,
                                                stream_options={"include_usage": True}))
    assert chunks and chunks[-1].usage is not None
    rows = [r for r in gw.ledger() if r["customer_id"] == "soft"]
    assert [(r["status"], r["stream"]) for r in rows] == [(200, 0), (200, 1)]
    assert all(r["reserved_nanos"] == MAX_NANOS and r["cost_nanos"] > 0 for r in rows)


# ---- 2 / 3. a ledger that cannot record refuses before the upstream ------------------------------


def test_a_locked_database_refuses_new_requests_and_keeps_the_answered_ones(daemon_factory: Any,
                                                                            upstream: Any) -> None:
    d = daemon_factory(upstream_config(upstream, "[server]\nrequest_timeout = 3\n"), UPSTREAM_ENV)
    body = {"model": MODEL, "messages": MSG}
    assert post(d, d.key, body).status_code == 200
    holder = sqlite3.connect(paths.db_path(d.home), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        before = upstream_calls(upstream)
        first = post(d, d.key, body)  # admitted (nothing known yet): answered upstream, its row waits
        assert first.status_code == 503 and first.json()["error"]["code"] == "ledger_timeout"
        assert upstream_calls(upstream) == before + 1
        health = httpx.get(d.url + "/healthz")
        assert health.status_code == 503 and "database is locked" in health.json()["problems"][0]
        refused = post(d, d.key, body)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "ledger_unavailable"
        assert refused.headers["retry-after"] == "1"
        assert upstream_calls(upstream) == before + 1  # refused before any upstream attempt
    finally:
        holder.execute("COMMIT")
        holder.close()
    wait_until(lambda: httpx.get(d.url + "/healthz").status_code == 200, 20, "the writer to commit again")
    assert post(d, d.key, body).status_code == 200
    rows = d.ledger()
    assert [r["status"] for r in rows] == [200, 200, 503, 200]  # the waiting row was retried, not dropped
    assert rows[1]["cost_nanos"] > 0 and rows[2]["attempts"] == 0


def test_idempotency_store_failures_are_typed(gw: Any, upstream: Any) -> None:
    conn = gw.db()
    conn.execute("CREATE TRIGGER idem_full BEFORE INSERT ON idempotency BEGIN SELECT RAISE(ABORT, 'full'); END")
    conn.commit()
    body = {"model": MODEL, "messages": MSG}
    r = post(gw, gw.key, body, {"Idempotency-Key": "k1"})
    assert r.status_code == 200 and r.json()["choices"]  # the answer, although it could not be stored
    conn.execute("DROP TABLE idempotency")
    conn.commit()
    conn.close()
    before = upstream_calls(upstream)
    r = post(gw, gw.key, body, {"Idempotency-Key": "k2"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "idempotency_unavailable"
    assert upstream_calls(upstream) == before
    wait_until(lambda: [x["status"] for x in gw.ledger()][-2:] == [200, 503], 10, "the refusal's row")


# ---- 4. a budget created while requests are in flight counts them --------------------------------


def _book_status(d: Any, cid: str) -> dict[str, Any]:
    gw = d.gateway
    box: dict[str, Any] = {}
    done = threading.Event()

    def read() -> None:
        b = next(b for b in gw.budgets.budgets() if b.scope_id == cid)
        box["status"] = gw.budgets.status(b, gw.clock())
        done.set()

    d._loop.call_soon_threadsafe(read)
    assert done.wait(10)
    return box["status"]


def _ledger_spend(d: Any, cid: str) -> int:
    return sum(r["cost_nanos"] for r in d.ledger() if r["customer_id"] == cid)


@pytest.mark.parametrize("how", ["governance", "cli", "admin"])
def test_a_budget_created_during_traffic_counts_the_requests_in_flight(daemon_factory: Any, upstream: Any,
                                                                       how: str) -> None:
    gw = daemon_factory(upstream_config(upstream, '[admin]\ntoken_env = "TEST_ADMIN_TOKEN"\n'),
                        {**UPSTREAM_ENV, "TEST_ADMIN_TOKEN": "adm-secret"})
    key = customer(gw, "gamma")
    n = 100
    upstream.add_fault(path=CHAT, delay=1.5, times=n)  # a slow provider: the first wave is in flight

    async def wave(count: int, tag: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=count)) as c:
            return await asyncio.gather(*[
                c.post(gw.url + CHAT, headers={"Authorization": f"Bearer {key}"},
                       json={"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": f"{tag} {i}"}]})
                for i in range(count)])

    box: dict[str, Any] = {}
    first = threading.Thread(target=lambda: box.update(r=asyncio.run(wave(n, "first"))))
    first.start()
    wait_until(lambda: upstream_calls(upstream) >= n // 2, 20, "the first wave to reach the provider")
    # one request costs ~4.5k nano-dollars: the first wave fits, the later waves hit the cap
    cap = 800_000
    if how == "cli":  # as an operator does it, from another process
        r = subprocess.run([sys.executable, "-m", "llmgw", "budget", "set", "--customer", "gamma", "--limit", "0.0008",
                            "--period", "month", "--home", str(gw.home)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    elif how == "admin":  # through the daemon's own admin API
        r = httpx.put(gw.url + "/admin/budgets", headers={"Authorization": "Bearer adm-secret"}, timeout=30,
                      json={"scope": "customer", "id": "gamma", "period": "month", "limit_nanos": cap})
        assert r.status_code == 201, r.text
    else:
        set_budget(gw, "gamma", cap)
    gw.synced()
    first.join(60)
    assert all(r.status_code == 200 for r in box["r"])
    st = _book_status(gw, "gamma")
    spent = _ledger_spend(gw, "gamma")
    assert spent > 0 and st["spent_nanos"] == spent and st["reserved_nanos"] == 0
    statuses: list[int] = []
    for i in range(6):
        statuses += [r.status_code for r in asyncio.run(wave(40, f"wave{i}"))]
        st = _book_status(gw, "gamma")
        assert st["spent_nanos"] == _ledger_spend(gw, "gamma") <= cap and st["reserved_nanos"] == 0
    assert 429 in statuses and 200 in statuses


# ---- 9. timeouts, hang-ups, file modes -----------------------------------------------------------


def test_request_timeout_bounds_a_trickling_stream(daemon_factory: Any, upstream: Any) -> None:
    d = daemon_factory(upstream_config(upstream, "[server]\nrequest_timeout = 1.5\n"), UPSTREAM_ENV)
    upstream.add_fault(path=CHAT, stall=30)
    with httpx.stream("POST", d.url + CHAT, headers={"Authorization": f"Bearer {d.key}"}, timeout=60,
                      json={"model": MODEL, "messages": MSG, "stream": True}) as r:
        text = "".join(r.iter_text())
    assert "request_timeout" in text and "[DONE]" not in text
    row = d.ledger()[-1]
    assert row["stream"] == 1 and row["error_code"] == "request_timeout" and row["outcome"] == "error"


def test_a_non_stream_client_that_hangs_up_is_recorded_as_cancelled(gw: Any, upstream: Any) -> None:
    upstream.add_fault(path=CHAT, delay=1.0)
    with pytest.raises(httpx.ReadTimeout):
        post(gw, gw.key, {"model": MODEL, "messages": MSG}, timeout=0.3)
    row = wait_until(lambda: (rows := gw.ledger()) and rows[-1], 20, "the row")
    assert (row["status"], row["outcome"]) == (499, "cancelled")
    assert row["cost_nanos"] > 0  # the provider answered: billed


def test_home_and_database_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        home = paths.ensure_home(tmp_path / "fresh" / "home")
        conn = store_db.open_db(paths.db_path(home))
        with conn:
            conn.execute("INSERT INTO customers (id, created_at) VALUES ('c', 'now')")
        files = [paths.db_path(home), Path(str(paths.db_path(home)) + "-wal"), Path(str(paths.db_path(home)) + "-shm")]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
        conn.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert modes == {p.name: 0o600 for p in files}


def test_a_request_cut_by_the_shutdown_drain_keeps_its_row(daemon_factory: Any, upstream: Any) -> None:
    d = daemon_factory(upstream_config(upstream, "[server]\ndrain_timeout = 0.5\n"), UPSTREAM_ENV)
    upstream.add_fault(path=CHAT, delay=20)
    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["r"] = post(d, d.key, {"model": MODEL, "messages": MSG})
        except httpx.HTTPError as e:
            box["e"] = e

    t = threading.Thread(target=call)
    t.start()
    wait_until(lambda: upstream_calls(upstream) >= 1, 20, "the request to reach the provider")
    d.stop()  # drains for 0.5 s, then cancels the request
    t.join(30)
    rows = d.ledger()
    assert [(r["status"], r["outcome"]) for r in rows] == [(499, "cancelled")]


def test_an_unreadable_key_table_is_a_typed_503(gw: Any, upstream: Any) -> None:
    conn = gw.db()
    conn.execute("ALTER TABLE keys RENAME TO keys_away")
    conn.commit()
    try:
        r = post(gw, "sk-llmgw-not-known-yet", {"model": MODEL, "messages": MSG})
    finally:
        conn.execute("ALTER TABLE keys_away RENAME TO keys")
        conn.commit()
        conn.close()
    assert r.status_code == 503 and r.json()["error"]["code"] == "keys_unavailable"
    assert upstream_calls(upstream) == 0


def test_a_budget_created_before_the_first_request_counts_the_history(daemon_factory: Any, upstream: Any,
                                                                      tmp_path: Path) -> None:
    home = tmp_path / "history"
    d = daemon_factory(upstream_config(upstream), UPSTREAM_ENV, home=home)
    key = customer(d, "hist")
    for _ in range(3):
        assert post(d, key, {"model": MODEL, "messages": MSG, "max_tokens": 10}).status_code == 200
    d.stop()
    d2 = daemon_factory(upstream_config(upstream), UPSTREAM_ENV, home=home)  # nothing committed by it yet
    set_budget(d2, "hist", 10**9)
    d2.synced()
    spent = _ledger_spend(d2, "hist")
    assert spent > 0 and _book_status(d2, "hist")["spent_nanos"] == spent
