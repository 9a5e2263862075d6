"""One llmgw instance's membership in a cluster (``[cluster] redis_url``): what it shares through Redis.

Owns ``Cluster`` (built by the daemon only when ``[cluster]`` names a Redis, so ``redis`` is imported
only then): the Redis client, the budget book (``budgets.SharedBudgets``), the shared rate limiter
(``SharedRateLimiter``), the in-flight idempotency claims (``SharedClaims``) and the background task
that syncs them.

- Budgets: Redis is off the per-request path while a budget has room (see ``budgets``).
- Rate limits: one shared GCRA bucket per key in Redis; an instance takes cells from it in batches
  (``SharedRateLimiter``) and spends them locally, so a key with a large limit costs a Redis call
  per batch, one with a small limit a call per request; cells unused and token corrections go back
  with the sync. Redis unreachable: each instance enforces the
  key's limits on its own (the local ``RateLimiter``: at most N times the limit for N instances)
  and ``/readyz`` says why; rate limits protect the providers, so they degrade rather than refuse.
- Idempotency: a request with an ``Idempotency-Key`` claims it in Redis (``SET NX``) before it
  runs; a duplicate on any instance waits for the claim to end, then replays the stored answer
  (the store is shared when ``[store]`` is; an answer stored on an instance whose store this one
  cannot read is a typed 409, never a second run). Redis unreachable: 503
  ``idempotency_unavailable`` for such requests.
- The response cache stays per instance.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..config import ClusterConfig
from ..errors import ServiceUnavailable
from ..governance.ratelimit import NO_LIMITS, PERIOD_S, LimitInfo, RateLimited, RateLimiter, format_duration
from .budgets import SharedBudgets
from .leases import AsyncLeaseStore

log = logging.getLogger("llmgw.cluster")

HOLD_SYNCS = 4  # after a Redis (re)start no slice is granted for this many sync intervals

# GCRA (as governance/ratelimit.py, same semantics) on Redis's clock, taking cells in batches.
# KEYS[1]: the key's hash (r, t: the theoretical arrival times, seconds). ARGV: rpm, tpm, tokens
# (this request's estimate), want_r, want_t (the batch asked for: at least 1 request and the
# estimate). A batch grants as many cells as fit (at least this request's, else refused), so the
# cells of every instance together never exceed the bucket. Floats go back as strings (Redis
# truncates Lua numbers). Answer: {0 admitted | 1 requests | 2 tokens, wait seconds, request
# debt, token debt, requests granted, tokens granted} (a debt: seconds until the bucket is full).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local P, EPS = 60.0, 0.000001
local rpm, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want_r, want_t = tonumber(ARGV[4]), tonumber(ARGV[5])
local r = tonumber(redis.call('HGET', KEYS[1], 'r') or now)
local k = tonumber(redis.call('HGET', KEYS[1], 't') or now)
local function debt(x) return tostring(math.max(0, x - now)) end
local nr, nk, gr, gt = r, k, 0, 0
if rpm > 0 then
  local iv = P / rpm
  local start = math.max(r, now)
  if start + iv - now > P + EPS then return {1, tostring(start + iv - now - P), debt(r), debt(k), 0, 0} end
  gr = math.max(1, math.min(want_r, math.floor((now + P + EPS - start) / iv)))
  nr = start + gr * iv
end
if tpm > 0 then
  local iv = P / tpm
  local start = math.max(k, now)
  local admit = start + math.min(cost, tpm) * iv
  if admit - now > P + EPS then return {2, tostring(admit - now - P), debt(r), debt(k), 0, 0} end
  gt = cost
  if cost < tpm then gt = math.max(cost, math.min(want_t, math.floor((now + P + EPS - start) / iv))) end
  nk = start + gt * iv
end
if rpm > 0 then redis.call('HSET', KEYS[1], 'r', tostring(nr)) end
if tpm > 0 then redis.call('HSET', KEYS[1], 't', tostring(nk)) end
redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(nr, nk) - now + 1) * 1000))
return {0, '0', debt(nr), debt(nk), gr, gt}
"""

# corrections: KEYS[1] as above, ARGV[1] / ARGV[2] seconds to add to r / t (negative: cells given
# back unused, tokens a request did not use; never below now, so nothing is given back twice)
_GCRA_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i, f in ipairs({'r', 't'}) do
  local v = redis.call('HGET', KEYS[1], f)
  local d = tonumber(ARGV[i])
  if v and d ~= 0 then
    local x = tonumber(v) + d
    if d < 0 then x = math.max(x, math.min(tonumber(v), now)) end
    redis.call('HSET', KEYS[1], f, tostring(x))
  end
end
return 0
"""

BATCH_DIVISOR = 64  # a key's instance takes up to 1/64 of its per-minute limit per Redis call
IDLE_SYNCS = 4  # cells of a key unused for this many syncs go back to the shared bucket


def _unreachable(e: BaseException) -> bool:
    return isinstance(e, (redis.ConnectionError, redis.TimeoutError, OSError))


class _Cells:
    """The rate-limit cells one instance holds for one key (taken from Redis, spent locally)."""

    __slots__ = ("req", "tok", "rpm", "tpm", "idle", "info")

    def __init__(self) -> None:
        self.req = 0  # requests this instance may still admit without asking Redis
        self.tok = 0  # tokens likewise
        self.rpm: int | None = None
        self.tpm: int | None = None
        self.idle = 0  # syncs since it was last used
        self.info = NO_LIMITS  # the limits' state at the last grant (for the headers)


class SharedRateLimiter:
    """The key's requests/tokens per minute across every instance.

    An instance takes cells from the key's shared GCRA bucket in batches (up to 1/64 of the limit,
    at least what the request needs) and admits against them locally; a sync gives back the cells of
    keys unused for a few rounds. Exact: the cells of all instances come out of one
    bucket, and a key with a small limit gets one cell per call (a Redis call per request)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.local = RateLimiter()  # while Redis is unreachable: each instance on its own
        self._check = cluster.client.register_script(_GCRA)
        self._settle = cluster.client.register_script(_GCRA_SETTLE)
        self._cells: dict[str, _Cells] = {}
        self._corrections: dict[str, list[float]] = {}  # key id -> [request s, token s] for the next sync
        self.calls = 0  # script calls made on a request's path

    def _key(self, key_id: str) -> str:
        return f"{self.cluster.config.prefix}:rl:{key_id}"

    def _info(self, c: _Cells) -> LimitInfo:
        i = c.info
        return LimitInfo(i.limit_requests, min(i.limit_requests or 0, i.remaining_requests + c.req),
                         i.reset_requests_s, i.limit_tokens, min(i.limit_tokens or 0, i.remaining_tokens + c.tok),
                         i.reset_tokens_s)

    async def check(self, key_id: str, rpm: int | None, tpm: int | None, tokens_estimate: int) -> LimitInfo:
        if not rpm and not tpm:
            return NO_LIMITS
        cost = max(0, tokens_estimate)
        c = self._cells.get(key_id)
        if c is not None and (c.rpm, c.tpm) != (rpm or None, tpm or None):
            self._give_back(key_id, c)  # the key's limits changed: start over from the bucket
            c = None
        if c is None:
            c = self._cells[key_id] = _Cells()
            c.rpm, c.tpm = rpm or None, tpm or None
        c.idle = 0
        if (not rpm or c.req >= 1) and (not tpm or c.tok >= cost):
            c.req -= 1 if rpm else 0
            c.tok -= cost if tpm else 0
            return self._info(c)
        # ask for what is missing plus a batch; what this instance still holds is given back in it
        want_r = max(1, (rpm or 0) // BATCH_DIVISOR) if rpm else 0
        want_t = max(cost, (tpm or 0) // BATCH_DIVISOR) if tpm else 0
        self._give_back(key_id, c)
        try:
            self.calls += 1
            code, wait, req_debt, tok_debt, gr, gt = await self._check(
                keys=[self._key(key_id)], args=[rpm or 0, tpm or 0, cost, want_r, want_t])
        except Exception as e:
            if not _unreachable(e):
                raise
            self.cluster.went_down(f"rate limit check: {e}")
            return self.local.check(key_id, rpm, tpm, tokens_estimate, time.monotonic())
        self.cluster.came_back()
        rd, td = float(req_debt), float(tok_debt)
        # LimitInfo from the debts (RateLimiter._info at now = 0: the tats are the debts)
        info = RateLimiter._info(rd, PERIOD_S / rpm if rpm else 0.0, rpm, td, PERIOD_S / tpm if tpm else 0.0, tpm, 0.0)
        if int(code) == 0:
            c.req, c.tok, c.info = int(gr) - (1 if rpm else 0), int(gt) - (cost if tpm else 0), info
            return self._info(c)
        w = float(wait)
        if int(code) == 1:
            raise RateLimited(f"rate limit reached for key {key_id}: {rpm} requests per minute (across every llmgw "
                              f"instance); try again in {format_duration(w)}", code="requests", retry_after_s=w, info=info)
        raise RateLimited(f"rate limit reached for key {key_id}: {tpm} tokens per minute across every llmgw instance "
                          f"(this request may use up to {cost}); try again in {format_duration(w)}", code="tokens",
                          retry_after_s=w, info=info)

    def _give_back(self, key_id: str, c: _Cells) -> None:
        """Queue the return of the cells ``c`` holds (moves the bucket's arrival times back)."""
        back = self._corrections.setdefault(key_id, [0.0, 0.0])
        if c.rpm and c.req > 0:
            back[0] -= c.req * PERIOD_S / c.rpm
        if c.tpm and c.tok > 0:
            back[1] -= c.tok * PERIOD_S / c.tpm
        c.req = c.tok = 0

    def settle(self, key_id: str, tpm: int | None, estimate: int, actual: int) -> None:
        """The request used ``actual`` tokens of the ``estimate`` it was admitted with: unused ones
        go back to this instance's cells, extra ones are charged to the bucket with the next sync."""
        diff = max(0, actual) - max(0, estimate)
        c = self._cells.get(key_id)
        if tpm and diff:
            if diff < 0 and c is not None and c.tpm == tpm:
                c.tok -= diff
            else:
                back = self._corrections.setdefault(key_id, [0.0, 0.0])
                back[1] += diff * PERIOD_S / tpm
        self.local.settle(key_id, estimate, actual, time.monotonic())

    async def flush(self, *, leave: bool = False) -> None:
        """The sync: give back the cells of keys unused for ``IDLE_SYNCS`` rounds (all of them with
        ``leave``) and send the token corrections."""
        for key_id, c in list(self._cells.items()):
            c.idle += 1
            if leave or c.idle > IDLE_SYNCS:
                self._give_back(key_id, c)
                del self._cells[key_id]
        batch = {k: v for k, v in self._corrections.items() if v[0] or v[1]}
        self._corrections = {}
        if not batch:
            return
        try:
            async with self.cluster.client.pipeline(transaction=False) as pipe:
                for key_id, (dr, dt) in batch.items():
                    await self._settle(keys=[self._key(key_id)], args=[repr(dr), repr(dt)], client=pipe)
                await pipe.execute()
        except Exception as e:
            if not _unreachable(e):
                raise
            for key_id, (dr, dt) in batch.items():  # sent again with the next sync
                back = self._corrections.setdefault(key_id, [0.0, 0.0])
                back[0] += dr
                back[1] += dt
            self.cluster.went_down(f"rate limit sync: {e}")


class SharedClaims:
    """In-flight ``Idempotency-Key`` claims across instances (``Idempotency.shared``).

    A claim is a Redis key ``{prefix}:idem:{key id}:{idempotency key}`` set with NX: ``run:<hash>``
    while its request runs (expires after the request timeout and a grace, if its instance dies),
    ``done:<hash>`` for 24 hours after a stored answer (so an instance that cannot read the other's
    store refuses instead of running the request twice), deleted when the request failed."""

    POLL_S = 0.02

    def __init__(self, cluster: Cluster, run_ttl_s: float) -> None:
        self.cluster = cluster
        self.run_ttl_ms = int(run_ttl_s * 1000)

    def _key(self, key_id: str, idem_key: str) -> str:
        return f"{self.cluster.config.prefix}:idem:{key_id}:{idem_key}"

    async def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            out = await fn()
        except Exception as e:
            if not _unreachable(e):
                raise
            self.cluster.went_down(f"idempotency {what}: {e}")
            raise ServiceUnavailable(f"Idempotency-Key: the shared state of requests in flight (Redis) cannot be "
                                     f"reached now ({e})", code="idempotency_unavailable") from e
        self.cluster.came_back()
        return out

    async def claim(self, key_id: str, idem_key: str, rhash: str, deadline: float) -> str | None:
        """None: this instance runs the request (claimed). Else the hash of the stored answer another
        instance finished with (``done``). Waits while another instance runs it, until ``deadline``."""
        k = self._key(key_id, idem_key)
        c = self.cluster.client
        while True:
            if await self._call("claim", lambda: c.set(k, f"run:{rhash}", nx=True, px=self.run_ttl_ms)):
                return None
            held = await self._call("claim", lambda: c.get(k))
            if held is not None:
                state, _, h = held.decode().partition(":")
                if state == "done":
                    return h
            if time.monotonic() >= deadline:
                raise ServiceUnavailable("Idempotency-Key: the same key is still running on another llmgw instance",
                                         code="idempotency_in_flight")
            await asyncio.sleep(self.POLL_S)

    async def finish(self, key_id: str, idem_key: str, rhash: str, stored: bool) -> None:
        k = self._key(key_id, idem_key)
        c = self.cluster.client
        try:
            if stored:
                await self._call("finish", lambda: c.set(k, f"done:{rhash}", px=24 * 3_600_000))
            else:
                await self._call("finish", lambda: c.delete(k))
        except ServiceUnavailable as e:  # the claim expires by itself (run_ttl)
            log.error("could not end an Idempotency-Key claim in Redis: %s", e.message)


class Cluster:
    """The shared state of this instance (``[cluster]``); ``start`` and ``stop`` with the daemon."""

    def __init__(self, config: ClusterConfig, *, now_ms: Callable[[], int], error_status: int,
                 request_timeout: float, emit: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        assert config.redis_url is not None
        self.config = config
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        # one retry on a connection error: after a Redis restart a pooled connection is dead and only
        # a new one finds out whether Redis is really gone (every script tolerates running twice:
        # a repeat grants or counts more, never less)
        self.client = aredis.Redis.from_url(config.redis_url, socket_timeout=config.timeout,
                                            socket_connect_timeout=config.timeout, retry_on_timeout=False,
                                            retry=Retry(NoBackoff(), 1), retry_on_error=[redis.ConnectionError])
        self.down: str | None = None
        hold_ms = int(HOLD_SYNCS * config.sync_interval * 1000) + int(config.timeout * 1000)
        leases = AsyncLeaseStore(self.client, prefix=config.prefix, ttl_ms=int(config.lease_ttl * 1000),
                                 hold_ms=hold_ms)
        self.budgets = SharedBudgets(leases, self.instance, error_status=error_status,
                                     sync_interval=config.sync_interval, now_ms=now_ms, emit=emit)
        self.ratelimiter = SharedRateLimiter(self)
        self.claims = SharedClaims(self, request_timeout + 30.0)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def went_down(self, why: str) -> None:
        if self.down is None:
            log.error("cluster: the shared state (Redis) is unreachable: %s", why)
        self.down = why

    def came_back(self) -> None:
        if self.down is not None:
            log.warning("cluster: the shared state (Redis) answers again")
        self.down = None

    def problem(self) -> str | None:
        """For ``/readyz``: why this instance cannot hold the cluster's caps now, else None."""
        why = self.down or self.budgets.down
        return None if why is None else f"shared state (Redis) unreachable: {why}"

    async def start(self) -> None:
        try:
            await self.client.ping()
        except Exception as e:
            if not _unreachable(e):
                raise
            self.went_down(str(e))  # the daemon starts anyway: hard budgets fail closed until Redis answers
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.budgets.sync()
                await self.ratelimiter.flush()
            except Exception:  # a bug must not stop the reports; the next round tries again
                log.exception("cluster: sync failed")
            try:
                await asyncio.wait_for(self._stopping.wait(), self.config.sync_interval)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        """Give every slice back and send the last reports (at shutdown), then close the client."""
        # the round under way finishes first: a cancel delivered inside a redis-py call can be
        # absorbed there, and the loop would then go on forever (seen under load)
        self._stopping.set()
        if self._task is not None:
            if not (await asyncio.wait({self._task}, timeout=3 * self.config.timeout + 1))[0]:
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1)
        try:
            await asyncio.wait_for(self.budgets.sync(leave=True), 5.0)
            await asyncio.wait_for(self.ratelimiter.flush(leave=True), 2.0)
        except Exception as e:  # unreachable: the slices expire after lease_ttl (counted as spent)
            log.warning("cluster: could not give the budget slices back at shutdown (%s); they expire in %g s",
                        e, self.config.lease_ttl)
        await self.client.aclose()
