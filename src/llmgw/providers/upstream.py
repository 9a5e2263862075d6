"""The upstream HTTP/1.1 client: keep-alive connections to providers, nothing else.

Provider calls are the gateway's hot path, and a general-purpose client pays on every request for
features a provider call never uses (cookie jars, redirects, tracing hooks, multipart payloads,
per-request URL objects and multidicts). Measured against the bench's mock upstream (32 callers,
uvloop), aiohttp's ``ClientSession`` cost ~100 µs of CPU per call and this client ~39 µs. It does one thing:
POST a ready-made body to a URL over a pooled keep-alive connection and hand back the status,
the headers and the body, whole or piece by piece as it arrives (SSE). Responses are parsed by
``httptools`` (llhttp, the parser Node.js uses), so content-length, chunked and close-delimited
bodies are handled by a tested C parser, not by code of ours.

Semantics the providers rely on:
- ``UpstreamConnectionError`` (an ``OSError``): no usable answer (refused, reset, closed early,
  malformed). A request that fails on a *reused* idle connection before any response byte came
  back is sent once more on a new connection: the server closed the idle connection as we wrote
  to it, and it never saw the request.
- ``TimeoutError``: connecting took longer than ``connect_timeout``, or (``read_timeout``) no
  byte of the response arrived within it. The caller bounds the whole call with its own deadline.
- A connection goes back to the pool only when its response was read to the end and both sides
  allow keep-alive; anything else (an abandoned stream, a cancelled call) closes it.
- gzip/deflate bodies are decoded (the client asks for identity, but some proxies compress anyway).
- ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` (or their lower-case forms) from the environment
  the client was made with: an https origin is reached through a ``CONNECT`` tunnel, an http one
  by sending the absolute URL to the proxy (with ``Proxy-Authorization`` from the proxy URL's
  credentials). Decided once per origin, so the path without a proxy costs nothing more.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ipaddress
import os
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httptools

from .. import __version__
from ..errors import ConfigError

USER_AGENT = f"llmgw/{__version__}"
MAX_IDLE_PER_HOST = 256


class UpstreamConnectionError(ConnectionError):
    """The upstream connection failed or the upstream sent something that is not HTTP/1.1."""


@dataclass(frozen=True, slots=True, eq=False)
class _Origin:
    """Scheme, host and port of a pool. Interned by ``UpstreamClient._parse`` (one object per
    origin), so it hashes by identity: a generated dataclass hash cost ~1 us per pool lookup."""

    scheme: str
    host: str
    port: int
    host_header: str
    proxy: _Proxy | None = None

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


@dataclass(frozen=True, slots=True)
class _Proxy:
    host: str
    port: int
    auth: str | None  # the Proxy-Authorization value, from the proxy URL's user:password


def _proxy_from(url: str) -> _Proxy:
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "") or not parts.hostname:
        raise ValueError(f"proxy URL {url!r}: only http:// proxies are supported")
    auth = None
    if parts.username is not None:
        raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(raw).decode()
    return _Proxy(parts.hostname, parts.port or 80, auth)


class ProxySettings:
    """Which origins go through which proxy: ``HTTPS_PROXY``/``HTTP_PROXY`` and ``NO_PROXY`` (a comma
    list of host names, domain suffixes with or without a leading dot, IP addresses or networks,
    optionally with :port; ``*`` bypasses every proxy)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        def get(name: str) -> str:
            return (environ.get(name.lower()) or environ.get(name) or "").strip()

        try:
            self.https = _proxy_from(get("HTTPS_PROXY")) if get("HTTPS_PROXY") else None
            self.http = _proxy_from(get("HTTP_PROXY")) if get("HTTP_PROXY") else None
        except ValueError as e:
            raise ConfigError(f"HTTPS_PROXY/HTTP_PROXY: {e}") from None
        self.no_proxy = [e.strip().lower() for e in get("NO_PROXY").split(",") if e.strip()]

    def __bool__(self) -> bool:
        return self.https is not None or self.http is not None

    def for_origin(self, scheme: str, host: str, port: int) -> _Proxy | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self._bypass(host.lower(), port):
            return None
        return proxy

    def _bypass(self, host: str, port: int) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        for entry in self.no_proxy:
            if entry == "*":
                return True
            name, want_port = entry, None
            if entry.count(":") == 1 and entry.rsplit(":", 1)[1].isdigit():
                name, p = entry.rsplit(":", 1)
                want_port = int(p)
            if want_port is not None and want_port != port:
                continue
            name = name.strip("[]")
            if ip is not None:
                try:
                    if ip in ipaddress.ip_network(name, strict=False):
                        return True
                except ValueError:
                    pass
                continue
            name = name.lstrip(".")
            if host == name or host.endswith("." + name):
                return True
        return False


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection and the response currently being read on it."""

    __slots__ = ("transport", "parser", "closed", "reused", "status", "headers", "chunks", "complete",
                 "error", "waiter", "got_bytes", "framed", "keep_alive", "interim")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] | None = None
        self.keep_alive = False
        self.chunks: list[bytes] = []
        self.complete = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.got_bytes = False
        self.framed = False  # the body has a content-length or is chunked (else: it ends at close)
        self.interim = False  # parsing a 1xx interim answer, which precedes the real one

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamConnectionError(f"malformed HTTP response from upstream: {e}"))
            self.close()
        except httptools.HttpParserUpgrade:  # not an HttpParserError: it would escape to the event loop
            self._fail(UpstreamConnectionError("upstream switched protocols (101), which a provider call cannot use"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost decides what the EOF means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete or self.error is not None:
            return
        if self.headers is not None and not self.framed:
            self.on_message_complete()  # a close-delimited body ends here
            return
        what = "reset" if exc is not None else "closed"
        self._fail(UpstreamConnectionError(f"upstream connection {what} before the response was complete"))

    # -- httptools callbacks -------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers is None:
            self.headers = {}
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        prev = self.headers.get(key)
        self.headers[key] = text if prev is None else f"{prev}, {text}"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints) has no body and is followed by the
            # real one, possibly in the same read: forget it, headers and all.
            self.headers = None
            self.interim = True
            return
        if self.headers is None:
            self.headers = {}
        self.status = status
        h = self.headers
        self.framed = "content-length" in h or "chunked" in h.get("transfer-encoding", "")
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is done
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.complete = True
        self._wake()

    # -- helpers -------------------------------------------------------------------------------
    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    async def wait(self, read_timeout: float | None, deadline: float | None) -> None:
        """Wait for the parser to make progress (or fail): at most ``read_timeout`` seconds, and
        not past ``deadline`` (event-loop time)."""
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        timeout = read_timeout
        if deadline is not None:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError()
            timeout = left if timeout is None else min(timeout, left)
        self.waiter = fut = loop.create_future()
        handle = loop.call_later(timeout, _expire, fut) if timeout is not None else None
        try:
            await fut
        finally:
            self.waiter = None
            if handle is not None:
                handle.cancel()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _ProxyHello(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT: ``answer`` resolves to its status code."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._buf = b""

    def data_received(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0 or self.answer.done():
            if len(self._buf) > 16384 and not self.answer.done():
                self.answer.set_exception(UpstreamConnectionError("the proxy's answer to CONNECT is too long"))
            return
        line = self._buf.split(b"\r\n", 1)[0].split()
        try:
            self.answer.set_result(int(line[1]))
        except (IndexError, ValueError):
            self.answer.set_exception(UpstreamConnectionError(f"the proxy answered CONNECT with {line!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(UpstreamConnectionError("the proxy closed the connection during CONNECT"))


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class UpstreamResponse:
    """A response whose status line and headers have arrived; the body is read with ``read`` or
    ``next_chunk``. Call ``release`` (or ``close``) when done with it."""

    __slots__ = ("status", "headers", "_conn", "_client", "_origin", "_read_timeout", "_deadline", "_decoder",
                 "_done")

    def __init__(self, conn: _Conn, client: UpstreamClient, origin: _Origin, read_timeout: float | None,
                 deadline: float | None) -> None:
        self._conn = conn
        self._client = client
        self._origin = origin
        self._read_timeout = read_timeout
        self._deadline = deadline
        self.status = conn.status
        self.headers: dict[str, str] = conn.headers or {}
        enc = self.headers.get("content-encoding", "identity").strip().lower()
        self._decoder: Any = None
        if enc in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
        elif enc not in ("identity", ""):
            conn.close()
            raise UpstreamConnectionError(f"upstream sent an unsupported content-encoding {enc!r}")
        self._done = False

    @property
    def closed(self) -> bool:
        return self._done

    def _take(self) -> bytes:
        conn = self._conn
        chunks = conn.chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        conn.chunks = []
        if self._decoder is not None:
            data = self._decode(data)
        return data

    def _decode(self, data: bytes | None) -> bytes:
        """Decompress ``data`` (None: flush the decoder's end)."""
        try:
            return self._decoder.flush() if data is None else self._decoder.decompress(data)
        except zlib.error as e:
            raise UpstreamConnectionError(f"cannot decode the upstream's compressed body: {e}") from e

    async def read(self) -> bytes:
        """The whole body."""
        conn = self._conn
        try:
            while not conn.complete:
                await conn.wait(self._read_timeout, self._deadline)
            data = self._take()
            if self._decoder is not None:
                data += self._decode(None)
        except BaseException:
            self.close()
            raise
        self.release()
        return data

    async def next_chunk(self) -> bytes | None:
        """Everything received since the last call (waiting for it if need be), or None at the
        end of the body. A failed or cancelled read closes the connection; stopping early leaves
        that to the caller (``release`` keeps it only if the response was complete). A stream's
        hot loop calls this directly: no async generator step per piece."""
        conn = self._conn
        try:
            while True:
                if conn.chunks:
                    data = self._take()
                    if data:
                        return data
                elif conn.complete:
                    if self._decoder is not None:
                        tail = self._decode(None)
                        self._decoder = None
                        if tail:
                            return tail
                    return None
                else:
                    await conn.wait(self._read_timeout, self._deadline)
        except BaseException:
            self.close()
            raise

    async def started(self, within: float | None = None) -> None:
        """Wait, at most ``within`` seconds in all, until the body holds its first SSE ``data:``
        line (any bytes, if it is compressed) or has ended, without taking anything: a stream that
        stalls before its first event can still be retried. SSE comments sent while the upstream
        thinks (``: PROCESSING``) do not count as the first event. A failed or timed-out wait
        closes the connection."""
        conn = self._conn
        deadline = self._deadline
        if within is not None:
            until = asyncio.get_running_loop().time() + within
            deadline = until if deadline is None else min(deadline, until)
        try:
            while not conn.complete:
                chunks = conn.chunks
                if chunks and (self._decoder is not None
                               or b"data:" in (chunks[0] if len(chunks) == 1 else b"".join(chunks))):
                    return
                await conn.wait(self._read_timeout, deadline)
        except BaseException:
            self.close()
            raise

    @property
    def at_eof(self) -> bool:
        return self._conn.complete and not self._conn.chunks

    def release(self) -> None:
        """Give the connection back to the pool if its response is complete, else close it."""
        if self._done:
            return
        self._done = True
        conn = self._conn
        if conn.complete and not conn.closed and conn.keep_alive:
            self._client._put(self._origin, conn)
        else:
            conn.close()

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._conn.close()


class UpstreamClient:
    """Pools of idle keep-alive connections by origin; one request per connection at a time."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self._ssl = ssl_context
        self._proxies = ProxySettings(os.environ if environ is None else environ)
        self._idle: dict[_Origin, collections.deque[_Conn]] = {}
        self._origins: dict[str, tuple[_Origin, str]] = {}
        self._interned: dict[tuple[str, str, int], _Origin] = {}
        self._heads: dict[tuple[Any, ...], bytes] = {}
        self._closing = False

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _parse(self, url: str) -> tuple[_Origin, str]:
        try:
            return self._origins[url]
        except KeyError:
            pass
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        ident = (parts.scheme, host, port)
        origin = self._interned.get(ident)
        if origin is None:
            proxy = self._proxies.for_origin(parts.scheme, host, port) if self._proxies else None
            origin = _Origin(parts.scheme, host, port, shown if port == default else f"{shown}:{port}", proxy)
            if len(self._interned) < 1024:
                self._interned[ident] = origin
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if origin.proxy is not None and not origin.tls:  # a forwarding proxy wants the absolute URL
            target = f"http://{origin.host_header}{target}"
        if len(self._origins) < 1024:
            self._origins[url] = (origin, target)
        return origin, target

    def _put(self, origin: _Origin, conn: _Conn) -> None:
        if self._closing:
            conn.close()
            return
        pool = self._idle.get(origin)
        if pool is None:
            pool = self._idle[origin] = collections.deque()
        if len(pool) >= MAX_IDLE_PER_HOST:
            conn.close()
            return
        conn._reset()
        conn.reused = True
        pool.append(conn)

    def _get(self, origin: _Origin) -> _Conn | None:
        pool = self._idle.get(origin)
        while pool:
            conn = pool.pop()  # the most recently used: the least likely to have been closed
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, origin: _Origin, timeout: float) -> _Conn:
        if origin.proxy is not None:
            return await self._connect_via(origin, origin.proxy, timeout)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    _Conn, origin.host, origin.port,
                    ssl=self._ssl_context() if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None)
        except TimeoutError:
            raise
        except OSError as e:  # refused, unreachable, DNS failure, TLS failure (ssl.SSLError is an OSError)
            raise UpstreamConnectionError(f"cannot connect to {origin.host_header}: {e.strerror or e}") from e
        return conn

    async def _connect_via(self, origin: _Origin, proxy: _Proxy, timeout: float) -> _Conn:
        """A connection to ``origin`` through ``proxy``: a CONNECT tunnel (then TLS) for https, the
        proxy connection itself for http."""
        loop = asyncio.get_running_loop()
        where = f"{origin.host_header} through the proxy {proxy.host}:{proxy.port}"
        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(timeout):
                transport, hello = await loop.create_connection(_ProxyHello, proxy.host, proxy.port)
                conn = _Conn()
                if origin.tls:
                    auth = f"proxy-authorization: {proxy.auth}\r\n" if proxy.auth else ""
                    hostport = f"{origin.host}:{origin.port}" if ":" not in origin.host else \
                        f"[{origin.host}]:{origin.port}"
                    transport.write(f"CONNECT {hostport} HTTP/1.1\r\nhost: {hostport}\r\n{auth}\r\n".encode("latin-1"))
                    status = await hello.answer
                    if status != 200:
                        raise UpstreamConnectionError(f"cannot connect to {where}: the proxy answered {status}")
                    transport.set_protocol(conn)
                    tls = await loop.start_tls(transport, conn, self._ssl_context(), server_hostname=origin.host)
                    if tls is None:
                        raise UpstreamConnectionError(f"cannot connect to {where}: TLS failed")
                    transport = tls
                else:
                    transport.set_protocol(conn)
                conn.connection_made(transport)
                return conn
        except TimeoutError:
            if transport is not None:
                transport.close()
            raise
        except UpstreamConnectionError:
            if transport is not None:
                transport.close()
            raise
        except OSError as e:
            if transport is not None:
                transport.close()
            raise UpstreamConnectionError(f"cannot connect to {where}: {e.strerror or e}") from e

    async def post(self, url: str, body: bytes, headers: dict[str, str], *, timeout: float | None = None,
                   read_timeout: float | None = None, connect_timeout: float = 10.0,
                   method: str = "POST") -> UpstreamResponse:
        """POST ``body`` (or send another ``method``: a models listing is a GET) and return once the
        response headers are in.

        ``timeout`` bounds the whole exchange (connecting, the headers and, through the returned
        response, the body); ``read_timeout`` bounds each wait for the next bytes (a stream's
        stall); ``connect_timeout`` bounds connecting. Any of them running out is a TimeoutError.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        if timeout is not None:
            connect_timeout = min(connect_timeout, timeout)
        origin, target = self._parse(url)
        payload = b"".join((self._head(origin, target, headers, method), b"content-length: %d\r\n\r\n" % len(body), body))
        while True:
            conn = self._get(origin)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(origin, connect_timeout)
            try:
                assert conn.transport is not None
                conn.transport.write(payload)
                while not conn.status:
                    await conn.wait(read_timeout, deadline)
                if conn.status < 200:  # 101 (interim 1xx answers are skipped by the parser callbacks)
                    raise UpstreamConnectionError(f"upstream sent an unexpected interim status {conn.status}")
                return UpstreamResponse(conn, self, origin, read_timeout, deadline)
            except UpstreamConnectionError:
                conn.close()
                if reused and not conn.got_bytes:
                    continue  # a stale keep-alive connection: the request never reached the server
                raise
            except BaseException:
                conn.close()
                raise

    def _head(self, origin: _Origin, target: str, headers: dict[str, str], method: str = "POST") -> bytes:
        """The request line and headers but content-length, encoded; cached per distinct set (a
        provider sends the same few sets, one per API key of its pool)."""
        key = (method, origin, target, *headers.items())
        head = self._heads.get(key)
        if head is None:
            lines = [f"{method} {target} HTTP/1.1\r\nhost: {origin.host_header}\r\nuser-agent: {USER_AGENT}\r\n"]
            if origin.proxy is not None and not origin.tls and origin.proxy.auth:
                lines.append(f"proxy-authorization: {origin.proxy.auth}\r\n")
            for k, v in headers.items():
                if "\r" in v or "\n" in v or "\r" in k or "\n" in k or ":" in k:
                    raise ValueError(f"header {k!r} contains a line break or a colon in its name")
                lines.append(f"{k}: {v}\r\n")
            head = "".join(lines).encode("latin-1")
            if len(self._heads) < 256:
                self._heads[key] = head
        return head

    async def close(self) -> None:
        self._closing = True
        for pool in self._idle.values():
            while pool:
                pool.pop().close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing
