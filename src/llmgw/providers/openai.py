"""OpenAI-format upstreams: OpenAI itself and any OpenAI-compatible server (vLLM, OpenRouter,
llama.cpp) by ``base_url``.

``OpenAIFormat`` holds the dialect logic (pass-through for OpenAI clients, translation for
Anthropic clients, usage capture from streams); subclasses supply the transport: HTTP here, an
in-process generator in ``demo``. Streams always ask the upstream for ``include_usage`` so the
cost is known; the usage chunk is forwarded only if the client asked for it.

Responses API clients are passed through to ``/responses`` when the upstream has it
(``native_responses``: OpenAI providers unless configured ``responses = false``), else translated
through chat (``responses.py``); legacy ``/completions`` is passed through (HTTP providers only).
Tool calls with arguments that are not JSON cannot be translated for an Anthropic client: streamed
or not, that is an error that bills the upstream's usage (``BilledUpstreamError``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..config import ProviderConfig
from ..errors import InvalidRequest, UpstreamError
from ..usage import Usage
from . import responses, sse, tokens, translate
from .base import BilledUpstreamError, Completion, ModelCatalogue, StreamState, forwarded, pick_key
from .http import finish, iter_sse_regions, loads, open_sse, post_json
from .sse import Event
from .upstream import UpstreamClient


class OpenAIFormat(ModelCatalogue):
    type = "openai"
    #: the upstream serves ``/responses`` itself (pass-through) instead of a translation through chat
    native_responses = False
    #: the upstream serves the legacy ``/completions``
    native_completions = False

    def __init__(self, name: str, models: list[str] | None = None) -> None:
        self.name = name
        self.models = list(models or [])

    # -- transport (overridden) -------------------------------------------------------------
    async def _send(self, path: str, payload: dict[str, Any], timeout: float) -> bytes:
        raise NotImplementedError

    async def _open(self, payload: dict[str, Any], timeout: float,
                    path: str = "/chat/completions") -> tuple[AsyncIterator[list[Event] | bytes], Any]:
        """Returns (iterator over batches of SSE (event, data) pairs or runs of raw SSE event
        blocks, async closer(completed) or None)."""
        raise NotImplementedError

    async def close(self) -> None:
        return None

    # -- calls ----------------------------------------------------------------------------------
    async def complete(self, inbound: str, body: dict[str, Any], model: str, timeout: float) -> Completion:
        if inbound == "responses":
            return await self._responses(body, model, timeout)
        if inbound == "completions":
            payload = self._completions_payload(body, model)
            data = await self._send("/completions", payload, timeout)
            return Completion(body=data, usage=Usage.from_openai(loads(data).get("usage")))
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
        usage = Usage.from_openai(parsed.get("usage"))
        try:
            out = translate.openai_to_anthropic_response(parsed, model=body.get("model") or model)
        except UpstreamError as e:  # the provider answered (and billed) something we cannot translate
            raise BilledUpstreamError(f"{self.name}: {e.message}", usage=usage, code=e.code) from e
        return Completion(body=orjson.dumps(out), usage=usage)

    async def _responses(self, body: dict[str, Any], model: str, timeout: float) -> Completion:
        if self.native_responses:
            payload = dict(body)
            payload["model"] = model
            data = await self._send("/responses", payload, timeout)
            parsed = loads(data)
            stored = parsed.get("id") if parsed.get("store", True) else None
            return Completion(body=data, usage=responses.usage_of(parsed.get("usage")),
                              response_id=stored if isinstance(stored, str) else None)
        chat = responses.to_chat(body, provider=self.name)
        chat.pop("stream", None)
        done = await self.complete("openai", chat, model, timeout)
        out = responses.chat_to_response(loads(done.body), body, model=body.get("model") or model)
        return Completion(body=orjson.dumps(out), usage=done.usage)

    def _completions_payload(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        if not self.native_completions:
            raise InvalidRequest(f"provider {self.name} has no legacy completions endpoint; use /v1/chat/completions",
                                 param="model", code="unsupported_endpoint")
        payload = dict(body)
        payload["model"] = model
        return payload

    async def open_stream(self, inbound: str, body: dict[str, Any], model: str, timeout: float,
                          state: StreamState) -> OpenAIStream | ResponsesPassThrough:
        path = "/chat/completions"
        req: dict[str, Any] | None = None
        if inbound == "responses" and self.native_responses:
            payload = dict(body)
            payload["model"] = model
            chunks, closer = await self._open(payload, timeout, "/responses")
            return ResponsesPassThrough(self.name, chunks, closer, state)
        if inbound == "responses":
            req = body
            payload = responses.to_chat(body, provider=self.name)
            payload["model"] = model
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
            include_usage = False
        elif inbound == "completions":
            payload = self._completions_payload(body, model)
            client_opts = body.get("stream_options") or {}
            include_usage = bool(client_opts.get("include_usage"))
            payload["stream_options"] = {**client_opts, "include_usage": True}
            path, inbound = "/completions", "openai"
        elif inbound == "openai":
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
        chunks, closer = await self._open(payload, timeout, path)
        return OpenAIStream(self.name, inbound, chunks, closer, state, include_usage,
                            client_model=body.get("model") or model, req=req)

    async def count_tokens(self, body: dict[str, Any], model: str, timeout: float) -> int:
        """Input tokens of an Anthropic Messages request, from the model's tokeniser (no upstream call)."""
        text_only = {k: v for k, v in body.items() if k not in ("thinking", "output_config", "output_format")}
        chat = translate.anthropic_request_to_openai(text_only, model=model)  # those settings add no input
        return await self._count_chat(chat, model)

    async def count_response_tokens(self, body: dict[str, Any], model: str, timeout: float) -> int:
        """Input tokens of a Responses API request: the upstream's own count when it has the Responses
        API, else the model's tokeniser on the equivalent chat request."""
        if self.native_responses:
            payload = dict(body)
            payload["model"] = model
            parsed = loads(await self._send("/responses/input_tokens", payload, timeout))
            n = parsed.get("input_tokens") if isinstance(parsed, dict) else None
            if not isinstance(n, int):
                raise UpstreamError(f"{self.name} answered input_tokens without a count", code="upstream_bad_answer")
            return n
        return await self._count_chat(responses.to_chat(body, provider=self.name), model)

    async def _count_chat(self, chat: dict[str, Any], model: str) -> int:
        return await tokens.count(model, chat, self.name)

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
                 state: StreamState, include_usage: bool, client_model: str,
                 req: dict[str, Any] | None = None) -> None:
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
        self._to_responses = responses.ChatStreamToResponses(req or {}, client_model) if inbound == "responses" else None
        self.answer: bytes | None = None  # a Responses stream's final response object (for the cache)

    async def events(self) -> AsyncIterator[bytes]:
        """One bytes blob per upstream batch: a burst of upstream events becomes one client write."""
        state = self.state
        to_anthropic = self._to_anthropic
        to_responses = self._to_responses
        out: list[bytes] = []
        async for batch in self._chunks:
            if isinstance(batch, bytes):  # a run of raw SSE events from the network
                if to_anthropic is None and to_responses is None and not _needs_parsing(batch) and _well_formed(batch):
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
                    elif to_responses is not None:
                        out.append(responses.encode(to_responses.feed(chunk)))
                    elif choices or self._include_usage:
                        out.append(ev)
                except (AttributeError, TypeError, KeyError, IndexError, ValueError) as e:  # a chunk of the wrong shape
                    raise UpstreamError(f"{self.provider} sent a malformed stream chunk: {type(e).__name__}",
                                        code="upstream_bad_chunk") from e
            if self.completed:
                self._check_complete()
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
        self._check_complete()
        self._tail = b"".join(out)

    def _check_complete(self) -> None:
        """At the end of the upstream stream, before the ledger row: refuse tool calls whose arguments
        are not a JSON object (as the non-streamed answer does; the usage is billed either way), and
        close a Responses stream so its final response object is known."""
        if self._to_anthropic is not None:
            bad = self._to_anthropic.bad_arguments()
            if bad is not None:
                raise UpstreamError(f"{self.provider}: upstream returned tool call arguments that are not a JSON "
                                    f"object (tool {bad!r})", code="upstream_bad_tool_arguments",
                                    headers={"x-should-retry": "false"})
        if self._to_responses is not None:
            self._responses_tail = responses.encode(self._to_responses.finish())
            self.answer = orjson.dumps(self._to_responses.response)

    _responses_tail = b""

    def error_event(self, err: Any) -> bytes | None:
        """A Responses stream's own ``response.failed`` (None: the dialect's usual error event)."""
        return self._to_responses.failed(err.code, err.message) if self._to_responses is not None else None

    def terminal(self) -> bytes:
        if self._to_anthropic is not None:
            return self._tail + b"".join(sse.anthropic_event(n, o) for n, o in self._to_anthropic.finish())
        if self._to_responses is not None:
            return self._tail + self._responses_tail
        return self._tail + sse.DONE

    async def aclose(self) -> None:
        if self._closer is not None:
            closer, self._closer = self._closer, None
            await closer(self.completed)


class ResponsesPassThrough:
    """Relays an OpenAI upstream's own Responses stream, reading usage (and the response id, for
    follow-ups) from its lifecycle events. The upstream's ``response.completed`` (or
    ``response.incomplete``) is held back as the terminal event; ``response.failed`` and ``error``
    events end the stream as an upstream error."""

    def __init__(self, provider: str, chunks: AsyncIterator[list[Event] | bytes], closer: Any,
                 state: StreamState) -> None:
        self.provider = provider
        self._chunks = chunks
        self._closer = closer
        self.state = state
        self.response_id: str | None = None  # the id the upstream stores the response under
        self._created: str | None = None  # the id of the response this stream created
        self._seq = 0  # the next sequence number
        self.completed = False
        self._terminal = b""
        self.answer: bytes | None = None

    async def events(self) -> AsyncIterator[bytes]:
        state = self.state
        async for batch in self._chunks:
            out: list[bytes] = []
            for name, data in (sse.split_events(batch) if isinstance(batch, bytes) else batch):
                ev = loads(data)
                etype = ev.get("type") if isinstance(ev, dict) else None
                raw = sse.anthropic_raw(name or str(etype or "message").encode(), data)
                seq = ev.get("sequence_number") if isinstance(ev, dict) else None
                if isinstance(seq, int):
                    self._seq = seq + 1
                if etype == "response.output_text.delta":
                    state.add_text(ev.get("delta"))
                elif etype == "response.created":
                    resp = ev.get("response") or {}
                    if isinstance(resp.get("id"), str):
                        self._created = resp["id"]
                        if resp.get("store", True):
                            self.response_id = resp["id"]
                elif etype in ("response.completed", "response.incomplete", "response.failed", "error"):
                    resp = ev.get("response") or {}
                    if resp.get("usage"):
                        state.usage = responses.usage_of(resp["usage"])
                        state.usage_reported = True
                    if etype in ("response.failed", "error"):
                        err = resp.get("error") or ev
                        raise UpstreamError(f"{self.provider} stream error: {err.get('message', err)}",
                                            code="upstream_stream_error")
                    calls = any(i.get("type") == "function_call" for i in resp.get("output") or [])
                    state.finish_reason = "length" if etype == "response.incomplete" else (
                        "tool_calls" if calls else "stop")
                    self.answer = orjson.dumps(resp)
                    self._terminal = raw
                    self.completed = True
                    break
                out.append(raw)
            if out:
                yield b"".join(out)
            if self.completed:
                return
        raise UpstreamError(f"{self.provider} stream ended before response.completed",
                            code="upstream_stream_truncated")

    def terminal(self) -> bytes:
        return self._terminal

    def error_event(self, err: Any) -> bytes:
        """``response.failed`` for the response this stream created, with the next sequence number."""
        return responses.error_event(err.code, err.message, self._created, self._seq)

    async def aclose(self) -> None:
        if self._closer is not None:
            closer, self._closer = self._closer, None
            await closer(self.completed)


class OpenAIProvider(OpenAIFormat):
    """OpenAI or any OpenAI-compatible HTTP server, with a weighted pool of API keys."""

    native_completions = True

    def __init__(self, cfg: ProviderConfig, client: UpstreamClient, keys: list[tuple[str, int]]) -> None:
        super().__init__(cfg.name, cfg.models)
        self.native_responses = cfg.responses
        self.cfg = cfg
        self.client = client
        self.keys = keys
        self.base_url = cfg.base_url
        self._headers = {k.lower(): v for k, v in cfg.headers.items()}  # one spelling: no duplicates
        self._headers["content-type"] = "application/json"

    def __repr__(self) -> str:  # never show keys
        return f"OpenAIProvider({self.name!r}, {self.base_url!r}, keys={len(self.keys)})"

    def _pick_headers(self) -> dict[str, str]:
        h = dict(self._headers)
        secret = pick_key(self.keys)
        if secret:
            h["authorization"] = "Bearer " + secret
        return forwarded(h, "openai")

    async def _send(self, path: str, payload: dict[str, Any], timeout: float) -> bytes:
        return await post_json(self.client, self.name, self.base_url + path, orjson.dumps(payload),
                               self._pick_headers(), timeout)

    async def stored(self, method: str, path: str, timeout: float) -> bytes:
        """A stored response's resource (``GET``/``DELETE /responses/{id}[/input_items]``), as the upstream answered."""
        h = {k: v for k, v in self._pick_headers().items() if k != "content-type"}
        return await post_json(self.client, self.name, self.base_url + path, b"", h, timeout, method=method)

    async def list_models(self, timeout: float) -> list[str] | None:
        """The model ids the upstream's ``GET /models`` lists (None: no key to ask with)."""
        if not self.keys:
            return None
        h = {k: v for k, v in self._pick_headers().items() if k != "content-type"}
        data = loads(await post_json(self.client, self.name, self.base_url + "/models", b"", h, timeout, method="GET"))
        return [m["id"] for m in (data.get("data") or []) if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def _open(self, payload: dict[str, Any], timeout: float,
                    path: str = "/chat/completions") -> tuple[AsyncIterator[list[Event] | bytes], Any]:
        resp = await open_sse(self.client, self.name, self.base_url + path,
                              orjson.dumps(payload), self._pick_headers(), timeout)

        return iter_sse_regions(resp, self.name), functools.partial(finish, resp)

