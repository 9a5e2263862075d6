"""A one-handler upstream for tests that need an answer ``fake_upstream`` does not give: an error
body quoting the credentials it was sent, a malformed stream chunk, headers followed by a stall.

    async def handler(request: web.Request, n: int) -> web.StreamResponse: ...  # n: 0, 1, ... per request
    with ScriptedUpstream(handler) as up:
        config = f'[providers.openai]\\ntype = "openai"\\nbase_url = "{up.url}/v1"\\n...'

Runs an aiohttp app on 127.0.0.1:<ephemeral> in a thread with its own loop; ``requests`` lists
every request received as {"path", "headers" (lower-case), "json"}.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


class ScriptedUpstream:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            n = len(self.requests)
            self.requests.append({"path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()},
                                  "json": body})
        return await self.handler(request, n)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def __enter__(self) -> ScriptedUpstream:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()
            pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]  # e.g. a handler still stalling
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="scripted-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("scripted upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._runner is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def provider_config(url: str, *, anthropic: bool = False, timeout: float | None = None,
                    name: str | None = None) -> str:
    """A ``[providers.X]`` section pointing at ``url`` (key from $SCRIPTED_KEY)."""
    kind = "anthropic" if anthropic else "openai"
    lines = [f"[providers.{name or kind}]", f'type = "{kind}"',
             f'base_url = "{url if anthropic else url + "/v1"}"', 'api_key_env = "SCRIPTED_KEY"']
    if timeout is not None:
        lines.append(f"timeout = {timeout}")
    return "\n".join(lines) + "\n"
