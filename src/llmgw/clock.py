"""The one source of business time: budget windows and rollovers, key expiry and rotation grace,
idempotency and cache TTLs, event and ledger timestamps, reports' default windows, the TUI.

A clock is any callable returning epoch milliseconds (an ``int``). The daemon is handed one by
``create_app(..., clock=)`` and passes it to every component explicitly; the CLI and the TUI read
the process clock through ``now_ms()``, which ``install`` replaces (``llmgw.cli.main.main(clock=)``).
Durations and deadlines (retries, timeouts, rate-limit buckets) use ``time.monotonic`` instead:
they must not jump when the calendar does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]


def wall_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


_current: Clock = wall_ms


def now_ms() -> int:
    """The process clock (the wall clock unless ``install`` replaced it)."""
    return _current()


def install(clock: Clock | None) -> Clock:
    """Make ``clock`` (None: the wall clock) the process clock; returns the previous one."""
    global _current
    previous, _current = _current, clock or wall_ms
    return previous
