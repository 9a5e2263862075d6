"""Retries, fallbacks, timeouts, key pools and stream failure handling, counted on the fake
upstream's side, through the real daemon."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from conftest import UPSTREAM_ENV, upstream_config

MSG = [{"role": "user", "content": "route me"}]
CHAT = "/v1/chat/completions"


def attempts_on(upstream, path):
    return [r for r in upstream.requests if r["path"] == path]


@pytest.fixture
def client(gw):
    c = openai.OpenAI(base_url=gw.openai_base, api_key=gw.key, max_retries=0)
    yield c
    c.close()


def test_retry_on_500_then_success(gw, upstream, client):
    upstream.add_fault(path=CHAT, status=500, times=2)
    r = client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert r.choices[0].message.content == "fake reply to: route me"
    assert len(attempts_on(upstream, CHAT)) == 3
    row = gw.ledger()[-1]
    assert row["attempts"] == 3 and row["status"] == 200


def test_429_honours_retry_after(gw, upstream, client):
    upstream.add_fault(path=CHAT, status=429, retry_after=1, times=1)
    t0 = time.monotonic()
    client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    elapsed = time.monotonic() - t0
    seen = attempts_on(upstream, CHAT)
    assert len(seen) == 2
    assert seen[1]["t"] - seen[0]["t"] >= 0.95  # waited for Retry-After, not the 10 ms backoff
    assert elapsed >= 0.95


def test_no_retry_on_upstream_400(gw, upstream, client):
    upstream.add_fault(path=CHAT, status=400, times=1)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert len(attempts_on(upstream, CHAT)) == 1
    assert gw.ledger()[-1]["status"] == 400


def test_all_attempts_fail_is_502(gw, upstream, client):
    upstream.add_fault(path=CHAT, status=503, times=10)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert e.value.status_code == 502
    assert e.value.body["type"] == "upstream_error"
    assert "3 upstream attempt" in e.value.body["message"]
    assert len(attempts_on(upstream, CHAT)) == 3
    row = gw.ledger()[-1]
    assert row["status"] == 502 and row["error_type"] == "upstream_error" and row["attempts"] == 3
    assert row["cost_nanos"] == 0


def test_upstream_auth_failure_is_not_the_clients_401(gw, upstream, client):
    upstream.add_fault(path=CHAT, status=401, times=10)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert e.value.status_code == 502 and e.value.code == "upstream_auth_failed"


def test_alias_falls_back_to_next_provider(daemon_factory, upstream):
    d = daemon_factory(upstream_config(upstream, '[aliases]\ncaption = ["anthropic/claude-haiku-4-5-20251001", '
                                                 '"openai/gpt-4o-mini"]\n'), UPSTREAM_ENV)
    upstream.add_fault(path="/v1/messages", status=529, times=3)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        r = c.chat.completions.create(model="caption", messages=MSG)
        assert r.choices[0].message.content == "fake reply to: route me"
        assert "caption" in {m.id for m in c.models.list()}
    assert len(attempts_on(upstream, "/v1/messages")) == 3
    assert len(attempts_on(upstream, CHAT)) == 1
    row = d.ledger()[-1]
    assert row["model"] == "caption" and row["provider"] == "openai" and row["upstream_model"] == "gpt-4o-mini"
    assert row["attempts"] == 4


def test_long_retry_after_falls_back_at_once(daemon_factory, upstream):
    d = daemon_factory(upstream_config(upstream, '[aliases]\ncaption = ["anthropic/claude-haiku-4-5-20251001", '
                                                 '"openai/gpt-4o-mini"]\n'), UPSTREAM_ENV)
    upstream.add_fault(path="/v1/messages", status=429, retry_after=100, times=1)
    t0 = time.monotonic()
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        c.chat.completions.create(model="caption", messages=MSG)
    assert time.monotonic() - t0 < 5
    assert len(attempts_on(upstream, "/v1/messages")) == 1
    assert d.ledger()[-1]["attempts"] == 2


def test_per_attempt_timeout_then_504(daemon_factory, upstream):
    cfg = upstream_config(upstream).replace('api_key_env = "TEST_OPENAI_KEY"',
                                            'api_key_env = "TEST_OPENAI_KEY"\ntimeout = 0.3')
    d = daemon_factory(cfg + "max_retries = 1\n", UPSTREAM_ENV)
    upstream.add_fault(path=CHAT, delay=2.0, times=2)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert e.value.status_code == 504 and e.value.body["type"] == "upstream_timeout"
    assert len(attempts_on(upstream, CHAT)) == 2
    assert d.ledger()[-1]["status"] == 504


def test_request_deadline_bounds_everything(daemon_factory, upstream):
    d = daemon_factory(upstream_config(upstream) + "\n[server]\nrequest_timeout = 0.5\n", UPSTREAM_ENV)
    upstream.add_fault(path=CHAT, delay=3.0, times=5)
    t0 = time.monotonic()
    r = httpx.post(d.openai_base + "/chat/completions", headers={"Authorization": f"Bearer {d.key}"},
                   json={"model": "openai/gpt-4o-mini", "messages": MSG}, timeout=10)
    assert r.status_code == 504
    assert time.monotonic() - t0 < 2.0


def test_weighted_key_pool(daemon_factory, upstream):
    cfg = upstream_config(upstream).replace(
        'api_key_env = "TEST_OPENAI_KEY"', 'keys = [{env = "KEY_A", weight = 3}, {env = "KEY_B", weight = 1}]')
    d = daemon_factory(cfg, {**UPSTREAM_ENV, "KEY_A": "sk-a", "KEY_B": "sk-b"})
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        for _ in range(200):
            c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    used = [r["headers"]["authorization"] for r in attempts_on(upstream, CHAT)]
    a, b = used.count("Bearer sk-a"), used.count("Bearer sk-b")
    assert a + b == 200
    assert 120 <= a <= 180  # expected 150 (binomial sd ~6)


def test_stream_retried_before_first_byte(gw, upstream, client):
    upstream.add_fault(path=CHAT, status=500, times=1)
    text = "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG, stream=True) if c.choices)
    assert text == "fake reply to: route me"
    assert len(attempts_on(upstream, CHAT)) == 2


@pytest.mark.parametrize("model,path", [("openai/gpt-4o-mini", CHAT),
                                        ("anthropic/claude-haiku-4-5-20251001", "/v1/messages")])
def test_upstream_breaks_mid_stream_no_retry(gw, upstream, client, model, path):
    upstream.add_fault(path=path, disconnect_after=2, times=1)
    received = []
    with pytest.raises(openai.APIError) as e:
        for chunk in client.chat.completions.create(model=model, messages=MSG, stream=True):
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
    assert received  # the first bytes reached the client ...
    assert len(attempts_on(upstream, path)) == 1  # ... so the gateway did not retry
    assert "stream" in str(e.value.message)
    row = gw.ledger()[-1]
    assert row["stream"] == 1 and row["outcome"] == "error" and row["error_type"] == "upstream_error"
    assert row["completion_tokens"] > 0  # what was generated is billed, as an estimate
    assert row["usage_estimated"] == 1


@pytest.mark.parametrize("model,path", [("openai/gpt-4o-mini", CHAT),
                                        ("anthropic/claude-haiku-4-5-20251001", "/v1/messages")])
def test_client_disconnect_mid_stream_is_still_billed(gw, upstream, model, path):
    upstream.add_fault(path=path, stall=0.5, times=1)
    with httpx.Client(timeout=10) as c:
        with c.stream("POST", gw.openai_base + "/chat/completions", headers={"Authorization": f"Bearer {gw.key}"},
                      json={"model": model, "messages": MSG, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break  # got the first event: hang up
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = gw.ledger()
        if rows and rows[-1]["stream"] == 1:
            break
        time.sleep(0.05)
    row = gw.ledger()[-1]
    assert row["outcome"] == "cancelled" and row["status"] == 499
    assert row["completion_tokens"] == 5  # the provider's own count for the whole answer ("fake reply to: route me")
    assert row["usage_estimated"] == 0 and row["cost_nanos"] > 0
