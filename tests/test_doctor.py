"""``llmgw doctor``, run as the real command in a subprocess: one ``ok|warn|fail  CHECK: DETAIL`` line
per check, exit 1 exactly when a check failed, plain words (no traceback, never a key's value), and
provider reachability against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from fake_upstream import FakeUpstream
from llmgw.store import db as store_db

_SCRUB = ("LLMGW_CONFIG", "LLMGW_HOME", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL",
          "ANTHROPIC_BASE_URL")
LINE = re.compile(r"^(ok|warn|fail) {1,4} ?[^ :][^:]*: .+$")
DEMO_ONLY = '[providers.demo]\ntype = "demo"\n'
GOOD_KEY = "sk-doctor-good-0123456789"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout ---\n{self.out}\n--- stderr ---\n{self.err}"

    def lines(self, status: str | None = None, check: str | None = None) -> list[str]:
        out = []
        for line in self.out.splitlines():
            st, _, rest = line.partition(" ")
            name = rest.strip().split(": ", 1)[0]
            if (status is None or st == status) and (check is None or name == check):
                out.append(line)
        return out


@dataclass
class Doctor:
    home: Path
    tmp: Path

    def config(self, text: str) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        path = self.home / "llmgw.toml"
        path.write_text(text)
        return path

    def make_db(self) -> Path:
        path = self.home / "llmgw.db"
        store_db.open_db(path).close()
        return path

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        environ = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        environ.update(LLMGW_HOME=str(self.home), XDG_DATA_HOME=str(self.tmp / "xdg"), COLUMNS="200")
        environ.update(env or {})
        proc = subprocess.run([sys.executable, "-m", "llmgw", "doctor", *args], env=environ, cwd=self.tmp,
                              capture_output=True, text=True, timeout=60)
        res = Result(proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in res.out + res.err, res
        if "--json" not in args:
            for line in res.out.splitlines():
                assert LINE.match(line), (line, str(res))
        # exit status and the failed lines agree; a failure is summed up once on stderr
        fails = [c for c in self.checks(res) if c["status"] == "fail"]
        assert res.code == (1 if fails else 0), res
        if fails:
            assert res.err == f"llmgw: error: doctor: {len(fails)} check(s) failed\n", res
        return res

    @staticmethod
    def checks(res: Result) -> list[dict[str, str]]:
        if res.out.startswith("["):
            return list(json.loads(res.out))
        out = []
        for line in res.out.splitlines():
            status, _, rest = line.partition(" ")
            check, _, detail = rest.strip().partition(": ")
            out.append({"check": check, "status": status, "detail": detail})
        return out


@pytest.fixture
def doctor(tmp_path: Path) -> Doctor:
    return Doctor(home=tmp_path / "home", tmp=tmp_path)


# ---- a small OpenAI-compatible server ------------------------------------------------------------


@dataclass
class ModelsServer:
    url: str  # the base_url, ending in /v1
    seen: list[dict[str, str]]


@contextlib.contextmanager
def models_server(key: str = GOOD_KEY, delay: float = 0.0) -> Iterator[ModelsServer]:
    """GET /v1/models on 127.0.0.1, answering 200 with two models to ``Bearer <key>``, else 401."""
    seen: list[dict[str, str]] = []

    async def models(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        if delay:
            await asyncio.sleep(delay)
        if request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": {"message": "Incorrect API key provided", "type":
                                                "invalid_request_error", "code": "invalid_api_key"}}, status=401)
        return web.json_response({"object": "list", "data": [{"id": "local-7b", "object": "model"},
                                                             {"id": "local-70b", "object": "model"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]  # e.g. a handler still sleeping
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_default_executor())

    thread = threading.Thread(target=run, name="models-server", daemon=True)
    thread.start()
    try:
        yield ModelsServer(f"http://127.0.0.1:{port}/v1", seen)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        loop.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_provider(url: str, key_env: str | None = "LOCAL_KEY") -> str:
    key = f'api_key_env = "{key_env}"\n' if key_env else ""
    return f'[providers.local]\ntype = "openai"\nbase_url = "{url}"\n{key}\n[providers.demo]\ntype = "demo"\n'


# ---- healthy --------------------------------------------------------------------------------------


def test_healthy_home_with_the_demo_provider_passes(doctor: Doctor) -> None:
    doctor.config(DEMO_ONLY)
    db = doctor.make_db()
    res = doctor()
    assert res.code == 0, res
    assert res.err == ""
    assert res.lines("fail") == [] and res.lines("warn") == [], res
    checks = {c["check"]: c["detail"] for c in doctor.checks(res)}
    assert checks["config"] == f"{doctor.home / 'llmgw.toml'}: valid"
    assert checks["database"] == f"{db}: integrity check ok"
    assert checks["migrations"] == f"current ({len(store_db.MIGRATIONS)} applied)"
    assert checks["ledger"] == "0 row(s)"
    assert "wal" in checks
    assert checks["provider demo"].startswith("built-in demo provider")
    assert checks["cache index"] == "no semantic cache index (cache not in use)"


def test_offline_with_default_providers_passes_and_makes_no_call(doctor: Doctor) -> None:
    doctor.make_db()
    res = doctor("--offline", env={"OPENAI_API_KEY": "sk-secret-value-1"})
    assert res.code == 0, res
    assert res.lines("ok", "provider openai key") == ["ok    provider openai key: OPENAI_API_KEY set"]
    assert res.lines("ok", "provider openai reachable") == ["ok    provider openai reachable: not checked (--offline)"]
    assert res.lines("warn", "provider anthropic key") == [
        "warn  provider anthropic key: ANTHROPIC_API_KEY not set: requests routed to anthropic will fail"]
    assert "sk-secret-value-1" not in res.out + res.err


def test_json_lists_every_check(doctor: Doctor) -> None:
    doctor.config(DEMO_ONLY)
    doctor.make_db()
    res = doctor("--json")
    doc = json.loads(res.out)
    assert isinstance(doc, list) and all(set(c) == {"check", "status", "detail"} for c in doc)
    assert [c["check"] for c in doc] == ["home", "daemon", "config", "database", "migrations", "ledger", "wal",
                                         "provider demo", "cache index"]
    assert {c["status"] for c in doc} == {"ok"}


def test_doctor_only_reads(doctor: Doctor) -> None:
    """On a fresh home nothing is created: no database, no directory; a missing database is a warning."""
    res = doctor("--offline")
    assert res.code == 0, res
    assert not doctor.home.exists()
    assert res.lines("warn", "home") and res.lines("warn", "database"), res


def test_cache_index_present_is_reported(doctor: Doctor) -> None:
    doctor.config(DEMO_ONLY)
    doctor.make_db()
    (doctor.home / "cache.usearch").write_bytes(b"\0" * 2048)
    res = doctor()
    assert res.lines("ok", "cache index") == [f"ok    cache index: {doctor.home / 'cache.usearch'} present (2.0 KiB)"]


# ---- what is wrong, in plain words ----------------------------------------------------------------


def test_broken_config_names_the_key_and_fails(doctor: Doctor) -> None:
    path = doctor.config('[providers.openai]\ntimeout = "soon"\n\n[server]\nprot = 8080\n')
    doctor.make_db()
    res = doctor()
    assert res.code == 1, res
    fails = res.lines("fail", "config")
    assert f"fail  config: {path}: providers.openai.timeout: expected a number, got \"soon\"" in fails, res
    assert any("server.prot: unknown key; did you mean \"port\"?" in line for line in fails), res
    assert res.lines("warn", "providers") == [
        "warn  providers: not checked: the config file has problems (see above)"]
    assert res.lines("ok", "database"), res  # the other checks still ran


def test_missing_named_config_fails(doctor: Doctor) -> None:
    res = doctor("--config", str(doctor.tmp / "nope.toml"), "--offline")
    assert res.lines("fail", "config") == [f"fail  config: {doctor.tmp / 'nope.toml'}: config file not found"]


def test_corrupt_database_fails_without_traceback(doctor: Doctor) -> None:
    doctor.config(DEMO_ONLY)
    doctor.home.mkdir(parents=True, exist_ok=True)
    (doctor.home / "llmgw.db").write_bytes(b"this is not a database, just garbage " * 200)
    res = doctor()
    assert res.code == 1, res
    (line,) = res.lines("fail", "database")
    assert line == (f"fail  database: {doctor.home / 'llmgw.db'}: not an SQLite database; restore a backup, "
                    "or move the file away to start afresh"), res
    assert res.lines("ok", "provider demo"), res  # the other checks still ran


def _database_with_filler(doctor: Doctor, *, index: bool) -> Path:
    path = doctor.make_db()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=DELETE")  # everything in the main file, nothing in a WAL
    conn.execute("CREATE TABLE filler (x TEXT)")
    if index:
        conn.execute("CREATE INDEX filler_x ON filler(x)")
    conn.executemany("INSERT INTO filler VALUES (?)", [(f"value-{i:05d}" + "x" * 200,) for i in range(300)])
    conn.commit()
    conn.close()
    return path


def test_table_and_index_disagreeing_fail_the_integrity_check(doctor: Doctor) -> None:
    doctor.config(DEMO_ONLY)
    path = _database_with_filler(doctor, index=True)
    data = path.read_bytes()
    assert data.count(b"value-00042") == 2  # once in the table, once in the index
    path.write_bytes(data.replace(b"value-00042", b"value-99942", 1))
    res = doctor()
    assert res.code == 1, res
    (line,) = res.lines("fail", "database")
    assert "integrity check found" in line and "missing from index filler_x" in line, res
    assert line.endswith("(restore a backup; 'sqlite3 llmgw.db .recover' may save the rest)"), res


def test_scribbled_page_fails_without_traceback(doctor: Doctor) -> None:
    doctor.config(DEMO_ONLY)
    path = _database_with_filler(doctor, index=False)
    data = bytearray(path.read_bytes())
    data[4096 * 10: 4096 * 10 + 200] = b"\xff" * 200  # a b-tree page's header
    path.write_bytes(bytes(data))
    res = doctor()
    assert res.code == 1, res
    (line,) = res.lines("fail", "database")
    assert "damaged or unreadable" in line or "integrity check found" in line, res


def test_pending_migrations_are_a_warning(doctor: Doctor) -> None:
    doctor.config(DEMO_ONLY)
    path = doctor.make_db()
    conn = sqlite3.connect(path)
    conn.execute(f"DELETE FROM {store_db.MIGRATIONS_TABLE} WHERE name = ?", (store_db.MIGRATIONS[-1].__name__,))
    conn.commit()
    conn.close()
    res = doctor()
    assert res.code == 0, res
    (line,) = res.lines("warn", "migrations")
    assert f"1 pending ({store_db.MIGRATIONS[-1].__name__})" in line


def test_unreachable_provider_fails_in_plain_words(doctor: Doctor) -> None:
    port = closed_port()
    doctor.config(local_provider(f"http://127.0.0.1:{port}/v1"))
    doctor.make_db()
    res = doctor(env={"LOCAL_KEY": GOOD_KEY})
    assert res.code == 1, res
    assert res.lines("fail", "provider local reachable") == [
        f"fail  provider local reachable: GET http://127.0.0.1:{port}/v1/models: cannot connect to "
        f"127.0.0.1:{port} (connection refused); is the server running?"], res
    assert GOOD_KEY not in res.out + res.err


def test_openai_compatible_server_is_reachable(doctor: Doctor) -> None:
    with models_server() as server:
        doctor.config(local_provider(server.url))
        doctor.make_db()
        res = doctor(env={"LOCAL_KEY": GOOD_KEY})
    assert res.code == 0, res
    assert res.lines("ok", "provider local key") == ["ok    provider local key: LOCAL_KEY set"]
    assert res.lines("ok", "provider local reachable") == [
        f"ok    provider local reachable: GET {server.url}/models answered 200 with the key in LOCAL_KEY "
        "(2 model(s) listed)"], res
    assert server.seen and server.seen[0]["authorization"] == f"Bearer {GOOD_KEY}"
    assert GOOD_KEY not in res.out + res.err


def test_refused_key_fails_and_is_not_printed(doctor: Doctor) -> None:
    with models_server() as server:
        doctor.config(local_provider(server.url))
        res = doctor("--offline", env={"LOCAL_KEY": "sk-wrong-key-42"})
        assert res.code == 0 and not server.seen, res  # --offline: no call made
        res = doctor(env={"LOCAL_KEY": "sk-wrong-key-42"})
    assert res.code == 1, res
    assert res.lines("fail", "provider local reachable") == [
        f"fail  provider local reachable: GET {server.url}/models answered 401 Unauthorized: the key in "
        "LOCAL_KEY was refused"], res
    assert "sk-wrong-key-42" not in res.out + res.err


def test_provider_without_key_is_called_without_one(doctor: Doctor) -> None:
    with models_server() as server:
        doctor.config(local_provider(server.url, key_env=None))
        res = doctor()
    assert res.lines("ok", "provider local key") == [
        "ok    provider local key: none configured (the server must accept requests without one)"]
    assert res.lines("fail", "provider local reachable") == [
        f"fail  provider local reachable: GET {server.url}/models answered 401 Unauthorized: the server wants "
        "an API key and none is configured (api_key_env)"], res
    assert "authorization" not in server.seen[0]


def test_key_variable_not_set_is_a_warning_and_no_call(doctor: Doctor) -> None:
    with models_server() as server:
        doctor.config(local_provider(server.url))
        res = doctor()
    assert res.code == 0, res
    assert res.lines("warn", "provider local key") == [
        "warn  provider local key: LOCAL_KEY not set: requests routed to local will fail"]
    assert res.lines("warn", "provider local reachable") == [
        "warn  provider local reachable: not checked: no API key to call it with"]
    assert server.seen == []


def test_slow_provider_times_out(doctor: Doctor) -> None:
    with models_server(delay=3.0) as server:
        doctor.config(local_provider(server.url))
        res = doctor("--timeout", "0.3", env={"LOCAL_KEY": GOOD_KEY})
    assert res.code == 1, res
    (line,) = res.lines("fail", "provider local reachable")
    assert line.endswith(f"/models: no answer within 0.3 s (is 127.0.0.1:{server.url.split(':')[2].split('/')[0]} "
                         "up and reachable from here?)"), res


def test_anthropic_provider_is_called_the_anthropic_way(doctor: Doctor, fake: FakeUpstream) -> None:
    fake.reset()
    doctor.config(f'[providers.anthropic]\ntype = "anthropic"\nbase_url = "{fake.url}"\n'
                  'api_key_env = "TEST_ANTHROPIC_KEY"\n')
    res = doctor(env={"TEST_ANTHROPIC_KEY": "sk-ant-doctor"})
    assert res.lines("ok", "provider anthropic reachable") == [
        f"ok    provider anthropic reachable: GET {fake.url}/v1/models answered 200 with the key in "
        "TEST_ANTHROPIC_KEY (2 model(s) listed)"], res
    (req,) = [r for r in fake.requests if r["path"] == "/v1/models"]
    assert req["headers"]["x-api-key"] == "sk-ant-doctor"
    assert req["headers"]["anthropic-version"]
    assert "authorization" not in req["headers"]


def test_every_key_of_a_pool_is_checked(doctor: Doctor) -> None:
    with models_server() as server:
        doctor.config(f'[providers.local]\ntype = "openai"\nbase_url = "{server.url}"\n'
                      'keys = [{ env = "KEY_A" }, { env = "KEY_B" }]\n')
        res = doctor(env={"KEY_A": GOOD_KEY, "KEY_B": "sk-stale"})
    assert res.code == 1, res
    assert len(res.lines("ok", "provider local reachable (KEY_A)")) == 1, res
    (bad,) = res.lines("fail", "provider local reachable (KEY_B)")
    assert "the key in KEY_B was refused" in bad


# ---- is a daemon running on this home? -----------------------------------------------------------


def _drain(f: object) -> None:
    with contextlib.suppress(ValueError, OSError):
        for _ in f:  # type: ignore[attr-defined]
            pass


def _serve(home: Path) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env["LLMGW_HOME"] = str(home)
    p = subprocess.Popen([sys.executable, "-m", "llmgw", "serve", "--port", "0"], env=env, text=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert p.stderr is not None
    for line in p.stderr:
        m = re.search(r"listening on (http://[\d.]+:\d+)", line)
        if m:
            threading.Thread(target=_drain, args=(p.stderr,), daemon=True).start()  # keep the pipe drained
            return p, m.group(1)
    p.kill()
    raise AssertionError("llmgw serve did not start")


def test_doctor_says_whether_a_daemon_runs_on_this_home_and_where(doctor: Doctor) -> None:
    import signal

    doctor.config(DEMO_ONLY)
    doctor.make_db()
    assert doctor("--offline").lines(check="daemon") == ["ok    daemon: none running on this home"]
    p, url = _serve(doctor.home)
    try:
        [line] = doctor("--offline").lines(check="daemon")
        assert line.startswith(f"ok    daemon: running, pid {p.pid}, listening on {url} since 20"), line
        [c] = [c for c in doctor.checks(doctor("--offline", "--json")) if c["check"] == "daemon"]
        assert c["status"] == "ok" and url in c["detail"]
        p.send_signal(signal.SIGTERM)  # a clean stop removes the file
        assert p.wait(30) == 0
        if p.stderr:
            p.stderr.close()
        assert not (doctor.home / "daemon.json").exists()
        assert doctor("--offline").lines(check="daemon") == ["ok    daemon: none running on this home"]
        p, url = _serve(doctor.home)
        p.kill()  # SIGKILL: the file stays behind, and doctor says it is stale
        p.wait(30)
        [line] = doctor("--offline").lines(check="daemon")
        assert line.startswith(f"warn  daemon: not running: {doctor.home / 'daemon.json'} names pid {p.pid}"), line
        assert "stale" in line
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
        if p.stderr:
            p.stderr.close()
