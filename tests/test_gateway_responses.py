"""The OpenAI Responses API (``/v1/responses``) through the real daemon with the official openai
SDK: passed through to OpenAI-format providers, translated for Anthropic and the demo; sync,
async, streaming, tools, images, structured output; stored responses pinned to their provider."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import BaseModel

MODELS = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001", "demo/echo"]
TOOLS = [{"type": "function", "name": "lookup", "description": "look something up",
          "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}]
IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@pytest.fixture
def client(gw):
    c = openai.OpenAI(base_url=gw.openai_base, api_key=gw.key, max_retries=0)
    yield c
    c.close()


def _expected(model: str, text: str) -> str:
    return ("Echo: " if model.startswith("demo/") else "fake reply to: ") + text


@pytest.mark.parametrize("model", MODELS)
def test_non_stream(gw, upstream, client, model):
    r = client.responses.create(model=model, input="hello there", instructions="be brief", max_output_tokens=100)
    assert r.output_text == _expected(model, "hello there")
    assert r.status == "completed" and r.object == "response" and r.id.startswith("resp_")
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    if not model.startswith("demo/"):  # the fake counts words
        assert r.usage.output_tokens == len(r.output_text.split())
    row = gw.ledger()[-1]
    assert row["route"] == "responses" and row["status"] == 200 and row["model"] == model
    assert row["prompt_tokens"] == r.usage.input_tokens and row["completion_tokens"] == r.usage.output_tokens
    if not model.startswith("demo/"):
        assert row["cost_nanos"] > 0
    if model.startswith("openai/"):
        sent = upstream.requests[-1]
        assert sent["path"] == "/v1/responses"  # passed through, as the client sent it
        assert sent["json"] == {"model": "gpt-4o-mini", "input": "hello there", "instructions": "be brief",
                                "max_output_tokens": 100}
    elif model.startswith("anthropic/"):
        sent = upstream.requests[-1]
        assert sent["path"] == "/v1/messages"
        assert sent["json"]["system"] == "be brief" and sent["json"]["max_tokens"] == 100


@pytest.mark.parametrize("model", MODELS)
def test_stream(gw, client, model):
    with client.responses.stream(model=model, input="stream me") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == _expected(model, "stream me") == final.output_text
    assert final.status == "completed"
    row = gw.ledger()[-1]
    assert row["route"] == "responses" and row["stream"] == 1 and row["outcome"] == "ok"
    assert row["usage_estimated"] == 0 and row["completion_tokens"] == final.usage.output_tokens


@pytest.mark.parametrize("model", MODELS)
def test_raw_stream_events_are_typed_and_ordered(gw, client, model):
    events = list(client.responses.create(model=model, input="typed events", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert "response.output_item.added" in types and "response.output_text.done" in types
    assert [e.sequence_number for e in events] == list(range(len(events)))


async def test_async_client(gw):
    async with openai.AsyncOpenAI(base_url=gw.openai_base, api_key=gw.key, max_retries=0) as c:
        r = await c.responses.create(model="anthropic/claude-haiku-4-5-20251001", input="async hello")
        assert r.output_text == "fake reply to: async hello"
        stream = await c.responses.create(model="openai/gpt-4o-mini", input="async stream", stream=True)
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        assert text == "fake reply to: async stream"


@pytest.mark.parametrize("model", MODELS[:2])
@pytest.mark.parametrize("stream", [False, True])
def test_tools_round_trip(gw, client, model, stream):
    if stream:
        with client.responses.stream(model=model, input="please call tool lookup", tools=TOOLS) as s:
            first = s.get_final_response()
    else:
        first = client.responses.create(model=model, input="please call tool lookup", tools=TOOLS)
    call = next(o for o in first.output if o.type == "function_call")
    assert call.name == "lookup" and json.loads(call.arguments) == {"q": "x"}
    follow = client.responses.create(model=model, tools=TOOLS, input=[
        {"role": "user", "content": "please call tool lookup"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "42"},
        {"role": "user", "content": [{"type": "input_text", "text": "thanks"}]}])
    assert follow.output_text == "fake reply to: thanks"


@pytest.mark.parametrize("model", MODELS[:2])
def test_images(gw, upstream, client, model):
    r = client.responses.create(model=model, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "what is this"}, {"type": "input_image", "image_url": IMAGE}]}])
    assert r.output_text == "fake reply to: what is this [1 image(s)]"
    if model.startswith("anthropic/"):
        block = upstream.requests[-1]["json"]["messages"][0]["content"][1]
        assert block["type"] == "image" and block["source"]["media_type"] == "image/png"


class Answer(BaseModel):
    city: str
    people: int


@pytest.mark.parametrize("model", MODELS[:2])
def test_structured_output(gw, upstream, client, model):
    r = client.responses.parse(model=model, input="where", text_format=Answer)
    assert r.output_parsed == Answer(city="fake reply to: where", people=1)
    sent = upstream.requests[-1]["json"]
    if model.startswith("anthropic/"):  # Anthropic's native structured output, not a prompt
        fmt = sent["output_config"]["format"]
        assert fmt["type"] == "json_schema" and fmt["schema"]["properties"]["people"] == {"title": "People",
                                                                                          "type": "integer"}
        assert "system" not in sent
    else:
        assert sent["text"]["format"]["type"] == "json_schema"


def test_previous_response_goes_to_its_provider_only(gw, upstream, daemon_factory):
    from conftest import UPSTREAM_ENV, upstream_config

    d = daemon_factory(upstream_config(upstream, """
[aliases]
chain = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001"]
back = ["anthropic/claude-haiku-4-5-20251001", "openai/gpt-4o"]
claude = ["anthropic/claude-haiku-4-5-20251001"]
"""), UPSTREAM_ENV)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        first = c.responses.create(model="chain", input="remember me")
        # the alias 'back' lists openai second: the follow-up goes to openai only, and directly
        upstream.reset()
        second = c.responses.create(model="back", input="and now?", previous_response_id=first.id)
        assert second.output_text == "fake reply to: and now?"
        assert [r["path"] for r in upstream.requests] == ["/v1/responses"]
        assert upstream.requests[0]["json"]["model"] == "gpt-4o"
        # its provider failing is an error, never a fallback to another provider
        upstream.reset()
        upstream.add_fault(path="/v1/responses", status=503, times=10)
        with pytest.raises(openai.APIStatusError):
            c.responses.create(model="chain", input="again", previous_response_id=first.id)
        assert {r["path"] for r in upstream.requests} == {"/v1/responses"}
        upstream.clear_faults()
        # a route without that provider is refused, naming the parameter
        with pytest.raises(openai.BadRequestError) as e:
            c.responses.create(model="claude", input="x", previous_response_id=first.id)
        assert e.value.body["param"] == "previous_response_id" and "openai" in e.value.message
        # an id nobody knows, for a provider that stores nothing: refused before any call
        upstream.reset()
        with pytest.raises(openai.BadRequestError) as e:
            c.responses.create(model="claude", input="x", previous_response_id="resp_unknown")
        assert e.value.body["param"] == "previous_response_id" and upstream.requests == []


def test_bad_input_is_a_typed_400(gw, client, upstream):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="openai/gpt-4o-mini", input=42)  # type: ignore[arg-type]
    assert e.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="anthropic/claude-haiku-4-5-20251001", input="x",
                                tools=[{"type": "code_interpreter", "container": {"type": "auto"}}])
    assert e.value.body["param"] == "tools[0].type"
    assert gw.ledger()[-1]["status"] == 400


# ---- governance, cache, metrics: the same as chat -----------------------------------------------


def _budget(d, key_id, usd_nanos):
    conn = d.db()
    try:
        with conn:
            conn.execute(
                "INSERT INTO budgets (id, scope, scope_id, period, limit_nanos, hard, warn_pct, grace_nanos,"
                " created_at, updated_at) VALUES (?, 'key', ?, 'month', ?, 1, 80, 0, '2026-01-01', '2026-01-01')",
                (f"bud_{key_id}", key_id, usd_nanos))
    finally:
        conn.close()


def _key_id(d, name):
    conn = d.db()
    try:
        return conn.execute("SELECT id FROM keys WHERE name = ?", (name,)).fetchone()[0]
    finally:
        conn.close()


def test_hard_budget_reserves_and_bounds_responses(gw, upstream):
    secret = gw.mint(name="capped")
    _budget(gw, _key_id(gw, "capped"), 50_000_000)  # $0.05
    gw.synced()
    with openai.OpenAI(base_url=gw.openai_base, api_key=secret, max_retries=0) as c:
        r = c.responses.create(model="openai/gpt-4o-mini", input="within budget")
        assert r.output_text == "fake reply to: within budget"
        # the output bound is made real: the upstream got the limit the reservation assumed
        assert upstream.requests[-1]["json"]["max_output_tokens"] == 4096
        row = gw.ledger()[-1]
        assert row["reserved_nanos"] > 0 and 0 < row["cost_nanos"] < row["reserved_nanos"]
        # a continuation pulls stored context in: its cost has no bound, refused under a hard budget
        upstream.reset()
        with pytest.raises(openai.BadRequestError) as e:
            c.responses.create(model="openai/gpt-4o-mini", input="more", previous_response_id=r.id)
        assert e.value.code == "unbounded_cost" and "previous_response_id" in e.value.message
        with pytest.raises(openai.APIStatusError) as e:  # a request the budget cannot cover
            c.responses.create(model="openai/gpt-4o", input="x" * 20_000, max_output_tokens=100_000)
        assert e.value.status_code == 429 and "budget" in e.value.code
        assert upstream.requests == []


def test_rate_limit_counts_responses(gw, upstream):
    secret = gw.mint(name="slow", rpm=1)
    gw.synced()
    with openai.OpenAI(base_url=gw.openai_base, api_key=secret, max_retries=0) as c:
        c.responses.create(model="demo/echo", input="one")
        with pytest.raises(openai.RateLimitError):
            c.responses.create(model="demo/echo", input="two")


@pytest.mark.parametrize("model", MODELS[:2])
def test_exact_cache_serves_responses(daemon_factory, upstream, model):
    from conftest import UPSTREAM_ENV, upstream_config

    d = daemon_factory(upstream_config(upstream, '[cache]\nmode = "exact"\n'), UPSTREAM_ENV)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        first = c.responses.create(model=model, input="cache me", instructions="short")
        upstream.reset()
        again = c.responses.create(model=model, input="cache me", instructions="short")
        assert again.output_text == first.output_text and upstream.requests == []
        with c.responses.stream(model=model, input="cache me", instructions="short") as s:
            streamed = s.get_final_response()
        assert streamed.output_text == first.output_text and upstream.requests == []
        # another instruction is another request
        c.responses.create(model=model, input="cache me", instructions="long")
        assert len(upstream.requests) == 1
        # a streamed answer is stored too, and replays to a non-streaming client
        with c.responses.stream(model=model, input="stream then cache") as s:
            s.get_final_response()
        upstream.reset()
        assert c.responses.create(model=model, input="stream then cache").output_text == \
            "fake reply to: stream then cache"
        assert upstream.requests == []
    rows = d.ledger()
    assert [r["cache"] for r in rows] == ["miss", "hit-exact", "hit-exact", "miss", "miss", "hit-exact"]
    assert all(r["route"] == "responses" for r in rows)


def test_metrics_label_the_responses_route(gw, client):
    client.responses.create(model="demo/echo", input="count me")
    text = httpx.get(gw.url + "/metrics").text
    assert 'route="responses"' in text


def test_upstream_breaking_mid_stream_ends_with_response_failed(gw, upstream, client):
    upstream.add_fault(path="/v1/messages", disconnect_after=1)
    events = list(client.responses.create(model="anthropic/claude-haiku-4-5-20251001", input="break me",
                                          stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    assert events[-1].response.error.code == "upstream_stream_broken"
    assert events[-1].response.id == events[0].response.id  # the failure is the stream's own response
    assert events[-1].sequence_number == events[-2].sequence_number + 1
    row = gw.ledger()[-1]
    assert row["outcome"] == "error" and row["error_code"] == "upstream_stream_broken" and row["stream"] == 1
    # the SDK's stream helper sees the same failure, not a broken stream state
    upstream.add_fault(path="/v1/messages", disconnect_after=1)
    with client.responses.stream(model="anthropic/claude-haiku-4-5-20251001", input="break me") as s:
        assert [e.type for e in s][-1] == "response.failed"


def test_a_server_without_responses_gets_chat(upstream, daemon_factory):
    from conftest import UPSTREAM_ENV, upstream_config

    d = daemon_factory(upstream_config(upstream, f"""
[providers.vllm]
type = "openai"
base_url = "{upstream.openai_url}"
api_key_env = "TEST_OPENAI_KEY"
responses = false
"""), UPSTREAM_ENV)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        r = c.responses.create(model="vllm/llama-3", input="no responses here", max_output_tokens=50)
        assert r.output_text == "fake reply to: no responses here" and r.store is False
        with c.responses.stream(model="vllm/llama-3", input="streamed") as s:
            assert s.get_final_response().output_text == "fake reply to: streamed"
    assert [q["path"] for q in upstream.requests] == ["/v1/chat/completions"] * 2
    assert upstream.requests[0]["json"]["max_tokens"] == 50


def test_stored_responses_belong_to_their_owner(gw, upstream, client):
    first = client.responses.create(model="openai/gpt-4o-mini", input="mine")
    with client.responses.stream(model="openai/gpt-4o-mini", input="mine too") as s:
        streamed = s.get_final_response()
    assert client.responses.retrieve(first.id).output_text == "fake reply to: mine"
    assert client.responses.retrieve(streamed.id).id == streamed.id  # a streamed response is remembered too
    assert upstream.requests[-1]["path"] == f"/v1/responses/{streamed.id}"
    assert list(client.responses.input_items.list(first.id)) == []
    other = gw.mint(name="other")
    gw.synced()
    with openai.OpenAI(base_url=gw.openai_base, api_key=other, max_retries=0) as c:
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError) as e:  # nor continue it
            c.responses.create(model="openai/gpt-4o-mini", input="theirs?", previous_response_id=first.id)
        assert e.value.code == "previous_response_not_found"
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    # a translated provider stores nothing: nothing to read back
    translated = client.responses.create(model="anthropic/claude-haiku-4-5-20251001", input="x")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(translated.id)


def test_input_tokens_count(gw, upstream, client):
    r = client.responses.input_tokens.count(model="openai/gpt-4o-mini", input="count me")
    assert r.input_tokens == max(1, len('[{"role": "user", "content": "count me"}]') // 4)
    assert upstream.requests[-1]["path"] == "/v1/responses/input_tokens"
    assert upstream.requests[-1]["json"]["model"] == "gpt-4o-mini"
    r = client.responses.input_tokens.count(model="anthropic/claude-haiku-4-5-20251001", input="count me",
                                           instructions="be brief")
    sent = upstream.requests[-1]
    assert sent["path"] == "/v1/messages/count_tokens" and sent["json"]["system"] == "be brief"
    assert r.input_tokens == max(1, len('[{"role": "user", "content": [{"type": "text", "text": "count me"}]}]') // 4)
    assert client.responses.input_tokens.count(model="demo/echo", input="count me").input_tokens == 3 + 4 + 2
    assert gw.ledger() == []  # not billed


BAD_BODIES = [
    b"", b"[]", b'{"model": 1, "input": "x"}', b'{"input": "x"}', b'{"model": "demo/echo"}',
    b'{"model": "demo/echo", "input": {"a": 1}}', b'{"model": "demo/echo", "input": [1]}',
    b'{"model": "demo/echo", "input": [{"role": "robot", "content": "x"}]}',
    b'{"model": "demo/echo", "input": [{"role": "user", "content": 7}]}',
    b'{"model": "demo/echo", "input": [{"role": "user", "content": [{"type": "input_video"}]}]}',
    b'{"model": "demo/echo", "input": "x", "max_output_tokens": 0}',
    b'{"model": "demo/echo", "input": "x", "temperature": "hot"}',
    b'{"model": "demo/echo", "input": "x", "tools": {}}',
    b'{"model": "demo/echo", "input": "x", "tools": [{"type": "function"}]}',
    b'{"model": "demo/echo", "input": "x", "text": {"format": "json"}}',
    b'{"model": "demo/echo", "input": "x", "text": {"format": {"type": "xml"}}}',
    b'{"model": "demo/echo", "input": "x", "tool_choice": {"type": "allowed_tools"}, "tools": [{"type": "function", "name": "f"}]}',
    b'{"model": "demo/echo", "input": "x", "stream": "yes"}',
    b'{"model": "anthropic/claude-haiku-4-5-20251001", "input": "x", "reasoning": {"effort": "extreme"}}',
    b'{"model": "demo/echo", "input": [{"type": "function_call_output", "call_id": "c", "output": 5}]}',
]


@pytest.mark.parametrize("raw", BAD_BODIES)
def test_bad_responses_bodies_are_typed_4xx(gw, raw):
    r = httpx.post(gw.url + "/v1/responses", content=raw, headers={"authorization": f"Bearer {gw.key}",
                                                                   "content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]


def test_pass_through_stream_breaking_ends_with_its_own_response_failed(gw, upstream, client):
    upstream.add_fault(path="/v1/responses", disconnect_after=1)
    events = list(client.responses.create(model="openai/gpt-4o-mini", input="break me please now", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    assert events[-1].response.id == events[0].response.id
    assert events[-1].sequence_number == events[-2].sequence_number + 1
    assert gw.ledger()[-1]["error_code"] == "upstream_stream_broken"


def test_an_openai_error_reaches_a_responses_client_as_openai_wrote_it(gw, upstream, client):
    upstream.reset()
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="openai/gpt-4o-mini", input="x", previous_response_id="resp_nobody")
    assert e.value.body == {"message": "Previous response with id 'resp_nobody' not found.",
                            "type": "invalid_request_error", "param": "previous_response_id",
                            "code": "previous_response_not_found"}
