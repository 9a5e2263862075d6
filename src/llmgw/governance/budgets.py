"""Budgets: the daemon's in-memory book of spend that decides admission.

Owns the ``Budget`` definition, ``BudgetBook`` (reserve an upper bound before a request, settle to
the real cost after it, threshold events) and ``BudgetExceeded``; and the budgets table as the CLI
and the admin API edit it (``upsert_budget``, ``delete_budget``, ``select_budgets``,
``budget_report``), so every front end applies the same rules; these run in the caller's
transaction and never commit. Period windows, money parsing and formatting are ``units``'.

Invariants:

* Money is integer nano-dollars; no float takes part in it (``utilisation`` is a ratio for display).
* The ledger is the source of truth: ``BudgetBook.load`` rebuilds every counter from it, so after a
  restart the counters equal the ledger. For that, the gateway must write the ledger row with the
  same ``ts_ms`` it passed to ``reserve`` (the request's start), so the row falls in the window that
  the reservation was made in.
* Single-threaded, no I/O, no clock: every method takes ``now_ms`` (an injectable clock) and runs to
  completion without awaiting, so ``reserve`` (check every budget, then charge every budget) is atomic
  on the event loop. Hard caps hold under any concurrency: a budget admits only when
  ``spent + reserved + amount <= limit (+ grace)``.
* Windows roll over at request time (``now_ms >= end``): spent and reserved restart at 0. A
  reservation made in an earlier window settles nothing into the new one.
* A budget that appears while requests run (created by the CLI, the admin API or ``config apply``)
  counts them: its spent is what the ledger holds up to the writer's committed point plus every
  request the book tracks (a ``Flight``, from admission until its row is committed) that is not in
  that part of the ledger: its cost if settled, else its reservation (the flight's existing one, or
  its cost bound), which then settles into the new budget too. So counters equal ledger spend in
  the window plus reservations in flight, whatever changes during traffic (see ``reload``).
* Events are produced, never written: ``settle`` returns them and the gateway stores them (the events
  table's unique index keeps each one once, also across restarts).
* Auto-raise (``raise_step_nanos`` > 0, hard budgets only): when a hard cap would refuse a request,
  ``reserve`` raises the limit of the window by one step (never past ``ceiling_nanos``) instead, if
  what was really spent (settled, not merely reserved in flight) has reached the current limit minus
  one step: the k-th raise needs ``spent >= limit + (k - 2) * step``, so raises follow real spend, at
  most one per step spent, and a burst of requests in flight cannot raise twice. Raises are part of
  the same atomic check as admission (all budgets admit, or none is charged or raised), return a
  ``budget_raised`` event each (threshold = the raise's number in the window: stored once), and are
  rebuilt at start from those events. The raised limit holds for the rest of the window; a new window
  starts at the declared limit.
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import clock
from ..errors import LlmgwError, NotFound, UsageError
from ..store import rollups
from ..units import MAX_NANOS, PERIODS, iso_utc, usd, window

log = logging.getLogger("llmgw.budgets")

SCOPES = ("customer", "team", "key")
ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly", "total": "total"}

#: ``(scope, scope_id, since_ms) -> spent nano-dollars`` read from the ledger
SpendFn = Callable[[str, str, int], int]
#: ``(budget_id, window_start_ms) -> auto-raises already made in that window`` (from the events)
RaisesFn = Callable[[str, int], int]


# ---- definitions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    id: str
    scope: str  # customer | team | key
    scope_id: str
    period: str  # day | week | month | total
    limit_nanos: int
    hard: bool = True
    warn_pct: int = 80
    grace_nanos: int = 0
    raise_step_nanos: int = 0  # auto-raise step (0: no auto-raise)
    ceiling_nanos: int = 0  # auto-raise: the most the limit rises to
    fail_open: bool = False  # cluster mode, shared state unreachable: admit on this instance's view

    @classmethod
    def from_row(cls, row: sqlite3.Row | Mapping[str, Any]) -> Budget:
        names = row.keys()
        step = int(row["raise_step_nanos"] or 0) if "raise_step_nanos" in names else 0
        ceiling = int(row["ceiling_nanos"] or 0) if "ceiling_nanos" in names else 0
        fail_open = bool(row["fail_open"]) if "fail_open" in names else False
        return cls(id=row["id"], scope=row["scope"], scope_id=row["scope_id"], period=row["period"],
                   limit_nanos=int(row["limit_nanos"]), hard=bool(row["hard"]), warn_pct=int(row["warn_pct"]),
                   grace_nanos=int(row["grace_nanos"]), raise_step_nanos=step, ceiling_nanos=ceiling,
                   fail_open=fail_open)

    @property
    def auto_raise(self) -> bool:
        return self.hard and self.raise_step_nanos > 0 and self.ceiling_nanos > self.limit_nanos

    @property
    def label(self) -> str:
        """``customer acme_corp monthly budget``"""
        return f"{self.scope} {self.scope_id} {ADJECTIVE[self.period]} budget"

    @property
    def cap_nanos(self) -> int:
        """What a hard budget admits up to: the limit plus the grace."""
        return self.limit_nanos + self.grace_nanos


#: a budgets table row (``sqlite3.Row`` or dict) or a ``Budget``
BudgetRow = sqlite3.Row | Mapping[str, Any] | Budget


def read_budgets(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every budgets row, in a stable order (what ``BudgetBook.load``/``reload`` take)."""
    return conn.execute("SELECT * FROM budgets ORDER BY scope, scope_id, period").fetchall()


_SPEND_COLUMN = {"customer": "customer_id", "team": "team_id", "key": "key_id"}


def ledger_spend(conn: sqlite3.Connection) -> SpendFn:
    """A ``spend_by_scope`` reading ``conn``'s ledger (through its roll-ups, exact): the sum of
    ``cost_nanos`` since ``since_ms``. One grouped query per (scope, since) answers every id of that
    scope (80 customer budgets of one month: one query), so make a new one for each reload."""
    memo: dict[tuple[str, int], dict[str, int]] = {}

    def spend(scope: str, scope_id: str, since_ms: int) -> int:
        got = memo.get((scope, since_ms))
        if got is None:
            column = _SPEND_COLUMN[scope]
            sql, params = rollups.grouped(conn, since_ms, None, [column], [("cost", "SUM", "cost_nanos")])
            got = memo[(scope, since_ms)] = {r[0]: int(r[1] or 0) for r in conn.execute(sql, params)
                                            if r[0] is not None}
        return got.get(scope_id, 0)

    return spend


def ledger_raises(conn: sqlite3.Connection) -> RaisesFn:
    """A ``RaisesFn`` reading ``conn``'s events: how many ``budget_raised`` events a budget has in a window."""

    def raises(budget_id: str, start_ms: int) -> int:
        row = conn.execute("SELECT COALESCE(MAX(threshold), 0) FROM events WHERE kind = 'budget_raised'"
                           " AND budget_id = ? AND period_start_ms = ?", (budget_id, start_ms)).fetchone()
        return int(row[0])

    return raises


# ---- errors and events ---------------------------------------------------------------------------


class BudgetExceeded(LlmgwError):
    """A hard budget cannot pay for the request: 429 (or 402), never retried, no Retry-After."""

    status = 429
    type = "budget_exceeded"
    # the Anthropic envelope carries the precise type too: the SDK picks its exception class by
    # status (RateLimitError / PermissionDenied-like 402), and the body says what happened
    anthropic_type = "budget_exceeded"

    def __init__(self, message: str, *, period: str, status: int = 429, budget_id: str | None = None,
                 reset_ms: int | None = None) -> None:
        super().__init__(message, code=f"{period}_budget_exceeded", status=status,
                         headers={"x-should-retry": "false"})
        self.period = period
        self.budget_id = budget_id
        self.reset_ms = reset_ms


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # soft_cap | hard_cap | grace_used | budget_raised
    budget_id: str
    scope: str
    scope_id: str
    period_start_ms: int
    threshold: int  # percent of the limit
    detail: dict[str, Any]

    def as_dict(self, ts_ms: int) -> dict[str, Any]:
        """The event as the ``events`` table columns (``detail`` still a dict), e.g. for
        ``governance.events.store`` / ``EventSink.emit`` (``INSERT OR IGNORE``: once only)."""
        return {"ts_ms": ts_ms, "kind": self.kind, "budget_id": self.budget_id, "scope": self.scope,
                "scope_id": self.scope_id, "period_start_ms": self.period_start_ms, "threshold": self.threshold,
                "detail": dict(self.detail)}


# ---- the book ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    budget: Budget
    start_ms: int
    end_ms: int | None
    spent: int = 0
    reserved: int = 0
    fired: set[tuple[str, int]] = field(default_factory=set)  # (kind, threshold) in this window
    raises: int = 0  # auto-raises made in this window

    def roll(self, now_ms: int) -> None:
        if self.end_ms is not None and now_ms >= self.end_ms:
            self.start_ms, self.end_ms = window(self.budget.period, now_ms)
            self.spent = 0
            self.reserved = 0
            self.raises = 0
            self.fired.clear()

    def limit_after(self, raises: int) -> int:
        """The limit of this window after ``raises`` auto-raises (the declared one without auto-raise)."""
        b = self.budget
        if not b.auto_raise or raises <= 0:
            return b.limit_nanos
        return min(b.ceiling_nanos, b.limit_nanos + raises * b.raise_step_nanos)

    @property
    def limit(self) -> int:
        """The limit in force in this window: the declared one plus any auto-raises."""
        return self.limit_after(self.raises)


@dataclass(slots=True)
class Reservation:
    """What ``reserve`` charged: ``amount`` on each ``(budget_id, window_start_ms)`` of ``parts``."""

    amount: int
    now_ms: int
    parts: tuple[tuple[str, int], ...]
    in_grace: tuple[str, ...] = ()  # budgets that admitted only thanks to their grace
    settled: bool = False
    raised: tuple[Event, ...] = ()  # the auto-raises this admission made (``budget_raised`` events)
    leases: tuple[Any, ...] = ()  # cluster mode: the instance's slices it was charged on (``SharedBudgets``)


@dataclass(slots=True, eq=False)
class Flight:
    """One request between admission and the commit of its ledger row, as the book tracks it."""

    key_id: str | None
    team_id: str | None
    customer_id: str | None
    ts_ms: int
    reservation: Reservation | None = None
    bound: Callable[[], int] | None = None  # its cost bound, computed only if a budget appears meanwhile
    cost: int | None = None  # set when it settles
    seq: int = 0  # the ledger writer's sequence number of its row (0: not submitted yet)

    def scope_id(self, scope: str) -> str | None:
        return self.key_id if scope == "key" else self.team_id if scope == "team" else self.customer_id


class BudgetBook:
    """Spent and reserved per budget in its current window; rebuilt from the ledger by ``load``."""

    #: cluster mode (``cluster.budgets.SharedBudgets``): a hard budget also needs room in this
    #: instance's slice of it (``_fits``), which ``prepare`` (awaited before ``reserve``) leases
    shared = False

    def __init__(self, *, error_status: int = 429) -> None:
        if error_status not in (402, 429):
            raise ValueError("error_status must be 402 or 429")
        self.error_status = error_status
        self._states: dict[str, _State] = {}
        self._by_scope: dict[tuple[str, str], list[Budget]] = {}
        #: (scope, id) -> display name of customers, teams and keys, for messages (set by the loader)
        self.names: dict[tuple[str, str], str] = {}
        self._flights: set[Flight] = set()
        self._recent: list[Flight] = []  # flights done while a snapshot was being read
        self._snapshots = 0

    def who(self, scope: str, scope_id: str) -> str:
        """``key key_ab12 (batch-bot)``: a scope by id, and by name where it has one."""
        name = self.names.get((scope, scope_id))
        return f"{scope} {scope_id}" + (f" ({name})" if name and name != scope_id else "")

    # -- requests in flight ------------------------------------------------------------------------

    def track(self, key_id: str | None, team_id: str | None, customer_id: str | None, ts_ms: int) -> Flight:
        """Start tracking an admitted request (until ``untrack``, once its ledger row is committed)."""
        f = Flight(key_id, team_id, customer_id, ts_ms)
        self._flights.add(f)
        return f

    def untrack(self, flight: Flight) -> None:
        """The flight's row is committed (or it never reached the ledger writer)."""
        self._flights.discard(flight)
        if self._snapshots:
            self._recent.append(flight)

    def settle_flight(self, flight: Flight, actual_nanos: int, now_ms: int) -> list[Event]:
        """``settle`` the flight's reservation (if it has one, even one a new budget gave it)."""
        flight.cost = max(0, actual_nanos)
        return self.settle(flight.reservation, actual_nanos, now_ms) if flight.reservation is not None else []

    def begin_snapshot(self, committed_seq: int) -> None:
        """A budget reload is about to read the ledger (up to the writer's committed point, whose
        sequence number is ``committed_seq``): remember flights that finish until ``end_snapshot``,
        and forget the ones whose rows are committed at or before that point."""
        self._snapshots += 1
        done = [f for f in self._flights if 0 < f.seq <= committed_seq and f.cost is not None]
        self._flights.difference_update(done)

    def end_snapshot(self) -> None:
        self._snapshots = max(0, self._snapshots - 1)
        if not self._snapshots:
            self._recent.clear()

    def in_flight(self) -> int:
        return len(self._flights)

    @staticmethod
    def _bound_of(f: Flight) -> int:
        if f.bound is None:
            return 0
        try:
            return max(0, f.bound())
        except Exception:  # a bound that cannot be computed reserves nothing; the settle still counts
            log.exception("could not compute the cost bound of a request in flight for a new budget")
            return 0

    def _count_in_flight(self, st: _State, committed_seq: int) -> None:
        """A new budget: add the requests its ledger read did not see (rows after ``committed_seq``)."""
        b = st.budget
        for f in (*self._flights, *self._recent):
            if f.scope_id(b.scope) != b.scope_id or f.ts_ms < st.start_ms:
                continue
            if st.end_ms is not None and f.ts_ms >= st.end_ms:
                continue
            if 0 < f.seq <= committed_seq:
                continue  # its row is in the part of the ledger that was read
            if f.cost is not None:
                st.spent += f.cost
                continue
            res = f.reservation
            if res is None:
                res = f.reservation = Reservation(self._bound_of(f), f.ts_ms, ())
            if res.settled:
                continue
            st.reserved += res.amount
            res.parts = (*res.parts, (b.id, st.start_ms))

    # -- definitions -------------------------------------------------------------------------------

    def load(self, budget_rows: Iterable[BudgetRow], spend_by_scope: SpendFn,
             now_ms: int, raises: RaisesFn | None = None) -> None:
        """Rebuild everything: each budget's current window and what the ledger says was spent in it
        (and, with ``raises``, the auto-raises its events say were made in it)."""
        self._states = {}
        self.reload(budget_rows, spend_by_scope, now_ms, raises)

    def reload(self, budget_rows: Iterable[BudgetRow], spend_by_scope: SpendFn,
               now_ms: int, raises: RaisesFn | None = None, *, committed_seq: int | None = None) -> None:
        """Apply changed definitions: new budgets read their spend from the ledger; a budget it already
        had (same id, scope and period) keeps its spent and reserved counters with the new limit, warn
        level, grace and hardness; removed budgets are dropped (their reservations settle to nothing).

        With ``committed_seq`` (the daemon: ``spend_by_scope`` read the ledger up to the writer's
        committed point, see ``begin_snapshot``), a new budget also counts the requests in flight."""
        states: dict[str, _State] = {}
        for row in budget_rows:
            b = row if isinstance(row, Budget) else Budget.from_row(row)
            old = self._states.get(b.id)
            if old is not None and (old.budget.scope, old.budget.scope_id, old.budget.period) == (
                    b.scope, b.scope_id, b.period):
                old.budget = b
                old.roll(now_ms)
                states[b.id] = old
                continue
            start, end = window(b.period, now_ms)
            st = states[b.id] = _State(b, start, end, spent=spend_by_scope(b.scope, b.scope_id, start),
                                       raises=raises(b.id, start) if raises is not None and b.auto_raise else 0)
            if committed_seq is not None:
                self._count_in_flight(st, committed_seq)
        by_scope: dict[tuple[str, str], list[Budget]] = {}
        for st in states.values():
            by_scope.setdefault((st.budget.scope, st.budget.scope_id), []).append(st.budget)
        order = {p: i for i, p in enumerate(PERIODS)}
        for lst in by_scope.values():
            lst.sort(key=lambda b: order.get(b.period, 9))
        self._states = states
        self._by_scope = by_scope

    def __len__(self) -> int:
        return len(self._states)

    def budgets(self) -> list[Budget]:
        return [st.budget for st in self._states.values()]

    def get(self, budget_id: str) -> Budget | None:
        st = self._states.get(budget_id)
        return st.budget if st else None

    def applicable(self, key_id: str | None, team_id: str | None, customer_id: str | None) -> list[Budget]:
        """Every budget that must admit a request of this key: the key's, its team's, its customer's."""
        out: list[Budget] = []
        for scope, sid in (("key", key_id), ("team", team_id), ("customer", customer_id)):
            if sid is not None:
                found = self._by_scope.get((scope, sid))
                if found:
                    out.extend(found)
        return out

    # -- admission ---------------------------------------------------------------------------------

    def _live(self, budgets: Iterable[Budget], now_ms: int) -> list[_State]:
        out = []
        for b in budgets:
            st = self._states.get(b.id)
            if st is not None:
                st.roll(now_ms)
                out.append(st)
        return out

    def reserve(self, budgets: Iterable[Budget], amount_nanos: int, now_ms: int) -> Reservation:
        """Charge ``amount_nanos`` on every budget at once, or on none (``BudgetExceeded``)."""
        amount = max(0, amount_nanos)
        states = self._live(budgets, now_ms)
        refused: list[_State] = []
        in_grace: list[str] = []
        raising: list[tuple[_State, int]] = []  # (state, raises it would have): applied only if all admit
        for st in states:
            b = st.budget
            if not b.hard:
                continue
            n = self._raises_for(st, amount)  # raise instead of refusing: up to the ceiling, once per step spent
            limit = st.limit_after(n)
            cap = limit + b.grace_nanos
            if st.spent >= cap or st.spent + st.reserved + amount > cap or (
                    self.shared and not self._fits(st, amount)):
                refused.append(st)
                continue
            if n != st.raises:
                raising.append((st, n))
            if st.spent + st.reserved + amount > limit:
                in_grace.append(b.id)
        if refused:
            raise self._exceeded(refused, amount)
        raised: list[Event] = []
        for st, n in raising:
            while st.raises < n:
                old = st.limit
                st.raises += 1
                raised.append(self._raised_event(st, old, now_ms))
        for st in states:
            st.reserved += amount
        return Reservation(amount, now_ms, tuple((st.budget.id, st.start_ms) for st in states), tuple(in_grace),
                           raised=tuple(raised))

    def _fits(self, st: _State, amount: int) -> bool:
        """Cluster mode: does this instance's slice of ``st`` have room for ``amount``?"""
        return True

    def _raises_for(self, st: _State, amount: int) -> int:
        """The auto-raises ``st`` would have after admitting ``amount`` on this book's view (what
        ``reserve`` decides; ``SharedBudgets.prepare`` leases against the limit it gives)."""
        b = st.budget
        n = st.raises
        while True:
            limit = st.limit_after(n)
            cap = limit + b.grace_nanos
            if not (st.spent >= cap or st.spent + st.reserved + amount > cap):
                return n
            if not (b.auto_raise and limit < b.ceiling_nanos and st.spent >= limit - b.raise_step_nanos):
                return n
            n += 1

    def _raised_event(self, st: _State, old_limit: int, now_ms: int) -> Event:
        b = st.budget
        new = st.limit
        return Event("budget_raised", b.id, b.scope, b.scope_id, st.start_ms, st.raises, {
            "period": b.period, "raise": st.raises, "old_limit_nanos": old_limit, "limit_nanos": new,
            "base_limit_nanos": b.limit_nanos, "step_nanos": b.raise_step_nanos, "ceiling_nanos": b.ceiling_nanos,
            "spent_nanos": st.spent, "reserved_nanos": st.reserved, "window_end_ms": st.end_ms,
            "name": self.names.get((b.scope, b.scope_id)),
            "message": (f"{ADJECTIVE[b.period]} budget of {self.who(b.scope, b.scope_id)} auto-raised from "
                        f"{usd(old_limit)} to {usd(new)} (step {usd(b.raise_step_nanos)}, ceiling "
                        f"{usd(b.ceiling_nanos)}; {usd(st.spent)} spent)"),
        })

    def _exceeded(self, refused: list[_State], amount: int) -> BudgetExceeded:
        # name the budget that frees up last: retrying before then cannot succeed
        st = max(refused, key=lambda s: (s.end_ms is None, s.end_ms or 0))
        b = st.budget
        when = "it does not reset" if st.end_ms is None else f"resets {iso_utc(st.end_ms)}"
        limit = st.limit
        if st.spent >= limit:
            what = f"exhausted ({usd(st.spent)} spent)"
        else:
            what = (f"cannot cover this request (up to {usd(amount)}; {usd(st.spent)} spent, {usd(st.reserved)} "
                    "reserved by requests in flight)")
        if b.auto_raise:
            what += (f" (auto-raised {st.raises} time{'s' if st.raises != 1 else ''} from {usd(b.limit_nanos)}; "
                     + (f"at its ceiling of {usd(b.ceiling_nanos)})" if limit >= b.ceiling_nanos else
                        f"it rises again once {usd(limit - b.raise_step_nanos)} is spent)"))
        message = f"{ADJECTIVE[b.period]} budget of {usd(limit)} for {self.who(b.scope, b.scope_id)} {what}; {when}"
        return BudgetExceeded(message, period=b.period, status=self.error_status, budget_id=b.id,
                              reset_ms=st.end_ms)

    def remaining(self, budgets: Iterable[Budget], now_ms: int, *, include_grace: bool = False) -> int | None:
        """The most a request may still reserve: min over hard budgets of limit - spent - reserved
        (plus grace with ``include_grace``: what ``reserve`` admits); ``None`` with no hard budget."""
        best: int | None = None
        for st in self._live(budgets, now_ms):
            b = st.budget
            if not b.hard:
                continue
            left = st.limit + (b.grace_nanos if include_grace else 0) - st.spent - st.reserved
            best = left if best is None else min(best, left)
        return None if best is None else max(0, best)

    async def prepare(self, budgets: Iterable[Budget], amount_nanos: int, now_ms: int) -> None:
        """Cluster mode gets shared room here before ``reserve`` (``SharedBudgets``); nothing to do in one process."""

    def admissible(self, budgets: Iterable[Budget], now_ms: int) -> int | None:
        """What a request may still reserve here (the clamp's figure): ``remaining`` in one process."""
        return self.remaining(budgets, now_ms)

    def settle(self, reservation: Reservation, actual_nanos: int, now_ms: int) -> list[Event]:
        """Release the reservation, add the real cost and return the threshold events it crossed.

        A second call for the same reservation does nothing. A budget whose window rolled over since
        the reservation gets nothing (the cost belongs to the old window, as its ledger row does).
        """
        if reservation.settled:
            return []
        reservation.settled = True
        actual = max(0, actual_nanos)
        events: list[Event] = []
        for budget_id, start in reservation.parts:
            st = self._states.get(budget_id)
            if st is None:
                continue
            st.roll(now_ms)
            if st.start_ms != start:
                continue
            st.reserved = max(0, st.reserved - reservation.amount)
            st.spent += actual
            self._events(st, events)
        return events

    def _events(self, st: _State, out: list[Event]) -> None:
        b = st.budget
        limit = st.limit
        checks: list[tuple[str, int]] = []
        if _past(st.spent, limit, b.warn_pct):
            checks.append(("soft_cap", b.warn_pct))
        if _past(st.spent, limit, 100):
            checks.append(("hard_cap", 100) if b.hard else ("soft_cap", 100))
        if b.hard and st.spent > limit:
            checks.append(("grace_used", 100))
        for kind, threshold in checks:
            if (kind, threshold) in st.fired:
                continue
            st.fired.add((kind, threshold))
            out.append(Event(kind, b.id, b.scope, b.scope_id, st.start_ms, threshold, {
                "period": b.period, "hard": b.hard, "limit_nanos": limit, "spent_nanos": st.spent,
                "grace_nanos": b.grace_nanos, "warn_pct": b.warn_pct, "window_end_ms": st.end_ms,
                "name": self.names.get((b.scope, b.scope_id)),
                "message": (f"{self.who(b.scope, b.scope_id)} {ADJECTIVE[b.period]} budget at "
                            f"{_pct(st.spent, limit)}% ({usd(st.spent)} of {usd(limit)})"),
            }))

    # -- reporting ---------------------------------------------------------------------------------

    def status(self, budget: Budget | str, now_ms: int) -> dict[str, Any]:
        """Limit, spent, reserved, remaining (nano-dollars), utilisation and the window, for one budget."""
        st = self._states[budget if isinstance(budget, str) else budget.id]
        st.roll(now_ms)
        b = st.budget
        limit = st.limit
        return {
            "id": b.id, "scope": b.scope, "scope_id": b.scope_id, "period": b.period, "hard": b.hard,
            "limit_nanos": limit, "spent_nanos": st.spent, "reserved_nanos": st.reserved,
            "remaining_nanos": max(0, limit - st.spent - st.reserved), "grace_nanos": b.grace_nanos,
            "utilisation": (st.spent / limit) if limit else (1.0 if st.spent else 0.0),
            "utilisation_pct": _pct(st.spent, limit), "warn_pct": b.warn_pct,
            "warn": _past(st.spent, limit, b.warn_pct),
            "window_start_ms": st.start_ms, "window_end_ms": st.end_ms,
            "base_limit_nanos": b.limit_nanos, "raise_step_nanos": b.raise_step_nanos if b.auto_raise else 0,
            "ceiling_nanos": b.ceiling_nanos if b.auto_raise else 0, "raises": st.raises,
        }

    def warning_headers(self, budgets: Iterable[Budget], now_ms: int) -> dict[str, str]:
        """``x-llmgw-budget-remaining`` (USD left on the tightest hard budget, or soft if there is no hard
        one; whenever a budget applies) and ``x-llmgw-budget-warning`` naming the budgets past their warn
        level, most used first (only when one is); empty when no budget applies."""
        states = self._live(budgets, now_ms)
        if not states:
            return {}
        pool = [st for st in states if st.budget.hard] or states  # a soft budget blocks nothing
        tightest = min(max(0, st.limit - st.spent - st.reserved) for st in pool)
        out = {"x-llmgw-budget-remaining": usd(tightest, dollar=False)}
        warned = [st for st in states if _past(st.spent, st.limit, st.budget.warn_pct)]
        if warned:
            warned.sort(key=lambda st: -_pct(st.spent, st.limit))
            out["x-llmgw-budget-warning"] = ", ".join(
                f"{self.who(st.budget.scope, st.budget.scope_id)} {ADJECTIVE[st.budget.period]} budget at "
                f"{_pct(st.spent, st.limit)}%" for st in warned)
        return out


def _past(spent: int, limit: int, pct: int) -> bool:
    """Has ``spent`` reached ``pct`` percent of ``limit``? (Nothing spent never has.)"""
    return spent > 0 and spent * 100 >= limit * pct


def _pct(spent: int, limit: int) -> int:
    """Whole percent used, rounded down (an empty limit counts as 100 % once anything is spent)."""
    if limit <= 0:
        return 100 if spent > 0 else 0
    return spent * 100 // limit


# ---- budgets in the database (shared by ``llmgw budget`` and the admin API) ---------------------

def resolve_scope(conn: sqlite3.Connection, scope: str, value: str) -> str:
    """The id of an existing customer, team or key (keys by id or name); ``NotFound`` otherwise."""
    if scope == "key":
        row = conn.execute("SELECT id FROM keys WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1",
                           (value, value, value)).fetchone()
    elif scope in ("customer", "team"):
        table = "customers" if scope == "customer" else "teams"
        row = conn.execute(f"SELECT id FROM {table} WHERE id = ?", (value,)).fetchone()
    else:
        raise ValueError(f"unknown scope {scope!r} (expected one of {', '.join(SCOPES)})")
    if row is None:
        raise NotFound(f"no {scope} {value!r}", param=scope)
    return str(row[0])


def select_budgets(conn: sqlite3.Connection, scope: str | None = None,
                   value: str | None = None) -> list[sqlite3.Row]:
    """Every budget, or those of one customer (with its teams' and keys'), team (with its keys') or key
    (by id or name); ``NotFound`` for an unknown one. Customers first, then teams, then keys."""
    if scope is None or value is None:
        return conn.execute("SELECT * FROM budgets ORDER BY scope, scope_id, period").fetchall()
    sid = resolve_scope(conn, scope, value)
    if scope == "customer":
        sql = ("SELECT * FROM budgets WHERE (scope = 'customer' AND scope_id = :c)"
               " OR (scope = 'team' AND scope_id IN (SELECT id FROM teams WHERE customer_id = :c))"
               " OR (scope = 'key' AND scope_id IN (SELECT id FROM keys WHERE customer_id = :c))")
    elif scope == "team":
        sql = ("SELECT * FROM budgets WHERE (scope = 'team' AND scope_id = :c)"
               " OR (scope = 'key' AND scope_id IN (SELECT id FROM keys WHERE team_id = :c))")
    else:
        sql = "SELECT * FROM budgets WHERE scope = 'key' AND scope_id = :c"
    order = " ORDER BY CASE scope WHEN 'customer' THEN 0 WHEN 'team' THEN 1 ELSE 2 END, scope_id, period"
    return conn.execute(sql + order, {"c": sid}).fetchall()


def upsert_budget(conn: sqlite3.Connection, scope: str, value: str, period: str, limit_nanos: int, *,
                  hard: bool | None = None, warn_pct: int | None = None,
                  grace_nanos: int | None = None, raise_step_nanos: int | None = None,
                  ceiling_nanos: int | None = None, fail_open: bool | None = None) -> tuple[sqlite3.Row, bool]:
    """Create or update the budget of (scope, customer/team/key, period), in the caller's transaction.

    An update keeps the budget's id (so a running daemon keeps its spent counter) and the options
    not given (``None``); a new budget defaults to hard, warn at 80 %, no grace. Returns the row and
    whether it was created. Auto-raise: ``raise_step_nanos`` (0 turns it off) with ``ceiling_nanos``,
    the most the limit may rise to (above the limit; hard budgets only). ``fail_open`` (cluster mode,
    hard budgets only): admit on the instance's own view while Redis is unreachable instead of
    failing closed. ``UsageError`` naming the field for a bad option, ``NotFound`` (``param``: the scope) for an unknown customer/team/key (keys by id or name); nothing is written then.
    """
    if scope not in SCOPES:
        raise UsageError(f"scope: expected one of {', '.join(SCOPES)}, got {scope!r}", param="scope")
    if period not in PERIODS:
        raise UsageError(f"period: expected one of {', '.join(PERIODS)}, got {period!r}", param="period")
    for what, n in (("limit", limit_nanos), ("grace", grace_nanos), ("auto_raise", raise_step_nanos),
                    ("ceiling", ceiling_nanos)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NANOS):
            raise UsageError(f"{what}: expected a non-negative amount, got {n!r}", param=what)
    if warn_pct is not None and (isinstance(warn_pct, bool) or not isinstance(warn_pct, int)
                                 or not 1 <= warn_pct <= 100):
        raise UsageError(f"warn_at: expected a percent from 1 to 100, got {warn_pct!r}", param="warn_at")
    if hard is False and grace_nanos:
        raise UsageError("grace: applies to hard budgets only (this one is soft)", param="grace")
    now = iso_utc(clock.now_ms())
    scope_id = resolve_scope(conn, scope, value)
    old = conn.execute("SELECT * FROM budgets WHERE scope = ? AND scope_id = ? AND period = ?",
                       (scope, scope_id, period)).fetchone()
    step = raise_step_nanos if raise_step_nanos is not None else int(old["raise_step_nanos"]) if old else 0
    ceiling = ceiling_nanos if ceiling_nanos is not None else int(old["ceiling_nanos"]) if old else 0
    if raise_step_nanos == 0 and ceiling_nanos is None:
        ceiling = 0  # auto-raise turned off
    is_hard = (hard if hard is not None else bool(old["hard"]) if old else True)
    check_auto_raise(limit_nanos, step, ceiling, is_hard)
    if not is_hard and (fail_open if fail_open is not None else bool(old["fail_open"]) if old else False):
        raise UsageError("fail_open: applies to hard budgets only (a soft one never refuses)", param="fail_open")
    if old is None:
        bid = "bud_" + uuid.uuid4().hex[:16]
        conn.execute(
            "INSERT INTO budgets (id, scope, scope_id, period, limit_nanos, hard, warn_pct, grace_nanos,"
            " raise_step_nanos, ceiling_nanos, fail_open, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (bid, scope, scope_id, period, limit_nanos, int(hard is not False), 80 if warn_pct is None else warn_pct,
             grace_nanos or 0, step, ceiling, int(bool(fail_open)), now, now))
    else:
        bid = old["id"]
        conn.execute(
            "UPDATE budgets SET limit_nanos = ?, hard = ?, warn_pct = ?, grace_nanos = ?, raise_step_nanos = ?,"
            " ceiling_nanos = ?, fail_open = ?, updated_at = ? WHERE id = ?",
            (limit_nanos, old["hard"] if hard is None else int(hard),
             old["warn_pct"] if warn_pct is None else warn_pct,
             old["grace_nanos"] if grace_nanos is None else grace_nanos, step, ceiling,
             old["fail_open"] if fail_open is None else int(fail_open), now, bid))
    return conn.execute("SELECT * FROM budgets WHERE id = ?", (bid,)).fetchone(), old is None


def check_auto_raise(limit_nanos: int, step_nanos: int, ceiling_nanos: int, hard: bool) -> None:
    """``UsageError`` naming the field unless auto-raise is off (step 0) or a step with a ceiling above
    the limit on a hard budget."""
    if not step_nanos:
        if ceiling_nanos:
            raise UsageError("ceiling: needs auto_raise (the step the limit rises by)", param="ceiling")
        return
    if not hard:
        raise UsageError("auto_raise: applies to hard budgets only (this one is soft)", param="auto_raise")
    if not ceiling_nanos:
        raise UsageError("ceiling: auto_raise needs a ceiling (the most the limit may rise to)", param="ceiling")
    if ceiling_nanos <= limit_nanos:
        raise UsageError(f"ceiling: must be above the limit ({usd(limit_nanos)}), got {usd(ceiling_nanos)}",
                         param="ceiling")


def delete_budget(conn: sqlite3.Connection, budget_id: str) -> sqlite3.Row:
    """Delete one budget by id and return its row (the ledger keeps every charge); ``NotFound``."""
    row = conn.execute("SELECT * FROM budgets WHERE id = ?", (budget_id,)).fetchone()
    if row is None:
        raise NotFound(f"no budget {budget_id!r}")
    conn.execute("DELETE FROM budgets WHERE id = ?", (budget_id,))
    return row


def budget_report(conn: sqlite3.Connection, rows: list[Any], now_ms: int) -> list[dict[str, Any]]:
    """Each budget with spent (from the ledger), remaining and utilisation in its current window.

    Money as integer ``*_nanos`` and exact decimal ``*_usd`` strings (never a float); the daemon's
    in-flight reservations are not visible here.
    """
    book = BudgetBook()
    book.load(rows, ledger_spend(conn), now_ms, ledger_raises(conn))
    names = {("key", r["id"]): r["name"] for r in conn.execute("SELECT id, name FROM keys")}
    names.update({("team", r["id"]): r["name"] for r in conn.execute("SELECT id, name FROM teams")})
    names.update({("customer", r["id"]): r["name"] for r in conn.execute("SELECT id, name FROM customers")})
    out = []
    for row in rows:
        st = book.status(row["id"], now_ms)
        end = st["window_end_ms"]
        out.append({
            "id": st["id"], "scope": st["scope"], "scope_id": st["scope_id"],
            "name": names.get((st["scope"], st["scope_id"])), "period": st["period"],
            "hard": st["hard"], "limit_nanos": st["limit_nanos"], "spent_nanos": st["spent_nanos"],
            "remaining_nanos": st["remaining_nanos"], "grace_nanos": st["grace_nanos"],
            **{f"{m}_usd": usd(st[f"{m}_nanos"], dollar=False) for m in ("limit", "spent", "remaining", "grace")},
            "utilisation_pct": st["utilisation_pct"], "warn_pct": st["warn_pct"], "warn": st["warn"],
            "base_limit_nanos": st["base_limit_nanos"], "raise_step_nanos": st["raise_step_nanos"],
            "ceiling_nanos": st["ceiling_nanos"], "raises": st["raises"],
            **{f"{m}_usd": usd(st[f"{m}_nanos"], dollar=False) for m in ("base_limit", "raise_step", "ceiling")},
            "window_start": iso_utc(st["window_start_ms"]) if st["period"] != "total" else None,
            "resets": iso_utc(end) if end is not None else None,
        })
    return out
