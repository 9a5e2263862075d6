"""Shared fixtures: the real daemon (in a thread, on an ephemeral loopback port, with a real
SQLite file under a temp LLMGW_HOME) and the fake upstream (a real aiohttp server)."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fake_upstream import FakeUpstream
from llmgw import config as cfgmod
from llmgw import paths
from llmgw.clock import wall_ms
from llmgw.governance.keys import mint
from llmgw.server.runner import serve_async
from llmgw.store import db as store_db
from llmgw.store.ledger import normalise_row


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "a condition") -> Any:
    """Poll ``cond`` until it returns something truthy (and return that); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class TestClock:
    """A daemon's business clock in tests: the wall clock until ``freeze``."""

    def __init__(self) -> None:
        self.frozen: int | None = None

    def __call__(self) -> int:
        return wall_ms() if self.frozen is None else self.frozen

    def freeze(self, ms: int) -> None:
        self.frozen = ms


@dataclass
class Daemon:
    url: str
    home: Path
    key: str
    _loop: asyncio.AbstractEventLoop
    _stop: asyncio.Event
    _thread: threading.Thread
    clock: TestClock
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def openai_base(self) -> str:
        return self.url + "/v1"

    @property
    def target(self) -> Any:
        """The daemon's store: its home's SQLite file, or the PostgreSQL store of ``[store] url``."""
        return self.extra.get("target") or paths.db_path(self.home)

    def db(self) -> sqlite3.Connection:
        return store_db.connect(self.target)

    def ledger(self) -> list[dict[str, Any]]:
        conn = self.db()
        try:
            rows = [dict(r) for r in conn.execute("SELECT * FROM ledger ORDER BY id")]
        finally:
            conn.close()
        for r in rows:  # the daemon writes its rows unvalidated (hot path): they must pass validation
            normalise_row({k: v for k, v in r.items() if k != "id"})
        return rows

    def mint(self, **kw: Any) -> str:
        conn = store_db.open_db(self.target)
        try:
            with conn:  # the caller owns the transaction
                return mint(conn, **kw)[0]
        finally:
            conn.close()

    @property
    def gateway(self) -> Any:
        from llmgw.server.app import GATEWAY

        return self.extra["app"][GATEWAY]

    def synced(self, timeout: float = 10.0) -> None:
        """Wait until the daemon has loaded the definitions (keys, budgets) now in the database."""
        from llmgw.server.app import STATE

        conn = self.db()
        try:
            want = store_db.definitions_version(conn)
        finally:
            conn.close()
        defs = self.extra["app"][STATE]["definitions"]
        wait_until(lambda: defs.version >= want, timeout, "the daemon to reload its definitions")

    def set_clock(self, ms: int) -> None:
        """Freeze the daemon's business clock (budget windows, expiry, TTLs, ledger timestamps) at ``ms``."""
        self.clock.freeze(ms)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)
            if self._thread.is_alive():  # what it waits for, then a failure (not a thread left running)
                for task in asyncio.all_tasks(self._loop):
                    print(f"{task!r}, awaiting:", file=sys.stderr)
                    coro: Any = task.get_coro()
                    while coro is not None:  # the whole await chain (print_stack shows its top only)
                        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                        where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else ""
                        print(f"  {type(coro).__name__} {getattr(coro, '__qualname__', coro)!s:.200} {where}",
                              file=sys.stderr)
                        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
                raise AssertionError(f"the daemon at {self.url} did not stop within 30 s")


def start_daemon(home: Path, config_text: str = "", environ: dict[str, str] | None = None) -> Daemon:
    cfg_path = home / "llmgw.toml"
    home.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(config_text)
    env = dict(environ or {})
    config = cfgmod.load(cfg_path, environ=env)
    target = store_db.target(config.store.url, home)
    conn = store_db.open_db(target)
    try:
        with conn:
            key = mint(conn, name="test", replace=True)[0]
    finally:
        conn.close()
    ready = threading.Event()
    box: dict[str, Any] = {}
    clock = TestClock()

    def on_ready(host: str, port: int) -> None:
        box["url"] = f"http://{host}:{port}"
        ready.set()

    def run() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        stop = asyncio.Event()
        box["stop"] = stop
        try:
            loop.run_until_complete(serve_async(config, home, host="127.0.0.1", port=0, on_ready=on_ready,
                                                stop=stop, environ=env, on_app=lambda app: box.update(app=app),
                                                clock=clock))
        except BaseException as e:  # surfaced to the test via box
            box["error"] = e
            ready.set()
        finally:
            loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    if not ready.wait(20) or "error" in box:
        raise RuntimeError(f"daemon did not start: {box.get('error')!r}")
    return Daemon(box["url"], home, key, box["loop"], box["stop"], t, clock, extra={"app": box["app"], "target": target})


def upstream_config(fake: FakeUpstream, extra: str = "") -> str:
    return f"""
[providers.openai]
type = "openai"
base_url = "{fake.openai_url}"
api_key_env = "TEST_OPENAI_KEY"

[providers.anthropic]
type = "anthropic"
base_url = "{fake.url}"
api_key_env = "TEST_ANTHROPIC_KEY"

[providers.demo]
type = "demo"

[retry]
backoff_base = 0.01
backoff_max = 0.05
{extra}
"""


UPSTREAM_ENV = {"TEST_OPENAI_KEY": "sk-test-openai", "TEST_ANTHROPIC_KEY": "sk-ant-test"}


# what the caller's environment must not leak into a test: llmgw's own settings, provider keys
# and base URLs, and the places that hold per-user state
_LEAKY_PREFIXES = ("LLMGW_", "OPENAI_", "ANTHROPIC_", "XDG_")
_LEAKY = {"HOME", "NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES"}


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test runs with a clean environment: no LLMGW_*, provider or XDG variables from the
    caller, and an empty HOME of its own (subprocesses inherit the same)."""
    import os

    for name in list(os.environ):
        if name.startswith(_LEAKY_PREFIXES) or name in _LEAKY:
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as f:
        yield f


@pytest.fixture
def upstream(fake: FakeUpstream) -> Iterator[FakeUpstream]:
    fake.reset()
    fake.clear_faults()
    yield fake
    fake.clear_faults()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Daemon] = []

    def factory(config_text: str = "", environ: dict[str, str] | None = None, home: Path | None = None) -> Daemon:
        d = start_daemon(home or tmp_path / f"home{len(started)}", config_text, environ)
        started.append(d)
        return d

    yield factory
    for d in started:
        d.stop()


@pytest.fixture
def gw(daemon_factory: Any, upstream: FakeUpstream) -> Daemon:
    """The daemon in front of the fake upstream (providers openai, anthropic, demo)."""
    return daemon_factory(upstream_config(upstream), UPSTREAM_ENV)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One throwaway PostgreSQL server for the session (``services.postgres_server``); skipped with
    the reason when its binaries are missing. Tests take a database of their own: ``pg_url``."""
    from services import postgres_server

    yield from postgres_server()


@pytest.fixture
def pg_url(pg_server: Any) -> str:
    """The URL (with a password) of a fresh, empty database on the session's PostgreSQL server."""
    return str(pg_server.database())


def pytest_unconfigure(config: pytest.Config) -> None:
    """Objects that leak until the very end of the session (a socket, a connection) belong to no
    test: pytest checks each test's own after it. Collect them here, before pytest's final sweep,
    and report each on stderr, so a garbage-collection order at exit neither fails the run nor
    goes unseen."""
    previous = sys.unraisablehook

    def report(u: Any) -> None:
        sys.stderr.write(f"tests: left open until the end of the session: {u.exc_value!r}\n")

    sys.unraisablehook = report
    try:
        for _ in range(5):
            gc.collect()
    finally:
        sys.unraisablehook = previous
