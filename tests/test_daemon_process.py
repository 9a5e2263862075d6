"""``llmgw serve`` as a user runs it: a real subprocess, real signals, the ledger on disk."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import UPSTREAM_ENV, upstream_config, wait_until


class Proc:
    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        full_env = {**os.environ, **(env or {}), "LLMGW_HOME": str(home)}
        full_env.pop("LLMGW_CONFIG", None)
        self.p = subprocess.Popen([sys.executable, "-m", "llmgw", "serve", "--port", "0", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
        self.lines: list[str] = []
        self.url = ""
        self.key = ""
        deadline = time.monotonic() + 30
        assert self.p.stderr is not None
        while time.monotonic() < deadline:
            line = self.p.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if m:
                self.url = m.group(1)
            m = re.search(r"demo key: (sk-llmgw-\S+)", line)
            if m:
                self.key = m.group(1)
            if self.url and (self.key or "--demo" not in args) and ("try it" in line or "--demo" not in args):
                break
        if not self.url:
            self.p.kill()
            raise AssertionError("daemon did not start:\n" + "".join(self.lines))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.lines.append(line)

    def ledger(self) -> list[sqlite3.Row]:
        conn = sqlite3.connect(self.home / "llmgw.db")
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute("SELECT * FROM ledger ORDER BY id").fetchall()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        for f in (self.p.stdout, self.p.stderr):
            if f:
                f.close()


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


def chat(url: str, key: str, model: str = "demo/echo", text: str = "hi", timeout: float = 10) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
                      json={"model": model, "messages": [{"role": "user", "content": text}]})


def test_serve_demo_as_a_user_would(tmp_path, procs):
    p = Proc(tmp_path / "home", "--demo")
    procs.append(p)
    assert p.key.startswith("sk-llmgw-")
    r = chat(p.url, p.key, text="Hello!")
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Echo: Hello!"
    assert httpx.get(p.url + "/healthz").json() == {"status": "ok", "pid": p.p.pid}  # the pid: which worker answered
    assert httpx.get(p.url + "/readyz").status_code == 200
    p.p.send_signal(signal.SIGTERM)
    assert p.p.wait(20) == 0
    rows = p.ledger()
    assert len(rows) == 1 and rows[0]["status"] == 200 and rows[0]["completion_tokens"] > 0
    # the key is stored only as a hash
    conn = sqlite3.connect(p.home / "llmgw.db")
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert p.key not in dump
    log_lines = [line for line in p.lines if re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert log_lines and not any(p.key in line for line in log_lines)  # shown in the banner, never logged


def test_completed_responses_survive_sigkill(tmp_path, procs):
    p = Proc(tmp_path / "home", "--demo")
    procs.append(p)
    ids = []
    with httpx.Client(headers={"Authorization": f"Bearer {p.key}"}) as c:
        for i in range(25):
            r = c.post(p.url + "/v1/chat/completions",
                       json={"model": "demo/echo", "messages": [{"role": "user", "content": f"n{i}"}]})
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
    os.kill(p.p.pid, signal.SIGKILL)  # right after the last response was fully received
    p.p.wait(10)
    assert [r["request_id"] for r in p.ledger()] == ids


def test_sigterm_drains_in_flight_requests(tmp_path, procs, upstream):
    home = tmp_path / "home"
    home.mkdir()
    (home / "llmgw.toml").write_text(upstream_config(upstream))
    p = Proc(home, "--demo", env=UPSTREAM_ENV)
    procs.append(p)
    upstream.add_fault(path="/v1/chat/completions", delay=1.5)
    box = {}

    def slow():
        box["r"] = chat(p.url, p.key, model="openai/gpt-4o-mini", text="slow one")

    t = threading.Thread(target=slow)
    t.start()
    deadline = time.monotonic() + 10
    while not upstream.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    p.p.send_signal(signal.SIGTERM)

    host, port = p.url.rsplit("/", 1)[-1].split(":")

    def refused() -> bool:  # a bare TCP connect: no request that could reach the ledger
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except OSError:
            return True
        return False

    wait_until(refused, 10, "the draining daemon to close its listening socket")
    with pytest.raises(httpx.HTTPError):  # no longer accepting
        chat(p.url, p.key, timeout=2)
    t.join(15)
    assert box["r"].status_code == 200  # the in-flight request finished
    assert p.p.wait(20) == 0
    rows = p.ledger()
    assert rows[-1]["model"] == "openai/gpt-4o-mini" and rows[-1]["status"] == 200


def test_bad_config_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[server]\nport = "eighty"\n')
    r = subprocess.run([sys.executable, "-m", "llmgw", "serve", "--config", str(cfg), "--home", str(tmp_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "server.port" in r.stderr and "Traceback" not in r.stderr


def test_a_cache_import_error_never_fails_a_request(tmp_path, procs, upstream):
    """usearch cannot be imported (a broken install, shadowed here by a package that raises
    ImportError) and a key uses the semantic cache: every request still gets its upstream answer
    as a miss; the error is logged once and counted in llmgw_cache_errors_total."""
    import llmgw

    shadow = tmp_path / "shadow"
    (shadow / "usearch").mkdir(parents=True)
    (shadow / "usearch" / "__init__.py").write_text('raise ImportError("usearch is broken in this install")\n')
    src = str(Path(llmgw.__file__).resolve().parents[1])
    env = {**UPSTREAM_ENV, "PYTHONPATH": os.pathsep.join([str(shadow), src])}
    home = tmp_path / "home"
    home.mkdir()
    (home / "llmgw.toml").write_text(upstream_config(upstream, '[cache]\nmode = "exact"\n'))
    made = subprocess.run([sys.executable, "-m", "llmgw", "keys", "create", "--cache", "semantic", "--home", str(home)],
                          capture_output=True, text=True, timeout=30, env={**os.environ, **env})
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    p = Proc(home, env=env)
    procs.append(p)
    for i in range(3):
        r = chat(p.url, key, model="openai/gpt-4o-mini", text=f"caption {i}")
        assert r.status_code == 200, r.text
        assert r.headers["x-llmgw-cache"] == "miss" and r.json()["choices"][0]["message"]["content"]
    metrics = httpx.get(p.url + "/metrics", timeout=10).text
    assert 'llmgw_cache_errors_total{op="lookup"} 3.0' in metrics
    assert 'llmgw_cache_errors_total{op="store"} 3.0' in metrics
    assert 'llmgw_cache_errors_total{op="warm"} 0.0' in metrics

    def logged() -> list[str]:
        return [line for line in list(p.lines) if "response cache" in line]

    deadline = time.monotonic() + 5
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(logged()) == 1 and "usearch is broken in this install" in logged()[0], p.lines
    assert not any("Traceback" in line for line in p.lines), p.lines
    assert [r["status"] for r in p.ledger()] == [200, 200, 200]
