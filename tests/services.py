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


def redis_server(tmp: Path) -> Iterator[str]:
    """Yield the URL of a fresh redis-server (no persistence), stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (apt-get install redis-server; .ci/run does)")
    redis = pytest.importorskip("redis", reason="redis-py not installed (the test extra has it)")
    port = free_port()
    # the real clock for the server (the leases run on Redis's own TIME): under libfaketime's
    # LD_PRELOAD (the suite's any-instant check) redis-server never answers
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("FAKETIME")}
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp), "--protected-mode", "yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            assert proc.poll() is None, "redis-server exited"
            return False

    try:
        wait_until(up, 20, "redis-server to answer PING")
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(20)
