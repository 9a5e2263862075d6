"""The fake upstream speaks OpenAI and Anthropic well enough for the official SDKs.

Every test drives the fake with the real `openai` / `anthropic` clients (or raw aiohttp where the
wire format itself is the point), so the gateway's tests can trust it as an upstream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import aiohttp
import anthropic
import httpx2
import openai
import pytest

try:
    from fake_upstream import CACHE_CREATION_TOKENS, TOOL_ARGS, FakeUpstream, prompt_tokens, reply_text
except ImportError:  # tests/ imported as a package
    from tests.fake_upstream import CACHE_CREATION_TOKENS, TOOL_ARGS, FakeUpstream, prompt_tokens, reply_text

OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {"name": "search", "description": "search", "parameters": {"type": "object"}},
    }
]
ANTHROPIC_TOOLS = [{"name": "search", "description": "search", "input_schema": {"type": "object"}}]


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake(fake_server: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
def oai(fake: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.openai_url, api_key="x") as client:
        yield client


@pytest.fixture
def ant(fake: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake.url, api_key="x") as client:
        yield client


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- OpenAI


def test_openai_non_stream(fake: FakeUpstream, oai: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, *user("hello there")]
    r = oai.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert r.model == "gpt-4o-mini"
    assert r.choices[0].message.content == "fake reply to: hello there"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == prompt_tokens(messages)
    assert r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    [req] = fake.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == "Bearer x"
    assert req["json"]["messages"] == messages


def test_openai_list_content_images_n_and_length(oai: openai.OpenAI) -> None:
    content = [
        {"type": "text", "text": "look at"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "these"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    r = oai.chat.completions.create(model="m", messages=[{"role": "user", "content": content}], n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[1].message.content == "fake reply to: look at these [2 image(s)]"
    assert r.usage.completion_tokens == 2 * 8

    r = oai.chat.completions.create(model="m", messages=user("one two three four"), max_tokens=3)
    assert r.choices[0].message.content == "fake reply to:"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


def test_openai_cached_prompt(oai: openai.OpenAI) -> None:
    messages = user("a long shared prefix cachedprompt and a question")
    r = oai.chat.completions.create(model="m", messages=messages)
    assert r.usage.prompt_tokens == prompt_tokens(messages)
    assert r.usage.prompt_tokens_details.cached_tokens == prompt_tokens(messages) // 2


def test_openai_stream_with_and_without_usage(oai: openai.OpenAI) -> None:
    messages = user("stream me a few words please")
    chunks = list(
        oai.chat.completions.create(
            model="m", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply_text(messages)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(text.split())
    assert all(c.usage is None for c in chunks[:-1])

    chunks = list(oai.chat.completions.create(model="m", messages=messages, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_tool_call(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model="m", messages=user("please call tool now"), tools=OPENAI_TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "search"
    assert json.loads(call.function.arguments) == TOOL_ARGS

    # the tool result is not a user turn: the fake answers with text, no endless tool loop
    follow_up = [
        *user("please call tool now"),
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "result"},
    ]
    r2 = oai.chat.completions.create(model="m", messages=follow_up, tools=OPENAI_TOOLS)
    assert r2.choices[0].finish_reason == "stop"


def test_openai_tool_call_stream(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="m", messages=user("call tool"), tools=OPENAI_TOOLS, stream=True
    )
    name, args, finish = "", "", None
    for chunk in stream:
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            name += tc.function.name or ""
            args += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert (name, json.loads(args), finish) == ("search", TOOL_ARGS, "tool_calls")


def test_openai_429_then_sdk_retry_succeeds(fake: FakeUpstream, oai: openai.OpenAI) -> None:
    fake.add_fault(status=429, retry_after=0.1, times=2)
    r = oai.chat.completions.create(model="m", messages=user("hi"))
    assert r.choices[0].message.content == "fake reply to: hi"
    attempts = fake.requests
    assert [a["headers"]["x-stainless-retry-count"] for a in attempts] == ["0", "1", "2"]

    fake.add_fault(status=429, retry_after=1)
    with pytest.raises(openai.RateLimitError) as info:
        oai.with_options(max_retries=0).chat.completions.create(model="m", messages=user("hi"))
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.response.headers["retry-after"] == "1"


def test_openai_500_and_path_scoped_faults(fake: FakeUpstream, oai: openai.OpenAI) -> None:
    fake.add_fault(status=500, path="/v1/messages")
    fake.add_fault(status=500, path="/v1/chat/completions")
    with pytest.raises(openai.InternalServerError):
        oai.with_options(max_retries=0).chat.completions.create(model="m", messages=user("hi"))
    assert len(fake.requests) == 1  # the /v1/messages fault was skipped, not consumed
    fake.clear_faults()
    oai.with_options(max_retries=0).chat.completions.create(model="m", messages=user("hi"))


def test_openai_disconnect_mid_stream_raises(fake: FakeUpstream, oai: openai.OpenAI) -> None:
    fake.add_fault(disconnect_after=1)
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in oai.chat.completions.create(
            model="m", messages=user("one two three four five six"), stream=True
        ):
            received.append(chunk.choices[0].delta.content)
    assert received[0] == ""  # the role chunk, then exactly one content chunk
    assert len(received) == 2
    assert len(fake.requests) == 1  # a broken stream is not retried by the SDK


def test_openai_delay_and_stall(fake: FakeUpstream, oai: openai.OpenAI) -> None:
    fake.add_fault(delay=0.3)
    t0 = time.monotonic()
    oai.chat.completions.create(model="m", messages=user("hi"))
    assert time.monotonic() - t0 >= 0.3

    fake.add_fault(stall=0.3)
    stream = oai.chat.completions.create(model="m", messages=user("a b c d e f g h"), stream=True)
    stamps = []
    text = ""
    for chunk in stream:
        stamps.append(time.monotonic())
        text += chunk.choices[0].delta.content or ""
    assert text == reply_text(user("a b c d e f g h"))
    assert max(b - a for a, b in zip(stamps, stamps[1:], strict=False)) >= 0.25


async def test_openai_auth_required(fake: FakeUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        body = {"model": "m", "messages": user("hi")}
        async with session.post(fake.openai_url + "/chat/completions", json=body) as r:
            assert r.status == 401
            error = (await r.json())["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")


def test_openai_embeddings_and_models(oai: openai.OpenAI) -> None:
    e = oai.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])  # base64 on the wire
    assert [len(d.embedding) for d in e.data] == [8, 8]
    assert e.usage.prompt_tokens == 2
    again = oai.embeddings.create(model="text-embedding-3-small", input="alpha", encoding_format="float")
    assert again.data[0].embedding == pytest.approx(e.data[0].embedding, abs=1e-6)

    assert "gpt-4o-mini" in [m.id for m in oai.models.list()]


# --------------------------------------------------------------------------- Anthropic


def test_anthropic_non_stream(fake: FakeUpstream, ant: anthropic.Anthropic) -> None:
    messages = user("hello claude")
    m = ant.messages.create(model="claude-x", max_tokens=100, messages=messages, system="be brief")
    assert m.content[0].type == "text"
    assert m.content[0].text == "fake reply to: hello claude"
    assert m.stop_reason == "end_turn"
    assert m.usage.input_tokens == prompt_tokens(messages)
    assert m.usage.output_tokens == 5
    assert m.usage.cache_read_input_tokens == 0
    [req] = fake.requests
    assert req["path"] == "/v1/messages"
    assert req["headers"]["anthropic-version"]


def test_anthropic_cached_prompt_and_max_tokens(ant: anthropic.Anthropic) -> None:
    messages = user("shared cachedprompt prefix then a question")
    total = prompt_tokens(messages)
    m = ant.messages.create(model="c", max_tokens=2, messages=messages)
    assert m.usage.cache_read_input_tokens == total // 2
    assert m.usage.input_tokens == total - total // 2
    assert m.usage.cache_creation_input_tokens == CACHE_CREATION_TOKENS
    assert m.stop_reason == "max_tokens"
    assert m.content[0].text == "fake reply"
    assert m.usage.output_tokens == 2


def test_anthropic_stream_text(ant: anthropic.Anthropic) -> None:
    messages = user("stream some words back to me")
    with ant.messages.stream(model="c", max_tokens=100, messages=messages) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == reply_text(messages)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(reply_text(messages).split())
    assert final.usage.input_tokens == prompt_tokens(messages)


def test_anthropic_stream_tool_use(ant: anthropic.Anthropic) -> None:
    with ant.messages.stream(
        model="c", max_tokens=100, messages=user("call tool please"), tools=ANTHROPIC_TOOLS
    ) as stream:
        final = stream.get_final_message()
    [block] = final.content
    assert (block.type, block.name, block.input) == ("tool_use", "search", TOOL_ARGS)
    assert final.stop_reason == "tool_use"

    m = ant.messages.create(model="c", max_tokens=100, messages=user("call tool"), tools=ANTHROPIC_TOOLS)
    assert m.content[0].input == TOOL_ARGS


async def test_anthropic_stream_wire_sequence(fake: FakeUpstream) -> None:
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    body = {
        "model": "c",
        "max_tokens": 50,
        "stream": True,
        "messages": user("call tool"),
        "tools": ANTHROPIC_TOOLS,
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(fake.url + "/v1/messages", json=body, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            raw = (await resp.read()).decode()
    events = [block.split("\n") for block in raw.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    datas = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    assert names == [d["type"] for d in datas]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert datas[1]["content_block"]["input"] == {}
    partial = "".join(d["delta"]["partial_json"] for d in datas if d["type"] == "content_block_delta")
    assert json.loads(partial) == TOOL_ARGS
    assert datas[-2]["delta"]["stop_reason"] == "tool_use"
    assert datas[-2]["usage"]["output_tokens"] > 0


async def test_anthropic_header_and_body_validation(fake: FakeUpstream) -> None:
    url = fake.url + "/v1/messages"
    ok_body = {"model": "c", "max_tokens": 5, "messages": user("hi")}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=ok_body, headers={"anthropic-version": "2023-06-01"}) as r:
            assert r.status == 401
            assert (await r.json())["error"]["type"] == "authentication_error"
        async with session.post(url, json=ok_body, headers={"x-api-key": "k"}) as r:
            assert r.status == 400
            assert (await r.json())["type"] == "error"
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        async with session.post(url, json={**ok_body, "max_tokens": None}, headers=headers) as r:
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        async with session.post(url, json=ok_body, headers=headers) as r:
            assert r.status == 200


def test_anthropic_429_then_sdk_retry_succeeds(fake: FakeUpstream, ant: anthropic.Anthropic) -> None:
    fake.add_fault(status=429, retry_after=0.1, path="/v1/messages")
    m = ant.messages.create(model="c", max_tokens=10, messages=user("hi"))
    assert m.content[0].text == "fake reply to: hi"
    assert len(fake.requests) == 2

    fake.add_fault(status=429, retry_after=1)
    with pytest.raises(anthropic.RateLimitError) as info:
        ant.with_options(max_retries=0).messages.create(model="c", max_tokens=10, messages=user("hi"))
    assert info.value.body["error"]["type"] == "rate_limit_error"


def test_anthropic_disconnect_mid_stream_raises(fake: FakeUpstream, ant: anthropic.Anthropic) -> None:
    fake.add_fault(disconnect_after=1)
    pieces = []
    with pytest.raises((anthropic.APIConnectionError, httpx2.RemoteProtocolError)):
        with ant.messages.stream(model="c", max_tokens=100, messages=user("a b c d e f g")) as stream:
            for text in stream.text_stream:
                pieces.append(text)
    assert len(pieces) == 1
    assert len(fake.requests) == 1
