"""The ledger writer process: the only code that inserts ledger rows.

    python -m llmgw.store.writer_proc DB_PATH MAX_BATCH LINGER_SECONDS

(DB_PATH ``postgresql``: the PostgreSQL store whose URL is in ``$LLMGW_WRITER_STORE_URL``, read and
removed from the environment at start: a URL with a password never goes on a command line.)

Started and fed by ``store.writer.LedgerWriter``. It runs in its own process so that SQLite's
work (binding, B-tree and index updates, the WAL write) never competes with the daemon's event
loop for the GIL: in a thread it cost the loop ~25 µs per request in GIL hand-offs and delayed
commits while the loop was busy.

Protocol (both directions: frames of a 4-byte little-endian length and an orjson payload):
- stdin:  ``[first_seq, [row, ...]]``: rows as ``ledger.as_tuple`` tuples (or ``null`` for a row
  the daemon could not encode: it fails), numbered from ``first_seq`` on; sequence numbers are
  contiguous across frames. ``[first_seq, [row, ...], 1]`` is a *recovery* frame, sent to a
  restarted writer with every row the dead one had not confirmed: a row whose ``request_id`` is
  already in the ledger (committed before the crash, unconfirmed) counts as committed and is not
  inserted again.
- stdout: ``[last_seq, [[seq, error_class, message], ...], commit_seconds, max_rowid]`` after each
  commit: every row up to ``last_seq`` is committed, except the listed ones, which failed;
  ``max_rowid`` is the highest ledger ``id`` among the rows this writer confirmed (inserted, or found
  already in by a recovery frame); every row at or below it is confirmed, which budget rebuilds rely
  on (the daemon starts from the ledger's highest id when it starts).
  ``{"unhealthy": message}`` when a commit fails for a reason that is not the row's (the disk is
  full, the database is locked, an I/O error), and ``{"unhealthy": null}`` once commits work again
  (and once at start, when the database is open).
  ``{"spooled": n}`` (PostgreSQL with a spool) at start and whenever the number of rows in the spool
  changes, before the answer of the batch that changed it: rows answered but not yet in the store.

Rows are committed in order, in batches of up to MAX_BATCH rows: whatever arrived during the
previous commit. With LINGER > 0 it also waits that long for more rows under load (the previous
batch had more than one row). A batch that fails with ``sqlite3.OperationalError`` (disk full,
lock held longer than the writer's ``busy_timeout``, I/O error) is *retried* with backoff until it
commits: an accepted row is never dropped for a resource problem; only a row that is bad in
itself (a constraint, a value SQLite cannot bind) fails, alone. It exits after
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
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from llmgw import framing
from llmgw.errors import ResourceError
from llmgw.framing import frame, unframe
from llmgw.store import rollups
from llmgw.store.conn import PgStore, as_sqlite_error, connect_raw, translate
from llmgw.store.db import open_db
from llmgw.store.ledger import insert_sql

#: the environment variable that hands the writer process the PostgreSQL URL
STORE_URL_ENV = "LLMGW_WRITER_STORE_URL"
#: DB_PATH meaning "the PostgreSQL store in STORE_URL_ENV"
PG_MARK = "postgresql"
#: the environment variable naming the local spool file for rows PostgreSQL cannot take (optional)
SPOOL_ENV = "LLMGW_WRITER_SPOOL"

_INSERT = insert_sql()




@functools.lru_cache(maxsize=16)
def _insert_sql(n: int) -> str:
    head, _, values = _INSERT.partition(" VALUES ")
    return head + " VALUES " + ", ".join([values] * n)


@functools.lru_cache(maxsize=16)
def _pg_insert_sql(n: int) -> str:
    """``_insert_sql(n)`` in psycopg's placeholders, returning the new ids."""
    return translate(_insert_sql(n))[0] + " RETURNING id"


#: the writer's own lock wait: a lock held longer makes it report itself unhealthy (the daemon then
#: refuses requests) and retry, instead of blocking silently for the connection's 5 s default
BUSY_TIMEOUT_MS = 1000
#: rows per INSERT statement at most (x 31 columns stays under SQLite's 32,766 variables); a batch
#: can be larger (a recovery frame), in several statements of one transaction
PIECE_MAX = 512
RETRY_FIRST, RETRY_MAX = 0.05, 1.0
#: how often a writer with spooled rows tries PostgreSQL again while no new rows arrive (seconds)
SPOOL_RETRY = 0.5
#: once the daemon is gone (stdin closed) a writer that still cannot commit gives up after this
#: long, instead of lingering as an orphan; the rows it could not write are counted on stderr
GIVE_UP_AFTER_EOF = 30.0


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


Wait = Callable[[sqlite3.OperationalError], None]


def _pieces(rows: list[Any]) -> list[list[Any]]:
    """``rows`` cut into runs of power-of-two sizes (at most ``PIECE_MAX``): one multi-row INSERT each,
    so only a handful of distinct statements are ever prepared."""
    pieces: list[list[Any]] = []
    i = 0
    while i < len(rows):
        size = 1 << (min(len(rows) - i, PIECE_MAX).bit_length() - 1)
        pieces.append(rows[i : i + size])
        i += size
    return pieces


def insert(conn: sqlite3.Connection, rows: list[Any], wait: Wait) -> tuple[list[BaseException | None], int]:
    """Insert and commit; return one error (or None) per row, and the last inserted rowid (0: none).

    Rows go in as multi-row ``INSERT ... VALUES (...), (...)`` statements of power-of-two sizes
    (a handful of distinct statements for the statement cache): one ``sqlite3_step`` per statement
    instead of one per row. A batch that fits one statement is its own transaction (autocommit).
    If the batch fails because of a row, rows are retried one by one so that a bad row fails
    alone. ``sqlite3.OperationalError`` (disk full, locked, I/O) is not a row's fault: ``wait`` is
    called (it reports and backs off) and the same statement is tried again, until it works.
    """
    pieces = _pieces(rows)
    while True:
        try:
            if len(pieces) == 1:
                cur = conn.execute(_insert_sql(len(rows)), tuple(itertools.chain.from_iterable(rows)))
            else:
                conn.execute("BEGIN")
                for piece in pieces:
                    cur = conn.execute(_insert_sql(len(piece)), tuple(itertools.chain.from_iterable(piece)))
                conn.execute("COMMIT")
            return [None] * len(rows), cur.lastrowid or 0
        except sqlite3.OperationalError as exc:
            _rollback(conn)
            wait(exc)
        except Exception:
            _rollback(conn)
            break
    errors: list[BaseException | None] = []
    last = 0
    for row in rows:  # rare path: one transaction per row, so one failure cannot undo another
        while True:
            try:
                cur = conn.execute(_INSERT, row)
                last = cur.lastrowid or last
                errors.append(None)
            except sqlite3.OperationalError as exc:
                wait(exc)
                continue
            except Exception as exc:
                errors.append(exc)
            break
    return errors, last


class _Unreachable(sqlite3.OperationalError):
    """PostgreSQL cannot be reached: the connection failed or was lost."""


class _BadRow(Exception):
    """A statement failed because of what it inserts (a constraint, a value): not the server's state."""


class Spool:
    """Rows the writer accepted while PostgreSQL was unreachable, in a local file (frames of row
    lists, as on the pipe), each append fsynced before the rows are confirmed; emptied once every
    row in it is in the ledger. Created 0600: rows hold request metadata (and logged bodies)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = len(self.rows()) if path.exists() else 0

    def rows(self) -> list[Any]:
        try:
            buf = bytearray(self.path.read_bytes())
        except FileNotFoundError:
            return []
        out: list[Any] = []
        for rows in unframe(buf):  # a torn last frame (a crash mid-append) was never confirmed: dropped
            out.extend(rows)
        return out

    def append(self, rows: list[Any]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            _write_all(fd, frame(rows))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.count += len(rows)

    def clear(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.count = 0


class PgLedger:
    """The writer's PostgreSQL side: its own connection with server-side parameters (one prepared
    INSERT, pipelined for a batch), reconnected after the server went away. ``insert`` has the contract of the
    SQLite ``insert``: a busy server (a lock wait past ``lock_timeout``) is waited out and retried,
    any other error that is not the server's fails its row alone. An unreachable server: with a
    ``spool`` the batch goes to the local file (fsynced) and counts as committed, and the file is
    drained into the ledger, in order and before newer rows, as soon as the server answers again
    (rows found there already, by ``request_id``, are not inserted twice); without one it is waited
    out like a busy server."""

    def __init__(self, store: PgStore, spool: Spool | None = None) -> None:
        self.store = store
        self.spool = spool
        self.raw: Any = None
        self._retry_at = 0.0  # while spooling: no new connection attempt before this (monotonic)

    def _conn(self) -> Any:
        if self.raw is None or self.raw.closed:
            from psycopg.types.numeric import Int8Dumper

            try:
                raw = connect_raw(self.store, client_cursor=False)
            except sqlite3.OperationalError as e:
                raise _Unreachable(str(e)) from None
            # every int as bigint: psycopg would pick int2/int4/int8 by value, and each mix of types
            # is another statement to plan and prepare
            raw.adapters.register_dumper(int, Int8Dumper)
            raw.execute(f"SET lock_timeout = {BUSY_TIMEOUT_MS}")
            self.raw = raw
        return self.raw

    def _run(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(connection)``, its psycopg errors classified: ``_Unreachable``, a busy
        ``sqlite3.OperationalError``, or ``_BadRow``."""
        import psycopg

        try:
            return fn(self._conn())
        except psycopg.Error as exc:
            err = as_sqlite_error(exc, self.store)
            if self.raw is not None and (self.raw.broken or self.raw.closed):
                self.raw = None
                raise _Unreachable(str(err)) from None
            if isinstance(exc, psycopg.OperationalError):
                raise (err if isinstance(err, sqlite3.OperationalError) else sqlite3.OperationalError(str(err))) from None
            raise _BadRow(err) from None

    def _insert_all(self, rows: list[Any]) -> int:
        """All ``rows`` in one transaction; the highest new id. One single-row INSERT, prepared once,
        executed for every row in a pipeline (``executemany``: one round trip for the batch). A
        multi-row ``VALUES`` statement has more than psycopg's 50 parameters, so psycopg parsed its
        SQL again on every execution: measured ~45 % of the writer's time, ~165 µs a row in all."""
        sql = _pg_insert_sql(1)

        def run(raw: Any) -> int:
            top = 0
            with raw.transaction(), raw.cursor() as cur:
                cur.executemany(sql, rows, returning=True)
                while True:
                    got = cur.fetchone()
                    if got is not None:
                        top = max(top, int(got[0]))
                    if not cur.nextset():
                        break
            return top

        return int(self._run(run))

    def insert(self, rows: list[Any], wait: Wait) -> tuple[list[BaseException | None], int]:
        drained = 0
        if self.spool is not None and self.spool.count:
            got = self.drain()
            if got is None:  # still unreachable: behind the spooled rows, in order
                self.spool.append(rows)
                return [None] * len(rows), 0
            drained = got
        while True:
            try:
                return [None] * len(rows), max(drained, self._insert_all(rows))
            except _Unreachable as exc:
                if self.spool is not None:
                    self._retry_at = time.monotonic() + SPOOL_RETRY
                    self._spool(rows, exc)
                    return [None] * len(rows), drained
                wait(exc)
            except sqlite3.OperationalError as exc:
                wait(exc)
            except _BadRow:
                break
        errors: list[BaseException | None] = []
        last = drained
        for row in rows:  # rare path: one transaction per row, so one failure cannot undo another
            while True:
                try:
                    last = max(last, self._insert_all([row]))
                    errors.append(None)
                except sqlite3.OperationalError as exc:
                    wait(exc)
                    continue
                except _BadRow as exc:
                    errors.append(exc.args[0])
                break
        return errors, last

    def _spool(self, rows: list[Any], exc: BaseException) -> None:
        assert self.spool is not None
        if not self.spool.count:
            sys.stderr.write(f"llmgw ledger writer: PostgreSQL unreachable ({exc}); spooling rows to "
                             f"{self.spool.path} until it answers again\n")
        self.spool.append(rows)

    def drain(self) -> int | None:
        """Move the spooled rows into the ledger (skipping those already there) and empty the spool;
        the highest id inserted (0: none), or None while the server is still unreachable (or busy)."""
        assert self.spool is not None
        if self.raw is None and time.monotonic() < self._retry_at:
            return None  # tried a moment ago: no connection attempt (up to connect_timeout) per batch
        rows = self.spool.rows()
        top = 0
        try:
            for i in range(0, len(rows), PIECE_MAX):
                chunk = rows[i : i + PIECE_MAX]
                skip, seen = self.already_committed(chunk)
                top = max(top, seen)
                fresh = [r for j, r in enumerate(chunk) if j not in skip]
                if fresh:
                    try:
                        top = max(top, self._insert_all(fresh))
                    except _BadRow:  # a row that cannot go in (validated before it was spooled: never seen)
                        for r in fresh:
                            try:
                                top = max(top, self._insert_all([r]))
                            except _BadRow as exc:
                                sys.stderr.write(f"llmgw ledger writer: spooled row {r[0]} cannot be written:"
                                                 f" {exc.args[0]}\n")
        except sqlite3.OperationalError:  # _Unreachable included: try again later
            self._retry_at = time.monotonic() + SPOOL_RETRY
            return None
        n = len(rows)
        self.spool.clear()
        sys.stderr.write(f"llmgw ledger writer: PostgreSQL answers again; {n} spooled rows are in the ledger\n")
        return top

    def already_committed(self, rows: list[Any]) -> tuple[set[int], int]:
        ids = [r[0] for r in rows if r is not None]
        if not ids:
            return set(), 0
        try:
            found = dict(self._run(lambda raw: raw.execute("SELECT request_id, id FROM ledger WHERE request_id = ANY(%s)",
                                                           (ids,)).fetchall()))
        except _BadRow as exc:
            raise sqlite3.OperationalError(str(exc.args[0])) from None
        return {i for i, r in enumerate(rows) if r is not None and r[0] in found}, max(found.values(), default=0)

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()


def _already_committed(conn: sqlite3.Connection, rows: list[Any]) -> tuple[set[int], int]:
    """Positions in ``rows`` whose request_id is in the ledger already (a recovery frame), and the
    highest of their ledger ids."""
    ids = [r[0] for r in rows if r is not None]
    if not ids:
        return set(), 0
    found = dict(conn.execute("SELECT request_id, id FROM ledger WHERE request_id IN "
                              "(SELECT value FROM json_each(?))", (orjson.dumps(ids).decode(),)).fetchall())
    return {i for i, r in enumerate(rows) if r is not None and r[0] in found}, max(found.values(), default=0)


class _Writer:
    """The commit loop's state: the connection, the health last reported, the highest rowid it
    confirmed (0 until its first commit: the daemon keeps the maximum)."""

    def __init__(self, conn: sqlite3.Connection, fd_out: int, inp: _Input, pg: PgLedger | None = None) -> None:
        self.conn = conn
        self.pg = pg
        self.fd_out = fd_out
        self.inp = inp
        self.acks = True  # False once the daemon is gone: keep committing what it sent, tell nobody
        self.unhealthy: str | None = None
        self.max_rowid = 0
        self._spooled = -1  # the spool's row count last told to the daemon
        self._delay = RETRY_FIRST
        self._since: float | None = None  # when commits started failing after the daemon left

    def tell(self, obj: Any) -> None:
        if self.acks:
            try:
                _write_all(self.fd_out, frame(obj))
            except BrokenPipeError:
                self.acks = False

    def tell_spooled(self) -> None:
        """Tell the daemon how many answered rows wait in the spool, when that changed."""
        if self.pg is not None and self.pg.spool is not None and self.pg.spool.count != self._spooled:
            self._spooled = self.pg.spool.count
            self.tell({"spooled": self._spooled})

    def wait(self, exc: sqlite3.OperationalError) -> None:
        """A commit failed for a reason that is not the rows': say so (once), back off, go on."""
        why = str(exc) or type(exc).__name__
        if self.unhealthy != why:
            self.unhealthy = why
            self.tell({"unhealthy": why})
        if self.inp.eof:
            if self._since is None:
                self._since = time.monotonic()
            elif time.monotonic() - self._since > GIVE_UP_AFTER_EOF:
                waiting = sum(len(rows) for _, rows, _ in self.inp.frames)
                sys.stderr.write(f"llmgw ledger writer: the daemon is gone and commits still fail ({why}); "
                                 f"giving up, this batch and {waiting} more rows were not written\n")
                raise SystemExit(3)
        time.sleep(self._delay)
        self._delay = min(self._delay * 2, RETRY_MAX)
        self.inp.read(block=False)  # keep the daemon's pipe flowing while we wait

    def commit(self, rows: list[Any], recover: bool) -> list[BaseException | None]:
        """Commit ``rows`` (a recovery batch without the rows already in); one error (or None) per row."""
        skip: set[int] = set()
        while recover:
            try:
                skip, top = (self.pg.already_committed(rows) if self.pg is not None
                             else _already_committed(self.conn, rows))
                self.max_rowid = max(self.max_rowid, top)
                break
            except sqlite3.OperationalError as exc:
                self.wait(exc)
        fresh = [r for i, r in enumerate(rows) if i not in skip] if skip else rows
        errors: list[BaseException | None]
        if not fresh:
            errors, last = [], 0
        elif self.pg is not None:
            errors, last = self.pg.insert(fresh, self.wait)
        else:
            errors, last = insert(self.conn, fresh, self.wait)
        self._delay = RETRY_FIRST
        self._since = None
        if self.unhealthy is not None:
            self.unhealthy = None
            self.tell({"unhealthy": None})
        self.max_rowid = max(self.max_rowid, last)
        self.tell_spooled()  # before the batch's answer: its rows may be in the spool only
        if not skip:
            return errors
        it = iter(errors)
        return [None if i in skip else next(it) for i in range(len(rows))]


class _Input:
    """Frames from stdin: ``read(block)`` appends whatever is there (waiting for it if asked)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.frames: deque[tuple[int, list[Any], bool]] = deque()
        self.eof = False

    def read(self, block: bool, timeout: float | None = None) -> None:
        """``block``: wait for a whole frame (at most ``timeout`` seconds for the first bytes)."""
        while not self.eof:
            if not select.select([self.fd], [], [], timeout if block else 0)[0]:
                return
            data = os.read(self.fd, framing.READ_SIZE)
            if not data:
                self.eof = True
                return
            self.buf += data
            for f in unframe(self.buf):
                self.frames.append((f[0], f[1], len(f) > 2 and bool(f[2])))
            if self.frames:
                block = False  # got a whole frame: from here on only take what is already there


def run(db_path: str, max_batch: int, linger: float, fd_in: int = 0, fd_out: int = 1) -> None:
    pg: PgLedger | None = None
    if db_path == PG_MARK:
        store = PgStore(os.environ.pop(STORE_URL_ENV, ""))
        spool = os.environ.get(SPOOL_ENV)
        pg = PgLedger(store, Spool(Path(spool)) if spool else None)
        conn: Any = None  # the roll-ups' connection (opened with the migration check)
        try:
            conn = open_db(store)
        except ResourceError:
            if pg.spool is None:
                raise
            # unreachable: rows go to the spool from the start; the roll-ups connect once it answers
            sys.stderr.write(f"llmgw ledger writer: started while PostgreSQL is unreachable ({store.label}); rows "
                             f"are spooled to {pg.spool.path}\n")
        if pg.spool is not None and pg.spool.count:
            pg.drain()
    else:
        conn = open_db(Path(db_path))
        conn.isolation_level = None  # autocommit: insert() manages its transactions
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    inp = _Input(fd_in)
    w = _Writer(conn, fd_out, inp, pg)
    w.tell({"unhealthy": None})  # ready: the database is open (a restarted writer is healthy from here)
    w.tell_spooled()
    roller = rollups.Roller(conn, connect=(lambda: open_db(pg.store)) if pg is not None else None)
    last_size = 0
    try:
        while True:
            if not inp.frames:
                spooling = pg is not None and pg.spool is not None and pg.spool.count > 0
                idle = roller.idle_wait()
                inp.read(block=True, timeout=min(idle, SPOOL_RETRY) if spooling and idle else
                         (SPOOL_RETRY if spooling else idle))
                if not inp.frames and not inp.eof:
                    if spooling:
                        assert pg is not None
                        w.max_rowid = max(w.max_rowid, pg.drain() or 0)  # idle: try the server again
                        w.tell_spooled()
                        continue
                    roller.run()  # idle: roll up what was committed, then wait again
                    continue
                if not inp.frames:
                    break  # EOF and nothing left
            if last_size > 1 and not inp.eof:
                time.sleep(linger)
            inp.read(block=False)
            # one batch: up to max_batch rows from the frames in order (a frame may be split); a
            # recovery frame is a batch of its own
            batch: list[Any] = []
            batch_first = inp.frames[0][0]
            recover = inp.frames[0][2]
            while inp.frames and len(batch) < max_batch and inp.frames[0][2] == recover:
                first, rows, rec = inp.frames.popleft()
                # a recovery frame is committed whole, in one answer: the rows the dead writer had
                # committed are then all confirmed at once, so "every row up to max_rowid is
                # confirmed" holds after each answer
                take = len(rows) if recover else max_batch - len(batch)
                batch.extend(rows[:take])
                if len(rows) > take:
                    inp.frames.appendleft((first + take, rows[take:], rec))
                if recover:
                    break
            last_size = len(batch)
            started = time.perf_counter()
            errors = w.commit(batch, recover)
            elapsed = time.perf_counter() - started
            failed = [[batch_first + i, type(e).__name__, str(e)] for i, e in enumerate(errors) if e is not None]
            w.tell([batch_first + len(batch) - 1, failed, elapsed, w.max_rowid])
            if pg is None or pg.spool is None or not pg.spool.count:
                roller.committed()  # after the answer: a roll-up never delays a request
        roller.run()
    finally:
        if roller.conn is not None:
            roller.conn.close()
        if pg is not None:
            pg.close()


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
