"""The daemon's ledger housekeeping: the roll-up catch-up at start and the retention task.

Owns: ``catch_up`` (before the daemon serves, every ledger row not yet in the roll-ups is rolled
up: an upgraded home with millions of rows is exact and fast to read after its first start) and
``Retention`` (``[ledger] retain_days`` and ``[log] bodies_retain_days``: checked at start and then
every hour, so each day's rows go once the day is old enough).

Invariants:
- All SQLite work runs in a worker thread on its own connection, in short transactions
  (``store.rollups.catch_up``, ``store.retention``): the event loop and the ledger writer never
  wait long.
- Cut-offs come from the daemon's clock and are UTC midnights: ``retain_days = 30`` keeps today
  and the 30 whole days before it.
- A failed run is logged and retried at the next check; it never stops the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3

from .clock import Clock
from .store import retention, rollups
from .store.conn import Target
from .store.db import open_db
from .units import DAY_MS, iso_utc

log = logging.getLogger("llmgw.ledger")

CHECK_SECONDS = 3600.0


def catch_up(dbfile: Target) -> int:
    """Roll up every pending ledger row (in chunks, logging progress for a big backlog)."""
    conn = open_db(dbfile)
    try:
        total = rollups.pending(conn)
        if total > 100_000:
            log.info("rolling up %d ledger rows written before roll-ups existed (once)", total)

        def progress(done: int, _total: int) -> None:
            if total > 100_000:
                log.info("rolled up %d of %d ledger rows", done, total)

        return rollups.catch_up(conn, progress=progress)
    finally:
        conn.close()


def cutoff(now_ms: int, days: int) -> int:
    """The UTC midnight ``days`` whole days before today's."""
    return now_ms - now_ms % DAY_MS - days * DAY_MS


class Retention:
    """Deletes raw rows older than ``ledger_days`` and erases bodies older than ``bodies_days``."""

    def __init__(self, dbfile: Target, clock: Clock, *, ledger_days: int | None, bodies_days: int | None,
                 every: float = CHECK_SECONDS) -> None:
        self.dbfile, self.clock, self.every = dbfile, clock, every
        self.ledger_days, self.bodies_days = ledger_days, bodies_days
        self.runs = 0  # completed checks (tests wait on it)

    @property
    def enabled(self) -> bool:
        return self.ledger_days is not None or self.bodies_days is not None

    def once(self) -> tuple[int, int]:
        """One check: ``(raw rows deleted, rows whose bodies were erased)``."""
        now = self.clock()
        conn = open_db(self.dbfile)
        try:
            rows = bodies = 0
            if self.bodies_days is not None:
                before = cutoff(now, self.bodies_days)
                bodies = retention.prune_bodies(conn, before)
                if bodies:
                    log.info("retention: erased the logged bodies of %d ledger rows before %s", bodies,
                             iso_utc(before)[:10])
            if self.ledger_days is not None:
                before = cutoff(now, self.ledger_days)
                rows = retention.prune_rows(conn, before, now).rows
                if rows:
                    log.info("retention: deleted %d raw ledger rows before %s (their roll-ups stay)", rows,
                             iso_utc(before)[:10])
            return rows, bodies
        finally:
            conn.close()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.once)
            except (sqlite3.Error, OSError) as e:
                log.warning("retention check failed (retried in %.0f s): %s", self.every, e)
            self.runs += 1
            await asyncio.sleep(self.every)
