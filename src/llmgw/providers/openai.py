"""OpenAI-format upstreams: OpenAI itself and any OpenAI-compatible server (vLLM, OpenRouter,
llama.cpp) by ``base_url``.

``OpenAIFormat`` holds the dialect logic (pass-through for OpenAI clients, translation for
Anthropic clients, usage capture from streams); subclasses supply the transport: HTTP here, an
in-process generator in ``demo``. Streams always ask the upstream for ``include_usage`` so the
cost is known; the usage chunk is forwarded only if the client asked for it.
"""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..config import ProviderConfig
from ..errors import UpstreamError
from ..usage import Usage
from . import sse, translate
from .base import Completion, ModelCatalogue, StreamState, pick_key
from .http import finish, iter_sse_regions, loads, open_sse, post_json
from .sse import Event
from .upstream import UpstreamClient


class OpenAIFormat(ModelCatalogue):
    type = "openai"

    def __init__(self, name: str, models: list[str] | None = None) -> None:
        self.name = name
        self.models = list(models or [])

    # -- transport (overridden) -------------------------------------------------------------
    async def _send(self, path: str, payload: dict[str, Any], timeout: float) -> bytes:
        raise NotImplementedError

    async def _open(self, payload: dict[str, Any], timeout: float) -> tuple[AsyncIterator[list[Event] | bytes], Any]:
        """Returns (iterator over batches of SSE (event, data) pairs or runs of raw SSE event
        blocks, async closer(completed) or None)."""
        raise NotImplementedError

    async def close(self) -> None:
        return None

    # -- calls ----------------------------------------------------------------------------------
    async def complete(self, inbound: str, body: dict[str, Any], model: str, timeout: float) -> Completion:
        if inbound == "openai":
            payload = dict(body)
            payload["model"] = model
            payload.pop("stream_options", None)
            data = await self._send("/chat/completions", payload, timeout)
            parsed = loads(data)
            return Completion(body=data, usage=Usage.from_openai(parsed.get("usage")))
        payload = translate.anthropic_request_to_openai(body, model=model)
        payload.pop("stream", None)
        payload.pop("stream_options", None)
        parsed = loads(await self._send("/chat/completions", payload, timeout))
        out = translate.openai_to_anthropic_response(parsed, model=body.get("model") or model)
        return Completion(body=orjson.dumps(out), usage=Usage.from_openai(parsed.get("usage")))

    async def open_stream(self, inbound: str, body: dict[str, Any], model: str, timeout: float,
                          state: StreamState) -> OpenAIStream:
        if inbound == "openai":
            payload = dict(body)
            payload["model"] = model
            client_opts = body.get("stream_options") or {}
            include_usage = bool(client_opts.get("include_usage"))
            payload["stream_options"] = {**client_opts, "include_usage": True}
        else:
            payload = translate.anthropic_request_to_openai(body, model=model)
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
            include_usage = False
        chunks, closer = await self._open(payload, timeout)
        return OpenAIStream(self.name, inbound, chunks, closer, state, include_usage,
                            client_model=body.get("model") or model)

    async def embeddings(self, body: dict[str, Any], model: str, timeout: float) -> Completion:
        payload = dict(body)
        payload["model"] = model
        data = await self._send("/embeddings", payload, timeout)
        return Completion(body=data, usage=Usage.from_openai(loads(data).get("usage")))


def _needs_parsing(data: bytes) -> bool:
    """Whether SSE data (one event or a run of them) holds more than plain content deltas: usage,
    a finish reason or an error with a value, or the terminal [DONE]. A read without any of them
    is relayed as it came; a false positive only costs a parse.

    Substring tests, not a regex: ``re`` tries its alternation at every ``"`` of the JSON (5.8 us
    for a 650-byte read against 2.9 us). A non-null usage is an object and a non-null finish
    reason a string in every OpenAI-format server's output, written ``"key":`` or ``"key": ``; a
    read in which the key never appears with either spacing is parsed rather than guessed at.
    """
    if b"[DONE]" in data or b'"error"' in data:
        return True
    if b'"usage"' in data and (b'"usage":{' in data or b'"usage": {' in data
                               or (b'"usage":' not in data and b'"usage": ' not in data)):
        return True
    return b'"finish_reason"' in data and (
        b'"finish_reason":"' in data or b'"finish_reason": "' in data
        or (b'"finish_reason":' not in data and b'"finish_reason": ' not in data))


def _well_formed(region: bytes) -> bool:
    """Whether every event of a run is one ``data:`` line holding a JSON object whose ``choices``,
    if any, are objects with object deltas (comment blocks allowed): the check that lets the fast path relay a read as it came without relaying a
    malformed chunk. An orjson parse per event, ~0.5 us, the price of the parse the fast path
    saves, not of the translation and re-encoding it saves. False sends the read through the
    parsing path, which raises a typed ``UpstreamError`` at the first malformed event."""
    for block in region.split(b"\n\n"):
        if not block or block.startswith(b":"):
            continue
        if not block.startswith(b"data:") or b"\n" in block:
            return False
        try:
            chunk = orjson.loads(block[5:])
        except orjson.JSONDecodeError:
            return False
        if type(chunk) is not dict:
            return False
        choices = chunk.get("choices")
        if choices is None:
            continue
        if type(choices) is not list:
            return False
        for c in choices:  # a loop, not all(<generator>): half the cost for the one choice of a delta
            if type(c) is not dict:
                return False
            d = c.get("delta")
            if d is not None and type(d) is not dict:
                return False
    return True


class OpenAIStream:
    """Relays an OpenAI-format upstream stream to the client, in the client's dialect."""

    def __init__(self, provider: str, inbound: str, chunks: AsyncIterator[list[Event] | bytes], closer: Any,
                 state: StreamState, include_usage: bool, client_model: str) -> None:
        self.provider = provider
        self.inbound = inbound
        self._chunks = chunks
        self._closer = closer
        self.state = state
        self._include_usage = include_usage
        self.completed = False
        self._tail = b""  # events held back to go out with the terminal event
        self._to_anthropic = (
            translate.OpenAIStreamToAnthropic(client_model, "msg_" + format(random.getrandbits(96), "x"))
            if inbound == "anthropic" else None
        )

    async def events(self) -> AsyncIterator[bytes]:
        """One bytes blob per upstream batch: a burst of upstream events becomes one client write."""
        state = self.state
        to_anthropic = self._to_anthropic
        out: list[bytes] = []
        async for batch in self._chunks:
            if isinstance(batch, bytes):  # a run of raw SSE events from the network
                if to_anthropic is None and not _needs_parsing(batch) and _well_formed(batch):
                    state.openai_sse.append(batch)  # pass-through: relayed exactly as it came
                    yield batch
                    continue
                events = sse.split_events(batch)
            else:
                events = batch
            for _event, data in events:
                if data == b"[DONE]":
                    self.completed = True
                    break
                chunk = loads(data)  # a read with a marker: cheaper to parse its events than to test each
                if not isinstance(chunk, dict):
                    raise UpstreamError(f"{self.provider} sent a stream event that is not a JSON object",
                                        code="upstream_bad_chunk")
                if "error" in chunk and "choices" not in chunk:
                    err = chunk["error"]
                    message = err.get("message") if isinstance(err, dict) else err
                    raise UpstreamError(f"{self.provider} stream error: {message}", code="upstream_stream_error")
                ev = sse.openai_raw(data)
                state.openai_sse.append(ev)
                try:
                    usage = chunk.get("usage")
                    if usage:
                        state.usage = Usage.from_openai(usage)
                        state.usage_reported = True
                    choices = chunk.get("choices")
                    if choices and choices[0].get("finish_reason"):
                        state.finish_reason = choices[0]["finish_reason"]
                    if to_anthropic is not None:
                        out.extend(sse.anthropic_event(n, o) for n, o in to_anthropic.feed(chunk))
                    elif choices or self._include_usage:
                        out.append(ev)
                except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:  # a chunk of the wrong shape
                    raise UpstreamError(f"{self.provider} sent a malformed stream chunk: {type(e).__name__}",
                                        code="upstream_bad_chunk") from e
            if self.completed:
                # the events that came with [DONE] go out with the terminal event, in the one write
                # that follows the ledger commit: a send less per stream
                self._tail = b"".join(out)
                return
            if out:
                yield b"".join(out)
                out = []
        # the upstream closed without [DONE]: only acceptable if it told us it finished
        self.completed = state.finish_reason is not None
        if not self.completed:
            raise UpstreamError(f"{self.provider} stream ended before completion", code="upstream_stream_truncated")

    def terminal(self) -> bytes:
        if self._to_anthropic is not None:
            return self._tail + b"".join(sse.anthropic_event(n, o) for n, o in self._to_anthropic.finish())
        return self._tail + sse.DONE

    async def aclose(self) -> None:
        if self._closer is not None:
            closer, self._closer = self._closer, None
            await closer(self.completed)


class OpenAIProvider(OpenAIFormat):
    """OpenAI or any OpenAI-compatible HTTP server, with a weighted pool of API keys."""

    def __init__(self, cfg: ProviderConfig, client: UpstreamClient, keys: list[tuple[str, int]]) -> None:
        super().__init__(cfg.name, cfg.models)
        self.cfg = cfg
        self.client = client
        self.keys = keys
        self.base_url = cfg.base_url
        self._headers = dict(cfg.headers)
        self._headers["content-type"] = "application/json"

    def __repr__(self) -> str:  # never show keys
        return f"OpenAIProvider({self.name!r}, {self.base_url!r}, keys={len(self.keys)})"

    def _pick_headers(self) -> dict[str, str]:
        h = dict(self._headers)
        secret = pick_key(self.keys)
        if secret:
            h["authorization"] = "Bearer " + secret
        return h

    async def _send(self, path: str, payload: dict[str, Any], timeout: float) -> bytes:
        return await post_json(self.client, self.name, self.base_url + path, orjson.dumps(payload),
                               self._pick_headers(), timeout)

    async def _open(self, payload: dict[str, Any], timeout: float) -> tuple[AsyncIterator[list[Event] | bytes], Any]:
        resp = await open_sse(self.client, self.name, self.base_url + "/chat/completions",
                              orjson.dumps(payload), self._pick_headers(), timeout)

        return iter_sse_regions(resp, self.name), functools.partial(finish, resp)

