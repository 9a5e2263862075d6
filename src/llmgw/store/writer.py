"""The ledger writer: one process, one connection, group commit.

Owns: every ledger write in the daemon.

Invariants:
- The event loop never touches SQLite: ``submit`` turns the row into a tuple and queues it; rows
  submitted in one event-loop iteration go to the writer process as ONE frame on its stdin (a
  non-blocking pipe write; what the pipe cannot take yet is written when it drains).
- The writer process (``store.writer_proc``) commits rows in order, in batches, and answers each
  commit with one frame: "every row up to N is committed, except these". The daemon reads those
  answers with the event loop's reader on the pipe and resolves the rows' futures there: no
  thread, no GIL hand-offs, no ``call_soon_threadsafe``.
- A future resolves only after its row is committed (visible to other connections and durable
  against a process kill); it carries the exception if its row could not be written (rebuilt as
  the same ``sqlite3`` exception class when there is one).
- A bad row never costs the rest of its batch: if the batch insert fails, rows are retried one
  by one and only the failing rows' futures fail.
- If the writer process dies, every waiting future fails and ``submit`` raises: requests get a
  typed internal error and ``/readyz`` reports the writer down, never a silent loss.
- Commit durations go into ``commit_times`` (a cumulative histogram behind its own lock, updated
  once per commit answer and read once per scrape by ``/metrics``).
- The writer is bound to the event loop of its first ``submit``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import sys
import threading
from bisect import bisect_left
from pathlib import Path
from typing import Any

import orjson

from llmgw.store.db import open_db
from llmgw.store.ledger import as_tuple, normalise_row
from llmgw.store.writer_proc import frame, unframe

log = logging.getLogger("llmgw.ledger")


class LedgerWriteError(RuntimeError):
    """A row could not be written (and no matching ``sqlite3`` exception class exists)."""


def _error(kind: str, message: str) -> BaseException:
    cls = getattr(sqlite3, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(message)
    return LedgerWriteError(f"{kind}: {message}")


#: upper bounds (seconds) of the commit-duration buckets: a commit is ~40 us to a few ms
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class CommitTimes:
    """A cumulative histogram of commit durations, shared between the event loop (``record``)
    and whoever reads it (``snapshot``, e.g. a Prometheus scrape) under one small lock."""

    __slots__ = ("bounds", "_counts", "_sum", "_lock")

    def __init__(self, bounds: tuple[float, ...] = COMMIT_BUCKETS) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self._sum = 0.0
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        i = bisect_left(self.bounds, seconds)
        with self._lock:
            self._counts[i] += 1
            self._sum += seconds

    def snapshot(self) -> tuple[tuple[float, ...], list[int], float]:
        """(bucket upper bounds, per-bucket counts with the +Inf bucket last, sum of durations)."""
        with self._lock:
            return self.bounds, list(self._counts), self._sum


class LedgerWriter:
    def __init__(self, db_path: Path, *, max_batch: int = 512, linger: float = 0.0) -> None:
        self.db_path = Path(db_path)
        self.max_batch = max_batch
        # Rows batch by themselves: whatever arrives while a commit runs goes into the next one.
        # ``linger`` (seconds) makes the writer also wait that long for more rows under concurrent
        # load (the previous batch had more than one row). 0 by default: in its own process the
        # writer's commits cost the event loop nothing, while every request waits for its commit
        # (0.5 ms of linger cost ~10 % of non-stream req/s in bench/run.py).
        self.linger = linger
        self.batches = 0
        self.rows_written = 0
        self.last_commit_seconds = 0.0
        self.commit_times = CommitTimes()
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd_out = -1  # the writer's stdin (we write rows)
        self._fd_in = -1  # the writer's stdout (we read commit answers)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._futures: dict[int, asyncio.Future[None]] = {}
        self._seq = 0  # last sequence number handed out
        self._acked = 0  # last sequence number answered
        self._pending: list[tuple[Any, ...]] = []  # rows of this loop iteration, not yet framed
        self._pending_first = 0
        self._outbuf = bytearray()  # framed rows the pipe could not take yet
        self._inbuf = bytearray()
        self._stopped = False
        self._dead: str | None = None  # why the writer process is gone, if it is
        self._lock = threading.Lock()
        self._waker: asyncio.Event | None = None  # stop() waits on it for the pipe to drain / EOF

    @property
    def queue_depth(self) -> int:
        """Rows submitted but not yet committed or failed."""
        return self._seq - self._acked

    @property
    def alive(self) -> bool:
        return (self._proc is not None and self._dead is None and not self._stopped
                and self._proc.poll() is None)

    def start(self) -> None:
        """Open the database (migrating it) and start the writer process."""
        with self._lock:
            if self._stopped or self._proc is not None:
                raise RuntimeError("LedgerWriter already started or stopped")
            open_db(self.db_path).close()  # migrate here: a bad database fails start(), not a request
            # the same interpreter and the same llmgw as this process: its package directory goes at
            # the END of the child's sys.path (a fallback that never shadows the standard library)
            pkg_root = str(Path(__file__).resolve().parents[2])
            boot = (f"import sys; sys.path.append({pkg_root!r}); "
                    "from llmgw.store.writer_proc import main; main()")
            self._proc = subprocess.Popen(
                [sys.executable, "-c", boot, str(self.db_path), str(self.max_batch), repr(self.linger)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._fd_out = self._proc.stdin.fileno()
            self._fd_in = self._proc.stdout.fileno()
            os.set_blocking(self._fd_out, False)
            os.set_blocking(self._fd_in, False)

    # ---- the event loop side ---------------------------------------------------------------------
    def submit(self, row: dict[str, Any], *, trusted: bool = False) -> asyncio.Future[None]:
        """Queue ``row``; the future resolves once its batch is committed. Call on the event loop.

        Raises ValueError for an invalid row (see ``normalise_row``), RuntimeError if the writer
        is not running. ``trusted`` skips validation for rows the gateway builds itself.
        """
        norm = as_tuple(row) if trusted else as_tuple(normalise_row(row))
        loop = asyncio.get_running_loop()
        if self._proc is None or self._stopped:
            raise RuntimeError("LedgerWriter is not running")
        if self._dead is not None:
            raise RuntimeError(f"ledger writer process is gone: {self._dead}")
        if self._loop is not loop:
            if self._loop is not None:
                raise RuntimeError("LedgerWriter is bound to another event loop")
            self._loop = loop
            loop.add_reader(self._fd_in, self._on_answers)
        fut: asyncio.Future[None] = loop.create_future()
        self._seq += 1
        self._futures[self._seq] = fut
        if not self._pending:
            self._pending_first = self._seq
            loop.call_soon(self._hand_over)
        self._pending.append(norm)
        return fut

    async def write(self, row: dict[str, Any], *, trusted: bool = False) -> None:
        """Submit ``row`` and wait until it is committed."""
        await self.submit(row, trusted=trusted)

    def _hand_over(self) -> None:
        rows, self._pending = self._pending, []
        if not rows or self._dead is not None:
            return
        first = self._pending_first
        try:
            data = frame([first, rows])
        except TypeError:  # a value orjson cannot encode: that row fails alone
            safe: list[tuple[Any, ...] | None] = []
            for i, r in enumerate(rows):
                try:
                    orjson.dumps(r)
                    safe.append(r)
                except TypeError as e:
                    self._resolve_one(first + i, LedgerWriteError(f"row cannot be encoded: {e}"))
                    safe.append(None)  # keeps the numbering; the writer reports it failed, nobody waits
            data = frame([first, safe])
        self._send(data)

    def _send(self, data: bytes) -> None:
        if not data:
            return
        if self._outbuf:
            self._outbuf += data
            return
        try:
            n = os.write(self._fd_out, data)
        except BlockingIOError:
            n = 0
        except OSError as e:  # the writer process is gone
            self._die(f"cannot write to it: {e}")
            return
        if n < len(data):
            self._outbuf += data[n:]
            assert self._loop is not None
            self._loop.add_writer(self._fd_out, self._flush)

    def _flush(self) -> None:
        try:
            n = os.write(self._fd_out, self._outbuf)
        except BlockingIOError:
            return
        except OSError as e:
            self._die(f"cannot write to it: {e}")
            return
        del self._outbuf[:n]
        if not self._outbuf and self._loop is not None:
            self._loop.remove_writer(self._fd_out)
            if self._waker is not None:
                self._waker.set()

    def _on_answers(self) -> None:
        try:
            data = os.read(self._fd_in, 1 << 16)
        except BlockingIOError:
            return
        except OSError as e:
            self._die(f"cannot read from it: {e}")
            return
        if not data:
            self._die("it exited")
            return
        self._inbuf += data
        self._apply(unframe(self._inbuf))

    def _apply(self, answers: list[Any]) -> None:
        for last, failed, seconds in answers:
            errors = {seq: _error(kind, msg) for seq, kind, msg in failed}
            for seq in range(self._acked + 1, last + 1):
                self._resolve_one(seq, errors.get(seq))
            self.rows_written += (last - self._acked) - len(errors)
            self._acked = last
            self.batches += 1
            self.last_commit_seconds = seconds
            self.commit_times.record(seconds)

    def _resolve_one(self, seq: int, exc: BaseException | None) -> None:
        fut = self._futures.pop(seq, None)
        if fut is None or fut.done():  # the awaiting task was cancelled
            return
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)

    def _die(self, why: str) -> None:
        """The writer process is gone: fail everything still waiting, loudly."""
        if self._dead is not None:
            return
        self._dead = why
        if self._waker is not None:
            self._waker.set()
        if not self._stopped:
            log.critical("ledger writer process stopped unexpectedly (%s): requests fail until restart", why)
        self._detach()
        err = RuntimeError(f"ledger writer process is gone ({why}); the row was not written")
        for seq in list(self._futures):
            self._resolve_one(seq, err)

    def _detach(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd_in)
            loop.remove_writer(self._fd_out)

    # ---- stopping ------------------------------------------------------------------------------
    def stop(self, timeout: float = 10.0) -> None:
        """Write and commit everything submitted, stop the writer process. Idempotent.

        Blocks: from the event loop, call it as ``await asyncio.to_thread(writer.stop)`` (called
        on the loop's own thread it still works, but holds the loop until the writer is done).
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        proc = self._proc
        if proc is None:
            return
        loop = self._loop
        on_other_thread = False
        if loop is not None and loop.is_running():
            try:
                on_other_thread = asyncio.get_running_loop() is not loop
            except RuntimeError:
                on_other_thread = True
        if on_other_thread:
            assert loop is not None
            done = asyncio.run_coroutine_threadsafe(self._stop_on_loop(proc, timeout), loop)
            done.result(timeout + 5)
        else:
            self._stop_here(proc, timeout)

    async def _stop_on_loop(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        self._hand_over()
        try:
            async with asyncio.timeout(timeout):
                self._waker = waker = asyncio.Event()
                while self._outbuf and self._dead is None:
                    waker.clear()
                    await waker.wait()  # set by _flush once the pipe took everything
                self._close_input()
                while self._dead is None:  # answers keep coming in through _on_answers until EOF
                    waker.clear()
                    await waker.wait()  # set by _die
        except TimeoutError:
            proc.kill()
            self._die("it did not finish in time and was killed")
            raise TimeoutError(f"ledger writer did not finish within {timeout}s") from None
        finally:
            await asyncio.to_thread(proc.wait)
            self._close_fds()

    def _stop_here(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Stop without the event loop's help: blocking writes and reads on this thread."""
        self._detach()
        if self._dead is None:
            self._hand_over()
            os.set_blocking(self._fd_out, True)
            os.set_blocking(self._fd_in, True)
            try:
                if self._outbuf:
                    os.write(self._fd_out, self._outbuf)  # blocking: writes it all
                    self._outbuf.clear()
            except OSError:
                pass
            self._close_input()
            while True:
                try:
                    data = os.read(self._fd_in, 1 << 16)
                except OSError:
                    data = b""
                if not data:
                    break
                self._inbuf += data
                self._apply(unframe(self._inbuf))
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise TimeoutError(f"ledger writer did not finish within {timeout}s") from None
        finally:
            self._dead = self._dead or "stopped"
            self._close_fds()
            err = RuntimeError("ledger writer stopped before the row was committed")
            for seq in list(self._futures):
                self._resolve_one(seq, err)

    def _close_input(self) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None and not proc.stdin.closed:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_writer(self._fd_out)
            proc.stdin.close()  # EOF: the writer commits what it has and exits

    def _close_fds(self) -> None:
        proc = self._proc
        if proc is None:
            return
        for f in (proc.stdin, proc.stdout):
            if f is not None and not f.closed:
                f.close()
