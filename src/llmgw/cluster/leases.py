"""Budget leases in Redis: exact hard caps across several llmgw instances (scale-out, step 1).

Owns the shared state of one budget window in Redis and the atomic scripts that change it, and
``LocalLease``: an instance's slice of a budget, spent locally with no Redis call per request.

The design, and why it is exact:

- Redis holds, per budget window (``llmgw:budget:{id}:{window_start}``): ``spent`` (cost settled by
  every instance, seeded once from the ledger's spend in the window) and ``leased`` (the sum of the
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

Not wired into the gateway yet: see the note on the scale-out issue for the next steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import LlmgwError

if TYPE_CHECKING:
    import redis


class GovernanceUnavailable(LlmgwError):
    """The shared budget state (Redis) cannot be reached: a hard budget fails closed."""

    status = 503
    type = "governance_unavailable"
    anthropic_type = "overloaded_error"


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

# ARGV: instance, want, cap, ttl_ms, seed_spent, key_ttl_ms
_ACQUIRE = _RECLAIM + """
redis.call('HSETNX', KEYS[1], 'spent', ARGV[5])
redis.call('HSETNX', KEYS[1], 'leased', 0)
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent'))
local leased = tonumber(redis.call('HGET', KEYS[1], 'leased'))
local room = tonumber(ARGV[3]) - spent - leased
local grant = math.min(tonumber(ARGV[2]), room)
if grant < 0 then grant = 0 end
local slice = tonumber(redis.call('HINCRBY', KEYS[1], 'slice:' .. ARGV[1], grant))
redis.call('HINCRBY', KEYS[1], 'leased', grant)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return {grant, slice, spent, leased + grant}
"""

# ARGV: instance, used, give_back, ttl_ms (0: the instance leaves the window)
_SETTLE = _RECLAIM + """
local slice = tonumber(redis.call('HGET', KEYS[1], 'slice:' .. ARGV[1]) or '-1')
if slice < 0 then return {-1, 0, 0, 0} end
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
return {used, slice, tonumber(redis.call('HGET', KEYS[1], 'spent')), tonumber(redis.call('HGET', KEYS[1], 'leased'))}
"""

_STATE = _RECLAIM + """
return {tonumber(redis.call('HGET', KEYS[1], 'spent') or '0'), tonumber(redis.call('HGET', KEYS[1], 'leased') or '0'),
        tonumber(redis.call('HGET', KEYS[1], 'reclaimed') or '0')}
"""


@dataclass(frozen=True)
class Grant:
    granted: int  # nano-dollars added to the slice by this call
    slice: int  # the instance's slice after the call
    spent: int  # the window's settled spend, cluster-wide
    leased: int  # the sum of every instance's slice


class LeaseStore:
    """The scripts, bound to one Redis client (``redis.Redis``, decode_responses not needed)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "llmgw", ttl_ms: int = 10_000,
                 key_ttl_ms: int = 40 * 86_400_000) -> None:
        self.client, self.prefix, self.ttl_ms, self.key_ttl_ms = client, prefix, ttl_ms, key_ttl_ms
        self._acquire = client.register_script(_ACQUIRE)
        self._settle = client.register_script(_SETTLE)
        self._state = client.register_script(_STATE)

    def _keys(self, budget_id: str, window_start_ms: int) -> list[str]:
        base = f"{self.prefix}:budget:{budget_id}:{window_start_ms}"
        return [base, base + ":slices"]

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> list[int]:
        import redis

        try:
            return [int(x) for x in script(keys=keys, args=args)]
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise GovernanceUnavailable(f"shared budget state unavailable: {e}") from e

    def acquire(self, budget_id: str, window_start_ms: int, instance: str, want: int, cap: int,
                seed_spent: int) -> Grant:
        """Grow ``instance``'s slice by up to ``want`` (what is left under ``cap``); ``seed_spent``
        initialises the window's spend the first time any instance touches it (the ledger's)."""
        if want < 0 or cap < 0 or seed_spent < 0:
            raise ValueError("amounts are non-negative nano-dollars")
        g = self._run(self._acquire, self._keys(budget_id, window_start_ms),
                      [instance, want, cap, self.ttl_ms, seed_spent, self.key_ttl_ms])
        return Grant(*g)

    def settle(self, budget_id: str, window_start_ms: int, instance: str, used: int, give_back: int = 0, *,
               leave: bool = False) -> Grant:
        """Report ``used`` (moves from the slice to spent) and return ``give_back`` unused; ``leave``
        returns the whole rest. A slice already taken back (expired) reports ``granted = -1``:
        the instance must stop admitting against it."""
        g = self._run(self._settle, self._keys(budget_id, window_start_ms),
                      [instance, used, give_back, 0 if leave else self.ttl_ms])
        return Grant(*g)

    def state(self, budget_id: str, window_start_ms: int) -> tuple[int, int, int]:
        """``(spent, leased, reclaimed)`` of a window, after taking back expired slices."""
        s, lz, r = self._run(self._state, self._keys(budget_id, window_start_ms), [])
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
