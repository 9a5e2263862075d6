"""The single ledger writer: one thread, one connection, group commit.

Owns: every ledger write in the daemon.

Invariants:
- The event loop never touches SQLite: ``submit`` validates the row and enqueues it, nothing more.
- The writer thread blocks on the queue, drains whatever is already waiting (up to ``max_batch``),
  inserts it with one ``executemany`` and one commit, then resolves the batch's futures with ONE
  ``call_soon_threadsafe`` per event loop.
- A future resolves only after its row is committed (visible to other connections and durable
  against a process kill); it carries the exception if its row could not be written.
- A bad row never costs the rest of its batch: if the batch insert fails, rows are retried one
  by one and only the failing rows' futures fail.
- Commit durations go into ``commit_times`` (a cumulative histogram behind its own lock, taken
  once per batch by the writer and once per scrape by ``/metrics``: never by the event loop's
  request path).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import queue
import sqlite3
import threading
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any

from llmgw.store.db import open_db
from llmgw.store.ledger import as_tuple, insert_sql, normalise_row

_Item = tuple[tuple[Any, ...], "asyncio.Future[None]", asyncio.AbstractEventLoop]
_Result = tuple["asyncio.Future[None]", BaseException | None]

_INSERT = insert_sql()


def _resolve(results: list[_Result]) -> None:
    for fut, exc in results:
        if fut.done():  # the awaiting task was cancelled
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)


#: upper bounds (seconds) of the commit-duration buckets: a commit is ~40 us to a few ms
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class CommitTimes:
    """A cumulative histogram of commit durations, shared between the writer thread (``record``)
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
    def __init__(self, db_path: Path, *, max_batch: int = 512, linger: float = 0.0005) -> None:
        self.db_path = Path(db_path)
        self.max_batch = max_batch
        # Under concurrent load (the previous batch had more than one row) the writer waits up to
        # ``linger`` seconds for more rows before committing: a commit costs ~40 us of CPU whatever
        # its size, so batching is what keeps the writer cheap. A lone request never waits.
        self.linger = linger
        self.batches = 0
        self.rows_written = 0
        self.last_commit_seconds = 0.0
        self.commit_times = CommitTimes()
        self._queue: queue.SimpleQueue[list[_Item] | None] = queue.SimpleQueue()
        self._pending: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        self._lock = threading.Lock()  # orders submit's put against stop's sentinel
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._submitted = 0
        self._done = 0

    @property
    def queue_depth(self) -> int:
        """Rows submitted but not yet committed or failed (approximate)."""
        return self._submitted - self._done

    def start(self) -> None:
        """Open the database (migrating it) and start the writer thread."""
        with self._lock:
            if self._stopped or self._thread is not None:
                raise RuntimeError("LedgerWriter already started or stopped")
            conn = open_db(self.db_path)
            conn.isolation_level = None  # autocommit: _insert manages its transactions
            self._thread = threading.Thread(
                target=self._run, args=(conn,), name="llmgw-ledger-writer", daemon=True
            )
            self._thread.start()

    def submit(self, row: dict[str, Any], *, trusted: bool = False) -> asyncio.Future[None]:
        """Queue ``row``; the future resolves once its batch is committed. Call on the event loop.

        Raises ValueError for an invalid row (see ``normalise_row``), RuntimeError if the writer
        is not running. ``trusted`` skips validation for rows the gateway builds itself.
        """
        norm = as_tuple(row) if trusted else as_tuple(normalise_row(row))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._thread is None or self._stopped:
            raise RuntimeError("LedgerWriter is not running")
        self._submitted += 1
        # Rows submitted in one event-loop iteration cross to the writer thread as one queue item:
        # one thread wake-up per iteration instead of one per request.
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._hand_over, loop)
        pending.append((norm, fut, loop))
        return fut

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        items = self._pending.pop(loop, None)
        if not items:
            return
        with self._lock:
            if not self._stopped:
                self._queue.put(items)
                return
        for _, fut, _ in items:  # stop() won the race: say so instead of dropping rows silently
            if not fut.done():
                fut.set_exception(RuntimeError("LedgerWriter stopped before the row was handed over"))

    async def write(self, row: dict[str, Any], *, trusted: bool = False) -> None:
        """Submit ``row`` and wait until it is committed."""
        await self.submit(row, trusted=trusted)

    def stop(self, timeout: float = 10.0) -> None:
        """Write and commit everything queued, close the connection, join the thread. Idempotent.

        Blocks: from the event loop, call it as ``await asyncio.to_thread(writer.stop)``.
        """
        with self._lock:
            if not self._stopped:
                self._stopped = True
                if self._thread is not None:
                    for loop in list(self._pending):  # rows submitted but not yet handed over
                        items = self._pending.pop(loop, None)
                        if items:
                            self._queue.put(items)
                    self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"ledger writer did not finish within {timeout}s")

    # ---- writer thread ---------------------------------------------------------------------------

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            stopping = False
            last_size = 0
            while not stopping:
                first = self._queue.get()
                batch: list[_Item] = []
                if first is None:
                    stopping = True
                else:
                    batch.extend(first)
                if last_size > 1 and not stopping:
                    time.sleep(self.linger)  # one wake-up, GIL released: not one per arriving row
                while not stopping and len(batch) < self.max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stopping = True  # the sentinel is the last item ever queued
                    else:
                        batch.extend(item)
                last_size = len(batch)
                for i in range(0, len(batch), self.max_batch):  # one hand-over may exceed max_batch
                    self._write_batch(conn, batch[i : i + self.max_batch])
        finally:
            conn.close()

    def _write_batch(self, conn: sqlite3.Connection, batch: list[_Item]) -> None:
        started = time.perf_counter()
        errors = self._insert(conn, [row for row, _, _ in batch])
        self.last_commit_seconds = elapsed = time.perf_counter() - started
        self.commit_times.record(elapsed)
        self.batches += 1
        self.rows_written += sum(e is None for e in errors)
        self._done += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[_Result]] = {}
        for (_, fut, loop), exc in zip(batch, errors, strict=True):
            by_loop.setdefault(loop, []).append((fut, exc))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, results)
            except RuntimeError:  # loop already closed: nobody is waiting any more
                pass

    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> list[BaseException | None]:
        """Insert and commit; return one error (or None) per row.

        Rows go in as multi-row ``INSERT ... VALUES (...), (...)`` statements of power-of-two
        sizes (a handful of distinct statements for the statement cache): one ``sqlite3_step``
        per statement instead of one per row, which matters because the GIL is handed back and
        forth around every step, stealing the event loop's time. A batch that fits one statement
        is its own transaction (the connection is in autocommit mode).
        """
        pieces: list[list[tuple[Any, ...]]] = []
        i = 0
        while i < len(rows):
            size = 1 << ((len(rows) - i).bit_length() - 1)
            pieces.append(rows[i : i + size])
            i += size
        try:
            if len(pieces) == 1:
                conn.execute(_insert_sql(len(rows)), _flatten(rows))
            else:
                conn.execute("BEGIN")
                for piece in pieces:
                    conn.execute(_insert_sql(len(piece)), _flatten(piece))
                conn.execute("COMMIT")
            return [None] * len(rows)
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        errors: list[BaseException | None] = []
        for row in rows:  # rare path: one transaction per row, so one failure cannot undo another
            try:
                conn.execute(_INSERT, row)
                errors.append(None)
            except Exception as exc:
                errors.append(exc)
        return errors


@functools.lru_cache(maxsize=16)
def _insert_sql(n: int) -> str:
    head, _, values = _INSERT.partition(" VALUES ")
    return head + " VALUES " + ", ".join([values] * n)


def _flatten(rows: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    return tuple(itertools.chain.from_iterable(rows))
