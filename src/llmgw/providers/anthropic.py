"""Anthropic Messages upstream: native pass-through for Anthropic clients (``/v1/messages``),
translation for OpenAI clients (``/v1/chat/completions``).

``base_url`` has the official SDK's meaning: requests go to ``base_url + "/v1/messages"``.
Anthropic requires ``max_tokens``; the configured default is supplied when the client gave none.
Responses API clients are translated through chat (``responses.py``); ``count_tokens`` and the
models listing are Anthropic's own endpoints. A client's ``anthropic-beta`` and
``anthropic-version`` headers are forwarded (``base.forwarded``).
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..config import ProviderConfig
from ..errors import InvalidRequest, UpstreamError
from ..usage import Usage
from . import responses, sse, translate
from .base import Completion, ModelCatalogue, StreamState, forwarded, pick_key
from .http import finish, iter_sse, loads, open_sse, post_json
from .upstream import UpstreamClient, UpstreamResponse

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(ModelCatalogue):
    type = "anthropic"

    def __init__(self, cfg: ProviderConfig, client: UpstreamClient, keys: list[tuple[str, int]],
                 default_max_tokens: int) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.models = list(cfg.models)
        self.client = client
        self.keys = keys
        self.url = cfg.base_url + "/v1/messages"
        self.count_url = cfg.base_url + "/v1/messages/count_tokens"
        self.models_url = cfg.base_url + "/v1/models?limit=1000"
        self.default_max_tokens = default_max_tokens
        self._headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        self._headers.update({k.lower(): v for k, v in cfg.headers.items()})  # one spelling: no duplicates

    def __repr__(self) -> str:  # never show keys
        return f"AnthropicProvider({self.name!r}, {self.url!r}, keys={len(self.keys)})"

    async def close(self) -> None:
        return None

    def _pick_headers(self) -> dict[str, str]:
        h = dict(self._headers)
        secret = pick_key(self.keys)
        if secret:
            h["x-api-key"] = secret
        return forwarded(h, "anthropic")

    def _no_completions(self) -> InvalidRequest:
        return InvalidRequest(f"provider {self.name} (Anthropic) has no legacy completions endpoint; use "
                              "/v1/messages or /v1/chat/completions", param="model", code="unsupported_endpoint")

    def _payload(self, inbound: str, body: dict[str, Any], model: str) -> dict[str, Any]:
        if inbound == "anthropic":
            payload = dict(body)
            payload["model"] = model
            if payload.get("max_tokens") is None:
                payload["max_tokens"] = self.default_max_tokens
            return payload
        return translate.openai_to_anthropic_request(body, model=model, default_max_tokens=self.default_max_tokens)

    async def complete(self, inbound: str, body: dict[str, Any], model: str, timeout: float) -> Completion:
        if inbound == "responses":
            chat = responses.to_chat(body, provider=self.name)
            chat.pop("stream", None)
            done = await self.complete("openai", chat, model, timeout)
            out = responses.chat_to_response(loads(done.body), body, model=body.get("model") or model)
            return Completion(body=orjson.dumps(out), usage=done.usage)
        if inbound == "completions":
            raise self._no_completions()
        payload = self._payload(inbound, body, model)
        payload.pop("stream", None)
        data = await post_json(self.client, self.name, self.url, orjson.dumps(payload), self._pick_headers(), timeout)
        parsed = loads(data)
        usage = Usage.from_anthropic(parsed.get("usage"))
        if inbound == "anthropic":
            return Completion(body=data, usage=usage)
        out = translate.anthropic_to_openai_response(parsed, model=body.get("model") or model)
        return Completion(body=orjson.dumps(out), usage=usage)

    async def open_stream(self, inbound: str, body: dict[str, Any], model: str, timeout: float,
                          state: StreamState) -> AnthropicStream:
        req: dict[str, Any] | None = None
        if inbound == "responses":
            req = body
            payload = self._payload("openai", responses.to_chat(body, provider=self.name), model)
            include_usage = True
        elif inbound == "completions":
            raise self._no_completions()
        else:
            payload = self._payload(inbound, body, model)
            include_usage = bool((body.get("stream_options") or {}).get("include_usage")) if inbound == "openai" else False
        payload["stream"] = True
        payload.pop("stream_options", None)
        resp = await open_sse(self.client, self.name, self.url, orjson.dumps(payload), self._pick_headers(), timeout)
        return AnthropicStream(self.name, inbound, resp, state, include_usage, body.get("model") or model, req)

    async def count_response_tokens(self, body: dict[str, Any], model: str, timeout: float) -> int:
        """Input tokens of a Responses API request, counted by Anthropic on its translation."""
        chat = responses.to_chat(body, provider=self.name)
        return await self.count_tokens(self._payload("openai", chat, model), model, timeout)

    async def list_models(self, timeout: float) -> list[str] | None:
        """The model ids Anthropic's ``GET /v1/models`` lists (None: no key to ask with)."""
        if not self.keys:
            return None
        h = {k: v for k, v in self._pick_headers().items() if k != "content-type"}
        data = loads(await post_json(self.client, self.name, self.models_url, b"", h, timeout, method="GET"))
        return [m["id"] for m in (data.get("data") or []) if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def count_tokens(self, body: dict[str, Any], model: str, timeout: float) -> int:
        """Anthropic's own count (``/v1/messages/count_tokens``) of an Anthropic Messages request."""
        payload = dict(body)
        payload["model"] = model
        for k in ("max_tokens", "stream", "stream_options", "temperature", "top_p", "top_k", "stop_sequences",
                  "metadata", "service_tier"):
            payload.pop(k, None)  # not parameters of count_tokens (it refuses unknown fields)
        data = await post_json(self.client, self.name, self.count_url, orjson.dumps(payload), self._pick_headers(),
                               timeout)
        parsed = loads(data)
        n = parsed.get("input_tokens") if isinstance(parsed, dict) else None
        if not isinstance(n, int):
            raise UpstreamError(f"{self.name} answered count_tokens without input_tokens", code="upstream_bad_answer")
        return n

    async def embeddings(self, body: dict[str, Any], model: str, timeout: float) -> Completion:
        raise InvalidRequest(f"provider {self.name} (Anthropic) has no embeddings endpoint", param="model")


class AnthropicStream:
    def __init__(self, provider: str, inbound: str, resp: UpstreamResponse, state: StreamState,
                 include_usage: bool, client_model: str, req: dict[str, Any] | None = None) -> None:
        self.provider = provider
        self.inbound = inbound
        self._resp = resp
        self.state = state
        self.completed = False
        self._terminal = b""
        self._to_openai = (
            translate.AnthropicStreamToOpenAI(client_model, "chatcmpl-" + format(random.getrandbits(96), "x"),
                                              int(time.time()), include_usage)
            if inbound in ("openai", "responses") else None
        )
        self._to_responses = (responses.ChatStreamToResponses(req or {}, client_model)
                              if inbound == "responses" else None)
        self.answer: bytes | None = None  # a Responses stream's final response object (for the cache)

    async def events(self) -> AsyncIterator[bytes]:
        """One bytes blob per upstream batch: a burst of upstream events becomes one client write."""
        state = self.state
        to_openai = self._to_openai
        to_responses = self._to_responses
        out: list[bytes] = []
        async for batch in iter_sse(self._resp, self.provider):
            for name, data in batch:
                ev = loads(data)
                etype = ev.get("type") if isinstance(ev, dict) else None
                if etype == "content_block_delta":
                    d = ev.get("delta") or {}
                    if d.get("type") == "text_delta":
                        state.add_text(d.get("text"))
                elif etype == "message_start":
                    # exact input counts; output is final only in message_delta
                    state.usage.merge_max(Usage.from_anthropic((ev.get("message") or {}).get("usage")))
                elif etype == "message_delta":
                    u = ev.get("usage")
                    if u:  # cumulative counts; lately input counts too
                        state.usage.merge_max(Usage.from_anthropic(u))
                        state.usage.completion_tokens = int(u.get("output_tokens") or state.usage.completion_tokens)
                        state.usage_reported = True
                    stop = (ev.get("delta") or {}).get("stop_reason")
                    if stop:
                        state.finish_reason = stop
                elif etype == "error":
                    err = ev.get("error") or {}
                    raise UpstreamError(f"{self.provider} stream error: {err.get('message', err)}",
                                        code="upstream_stream_error")
                if to_responses is not None and to_openai is not None:
                    chunks = to_openai.feed(ev)
                    out.extend(responses.encode(to_responses.feed(c)) for c in chunks)
                    if etype == "message_stop":
                        self._terminal = responses.encode(to_responses.finish())
                        self.answer = orjson.dumps(to_responses.response)
                elif to_openai is not None:
                    out.extend(sse.openai_event(c) for c in to_openai.feed(ev))
                elif etype == "message_stop":
                    self._terminal = sse.anthropic_raw(name or b"message_stop", data)
                else:
                    out.append(sse.anthropic_raw(name or (etype or "message").encode(), data))
                if etype == "message_stop":
                    self.completed = True
                    break
            if out:
                yield b"".join(out)
                out = []
            if self.completed:
                return
        raise UpstreamError(f"{self.provider} stream ended before message_stop", code="upstream_stream_truncated")

    def error_event(self, err: Any) -> bytes | None:
        """A Responses stream's own ``response.failed`` (None: the dialect's usual error event)."""
        return self._to_responses.failed(err.code, err.message) if self._to_responses is not None else None

    def terminal(self) -> bytes:
        if self._to_responses is not None:
            return self._terminal
        return sse.DONE if self._to_openai is not None else self._terminal

    async def aclose(self) -> None:
        await finish(self._resp, self.completed)
