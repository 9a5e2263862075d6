"""``llmgw serve --workers N``: N daemon processes on one machine sharing one port and one home.

Owns ``supervise``: the parent process binds nothing that accepts connections; it starts N
``llmgw serve --worker I`` children that each listen on the same address with ``SO_REUSEPORT``
(the kernel spreads new connections over them), relays their log lines with a ``worker I:``
prefix, restarts a worker that dies (after a second), and on SIGTERM/SIGINT passes the signal on
and waits for every worker to drain and exit.

What the workers share: the home (one SQLite database: definitions, one ledger that every
worker's writer commits to under SQLite's write lock, roll-ups in ``BEGIN IMMEDIATE``
transactions, idempotency records) and the cluster state in Redis (budgets, rate limits,
in-flight ``Idempotency-Key`` claims), which is why ``--workers`` above 1 needs ``[cluster]``:
without it each process would admit a full budget. Per worker: its event loop, its response cache
index (``cache.w<I>.usearch``; the entries table is shared), its budget slices. Only worker 0
delivers the webhook backlog left by an earlier run and runs the hourly retention check.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import ResourceError

READY = re.compile(r"listening on (http://\S+)")
RESTART_DELAY_S = 1.0


def reserve_port(host: str, port: int) -> tuple[int, socket.socket]:
    """A port every worker can bind with ``SO_REUSEPORT``: ``port``, or a free one for 0. The socket
    is bound but never listens (so it gets no connections); it keeps the port until the workers have it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
    except OSError as e:
        s.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ResourceError(f"cannot listen on {where}: {e.strerror or e}") from e
    return int(s.getsockname()[1]), s


class _Worker:
    def __init__(self, index: int, argv: list[str]) -> None:
        self.index, self.argv = index, argv
        self.proc: subprocess.Popen[str] | None = None
        self.ready = threading.Event()
        self.restarts = 0

    def start(self) -> None:
        self.ready.clear()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        threading.Thread(target=self._relay, args=(self.proc,), daemon=True).start()

    def _relay(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if not self.ready.is_set() and READY.search(line):
                self.ready.set()
                continue  # the supervisor prints one listening line for all
            sys.stderr.write(f"worker {self.index}: {line}")
            sys.stderr.flush()


def supervise(argv: list[str], workers: int, host: str, port: int, *,
              on_ready: Callable[[str, int], None], drain_timeout: float) -> int:
    """Run ``workers`` children of ``argv`` (an ``llmgw serve`` command line without host, port and
    worker options) on one port until SIGTERM/SIGINT; returns the exit status."""
    bound, holder = reserve_port(host, port)
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    pool = [_Worker(i, [*argv, "--host", host, "--port", str(bound), "--worker", str(i)]) for i in range(workers)]
    try:
        for w in pool:
            w.start()
        deadline = time.monotonic() + 120
        while not all(w.ready.is_set() for w in pool):
            dead = [w for w in pool if w.proc is not None and w.proc.poll() is not None]
            if dead or stopping.is_set() or time.monotonic() > deadline:
                why = (f"worker {dead[0].index} exited with status {dead[0].proc.returncode}" if dead  # type: ignore[union-attr]
                       else "stopped" if stopping.is_set() else "timed out")
                sys.stderr.write(f"llmgw: error: the workers did not start: {why}\n")
                return 1
            time.sleep(0.05)
        holder.close()  # every worker holds the port now
        on_ready(host, bound)
        while not stopping.is_set():
            for w in pool:
                if w.proc is not None and w.proc.poll() is not None and not stopping.is_set():
                    sys.stderr.write(f"llmgw: worker {w.index} (pid {w.proc.pid}) exited with status "
                                     f"{w.proc.returncode}; restarting it in {RESTART_DELAY_S:g} s\n")
                    sys.stderr.flush()
                    if _pause(stopping, RESTART_DELAY_S):
                        break
                    w.restarts += 1
                    w.start()
            _pause(stopping, 0.2)
        return 0
    finally:
        holder.close()
        for w in pool:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + drain_timeout + 30
        for w in pool:
            if w.proc is None:
                continue
            try:
                w.proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(10)
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _pause(stopping: threading.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``stopping``; True once it is set. Polls with ``time.sleep``
    rather than ``Event.wait(timeout)``: under libfaketime (the suite's any-instant check) a timed
    lock wait never times out, and the supervisor would stop restarting workers."""
    end = time.monotonic() + seconds
    while not stopping.is_set() and time.monotonic() < end:
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
    return stopping.is_set()


def worker_argv(config: Path | None, home: Path, demo: bool) -> list[str]:
    """The ``llmgw serve`` command line of a worker (host, port and ``--worker`` are added)."""
    argv = [sys.executable, "-m", "llmgw", "serve", "--home", str(home)]
    if config is not None:
        argv += ["--config", os.fspath(config)]
    if demo:
        argv.append("--demo")
    return argv
