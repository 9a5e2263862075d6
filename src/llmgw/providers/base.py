"""The provider contract and the per-call state that flows through a provider.

A provider speaks one upstream wire format (OpenAI chat completions or Anthropic messages) and
answers in the *client's* format: an adapter translates when the two differ. Routing, retries and
fallbacks live in ``router``; a provider makes exactly one upstream attempt per call.

Errors an attempt can raise:
- ``AttemptFailed`` (retryable: connect error, timeout, 408/409/429/5xx; carries Retry-After);
- an ``LlmgwError`` (not retryable: the upstream rejected the request itself, e.g. 400 or 404).
"""

from __future__ import annotations

import fnmatch
import random
from collections.abc import AsyncIterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ..errors import LlmgwError, UpstreamError
from ..usage import Usage
from .sse import split_events

#: the client headers of the request being served that go on to its provider (``[server]
#: forward_headers``), set by the gateway per request; providers add them in their own dialect
FORWARDED: ContextVar[Mapping[str, str] | None] = ContextVar("llmgw_forwarded_headers", default=None)


def forwarded(h: dict[str, str], ptype: str) -> dict[str, str]:
    """``h`` plus the forwarded client headers meant for a provider of type ``ptype``: ``anthropic-*``
    ones only for Anthropic, ``openai-*`` ones only for OpenAI-format providers. A client's
    ``anthropic-beta`` is added to a configured one; other client headers replace configured ones."""
    fwd = FORWARDED.get()
    if not fwd:
        return h
    skip = "openai-" if ptype == "anthropic" else "anthropic-"
    for k, v in fwd.items():
        if k.startswith(skip):
            continue
        if k == "anthropic-beta" and h.get(k):
            h[k] = f"{h[k]},{v}"
        else:
            h[k] = v
    return h


RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})


class AttemptFailed(Exception):
    """One upstream attempt failed in a way worth retrying (or falling back from)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 timeout: bool = False, error: LlmgwError | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.timeout = timeout
        self.error = error


class BilledUpstreamError(UpstreamError):
    """The upstream answered, and billed, something the gateway cannot pass on (e.g. tool call
    arguments that are not JSON): the row bills ``usage``, and the client is told not to retry
    (a retry would be billed again)."""

    def __init__(self, message: str, *, usage: Usage, code: str | None = None) -> None:
        super().__init__(message, code=code or "upstream_bad_answer", headers={"x-should-retry": "false"})
        self.usage = usage


@dataclass(slots=True)
class StreamState:
    """What a stream has produced so far; read by the gateway for billing and the ledger.

    The generated text is only needed when the provider never reports usage (an estimate) or
    when bodies are logged, so it is assembled lazily: OpenAI-format events are kept as the raw
    SSE text they came in (``openai_sse``, runs of ``data: ...`` blocks each ending with a blank
    line) and parsed only if ``text`` is asked for.
    """

    usage: Usage = field(default_factory=Usage)
    usage_reported: bool = False
    finish_reason: str | None = None
    text_parts: list[str] = field(default_factory=list)
    openai_sse: list[bytes] = field(default_factory=list)

    def add_text(self, s: str | None) -> None:
        if s:
            self.text_parts.append(s)

    @property
    def text(self) -> str:
        if self.openai_sse:
            return openai_sse_text(b"".join(self.openai_sse))
        return "".join(self.text_parts)


def openai_sse_text(raw: bytes) -> str:
    """The text of the first choice of a run of OpenAI-format SSE events (``StreamState.text``;
    the cache process calls it for a streamed answer it stores, off the daemon's loop)."""
    parts = []
    for _, data in split_events(raw):
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        for choice in (chunk.get("choices") or [])[:1] if isinstance(chunk, dict) else []:
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str):
                parts.append(content)
    return "".join(parts)


@dataclass(slots=True)
class Completion:
    """A non-streamed answer, already in the client's format."""

    body: bytes
    usage: Usage
    status: int = 200
    response_id: str | None = None  # a Responses API answer stored at the provider under this id


class OpenStream(Protocol):
    """An upstream stream whose response headers were 200: from here on there are no retries."""

    state: StreamState

    def events(self) -> AsyncIterator[bytes]:
        """SSE-encoded events in the client's format, excluding the terminal event."""
        ...

    def terminal(self) -> bytes:
        """The final event(s) (``data: [DONE]`` or ``message_stop``), sent after the ledger commit."""
        ...

    async def aclose(self) -> None: ...


class ModelCatalogue:
    """``models`` from the provider's config: names or globs it serves (empty: any model)."""

    models: list[str]

    def serves(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, m) for m in self.models)

    def listed_models(self) -> list[str]:
        return [m for m in self.models if not any(c in m for c in "*?[")]


def pick_key(keys: list[tuple[str, int]]) -> str | None:
    """One secret from a weighted key pool (None: no key configured)."""
    if not keys:
        return None
    if len(keys) == 1:
        return keys[0][0]
    return random.choices([k for k, _ in keys], weights=[w for _, w in keys])[0]


@dataclass(slots=True)
class Target:
    provider: Provider
    model: str  # the upstream model name

    @property
    def qualified(self) -> str:
        return f"{self.provider.name}/{self.model}"


class Provider(Protocol):
    name: str
    type: str

    async def complete(self, inbound: str, body: dict[str, Any], model: str, timeout: float) -> Completion: ...

    async def open_stream(self, inbound: str, body: dict[str, Any], model: str, timeout: float,
                          state: StreamState) -> OpenStream: ...

    async def embeddings(self, body: dict[str, Any], model: str, timeout: float) -> Completion: ...

    async def count_tokens(self, body: dict[str, Any], model: str, timeout: float) -> int: ...

    async def count_response_tokens(self, body: dict[str, Any], model: str, timeout: float) -> int: ...

    def serves(self, model: str) -> bool: ...

    def listed_models(self) -> list[str]: ...

    async def list_models(self, timeout: float) -> list[str] | None: ...

    async def close(self) -> None: ...
