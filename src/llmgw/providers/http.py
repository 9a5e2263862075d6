"""HTTP plumbing shared by the upstream adapters: one attempt, typed failures, SSE parsing.

Maps every upstream outcome to either a retryable ``AttemptFailed`` or a non-retryable
``LlmgwError`` so the router never looks at raw statuses. Provider secrets are only ever placed in
request headers here; they are never part of an exception message.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..errors import LlmgwError, ModelNotFound, UpstreamError, UpstreamRejected
from .base import RETRYABLE_STATUS, AttemptFailed
from .sse import Event, split_events
from .upstream import UpstreamClient, UpstreamResponse


def parse_retry_after(headers: Any) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(ra)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def _upstream_message(data: bytes) -> tuple[str, str | None, str | None, str | None]:
    """(message, type, code, dialect) from an upstream error body, best effort. ``dialect`` is
    "anthropic" for ``{"type": "error", "error": {...}}``, "openai" for ``{"error": {...}}`` and
    None for anything else (plain text, HTML from a proxy, vLLM's flat ``{"message": ...}``)."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        text = data[:300].decode("utf-8", "replace").strip()
        return text or "no error body", None, None, None
    if not isinstance(body, dict):
        return str(body)[:300], None, None, None
    err = body.get("error")
    if isinstance(err, dict):
        dialect = "anthropic" if body.get("type") == "error" else "openai"
        etype, code = err.get("type"), err.get("code")
        return (str(err.get("message") or err), etype if isinstance(etype, str) else None,
                code if isinstance(code, str) else None, dialect)
    if isinstance(err, str):
        return err, None, None, None
    message = body.get("message")
    if isinstance(message, str) and message:
        return message, None, None, None
    return str(body)[:300], None, None, None


#: retryable statuses that, once they outlast the gateway's retries, go to the client as the
#: provider's own typed answer (rate limited, overloaded) rather than as a 502
PASSED_THROUGH = frozenset({429, 529})


def failure_for(provider: str, status: int, data: bytes, headers: Any) -> Exception:
    """The exception for a non-2xx upstream answer (returned, not raised).

    A 4xx about the request reaches the client as the provider wrote it: its status, type and code,
    its message without any prefix and, to a client of the provider's dialect, its very body (every
    configured secret redacted on the way out). A retryable failure's message names the provider
    and the status (``openai answered 503: ...``) for the log and the gateway's own 502."""
    message, etype, code, dialect = _upstream_message(data)
    text = f"{provider} answered {status}: {message}"
    if status in RETRYABLE_STATUS:
        err: LlmgwError
        if status in PASSED_THROUGH:
            err = UpstreamRejected(message, status=status, type=etype, code=code or f"upstream_{status}",
                                   upstream_body=data if dialect else None, upstream_dialect=dialect)
        else:
            err = UpstreamError(text, code=f"upstream_{status}")
        return AttemptFailed(text, status=status, retry_after=parse_retry_after(headers), error=err)
    if status in (401, 403):
        # The gateway's provider key was refused: not the client's fault, and another key or
        # provider in the chain may work.
        err = UpstreamError(f"{provider} refused the gateway's provider credentials ({status}): {message}",
                            code="upstream_auth_failed")
        return AttemptFailed(err.message, status=status, error=err)
    if status == 404 and ("model" in message.lower() or code == "model_not_found" or etype == "not_found_error"):
        nf = ModelNotFound(message)
        nf.upstream_body, nf.upstream_dialect = (data, dialect) if dialect else (None, None)
        return nf
    return UpstreamRejected(message, status=status, type=etype if status < 500 else None, code=code,
                            upstream_body=data if dialect else None, upstream_dialect=dialect)


async def post_json(client: UpstreamClient, provider: str, url: str, payload: bytes,
                    headers: dict[str, str], timeout: float, *, method: str = "POST") -> bytes:
    """One non-streaming attempt within ``timeout`` seconds; returns the 2xx body bytes."""
    try:
        r = await client.post(url, payload, headers, timeout=timeout, method=method)
        data = await r.read()
    except TimeoutError as e:
        raise AttemptFailed(f"{provider} did not answer within {timeout:g}s", timeout=True) from e
    except OSError as e:
        raise AttemptFailed(f"{provider} connection failed: {e}") from e
    if r.status >= 300:
        raise failure_for(provider, r.status, data, r.headers)
    return data


async def open_sse(client: UpstreamClient, provider: str, url: str, payload: bytes,
                   headers: dict[str, str], timeout: float) -> UpstreamResponse:
    """Start a streaming attempt; returns the response once its status is 2xx and its first event
    is in (``UpstreamResponse.started``): until then nothing has reached the client, so a stall or
    a break before the first event is a failed attempt the router retries. ``timeout`` bounds the
    wait for the headers, then the wait for the first event, then each wait for the next bytes."""
    try:
        r = await client.post(url, payload, headers, read_timeout=timeout)
    except TimeoutError as e:
        raise AttemptFailed(f"{provider} did not answer within {timeout:g}s", timeout=True) from e
    except OSError as e:
        raise AttemptFailed(f"{provider} connection failed: {e}") from e
    if r.status >= 300:
        try:
            data = await r.read()  # releases the connection, or closes it if the read fails
        except (OSError, TimeoutError):
            data = b""
        raise failure_for(provider, r.status, data, r.headers)
    try:
        await r.started(within=timeout)
    except TimeoutError as e:
        raise AttemptFailed(f"{provider} sent no stream event within {timeout:g}s", timeout=True) from e
    except OSError as e:
        raise AttemptFailed(f"{provider} stream broke before its first event: {e}") from e
    return r


async def iter_sse_regions(resp: UpstreamResponse, provider: str) -> AsyncIterator[bytes]:
    """Yield, per network read, the run of complete SSE event blocks it completed: the exact
    bytes (line ends normalised to ``\n``), ending with a blank line. A caller that needs no
    event of a run can relay it as it came; ``sse.split_events`` takes it apart otherwise.
    Raises UpstreamError if the stream breaks or stalls."""
    buf = b""
    try:
        while (chunk := await resp.next_chunk()) is not None:
            buf += chunk
            if b"\r" in buf:
                held = buf.endswith(b"\r")  # maybe the first half of a \r\n split across reads
                buf = (buf[:-1] if held else buf).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                if held:
                    buf += b"\r"
            cut = buf.rfind(b"\n\n")
            if cut < 0:
                continue
            region, buf = buf[: cut + 2], buf[cut + 2 :]
            yield region
        tail = buf.rstrip(b"\r\n")
        if tail:  # the last event without its blank line
            yield tail.replace(b"\r", b"\n") + b"\n\n"
    except TimeoutError as e:
        raise UpstreamError(f"{provider} stream stalled (no data within the read timeout)",
                            code="upstream_stream_timeout") from e
    except OSError as e:
        raise UpstreamError(f"{provider} stream broke: {e}", code="upstream_stream_broken") from e


async def iter_sse(resp: UpstreamResponse, provider: str) -> AsyncIterator[list[Event]]:
    """Yield, per network read, the list of complete SSE events as (event name, data).

    Batching per read (rather than per line or per event) lets the caller translate and write a
    whole burst of events at once: one write to the client for many upstream events.
    """
    async for region in iter_sse_regions(resp, provider):
        events = split_events(region)
        if events:
            yield events


async def finish(resp: UpstreamResponse, completed: bool) -> None:
    """End an upstream stream. A completed one is read to its end (the last bytes after the
    terminal event) so its connection goes back to the pool for the next request; anything
    else, or an upstream that keeps the stream open after its terminal event, is closed."""
    if completed and not resp.closed:
        if resp.at_eof:
            resp.release()
            return
        try:
            async with asyncio.timeout(1.0):
                await resp.read()  # releases the connection
            return
        except (TimeoutError, OSError):
            pass
    resp.close()


def loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise UpstreamError(f"upstream sent invalid JSON: {e}", code="upstream_bad_json") from e
