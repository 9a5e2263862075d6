"""Governance events (soft-cap warnings, hard caps reached, grace used): stored once, delivered
to an optional webhook in the background.

Invariants:
- An event is stored at most once per budget, period window and threshold (the ``events_once``
  unique index); only newly stored events are delivered.
- Delivery never blocks a request: events go on an in-memory queue drained by one task that
  POSTs JSON to ``[webhooks] url`` with retries and exponential backoff, and marks rows
  delivered. A webhook that stays down loses nothing: undelivered rows stay ``delivered = 0``
  and are retried at the next start.
- Configuration (``config.WebhookConfig``): ``[webhooks] url = "https://..."``, optional
  ``secret_env`` (name of an environment variable holding an HMAC-SHA256 key; the body's signature
  is sent in ``x-llmgw-signature: sha256=<hex>``), ``timeout`` (seconds, default 5),
  ``max_attempts`` (default 6).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import sqlite3
from typing import Any

import aiohttp
import orjson

from ..config import WebhookConfig
from ..store import db as store_db
from ..store.conn import Target, is_pg

log = logging.getLogger("llmgw.events")


def store(conn: sqlite3.Connection, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert events, ignoring repeats; return the ones that were new (with their row id). Runs in the
    caller's transaction."""
    new = []
    pg = is_pg(conn)  # no lastrowid there: the id comes back from RETURNING
    for ev in events:
        cur = conn.execute(
            "INSERT OR IGNORE INTO events (ts_ms, kind, budget_id, scope, scope_id, period_start_ms, threshold,"
            " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)" + (" RETURNING id" if pg else ""),
            (ev["ts_ms"], ev["kind"], ev.get("budget_id"), ev.get("scope"), ev.get("scope_id"),
             ev.get("period_start_ms"), ev.get("threshold"), orjson.dumps(ev.get("detail") or {}).decode()))
        if pg:
            row = cur.fetchone()
            if row is not None:
                new.append({**ev, "id": row[0]})
        elif cur.rowcount:
            new.append({**ev, "id": cur.lastrowid})
    return new


class EventSink:
    """Stores events off the event loop and delivers new ones to the webhook, in order."""

    def __init__(self, db_path: Target, webhook: WebhookConfig | None, session: aiohttp.ClientSession,
                 secret: bytes | None = None) -> None:
        self.db_path = db_path
        self.webhook = webhook
        self.secret = secret  # the webhook's HMAC key
        self.session = session
        self._queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._conn: sqlite3.Connection | None = None

    def start(self, *, backlog: bool = True) -> None:
        """Start delivering; ``backlog``: also what a previous run could not deliver (one process of
        ``serve --workers`` does that)."""
        self._conn = store_db.connect(self.db_path)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="llmgw-events")
        if self.webhook is not None and backlog:  # what a previous run could not deliver
            rows = self._conn.execute("SELECT * FROM events WHERE delivered = 0 ORDER BY id").fetchall()
            if rows:
                self._queue.put_nowait([{"_stored": True, **_from_row(r)} for r in rows])

    def emit(self, events: list[dict[str, Any]]) -> None:
        """Called on the event loop; returns at once."""
        if events:
            self._queue.put_nowait(events)

    async def _run(self) -> None:
        assert self._conn is not None
        while True:
            batch = await self._queue.get()
            try:
                fresh = [e for e in batch if e.get("_stored")]
                to_store = [e for e in batch if not e.get("_stored")]
                if to_store:
                    fresh += await asyncio.to_thread(self._store, to_store)
                for ev in fresh:
                    # a raise's threshold is its number in the window, every other kind's a percentage
                    at = f"raise #{ev.get('threshold')}" if ev["kind"] == "budget_raised" else f"at {ev.get('threshold')}%"
                    log.warning("budget event: %s %s %s %s", ev["kind"], ev.get("scope"), ev.get("scope_id"), at)
                    if self.webhook is not None:
                        await self._deliver(ev)
            except Exception:  # never let the sink die: log and go on
                log.exception("could not store or deliver budget events")
            finally:
                self._queue.task_done()

    def _store(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self._conn is not None
        with self._conn:
            return store(self._conn, events)

    async def _deliver(self, ev: dict[str, Any]) -> None:
        assert self.webhook is not None and self._conn is not None
        payload = {k: v for k, v in ev.items() if not k.startswith("_")}
        body = orjson.dumps(payload)
        headers = {"content-type": "application/json", "user-agent": "llmgw-webhook"}
        if self.secret:
            headers["x-llmgw-signature"] = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        delay = 0.5
        for attempt in range(1, self.webhook.max_attempts + 1):
            try:
                async with self.session.post(self.webhook.url, data=body, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=self.webhook.timeout)) as r:
                    await r.read()
                    if r.status < 300:
                        await asyncio.to_thread(_mark_delivered, self._conn, ev["id"])
                        return
                    reason = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError) as e:
                reason = type(e).__name__
            log.info("webhook attempt %d for event %s failed: %s", attempt, ev.get("id"), reason)
            if attempt < self.webhook.max_attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        log.warning("webhook gave up on event %s after %d attempts; it stays undelivered",
                    ev.get("id"), self.webhook.max_attempts)

    async def drain(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._queue.join()
        except TimeoutError:
            log.warning("shutting down with budget events still being delivered")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._conn is not None:
            self._conn.close()


def _mark_delivered(conn: sqlite3.Connection, event_id: int) -> None:
    with conn:
        conn.execute("UPDATE events SET delivered = 1 WHERE id = ?", (event_id,))


def _from_row(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    d["detail"] = orjson.loads(d["detail"]) if d.get("detail") else {}
    return d
