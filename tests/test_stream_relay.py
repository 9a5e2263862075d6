"""The OpenAI stream relay's fast path: network reads of plain content deltas go to the client
exactly as they came; reads with usage, a finish reason, an error or [DONE] are parsed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from llmgw.errors import UpstreamError
from llmgw.providers.base import StreamState
from llmgw.providers.openai import OpenAIStream, _needs_parsing


def ev(obj: Any, sep: str = ": ") -> bytes:
    text = orjson.dumps(obj).decode()
    if sep != ":":
        text = text.replace('":', '"' + sep)
    return f"data: {text}\n\n".encode()


def delta(content: str, **extra: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}], "usage": None, **extra}


FINISH = {"id": "c1", "object": "chat.completion.chunk", "model": "m",
          "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None}
USAGE = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [],
         "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


@pytest.mark.parametrize("sep", [":", ": "])
def test_needs_parsing(sep: str) -> None:
    plain = ev(delta("hi"), sep) + ev(delta(" there"), sep)
    assert not _needs_parsing(plain)
    assert _needs_parsing(plain + ev(FINISH, sep))
    assert _needs_parsing(ev(USAGE, sep) + plain)
    assert _needs_parsing(plain + b"data: [DONE]\n\n")
    assert _needs_parsing(ev({"error": {"message": "boom"}}, sep))
    # content that merely talks about these keys is still plain (quotes are escaped in JSON)
    assert not _needs_parsing(ev(delta('say "usage": {1} and "error"'), sep))
    # unusual spacing around a key is parsed, not guessed at
    assert _needs_parsing(plain.replace(b'"usage"' + sep.encode(), b'"usage" :'))


async def relay(regions: list[bytes], include_usage: bool) -> tuple[list[bytes], StreamState, OpenAIStream]:
    async def source() -> AsyncIterator[bytes]:
        for r in regions:
            yield r

    state = StreamState()
    stream = OpenAIStream("up", "openai", source(), None, state, include_usage, client_model="m")
    out = [b async for b in stream.events()]
    return out, state, stream


async def test_plain_reads_are_relayed_byte_for_byte() -> None:
    first = ev(delta("Hel")) + b": a comment\n\n" + ev(delta("lo"))
    last = ev(delta("!")) + ev(FINISH) + ev(USAGE) + b"data: [DONE]\n\n"
    out, state, stream = await relay([first, last], include_usage=True)
    assert out == [first]  # as it came, comment and all
    # what came with [DONE] waits for the terminal write (after the ledger commit), with it
    end = stream.terminal()
    assert end.endswith(b"data: [DONE]\n\n")
    parsed = [orjson.loads(line[6:]) for line in end.split(b"\n\n") if line and line != b"data: [DONE]"]
    assert [p["choices"][0]["delta"].get("content") if p["choices"] else None for p in parsed] == ["!", None, None]
    assert parsed[-1]["usage"]["total_tokens"] == 10
    assert state.usage.prompt_tokens == 7 and state.usage.completion_tokens == 3 and state.usage_reported
    assert state.finish_reason == "stop"
    assert stream.completed
    assert state.text == "Hello!"


async def test_usage_chunk_is_dropped_unless_the_client_asked() -> None:
    regions = [ev(delta("a")) + ev(FINISH), ev(USAGE) + b"data: [DONE]\n\n"]
    out, state, stream = await relay(regions, include_usage=False)
    assert b'"usage":{' not in b"".join(out) + stream.terminal()
    assert state.usage.total_tokens == 10  # still billed from it


async def test_error_event_mid_stream_raises() -> None:
    regions = [ev(delta("a")), ev({"error": {"message": "overloaded"}})]
    with pytest.raises(UpstreamError) as e:
        await relay(regions, include_usage=True)
    assert e.value.code == "upstream_stream_error"


async def test_stream_without_done_or_finish_is_truncated() -> None:
    with pytest.raises(UpstreamError) as e:
        await relay([ev(delta("a")), ev(delta("b"))], include_usage=True)
    assert e.value.code == "upstream_stream_truncated"


class _Pieces:
    """Stands in for an UpstreamResponse: hands out fixed network reads."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    async def next_chunk(self) -> bytes | None:
        return self.pieces.pop(0) if self.pieces else None


async def test_regions_normalise_a_crlf_split_across_reads() -> None:
    from llmgw.providers.http import iter_sse_regions

    pieces = [b'data: {"a":1}\r', b'\n\r\ndata: {"b":2}\r\n', b"\r\ndata: [DONE]"]
    regions = [r async for r in iter_sse_regions(_Pieces(pieces), "up")]  # type: ignore[arg-type]
    assert b"".join(regions) == b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    assert all(r.endswith(b"\n\n") for r in regions)


# ---- malformed chunks on the fast path (issue 13.5) ---------------------------------------------------

MALFORMED = [
    b'data: {"id": "c1", "choices": [{"index": 0, "delta": {"content": "tru\n\n',  # cut short
    b"data: not json at all\n\n",
    b"data: [1, 2]\n\n",  # JSON, but not an object
    b'data: {"choices": "x"}\n\n',  # an object of the wrong shape (passes the fast test, fails on use)
]


@pytest.mark.parametrize("bad", MALFORMED, ids=["truncated", "not-json", "array", "wrong-shape"])
async def test_a_malformed_chunk_is_a_typed_error_not_relayed(bad: bytes) -> None:
    good = ev(delta("Hel"))
    regions = [good, bad, ev(delta("lo")) + ev(FINISH) + ev(USAGE) + b"data: [DONE]\n\n"]
    out: list[bytes] = []

    async def source() -> AsyncIterator[bytes]:
        for r in regions:
            yield r

    stream = OpenAIStream("up", "openai", source(), None, StreamState(), True, client_model="m")
    with pytest.raises(UpstreamError) as e:
        async for b in stream.events():
            out.append(b)
    assert e.value.code in ("upstream_bad_json", "upstream_bad_chunk")
    assert out == [good]  # the malformed chunk never reaches the client
    assert not stream.completed


async def test_a_malformed_chunk_in_a_plain_read_is_caught_before_anything_of_it_is_relayed() -> None:
    bad = b'data: {"choices": [{"delta": {"content": "x"}\n\n'
    regions = [ev(delta("a")) + bad + ev(delta("b"))]
    out: list[bytes] = []

    async def source() -> AsyncIterator[bytes]:
        for r in regions:
            yield r

    stream = OpenAIStream("up", "openai", source(), None, StreamState(), True, client_model="m")
    with pytest.raises(UpstreamError):
        async for b in stream.events():
            out.append(b)
    assert out == []


@pytest.mark.parametrize("mode", ["exact", "semantic"])
def test_through_the_daemon_a_malformed_chunk_fails_typed_is_recorded_and_never_cached(daemon_factory, mode):
    import openai
    from aiohttp import web

    from scripted_upstream import ScriptedUpstream, provider_config

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(ev(delta("Hel")))
        if n == 0:  # the first answer breaks off in a malformed chunk with no marker: the fast path's read
            await resp.write(b'data: {"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"\n\n')
        else:
            await resp.write(ev(delta("lo")) + ev(FINISH) + ev(USAGE) + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    with ScriptedUpstream(handler) as up:
        d = daemon_factory(provider_config(up.url) + f'[cache]\nmode = "{mode}"\n', {"SCRIPTED_KEY": "sk-x"})
        messages = [{"role": "user", "content": "say hello"}]
        with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
            with pytest.raises(openai.APIError) as e:  # typed, not a bare JSONDecodeError
                for _ in c.chat.completions.create(model="openai/gpt-4o-mini", messages=messages, stream=True):
                    pass
            assert "upstream sent invalid JSON" in str(e.value)
            row = d.ledger()[-1]
            assert row["outcome"] == "error" and row["error_code"] == "upstream_bad_json"
            # nothing of the broken answer was cached: the same request goes upstream again
            text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
                model="openai/gpt-4o-mini", messages=messages, stream=True) if ch.choices)
            assert text == "Hello"
        assert len(up.requests) == 2
        assert d.ledger()[-1]["cache"] == "miss"


@pytest.mark.parametrize("anthropic_upstream", [False, True], ids=["openai", "anthropic"])
def test_a_stall_before_the_first_event_is_retried(daemon_factory, anthropic_upstream):
    import asyncio

    import openai
    from aiohttp import web

    from scripted_upstream import ScriptedUpstream, provider_config

    async def handler(request: web.Request, n: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)  # the 200 and its headers go out at once
        if n == 0:
            await resp.write(b": PROCESSING\n\n")  # a keep-alive comment is not an event
            await asyncio.sleep(30)  # then nothing: the gateway gives up on this attempt
        if anthropic_upstream:
            for name, data in [
                ("message_start", {"type": "message_start", "message": {
                    "id": "m", "type": "message", "role": "assistant", "model": "c", "content": [],
                    "stop_reason": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}),
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": "Hello"}}),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                   "usage": {"output_tokens": 2}}),
                ("message_stop", {"type": "message_stop"})]:
                await resp.write(f"event: {name}\ndata: {orjson.dumps(data).decode()}\n\n".encode())
        else:
            await resp.write(ev(delta("Hello")) + ev(FINISH) + ev(USAGE) + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    with ScriptedUpstream(handler) as up:
        cfg = provider_config(up.url, anthropic=anthropic_upstream, timeout=0.3, name="up")
        d = daemon_factory(cfg + "[retry]\nbackoff_base = 0.01\nbackoff_max = 0.02\n", {"SCRIPTED_KEY": "sk-x"})
        with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
            chunks = list(c.chat.completions.create(model="up/m", messages=[{"role": "user", "content": "hi"}],
                                                    stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Hello"
        assert len(up.requests) == 2
        row = d.ledger()[-1]
        assert row["attempts"] == 2 and row["outcome"] == "ok" and row["status"] == 200
