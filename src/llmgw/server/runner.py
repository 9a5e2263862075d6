"""Running the daemon: event loop, listening socket, signals and graceful drain.

The listening sockets are bound first, before the app starts (database, ledger writer, cache):
a port in use fails at once as one ``ResourceError``, with nothing started. So does a home or
database that cannot be used (raised by the app's start-up, which is then undone).

SIGTERM / SIGINT: stop accepting connections, let in-flight requests finish for up to
``server.drain_timeout`` seconds, cancel what is left (each still gets its ledger row), then
flush and stop the ledger writer.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from aiohttp import web

from ..clock import Clock, wall_ms
from ..config import Config
from ..errors import ResourceError
from .app import STATE, create_app

log = logging.getLogger("llmgw.server")


def tune_gc() -> None:
    """Keep the cyclic GC off the request path's tail latency.

    Everything allocated at start-up (modules, config, tables) is moved out of the collector's
    sight with ``gc.freeze()``, and the young-generation threshold is raised: per-request garbage
    is almost all freed by reference counting, so frequent collections only cost time (measured:
    p99 at c=32 went from ~33 ms to ~14 ms, see bench/README.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def listen(host: str, port: int, backlog: int = 128, *, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to (as ``loop.create_server`` would
    bind them: ``SO_REUSEADDR``, IPv6 sockets v6-only; ``SO_REUSEPORT`` for ``serve --workers``). ``ResourceError`` naming the address when
    it cannot be bound (in use, not local, no such host, port out of range); nothing stays open."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
    except (OSError, OverflowError) as e:
        for sock in socks:
            sock.close()
        reason = (e.strerror if isinstance(e, OSError) else None) or str(e)
        raise ResourceError(f"cannot listen on {where}: {reason}") from e
    return socks


async def serve_async(config: Config, home: Path, *, host: str, port: int,
                      on_ready: Callable[[str, int], None] | None = None,
                      stop: asyncio.Event | None = None, environ: Mapping[str, str] | None = None,
                      on_app: Callable[[web.Application], None] | None = None,
                      clock: Clock = wall_ms, worker: int | None = None) -> None:
    sockets = listen(host, port, reuse_port=worker is not None)
    try:
        app = create_app(config, home, environ=environ, clock=clock, worker=worker)
        runner = web.AppRunner(app, handle_signals=False, access_log=None,
                               shutdown_timeout=config.server.drain_timeout)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    try:
        await runner.setup()
    except BaseException:
        await runner.cleanup()  # undoes the start-up steps that succeeded
        for sock in sockets:
            sock.close()
        raise
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        bound = sockets[0].getsockname()[1]
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests) or not Unix
                pass
        tune_gc()
        if on_app:  # tests reach into the running app (e.g. to inject a clock)
            on_app(app)
        if on_ready:
            on_ready(host, bound)
        await stop.wait()
    finally:
        app[STATE]["draining"] = True
        log.info("shutting down: draining in-flight requests (up to %gs)", config.server.drain_timeout)
        await runner.cleanup()
        for sock in sockets:  # closed by their sites already; not a started one
            sock.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass


def run(config: Config, home: Path, *, host: str, port: int,
        on_ready: Callable[[str, int], None] | None = None, clock: Clock = wall_ms, worker: int | None = None) -> None:
    coro = serve_async(config, home, host=host, port=port, on_ready=on_ready, clock=clock, worker=worker)
    if sys.platform != "win32":
        import uvloop

        uvloop.run(coro)
    else:  # pragma: no cover
        asyncio.run(coro)
