"""The rest of the API surface real clients call, through the real daemon with the official SDKs:
count_tokens, client headers forwarded to the provider, structured output and PDFs across dialects,
untranslatable tool-call JSON billed, legacy completions, and the routes without ``/v1``."""

from __future__ import annotations

import base64
import json

import anthropic
import httpx
import openai
import pytest
from pydantic import BaseModel

from conftest import UPSTREAM_ENV, upstream_config

CLAUDE = "anthropic/claude-haiku-4-5-20251001"
GPT = "openai/gpt-4o-mini"
TOOLS = [{"name": "lookup", "description": "look something up",
          "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]
PDF = base64.b64encode(b"%PDF-1.4 fake pdf").decode()


@pytest.fixture
def ac(gw):
    c = anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
    yield c
    c.close()


@pytest.fixture
def oc(gw):
    c = openai.OpenAI(base_url=gw.openai_base, api_key=gw.key, max_retries=0)
    yield c
    c.close()


# ---- count_tokens ---------------------------------------------------------------------------


def test_count_tokens_passes_through_to_anthropic(gw, upstream, ac):
    msgs = [{"role": "user", "content": "count these words please"}]
    r = ac.messages.count_tokens(model=CLAUDE, system="be brief", messages=msgs)
    assert r.input_tokens == max(1, len(json.dumps(msgs)) // 4)  # the fake's own count
    sent = upstream.requests[-1]
    assert sent["path"] == "/v1/messages/count_tokens"
    assert sent["json"] == {"model": "claude-haiku-4-5-20251001", "system": "be brief", "messages": msgs}
    assert gw.ledger() == []  # not billed: no ledger row


def test_count_tokens_for_openai_models_uses_the_tokenizer(gw, upstream, ac):
    quicktok = pytest.importorskip("quicktok")
    enc = quicktok.get_encoding("o200k_base")
    r = ac.messages.count_tokens(model=GPT, system="be brief", messages=[{"role": "user", "content": "hello there"}])
    expected = 3 + sum(3 + len(enc.encode(role)) + len(enc.encode(text))
                       for role, text in (("system", "be brief"), ("user", "hello there")))
    assert r.input_tokens == expected
    assert upstream.requests == []  # counted here: OpenAI has no such endpoint


def test_count_tokens_refusals_are_typed(gw, upstream, ac, daemon_factory):
    d = daemon_factory(upstream_config(upstream, """
[providers.local]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
"""), UPSTREAM_ENV)
    with anthropic.Anthropic(base_url=d.url, api_key=d.key, max_retries=0) as c:
        with pytest.raises(anthropic.BadRequestError) as e:
            c.messages.count_tokens(model="local/mystery-model", messages=[{"role": "user", "content": "x"}])
        assert e.value.body["error"]["type"] == "invalid_request_error"
        assert "no tokenizer is known" in e.value.message
        with pytest.raises(anthropic.BadRequestError) as e:
            c.messages.count_tokens(model=GPT, messages=[{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]}])
        assert "cannot be counted" in e.value.message
    limited = gw.mint(name="limited", models=["anthropic/*"])
    gw.synced()
    with anthropic.Anthropic(base_url=gw.url, api_key=limited, max_retries=0) as c:
        with pytest.raises(anthropic.PermissionDeniedError):
            c.messages.count_tokens(model=GPT, messages=[{"role": "user", "content": "x"}])
    with anthropic.Anthropic(base_url=gw.url, api_key="sk-nope", max_retries=0) as c:
        with pytest.raises(anthropic.AuthenticationError):
            c.messages.count_tokens(model=CLAUDE, messages=[{"role": "user", "content": "x"}])


def test_count_tokens_demo(gw, ac):
    r = ac.messages.count_tokens(model="demo/echo", messages=[{"role": "user", "content": "hello there"}])
    assert r.input_tokens == 3 + 4 + 3  # the demo's rule of thumb: 3 + per message 4 + ceil(11 / 4)


# ---- headers ------------------------------------------------------------------------------------


def test_client_beta_headers_reach_the_provider(gw, upstream, ac, oc):
    ac.messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                       extra_headers={"anthropic-beta": "files-api-2025-04-14", "anthropic-version": "2023-06-01",
                                      "openai-beta": "assistants=v2"})
    sent = upstream.requests[-1]["headers"]
    assert sent["anthropic-beta"] == "files-api-2025-04-14" and sent["anthropic-version"] == "2023-06-01"
    assert "openai-beta" not in sent  # OpenAI's header means nothing to Anthropic
    oc.responses.create(model=GPT, input="hi", extra_headers={"OpenAI-Beta": "responses=experimental",
                                                              "anthropic-beta": "x"})
    sent = upstream.requests[-1]["headers"]
    assert sent["openai-beta"] == "responses=experimental" and "anthropic-beta" not in sent
    ac.messages.count_tokens(model=CLAUDE, messages=[{"role": "user", "content": "hi"}],
                             extra_headers={"anthropic-beta": "token-counting-2024-11-01"})
    assert upstream.requests[-1]["headers"]["anthropic-beta"] == "token-counting-2024-11-01"
    ac.messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert "anthropic-beta" not in upstream.requests[-1]["headers"]  # per request, never left over


def test_a_client_beta_joins_a_configured_one(upstream, daemon_factory):
    cfg = upstream_config(upstream).replace('api_key_env = "TEST_ANTHROPIC_KEY"',
                                            'api_key_env = "TEST_ANTHROPIC_KEY"\nheaders = { "Anthropic-Beta" = "a-1" }')
    d = daemon_factory(cfg, UPSTREAM_ENV)
    with anthropic.Anthropic(base_url=d.url, api_key=d.key, max_retries=0) as c:
        c.messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                          extra_headers={"anthropic-beta": "b-2"})
    assert upstream.requests[-1]["headers"]["anthropic-beta"] == "a-1,b-2"


def test_forwarding_can_be_switched_off(upstream, daemon_factory):
    d = daemon_factory(upstream_config(upstream, "[server]\nforward_headers = []\n"), UPSTREAM_ENV)
    with anthropic.Anthropic(base_url=d.url, api_key=d.key, max_retries=0) as c:
        c.messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                          extra_headers={"anthropic-beta": "files-api-2025-04-14"})
    assert "anthropic-beta" not in upstream.requests[-1]["headers"]


def test_forward_headers_config_refuses_credentials(upstream, daemon_factory):
    with pytest.raises(Exception, match="never forwarded"):
        daemon_factory(upstream_config(upstream, '[server]\nforward_headers = ["Authorization"]\n'), UPSTREAM_ENV)


# ---- structured output and PDFs across dialects -------------------------------------------------


class Person(BaseModel):
    name: str
    age: int


def test_openai_client_json_schema_to_claude_is_native(gw, upstream, oc):
    r = oc.chat.completions.parse(model=CLAUDE, messages=[{"role": "user", "content": "who"}],
                                  response_format=Person)
    assert r.choices[0].message.parsed == Person(name="fake reply to: who", age=1)
    sent = upstream.requests[-1]["json"]
    assert sent["output_config"]["format"]["type"] == "json_schema"
    assert sent["output_config"]["format"]["schema"]["required"] == ["name", "age"]
    assert "system" not in sent


def test_anthropic_client_output_format_to_gpt_is_native(gw, upstream, ac):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    r = ac.messages.create(model=GPT, max_tokens=100, messages=[{"role": "user", "content": "who"}],
                           extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert json.loads(r.content[0].text) == {"name": "fake reply to: who", "age": 1}
    assert upstream.requests[-1]["json"]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}
    # the beta spelling too (with its beta header, which is not sent to OpenAI)
    ac.messages.create(model=GPT, max_tokens=100, messages=[{"role": "user", "content": "who"}],
                       extra_headers={"anthropic-beta": "structured-outputs-2025-11-13"},
                       extra_body={"output_format": {"type": "json_schema", "schema": schema}})
    sent = upstream.requests[-1]
    assert sent["json"]["response_format"]["json_schema"]["schema"] == schema
    assert "anthropic-beta" not in sent["headers"]


def test_pdfs_cross_dialects(gw, upstream, ac, oc):
    ac.messages.create(model=GPT, max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "document", "title": "r.pdf", "source": {"type": "base64", "media_type": "application/pdf",
                                                          "data": PDF}},
        {"type": "text", "text": "summarise"}]}])
    part = upstream.requests[-1]["json"]["messages"][0]["content"][0]
    assert part == {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF}", "filename": "r.pdf"}}
    oc.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": [
        {"type": "text", "text": "summarise"},
        {"type": "file", "file": {"filename": "r.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}}]}])
    block = upstream.requests[-1]["json"]["messages"][0]["content"][1]
    assert block == {"type": "document", "title": "r.pdf",
                     "source": {"type": "base64", "media_type": "application/pdf", "data": PDF}}
    oc.responses.create(model=CLAUDE, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "summarise"},
        {"type": "input_file", "filename": "r.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}]}])
    assert upstream.requests[-1]["json"]["messages"][0]["content"][1] == block


def test_untranslatable_parameters_are_refused_by_name(gw, upstream, ac):
    upstream.reset()
    with pytest.raises(anthropic.BadRequestError) as e:
        ac.messages.create(model=GPT, max_tokens=100, messages=[{"role": "user", "content": "x"}],
                           thinking={"type": "enabled", "budget_tokens": 2048})
    assert "thinking" in e.value.message
    assert upstream.requests == []


# ---- tool-call arguments that are not JSON --------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_bad_tool_arguments_are_billed_and_answered_alike(gw, upstream, ac, stream):
    upstream.bad_tool_arguments = True
    kw = {"model": GPT, "max_tokens": 100, "tools": TOOLS, "messages": [{"role": "user", "content": "call tool x"}]}
    with pytest.raises(anthropic.APIStatusError if not stream else anthropic.APIError) as e:
        if stream:
            with ac.messages.stream(**kw) as s:  # type: ignore[arg-type]
                s.get_final_message()
        else:
            ac.messages.create(**kw)  # type: ignore[arg-type]
    assert "not a JSON object" in str(e.value)
    if not stream:
        assert e.value.response.headers["x-should-retry"] == "false"  # a retry would be billed again
    row = gw.ledger()[-1]
    assert row["outcome"] == "error" and row["usage_estimated"] == 0
    assert row["completion_tokens"] == 5 and row["cost_nanos"] > 0  # what the provider billed
    assert len([r for r in upstream.requests if r["path"] == "/v1/chat/completions"]) == 1


# ---- legacy completions, routes without /v1 ------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_completions_pass_through_billed(gw, upstream, oc, stream):
    if stream:
        chunks = list(oc.completions.create(model=GPT, prompt="once upon", max_tokens=50, stream=True,
                                            stream_options={"include_usage": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        r = oc.completions.create(model=GPT, prompt="once upon", max_tokens=50)
        text, usage = r.choices[0].text, r.usage
    assert text == "fake reply to: once upon"
    assert upstream.requests[-1]["path"] == "/v1/completions"
    row = gw.ledger()[-1]
    assert row["route"] == "completions" and row["completion_tokens"] == usage.completion_tokens == 5
    assert row["cost_nanos"] > 0 and row["usage_estimated"] == 0


def test_legacy_completions_on_anthropic_are_refused(gw, oc):
    with pytest.raises(openai.BadRequestError) as e:
        oc.completions.create(model=CLAUDE, prompt="x")
    assert e.value.code == "unsupported_endpoint"


def test_routes_without_v1(gw):
    h = {"authorization": f"Bearer {gw.key}"}
    with httpx.Client(base_url=gw.url, headers=h) as c:
        assert c.get("/models").json()["object"] == "list"
        r = c.post("/embeddings", json={"model": "openai/text-embedding-3-small", "input": "x"})
        assert r.status_code == 200 and r.json()["data"][0]["object"] == "embedding"
        r = c.post("/responses", json={"model": "demo/echo", "input": "x"})
        assert r.status_code == 200 and r.json()["output"][0]["content"][0]["text"] == "Echo: x"


# ---- /v1/models ---------------------------------------------------------------------------------


def test_models_lists_what_providers_serve(upstream, daemon_factory):
    d = daemon_factory(upstream_config(upstream, """
[providers.nokey]
type = "anthropic"
base_url = "http://127.0.0.1:9"

[aliases]
fast = ["openai/gpt-4o-mini"]
"""), UPSTREAM_ENV)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        ids = [m.id for m in c.models.list()]
        assert ids[0] == "fast"
        # the providers' own listings (the fake's), the demo's models
        assert {"openai/gpt-4o-mini", "openai/gpt-4o", "anthropic/claude-3-5-haiku-latest",
                "anthropic/claude-sonnet-4-5", "demo/echo"} <= set(ids)
        # no key to ask with: the price list's models of its type
        assert "nokey/claude-haiku-4-5" in ids and "nokey/gpt-4o" not in ids
        asked = [r for r in upstream.requests if r["path"] == "/v1/models"]
        assert len(asked) == 2 and asked[1]["headers"]["anthropic-version"]
        c.models.list()
        assert len([r for r in upstream.requests if r["path"] == "/v1/models"]) == 2  # cached
        m = c.models.retrieve("openai/gpt-4o")
        assert m.id == "openai/gpt-4o" and m.owned_by == "openai"
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("openai/gpt-9")
    limited = d.mint(name="limited", models=["anthropic/*"])
    d.synced()
    with openai.OpenAI(base_url=d.openai_base, api_key=limited, max_retries=0) as c:
        assert all(m.id.startswith("anthropic/") for m in c.models.list())
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("openai/gpt-4o")


def test_models_in_the_anthropic_shape_for_the_anthropic_sdk(gw, ac):
    ids = [m.id for m in ac.models.list()]
    assert "anthropic/claude-sonnet-4-5" in ids and "openai/gpt-4o" in ids
    m = ac.models.retrieve("anthropic/claude-sonnet-4-5")
    assert m.type == "model" and m.display_name == "anthropic/claude-sonnet-4-5" and m.created_at.year >= 2026
    with pytest.raises(anthropic.NotFoundError):
        ac.models.retrieve("anthropic/claude-9")


def test_models_of_an_unreachable_provider_come_from_the_price_list(upstream, daemon_factory):
    d = daemon_factory(upstream_config(upstream, """
[providers.down]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "TEST_OPENAI_KEY"
"""), UPSTREAM_ENV)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        ids = {m.id for m in c.models.list()}
    assert "down/gpt-4o-mini" in ids and "down/claude-haiku-4-5" not in ids


def test_responses_option_is_for_openai_providers(upstream, daemon_factory):
    with pytest.raises(Exception, match="responses: only for providers of type openai"):
        daemon_factory(upstream_config(upstream).replace('api_key_env = "TEST_ANTHROPIC_KEY"',
                                                         'api_key_env = "TEST_ANTHROPIC_KEY"\nresponses = false'),
                       UPSTREAM_ENV)


def test_declared_models_are_listed_as_declared(upstream, daemon_factory):
    d = daemon_factory(upstream_config(upstream).replace(
        'api_key_env = "TEST_OPENAI_KEY"', 'api_key_env = "TEST_OPENAI_KEY"\nmodels = ["gpt-4o-mini"]', 1),
        UPSTREAM_ENV)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        ids = {m.id for m in c.models.list()}
    assert "openai/gpt-4o-mini" in ids and "openai/gpt-4o" not in ids


@pytest.mark.parametrize("model", [GPT, CLAUDE])
def test_anthropic_sdk_parse_both_ways(gw, upstream, ac, model):
    r = ac.messages.parse(model=model, max_tokens=100, messages=[{"role": "user", "content": "who"}],
                          output_format=Person)
    assert r.parsed_output == Person(name="fake reply to: who", age=1)
    sent = upstream.requests[-1]["json"]
    if model == GPT:
        schema = sent["response_format"]["json_schema"]
        assert schema["strict"] is True and schema["schema"]["required"] == ["name", "age"]
    else:
        assert sent["output_config"]["format"]["type"] == "json_schema"


def test_openai_sdk_parse_streaming_to_claude(gw, upstream, oc):
    with oc.chat.completions.stream(model=CLAUDE, messages=[{"role": "user", "content": "who"}],
                                    response_format=Person) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.parsed == Person(name="fake reply to: who", age=1)
    assert upstream.requests[-1]["json"]["output_config"]["format"]["type"] == "json_schema"


@pytest.mark.parametrize(("path", "raw"), [
    ("/v1/completions", b'{"model": "openai/gpt-4o-mini"}'),
    ("/v1/completions", b'{"model": "openai/gpt-4o-mini", "prompt": 5}'),
    ("/v1/completions", b'{"model": "openai/gpt-4o-mini", "prompt": "x", "max_tokens": -1}'),
    ("/v1/completions", b'{"model": "openai/gpt-4o-mini", "prompt": "x", "best_of": 0}'),
    ("/v1/completions", b"not json"),
    ("/v1/messages/count_tokens", b'{"model": "openai/gpt-4o-mini"}'),
    ("/v1/messages/count_tokens", b'{"model": "openai/gpt-4o-mini", "messages": []}'),
    ("/v1/messages/count_tokens", b"[]"),
    ("/v1/messages/count_tokens", b""),
    ("/v1/messages/count_tokens", b'{"model": "nope/x", "messages": [{"role": "user", "content": "x"}]}'),
    ("/v1/responses/input_tokens", b'{"model": "openai/gpt-4o-mini", "input": 3}'),
    ("/v1/responses/input_tokens", b"{"),
])
def test_bad_bodies_on_the_other_routes_are_typed_4xx(gw, upstream, path, raw):
    upstream.reset()
    r = httpx.post(gw.url + path, content=raw, headers={"authorization": f"Bearer {gw.key}",
                                                        "content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    body = r.json()
    assert (body["error"]["message"] if "message" in body["error"] else body["error"]) and upstream.requests == []
    if path.startswith("/v1/messages"):
        assert body["type"] == "error"  # the Anthropic envelope
