"""Governance through the real daemon: allow-lists, budgets that hold under concurrency, typed
errors the official SDKs do not retry, rate limits, soft caps, clamping, live reload."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import anthropic
import httpx
import openai
import pytest
from aiohttp import web

from conftest import UPSTREAM_ENV, upstream_config, wait_until
from llmgw.clock import wall_ms
from llmgw.governance import hierarchy

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hello"}]


def budget(d, scope, scope_id, usd_nanos, period="month", hard=1, warn_pct=80, grace=0):
    conn = d.db()
    try:
        with conn:
            conn.execute(
                "INSERT INTO budgets (id, scope, scope_id, period, limit_nanos, hard, warn_pct, grace_nanos,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '2026-01-01', '2026-01-01')",
                (f"bud_{scope}_{scope_id}_{period}", scope, scope_id, period, usd_nanos, hard, warn_pct, grace))
    finally:
        conn.close()


def customer(d, cid, team=None):
    conn = d.db()
    try:
        with conn:
            hierarchy.create_customer(conn, cid)
            if team:
                hierarchy.create_team(conn, team, customer_id=cid)
    finally:
        conn.close()


def upstream_calls(upstream):
    return sum(1 for r in upstream.requests if r["path"] in (CHAT, "/v1/messages"))


def test_model_allow_list(gw, upstream):
    key = gw.mint(name="limited", models=["openai/gpt-4o-mini", "demo/*"])
    with openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0) as c:
        c.chat.completions.create(model="demo/echo", messages=MSG)
        before = upstream_calls(upstream)
        with pytest.raises(openai.PermissionDeniedError) as e:
            c.chat.completions.create(model="anthropic/claude-haiku-4-5-20251001", messages=MSG)
        assert e.value.code == "model_not_allowed"
        assert upstream_calls(upstream) == before  # rejected requests never reach a provider
        ids = {m.id for m in c.models.list()}
    assert "demo/echo" in ids and not any(i.startswith("anthropic/") for i in ids)
    assert gw.ledger()[-1]["status"] == 403 and gw.ledger()[-1]["cost_nanos"] == 0


def test_budget_exceeded_is_typed_and_not_retried_by_sdks(gw, upstream):
    customer(gw, "acme_corp")
    key = gw.mint(name="acme", customer_id="acme_corp")
    budget(gw, "customer", "acme_corp", 0)  # nothing left
    gw.synced()
    before = upstream_calls(upstream)
    with openai.OpenAI(base_url=gw.openai_base, api_key=key) as c:  # default: 2 retries
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    err = e.value
    assert err.type == "budget_exceeded" and err.code == "month_budget_exceeded"
    assert "customer acme_corp" in err.message and "resets" in err.message
    assert err.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in err.response.headers
    with anthropic.Anthropic(base_url=gw.url, api_key=key) as a:
        with pytest.raises(anthropic.RateLimitError) as e2:
            a.messages.create(model="anthropic/claude-haiku-4-5-20251001", max_tokens=10, messages=MSG)
    assert e2.value.body["error"]["type"] == "budget_exceeded"
    rows = [r for r in gw.ledger() if r["key_id"] and r["status"] == 429]
    assert len(rows) == 2  # exactly one HTTP attempt per SDK call: the SDKs honoured x-should-retry
    assert all(r["error_type"] == "budget_exceeded" and r["cost_nanos"] == 0 for r in rows)
    assert upstream_calls(upstream) == before


def test_budget_error_status_402(daemon_factory, upstream):
    d = daemon_factory(upstream_config(upstream, "[defaults]\nbudget_error_status = 402\n"), UPSTREAM_ENV)
    key = d.mint(name="k402")
    conn = d.db()
    kid = conn.execute("SELECT id FROM keys WHERE name='k402'").fetchone()[0]
    conn.close()
    budget(d, "key", kid, 0)
    d.synced()
    r = httpx.post(d.openai_base + "/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "demo/echo", "messages": MSG})
    assert r.status_code == 402 and r.json()["error"]["type"] == "budget_exceeded"
    with anthropic.Anthropic(base_url=d.url, api_key=key) as a:
        with pytest.raises(anthropic.APIStatusError) as e:
            a.messages.create(model="demo/echo", max_tokens=10, messages=MSG)
    assert e.value.status_code == 402 and e.value.body["error"]["type"] == "budget_exceeded"


def test_hard_cap_holds_under_200_concurrent_requests(gw, upstream):
    customer(gw, "burst")
    key = gw.mint(name="burst", customer_id="burst")
    # one request costs ~5-6k nano-dollars on gpt-4o-mini here; the cap fits about 10 of them
    cap = 60_000
    budget(gw, "customer", "burst", cap)
    gw.synced()
    before = upstream_calls(upstream)

    async def fire():
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as c:
            return await asyncio.gather(*[
                c.post(gw.openai_base + "/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "openai/gpt-4o-mini", "max_tokens": 10,
                             "messages": [{"role": "user", "content": f"caption {i}"}]})
                for i in range(200)])

    responses = asyncio.run(fire())
    ok = [r for r in responses if r.status_code == 200]
    rejected = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(rejected) == 200
    assert len(ok) >= 1  # a burst reserves upper bounds at once: fewer fit than the cap/actual ratio
    assert all(r.json()["error"]["type"] == "budget_exceeded" for r in rejected)
    rows = [r for r in gw.ledger() if r["customer_id"] == "burst"]
    assert len(rows) == 200  # every request accounted for
    spent = sum(r["cost_nanos"] for r in rows)
    assert 0 < spent <= cap
    assert sum(1 for r in rows if r["status"] == 200) == len(ok)
    assert upstream_calls(upstream) - before == len(ok)  # rejected ones never reached the provider
    assert all(r["reserved_nanos"] >= r["cost_nanos"] for r in rows)  # reservations were upper bounds


def test_rate_limit_requests(gw):
    key = gw.mint(name="slow", rpm=2)
    h = {"Authorization": f"Bearer {key}"}
    body = {"model": "demo/echo", "messages": MSG}
    r1 = httpx.post(gw.openai_base + "/chat/completions", headers=h, json=body)
    assert r1.status_code == 200
    assert r1.headers["x-ratelimit-limit-requests"] == "2"
    assert r1.headers["x-ratelimit-remaining-requests"] == "1"
    httpx.post(gw.openai_base + "/chat/completions", headers=h, json=body)
    r3 = httpx.post(gw.openai_base + "/chat/completions", headers=h, json=body)
    assert r3.status_code == 429
    err = r3.json()["error"]
    assert err["type"] == "rate_limit_exceeded" and err["code"] == "requests"
    assert 1 <= int(r3.headers["retry-after"]) <= 120 and int(r3.headers["retry-after-ms"]) > 0
    assert r3.headers["x-ratelimit-remaining-requests"] == "0"


def test_soft_cap_warning_headers_event_and_webhook(daemon_factory, upstream):
    received: list[dict] = []
    app = web.Application()

    async def hook(request):
        received.append(await request.json())
        return web.Response(text="ok")

    app.router.add_post("/hook", hook)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        d = daemon_factory(upstream_config(upstream, f'[webhooks]\nurl = "http://127.0.0.1:{port}/hook"\n'),
                           UPSTREAM_ENV)
        customer(d, "soft")
        key = d.mint(name="soft", customer_id="soft")
        budget(d, "customer", "soft", 20_000, hard=0, warn_pct=50)
        d.synced()
        h = {"Authorization": f"Bearer {key}"}
        seen = []
        for _ in range(8):
            r = httpx.post(d.openai_base + "/chat/completions", headers=h,
                           json={"model": "openai/gpt-4o-mini", "max_tokens": 10, "messages": MSG})
            assert r.status_code == 200  # a soft cap never blocks
            seen.append(r.headers.get("x-llmgw-budget-warning"))
        assert seen[0] is None and seen[-1] and "soft" in seen[-1]
        wait_until(lambda: len(received) >= 2, 5, "two webhook deliveries")
        kinds = sorted((e["kind"], e["threshold"]) for e in received)
        assert kinds == [("soft_cap", 50), ("soft_cap", 100)]  # once per threshold, not per request
        conn = d.db()
        rows = conn.execute("SELECT kind, threshold, delivered FROM events ORDER BY id").fetchall()
        conn.close()
        assert [(r[0], r[1], r[2]) for r in rows] == [("soft_cap", 50, 1), ("soft_cap", 100, 1)]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_clamp_lowers_max_tokens_to_what_the_budget_can_pay(gw, upstream):
    key = gw.mint(name="clampy", clamp=True)
    conn = gw.db()
    kid = conn.execute("SELECT id FROM keys WHERE name='clampy'").fetchone()[0]
    conn.close()
    budget(gw, "key", kid, 100_000)
    gw.synced()
    r = httpx.post(gw.openai_base + "/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "openai/gpt-4o-mini", "max_tokens": 100_000, "messages": MSG})
    assert r.status_code == 200
    clamped = int(r.headers["x-llmgw-max-tokens-clamped"])
    sent = upstream.requests[-1]["json"]
    assert sent["max_tokens"] == clamped and 0 < clamped < 100_000


def test_default_max_tokens_injected_under_a_budget(gw, upstream):
    customer(gw, "bounded")
    key = gw.mint(name="bounded", customer_id="bounded")
    budget(gw, "customer", "bounded", 10**12)
    gw.synced()
    httpx.post(gw.openai_base + "/chat/completions", headers={"Authorization": f"Bearer {key}"},
               json={"model": "openai/gpt-4o-mini", "messages": MSG})
    assert upstream.requests[-1]["json"]["max_tokens"] == 4096  # the bound the reservation assumed


def test_cli_budget_change_applies_without_restart(gw):
    customer(gw, "live")
    key = gw.mint(name="live", customer_id="live")
    h = {"Authorization": f"Bearer {key}"}
    body = {"model": "demo/echo", "messages": MSG}
    assert httpx.post(gw.openai_base + "/chat/completions", headers=h, json=body).status_code == 200
    r = subprocess.run([sys.executable, "-m", "llmgw", "budget", "set", "--customer", "live", "--limit", "0",
                        "--period", "day", "--home", str(gw.home)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    gw.synced()
    r2 = httpx.post(gw.openai_base + "/chat/completions", headers=h, json=body)
    assert r2.status_code == 429 and r2.json()["error"]["code"] == "day_budget_exceeded"
    subprocess.run([sys.executable, "-m", "llmgw", "keys", "disable", "live", "--home", str(gw.home)],
                   capture_output=True, text=True, timeout=30, check=True)
    gw.synced()
    r3 = httpx.post(gw.openai_base + "/chat/completions", headers=h, json=body)
    assert r3.status_code == 401 and r3.json()["error"]["code"] == "key_disabled"


def test_counters_equal_ledger_after_restart(daemon_factory, upstream, tmp_path):
    home = tmp_path / "persist"
    d = daemon_factory(upstream_config(upstream), UPSTREAM_ENV, home=home)
    customer(d, "steady")
    key = d.mint(name="steady", customer_id="steady")
    budget(d, "customer", "steady", 10**9)
    d.synced()
    with openai.OpenAI(base_url=d.openai_base, api_key=key, max_retries=0) as c:
        for _ in range(5):
            c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG, max_tokens=20)
    gateway_before = _live_spend(d, "steady")
    d.stop()
    ledger_sum = sum(r["cost_nanos"] for r in d.ledger() if r["customer_id"] == "steady")
    assert gateway_before == pytest.approx(ledger_sum / 1e9, abs=1e-12) and ledger_sum > 0
    d2 = daemon_factory(upstream_config(upstream), UPSTREAM_ENV, home=home)
    assert _live_spend(d2, "steady") == pytest.approx(ledger_sum / 1e9, abs=1e-12)


def _live_spend(d, customer_id):
    """The daemon's in-memory counter, as exported on /metrics."""
    for line in httpx.get(d.url + "/metrics").text.splitlines():
        if line.startswith("llmgw_budget_spend_usd{") and f'scope_id="{customer_id}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no budget gauge in:\n" + httpx.get(d.url + "/metrics").text[-3000:])


def test_idempotency_key_replays_without_charging(gw, upstream):
    h = {"Authorization": f"Bearer {gw.key}", "Idempotency-Key": "caption-sku-10482"}
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "caption sku 10482"}]}
    before = upstream_calls(upstream)
    r1 = httpx.post(gw.openai_base + "/chat/completions", headers=h, json=body)
    r2 = httpx.post(gw.openai_base + "/chat/completions", headers=h, json=body)
    assert r1.status_code == r2.status_code == 200
    assert r2.content == r1.content and r2.headers["x-llmgw-idempotent-replay"] == "true"
    assert upstream_calls(upstream) - before == 1
    first, second = gw.ledger()[-2:]
    assert first["cost_nanos"] > 0 and first["idempotent_replay"] == 0
    assert second["cost_nanos"] == 0 and second["idempotent_replay"] == 1 and second["status"] == 200
    # the same key with another body is a client bug, not a replay
    r3 = httpx.post(gw.openai_base + "/chat/completions", headers=h,
                    json={**body, "messages": [{"role": "user", "content": "something else"}]})
    assert r3.status_code == 400 and r3.json()["error"]["code"] == "idempotency_key_reused"
    # another virtual key has its own idempotency space
    other = gw.mint(name="other")
    r4 = httpx.post(gw.openai_base + "/chat/completions",
                    headers={**h, "Authorization": f"Bearer {other}"}, json=body)
    assert r4.status_code == 200 and "x-llmgw-idempotent-replay" not in r4.headers


def test_concurrent_duplicates_call_upstream_once(gw, upstream):
    upstream.add_fault(path=CHAT, delay=0.5)
    h = {"Authorization": f"Bearer {gw.key}", "Idempotency-Key": "dup-1"}
    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "once"}]}
    before = upstream_calls(upstream)

    async def both():
        async with httpx.AsyncClient(timeout=10) as c:
            return await asyncio.gather(*[c.post(gw.openai_base + "/chat/completions", headers=h, json=body)
                                          for _ in range(3)])

    rs = asyncio.run(both())
    assert [r.status_code for r in rs] == [200, 200, 200]
    assert len({r.content for r in rs}) == 1
    assert upstream_calls(upstream) - before == 1


def _ms(iso):
    from datetime import datetime

    return int(datetime.fromisoformat(iso + "+00:00").timestamp() * 1000)


@pytest.mark.parametrize("level", ["key", "team", "customer"])
def test_daily_budget_at_each_level_rolls_over_at_midnight_utc(gw, level):
    customer(gw, f"roll_{level}", team=f"team_{level}")
    key = gw.mint(name=f"roll_{level}", team_id=f"team_{level}")
    conn = gw.db()
    kid = conn.execute("SELECT id FROM keys WHERE name = ?", (f"roll_{level}",)).fetchone()[0]
    conn.close()
    scope_id = {"key": kid, "team": f"team_{level}", "customer": f"roll_{level}"}[level]
    gw.set_clock(_ms("2026-11-27T23:59:00"))
    budget(gw, level, scope_id, 40_000, period="day")  # a handful of demo/echo answers
    gw.synced()
    h = {"Authorization": f"Bearer {key}"}
    body = {"model": "demo/echo", "max_tokens": 5, "messages": MSG}
    codes = [httpx.post(gw.openai_base + "/chat/completions", headers=h, json=body).status_code for _ in range(15)]
    assert codes[0] == 200 and codes[-1] == 429  # the day's budget ran out
    rejected = httpx.post(gw.openai_base + "/chat/completions", headers=h, json=body)
    assert rejected.json()["error"]["code"] == "day_budget_exceeded"
    assert "resets 2026-11-28T00:00:00Z" in rejected.json()["error"]["message"]
    assert f"{level} " in rejected.json()["error"]["message"]
    gw.set_clock(_ms("2026-11-28T00:00:01"))  # a new UTC day: the window rolls at request time
    assert httpx.post(gw.openai_base + "/chat/completions", headers=h, json=body).status_code == 200
    rows = [r for r in gw.ledger() if r["key_id"] == kid]
    spent_day1 = sum(r["cost_nanos"] for r in rows if r["ts_ms"] < _ms("2026-11-28T00:00:00"))
    assert 0 < spent_day1 <= 40_000
    assert rows[-1]["ts_ms"] == _ms("2026-11-28T00:00:01") and rows[-1]["team_id"] == f"team_{level}"
    assert rows[-1]["customer_id"] == f"roll_{level}"


def test_key_rotation_with_grace_through_the_daemon(gw):
    old = gw.mint(name="rotating")
    body = {"model": "demo/echo", "messages": MSG}

    def status(secret):
        return httpx.post(gw.openai_base + "/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                          json=body)

    assert status(old).status_code == 200
    r = subprocess.run([sys.executable, "-m", "llmgw", "keys", "rotate", "rotating", "--grace", "2",
                        "--home", str(gw.home)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    new = r.stdout.strip()
    assert new.startswith("sk-llmgw-") and new != old
    gw.synced()
    assert status(new).status_code == 200
    assert status(old).status_code == 200  # still inside the grace period
    gw.set_clock(wall_ms() + 3100)  # grace 2 s, stored to the second and rounded up
    gone = status(old)
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "key_rotated"
    subprocess.run([sys.executable, "-m", "llmgw", "keys", "revoke", "rotating", "--home", str(gw.home)],
                   capture_output=True, text=True, timeout=30, check=True)
    gw.synced()
    assert status(new).json()["error"]["code"] == "key_revoked"


def test_rate_limit_tokens(gw):
    key = gw.mint(name="tokeny", tpm=300)
    h = {"Authorization": f"Bearer {key}"}
    body = {"model": "demo/lorem", "max_tokens": 100, "messages": MSG}  # ~100 real output tokens each
    first = httpx.post(gw.openai_base + "/chat/completions", headers=h, json=body)
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "300"
    codes = [httpx.post(gw.openai_base + "/chat/completions", headers=h, json=body) for _ in range(5)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited and limited[0].json()["error"]["code"] == "tokens"
    assert 1 <= int(limited[0].headers["retry-after"]) <= 120


def test_keys_work_on_the_very_next_request(gw):
    """No reload wait: a key made by another process is looked up in the database before a 401."""
    h = {"model": "demo/echo", "messages": MSG}
    for i in range(15):
        key = gw.mint(name=f"instant{i}")
        r = httpx.post(gw.openai_base + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=h)
        assert r.status_code == 200, (i, r.text)
    r = subprocess.run([sys.executable, "-m", "llmgw", "keys", "create", "--name", "cli-made", "--home", str(gw.home)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    ok = httpx.post(gw.openai_base + "/chat/completions", headers={"Authorization": f"Bearer {r.stdout.strip()}"},
                    json=h)
    assert ok.status_code == 200
    # a flood of one bad key costs one database query, not one per request (until the next reload)
    gw.synced()
    table = gw.gateway.keys
    before = table.db_lookups
    for _ in range(30):
        bad = httpx.post(gw.openai_base + "/chat/completions", headers={"Authorization": "Bearer sk-llmgw-bogus"},
                         json=h)
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    assert table.db_lookups - before == 1
