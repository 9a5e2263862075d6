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
  by one and only the failing rows' futures fail. A resource error (disk full, a lock, I/O) fails
  no row: the writer process retries the commit with backoff and reports itself unhealthy.
- Every row is kept (``_unacked``) until its commit is answered. If the writer process dies, the
  rows it had not confirmed are NOT failed: a new writer process is started with backoff
  (``RESTART_FIRST`` doubling to ``RESTART_MAX`` seconds) and gets them again in a recovery frame
  (rows it finds already committed are not inserted twice). Waiting requests keep waiting (their
  own deadline bounds that), new rows queue up to ``max_queue``.
- ``health()`` says why the ledger cannot take a request now (writer restarting, the writer
  reporting it cannot commit: disk full, database locked, I/O error; no commit for
  ``stall_seconds`` with rows waiting; the queue full), or None. The gateway refuses requests
  before any upstream attempt while it is not None, and ``/healthz`` / ``/readyz`` report it.
- ``committed`` is ``(last sequence number answered, highest ledger id confirmed)``, updated
  together: the ledger rows with ids up to the second are the rows numbered up to the first (and
  those from before this daemon started); budget rebuilds count ledger rows up to that id and add
  the rest from the requests still in flight. (This holds because this writer is the only one.)
- A row submitted with a ``deadline`` (``time.monotonic()``) whose commit has not come by then has
  its future failed with ``CommitTimeout`` (the row itself stays queued and is written later): one
  sweep every ``SWEEP_SECONDS`` looks, instead of a timer per request.
- Commit durations go into ``commit_times`` (a cumulative histogram behind its own lock, updated
  once per commit answer and read once per scrape by ``/metrics``).
- The writer is bound to the event loop of its first ``submit``.
- PostgreSQL (``[store] url``) with a ``spool`` file: while the server is unreachable the writer
  process appends each batch to that local file (fsynced) and confirms it, so requests go on (a
  writer restarted meanwhile spools from its start); it drains the file into the ledger, in order
  and without duplicates (by ``request_id``), once the server answers, and ``start`` drains what a
  previous daemon left there before anything reads the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from llmgw import framing
from llmgw.errors import ResourceError
from llmgw.store.conn import PgStore, Target
from llmgw.store.db import open_db
from llmgw.store.ledger import as_tuple, normalise_row
from llmgw.store.writer_proc import PG_MARK, SPOOL_ENV, STORE_URL_ENV, frame, unframe

log = logging.getLogger("llmgw.ledger")


class LedgerWriteError(RuntimeError):
    """A row could not be written (and no matching ``sqlite3`` exception class exists)."""


class CommitTimeout(RuntimeError):
    """The row's commit did not come by its deadline; the row stays queued and is written later."""


#: the health problem of a restarted writer process until it reports the database open
_STARTING = "a new writer process is starting"

#: how often waiting rows are checked against their deadlines (seconds)
SWEEP_SECONDS = 0.25


def _error(kind: str, message: str) -> BaseException:
    cls = getattr(sqlite3, kind, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(message)
    return LedgerWriteError(f"{kind}: {message}")


#: restart backoff after the writer process died (seconds): doubles from the first to the max
RESTART_FIRST, RESTART_MAX = 0.05, 5.0


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
    def __init__(self, db_path: Target, *, max_batch: int = 512, linger: float = 0.0, max_queue: int = 100_000,
                 stall_seconds: float = 5.0, spool: Path | None = None, adopt: tuple[Path, ...] = ()) -> None:
        self.db_path = db_path if isinstance(db_path, PgStore) else Path(db_path)
        # PostgreSQL only: the local file rows go to while the server is unreachable (writer_proc.Spool)
        self.spool = spool if isinstance(db_path, PgStore) else None
        # other spools to drain at start, no writer owning them any more (those of ``serve --workers``
        # workers, when the home is served by one process again)
        self.adopt = adopt if isinstance(db_path, PgStore) else ()
        self.max_queue = max_queue
        self.stall_seconds = stall_seconds
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
        # rows numbered _acked+1 .. _seq, kept until their commit is answered (resent to a new writer)
        self._unacked: deque[tuple[Any, ...] | None] = deque()
        self._deadlines: deque[float] = deque()  # the same rows' deadlines (inf: none)
        self._sweeper: asyncio.TimerHandle | None = None
        self._problem: str | None = None  # what the writer process reports it cannot do (disk full...)
        self._progress = time.monotonic()  # when the queue last moved (or started to fill)
        self._rowid = 0  # highest ledger id committed, as the writer process reported it
        #: rows answered while PostgreSQL was unreachable, in the spool file, not in the store yet
        self.spooled = 0
        self._backoff = 0.0
        self._restart_handle: asyncio.TimerHandle | None = None
        self.restarts = 0

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
            conn = open_db(self.db_path)  # migrate here: a bad database fails start(), not a request
            for spool in (*self.adopt, self.spool):  # rows spooled before a restart: in the ledger
                if spool is not None and spool.exists():  # before the budgets are read
                    self._drain_spool(spool)
            try:  # every row there is committed: the committed point starts past them
                self._rowid = int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM ledger").fetchone()[0])
            finally:
                conn.close()
            try:
                self._spawn()
            except OSError as e:
                raise ResourceError(f"cannot start the ledger writer process ({sys.executable}): {e}") from e

    def _drain_spool(self, path: Path) -> None:
        from llmgw.store.writer_proc import PgLedger, Spool

        assert isinstance(self.db_path, PgStore)
        pg = PgLedger(self.db_path, Spool(path))
        try:
            if pg.spool is not None and pg.spool.count:
                n = pg.spool.count
                if pg.drain() is None:
                    raise ResourceError(f"cannot move {n} spooled ledger rows from {path} into the store")
        finally:
            pg.close()

    def _spawn(self) -> None:
        # the same interpreter and the same llmgw as this process: its package directory goes at
        # the END of the child's sys.path (a fallback that never shadows the standard library)
        pkg_root = str(Path(__file__).resolve().parents[2])
        boot = (f"import sys; sys.path.append({pkg_root!r}); "
                "from llmgw.store.writer_proc import main; main()")
        where, env = str(self.db_path), None
        if isinstance(self.db_path, PgStore):  # the URL (a password) in the child's environment, not its argv
            where, env = PG_MARK, {**os.environ, STORE_URL_ENV: self.db_path.url}
            if self.spool is not None:
                env[SPOOL_ENV] = str(self.spool)
        proc = subprocess.Popen(
            [sys.executable, "-c", boot, where, str(self.max_batch), repr(self.linger)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._fd_out = proc.stdin.fileno()
        self._fd_in = proc.stdout.fileno()
        os.set_blocking(self._fd_out, False)
        os.set_blocking(self._fd_in, False)

    @property
    def committed(self) -> tuple[int, int]:
        """``(last sequence number answered, highest ledger id committed)``, consistent together."""
        return self._acked, self._rowid

    @property
    def last_seq(self) -> int:
        """The sequence number of the row ``submit`` queued last."""
        return self._seq

    def health(self) -> str | None:
        """Why the ledger cannot take a request now, or None when it can (cheap: the hot path asks)."""
        if self._stopped or self._proc is None:
            return "ledger writer not running"
        if self._dead is not None:
            return f"ledger writer restarting ({self._dead})"
        if self._problem is not None:
            if self._problem == _STARTING:
                return f"ledger writer restarting ({_STARTING})"
            return f"ledger writer cannot commit: {self._problem}"
        waiting = self._seq - self._acked
        if waiting:
            if waiting >= self.max_queue:
                return f"ledger queue full ({waiting} rows waiting)"
            stalled = time.monotonic() - self._progress
            if stalled > self.stall_seconds:
                return f"ledger writer has committed nothing for {stalled:.0f} s ({waiting} rows waiting)"
        return None

    # ---- the event loop side ---------------------------------------------------------------------
    def submit(self, row: dict[str, Any], *, trusted: bool = False,
               deadline: float = math.inf) -> asyncio.Future[None]:
        """Queue ``row``; the future resolves once its batch is committed. Call on the event loop.

        Raises ValueError for an invalid row (see ``normalise_row``), RuntimeError if the writer
        is not running or its queue is full. ``trusted`` skips validation for rows the gateway builds
        itself. Past ``deadline`` (``time.monotonic()``) the future fails with ``CommitTimeout``.
        """
        norm = as_tuple(row) if trusted else as_tuple(normalise_row(row))
        loop = asyncio.get_running_loop()
        if self._proc is None or self._stopped:
            raise RuntimeError("LedgerWriter is not running")
        if self._seq - self._acked >= self.max_queue:
            raise RuntimeError(f"ledger queue full ({self._seq - self._acked} rows waiting)")
        if self._loop is not loop:
            if self._loop is not None:
                raise RuntimeError("LedgerWriter is bound to another event loop")
            self._loop = loop
            if self._dead is None:
                loop.add_reader(self._fd_in, self._on_answers)
            self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)
        fut: asyncio.Future[None] = loop.create_future()
        if self._seq == self._acked:
            self._progress = time.monotonic()  # the stall clock starts with the first waiting row
        self._seq += 1
        self._futures[self._seq] = fut
        self._unacked.append(norm)
        self._deadlines.append(deadline)
        if self._dead is None:  # else the restarted writer gets it with the rest
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
                    self._unacked[first + i - self._acked - 1] = None
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
            loop = self._loop
            if loop is not None and not loop.is_closed():  # else a blocking stop writes it
                loop.add_writer(self._fd_out, self._flush)

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
            data = os.read(self._fd_in, framing.READ_SIZE)
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
        for answer in answers:
            if isinstance(answer, dict) and "spooled" in answer:
                self.spooled = int(answer["spooled"])
                continue
            if isinstance(answer, dict):  # the writer's health changed (or a new one is ready)
                problem = answer.get("unhealthy")
                if problem and problem != self._problem:
                    log.error("ledger writer cannot commit (%s): requests are refused until it can; "
                              "%d rows waiting are kept and retried", problem, self.queue_depth)
                elif not problem and self._problem and self._problem != _STARTING:
                    log.warning("ledger writer commits again (was: %s)", self._problem)
                self._problem = problem or None
                continue
            last, failed, seconds, rowid = answer
            errors = {seq: _error(kind, msg) for seq, kind, msg in failed}
            unacked = self._unacked
            deadlines = self._deadlines
            for seq in range(self._acked + 1, last + 1):
                unacked.popleft()
                deadlines.popleft()
                self._resolve_one(seq, errors.get(seq))
            self.rows_written += (last - self._acked) - len(errors)
            self._acked = last
            self._rowid = max(self._rowid, rowid)
            self._progress = time.monotonic()
            self._backoff = 0.0  # a commit went through: the next crash restarts at once again
            self.batches += 1
            self.last_commit_seconds = seconds
            self.commit_times.record(seconds)

    def _sweep(self) -> None:
        """Fail the futures of rows past their deadline (the rows stay queued); re-arms itself."""
        loop = self._loop
        if self._stopped or loop is None or loop.is_closed():
            return
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)
        if self._seq == self._acked:
            return
        now = time.monotonic()
        if now - self._progress < SWEEP_SECONDS and self._problem is None and self._dead is None:
            return  # commits are coming in: nothing can be that late
        first = self._acked + 1
        for i, deadline in enumerate(self._deadlines):
            if deadline < now:
                seq = first + i
                if seq in self._futures:
                    self._resolve_one(seq, CommitTimeout("the row's commit did not come in time; it stays queued"))

    def _resolve_one(self, seq: int, exc: BaseException | None) -> None:
        fut = self._futures.pop(seq, None)
        if fut is None or fut.done():  # the awaiting task was cancelled
            return
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)

    def _die(self, why: str) -> None:
        """The writer process is gone. Stopping: fail everything still waiting. Otherwise keep every
        row it had not confirmed and start a new writer after a backoff."""
        if self._dead is not None:
            return
        self._dead = why
        self._problem = None
        if self._waker is not None:
            self._waker.set()
        self._detach()
        if self._stopped:
            self._fail_waiting(f"ledger writer process is gone ({why}); the row was not written")
            return
        self._close_fds()
        self._pending = []
        self._outbuf.clear()
        self._inbuf.clear()
        delay = self._backoff
        self._backoff = min(max(RESTART_FIRST, self._backoff * 2), RESTART_MAX)
        log.critical("ledger writer process stopped unexpectedly (%s): restarting it in %.2f s; requests are "
                     "refused meanwhile, the %d rows it had not confirmed are kept", why, delay, self.queue_depth)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            self._restart_handle = loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        """Start a new writer process and hand it every row not confirmed yet (a recovery frame)."""
        self._restart_handle = None
        if self._stopped or self._dead is None:
            return
        self._revive(reader=True)

    def _revive(self, *, reader: bool) -> None:
        old = self._proc
        if old is not None and old.poll() is None:
            old.kill()
        if old is not None:
            try:
                old.wait(1)
            except subprocess.TimeoutExpired:
                pass
        try:
            self._spawn()
        except OSError as e:
            self._dead = None
            self._die(f"cannot start a new one: {e}")
            return
        self._dead = None
        self._problem = _STARTING  # until it says it has the database open
        self.restarts += 1
        self._progress = time.monotonic()
        loop = self._loop
        if reader and loop is not None:
            loop.add_reader(self._fd_in, self._on_answers)
        if self._unacked:
            self._send(frame([self._acked + 1, list(self._unacked), 1]))
        log.warning("ledger writer restarted (restart %d); %d rows handed to it again", self.restarts,
                    len(self._unacked))

    def _fail_waiting(self, message: str) -> None:
        if not self._futures:
            return
        lost = len(self._futures)
        if lost and not all(f.done() for f in self._futures.values()):
            log.critical("%d ledger rows were not written: %s", lost, message)
        err = RuntimeError(message)
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
            done = asyncio.run_coroutine_threadsafe(self._stop_on_loop(timeout), loop)
            done.result(timeout + 5)
        else:
            self._stop_here(timeout)

    def _last_writer(self, *, reader: bool) -> subprocess.Popen[bytes]:
        """Stopping while the writer is down (a restart pending): one more writer for the rows left."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._restart_handle is not None:
            self._restart_handle.cancel()
            self._restart_handle = None
        if self._dead is not None and self._unacked:
            self._revive(reader=reader)
        assert self._proc is not None
        return self._proc

    async def _stop_on_loop(self, timeout: float) -> None:
        proc = self._last_writer(reader=True)
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

    def _stop_here(self, timeout: float) -> None:
        """Stop without the event loop's help: blocking writes and reads on this thread."""
        self._detach()
        proc = self._last_writer(reader=False)
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
                    data = os.read(self._fd_in, framing.READ_SIZE)
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
            self._fail_waiting("ledger writer stopped before the row was committed")

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
