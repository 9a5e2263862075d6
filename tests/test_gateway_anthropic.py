"""The Anthropic-compatible ``/v1/messages`` endpoint through the real daemon, with the official
anthropic SDK as client: native to Anthropic, translated to OpenAI-format providers."""

from __future__ import annotations

import anthropic
import pytest

MODELS = ["anthropic/claude-haiku-4-5-20251001", "openai/gpt-4o-mini", "demo/echo"]
TOOLS = [{"name": "lookup", "description": "look something up",
          "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}]


@pytest.fixture
def client(gw):
    c = anthropic.Anthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
    yield c
    c.close()


@pytest.mark.parametrize("model", MODELS)
def test_non_stream(gw, upstream, client, model):
    r = client.messages.create(model=model, max_tokens=200, system="be brief",
                               messages=[{"role": "user", "content": "hello there"}])
    text = r.content[0].text
    assert text in ("fake reply to: hello there", "Echo: hello there")
    assert r.stop_reason == "end_turn"
    assert r.usage.output_tokens > 0 and r.usage.input_tokens > 0
    row = gw.ledger()[-1]
    assert row["route"] == "messages" and row["status"] == 200 and row["model"] == model
    assert row["completion_tokens"] == r.usage.output_tokens
    if model.startswith("anthropic/"):
        sent = upstream.requests[-1]
        assert sent["path"] == "/v1/messages" and sent["json"]["system"] == "be brief"
    elif model.startswith("openai/"):
        sent = upstream.requests[-1]["json"]
        assert sent["messages"][0] == {"role": "system", "content": "be brief"}
        assert sent.get("max_tokens") == 200 or sent.get("max_completion_tokens") == 200


@pytest.mark.parametrize("model", MODELS)
def test_stream(gw, client, model):
    with client.messages.stream(model=model, max_tokens=200,
                                messages=[{"role": "user", "content": "stream me"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text in ("fake reply to: stream me", "Echo: stream me")
    assert final.stop_reason == "end_turn"
    row = gw.ledger()[-1]
    assert row["stream"] == 1 and row["outcome"] == "ok" and row["usage_estimated"] == 0
    assert final.usage.output_tokens == row["completion_tokens"]


@pytest.mark.parametrize("model", MODELS[:2])
def test_tool_use_round_trip(gw, client, model):
    first = client.messages.create(model=model, max_tokens=200, tools=TOOLS,
                                   messages=[{"role": "user", "content": "please call tool lookup"}])
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "lookup" and use.input == {"q": "x"}
    follow = client.messages.create(model=model, max_tokens=200, tools=TOOLS, messages=[
        {"role": "user", "content": "please call tool lookup"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "42"},
                                     {"type": "text", "text": "thanks"}]}])
    assert follow.content[0].text == "fake reply to: thanks"


def test_cached_tokens_anthropic_semantics(gw, client):
    r = client.messages.create(model="anthropic/claude-haiku-4-5-20251001", max_tokens=50,
                               messages=[{"role": "user", "content": "cachedprompt " * 40}])
    row = gw.ledger()[-1]
    read, write = r.usage.cache_read_input_tokens, r.usage.cache_creation_input_tokens
    assert read > 0 and write == 7
    assert row["prompt_tokens"] == r.usage.input_tokens + read + write
    assert row["cached_tokens"] == read and row["cache_write_tokens"] == write
    # claude-haiku-4-5: $1 in, $0.10 cache read, $1.25 cache write, $5 out per million tokens
    assert row["cost_nanos"] == r.usage.input_tokens * 1000 + read * 100 + write * 1250 + r.usage.output_tokens * 5000


def test_errors_use_anthropic_envelope(gw, client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="nope/model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "not_found_error"
    assert e.value.response.headers["request-id"].startswith("req_")
    bad = anthropic.Anthropic(base_url=gw.url, api_key="sk-llmgw-wrong", max_retries=0)
    try:
        with pytest.raises(anthropic.AuthenticationError):
            bad.messages.create(model="demo/echo", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    finally:
        bad.close()
