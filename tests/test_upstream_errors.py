"""Upstream errors as clients see them (issues 12.3, 12.6, 13.6): the provider's own error body passes
through unmodified to a client of its dialect (no ``openai answered 400:`` prefix), a 5xx/429/529
that outlasts the gateway's retries stops the SDKs' own retries (one client request costs at most
the configured attempts upstream, counted at the upstream with the official SDKs at their default
of two retries), and no configured secret an upstream quotes back reaches a client or the log."""

from __future__ import annotations

import logging

import anthropic
import httpx
import openai
import pytest
from aiohttp import web

from conftest import UPSTREAM_ENV, upstream_config
from scripted_upstream import ScriptedUpstream, provider_config

MSG = [{"role": "user", "content": "hello"}]
CHAT = "/v1/chat/completions"
KEY = "sk-proj-Secret0penAIKey-1234567890"
ANT_KEY = "sk-ant-api03-SecretAnthropicKey-0987654321"


def attempts(upstream, path):
    return sum(1 for r in upstream.requests if r["path"] == path)


# ---- retry storms (12.6) ------------------------------------------------------------------------

def test_openai_sdk_with_default_retries_costs_at_most_the_gateways_attempts(gw, upstream):
    upstream.add_fault(path=CHAT, status=500, times=50)
    with openai.OpenAI(base_url=gw.openai_base, api_key=gw.key) as c:  # default: 2 retries of its own
        assert c.max_retries == 2
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert e.value.status_code == 502
    assert e.value.response.headers["x-should-retry"] == "false"
    assert attempts(upstream, CHAT) == 3  # 1 + retry.max_retries: was 9 (3 SDK attempts x 3)
    rows = gw.ledger()
    assert len(rows) == 1 and rows[0]["attempts"] == 3 and rows[0]["client_retry"] == 0


def test_openai_sdk_stream_open_failure_is_not_retried_by_the_sdk(gw, upstream):
    upstream.add_fault(path=CHAT, status=503, times=50)
    with openai.OpenAI(base_url=gw.openai_base, api_key=gw.key) as c:
        with pytest.raises(openai.InternalServerError):
            c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG, stream=True)
    assert attempts(upstream, CHAT) == 3


def test_anthropic_sdk_gets_the_upstreams_529_typed_and_stops(gw, upstream):
    upstream.add_fault(path="/v1/messages", status=529, times=50)
    with anthropic.Anthropic(base_url=gw.url, api_key=gw.key) as c:
        assert c.max_retries == 2
        with pytest.raises(anthropic.APIStatusError) as e:
            c.messages.create(model="anthropic/claude-sonnet-4-5", max_tokens=5, messages=MSG)
    assert e.value.status_code == 529
    assert e.value.body["error"]["type"] == "overloaded_error"
    assert e.value.body["error"]["message"] == "fake fault 529"  # the provider's body, as it wrote it
    assert e.value.response.headers["x-should-retry"] == "false"
    assert attempts(upstream, "/v1/messages") == 3


def test_a_429_that_outlasts_the_retries_passes_through_with_a_short_retry_after(daemon_factory, upstream):
    d = daemon_factory(upstream_config(upstream, "max_retries = 1\n"), UPSTREAM_ENV)
    upstream.add_fault(path=CHAT, status=429, retry_after=1, times=50)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key) as c:
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert e.value.code == "rate_limit_exceeded" and e.value.message.endswith("fake fault 429")
    assert e.value.response.headers["retry-after"] == "1"
    assert e.value.response.headers["x-should-retry"] == "false"
    assert attempts(upstream, CHAT) == 2
    row = d.ledger()[-1]
    assert row["status"] == 429 and row["error_code"] == "rate_limit_exceeded" and row["attempts"] == 2


def test_a_long_retry_after_is_not_passed_on(daemon_factory, upstream):
    d = daemon_factory(upstream_config(upstream), UPSTREAM_ENV)
    upstream.add_fault(path=CHAT, status=429, retry_after=300, times=5)  # longer than retry.max_retry_after
    r = httpx.post(d.openai_base + "/chat/completions", headers={"Authorization": f"Bearer {d.key}"},
                   json={"model": "openai/gpt-4o-mini", "messages": MSG})
    assert r.status_code == 429 and "retry-after" not in r.headers
    assert r.headers["x-should-retry"] == "false"
    assert attempts(upstream, CHAT) == 1


def test_a_timeout_after_the_retries_stops_the_sdk(daemon_factory, upstream):
    cfg = upstream_config(upstream).replace('api_key_env = "TEST_OPENAI_KEY"',
                                            'api_key_env = "TEST_OPENAI_KEY"\ntimeout = 0.3')
    d = daemon_factory(cfg + "max_retries = 1\n", UPSTREAM_ENV)
    upstream.add_fault(path=CHAT, delay=1.0, times=10)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key) as c:
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert e.value.status_code == 504 and e.value.response.headers["x-should-retry"] == "false"
    assert attempts(upstream, CHAT) == 2


# ---- the provider's body as it wrote it (12.3) ----------------------------------------------------

OPENAI_400 = (b'{\n  "error": {\n    "message": "Unsupported value: \'temperature\' does not support 0.5 with this '
              b'model.",\n    "type": "invalid_request_error",\n    "param": "temperature",\n    "code": '
              b'"unsupported_value"\n  }\n}')
ANTHROPIC_400 = (b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: 100000 > 64000, '
                 b'which is the maximum allowed number of output tokens for claude-sonnet-4-5"},'
                 b'"request_id":"req_011CUpstream"}')


@pytest.fixture
def quoting():
    """An upstream that answers every request with the error its path asks for."""

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        auth = request.headers.get("authorization") or request.headers.get("x-api-key", "")
        if request.path.endswith("/messages"):
            if "quote" in str(await request.text()):
                body = {"type": "error", "error": {"type": "invalid_request_error",
                                                   "message": f"invalid header x-api-key: {auth}"}}
                return web.json_response(body, status=400)
            return web.Response(body=ANTHROPIC_400, status=400, content_type="application/json")
        if "quote" in await request.text():
            status = 401 if "401" in await request.text() else 400
            return web.json_response({"error": {"message": f"Incorrect API key provided: {auth}.",
                                                "type": "invalid_request_error", "code": "invalid_api_key"}},
                                     status=status)
        return web.Response(body=OPENAI_400, status=400, content_type="application/json")

    with ScriptedUpstream(handler) as up:
        yield up


@pytest.fixture
def quoted(daemon_factory, quoting):
    cfg = provider_config(quoting.url) + provider_config(quoting.url, anthropic=True).replace(
        "SCRIPTED_KEY", "SCRIPTED_ANT_KEY") + "[retry]\nbackoff_base = 0.01\nbackoff_max = 0.02\n"
    return daemon_factory(cfg, {"SCRIPTED_KEY": KEY, "SCRIPTED_ANT_KEY": ANT_KEY})


def test_same_dialect_error_bodies_pass_through_unmodified(quoted):
    h = {"Authorization": f"Bearer {quoted.key}"}
    r = httpx.post(quoted.openai_base + "/chat/completions", headers=h,
                   json={"model": "openai/o3", "messages": MSG, "temperature": 0.5})
    assert r.status_code == 400 and r.content == OPENAI_400
    assert r.headers["x-request-id"].startswith("req_")
    r = httpx.post(quoted.url + "/v1/messages", headers=h,
                   json={"model": "anthropic/claude-sonnet-4-5", "max_tokens": 100000, "messages": MSG})
    assert r.status_code == 400 and r.content == ANTHROPIC_400
    rows = quoted.ledger()
    assert [(x["status"], x["error_code"]) for x in rows] == [(400, "unsupported_value"), (400, None)]


def test_sdks_read_the_providers_own_error_fields(quoted):
    with openai.OpenAI(base_url=quoted.openai_base, api_key=quoted.key) as c:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="openai/o3", messages=MSG, temperature=0.5)
    assert e.value.code == "unsupported_value" and e.value.param == "temperature"
    assert e.value.body["message"].startswith("Unsupported value: 'temperature'")  # no "openai answered 400:"
    with anthropic.Anthropic(base_url=quoted.url, api_key=quoted.key) as c:
        with pytest.raises(anthropic.BadRequestError) as e2:
            c.messages.create(model="anthropic/claude-sonnet-4-5", max_tokens=5, messages=MSG)  # refused anyway
    assert e2.value.body["error"]["message"].startswith("max_tokens: 100000 > 64000")


def test_cross_dialect_errors_carry_the_providers_message_without_a_prefix(quoted):
    h = {"Authorization": f"Bearer {quoted.key}"}
    r = httpx.post(quoted.openai_base + "/chat/completions", headers=h,
                   json={"model": "anthropic/claude-sonnet-4-5", "messages": MSG, "max_tokens": 100000})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["message"].startswith("max_tokens: 100000 > 64000") and err["type"] == "invalid_request_error"
    r = httpx.post(quoted.url + "/v1/messages", headers=h,
                   json={"model": "openai/o3", "max_tokens": 5, "messages": MSG, "temperature": 0.5})
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("Unsupported value: 'temperature'")


# ---- no secret an upstream quotes back (13.6) ------------------------------------------------------

def test_a_quoted_provider_key_is_redacted_from_answers_and_logs(quoted, caplog):
    caplog.set_level(logging.INFO)
    h = {"Authorization": f"Bearer {quoted.key}"}
    answers = []
    for model in ("openai/gpt-4o", "anthropic/claude-sonnet-4-5"):
        r = httpx.post(quoted.openai_base + "/chat/completions", headers=h,
                       json={"model": model, "messages": [{"role": "user", "content": "quote"}]})
        answers.append(r)
        r = httpx.post(quoted.url + "/v1/messages", headers=h,
                       json={"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "quote"}]})
        answers.append(r)
    r = httpx.post(quoted.openai_base + "/chat/completions", headers=h,  # 401: the gateway's key refused
                   json={"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "quote 401"}]})
    answers.append(r)
    assert [a.status_code for a in answers] == [400, 400, 400, 400, 502]
    for a in answers:
        assert KEY not in a.text and ANT_KEY not in a.text, a.text
        assert "[redacted]" in a.text, a.text
    assert "Incorrect API key provided: Bearer [redacted]." in answers[0].text
    assert "[redacted]" in caplog.text  # the router logged the 401 attempts, redacted
    assert KEY not in caplog.text and ANT_KEY not in caplog.text


def test_secrets_are_redacted_from_tracebacks_in_the_log(quoted, caplog):
    log = logging.getLogger("llmgw.test")
    try:
        raise RuntimeError(f"boom with {KEY} inside")
    except RuntimeError:
        log.exception("failed calling with %s", ANT_KEY)
    assert KEY not in caplog.text and ANT_KEY not in caplog.text
    assert "failed calling with [redacted]" in caplog.text and "boom with [redacted] inside" in caplog.text


def test_a_bug_after_the_upstream_call_is_not_retried_by_the_sdk(gw, upstream, monkeypatch):
    from llmgw.providers import openai as openai_provider

    def broken(_u):
        raise RuntimeError("a bug reading usage")

    monkeypatch.setattr(openai_provider.Usage, "from_openai", staticmethod(broken))
    with openai.OpenAI(base_url=gw.openai_base, api_key=gw.key) as c:  # 2 retries of its own
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="openai/gpt-4o-mini", messages=MSG)
    assert e.value.status_code == 500 and e.value.response.headers["x-should-retry"] == "false"
    assert attempts(upstream, CHAT) == 1
    assert gw.ledger()[-1]["error_code"] == "internal_error"
