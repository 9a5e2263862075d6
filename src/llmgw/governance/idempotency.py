"""Idempotent requests: a repeated ``Idempotency-Key`` within 24 hours gets the stored answer and
is not charged again.

Scope and rules:
- Keys are per virtual key (two customers may use the same idempotency key independently).
- Only completed, non-streaming 200 answers are stored (in the ``idempotency`` table, written
  before the response is sent, so a retry that follows a received answer always finds it).
- The same idempotency key with a different request body is a client bug: 400
  ``idempotency_key_reused``, as Stripe and OpenAI-style APIs do.
- A duplicate that arrives while the first is still running waits for the first and then gets
  its answer: in-process, and across instances in cluster mode (``shared``: claims in Redis, see
  ``cluster.node.SharedClaims``).
- Streaming requests ignore the header (an SSE stream is not replayed from here).
SQLite work runs in worker threads with short-lived connections (PostgreSQL: a few kept
connections, ``store.conn.borrowed``): only requests carrying the header pay for it.
- The store failing (disk full, a lock held longer than the busy timeout) never becomes a bare 500:
  ``begin`` raises a typed 503 (``ServiceUnavailable``, code ``idempotency_unavailable``) before the
  request runs; ``finish`` logs and gives the slot up, and the answer is still delivered (it was
  recorded in the ledger; only a retry of it would run again).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..clock import Clock, wall_ms
from ..errors import InvalidRequest, LlmgwError, ServiceUnavailable
from ..store import db as store_db
from ..store.conn import PgStore, Target, borrowed

log = logging.getLogger("llmgw.idempotency")

TTL_MS = 24 * 3600 * 1000
MAX_KEY_LEN = 255


class IdempotencyElsewhere(LlmgwError):
    """409: the key's answer is stored by an instance whose store this one cannot read (cluster mode)."""

    status = 409
    type = "invalid_request_error"
    code = "idempotency_key_answered_elsewhere"
    anthropic_type = "invalid_request_error"


@dataclass(frozen=True, slots=True)
class Stored:
    status: int
    content_type: str
    body: bytes


def request_hash(raw_body: bytes) -> str:
    return hashlib.sha256(raw_body).hexdigest()


@contextmanager
def _connection(db_path: Target) -> Iterator[Any]:
    if isinstance(db_path, PgStore):  # a kept connection: a new one is a TCP + SCRAM handshake per request
        with borrowed(db_path) as conn:
            yield conn
        return
    conn = store_db.connect(db_path)
    try:
        yield conn
    finally:
        conn.close()


def _lookup(db_path: Target, key_id: str, idem_key: str, now_ms: int) -> tuple[str, Stored] | None:
    with _connection(db_path) as conn:
        row = conn.execute("SELECT request_hash, status, content_type, body, created_ms FROM idempotency"
                           " WHERE key_id = ? AND idem_key = ?", (key_id, idem_key)).fetchone()
    if row is None or row["created_ms"] < now_ms - TTL_MS:
        return None
    return row["request_hash"], Stored(row["status"], row["content_type"], bytes(row["body"]))


def _store(db_path: Target, key_id: str, idem_key: str, rhash: str, stored: Stored, now_ms: int) -> None:
    with _connection(db_path) as conn:
        with conn:
            conn.execute("DELETE FROM idempotency WHERE created_ms < ?", (now_ms - TTL_MS,))
            conn.execute("INSERT INTO idempotency (key_id, idem_key, request_hash, status, content_type,"
                         " body, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key_id, idem_key) DO UPDATE"
                         " SET request_hash = excluded.request_hash, status = excluded.status,"
                         " content_type = excluded.content_type, body = excluded.body,"
                         " created_ms = excluded.created_ms",
                         (key_id, idem_key, rhash, stored.status, stored.content_type, stored.body, now_ms))


class Idempotency:
    def __init__(self, db_path: Target, clock: Clock = wall_ms) -> None:
        self.db_path = db_path
        self.clock = clock
        self._in_flight: dict[tuple[str, str], asyncio.Future[Stored | None]] = {}
        self.shared: Any = None  # cluster mode: node.SharedClaims (claims seen by every instance)
        self.wait_s = 600.0  # how long a duplicate waits for another instance's run (the request timeout)

    @staticmethod
    def check_key(idem_key: str) -> str:
        if not idem_key or len(idem_key) > MAX_KEY_LEN or not idem_key.isprintable():
            raise InvalidRequest(f"Idempotency-Key must be 1-{MAX_KEY_LEN} printable characters",
                                 param="Idempotency-Key", code="invalid_value")
        return idem_key

    async def begin(self, key_id: str, idem_key: str, raw_body: bytes) -> Stored | None:
        """The stored answer to replay, or None when this request should run (and ``finish`` later)."""
        rhash = request_hash(raw_body)
        slot = (key_id, idem_key)
        while (running := self._in_flight.get(slot)) is not None:
            await asyncio.shield(running)
        # hold the slot before the first await, so a duplicate arriving meanwhile waits for us
        mine: asyncio.Future[Stored | None] = asyncio.get_running_loop().create_future()
        self._in_flight[slot] = mine
        claimed = False
        try:
            elsewhere = None
            if self.shared is not None:  # another instance may be running it, or have answered it
                elsewhere = await self.shared.claim(key_id, idem_key, rhash, time.monotonic() + self.wait_s)
                claimed = elsewhere is None
            try:
                found = await asyncio.to_thread(_lookup, self.db_path, key_id, idem_key, self.clock())
            except (sqlite3.Error, OSError) as e:
                raise ServiceUnavailable(f"Idempotency-Key: the store of earlier answers cannot be read now ({e})",
                                         code="idempotency_unavailable") from e
            if (found is not None and found[0] != rhash) or (found is None and elsewhere not in (None, rhash)):
                raise InvalidRequest("this Idempotency-Key was already used with a different request body",
                                     param="Idempotency-Key", code="idempotency_key_reused")
            if found is None and elsewhere is not None:
                raise IdempotencyElsewhere(
                    "this Idempotency-Key was answered by another llmgw instance whose store this one cannot read "
                    "(share the store with [store] url); it is not run twice")
        except BaseException:
            self._release(slot, None)
            if claimed:
                await self.shared.finish(key_id, idem_key, rhash, False)
            raise
        if found is not None:
            self._release(slot, found[1])
            return found[1]
        return None

    def _release(self, slot: tuple[str, str], stored: Stored | None) -> None:
        fut = self._in_flight.pop(slot, None)
        if fut is not None and not fut.done():
            fut.set_result(stored)

    async def finish(self, key_id: str, idem_key: str, raw_body: bytes, stored: Stored | None) -> None:
        """Store a 200 answer (``stored``) or give the slot up (None); wakes waiting duplicates."""
        slot = (key_id, idem_key)
        rhash = request_hash(raw_body)
        kept = False
        try:
            if stored is not None and stored.status == 200:
                await asyncio.to_thread(_store, self.db_path, key_id, idem_key, rhash, stored, self.clock())
                kept = True
        except (sqlite3.Error, OSError) as e:
            log.error("could not store the answer for an Idempotency-Key (a retry of it will run again): %s", e)
        finally:
            if self.shared is not None:
                await self.shared.finish(key_id, idem_key, rhash, kept)
            self._release(slot, stored)
