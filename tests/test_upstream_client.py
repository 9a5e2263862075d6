"""The upstream HTTP/1.1 client (``llmgw.providers.upstream``) against real servers on loopback.

Every test starts a raw ``asyncio`` server on 127.0.0.1 (ephemeral port) that speaks HTTP/1.1 by
hand, so the tests control the exact bytes and timing on the wire: keep-alive and connection
counts, chunked and close-delimited bodies, encodings, broken and stalled answers. The server
records each request (and the connection it came on) and which connections the *client* closed,
which is how the tests see whether a connection was pooled or thrown away. Pacing is done with
events the test sets, not with sleeps, so "pieces arrive before the end" is deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import orjson
import pytest

from llmgw.errors import UpstreamError
from llmgw.providers.base import AttemptFailed
from llmgw.providers.http import finish, iter_sse, open_sse, post_json
from llmgw.providers.upstream import UpstreamClient, UpstreamConnectionError, UpstreamResponse

# --------------------------------------------------------------------------- the raw test server


@dataclass
class Req:
    index: int  # position among all requests the server received
    conn: int  # the connection it arrived on (0, 1, ... in accept order)
    method: str
    target: str
    version: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


Handler = Callable[[Req, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


async def _read_request(reader: asyncio.StreamReader, conn: int) -> Req | None:
    """One request, or None at a clean EOF between requests (the client closed the connection)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise
        return None
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Req(-1, conn, method, target, version, headers, body)


class Server:
    """Raw HTTP/1.1 server: reads requests one after another on each connection and hands each to
    ``handler``, which writes whatever bytes it likes and returns False to close the connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Req] = []
        self.connections = 0
        self.client_closed: set[int] = set()  # connections the client closed (the server read EOF)
        self.server_closed: set[int] = set()  # connections the server closed, fully
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bodies(self) -> list[bytes]:
        return [r.body for r in self.requests]

    def conns(self) -> list[int]:
        return [r.conn for r in self.requests]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        cid = self.connections
        self.connections += 1
        try:
            while True:
                req = await _read_request(reader, cid)
                if req is None:
                    self.client_closed.add(cid)
                    return
                req.index = len(self.requests)  # numbered in order of arrival
                self.requests.append(req)
                if not await self.handler(req, reader, writer):
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    self.server_closed.add(cid)
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.client_closed.add(cid)
        except asyncio.CancelledError:
            pass  # the test is over (close()); ending quietly keeps asyncio from logging it
        finally:
            self._tasks.discard(task)
            writer.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


CLOSE = "close"  # script step: the server closes the connection
HANG = "hang"  # script step: the server sends nothing more and waits for the client to close
Step = bytes | asyncio.Event | str


def script(*replies: Sequence[Step]) -> Handler:
    """A handler answering request n with the steps ``replies[n]`` (the last one repeats): bytes
    are written, an Event is waited for, CLOSE closes the connection, HANG waits for the client."""

    async def handle(req: Req, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        for step in replies[min(req.index, len(replies) - 1)]:
            if isinstance(step, bytes):
                writer.write(step)
                await writer.drain()
            elif isinstance(step, asyncio.Event):
                await step.wait()
            elif step == CLOSE:
                return False
            elif step == HANG:
                await reader.read()  # until the client closes; the next read sees the EOF
                return True
        return True

    return handle


def response(body: bytes = b"", status: int = 200, reason: str = "OK", headers: dict[str, str] | None = None,
             length: int | None = None) -> bytes:
    """A complete content-length response (``length`` overrides the announced length)."""
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-length: {len(body) if length is None else length}\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    return (head + "\r\n").encode("latin-1") + body


def chunked_head(status: int = 200, headers: dict[str, str] | None = None) -> bytes:
    head = f"HTTP/1.1 {status} OK\r\ntransfer-encoding: chunked\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    return (head + "\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST = b"0\r\n\r\n"


async def echo(req: Req, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(response(b"ok:" + req.body))
    await writer.drain()
    return True


async def until(pred: Callable[[], bool], what: str, limit: float = 3.0) -> None:
    """Wait (bounded) for something the other side of the socket does."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.005)


async def rest(r: UpstreamResponse) -> list[bytes]:
    """The chunks of ``r``'s body still to come, until its end."""
    out = []
    while (c := await r.next_chunk()) is not None:
        out.append(c)
    return out


def idle_count(client: UpstreamClient) -> int:
    """Connections in the client's idle pool (private state, but the pool is what is under test)."""
    return sum(len(p) for p in client._idle.values())


async def post_read(client: UpstreamClient, url: str, body: bytes = b"", **kw: float) -> tuple[int, bytes]:
    r = await client.post(url, body, {}, **kw)
    return r.status, await r.read()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(handler: Handler) -> Server:
        srv = await Server(handler).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        await srv.close()


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    c = UpstreamClient()
    yield c
    await c.close()


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A loopback port that refuses connections (bound, not listening, so nobody else takes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}/v1/x"


Serve = Callable[[Handler], Awaitable[Server]]
TIMEOUT = 0.3

# --------------------------------------------------------------------------- keep-alive


async def test_sequential_requests_reuse_one_connection(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(echo)
    for i in range(6):
        assert await post_read(client, srv.url + "/x", b"n%d" % i) == (200, b"ok:n%d" % i)
    assert srv.connections == 1
    assert srv.conns() == [0] * 6
    assert srv.bodies() == [b"n%d" % i for i in range(6)]
    assert idle_count(client) == 1
    assert srv.client_closed == set()


async def test_concurrent_requests_open_several_connections_then_all_are_reused(
        serve: Serve, client: UpstreamClient) -> None:
    n = 4
    gates = [asyncio.Event(), asyncio.Event()]

    async def barrier(req: Req, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        gate = gates[req.index // n]
        if req.index % n == n - 1:  # all n of this round are in flight at once
            gate.set()
        await gate.wait()
        writer.write(response(b"ok:" + req.body))
        await writer.drain()
        return True

    srv = await serve(barrier)
    for rnd in range(2):
        async with asyncio.timeout(5):
            got = await asyncio.gather(*(post_read(client, srv.url, b"%d-%d" % (rnd, i)) for i in range(n)))
        assert got == [(200, b"ok:%d-%d" % (rnd, i)) for i in range(n)]
        assert srv.connections == n  # round 2 opened nothing new
        assert idle_count(client) == n
    assert sorted(srv.conns()[:n]) == list(range(n))
    assert sorted(srv.conns()[n:]) == list(range(n))  # every pooled connection was used again


# --------------------------------------------------------------------------- the request on the wire


async def test_request_line_headers_and_body_reach_the_server(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(echo)
    body = '{"messages": ["h\u00e9llo \u2603"]}\r\n\x00'.encode() + b"\xff\xfe"
    headers = {"authorization": "Bearer sk-test", "content-type": "application/json", "x-custom": "v 1"}
    r = await client.post(srv.url + "/v1/chat/completions?api-version=2024-06-01&x=%20y", body, headers)
    assert await r.read() == b"ok:" + body
    [req] = srv.requests
    assert (req.method, req.target, req.version) == ("POST", "/v1/chat/completions?api-version=2024-06-01&x=%20y",
                                                     "HTTP/1.1")
    assert req.headers["host"] == f"127.0.0.1:{srv.port}"
    assert req.headers["content-length"] == str(len(body))
    assert req.headers["user-agent"].startswith("llmgw/")
    for k, v in headers.items():
        assert req.headers[k] == v
    assert req.body == body


async def test_url_without_path_posts_to_root_and_empty_body(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(echo)
    assert await post_read(client, srv.url) == (200, b"ok:")
    [req] = srv.requests
    assert req.target == "/"
    assert req.headers["content-length"] == "0"
    assert req.body == b""


async def test_bad_url_and_header_injection_are_refused_before_sending(serve: Serve,
                                                                      client: UpstreamClient) -> None:
    srv = await serve(echo)
    with pytest.raises(ValueError, match="line break"):
        await client.post(srv.url, b"", {"x-evil": "a\r\nx-injected: 1"})
    with pytest.raises(ValueError, match="not an http"):
        await client.post(f"ftp://127.0.0.1:{srv.port}/", b"", {})
    assert srv.connections == 0


# --------------------------------------------------------------------------- response bodies


async def test_content_length_body_status_and_headers(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Request-Id: abc\r\n"
                              b"Set-Thing: a\r\nSet-Thing: b\r\n\r\nhello"]))
    r = await client.post(srv.url, b"", {})
    assert r.status == 201
    assert r.headers["x-request-id"] == "abc"  # names lower-cased
    assert r.headers["set-thing"] == "a, b"  # repeated headers joined
    assert not r.closed
    assert await r.read() == b"hello"
    assert r.closed  # read() released it
    assert idle_count(client) == 1


async def test_chunked_body_read_whole_then_connection_reused(serve: Serve, client: UpstreamClient) -> None:
    parts = [b"alpha ", b"beta " * 100, b"gamma"]
    srv = await serve(script([chunked_head(), *map(chunk, parts), LAST]))
    for _ in range(2):
        r = await client.post(srv.url, b"", {})
        assert await r.read() == b"".join(parts)
    assert srv.connections == 1
    assert len(srv.requests) == 2


async def test_chunked_body_iterated_piece_by_piece_as_it_arrives(serve: Serve, client: UpstreamClient) -> None:
    g1, g2 = asyncio.Event(), asyncio.Event()
    srv = await serve(script([chunked_head(), chunk(b"one"), g1, chunk(b"two"), g2, chunk(b"three"), LAST]))
    r = await client.post(srv.url, b"", {})
    assert await r.next_chunk() == b"one"  # before the server sent anything else
    assert not r.at_eof
    g1.set()
    assert await r.next_chunk() == b"two"
    assert not r.at_eof
    g2.set()
    assert await rest(r) == [b"three"]
    assert r.at_eof
    r.release()
    assert idle_count(client) == 1
    assert await post_read(client, srv.url) == (200, b"one" + b"two" + b"three")
    assert srv.connections == 1


async def test_close_delimited_body_is_read_to_the_end_and_not_reused(serve: Serve,
                                                                      client: UpstreamClient) -> None:
    gate = asyncio.Event()
    srv = await serve(script([b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nfirst part ", gate,
                              b"second part", CLOSE], [response(b"fresh")]))
    r = await client.post(srv.url, b"", {})
    assert await r.next_chunk() == b"first part "
    gate.set()
    assert await rest(r) == [b"second part"]  # the close ended the body, not an error
    r.release()
    assert idle_count(client) == 0
    assert await post_read(client, srv.url) == (200, b"fresh")
    assert srv.conns() == [0, 1]


async def test_close_delimited_body_read_whole(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([b"HTTP/1.1 200 OK\r\n\r\n", b"x" * 70000, b"end", CLOSE]))
    assert await post_read(client, srv.url) == (200, b"x" * 70000 + b"end")
    assert idle_count(client) == 0


async def test_connection_close_response_is_not_reused(serve: Serve, client: UpstreamClient) -> None:
    # The server says "connection: close" but leaves the socket open and keeps serving: were the
    # client to pool the connection, the second request would arrive on connection 0.
    srv = await serve(script([response(b"bye", headers={"Connection": "close"})], [response(b"again")]))
    assert await post_read(client, srv.url) == (200, b"bye")
    await until(lambda: 0 in srv.client_closed, "the client closing connection 0")
    assert idle_count(client) == 0
    assert await post_read(client, srv.url) == (200, b"again")
    assert srv.conns() == [0, 1]


async def test_http10_response_without_keep_alive_is_not_reused(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"]))
    assert await post_read(client, srv.url) == (200, b"ok")
    await until(lambda: 0 in srv.client_closed, "the client closing connection 0")
    assert await post_read(client, srv.url) == (200, b"ok")
    assert srv.conns() == [0, 1]


# --------------------------------------------------------------------------- content-encoding

TEXT = b"The quick brown fox jumps over the lazy dog. " * 50


@pytest.mark.parametrize("encoding, encode", [("gzip", gzip.compress), ("x-gzip", gzip.compress),
                                              ("deflate", zlib.compress)])
async def test_compressed_body_is_decoded_by_read(serve: Serve, client: UpstreamClient, encoding: str,
                                                  encode: Callable[[bytes], bytes]) -> None:
    wire = encode(TEXT)
    assert wire != TEXT
    srv = await serve(script([response(wire, headers={"Content-Encoding": encoding})]))
    for _ in range(2):
        assert await post_read(client, srv.url) == (200, TEXT)
    assert srv.connections == 1  # a decoded response still goes back to the pool


async def test_gzip_chunked_body_is_decoded_piece_by_piece(serve: Serve, client: UpstreamClient) -> None:
    a, b = b"data: first event\n\n" * 20, b"data: second event\n\n" * 20
    comp = zlib.compressobj(wbits=31)  # a gzip stream, flushed after the first part so it decodes alone
    part1 = comp.compress(a) + comp.flush(zlib.Z_SYNC_FLUSH)
    part2 = comp.compress(b) + comp.flush()
    gate = asyncio.Event()
    srv = await serve(script([chunked_head(headers={"content-encoding": "gzip"}), chunk(part1), gate,
                              chunk(part2), LAST]))
    r = await client.post(srv.url, b"", {})
    assert await r.next_chunk() == a
    gate.set()
    assert b"".join(await rest(r)) == b
    r.release()
    assert idle_count(client) == 1


async def test_unsupported_content_encoding_is_a_connection_error(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([response(b"\x8b\x00\x80", headers={"content-encoding": "br"})]))
    with pytest.raises(UpstreamConnectionError, match="content-encoding 'br'"):
        await client.post(srv.url, b"", {})
    await until(lambda: 0 in srv.client_closed, "the client closing the connection")
    assert idle_count(client) == 0
    assert len(srv.requests) == 1  # not retried


async def test_corrupt_gzip_body_is_a_connection_error(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([response(b"definitely not gzip", headers={"content-encoding": "gzip"})]))
    r = await client.post(srv.url, b"", {})
    with pytest.raises(UpstreamConnectionError, match="decode"):
        await r.read()
    assert r.closed
    await until(lambda: 0 in srv.client_closed, "the client closing the connection")
    assert idle_count(client) == 0


# --------------------------------------------------------------------------- errors


async def test_connection_refused(client: UpstreamClient, dead_url: str) -> None:
    with pytest.raises(UpstreamConnectionError, match="cannot connect") as ei:
        await client.post(dead_url, b"{}", {})
    assert isinstance(ei.value, OSError)
    assert isinstance(ei.value.__cause__, ConnectionRefusedError)


async def test_close_before_any_response_on_a_new_connection_is_an_error_not_retried(
        serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([CLOSE]))
    with pytest.raises(UpstreamConnectionError, match="closed before the response"):
        await client.post(srv.url, b"once", {})
    assert srv.bodies() == [b"once"]  # a fresh connection is never retried
    assert srv.connections == 1


async def test_close_mid_body_fails_read(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([response(b"0123456789", length=100), CLOSE]))
    r = await client.post(srv.url, b"", {})
    assert r.status == 200
    with pytest.raises(UpstreamConnectionError, match="before the response was complete"):
        await r.read()
    assert r.closed
    assert idle_count(client) == 0


async def test_close_mid_body_fails_next_chunk_after_the_bytes_that_came(serve: Serve,
                                                                         client: UpstreamClient) -> None:
    gate = asyncio.Event()
    srv = await serve(script([response(b"0123456789", length=100), gate, CLOSE]))
    r = await client.post(srv.url, b"", {})
    got: list[bytes] = []
    with pytest.raises(UpstreamConnectionError):
        while (c := await r.next_chunk()) is not None:
            got.append(c)
            gate.set()
    assert got == [b"0123456789"]
    assert r.closed


async def test_close_mid_chunked_body_is_an_error(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([chunked_head(), chunk(b"partial"), CLOSE]))
    r = await client.post(srv.url, b"", {})
    with pytest.raises(UpstreamConnectionError):
        await r.read()


@pytest.mark.parametrize("garbage", [
    b"HTTP/1.1 abc OK\r\ncontent-length: 0\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: twelve\r\n\r\n",
], ids=["bad-status-code", "not-http", "bad-content-length"])
async def test_malformed_response_is_a_connection_error(serve: Serve, client: UpstreamClient,
                                                        garbage: bytes) -> None:
    srv = await serve(script([garbage, HANG]))  # the server keeps the connection open
    with pytest.raises(UpstreamConnectionError, match="malformed"):
        await client.post(srv.url, b"", {})
    await until(lambda: 0 in srv.client_closed, "the client closing the connection")
    assert idle_count(client) == 0
    assert len(srv.requests) == 1


@pytest.mark.parametrize("paced", [False, True], ids=["same-read", "separate-reads"])
async def test_interim_1xx_answers_are_skipped(serve: Serve, client: UpstreamClient, paced: bool) -> None:
    """Interim answers (100 Continue, 103 Early Hints) precede the real one and are ignored, even
    when the real answer arrives in the same read. (Bug fixed: with both in one read the client
    took the interim answer's end for the body's end, returned a truncated body with the interim
    headers mixed in, and pooled the connection mid-response.)"""
    gate = asyncio.Event()
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n"
    final_head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nx-final: yes\r\n\r\n"
    steps: list[Step] = [interim, gate, final_head + b"01234", b"56789"] if paced else \
        [interim + final_head + b"01234", gate, b"56789"]
    srv = await serve(script(steps, [response(b"next")]))
    task = asyncio.create_task(client.post(srv.url, b"", {}))
    await until(lambda: len(srv.requests) == 1, "the request reaching the server")
    await asyncio.sleep(0.02)  # pacing only: let the first write reach the client before the rest
    gate.set()
    r = await task
    assert r.status == 200
    assert r.headers == {"content-length": "10", "x-final": "yes"}
    assert await r.read() == b"0123456789"
    assert await post_read(client, srv.url) == (200, b"next")
    assert srv.conns() == [0, 0]


async def test_101_switching_protocols_is_a_connection_error(serve: Serve, client: UpstreamClient,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """(Bug fixed: the parser's upgrade exception escaped ``data_received`` and asyncio logged a
    fatal protocol error with a traceback.)"""
    srv = await serve(script([b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n",
                              HANG]))
    with pytest.raises(UpstreamConnectionError, match="switched protocols"):
        await client.post(srv.url, b"", {})
    await until(lambda: 0 in srv.client_closed, "the client closing the connection")
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


# --------------------------------------------------------------------------- stale keep-alive


async def test_idle_connection_closed_by_server_is_replaced_transparently(serve: Serve,
                                                                          client: UpstreamClient) -> None:
    # The server advertises keep-alive but closes each connection right after its answer.
    srv = await serve(script([response(b"one"), CLOSE], [response(b"two"), CLOSE]))
    assert await post_read(client, srv.url, b"1") == (200, b"one")
    await until(lambda: 0 in srv.server_closed, "the server closing the idle connection")
    assert await post_read(client, srv.url, b"2") == (200, b"two")
    assert srv.conns() == [0, 1]
    assert srv.bodies() == [b"1", b"2"]


async def test_reused_connection_closed_without_any_answer_is_retried_once_on_a_new_one(
        serve: Serve, client: UpstreamClient) -> None:
    """A reused idle connection that closes before the first response byte is taken for a stale
    keep-alive race and the request is sent once more on a new connection. The client cannot tell
    this from a server that read the request and then dropped it, so in that case the server
    receives the request twice (documented, deliberate behaviour)."""
    srv = await serve(script([response(b"first")], [CLOSE], [response(b"answered on retry")]))
    assert await post_read(client, srv.url, b"A") == (200, b"first")
    assert await post_read(client, srv.url, b"B") == (200, b"answered on retry")
    assert srv.bodies() == [b"A", b"B", b"B"]  # delivered twice
    assert srv.conns() == [0, 0, 1]


async def test_reused_connection_failing_after_some_answer_bytes_is_not_retried(
        serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([response(b"first")], [b"HTTP/1.1 200 O", CLOSE], [response(b"never")]))
    assert await post_read(client, srv.url, b"A") == (200, b"first")
    with pytest.raises(UpstreamConnectionError):
        await client.post(srv.url, b"B", {})
    assert srv.bodies() == [b"A", b"B"]
    assert srv.connections == 1


async def test_retry_after_stale_connection_that_also_fails_raises(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([response(b"first")], [CLOSE]))
    assert await post_read(client, srv.url, b"A") == (200, b"first")
    with pytest.raises(UpstreamConnectionError):
        await client.post(srv.url, b"B", {})
    assert srv.bodies() == [b"A", b"B", b"B"]  # one retry, not a loop
    assert srv.conns() == [0, 0, 1]


# --------------------------------------------------------------------------- timeouts


async def test_timeout_bounds_the_wait_for_the_answer(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([HANG], [response(b"ok")]))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await client.post(srv.url, b"", {}, timeout=TIMEOUT)
    elapsed = loop.time() - t0
    assert TIMEOUT - 0.001 <= elapsed < TIMEOUT + 2  # a sanity bound, not a performance target
    await until(lambda: 0 in srv.client_closed, "the client closing the timed-out connection")
    assert idle_count(client) == 0
    assert await post_read(client, srv.url) == (200, b"ok")
    assert srv.conns() == [0, 1]


async def test_timeout_bounds_the_whole_exchange_including_a_trickling_body(serve: Serve,
                                                                            client: UpstreamClient) -> None:
    async def trickle(req: Req, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(chunked_head())
        while not writer.is_closing() and not reader.at_eof():
            writer.write(chunk(b"."))  # a byte every 20 ms: never a stall, never an end
            await writer.drain()
            await asyncio.sleep(0.02)
        return False

    srv = await serve(trickle)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await client.post(srv.url, b"", {}, timeout=TIMEOUT, read_timeout=TIMEOUT)
    with pytest.raises(TimeoutError):
        await r.read()
    elapsed = loop.time() - t0
    assert TIMEOUT - 0.001 <= elapsed < TIMEOUT + 2
    assert r.closed
    assert idle_count(client) == 0


async def test_read_timeout_on_headers(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([HANG]))
    with pytest.raises(TimeoutError):
        await client.post(srv.url, b"", {}, read_timeout=TIMEOUT)
    await until(lambda: 0 in srv.client_closed, "the client closing the timed-out connection")


async def test_read_timeout_on_a_stream_that_stalls_between_chunks(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([chunked_head(), chunk(b"first"), HANG], [response(b"next")]))
    loop = asyncio.get_running_loop()
    r = await client.post(srv.url, b"", {}, read_timeout=TIMEOUT)
    assert await r.next_chunk() == b"first"
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await r.next_chunk()
    assert TIMEOUT - 0.001 <= loop.time() - t0 < TIMEOUT + 2
    assert r.closed
    await until(lambda: 0 in srv.client_closed, "the client closing the stalled connection")
    assert idle_count(client) == 0
    assert await post_read(client, srv.url) == (200, b"next")
    assert srv.conns() == [0, 1]


async def test_cancelled_request_closes_its_connection(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([HANG], [response(b"ok")]))
    task = asyncio.create_task(client.post(srv.url, b"", {}))
    await until(lambda: len(srv.requests) == 1, "the request reaching the server")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: 0 in srv.client_closed, "the client closing the cancelled connection")
    assert await post_read(client, srv.url) == (200, b"ok")
    assert srv.conns() == [0, 1]


# --------------------------------------------------------------------------- release and close


async def test_release_of_an_incomplete_response_closes_the_connection(serve: Serve,
                                                                       client: UpstreamClient) -> None:
    srv = await serve(script([chunked_head(), chunk(b"more to come"), HANG], [response(b"ok")]))
    r = await client.post(srv.url, b"", {})
    assert await r.next_chunk() == b"more to come"
    r.release()
    assert r.closed
    await until(lambda: 0 in srv.client_closed, "the client closing the abandoned connection")
    assert idle_count(client) == 0
    assert await post_read(client, srv.url) == (200, b"ok")
    assert srv.conns() == [0, 1]


async def test_release_of_a_complete_unread_response_pools_it(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([response(b"")]))  # an empty body is complete with the headers
    r = await client.post(srv.url, b"", {})
    assert r.at_eof
    r.release()
    r.release()  # idempotent
    assert idle_count(client) == 1
    assert await post_read(client, srv.url) == (200, b"")
    assert srv.connections == 1


async def test_client_close_closes_idle_connections(serve: Serve) -> None:
    gate = asyncio.Event()

    async def pair(req: Req, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if req.index == 1:
            gate.set()
        await gate.wait()  # two requests in flight at once: two connections
        writer.write(response(b"ok"))
        await writer.drain()
        return True

    srv = await serve(pair)
    client = UpstreamClient()
    try:
        async with asyncio.timeout(5):
            await asyncio.gather(post_read(client, srv.url), post_read(client, srv.url))
        assert idle_count(client) == 2
        assert srv.client_closed == set()
    finally:
        await client.close()
    assert idle_count(client) == 0
    await until(lambda: srv.client_closed == {0, 1}, "both idle connections closed")
    # a response completing after close() is not pooled either
    assert await post_read(client, srv.url) == (200, b"ok")
    assert idle_count(client) == 0
    await until(lambda: 2 in srv.client_closed, "the post-close connection closed")


# --------------------------------------------------------------------------- through providers/http.py


def json_error(message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "server_error"}})


async def test_post_json_returns_the_body_and_maps_500_to_attempt_failed(serve: Serve,
                                                                         client: UpstreamClient) -> None:
    srv = await serve(script([response(b'{"id": 1}')],
                             [response(json_error("engine overloaded"), 500, "Internal Server Error",
                                       {"content-type": "application/json", "retry-after": "2"})]))
    assert await post_json(client, "prov", srv.url + "/v1/chat", b"{}", {}, 5.0) == b'{"id": 1}'
    with pytest.raises(AttemptFailed) as ei:
        await post_json(client, "prov", srv.url + "/v1/chat", b"{}", {}, 5.0)
    e = ei.value
    assert e.status == 500 and not e.timeout
    assert e.retry_after == 2.0
    assert "prov answered 500: engine overloaded" in e.message
    assert e.error is not None and e.error.code == "upstream_500"
    assert srv.connections == 1  # the error body was read, so the connection stayed pooled


async def test_post_json_refused_connection_is_attempt_failed(client: UpstreamClient, dead_url: str) -> None:
    with pytest.raises(AttemptFailed, match="prov connection failed") as ei:
        await post_json(client, "prov", dead_url, b"{}", {}, 5.0)
    assert not ei.value.timeout and ei.value.status is None


async def test_post_json_timeout_is_attempt_failed_with_timeout(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([HANG]))
    with pytest.raises(AttemptFailed, match="did not answer within") as ei:
        await post_json(client, "prov", srv.url, b"{}", {}, TIMEOUT)
    assert ei.value.timeout
    await until(lambda: 0 in srv.client_closed, "the client closing the timed-out connection")


async def test_post_json_timeout_covers_a_slow_body(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([response(b"0123456789", length=20), HANG]))
    with pytest.raises(AttemptFailed) as ei:
        await post_json(client, "prov", srv.url, b"{}", {}, TIMEOUT)
    assert ei.value.timeout


SSE_HEAD = chunked_head(headers={"content-type": "text/event-stream"})


async def collect(resp: UpstreamResponse, after_each: Callable[[int], None] | None = None
                  ) -> list[list[tuple[bytes | None, bytes]]]:
    batches = []
    async for batch in iter_sse(resp, "prov"):
        batches.append(batch)
        if after_each is not None:
            after_each(len(batches))
    return batches


async def test_open_sse_and_iter_sse_parse_events_in_batches_per_read(serve: Serve,
                                                                      client: UpstreamClient) -> None:
    g = [asyncio.Event() for _ in range(2)]
    srv = await serve(script([
        SSE_HEAD,
        chunk(b'event: message_start\r\ndata: {"a":1}\r\n\r\ndata: {"b":2}\r\n\r\n'),  # two events, one read
        g[0],
        chunk(b": a comment\r\n\r\nevent: delta\r\ndata: split "),  # a comment-only block, half an event
        chunk(b"across reads\r\ndata: line2\r\n\r\n"),
        g[1],
        chunk(b"data: [DONE]\n\n"),
        LAST,
    ]))
    resp = await open_sse(client, "prov", srv.url + "/v1/messages", b'{"stream":true}', {"x-api-key": "k"}, 5.0)
    assert resp.status == 200
    batches = await collect(resp, lambda n: g[n - 1].set() if n <= 2 else None)
    assert batches[0] == [(b"message_start", b'{"a":1}'), (None, b'{"b":2}')]
    # the comment yields nothing; the split event comes whole, its data lines joined by "\n"
    assert batches[1] == [(b"delta", b"split across reads\nline2")]
    assert batches[2:] == [[(None, b"[DONE]")]]
    assert srv.requests[0].headers["x-api-key"] == "k"


async def test_iter_sse_yields_a_final_event_without_blank_line(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([SSE_HEAD, chunk(b"data: one\r\n\r\ndata: tail"), LAST]))
    resp = await open_sse(client, "prov", srv.url, b"", {}, 5.0)
    assert await collect(resp) == [[(None, b"one")], [(None, b"tail")]]


async def test_open_sse_error_status_is_attempt_failed_and_connection_kept(serve: Serve,
                                                                           client: UpstreamClient) -> None:
    srv = await serve(script([response(json_error("slow down"), 429, "Too Many Requests",
                                       {"retry-after-ms": "1500"})], [SSE_HEAD, chunk(b"data: x\n\n"), LAST]))
    with pytest.raises(AttemptFailed, match="slow down") as ei:
        await open_sse(client, "prov", srv.url, b"", {}, 5.0)
    assert ei.value.status == 429 and ei.value.retry_after == 1.5
    resp = await open_sse(client, "prov", srv.url, b"", {}, 5.0)
    assert await collect(resp) == [[(None, b"x")]]
    assert srv.connections == 1


async def test_iter_sse_stream_broken_midway(serve: Serve, client: UpstreamClient) -> None:
    gate = asyncio.Event()
    srv = await serve(script([SSE_HEAD, chunk(b"data: one\n\n"), gate, chunk(b"data: tw"), CLOSE]))
    resp = await open_sse(client, "prov", srv.url, b"", {}, 5.0)
    batches: list[list[tuple[bytes | None, bytes]]] = []
    with pytest.raises(UpstreamError) as ei:
        async for batch in iter_sse(resp, "prov"):
            batches.append(batch)
            gate.set()
    assert ei.value.code == "upstream_stream_broken"
    assert "prov stream broke" in ei.value.message
    assert batches == [[(None, b"one")]]
    assert resp.closed


async def test_iter_sse_stall_is_stream_timeout(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([SSE_HEAD, chunk(b"data: one\n\n"), HANG]))
    resp = await open_sse(client, "prov", srv.url, b"", {}, TIMEOUT)
    batches: list[list[tuple[bytes | None, bytes]]] = []
    with pytest.raises(UpstreamError) as ei:
        async for batch in iter_sse(resp, "prov"):
            batches.append(batch)
    assert ei.value.code == "upstream_stream_timeout"
    assert batches == [[(None, b"one")]]
    await until(lambda: 0 in srv.client_closed, "the client closing the stalled stream")


async def test_open_sse_timeout_waiting_for_headers(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([HANG]))
    with pytest.raises(AttemptFailed) as ei:
        await open_sse(client, "prov", srv.url, b"", {}, TIMEOUT)
    assert ei.value.timeout


async def test_finish_completed_stream_returns_connection_to_pool(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([SSE_HEAD, chunk(b"data: a\n\ndata: [DONE]\n\n"), LAST]))
    for _ in range(3):
        resp = await open_sse(client, "prov", srv.url, b"", {}, 5.0)
        assert await collect(resp) == [[(None, b"a"), (None, b"[DONE]")]]
        await finish(resp, completed=True)
        assert resp.closed
        assert idle_count(client) == 1
    assert srv.connections == 1
    assert srv.client_closed == set()


async def test_finish_reads_the_end_after_the_terminal_event_then_pools(serve: Serve,
                                                                        client: UpstreamClient) -> None:
    # The caller stops at its terminal event; the stream's end (last chunk) arrives afterwards.
    gate = asyncio.Event()
    srv = await serve(script([SSE_HEAD, chunk(b"data: [DONE]\n\n"), gate, LAST]))
    resp = await open_sse(client, "prov", srv.url, b"", {}, 5.0)
    events = iter_sse(resp, "prov")
    assert await anext(events) == [(None, b"[DONE]")]
    await events.aclose()
    assert not resp.at_eof
    gate.set()
    await finish(resp, completed=True)
    assert resp.closed and idle_count(client) == 1
    resp = await open_sse(client, "prov", srv.url, b"", {}, 5.0)
    assert await collect(resp) == [[(None, b"[DONE]")]]
    await finish(resp, completed=True)
    assert srv.connections == 1


async def test_finish_not_completed_closes_the_connection(serve: Serve, client: UpstreamClient) -> None:
    srv = await serve(script([SSE_HEAD, chunk(b"data: a\n\n"), HANG], [response(b"ok")]))
    resp = await open_sse(client, "prov", srv.url, b"", {}, 5.0)
    events = iter_sse(resp, "prov")
    assert await anext(events) == [(None, b"a")]
    await events.aclose()
    await finish(resp, completed=False)
    assert resp.closed
    await until(lambda: 0 in srv.client_closed, "the client closing the unfinished stream")
    assert idle_count(client) == 0
    assert await post_read(client, srv.url) == (200, b"ok")
    assert srv.conns() == [0, 1]


@pytest.mark.parametrize("before", [b"", b": PROCESSING\n\n"], ids=["nothing", "a comment"])
async def test_open_sse_waits_for_the_first_event_a_stall_before_it_is_a_retryable_timeout(
        serve: Serve, client: UpstreamClient, before: bytes) -> None:
    # headers (and maybe a keep-alive comment), then nothing: nothing reached a client yet
    srv = await serve(script([SSE_HEAD, *([chunk(before)] if before else []), HANG]))
    with pytest.raises(AttemptFailed, match="sent no stream event within") as ei:
        await open_sse(client, "prov", srv.url, b"", {}, TIMEOUT)
    assert ei.value.timeout
    await until(lambda: 0 in srv.client_closed, "the client closing the stalled stream")


async def test_open_sse_returns_at_the_first_data_line_comments_before_it_included(
        serve: Serve, client: UpstreamClient) -> None:
    gate = asyncio.Event()
    srv = await serve(script([SSE_HEAD, chunk(b": PROCESSING\n\n"), chunk(b"da"), chunk(b'ta: {"a":1}\n\n'), gate,
                              chunk(b"data: [DONE]\n\n"), LAST]))
    resp = await open_sse(client, "prov", srv.url, b"", {}, 5.0)
    gate.set()
    assert await collect(resp) in ([[(None, b'{"a":1}')], [(None, b"[DONE]")]], [[(None, b'{"a":1}'), (None, b"[DONE]")]])


async def test_open_sse_break_before_the_first_bytes_is_a_retryable_failure(serve: Serve,
                                                                           client: UpstreamClient) -> None:
    srv = await serve(script([SSE_HEAD, CLOSE]))
    with pytest.raises(AttemptFailed, match="stream broke before its first event") as ei:
        await open_sse(client, "prov", srv.url, b"", {}, 5.0)
    assert not ei.value.timeout
    assert srv.connections == 1
