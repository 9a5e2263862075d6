"""The HTTP edge shared by the gateway routes and the other handlers: request bodies, bearer
tokens, request-id headers, error envelopes and SSE responses.

Invariants:
- Every answer carries ``x-request-id``; in the Anthropic dialect also ``request-id`` (the name the
  Anthropic SDK reads). ``id_headers`` is the one place that builds them.
- An error leaves as the dialect's envelope (``LlmgwError.openai_body`` / ``anthropic_body``), as a
  JSON response or, once a stream has begun, as its last SSE event.
- Imports nothing from ``gateway`` (the gateway imports this module), so the dependency runs one way.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

from ..errors import BodyTooLarge, LlmgwError
from ..providers import responses, sse

JSON = {"Content-Type": "application/json"}
_SSE = {"content-type": "text/event-stream", "cache-control": "no-cache"}


async def read_body(request: web.Request, max_body: int) -> bytes:
    """The request body, or a typed 413 when it is over ``max_body`` bytes (declared or not)."""
    if request.content_length is not None and request.content_length > max_body:
        raise BodyTooLarge(f"request body of {request.content_length} bytes exceeds the limit of {max_body} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise BodyTooLarge(f"request body exceeds the limit of {max_body} bytes") from e


def bearer(request: web.Request) -> str | None:
    """The API key from ``Authorization: Bearer <key>`` or else ``x-api-key`` (None: neither)."""
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.headers.get("x-api-key") or None


def id_headers(request_id: str, inbound: str, *more: Mapping[str, str]) -> dict[str, str]:
    """The request-id headers of the ``inbound`` dialect, then ``more`` headers (later ones win)."""
    headers = {"x-request-id": request_id}
    if inbound == "anthropic":
        headers["request-id"] = request_id
    for m in more:
        headers.update(m)
    return headers


def error_response(err: LlmgwError, inbound: str, request_id: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    """``err`` as the dialect's JSON envelope; ``headers`` go out too unless ``err`` sets the same ones."""
    body = err.anthropic_body() if inbound == "anthropic" else err.openai_body()
    return web.Response(body=orjson.dumps(body), status=err.status, content_type="application/json",
                        headers=id_headers(request_id, inbound, headers or {}, err.headers))


def error_event(err: LlmgwError, inbound: str) -> bytes:
    """``err`` as the last SSE event of a stream that has begun."""
    if inbound == "anthropic":
        return sse.anthropic_event("error", err.anthropic_body())
    if inbound == "responses":
        return responses.error_event(err.code, err.message)
    return sse.openai_event(err.openai_body())


class SSEResponse(web.StreamResponse):
    """An SSE response whose headers go out with the first event instead of in a write of their
    own (aiohttp's ``Response`` does the same): one syscall less per stream."""

    _send_headers_immediately = False

    def __init__(self, request_id: str, inbound: str, headers: Mapping[str, str]) -> None:
        super().__init__(headers=id_headers(request_id, inbound, _SSE, headers))


async def write_eof_quietly(resp: web.StreamResponse, data: bytes) -> None:
    """The last bytes and the end of the body in one write; a client that hung up is no error."""
    try:
        await resp.write_eof(data)
    except OSError:
        pass
