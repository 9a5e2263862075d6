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

import asyncio
from collections.abc import Mapping

import orjson
from aiohttp import web

from .. import redact
from ..errors import BodyTimeout, BodyTooLarge, LlmgwError
from ..providers import responses

JSON = {"Content-Type": "application/json"}
_SSE = {"content-type": "text/event-stream", "cache-control": "no-cache"}


async def read_body(request: web.Request, max_body: int, timeout: float | None = None) -> bytes:
    """The request body, or a typed 413 when it is over ``max_body`` bytes (declared or not), or a
    typed 408 when it has not all arrived within ``timeout`` seconds (a client trickling a body
    cannot hold a connection)."""
    if request.content_length is not None and request.content_length > max_body:
        raise BodyTooLarge(f"request body of {request.content_length} bytes exceeds the limit of {max_body} bytes")
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise BodyTooLarge(f"request body exceeds the limit of {max_body} bytes") from e
    except TimeoutError as e:
        raise BodyTimeout(f"request body: not received within {timeout:g} s (server.body_timeout)") from e


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


def error_body(err: LlmgwError, inbound: str) -> bytes:
    """The JSON body of ``err`` for a client of the ``inbound`` dialect, every configured secret
    redacted: an upstream's own error body when it speaks that dialect, else the dialect's envelope."""
    dialect = "openai" if inbound in ("responses", "completions") else inbound  # OpenAI's error envelope too
    if err.upstream_body is not None and err.upstream_dialect == dialect:
        return redact.data(err.upstream_body)
    body = orjson.dumps(err.anthropic_body() if inbound == "anthropic" else err.openai_body())
    return redact.data(body)


def error_response(err: LlmgwError, inbound: str, request_id: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    """``err`` as a JSON answer (``error_body``); ``headers`` go out too unless ``err`` sets the same ones."""
    resp = web.Response(body=error_body(err, inbound), status=err.status, content_type="application/json",
                        headers=id_headers(request_id, inbound, headers or {}, err.headers))
    if err.close_connection:
        resp.force_close()
    return resp


async def send_and_close(request: web.Request, resp: web.Response) -> web.Response:
    """Send ``resp`` now and close the connection once it is out, instead of aiohttp's lingering
    read of a body the handler did not read (up to 10 s of a client's trickle)."""
    try:
        await resp.prepare(request)
        await resp.write_eof()
    except OSError:
        pass
    finally:
        if request.transport is not None:
            request.transport.close()  # an asyncio transport sends what it holds, then closes
    return resp


def error_event(err: LlmgwError, inbound: str) -> bytes:
    """``err`` as the last SSE event of a stream that has begun."""
    data = error_body(err, inbound)
    if b"\n" in data or b"\r" in data:  # a pretty-printed upstream body: one SSE data line holds no line break
        data = orjson.dumps(orjson.loads(data))
    if inbound == "anthropic":
        return b"event: error\ndata: " + data + b"\n\n"
    if inbound == "responses":
        return responses.error_event(err.code, err.message)
    return b"data: " + data + b"\n\n"


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
