"""The fault suite (issue 13): ``llmgw serve`` as a subprocess under load while things break.

- SIGKILL of the daemon under load: every answer a client received fully is in the ledger.
- SIGKILL of the ledger writer process under load: the writer comes back by itself; every provider
  call has its row, and requests that met the writer down were refused with a typed 503 before any
  upstream attempt.
- A full disk (a small tmpfs, where root can mount one; skipped with the reason otherwise): the
  daemon refuses with 503 and ``/healthz`` says so; rows of requests already answered are retried
  until space is back, none is lost; ``serve`` on a full disk prints one ``llmgw: error:`` line and
  exits 2.
- A ``BEGIN EXCLUSIVE`` held by another process under load: the same, no row lost.
- An upstream that reports absurd usage: the row is still written, its integers clamped.
- The home and its files are created private (0700/0600) by ``serve``.

The upstream is tests/fake_upstream.py (delays, stalls) or, for absurd usage, a small aiohttp app.
Nothing here asserts on time: waits poll for a state, with generous limits.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from conftest import UPSTREAM_ENV, upstream_config, wait_until
from llmgw import paths
from llmgw.governance.bounds import MAX_TOKENS
from llmgw.governance.keys import mint
from llmgw.store import db as store_db
from llmgw.units import MAX_NANOS

CHAT = "/v1/chat/completions"
MODEL = "openai/gpt-4o-mini"


class Served:
    """``llmgw serve`` in a subprocess on an ephemeral port, its stderr collected."""

    def __init__(self, home: Path, config_text: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        cfg = home / "llmgw.toml"
        cfg.write_text(config_text)
        conn = store_db.open_db(paths.db_path(home))
        try:
            with conn:
                self.key = mint(conn, name="fault", replace=True)[0]
        finally:
            conn.close()
        self.p = subprocess.Popen(
            [sys.executable, "-m", "llmgw", "serve", "--port", "0", "--home", str(home), "--config", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.url = ""
        assert self.p.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.p.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if m:
                self.url = m.group(1)
                break
        if not self.url:
            self.p.kill()
            raise AssertionError("daemon did not start:\n" + "".join(self.lines))
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.lines.append(line)

    def writer_pid(self) -> int:
        """The ledger writer process: the daemon's child running store.writer_proc."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat_line.rsplit(")", 1)[1].split()[1])
            if ppid == self.p.pid and b"writer_proc" in cmd:
                return int(entry)
        raise AssertionError("no writer process")

    def health(self) -> int:
        try:
            return httpx.get(self.url + "/healthz", timeout=10).status_code
        except httpx.HTTPError:
            return 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self._drainer.join(10)
        if self.p.stderr is not None and not self.p.stderr.closed:
            self.p.stderr.close()

    def ledger(self) -> list[dict[str, Any]]:
        conn = sqlite3.connect(paths.db_path(self.home))
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM ledger ORDER BY id")]
        finally:
            conn.close()


@pytest.fixture
def served() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for s in started:
        s.stop(signal.SIGKILL)


class Load:
    """``workers`` clients posting chat completions in a loop (in a thread) until ``stop``, half of
    them streaming; each finished exchange is kept as (x-request-id or None, status, error code or
    None). A stream counts as delivered (200) only if it ended with ``[DONE]``; one that ended with
    an error event counts as 503 with the event's code."""

    def __init__(self, url: str, key: str, workers: int = 16, streams: bool = True) -> None:
        self.url, self.key, self.workers, self.streams = url, key, workers, streams
        self.results: list[tuple[str | None, int, str | None]] = []
        self.broken = 0  # exchanges that failed at the transport (the daemon killed under them)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _worker(self, c: httpx.AsyncClient, w: int) -> None:
        i = 0
        stream = self.streams and w % 2 == 1  # with ``streams``, every other worker streams
        while not self._stop.is_set():
            i += 1
            body = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": f"load {w} {i}"}]}
            if stream:
                body.update(stream=True, stream_options={"include_usage": True})
            try:
                async with c.stream("POST", self.url + CHAT, headers={"Authorization": f"Bearer {self.key}"},
                                    json=body) as r:
                    text = (await r.aread()).decode()
            except httpx.HTTPError:
                self.broken += 1
                await asyncio.sleep(0.05)
                continue
            code = None
            status = r.status_code
            if status != 200:
                try:
                    code = orjson.loads(text)["error"]["code"]
                except Exception:
                    code = "<not json>"
            elif stream and not text.rstrip().endswith("data: [DONE]"):
                # a stream that ended without [DONE]: not delivered; it carries the error event
                m = re.search(r'"code":\s*"([a-z_]+)"', text)
                status, code = 503, m.group(1) if m else "<stream cut>"
            self.results.append((r.headers.get("x-request-id"), status, code))

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=self.workers)) as c:
            await asyncio.gather(*[self._worker(c, w) for w in range(self.workers)])

    def count(self, status: int | None = None) -> int:
        return sum(1 for _, s, _ in self.results if status is None or s == status)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


def chat_calls(upstream: Any) -> int:
    return sum(1 for r in upstream.requests if r["path"] == CHAT)


def assert_no_provider_call_without_its_row(load: Load, rows: list[dict[str, Any]], upstream_attempts: int) -> None:
    ids = [r["request_id"] for r in rows]
    codes: dict[str, int] = {}
    for _, st, code in load.results:
        codes[f"{st} {code or ''}".strip()] = codes.get(f"{st} {code or ''}".strip(), 0) + 1
    print(f"answers {codes}, transport errors {load.broken}, rows {len(rows)}, upstream attempts {upstream_attempts}")
    assert len(ids) == len(set(ids)), "a row was written twice"
    delivered = {rid for rid, s, _ in load.results if s == 200}
    assert delivered <= set(ids), f"{len(delivered - set(ids))} delivered answers have no row"
    # every attempt the provider received belongs to a row that says so
    assert sum(r["attempts"] for r in rows) == upstream_attempts
    odd = {(s, c) for _, s, c in load.results if s != 200} - {(503, "ledger_unavailable"), (503, "ledger_timeout")}
    assert not odd, f"unexpected answers: {odd}"


# ---- SIGKILL ---------------------------------------------------------------------------------------


def test_sigkill_under_load_keeps_every_delivered_answer(tmp_path: Path, upstream: Any, served: list[Served]) -> None:
    home = tmp_path / "home"
    delivered: set[str] = set()
    for _ in range(2):
        s = Served(home, upstream_config(upstream), UPSTREAM_ENV)
        served.append(s)
        load = Load(s.url, s.key)
        wait_until(lambda: load.count(200) >= 150, 120, "answers under load")  # noqa: B023
        s.p.kill()  # SIGKILL in the middle of the load
        s.p.wait(30)
        load.stop()
        delivered |= {rid for rid, st, _ in load.results if st == 200 and rid}
    rows = {r["request_id"] for r in Served.ledger(s)}
    assert delivered and delivered <= rows, f"{len(delivered - rows)} delivered answers have no row"


def test_a_killed_writer_comes_back_and_no_provider_call_loses_its_row(tmp_path: Path, upstream: Any,
                                                                       served: list[Served]) -> None:
    s = Served(tmp_path / "home", upstream_config(upstream), UPSTREAM_ENV)
    served.append(s)
    before = chat_calls(upstream)
    load = Load(s.url, s.key)
    try:
        for round_ in range(3):
            wait_until(lambda: load.count(200) >= 100 * (round_ + 1), 120, "answers under load")  # noqa: B023
            first = s.writer_pid()
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: s.health() == 200 and s.writer_pid() != first, 60,  # noqa: B023
                       "the writer to be restarted")
    finally:
        load.stop()
    assert s.health() == 200
    s.stop()  # graceful: everything queued is committed
    assert s.p.returncode == 0
    assert_no_provider_call_without_its_row(load, s.ledger(), chat_calls(upstream) - before)
    assert sum("ledger writer restarted" in line for line in s.lines) == 3


# ---- a held lock ------------------------------------------------------------------------------------


def test_a_held_exclusive_lock_under_load_loses_no_row(tmp_path: Path, upstream: Any, served: list[Served]) -> None:
    s = Served(tmp_path / "home", upstream_config(upstream, "[server]\nrequest_timeout = 5\n"), UPSTREAM_ENV)
    served.append(s)
    before = chat_calls(upstream)
    load = Load(s.url, s.key, workers=8)
    holder = sqlite3.connect(paths.db_path(s.home), isolation_level=None, timeout=30)
    try:
        wait_until(lambda: load.count(200) >= 50, 120, "answers under load")
        holder.execute("BEGIN EXCLUSIVE")
        try:
            wait_until(lambda: s.health() == 503, 60, "the daemon to report the locked ledger")
            refused = load.count(503)
            wait_until(lambda: load.count(503) > refused + 20, 60, "refusals while locked")
        finally:
            holder.execute("COMMIT")
        wait_until(lambda: s.health() == 200, 60, "the writer to commit again")
        served_again = load.count(200)
        wait_until(lambda: load.count(200) > served_again + 20, 60, "answers after the lock")
    finally:
        holder.close()
        load.stop()
    s.stop()
    assert_no_provider_call_without_its_row(load, s.ledger(), chat_calls(upstream) - before)
    assert any("database is locked" in line for line in s.lines)


# ---- a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (root only); skipped, with the reason printed, where it cannot be mounted."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        print("SKIP reason: mounting a tmpfs needs root and mount(8)")
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"SKIP reason: cannot mount a tmpfs here: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk``; remove the returned file to give them back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 4096, 512, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_refuses_requests_and_loses_no_row(small_disk: Path, upstream: Any, served: list[Served]) -> None:
    s = Served(small_disk / "home", upstream_config(upstream, "[server]\nrequest_timeout = 4\n"), UPSTREAM_ENV)
    served.append(s)
    before = chat_calls(upstream)
    load = Load(s.url, s.key, workers=4)
    try:
        wait_until(lambda: load.count(200) >= 20, 120, "answers before the disk fills")
        filler = fill(small_disk)
        wait_until(lambda: s.health() == 503, 120, "the daemon to report the full disk")
        refused = load.count(503)
        wait_until(lambda: load.count(503) > refused + 20, 60, "refusals while full")
        assert any("full" in line or "disk" in line for line in s.lines if "cannot commit" in line)
        filler.unlink()
        wait_until(lambda: s.health() == 200, 60, "the writer to commit again")
        again = load.count(200)
        wait_until(lambda: load.count(200) > again + 20, 60, "answers after space is back")
    finally:
        load.stop()
    s.stop()
    assert_no_provider_call_without_its_row(load, s.ledger(), chat_calls(upstream) - before)


def test_serve_on_a_full_disk_is_one_error_line(small_disk: Path) -> None:
    existing = small_disk / "existing"
    conn = store_db.open_db(paths.db_path(existing))
    conn.close()
    fill(small_disk)
    for home in (small_disk / "fresh", existing):
        r = subprocess.run([sys.executable, "-m", "llmgw", "serve", "--port", "0", "--home", str(home)],
                           capture_output=True, text=True, timeout=60, env={**os.environ})
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("llmgw: error: "), r.stderr
        assert "Traceback" not in r.stderr


# ---- absurd numbers from an upstream ----------------------------------------------------------------


@pytest.fixture
def absurd_upstream() -> Iterator[str]:
    """An OpenAI-compatible upstream whose usage numbers are absurd (beyond 64 bits, negative)."""
    from aiohttp import web

    usage = {"prompt_tokens": 10**30, "completion_tokens": -3, "total_tokens": 10**30,
             "prompt_tokens_details": {"cached_tokens": 2**62}}

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        msg = {"role": "assistant", "content": "ok"}
        if body.get("stream"):
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            import json

            head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
            await resp.write(f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': msg}]})}\n\n".encode())
            await resp.write(f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n".encode())
            await resp.write(f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.json_response({"id": "c1", "object": "chat.completion", "created": 1, "model": body["model"],
                                  "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
                                  "usage": usage})

    box: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        box["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        box["loop"], box["runner"] = loop, runner
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{box['port']}/v1"
    box["loop"].call_soon_threadsafe(box["loop"].stop)
    t.join(10)


def test_absurd_upstream_usage_is_recorded_clamped(daemon_factory: Any, absurd_upstream: str) -> None:
    d = daemon_factory(f'[providers.openai]\ntype = "openai"\nbase_url = "{absurd_upstream}"\n'
                       'api_key_env = "K"\n', {"K": "sk-x"})
    auth = {"Authorization": f"Bearer {d.key}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(d.url + CHAT, headers=auth, json=body, timeout=30).status_code == 200
    with httpx.stream("POST", d.url + CHAT, headers=auth, timeout=30,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        text = "".join(r.iter_text())
    assert "[DONE]" in text
    rows = d.ledger()
    assert len(rows) == 2
    for row in rows:
        assert row["status"] == 200
        assert row["prompt_tokens"] == MAX_TOKENS and row["completion_tokens"] == 0
        assert row["cached_tokens"] == MAX_TOKENS
        assert 0 < row["cost_nanos"] <= MAX_NANOS


# ---- file modes ------------------------------------------------------------------------------------


def test_serve_creates_a_private_home(tmp_path: Path) -> None:
    home = tmp_path / "private"  # serve creates it: nothing here touches it first
    cfg = tmp_path / "llmgw.toml"
    cfg.write_text('[providers.demo]\ntype = "demo"\n\n[cache]\nmode = "semantic"\n')
    old = os.umask(0o022)  # the usual default: serve must not depend on a strict one
    try:
        p = subprocess.Popen([sys.executable, "-m", "llmgw", "serve", "--port", "0", "--demo", "--home", str(home),
                              "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    finally:
        os.umask(old)
    try:
        assert p.stderr is not None
        url = key = ""
        for line in p.stderr:
            if m := re.search(r"listening on (http://[\d.]+:\d+)", line):
                url = m.group(1)
            if m := re.search(r"demo key: (\S+)", line):
                key = m.group(1)
            if url and key:
                break
        assert url and key
        for text in ("private prompt", "private prompt"):
            r = httpx.post(url + CHAT, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                           json={"model": "demo/echo", "messages": [{"role": "user", "content": text}]})
            assert r.status_code == 200
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(60)
        if p.stderr:
            p.stderr.close()
    db = paths.db_path(home)
    files = [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), paths.cache_index_path(home)) if p.exists()]
    assert db in files and paths.cache_index_path(home) in files
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
