"""The OpenAI-compatible endpoint through the real daemon, with the official openai SDK as client,
in front of the fake upstream speaking OpenAI (pass-through) and Anthropic (translated)."""

from __future__ import annotations

import base64

import openai
import pytest

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "look something up",
                                            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]


@pytest.fixture
def client(gw):
    c = openai.OpenAI(base_url=gw.openai_base, api_key=gw.key, max_retries=0)
    yield c
    c.close()


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001"])
def test_non_stream_both_providers(gw, upstream, client, model):
    r = client.chat.completions.create(model=model, messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}])
    assert r.choices[0].message.content == "fake reply to: hello world"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens == 5
    sent = upstream.requests[-1]
    headers = {k.lower(): v for k, v in sent["headers"].items()}
    if model.startswith("openai/"):
        assert sent["path"] == "/v1/chat/completions"
        assert sent["json"]["model"] == "gpt-4o-mini"
        assert headers["authorization"] == "Bearer sk-test-openai"
    else:
        assert sent["path"] == "/v1/messages"
        assert sent["json"]["model"] == "claude-haiku-4-5-20251001"
        assert sent["json"]["system"] == "be brief"
        assert sent["json"]["max_tokens"] == 4096  # the configured default
        assert headers["x-api-key"] == "sk-ant-test"
    row = gw.ledger()[-1]
    assert row["status"] == 200 and row["outcome"] == "ok"
    assert row["model"] == model and row["provider"] == model.split("/")[0]
    assert row["prompt_tokens"] == r.usage.prompt_tokens
    assert row["completion_tokens"] == r.usage.completion_tokens
    assert row["cost_nanos"] > 0  # both models are priced
    assert row["attempts"] == 1 and row["key_id"]


def test_cost_is_exact_with_cached_tokens(gw, client):
    r = client.chat.completions.create(model="openai/gpt-4o-mini",
                                       messages=[{"role": "user", "content": "cachedprompt " * 40}])
    cached = r.usage.prompt_tokens_details.cached_tokens
    assert cached == r.usage.prompt_tokens // 2
    row = gw.ledger()[-1]
    # gpt-4o-mini: $0.15 / $0.075 cached / $0.60 per million tokens = 150 / 75 / 600 nano-dollars per token
    expected = (r.usage.prompt_tokens - cached) * 150 + cached * 75 + r.usage.completion_tokens * 600
    assert row["cached_tokens"] == cached
    assert row["cost_nanos"] == expected


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001"])
def test_stream_both_providers(gw, upstream, client, model):
    stream = client.chat.completions.create(model=model, stream=True,
                                            messages=[{"role": "user", "content": "stream this please"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "fake reply to: stream this please"
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert chunks[-1].choices[0].finish_reason == "stop"
    sent = upstream.requests[-1]["json"]
    if model.startswith("openai/"):
        assert sent["stream_options"] == {"include_usage": True}  # the gateway always asks
    row = gw.ledger()[-1]
    assert row["stream"] == 1 and row["status"] == 200 and row["outcome"] == "ok"
    assert row["completion_tokens"] == 6 and row["prompt_tokens"] > 0
    assert row["usage_estimated"] == 0
    assert row["ttfb_ms"] is not None and row["ttfb_ms"] <= row["latency_ms"]


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001"])
def test_stream_usage_chunk_when_asked(gw, client, model):
    chunks = list(client.chat.completions.create(model=model, stream=True, stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "count me"}]))
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    row = gw.ledger()[-1]
    assert usage_chunks[0].usage.completion_tokens == row["completion_tokens"]
    assert usage_chunks[0].usage.prompt_tokens == row["prompt_tokens"]


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001"])
def test_images(gw, upstream, client, model):
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert "[2 image(s)]" in r.choices[0].message.content
    sent = upstream.requests[-1]["json"]
    if model.startswith("anthropic/"):
        blocks = sent["messages"][0]["content"]
        assert blocks[1]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG.split(",", 1)[1]}
        assert blocks[2]["source"] == {"type": "url", "url": "https://example.com/cat.png"}


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001"])
@pytest.mark.parametrize("stream", [False, True])
def test_tools(gw, client, model, stream):
    messages = [{"role": "user", "content": "please call tool lookup"}]
    if stream:
        chunks = list(client.chat.completions.create(model=model, messages=messages, tools=TOOLS, stream=True))
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert calls[0].function.name == "lookup" and calls[0].id
        args = "".join(tc.function.arguments or "" for tc in calls)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        call_id = calls[0].id
    else:
        r = client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
        tc = r.choices[0].message.tool_calls[0]
        assert tc.function.name == "lookup"
        args, finish, call_id = tc.function.arguments, [r.choices[0].finish_reason], tc.id
    assert args.replace(" ", "") == '{"q":"x"}'
    assert finish == ["tool_calls"]
    # the tool result goes back and the conversation continues
    follow = client.chat.completions.create(model=model, tools=TOOLS, messages=messages + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "lookup", "arguments": args}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "result: 42"},
        {"role": "user", "content": "thanks"}])
    assert follow.choices[0].message.content == "fake reply to: thanks"


def test_parameters_pass_through(gw, upstream, client):
    client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "params"}], n=2, seed=7, stop=["\n"],
        max_completion_tokens=50, response_format={"type": "json_object"}, temperature=0.3)
    sent = upstream.requests[-1]["json"]
    for k, v in {"n": 2, "seed": 7, "stop": ["\n"], "max_completion_tokens": 50,
                 "response_format": {"type": "json_object"}, "temperature": 0.3}.items():
        assert sent[k] == v


def test_n_choices(gw, client):
    r = client.chat.completions.create(model="openai/gpt-4o-mini", n=3,
                                       messages=[{"role": "user", "content": "three"}])
    assert [c.index for c in r.choices] == [0, 1, 2]


def test_models_and_embeddings(gw, client):
    ids = {m.id for m in client.models.list()}
    assert {"demo/echo", "demo/lorem"} <= ids
    e = client.embeddings.create(model="openai/text-embedding-3-small", input=["a", "b"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 8
    row = gw.ledger()[-1]
    assert row["route"] == "embeddings" and row["prompt_tokens"] == e.usage.prompt_tokens


def test_length_finish_reason(gw, client):
    r = client.chat.completions.create(model="openai/gpt-4o-mini", max_tokens=2,
                                       messages=[{"role": "user", "content": "a long answer please"}])
    assert r.choices[0].finish_reason == "length"
