"""Where the store is, and connections to it: SQLite (the default) or PostgreSQL (``[store] url``).

Owns: ``PgStore`` (a PostgreSQL target: its URL, shown only redacted), ``Target`` (a SQLite file's
``Path`` or a ``PgStore``: what every component is handed), ``PgConnection`` (a psycopg 3
connection that looks like ``sqlite3.Connection`` to the callers) and ``dialect``.

Invariants:
- SQLite connections are plain ``sqlite3.Connection`` objects (``store.db.connect``): nothing here
  is on their path, so the embedded default costs exactly what it did.
- A ``PgConnection`` takes the SQL the code base writes for SQLite where it is portable: ``?`` and
  ``:name`` placeholders, ``NOT INDEXED`` (dropped), ``INSERT OR IGNORE`` (``ON CONFLICT DO
  NOTHING``), ``BEGIN IMMEDIATE`` (a transaction holding the store's write lock, an advisory lock, so
  what a definitions writer reads to check is what it writes against, as on SQLite). Anything else
  dialect-specific is written per dialect by its caller (``dialect(conn)``).
- Its rows are ``Row``: index and key access, ``keys()``, ``dict(row)``, like ``sqlite3.Row``.
  ``SUM`` of integers (PostgreSQL's ``numeric``) comes back as ``int``, as on SQLite.
- Transactions behave as ``sqlite3``'s default mode: a statement outside a transaction commits by
  itself, except INSERT/UPDATE/DELETE, which open one (ended by ``commit``/``rollback``); a plain
  ``BEGIN`` reads one snapshot (REPEATABLE READ). A reader is never left idle in a transaction by
  its SELECTs (it would hold locks that block migrations).
- A connection the server dropped (a restart) outside a transaction is made again, and the
  statement run once more; inside one, the statement fails with ``OperationalError`` (the caller
  rolls back) and the next statement reconnects.
- Errors surface as the DB-API classes of the ``sqlite3`` module (same hierarchy: ``OperationalError``
  for a server that is down or unreachable, ``IntegrityError`` for a constraint...), so a caller
  catches one family whichever store is configured. Their messages never hold the URL's password.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    import psycopg

#: the advisory lock that ``BEGIN IMMEDIATE`` takes (one store-wide write lock for definitions)
WRITE_LOCK = 0x6C6C6D67  # "llmg"
#: the advisory lock migrations run under
MIGRATE_LOCK = WRITE_LOCK + 1
CONNECT_TIMEOUT = 5  # seconds, unless the URL says otherwise


def redact_url(url: str) -> str:
    """``url`` with its user and password replaced by ``***`` (for messages, ``repr``, logs)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if port is not None:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


class PgStore:
    """A PostgreSQL database named by a ``postgresql://`` URL. ``str``/``repr`` never show the password."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def label(self) -> str:
        return redact_url(self.url)

    def password(self) -> str | None:
        try:
            pw = urlsplit(self.url).password
        except ValueError:
            return None
        return unquote(pw) if pw else None

    def scrub(self, text: str) -> str:
        """``text`` without the URL or its password (an error message from the driver)."""
        text = text.replace(self.url, self.label)
        pw = self.password()
        if pw:
            text = text.replace(pw, "***")
        return text

    def __repr__(self) -> str:
        return f"PgStore({self.label!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PgStore) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)


#: where the store is: a SQLite file, or a PostgreSQL database
Target = Path | PgStore


def label(target: Target) -> str:
    """The target for a message: the file's path, or the redacted URL."""
    return target.label if isinstance(target, PgStore) else str(target)


def dialect(conn: Any) -> str:
    """``"postgres"`` for a ``PgConnection``, ``"sqlite"`` otherwise."""
    return "postgres" if type(conn) is PgConnection else "sqlite"


def is_pg(conn: Any) -> bool:
    return type(conn) is PgConnection


# ---- rows -----------------------------------------------------------------------------------------


class Row:
    """A result row like ``sqlite3.Row``: ``row[0]``, ``row["name"]``, ``row[1:]``, ``keys()``,
    ``dict(row)``, iteration over the values, equality with other rows and tuples."""

    __slots__ = ("_v", "_i")

    def __init__(self, values: tuple[Any, ...], index: dict[str, int]) -> None:
        self._v = values
        self._i = index

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, str):
            try:
                return self._v[self._i[k]]
            except KeyError:
                raise IndexError(f"No item with that key: {k!r}") from None
        return self._v[k]

    def keys(self) -> list[str]:
        return list(self._i)

    def __iter__(self) -> Any:
        return iter(self._v)

    def __len__(self) -> int:
        return len(self._v)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._v == other._v and self._i == other._i
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._v)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._i, self._v, strict=False))!r})"


def _row_factory(cursor: Any) -> Any:
    desc = cursor.description
    if desc is None:
        return tuple
    index = {c.name: i for i, c in enumerate(desc)}
    return lambda values: Row(tuple(values), index)


# ---- SQL: the few SQLite spellings PostgreSQL needs in its own words ---------------------------------

_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|::|\?|:[A-Za-z_][A-Za-z0-9_]*|%")
_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO\b", re.I)
_OR_REPLACE = re.compile(r"^\s*(INSERT\s+OR\s+REPLACE|REPLACE)\s+INTO\b", re.I)
_RETURNING = re.compile(r"\sRETURNING\s", re.I)
_DML = re.compile(r"^\s*(INSERT|UPDATE|DELETE)\b", re.I)


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> tuple[str, str, bool]:
    """``(sql with %s / %(name)s placeholders and %% for %, the same without parameters, is DML)``."""
    if _OR_REPLACE.match(sql):
        raise sqlite3.ProgrammingError("INSERT OR REPLACE is SQLite-only: write an upsert (ON CONFLICT ... DO UPDATE)")
    sql = sql.replace(" NOT INDEXED", "")
    ignore = bool(_OR_IGNORE.match(sql))
    if ignore:
        sql = _OR_IGNORE.sub("INSERT INTO", sql, count=1)
        m = _RETURNING.search(sql)
        sql = (sql[:m.start()] + " ON CONFLICT DO NOTHING" + sql[m.start():]) if m else sql + " ON CONFLICT DO NOTHING"

    def sub(m: re.Match[str]) -> str:
        t = m.group(0)
        if t == "?":
            return "%s"
        if t == "%":
            return "%%"
        if t[0] == ":" and t != "::":
            return f"%({t[1:]})s"
        if t[0] in "'\"":
            return t.replace("%", "%%")
        return t

    return _TOKENS.sub(sub, sql), sql, bool(_DML.match(sql))


def _ddl(sql: str) -> str:
    """A ``CREATE``/``ALTER`` statement written for SQLite in PostgreSQL's types: 64-bit integers,
    double precision reals, bytea blobs, identity primary keys (never reused, as AUTOINCREMENT)."""
    sql = re.sub(r"\bINTEGER PRIMARY KEY(?: AUTOINCREMENT)?", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                 sql)
    sql = re.sub(r"\bINTEGER\b", "BIGINT", sql)
    sql = re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql)
    sql = re.sub(r"\bBLOB\b", "BYTEA", sql)
    return re.sub(r"\)\s*WITHOUT ROWID\s*$", ")", sql)


# ---- errors -----------------------------------------------------------------------------------------

_CLASSES = ("IntegrityError", "DataError", "OperationalError", "ProgrammingError", "NotSupportedError",
            "InternalError", "InterfaceError", "DatabaseError")


def as_sqlite_error(exc: BaseException, store: PgStore) -> sqlite3.Error:
    """The ``sqlite3`` DB-API class matching a psycopg error (the nearest base), message scrubbed."""
    import psycopg

    msg = store.scrub(str(exc).strip() or type(exc).__name__)
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        return sqlite3.OperationalError(msg)  # what SQLite raises for "no such table/column"
    for name in _CLASSES:
        if isinstance(exc, getattr(psycopg, name)):
            err: sqlite3.Error = getattr(sqlite3, name)(msg)
            return err
    return sqlite3.Error(msg)


# ---- connections --------------------------------------------------------------------------------------


class PgConnection:
    """A psycopg 3 connection with the ``sqlite3.Connection`` surface the code base uses."""

    def __init__(self, raw: psycopg.Connection[Any], store: PgStore, readonly: bool) -> None:
        self.raw = raw
        self.store = store
        self.readonly = readonly
        self.row_factory: Any = None  # accepted and ignored: rows are always ``Row``
        self.isolation_level: str | None = ""  # None: no implicit transaction before DML (the writer)
        self._closed = False

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        # a connection the server dropped holds no transaction any more (the server rolled it back)
        return self.raw.info.transaction_status != TransactionStatus.IDLE and not self.raw.closed

    def _run(self, sql: str, params: Any = None) -> Any:
        idle = not self.in_transaction
        try:
            return self.raw.execute(sql, params)
        except Exception as e:
            if not _is_driver_error(e):
                raise
            if not (idle and self.raw.closed and not self._closed):  # closed: lost, or a reconnect failed
                raise as_sqlite_error(e, self.store) from None  # in a transaction: the caller's rollback ends it
        # the server dropped the connection (a restart, a failover) while no transaction was open: a
        # long-lived connection (the daemon's definitions reader, key lookups, events, roll-ups)
        # connects again and runs the statement once more
        self.raw.close()
        try:
            self.raw = connect_raw(self.store, readonly=self.readonly)
            return self.raw.execute(sql, params)
        except Exception as e:
            if _is_driver_error(e):
                raise as_sqlite_error(e, self.store) from None
            raise

    def execute(self, sql: str, params: Any = ()) -> Any:
        head = sql.lstrip()[:16].upper()
        if head.startswith("BEGIN"):
            if self.in_transaction:
                raise sqlite3.OperationalError("cannot start a transaction within a transaction")
            if head.startswith("BEGIN IMMEDIATE"):
                self._run("BEGIN")
                self._run("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            else:
                self._run("BEGIN ISOLATION LEVEL REPEATABLE READ")
            return _EMPTY
        if head.startswith(("COMMIT", "END")):
            self.commit()
            return _EMPTY
        if head.startswith("ROLLBACK") and "TO" not in head:
            self.rollback()
            return _EMPTY
        with_params, bare, dml = translate(sql)
        if dml and self.isolation_level is not None and not self.in_transaction:
            self._run("BEGIN")
        if params:
            return self._run(with_params, params)
        return self._run(bare)

    def executemany(self, sql: str, seq: Any) -> Any:
        cur = _EMPTY
        for params in seq:
            cur = self.execute(sql, params)
        return cur

    def commit(self) -> None:
        if self.in_transaction:
            self._run("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self._run("ROLLBACK")

    def close(self) -> None:
        self._closed = True
        self.raw.close()

    def __enter__(self) -> PgConnection:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


class _Empty:
    rowcount = -1
    lastrowid = None
    description = None

    def fetchone(self) -> None:
        return None

    def fetchall(self) -> list[Any]:
        return []

    def __iter__(self) -> Any:
        return iter(())


_EMPTY = _Empty()


def _is_driver_error(e: BaseException) -> bool:
    import psycopg

    return isinstance(e, psycopg.Error)


def _numeric_loader() -> Any:
    from psycopg.adapt import Loader

    class IntegerOrFloat(Loader):
        """``numeric`` as ``int`` when it is whole (SUM of bigint), else ``float`` (AVG), as SQLite gives."""

        def load(self, data: Any) -> Any:
            s = bytes(data)
            if b"." in s or b"e" in s or b"N" in s or b"I" in s:
                return float(s)
            return int(s)

    return IntegerOrFloat


def connect_raw(store: PgStore, *, readonly: bool = False, client_cursor: bool = True) -> psycopg.Connection[Any]:
    """A psycopg connection in autocommit mode (the caller's statements decide the transactions)."""
    import psycopg

    kwargs: dict[str, Any] = {"autocommit": True, "application_name": "llmgw", "row_factory": _row_factory}
    if "connect_timeout" not in store.url:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT
    if readonly:
        kwargs["options"] = "-c default_transaction_read_only=on"
    if client_cursor:  # literal parameters, typed by the server as SQLite's are: `? IS NULL` works
        kwargs["cursor_factory"] = psycopg.ClientCursor
    try:
        raw = psycopg.connect(store.url, **kwargs)
    except psycopg.Error as e:
        raise as_sqlite_error(e, store) from None
    raw.adapters.register_loader("numeric", _numeric_loader())
    return raw


def connect_pg(store: PgStore, *, readonly: bool = False) -> PgConnection:
    return PgConnection(connect_raw(store, readonly=readonly), store, readonly)


_IDLE: dict[PgStore, list[PgConnection]] = {}
_IDLE_LOCK = threading.Lock()
POOL_IDLE_MAX = 4


@contextmanager
def borrowed(store: PgStore) -> Iterator[PgConnection]:
    """A PostgreSQL connection for one short job (a worker thread's Idempotency-Key lookup), taken
    from a few kept idle per store and given back afterwards: a new connection costs a TCP and SCRAM
    handshake (milliseconds), a SQLite file's costs nothing, so SQLite callers simply connect."""
    with _IDLE_LOCK:
        idle = _IDLE.get(store)
        conn = idle.pop() if idle else None
    if conn is None:
        conn = connect_pg(store)
    kept = False
    try:
        yield conn
        if not conn.in_transaction and not conn.raw.closed:
            with _IDLE_LOCK:
                idle = _IDLE.setdefault(store, [])
                if len(idle) < POOL_IDLE_MAX:
                    idle.append(conn)
                    kept = True
    finally:
        if not kept:
            conn.close()
