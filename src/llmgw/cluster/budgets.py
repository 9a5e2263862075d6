"""Cluster mode's budget book: the hard caps of every budget hold across llmgw instances.

Owns ``SharedBudgets``, a ``BudgetBook`` whose hard budgets admit a request only against this
instance's slice of the budget window, leased from Redis (``leases``), and the background sync that
reports spend, renews slices and gives back those idle for a few rounds. ``node.Cluster`` builds it for
``[cluster] redis_url``; without that section the daemon uses the plain ``BudgetBook`` and nothing
here runs.

How a request is admitted (see ``leases`` for why the sum is exact):

1. ``prepare`` (awaited by the gateway before ``reserve``): for each hard budget of the request,
   if this instance's slice lacks room for the request's cost bound, lease more from Redis (one
   script call; one at a time per window, concurrent requests wait for it and re-check). The
   request asks for its own bound plus a chunk (a sixteenth of the cap), so while a budget has
   room most requests need no Redis call at all.
2. ``reserve`` (synchronous, atomic on the event loop, as ``BudgetBook``'s): the book's own checks
   on its cluster-wide view of the spend, and room in the slice (``_fits``); then the slice is
   charged. ``settle`` moves the reservation to the slice's used part.
3. Every ``sync_interval`` (``node.Cluster``'s background task) the instance reports what it used (``LeaseStore.settle``), renews its
   slices' TTL and gives back a slice idle for a few rounds; the answer's spend refreshes the
   book's view, so soft-cap warnings and events see other instances' spend within a sync.

Faults. Redis unreachable (a call fails or takes longer than ``[cluster] timeout``): a hard budget
that needs a lease refuses the request with 503 ``governance_unavailable`` (typed, not retried
blindly: ``Retry-After``), unless the budget is ``fail_open``: then this instance admits on its own
view of the spend, with a ``governance_degraded`` event once per outage and budget. Soft budgets
never need Redis to admit. Requests admitted before the outage complete and are recorded as usual
(the ledger does not depend on Redis); their spend is reported once Redis answers again. Redis
restarted (its state lost): see ``leases`` (instances re-add what they hold, no slice is granted
during the hold).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..governance.budgets import ADJECTIVE, Budget, BudgetBook, Event, Reservation, _State
from .leases import AsyncLeaseStore, GovernanceUnavailable, Grant, LocalLease

log = logging.getLogger("llmgw.cluster")

CHUNK_DIVISOR = 16  # a lease asks for the request's bound plus cap / 16
IDLE_SYNCS = 4  # a slice nothing was reserved against for this many syncs goes back to Redis


class _Slice(LocalLease):
    """A ``LocalLease`` with what the sync needs: the last spend Redis reported, activity, a lock."""

    def __init__(self, budget_id: str, start_ms: int, end_ms: int | None) -> None:
        super().__init__()
        self.budget_id, self.start_ms, self.end_ms = budget_id, start_ms, end_ms
        self.seen = 0  # the window's spend as Redis last reported it (or the ledger's, before)
        self.busy = False  # reserved since the last sync
        self.idle = 0  # syncs in a row with nothing reserved
        self.lock = asyncio.Lock()
        self.epoch = 0  # the Redis start its slice was granted in (``Grant.epoch``)


class SharedBudgets(BudgetBook):
    """``BudgetBook`` for cluster mode (``[cluster] redis_url``): exact hard caps across instances."""

    shared = True

    def __init__(self, leases: AsyncLeaseStore, instance: str, *, error_status: int = 429,
                 sync_interval: float = 0.25, now_ms: Callable[[], int],
                 emit: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        super().__init__(error_status=error_status)
        self.leases, self.instance = leases, instance
        self.sync_interval = sync_interval
        self.now_ms = now_ms
        self.emit = emit  # events (governance_degraded), set by the daemon
        self._slices: dict[tuple[str, int], _Slice] = {}
        self.down: str | None = None  # why Redis is unreachable now (None: it answers)
        self._degraded: set[tuple[str, int]] = set()  # (budget, window) told about this outage
        self.syncs = 0  # completed sync rounds (tests and metrics)
        self.lease_calls = 0  # acquire calls made (how often Redis was on a request's path)
        # spend with no slice behind it (a request admitted before its budget was created, counted
        # by the reload): added to the window in Redis by the next sync
        self._extra: dict[tuple[str, int], int] = {}
        self._views: dict[tuple[str, int], int] = {}  # the largest spend Redis reported per window
        self._epoch: int | None = None  # the Redis start this instance last synced with

    # -- admission ---------------------------------------------------------------------------------

    def _slice(self, st: _State, create: bool = True) -> _Slice | None:
        k = (st.budget.id, st.start_ms)
        s = self._slices.get(k)
        if s is None and create:
            s = self._slices[k] = _Slice(st.budget.id, st.start_ms, st.end_ms)
            s.seen = st.spent
        return s

    def _fail_open(self, b: Budget) -> bool:
        return b.fail_open and self.down is not None

    def _fits(self, st: _State, amount: int) -> bool:
        if self._fail_open(st.budget):
            return True
        s = self._slice(st, create=False)
        return s is not None and s.unreported + s.reserved + amount <= s.slice

    async def prepare(self, budgets: Iterable[Budget], amount_nanos: int, now_ms: int) -> None:
        """Lease enough of every hard budget for ``amount_nanos`` (what ``reserve`` then charges);
        ``GovernanceUnavailable`` when Redis cannot be reached and a budget fails closed."""
        amount = max(0, amount_nanos)
        for st in self._live(budgets, now_ms):
            b = st.budget
            if not b.hard:
                continue
            while True:
                s = self._slice(st)
                assert s is not None
                if s.unreported + s.reserved + amount <= s.slice:
                    break
                async with s.lock:  # one Redis call per slice at a time (and none while it syncs)
                    if self._slices.get((b.id, s.start_ms)) is not s:
                        continue  # the sync gave it back meanwhile
                    if s.unreported + s.reserved + amount <= s.slice:
                        break  # the call this one waited for got enough
                    wait = await self._acquire(st, s, amount)
                if wait < 0:
                    break  # nothing more to be had: reserve refuses (or admits, fail-open)
                if wait > 0:  # a (re)started Redis: every instance re-adds what it holds first
                    await asyncio.sleep(min(wait, 5000) / 1000)

    async def _acquire(self, st: _State, s: _Slice, amount: int) -> int:
        """One lease call for ``s``: 0 when it has room now, -1 when nothing more can be had (the
        cap is reached, or Redis is down for a fail-open budget), else milliseconds to wait."""
        b = st.budget
        cap = st.limit_after(self._raises_for(st, amount)) + b.grace_nanos
        need = s.unreported + s.reserved + amount - s.slice
        want = need + cap // CHUNK_DIVISOR
        try:
            self.lease_calls += 1
            g = await self.leases.acquire_async(b.id, s.start_ms, self.instance, want, cap, s.seen)
        except GovernanceUnavailable as e:
            self._went_down(str(e))
            if b.fail_open:
                self._degraded_event(st)
                return -1
            raise GovernanceUnavailable(
                f"the {ADJECTIVE[b.period]} budget of {self.who(b.scope, b.scope_id)} is a hard cap shared by "
                f"every llmgw instance and the shared state (Redis) cannot be reached, so this request is "
                f"refused rather than risk overspend ({e.message})") from e
        self._came_back()
        if g.wait_ms > 0:
            return g.wait_ms
        if s.epoch and g.epoch != s.epoch:  # Redis restarted under this slice: it starts over
            s.slice = s.unreported = 0
        s.epoch = g.epoch
        s.granted(g)
        self._saw(st, s, g)
        return 0 if g.granted >= need else -1

    def reserve(self, budgets: Iterable[Budget], amount_nanos: int, now_ms: int) -> Reservation:
        res = super().reserve(budgets, amount_nanos, now_ms)
        charged = []
        for budget_id, start in res.parts:
            st = self._states.get(budget_id)
            if st is None or not st.budget.hard or self._fail_open(st.budget):
                continue
            s = self._slices.get((budget_id, start))
            if s is not None and s.reserve(res.amount):  # _fits said it has room
                s.busy = True
                charged.append(s)
        res.leases = tuple(charged)
        return res

    def settle(self, reservation: Reservation, actual_nanos: int, now_ms: int) -> list[Event]:
        if not reservation.settled:
            cost = max(0, actual_nanos)
            for s in reservation.leases:
                s.settle(reservation.amount, cost)
            sliced = {(s.budget_id, s.start_ms) for s in reservation.leases}
            for k in reservation.parts:
                st = self._states.get(k[0])
                if cost and k not in sliced and st is not None and st.budget.hard:
                    self._extra[k] = self._extra.get(k, 0) + min(cost, reservation.amount)
        return super().settle(reservation, actual_nanos, now_ms)

    def admissible(self, budgets: Iterable[Budget], now_ms: int) -> int | None:
        """What a request may still reserve on this instance: ``remaining``, and no more than the room
        in its slices (the clamp's figure)."""
        left = self.remaining(budgets, now_ms)
        for st in self._live(budgets, now_ms):
            if st.budget.hard and not self._fail_open(st.budget):
                s = self._slice(st, create=False)
                room = 0 if s is None else max(0, s.slice - s.unreported - s.reserved)
                left = room if left is None else min(left, room)
        return left

    def _exceeded(self, refused: list[_State], amount: int) -> Any:
        err = super()._exceeded(refused, amount)
        for st in refused:
            cap = st.limit + st.budget.grace_nanos
            if st.spent < cap and st.spent + st.reserved + amount <= cap:  # refused by the slice only
                err.message += "; the rest of it is held by requests on other llmgw instances"
                break
        return err

    # -- the view ----------------------------------------------------------------------------------

    def _saw(self, st: _State | None, s: _Slice, g: Grant) -> None:
        s.seen = max(s.seen, g.spent)
        k = (s.budget_id, s.start_ms)
        self._views[k] = max(self._views.get(k, 0), g.spent)
        if st is not None and st.start_ms == s.start_ms:
            st.spent = max(st.spent, g.spent + s.unreported)

    def _went_down(self, why: str) -> None:
        if self.down is None:
            log.error("cluster: the shared state (Redis) is unreachable: %s; hard budgets fail closed "
                      "(fail_open ones admit on this instance's view)", why)
        self.down = why

    def _came_back(self) -> None:
        if self.down is not None:
            log.warning("cluster: the shared state (Redis) answers again")
            self.down = None
            self._degraded.clear()

    def _degraded_event(self, st: _State) -> None:
        k = (st.budget.id, st.start_ms)
        if k in self._degraded or self.emit is None:
            return
        self._degraded.add(k)
        b = st.budget
        self.emit([Event("governance_degraded", b.id, b.scope, b.scope_id, st.start_ms, 0, {
            "period": b.period, "instance": self.instance, "reason": self.down, "name": self.names.get((b.scope, b.scope_id)),
            "message": (f"the {ADJECTIVE[b.period]} budget of {self.who(b.scope, b.scope_id)} admits on instance "
                        f"{self.instance}'s own view: the shared state (Redis) is unreachable and the budget is "
                        "fail_open"),
        }).as_dict(self.now_ms())])

    # -- the sync ----------------------------------------------------------------------------------

    async def sync(self, *, leave: bool = False) -> None:
        """One round over every slice (``leave``: give everything back, at shutdown)."""
        now = self.now_ms()
        ok = True
        try:
            await self._check_epoch()
        except GovernanceUnavailable as e:
            self._went_down(str(e))
            ok = False
        for k, s in list(self._slices.items()) if ok else ():
            ended = s.end_ms is not None and now >= s.end_ms
            gone = s.budget_id not in self._states
            # a slice idle for IDLE_SYNCS rounds (nothing reserved meanwhile) is given back whole
            s.idle = 0 if s.busy else s.idle + 1
            done = (leave or ended or gone or s.idle > IDLE_SYNCS) and not s.reserved
            st = self._states.get(s.budget_id)
            if s.lock.locked():
                continue  # a lease call is under way: its answer is as good as a report
            try:
                async with s.lock:
                    await self._sync_one(st, s, done)
            except GovernanceUnavailable as e:
                self._went_down(str(e))
                ok = False
                break
            if done:
                self._slices.pop(k, None)
        for k, amount in list(self._extra.items()):
            if not ok:
                break
            try:
                await self.leases.add_async(k[0], k[1], amount, 0)
            except GovernanceUnavailable as e:
                self._went_down(str(e))
                ok = False
                break
            self._extra.pop(k, None)
        if ok:
            if not self._slices and self.down is not None:
                try:
                    await self.leases.client.ping()
                except Exception as e:  # still down
                    self._went_down(str(e))
                    return
            self._came_back()
        self.syncs += 1

    async def _check_epoch(self) -> None:
        """A Redis that (re)started since the last round has lost every window: push this instance's
        last sight of each live hard budget's spend (held slices are re-added by ``_sync_one``),
        during the hold in which nobody is granted a slice (see ``leases``)."""
        epoch = await self.leases.epoch_async()
        if epoch is not None and epoch == self._epoch:
            return
        now = self.now_ms()
        for st in self._live(self.budgets(), now):
            if not st.budget.hard:
                continue
            k = (st.budget.id, st.start_ms)
            s = self._slices.get(k)
            mine = 0 if s is None else s.unreported  # not in Redis's figure yet: reported (or re-added) apart
            view = max(self._views.get(k, 0), st.spent - mine)
            if view > 0:
                g = await self.leases.add_async(st.budget.id, st.start_ms, 0, view)
                epoch = g.epoch
        self._epoch = epoch

    async def _sync_one(self, st: _State | None, s: _Slice, leave: bool) -> None:
        if not s.epoch and not s.slice and not s.unreported:
            return  # never granted (asked during a hold): nothing in Redis to report or renew
        sent = s.unreported
        s.busy = False
        g = await self.leases.settle_async(s.budget_id, s.start_ms, self.instance, sent, leave=leave, epoch=s.epoch)
        if g.granted == -2:  # Redis lost the window (restarted): re-add what this instance admitted
            held = s.unreported + s.reserved
            g = await self.leases.add_async(s.budget_id, s.start_ms, held, s.seen)
            log.warning("cluster: Redis had lost budget %s's window; re-added %d nano-dollars this instance "
                        "admitted against it", s.budget_id, held)
            s.slice = s.unreported = 0  # the reservations still running settle into nothing new
            s.epoch = 0
            s.lost += 1
            self._saw(st, s, g)
            return
        s.reported(g, sent)
        self._saw(st, s, g)

