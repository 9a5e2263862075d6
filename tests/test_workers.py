"""``llmgw serve --workers N`` (issue 15): N processes on one port and one home, sharing exact caps
through a real redis-server; a worker that dies is restarted; SIGTERM drains them all."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from conftest import UPSTREAM_ENV, upstream_config, wait_until
from llmgw import paths
from llmgw.cli import daemonfile
from llmgw.governance import hierarchy
from llmgw.governance.budgets import upsert_budget
from llmgw.governance.keys import mint
from llmgw.store import db as store_db
from services import RedisServer

CHAT = "/v1/chat/completions"
CAP = 240_000  # a request reserves ~23.6k nano-dollars (its bound) and costs ~5k


class Supervised:
    """``llmgw serve --workers N`` in a subprocess; its stderr collected."""

    def __init__(self, home: Path, config_text: str, workers: int) -> None:
        home.mkdir(parents=True, exist_ok=True)
        (home / "llmgw.toml").write_text(config_text)
        self.home = home
        self.p = subprocess.Popen([sys.executable, "-m", "llmgw", "serve", "--port", "0", "--home", str(home),
                                   "--workers", str(workers)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env={**os.environ, **UPSTREAM_ENV})
        self.lines: list[str] = []
        self.url = ""
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        wait_until(lambda: self.url or self.p.poll() is not None, 120, "the workers to listen")
        assert self.url, "".join(self.lines)

    def _drain(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.lines.append(line)
            m = re.search(r"^llmgw listening on (http://[\d.]+:\d+)", line)
            if m:
                self.url = m.group(1)

    def pids(self, tries: int = 60) -> set[int]:
        """The worker pids that answer /healthz over fresh connections."""
        seen = set()
        for _ in range(tries):
            with httpx.Client(timeout=10) as c:  # a new connection each time: the kernel picks a worker
                seen.add(c.get(self.url + "/healthz").json()["pid"])
        return seen

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        code = self.p.wait(90)
        self._drainer.join(10)
        assert self.p.stderr is not None
        self.p.stderr.close()
        return code


def test_workers_above_one_need_the_cluster(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "llmgw", "serve", "--port", "0", "--home", str(tmp_path / "h"),
                        "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "llmgw: error: --workers 2:" in r.stderr and "[cluster] redis_url" in r.stderr


def test_two_workers_share_the_port_one_ledger_and_one_cap(tmp_path: Path, upstream: Any) -> None:
    redis = RedisServer(tmp_path).start()
    home = tmp_path / "home"
    conn = store_db.open_db(paths.db_path(home))
    with conn:
        hierarchy.create_customer(conn, "burst")
        key = mint(conn, name="burst", customer_id="burst")[0]
        # a total budget: the workers' clocks are their own, and no window may roll during the burst
        upsert_budget(conn, "customer", "burst", "total", CAP, hard=True)
    conn.close()
    cfg = upstream_config(upstream, f'[cluster]\nredis_url = "{redis.url}"\nsync_interval = 0.1\nlease_ttl = 2\n'
                                    'timeout = 2\n')
    s = Supervised(home, cfg, 2)
    try:
        info = daemonfile.read(home)
        assert info is not None and info["pid"] == s.p.pid and info["url"] == s.url  # doctor sees the supervisor
        workers = s.pids()
        assert len(workers) == 2 and s.p.pid not in workers  # both workers take connections

        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as c:
                return await asyncio.gather(*[
                    c.post(s.url + CHAT, headers={"Authorization": f"Bearer {key}"},
                           json={"model": "openai/gpt-4o-mini", "max_tokens": 10,
                                 "messages": [{"role": "user", "content": f"caption {i}"}]}) for i in range(200)])

        codes = [r.status_code for r in asyncio.run(fire())]
        assert set(codes) <= {200, 429} and codes.count(200) >= 5
        # a worker killed outright is replaced; the other goes on serving meanwhile
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: any("worker" in line and "restarting" in line for line in s.lines), 30, "the restart")
        wait_until(lambda: len(s.pids(20) - {victim}) == 2, 60, "the new worker to take connections")
    finally:
        code = s.stop()
        redis.stop()
    assert code == 0
    assert daemonfile.read(home) is None
    conn = store_db.connect(paths.db_path(home))
    try:
        rows = [dict(r) for r in conn.execute("SELECT status, cost_nanos FROM ledger WHERE customer_id = 'burst'")]
    finally:
        conn.close()
    assert len(rows) == 200  # one ledger, one row per request, whichever worker took it
    assert 0 < sum(r["cost_nanos"] for r in rows) <= CAP
    assert sum(1 for r in rows if r["status"] == 200) == codes.count(200)
    assert sum(1 for r in upstream.requests if r["path"] == CHAT) == codes.count(200)
    assert not [p for p in workers if _alive(p)]  # every worker is gone with the supervisor


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
