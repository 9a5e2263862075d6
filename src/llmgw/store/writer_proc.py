"""The ledger writer process: the only code that inserts ledger rows.

    python -m llmgw.store.writer_proc DB_PATH MAX_BATCH LINGER_SECONDS

Started and fed by ``store.writer.LedgerWriter``. It runs in its own process so that SQLite's
work (binding, B-tree and index updates, the WAL write) never competes with the daemon's event
loop for the GIL: in a thread it cost the loop ~25 µs per request in GIL hand-offs and delayed
commits while the loop was busy.

Protocol (both directions: frames of a 4-byte little-endian length and an orjson payload):
- stdin:  ``[first_seq, [row, ...]]``: rows as ``ledger.as_tuple`` tuples, numbered from
  ``first_seq`` on; sequence numbers are contiguous across frames.
- stdout: ``[last_seq, [[seq, error_class, message], ...], commit_seconds]`` after each commit:
  every row up to ``last_seq`` is committed, except the listed ones, which failed.
Rows are committed in order, in batches of up to MAX_BATCH rows: whatever arrived during the
previous commit. With LINGER > 0 it also waits that long for more rows under load (the previous
batch had more than one row). It exits after
committing everything once stdin reaches EOF: the daemon closed it, or the daemon died. SIGINT
and SIGTERM are ignored (a Ctrl-C or systemd's stop reaches the whole process group): the daemon
decides when the ledger stops, so no committed-but-unacknowledged or accepted-but-unwritten row
is lost to a signal.
"""

from __future__ import annotations

import functools
import itertools
import os
import select
import signal
import sqlite3
import struct
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from llmgw.store import rollups
from llmgw.store.db import open_db
from llmgw.store.ledger import insert_sql

_INSERT = insert_sql()
_LEN = struct.Struct("<I")


def frame(obj: Any) -> bytes:
    payload = orjson.dumps(obj)
    return _LEN.pack(len(payload)) + payload


def unframe(buf: bytearray) -> list[Any]:
    """Complete frames at the start of ``buf`` (removed from it), decoded."""
    out = []
    pos = 0
    while len(buf) - pos >= 4:
        (n,) = _LEN.unpack_from(buf, pos)
        if len(buf) - pos - 4 < n:
            break
        out.append(orjson.loads(memoryview(buf)[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    if pos:
        del buf[:pos]
    return out


@functools.lru_cache(maxsize=16)
def _insert_sql(n: int) -> str:
    head, _, values = _INSERT.partition(" VALUES ")
    return head + " VALUES " + ", ".join([values] * n)


def insert(conn: sqlite3.Connection, rows: list[Any]) -> list[BaseException | None]:
    """Insert and commit; return one error (or None) per row.

    Rows go in as multi-row ``INSERT ... VALUES (...), (...)`` statements of power-of-two sizes
    (a handful of distinct statements for the statement cache): one ``sqlite3_step`` per statement
    instead of one per row. A batch that fits one statement is its own transaction (autocommit).
    If the batch fails, rows are retried one by one so that a bad row fails alone.
    """
    pieces: list[list[Any]] = []
    i = 0
    while i < len(rows):
        size = 1 << ((len(rows) - i).bit_length() - 1)
        pieces.append(rows[i : i + size])
        i += size
    try:
        if len(pieces) == 1:
            conn.execute(_insert_sql(len(rows)), tuple(itertools.chain.from_iterable(rows)))
        else:
            conn.execute("BEGIN")
            for piece in pieces:
                conn.execute(_insert_sql(len(piece)), tuple(itertools.chain.from_iterable(piece)))
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


class _Input:
    """Frames from stdin: ``read(block)`` appends whatever is there (waiting for it if asked)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.frames: deque[tuple[int, list[Any]]] = deque()
        self.eof = False

    def read(self, block: bool, timeout: float | None = None) -> None:
        """``block``: wait for a whole frame (at most ``timeout`` seconds for the first bytes)."""
        while not self.eof:
            if not select.select([self.fd], [], [], timeout if block else 0)[0]:
                return
            data = os.read(self.fd, 1 << 20)
            if not data:
                self.eof = True
                return
            self.buf += data
            for first, rows in unframe(self.buf):
                self.frames.append((first, rows))
            if self.frames:
                block = False  # got a whole frame: from here on only take what is already there


def run(db_path: str, max_batch: int, linger: float, fd_in: int = 0, fd_out: int = 1) -> None:
    conn = open_db(Path(db_path))
    conn.isolation_level = None  # autocommit: insert() manages its transactions
    inp = _Input(fd_in)
    roller = rollups.Roller(conn)
    last_size = 0
    acks = True  # False once the daemon is gone: keep committing what it sent, tell nobody
    try:
        while True:
            if not inp.frames:
                inp.read(block=True, timeout=roller.idle_wait())
                if not inp.frames and not inp.eof:
                    roller.run()  # idle: roll up what was committed, then wait again
                    continue
                if not inp.frames:
                    break  # EOF and nothing left
            if last_size > 1 and not inp.eof:
                time.sleep(linger)
            inp.read(block=False)
            # one batch: up to max_batch rows from the frames in order (a frame may be split)
            batch: list[Any] = []
            batch_first = inp.frames[0][0]
            while inp.frames and len(batch) < max_batch:
                first, rows = inp.frames.popleft()
                take = max_batch - len(batch)
                batch.extend(rows[:take])
                if len(rows) > take:
                    inp.frames.appendleft((first + take, rows[take:]))
            last_size = len(batch)
            started = time.perf_counter()
            errors = insert(conn, batch)
            elapsed = time.perf_counter() - started
            failed = [[batch_first + i, type(e).__name__, str(e)] for i, e in enumerate(errors) if e is not None]
            if acks:
                try:
                    _write_all(fd_out, frame([batch_first + len(batch) - 1, failed, elapsed]))
                except BrokenPipeError:
                    acks = False
            roller.committed()  # after the answer: a roll-up never delays a request
        roller.run()
    finally:
        conn.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    db_path, max_batch, linger = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    # answers go to a private copy of stdout; fd 1 becomes stderr, so a stray print (from any
    # library) lands in the daemon's log instead of corrupting the protocol
    answers = os.dup(1)
    os.dup2(2, 1)
    run(db_path, max_batch, linger, fd_out=answers)


if __name__ == "__main__":
    main()
