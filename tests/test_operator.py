"""The operator's day through the real daemon: cost on every answer (headers, a stream's final
usage), the key holder's quota endpoint, budget errors that name their owner, and budget auto-raise
under 200 concurrent requests (spend never past the ceiling, one event and one webhook per raise)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from decimal import Decimal
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from conftest import UPSTREAM_ENV, upstream_config, wait_until
from llmgw.governance import hierarchy
from llmgw.governance.budgets import upsert_budget
from llmgw.units import usd

CHAT = "/chat/completions"
MSG = [{"role": "user", "content": "hello"}]


def setup_customer(d: Any, cid: str, name: str | None = None, team: str | None = None) -> None:
    conn = d.db()
    try:
        with conn:
            hierarchy.create_customer(conn, cid, name=name)
            if team:
                hierarchy.create_team(conn, team, customer_id=cid, name=team.title())
    finally:
        conn.close()


def set_budget(d: Any, scope: str, ref: str, limit: int, period: str = "month", **kw: Any) -> str:
    conn = d.db()
    try:
        with conn:
            row, _ = upsert_budget(conn, scope, ref, period, limit, **kw)
        return str(row["id"])
    finally:
        conn.close()


def cost_of(d: Any, request_id: str) -> int:
    [row] = [r for r in d.ledger() if r["request_id"] == request_id]
    return int(row["cost_nanos"])


def exact(nanos: int) -> str:
    return usd(nanos, dollar=False)


# ---- cost on every answer ------------------------------------------------------------------------


def test_cost_and_remaining_headers_on_every_answer(gw: Any) -> None:
    setup_customer(gw, "acme_corp", "Acme Corp")
    key = gw.mint(name="acme-batch", customer_id="acme_corp")
    set_budget(gw, "customer", "acme_corp", 1_000_000)  # $0.001
    gw.synced()
    with openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0) as c:
        raw = c.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=MSG, max_tokens=10)
        rid = raw.headers["x-request-id"]
        cost = cost_of(gw, rid)
        assert cost > 0
        assert raw.headers["x-llmgw-cost-usd"] == exact(cost)  # exact: every decimal it needs
        assert Decimal(raw.headers["x-llmgw-cost-usd"]) * 10**9 == cost
        assert raw.headers["x-llmgw-budget-remaining"] == exact(1_000_000 - cost)  # after this request
        # an error answer says it cost nothing
        with pytest.raises(openai.NotFoundError) as e:
            c.chat.completions.create(model="nope/nothing", messages=MSG)
        assert e.value.response.headers["x-llmgw-cost-usd"] == "0.00"
    # a key without any budget: the cost, and no remaining
    with openai.OpenAI(base_url=gw.openai_base, api_key=gw.key, max_retries=0) as c:
        raw = c.chat.completions.with_raw_response.create(model="demo/echo", messages=MSG)
        assert Decimal(raw.headers["x-llmgw-cost-usd"]) > 0 and "x-llmgw-budget-remaining" not in raw.headers


def _sse(text: str) -> list[tuple[str | None, Any]]:
    out: list[tuple[str | None, Any]] = []
    for block in text.split("\n\n"):
        name, data = None, None
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
        if data is not None:
            out.append((name, data if data == "[DONE]" else orjson.loads(data)))
    return out


def test_stream_final_usage_carries_the_cost_when_asked_for(gw: Any) -> None:
    setup_customer(gw, "acme_corp")
    key = gw.mint(name="streamer", customer_id="acme_corp")
    set_budget(gw, "customer", "acme_corp", 10**9)
    gw.synced()
    with openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0) as c:
        chunks = list(c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG, max_tokens=10, stream=True,
                                                stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None and usage.model_extra is not None
    cost = cost_of(gw, gw.ledger()[-1]["request_id"])
    assert usage.model_extra["cost_usd"] == exact(cost) and cost > 0
    assert usage.model_extra["budget_remaining_usd"] == exact(10**9 - cost)
    assert usage.prompt_tokens > 0  # the provider's numbers are untouched
    # no usage asked for: no usage chunk, nothing added
    with openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0) as c:
        chunks = list(c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG, max_tokens=10, stream=True))
    assert all(ch.usage is None for ch in chunks)
    # the Anthropic dialect: message_delta's usage, over an OpenAI-format upstream and an Anthropic one
    for model in ("openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001"):
        r = httpx.post(gw.url + "/v1/messages", headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
                       json={"model": model, "max_tokens": 10, "stream": True, "messages": MSG}, timeout=30)
        assert r.status_code == 200, r.text
        events = _sse(r.text)
        [delta] = [d for n, d in events if n == "message_delta"]
        cost = cost_of(gw, r.headers["request-id"] if "request-id" in r.headers else r.headers["x-request-id"])
        assert delta["usage"]["cost_usd"] == exact(cost), model
        assert events[-1][0] == "message_stop"


# ---- the quota endpoint --------------------------------------------------------------------------


def test_quota_endpoint_answers_the_keys_budgets_with_the_key_itself(gw: Any) -> None:
    setup_customer(gw, "acme_corp", "Acme Corp", team="captioning")
    key = gw.mint(name="acme-app", customer_id="acme_corp", team_id="captioning")
    other = gw.mint(name="other")
    set_budget(gw, "customer", "acme_corp", 200 * 10**9)
    set_budget(gw, "key", "acme-app", 10**6, period="day")
    set_budget(gw, "team", "captioning", 50 * 10**9, period="week", hard=False)
    gw.synced()
    with openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0) as c:
        c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG, max_tokens=10)
    spent = gw.ledger()[-1]["cost_nanos"]
    r = httpx.get(gw.openai_base + "/llmgw/quota", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    q = r.json()
    assert q["key"] == {"id": q["key"]["id"], "name": "acme-app"} and q["customer_id"] == "acme_corp"
    by_scope = {b["scope"]: b for b in q["budgets"]}
    assert set(by_scope) == {"key", "team", "customer"}
    k = by_scope["key"]
    assert (k["period"], k["hard"], k["limit_usd"], k["spent_usd"], k["reserved_usd"]) == (
        "day", True, "0.001", exact(spent), "0.00")
    assert k["remaining_usd"] == exact(10**6 - spent) and k["used_pct"] == spent * 100 // 10**6
    assert k["resets_at"].endswith("T00:00:00Z") and k["name"] == "acme-app"
    assert by_scope["customer"]["name"] == "Acme Corp" and by_scope["customer"]["limit_usd"] == "200.00"
    assert by_scope["team"]["hard"] is False
    assert q["remaining_usd"] == exact(10**6 - spent)  # the tightest hard budget
    # another key sees only its own (none); x-api-key works too; no key or a wrong one is a 401
    r = httpx.get(gw.openai_base + "/llmgw/quota", headers={"x-api-key": other})
    assert r.status_code == 200 and r.json()["budgets"] == [] and r.json()["remaining_usd"] is None
    r = httpx.get(gw.openai_base + "/llmgw/quota")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = httpx.get(gw.openai_base + "/llmgw/quota", headers={"Authorization": "Bearer sk-nope"})
    assert r.status_code == 401
    assert httpx.post(gw.openai_base + "/llmgw/quota", headers={"x-api-key": key}).status_code == 405


def test_budget_errors_name_the_owner_by_name_and_id(gw: Any) -> None:
    setup_customer(gw, "acme_corp", "Acme Corp")
    key = gw.mint(name="acme-batch", customer_id="acme_corp")
    set_budget(gw, "customer", "acme_corp", 0)
    gw.synced()
    with openai.OpenAI(base_url=gw.openai_base, api_key=key, max_retries=0) as c:
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert "customer acme_corp (Acme Corp)" in e.value.message
    assert e.value.response.headers["x-llmgw-cost-usd"] == "0.00"
    conn = gw.db()
    with conn:
        conn.execute("DELETE FROM budgets")
    conn.close()
    bid = set_budget(gw, "key", "acme-batch", 0, period="day")
    gw.synced()
    r = httpx.post(gw.openai_base + CHAT, headers={"Authorization": f"Bearer {key}"},
                   json={"model": "openai/gpt-4o-mini", "messages": MSG})
    assert r.status_code == 429
    kid = gw.ledger()[-1]["key_id"]
    assert f"key {kid} (acme-batch)" in r.json()["error"]["message"] and bid


# ---- auto-raise ----------------------------------------------------------------------------------


class Hook:
    """A webhook receiver on a loopback port, in a thread of its own."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        app = web.Application()

        async def hook(request: web.Request) -> web.Response:
            self.received.append(await request.json())
            return web.Response(text="ok")

        app.router.add_post("/hook", hook)
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()


@pytest.fixture
def hook() -> Any:
    h = Hook()
    yield h
    h.close()


def test_auto_raise_under_200_concurrent_requests(daemon_factory: Any, upstream: Any, hook: Hook) -> None:
    d = daemon_factory(upstream_config(upstream, f'[webhooks]\nurl = "http://127.0.0.1:{hook.port}/hook"\n'),
                       UPSTREAM_ENV)
    setup_customer(d, "burst", "Burst Inc")
    key = d.mint(name="burst", customer_id="burst")
    # one request costs ~5-6k nano-dollars and reserves a bit more; the base limit fits about 10
    base, step, ceiling = 60_000, 60_000, 200_000
    bid = set_budget(d, "customer", "burst", base, raise_step_nanos=step, ceiling_nanos=ceiling)
    d.synced()

    async def fire(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as c:
            return await asyncio.gather(*[
                c.post(d.openai_base + CHAT, headers={"Authorization": f"Bearer {key}"},
                       json={"model": "openai/gpt-4o-mini", "max_tokens": 10,
                             "messages": [{"role": "user", "content": f"caption {i}"}]})
                for i in range(n)])

    responses = asyncio.run(fire(200))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 200 and refused
    assert all(r.json()["error"]["type"] == "budget_exceeded" for r in refused)
    raised_headers = [r.headers["x-llmgw-budget-raised"] for r in responses if "x-llmgw-budget-raised" in r.headers]
    assert raised_headers, "the burst crossed the base limit: it must have raised it"
    # then sequentially until the ceiling refuses: every further raise follows real spend
    for _ in range(200):
        r = httpx.post(d.openai_base + CHAT, headers={"Authorization": f"Bearer {key}"},
                       json={"model": "openai/gpt-4o-mini", "max_tokens": 10, "messages": MSG})
        if "x-llmgw-budget-raised" in r.headers:
            raised_headers.append(r.headers["x-llmgw-budget-raised"])
        if r.status_code == 429 and "at its ceiling" in r.json()["error"]["message"]:
            break
        assert r.status_code in (200, 429), r.text
    else:
        pytest.fail("never reached the ceiling")
    rows = [r for r in d.ledger() if r["customer_id"] == "burst"]
    spent = sum(r["cost_nanos"] for r in rows)
    assert 0 < spent <= ceiling
    assert spent > base  # the raises let it go past the declared limit
    st = d.gateway.budgets.status(bid, d.clock())
    n = st["raises"]
    assert n == len(raised_headers) == -(-(ceiling - base) // step)  # raised to the ceiling, one step at a time
    assert st["limit_nanos"] == ceiling and st["reserved_nanos"] == 0
    # one event per raise, numbered 1..n, each delivered to the webhook once
    wait_until(lambda: sum(1 for e in hook.received if e["kind"] == "budget_raised") >= n, 10, "webhook deliveries")
    conn = d.db()
    events = conn.execute("SELECT threshold, detail, delivered FROM events WHERE kind = 'budget_raised'"
                          " ORDER BY threshold").fetchall()
    conn.close()
    assert [e[0] for e in events] == list(range(1, n + 1))
    limits = [orjson.loads(e[1])["limit_nanos"] for e in events]
    assert limits == [min(ceiling, base + k * step) for k in range(1, n + 1)]
    delivered = sorted(e["threshold"] for e in hook.received if e["kind"] == "budget_raised")
    assert delivered == list(range(1, n + 1))
    assert "Burst Inc" in hook.received[-1]["detail"]["message"] or any(
        "Burst Inc" in e["detail"]["message"] for e in hook.received if e["kind"] == "budget_raised")
    # budget show reads the raises from the events: the limit in force and a line saying so
    env = {k: v for k, v in os.environ.items() if k != "LLMGW_CONFIG"}
    env.update(LLMGW_HOME=str(d.home), COLUMNS="200")
    p = subprocess.run([sys.executable, "-m", "llmgw", "budget", "show"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"{bid}: auto-raise $0.00006 up to $0.0002; raised {n} times this window, $0.00006 → $0.0002 " \
           "(at its ceiling)" in p.stdout
    # a restart rebuilds the raised limit from the events
    d.stop()
    d2 = daemon_factory(upstream_config(upstream), UPSTREAM_ENV, home=d.home)
    st2 = d2.gateway.budgets.status(bid, d2.clock())
    assert (st2["limit_nanos"], st2["raises"], st2["spent_nanos"]) == (ceiling, n, spent)


# ---- a provider without its API key --------------------------------------------------------------


def test_provider_without_an_api_key_answers_a_typed_error_and_is_not_called(daemon_factory: Any,
                                                                             upstream: Any) -> None:
    d = daemon_factory(upstream_config(upstream, '[aliases]\nsmart = ["anthropic/claude-haiku-4-5-20251001", '
                                                 '"openai/gpt-4o-mini"]\n'),
                       {"TEST_ANTHROPIC_KEY": "sk-ant-test"})  # TEST_OPENAI_KEY unset
    before = len(upstream.requests)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key) as c:  # default retries: x-should-retry stops them
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert e.value.status_code == 503
    assert e.value.body["message"] == "provider openai has no API key (set TEST_OPENAI_KEY)"
    assert e.value.code == "provider_no_api_key"
    r = httpx.post(d.url + "/v1/messages", headers={"x-api-key": d.key},
                   json={"model": "openai/gpt-4o-mini", "max_tokens": 5, "messages": MSG})
    assert r.status_code == 503 and "has no API key" in r.json()["error"]["message"]
    assert len(upstream.requests) == before  # nothing was forwarded
    assert d.ledger()[-1]["error_code"] == "provider_no_api_key"
    # a fallback chain skips the provider without a key
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        c.chat.completions.create(model="smart", messages=MSG)
    assert d.ledger()[-1]["provider"] == "anthropic"


# ---- auto-raise in the admin API and in llmgw.toml -----------------------------------------------


def test_auto_raise_over_the_admin_api(daemon_factory: Any, upstream: Any) -> None:
    token = "adm-" + "y" * 40
    d = daemon_factory(upstream_config(upstream, '[admin]\ntoken_env = "T_ADMIN"\n'), {**UPSTREAM_ENV, "T_ADMIN": token})
    h = {"authorization": f"Bearer {token}"}
    setup_customer(d, "acme_corp", "Acme Corp")
    put = {"scope": "customer", "id": "acme_corp", "period": "month", "limit_usd": "0.00001",
           "auto_raise_usd": "0.00002", "ceiling_usd": "0.00005"}
    r = httpx.put(d.url + "/admin/budgets", headers=h, json=put)
    assert r.status_code == 201, r.text
    b = r.json()
    assert (b["raise_step_nanos"], b["ceiling_nanos"], b["base_limit_usd"], b["raises"]) == (20_000, 50_000,
                                                                                             "0.00001", 0)
    bad = httpx.put(d.url + "/admin/budgets", headers=h, json={**put, "ceiling_usd": "0.000001"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "ceiling_usd", bad.text
    assert "must be above the limit" in bad.json()["error"]["message"]
    bad = httpx.put(d.url + "/admin/budgets", headers=h, json={**put, "hard": False})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "auto_raise_usd", bad.text
    key = d.mint(name="acme", customer_id="acme_corp")
    with openai.OpenAI(base_url=d.openai_base, api_key=key, max_retries=0) as c:
        for _ in range(30):  # ~5.5k nano-dollars each: the $0.00001 limit rises, up to $0.00005
            try:
                raw = c.chat.completions.with_raw_response.create(model="openai/gpt-4o-mini", messages=MSG,
                                                                  max_tokens=10)
            except openai.RateLimitError as e:
                assert "at its ceiling of $0.00005" in e.message and "customer acme_corp (Acme Corp)" in e.message
                break
            assert raw.http_response.status_code == 200
        else:
            pytest.fail("never refused at the ceiling")
    [b] = httpx.get(d.url + "/admin/budgets", headers=h).json()["data"]
    assert b["limit_nanos"] == 50_000 and b["raises"] == 2 and b["spent_nanos"] <= 50_000
    q = httpx.get(d.openai_base + "/llmgw/quota", headers={"x-api-key": key}).json()
    assert q["budgets"][0]["auto_raise"] == {"step_usd": "0.00002", "ceiling_usd": "0.00005",
                                             "base_limit_usd": "0.00001", "raises": 2}
    # off again: the declared limit is what holds (the raises of this window stay recorded as events)
    r = httpx.put(d.url + "/admin/budgets", headers=h, json={**put, "auto_raise_usd": "0", "ceiling_usd": None})
    assert r.status_code == 200 and r.json()["raise_step_nanos"] == 0 and r.json()["ceiling_nanos"] == 0, r.text


def test_auto_raise_declared_in_llmgw_toml(tmp_path: Any) -> None:
    home = tmp_path / "home"
    cfg = tmp_path / "llmgw.toml"
    cfg.write_text('[customers.acme_corp]\nname = "Acme Corp"\n'
                   'budgets = [{ period = "month", limit = 100, auto_raise = 25, ceiling = "150.50" }]\n')
    env = {k: v for k, v in os.environ.items() if k not in ("LLMGW_CONFIG", "LLMGW_HOME")}
    env.update(LLMGW_HOME=str(home), COLUMNS="200")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmgw", *args], env=env, capture_output=True, text=True,
                              timeout=60)

    p = run("config", "apply", "--config", str(cfg))
    assert p.returncode == 0, p.stderr
    assert "auto-raise $25.00 up to $150.50" in p.stdout + p.stderr
    [b] = orjson.loads(run("budget", "show", "--json").stdout)
    assert (b["raise_step_nanos"], b["ceiling_nanos"]) == (25 * 10**9, 150_500_000_000)
    exported = run("config", "export").stdout
    assert "auto_raise = 25" in exported and 'ceiling = 150.50' in exported, exported
    assert run("config", "apply", "--config", str(cfg)).stdout.count("budget") == 0  # nothing to change
    cfg.write_text('[customers.acme_corp]\nbudgets = [{ period = "month", limit = 100, auto_raise = 25 }]\n')
    p = run("config", "validate", "--config", str(cfg))
    assert p.returncode == 2 and "customers.acme_corp.budgets[0].ceiling: auto_raise needs a ceiling" in p.stdout \
        + p.stderr, p.stdout + p.stderr
