"""Throwaway real services for tests: a ``redis-server`` and a PostgreSQL server on free loopback ports.

Started by the tests themselves and stopped after them; a test that needs a missing binary is
skipped with the reason printed (CI installs them all in ``.ci/run``)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on a fixed free loopback port (no persistence): ``stop`` and
    ``start`` again restart it empty on the same port (the restart tests)."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server not installed (apt-get install redis-server; .ci/run does)")
        self.redis = pytest.importorskip("redis", reason="redis-py not installed (the test extra has it)")
        self.binary, self.tmp, self.port = binary, tmp, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        # the real clock for the server (the leases run on Redis's own TIME): under libfaketime's
        # LD_PRELOAD (the suite's any-instant check) redis-server never answers
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("FAKETIME")}
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.tmp), "--protected-mode", "yes"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        client = self.redis.Redis.from_url(self.url, socket_timeout=1)
        proc = self.proc

        def up() -> bool:
            try:
                return bool(client.ping())
            except self.redis.ConnectionError:
                assert proc.poll() is None, "redis-server exited"
                return False

        try:
            wait_until(up, 20, "redis-server to answer PING")
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None


def redis_server(tmp: Path) -> Iterator[str]:
    """Yield the URL of a fresh redis-server (no persistence), stopped afterwards."""
    server = RedisServer(tmp)
    try:
        yield server.start().url
    finally:
        server.stop()


def _pg_bindir() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PgServer:
    """A running PostgreSQL: ``url`` of its ``postgres`` database (password auth over TCP);
    ``database()`` makes a fresh database and returns its URL."""

    url: str
    port: int
    password: str
    datadir: Path
    as_user: list[str]
    bindir: Path
    options: str = ""  # pg_ctl -o: what a restart after ``pg_ctl stop`` needs again
    _count: int = 0

    def database(self) -> str:
        import psycopg

        self._count += 1
        name = f"t{os.getpid()}_{self._count}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url.rsplit("/", 1)[0] + "/" + name

    def pg_ctl(self, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_real_clock_env())


def _real_clock_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("FAKETIME")}


def postgres_server(tmp: Path | None = None) -> Iterator[PgServer]:
    """Yield a fresh PostgreSQL server (``initdb`` + ``pg_ctl`` into a temp dir owned by the
    ``postgres`` user when run as root; unix socket in that dir, 127.0.0.1 on a free port, password
    auth), stopped with ``pg_ctl stop -m fast`` and removed afterwards. ``tmp`` is ignored for the data
    directory (pytest's temp dirs are private to root): the server gets a directory of its own."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed "
                    "(apt-get install postgresql; .ci/run does)")
    pytest.importorskip("psycopg", reason="psycopg not installed (the test extra has it)")
    import psycopg

    base = Path(tempfile.mkdtemp(prefix="llmgw-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base, ignore_errors=True)
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        runuser = shutil.which("runuser")
        as_user = [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-s", "/bin/sh", "-c"]
        if not runuser:
            pytest.skip("runuser not found (util-linux)")
    password = secrets.token_hex(12)
    pwfile = base / "pw"
    pwfile.write_text(password + "\n")
    if as_user:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    datadir = base / "data"
    env = _real_clock_env()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    port = free_port()
    opts = (f"-k {base} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
            " -c max_connections=200")
    server = PgServer(f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres", port, password, datadir,
                      as_user, bindir, opts)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(base / "log"), "-o", opts,
                    "-w", "-t", "30", "start"], check=True, stdout=subprocess.DEVNULL, env=env)

    def up() -> bool:
        try:
            psycopg.connect(server.url, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    try:
        wait_until(up, 30, "PostgreSQL to accept connections")
        yield server
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(datadir), "stop", "-m", "fast", "-w"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        shutil.rmtree(base, ignore_errors=True)
