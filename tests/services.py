"""Throwaway real services for tests: a ``redis-server`` on a free loopback port.

Started by the tests themselves and stopped after them; a test that needs a missing binary is
skipped with the reason printed (CI installs them all in ``.ci/run``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
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
