"""Budget leases in Redis: exact hard caps across several llmgw instances (scale-out, step 1).

Owns the shared state of one budget window in Redis and the atomic scripts that change it, and
``LocalLease``: an instance's slice of a budget, spent locally with no Redis call per request.

The design, and why it is exact:

- Redis holds, per budget window (``llmgw:budget:{id}:{window_start}``): ``spent`` (cost settled by
  every instance; never lowered: each acquire raises it to at least the caller's last sight of it,
  which seeds it from the ledger the first time) and ``leased`` (the sum of the
  slices instances hold), with each instance's slice and its expiry.
- ``acquire`` grants an instance at most ``cap - spent - leased`` (never a negative amount), so
  ``spent + leased <= cap`` holds after every script: the scripts are the only writers and each runs
  atomically.
- An instance admits a request only against its own slice: ``used + reserved + amount <= slice``
  (``LocalLease``). Everything the cluster admitted is therefore at most ``spent`` plus the sum of
  the slices, which is ``spent + leased <= cap``: a hard cap holds across instances with the same
  argument the single-process ``BudgetBook`` uses, and Redis is touched only when a slice runs
  out, when an instance reports what it used (``settle``, batched) and when it renews.
- A slice has a time to live (``ttl_ms``, renewed by its holder). A slice whose holder stopped
  renewing (killed with SIGKILL, partitioned away) is taken back by the next script on that window
  and counted as **spent**, not returned: the dead instance may have spent any part of it, and
  its ledger rows are not visible to Redis. So a crash can only make the cluster admit less,
  never more; the ledger stays the record of what was really spent.
- Times in the scripts are Redis's own clock (``TIME``), so instances' clocks do not matter.
- A Redis restart loses the windows. Then ``settle`` answers ``-2`` and the instance ``add``s what it
  admitted against its lost slice (settled and still reserved) on top of its last sight of the
  spend; every instance's last sight includes its own reports, and the latest one includes
  everybody's, so the max of the sights plus the re-added amounts is at least what was admitted.
  Instances holding no slice push their last sight of every window too, when their sync sees a new
  epoch. For that to be complete before anybody cuts a new slice, no slice is granted for ``hold_ms``
  after Redis first runs a script (``Grant.wait_ms``), a few sync intervals of the instances.

``cluster.budgets.SharedBudgets`` wires this into the daemon's admission.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import LlmgwError


class GovernanceUnavailable(LlmgwError):
    """The shared budget state (Redis) cannot be reached: a hard budget fails closed."""

    status = 503
    type = "governance_unavailable"
    code = "governance_unavailable"
    anthropic_type = "overloaded_error"
    exit_code = 5

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"retry-after": "1"})


# KEYS[1] = the window's hash, KEYS[2] = its slices' expiry zset. Never negate with unary minus:
# Lua's -(0) is "-0", which HINCRBY refuses as not an integer (write 0 - x).
# every script first takes back expired slices, counting them as spent
_RECLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, who in ipairs(dead) do
  local amt = tonumber(redis.call('HGET', KEYS[1], 'slice:' .. who) or '0')
  redis.call('HINCRBY', KEYS[1], 'leased', 0 - amt)
  redis.call('HINCRBY', KEYS[1], 'spent', amt)
  redis.call('HINCRBY', KEYS[1], 'reclaimed', amt)
  redis.call('HDEL', KEYS[1], 'slice:' .. who)
  redis.call('ZREM', KEYS[2], who)
end
"""

# the hold: KEYS[3] (``{prefix}:born``) is when this Redis first ran a script. For ``hold_ms`` after
# that, no slice is granted (the answer's 5th element says how long to wait): a restarted Redis
# (its state lost) first hears from every live instance what it still holds, before new slices
# are cut from a spend it no longer knows (see ``add``).
_HOLD = """
local born = tonumber(redis.call('GET', KEYS[3]) or '-1')
if born < 0 then redis.call('SET', KEYS[3], now); born = now end
"""

# the window's spend is never lowered: ``view`` (the caller's last sight of it, or its ledger's sum)
# can only raise it, which is what restores it after a Redis restart
_VIEW = """
local spent = math.max(tonumber(redis.call('HGET', KEYS[1], 'spent') or '0'), tonumber(ARGV[5]))
redis.call('HSET', KEYS[1], 'spent', spent)
redis.call('HSETNX', KEYS[1], 'leased', 0)
"""

# ARGV: instance, want, cap, ttl_ms, view_spent, key_ttl_ms, hold_ms
_ACQUIRE = _RECLAIM + _HOLD + """
local held = born + tonumber(ARGV[7]) - now
if held > 0 then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'slice:' .. ARGV[1]) or '0'),
          tonumber(redis.call('HGET', KEYS[1], 'spent') or '0'), tonumber(redis.call('HGET', KEYS[1], 'leased') or '0'), held, born}
end
""" + _VIEW + """
local leased = tonumber(redis.call('HGET', KEYS[1], 'leased'))
local room = tonumber(ARGV[3]) - spent - leased
local grant = math.min(tonumber(ARGV[2]), room)
if grant < 0 then grant = 0 end
local slice = tonumber(redis.call('HINCRBY', KEYS[1], 'slice:' .. ARGV[1], grant))
redis.call('HINCRBY', KEYS[1], 'leased', grant)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return {grant, slice, spent, leased + grant, 0, born}
"""

# ARGV: instance, used, give_back, ttl_ms (0: the instance leaves the window), epoch (the Redis
# start the slice was granted in, 0: not checked)
# granted -1: the slice was taken back (expired, counted as spent); -2: Redis lost the window (it
# restarted since the slice was granted): the caller must ``add`` what it holds
_SETTLE = _RECLAIM + """
local born = tonumber(redis.call('GET', KEYS[3]) or '-1')
if redis.call('EXISTS', KEYS[1]) == 0 or (tonumber(ARGV[5]) > 0 and born ~= tonumber(ARGV[5])) then
  return {-2, 0, 0, 0, 0, born}
end
local slice = tonumber(redis.call('HGET', KEYS[1], 'slice:' .. ARGV[1]) or '-1')
if slice < 0 then return {-1, 0, tonumber(redis.call('HGET', KEYS[1], 'spent') or '0'), 0, 0, born} end
local used = math.min(tonumber(ARGV[2]), slice)
local back = math.min(tonumber(ARGV[3]), slice - used)
redis.call('HINCRBY', KEYS[1], 'spent', used)
redis.call('HINCRBY', KEYS[1], 'leased', 0 - (used + back))
slice = tonumber(redis.call('HINCRBY', KEYS[1], 'slice:' .. ARGV[1], 0 - (used + back)))
if tonumber(ARGV[4]) == 0 then
  redis.call('HINCRBY', KEYS[1], 'leased', 0 - slice)
  redis.call('HDEL', KEYS[1], 'slice:' .. ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  slice = 0
else
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
end
return {used, slice, tonumber(redis.call('HGET', KEYS[1], 'spent')), tonumber(redis.call('HGET', KEYS[1], 'leased')), 0, born}
"""

# ARGV: amount, (unused), (unused), (unused), view_spent, key_ttl_ms: count ``amount`` as spent
# (what an instance admitted against a slice that Redis lost), on top of max(spent, view)
_ADD = _RECLAIM + _HOLD + _VIEW + """
spent = tonumber(redis.call('HINCRBY', KEYS[1], 'spent', ARGV[1]))
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {tonumber(ARGV[1]), 0, spent, tonumber(redis.call('HGET', KEYS[1], 'leased')), 0, born}
"""

_STATE = _RECLAIM + """
return {tonumber(redis.call('HGET', KEYS[1], 'spent') or '0'), tonumber(redis.call('HGET', KEYS[1], 'leased') or '0'),
        tonumber(redis.call('HGET', KEYS[1], 'reclaimed') or '0')}
"""


@dataclass(frozen=True)
class Grant:
    granted: int  # nano-dollars added to the slice by this call (settle: -1 taken back, -2 window unknown)
    slice: int  # the instance's slice after the call
    spent: int  # the window's settled spend, cluster-wide
    leased: int  # the sum of every instance's slice
    wait_ms: int = 0  # acquire during the hold after a Redis (re)start: nothing granted, ask again then
    epoch: int = 0  # when this Redis started (its first script): a slice lives in one epoch


class LeaseStore:
    """The scripts, bound to one Redis client (``redis.Redis``, decode_responses not needed).

    ``hold_ms``: after Redis first runs a script (a fresh or restarted Redis) no slice is granted for
    this long (``Grant.wait_ms``); the daemon sets it to a few sync intervals, so that every live
    instance has re-reported what it holds first. ``AsyncLeaseStore`` is the same on ``redis.asyncio``."""

    def __init__(self, client: Any, *, prefix: str = "llmgw", ttl_ms: int = 10_000,
                 key_ttl_ms: int = 40 * 86_400_000, hold_ms: int = 0) -> None:
        self.client, self.prefix, self.ttl_ms, self.key_ttl_ms = client, prefix, ttl_ms, key_ttl_ms
        self.hold_ms = hold_ms
        self._acquire = client.register_script(_ACQUIRE)
        self._settle = client.register_script(_SETTLE)
        self._add = client.register_script(_ADD)
        self._state = client.register_script(_STATE)

    def _keys(self, budget_id: str, window_start_ms: int) -> list[str]:
        base = f"{self.prefix}:budget:{budget_id}:{window_start_ms}"
        return [base, base + ":slices", f"{self.prefix}:born"]

    def _acquire_call(self, budget_id: str, window_start_ms: int, instance: str, want: int, cap: int,
                      seed_spent: int) -> tuple[Any, list[str], list[Any]]:
        if want < 0 or cap < 0 or seed_spent < 0:
            raise ValueError("amounts are non-negative nano-dollars")
        return self._acquire, self._keys(budget_id, window_start_ms), [
            instance, want, cap, self.ttl_ms, seed_spent, self.key_ttl_ms, self.hold_ms]

    def _settle_call(self, budget_id: str, window_start_ms: int, instance: str, used: int, give_back: int,
                     leave: bool, epoch: int) -> tuple[Any, list[str], list[Any]]:
        if used < 0 or give_back < 0:
            raise ValueError("amounts are non-negative nano-dollars")
        return self._settle, self._keys(budget_id, window_start_ms), [
            instance, used, give_back, 0 if leave else self.ttl_ms, epoch]

    def _add_call(self, budget_id: str, window_start_ms: int, amount: int, view: int) -> tuple[Any, list[str], list[Any]]:
        if amount < 0 or view < 0:
            raise ValueError("amounts are non-negative nano-dollars")
        return self._add, self._keys(budget_id, window_start_ms), [amount, 0, 0, 0, view, self.key_ttl_ms]

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> list[int]:
        import redis

        try:
            return [int(x) for x in script(keys=keys, args=args)]
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise GovernanceUnavailable(f"shared budget state unavailable: {e}") from e

    def acquire(self, budget_id: str, window_start_ms: int, instance: str, want: int, cap: int,
                seed_spent: int) -> Grant:
        """Grow ``instance``'s slice by up to ``want`` (what is left under ``cap``); ``seed_spent``
        (the caller's last sight of the window's spend, or its ledger's sum) raises the window's
        spend to at least that figure: the first instance's seeds it, and after a Redis restart the
        largest one restores it."""
        return Grant(*self._run(*self._acquire_call(budget_id, window_start_ms, instance, want, cap, seed_spent)))

    def settle(self, budget_id: str, window_start_ms: int, instance: str, used: int, give_back: int = 0, *,
               leave: bool = False, epoch: int = 0) -> Grant:
        """Report ``used`` (moves from the slice to spent) and return ``give_back`` unused; ``leave``
        returns the whole rest. A slice already taken back (expired) reports ``granted = -1``: the
        instance must stop admitting against it; ``-2``: Redis lost the window (it restarted since
        ``epoch``, the ``Grant.epoch`` of the slice; 0 checks only that the window exists): ``add``."""
        return Grant(*self._run(*self._settle_call(budget_id, window_start_ms, instance, used, give_back, leave,
                                                   epoch)))

    def add(self, budget_id: str, window_start_ms: int, amount: int, view: int) -> Grant:
        """Count ``amount`` as spent on top of max(spent, ``view``): after a Redis restart, what an
        instance admitted against the slice Redis forgot (its settled and reserved spend)."""
        return Grant(*self._run(*self._add_call(budget_id, window_start_ms, amount, view)))

    def state(self, budget_id: str, window_start_ms: int) -> tuple[int, int, int]:
        """``(spent, leased, reclaimed)`` of a window, after taking back expired slices."""
        s, lz, r = self._run(self._state, self._keys(budget_id, window_start_ms), [])
        return s, lz, r


class AsyncLeaseStore(LeaseStore):
    """``LeaseStore`` on a ``redis.asyncio.Redis`` client: the same scripts, awaited (the daemon's)."""

    async def _arun(self, script: Any, keys: list[str], args: list[Any]) -> list[int]:
        import redis

        try:
            return [int(x) for x in await script(keys=keys, args=args)]
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise GovernanceUnavailable(f"shared budget state unavailable: {e}") from e

    async def acquire_async(self, budget_id: str, window_start_ms: int, instance: str, want: int, cap: int,
                            seed_spent: int) -> Grant:
        return Grant(*await self._arun(*self._acquire_call(budget_id, window_start_ms, instance, want, cap,
                                                           seed_spent)))

    async def settle_async(self, budget_id: str, window_start_ms: int, instance: str, used: int,
                           give_back: int = 0, *, leave: bool = False, epoch: int = 0) -> Grant:
        return Grant(*await self._arun(*self._settle_call(budget_id, window_start_ms, instance, used, give_back,
                                                          leave, epoch)))

    async def add_async(self, budget_id: str, window_start_ms: int, amount: int, view: int) -> Grant:
        return Grant(*await self._arun(*self._add_call(budget_id, window_start_ms, amount, view)))

    async def epoch_async(self) -> int | None:
        """When this Redis first ran a script (``Grant.epoch``); None before any script ran."""
        import redis

        try:
            born = await self.client.get(f"{self.prefix}:born")
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise GovernanceUnavailable(f"shared budget state unavailable: {e}") from e
        return None if born is None else int(born)

    async def state_async(self, budget_id: str, window_start_ms: int) -> tuple[int, int, int]:
        s, lz, r = await self._arun(self._state, self._keys(budget_id, window_start_ms), [])
        return s, lz, r


@dataclass
class LocalLease:
    """An instance's slice of one budget window, spent with no I/O (single-threaded, like ``BudgetBook``).

    ``slice`` is the slice as Redis last reported it (granted, not yet settled there). ``reserve``
    admits only while ``unreported + reserved + amount <= slice``; ``settle`` turns a reservation
    into its real cost; ``unreported`` is what ``LeaseStore.settle`` sends next. The invariant
    ``unreported + reserved <= slice`` survives a report that runs concurrently with admissions:
    Redis shrinks the slice by exactly what was sent, and so does ``reported``."""

    slice: int = 0
    unreported: int = 0
    reserved: int = 0
    lost: int = 0  # times the slice was taken back (expired) before it was reported

    def reserve(self, amount: int) -> bool:
        if amount < 0:
            raise ValueError("amount must be non-negative")
        if self.unreported + self.reserved + amount > self.slice:
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: int, cost: int) -> None:
        """The request reserved ``reserved`` and cost ``cost`` (never more: the bound is an upper bound)."""
        self.reserved -= reserved
        self.unreported += min(cost, reserved)

    def granted(self, grant: Grant) -> None:
        self.slice = grant.slice

    def reported(self, grant: Grant, sent: int) -> None:
        """After ``LeaseStore.settle(used=sent)``."""
        if grant.granted < 0:  # taken back: Redis already counted the whole slice as spent
            self.lost += 1
            self.slice = self.unreported = 0
            return
        self.unreported -= sent
        self.slice = grant.slice
