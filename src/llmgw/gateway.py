"""The spine: one request, top to bottom, in ``Gateway.handle``.

    authenticate → parse + validate → resolve route → [authorize, rate-limit, reserve: governance]
    → [cache lookup] → provider call via the router (retries, fallbacks) → settle cost → record

Invariants:
- Every API request produces exactly one ledger row (success, error or cancelled), written by the
  single writer. A response is only completed (last byte / terminal SSE event sent) after its row
  is committed, so a client that has its full answer knows the gateway has billed it.
- A stream whose client disconnects is drained to the end so that the provider's own usage
  numbers are billed; only when the provider never reports usage are tokens estimated (and the
  row says ``usage_estimated = 1``).
- Upstream retries never happen after the first streamed byte.
- No provider call without a row that can be written: every integer of the row is bounded
  (``governance.bounds``) and a ledger that cannot record (``LedgerWriter.health``) refuses the
  request with a typed 503 before any upstream attempt. ``server.request_timeout`` bounds the whole
  request: upstream attempts, a stream's body and the wait for the row's commit.
- A client that hangs up is recorded as 499/cancelled, stream or not.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from . import validate
from .cache.replay import StreamedText, cacheable_finish, completion_from_stream, replay_stream
from .cache.semantic import Hit
from .cache.semantic import request_options as cache_request_options
from .cache.sidecar import CacheSidecar, CacheUnavailable
from .cache.verdict import CacheAudit
from .clock import Clock, wall_ms
from .config import Config
from .errors import (
    InvalidRequest,
    LlmgwError,
    ModelNotFound,
    PermissionDenied,
    ServiceUnavailable,
    Unauthorized,
    UpstreamTimeout,
)
from .governance.bounds import (
    RETRY_HEADER,
    bound_cost,
    bound_nanos,
    bound_usage,
    clamp_max_tokens,
    client_retry_count,
    cost_bound,
    prompt_price,
    unbounded_features,
)
from .governance.budgets import BudgetBook, BudgetExceeded, Flight, Reservation
from .governance.events import EventSink
from .governance.idempotency import Idempotency, Stored
from .governance.keys import KeyInfo, KeyTable
from .governance.ratelimit import RateLimited, RateLimiter
from .metrics import Metrics
from .pricing import Price, PriceBook, cost_nanos
from .providers import completions as legacy
from .providers import responses
from .providers.base import FORWARDED, OpenStream, StreamState, Target
from .providers.router import Router
from .providers.sse import anthropic_raw, openai_raw, split_events
from .server.http import (
    JSON,
    SSEResponse,
    bearer,
    error_event,
    error_response,
    id_headers,
    read_body,
    send_and_close,
    write_eof_quietly,
)
from .store.writer import CommitTimeout, LedgerWriter
from .units import usd
from .usage import Usage

log = logging.getLogger("llmgw.gateway")

#: distinct response cache errors logged (each once); beyond that they are only counted
_CACHE_ERRORS_LOGGED = 10

ROUTE_CHAT, ROUTE_MESSAGES, ROUTE_EMBEDDINGS = "chat", "messages", "embeddings"
ROUTE_RESPONSES, ROUTE_COMPLETIONS = "responses", "completions"
VALIDATORS: dict[str, Callable[[Any], dict[str, Any]]] = {
    ROUTE_CHAT: validate.chat_request,
    ROUTE_MESSAGES: validate.messages_request,
    ROUTE_EMBEDDINGS: validate.embeddings_request,
    ROUTE_RESPONSES: responses.validate_request,
    ROUTE_COMPLETIONS: legacy.validate_request,
}
#: the client's dialect by route (providers answer in it); "openai" for the others
DIALECTS = {ROUTE_MESSAGES: "anthropic", ROUTE_RESPONSES: "responses", ROUTE_COMPLETIONS: "completions"}
_UNCACHED = (ROUTE_EMBEDDINGS, ROUTE_COMPLETIONS)


class RequestIds:
    """Request ids: a prefix unique per source (48 random bits) and a counter, so ids increase
    within it: cheaper than uuid4 on the hot path, and the ledger's request_id index grows at its end
    instead of at random. Each ``Gateway`` has its own, so the ledger rows one instance wrote are
    the ids between ``prefix`` and ``prefix + "~"`` (see ``server.app._spend_after``)."""

    def __init__(self) -> None:
        self.prefix = "req_" + secrets.token_hex(6)
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}{next(self._counter):010x}"


#: ids of answers that are not a gateway's requests (errors before routing, pass-through reads)
new_request_id = RequestIds()


@dataclass(slots=True)
class Call:
    """Everything known about one request; becomes its ledger row."""

    request_id: str
    route: str
    inbound: str  # "openai" | "anthropic": the client's dialect
    ts_ms: int  # business time of the request (the gateway's clock)
    t0: float = field(default_factory=time.perf_counter)
    deadline: float = 0.0  # time.monotonic() by which the request must be done (server.request_timeout)
    stream: bool = False
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    key: KeyInfo | None = None
    attempts: int = 0
    upstream_seconds: float = 0.0  # time in upstream attempts (the router) and reading a stream's body
    usage: Usage = field(default_factory=Usage)
    usage_estimated: bool = False
    ttfb: float | None = None
    status: int = 200
    outcome: str = "ok"
    error: LlmgwError | None = None
    client_retry: int | None = None
    raw_body: bytes = b""
    response_body: str | None = None
    cost: int = 0
    # governance
    reservation: Reservation | None = None
    flight: Flight | None = None  # tracked by the budget book from admission until the row is committed
    reserved: int = 0
    rl_estimate: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # added to every response of this call
    idem_key: str | None = None
    idem_answer: Stored | None = None
    idempotent_replay: bool = False
    # response cache
    cache: str | None = None  # hit-exact | hit-semantic | miss | bypass; None: cache off
    cache_similarity: float | None = None
    cache_entry_id: int | None = None  # the entry that answered (or, in shadow mode, would have)
    shadow: Hit | None = None  # shadow mode: the semantic hit that was not served
    saved: int = 0
    cache_put: tuple[bool, int | None] | None = None  # store the answer: (semantic, ttl); the cache kept the keys
    response: web.StreamResponse | None = None  # a stream already sent to the client
    recorded: bool = False


class Gateway:
    def __init__(self, config: Config, router: Router, writer: LedgerWriter, keys: KeyTable,
                 prices: PriceBook, metrics: Metrics, budgets: BudgetBook | None = None,
                 events: EventSink | None = None, idempotency: Idempotency | None = None,
                 cache: CacheSidecar | None = None, clock: Clock = wall_ms) -> None:
        self.config = config
        self.idempotency = idempotency
        self.cache = cache
        self.new_request_id = RequestIds()  # this instance's ledger rows carry its prefix
        self.clock = clock  # business time: budget windows, ledger ts_ms, events, cache TTL
        self.budgets = budgets if budgets is not None else BudgetBook(error_status=config.defaults.budget_error_status)
        self.ratelimiter = RateLimiter()
        self.shared_limits: Any = None  # cluster mode: node.SharedRateLimiter (every instance's counts)
        self.events = events
        self.default_max_tokens = config.defaults.max_tokens
        self.router = router
        self.writer = writer
        self.keys = keys
        self.prices = prices
        self.metrics = metrics
        self.max_body = config.server.max_body_bytes
        self.request_timeout = config.server.request_timeout
        self.log_bodies = config.log.bodies
        self.forward_headers = config.server.forward_headers
        self._unpriced_warned: set[str] = set()
        self._prices: dict[tuple[str, str], Price | None] = {}
        metrics.known_model = self.known_model  # metric labels name only models the config knows
        self._cache_errors_logged: set[str] = set()
        self.cache_audit = CacheAudit(self) if cache is not None else None
        if cache is not None:
            cache.on_error = self.cache_failed  # writes no request waits for (hit touches, the hit log)
        self._unrecorded = 0  # rows of refused requests the ledger queue could not take
        self._unrecorded_logged = -math.inf

    # ---- the spine -------------------------------------------------------------------------
    async def handle(self, request: web.Request, route: str) -> web.StreamResponse:
        call = Call(request_id=self.new_request_id(), route=route, ts_ms=self.clock(), inbound=DIALECTS.get(route, "openai"))
        call.deadline = time.monotonic() + self.request_timeout
        self.metrics.in_flight += 1
        fwd = self.forwarded(request) if self.forward_headers else None
        forwarding = FORWARDED.set(fwd) if fwd else None  # every set is reset below: None between requests
        try:
            call.client_retry = client_retry_count(request.headers.get(RETRY_HEADER))
            validate.request_headers(request.headers)
            try:
                call.key = await self.keys.resolve(bearer(request))
            except sqlite3.Error as e:  # a key new to this daemon, and the database cannot be read now
                raise ServiceUnavailable(f"the key store cannot be read now: {e}", code="keys_unavailable") from e
            body = VALIDATORS[route](await self._read_json(request, call))
            call.model = body["model"]
            call.stream = bool(body.get("stream")) and route != ROUTE_EMBEDDINGS
            problem = self.writer.health()
            if problem is not None:  # no provider call without a row that can be written
                raise ServiceUnavailable(f"the gateway cannot record requests now, so it takes none: {problem}")
            targets = self.router.resolve(call.model)
            if route == ROUTE_RESPONSES:  # a stored response lives at one provider: only it can go on
                targets = responses.pin_targets(body, targets, self.router.origins, call.model,
                                                responses.owner_of(call.key))
            idem = request.headers.get("idempotency-key")
            if idem is not None and not call.stream and self.idempotency is not None:
                replay = await self._idempotent(call, idem)
                if replay is not None:
                    return replay
            await self._admit(call, body, targets)
            if self.cache is not None and route not in _UNCACHED and not (
                    route == ROUTE_RESPONSES and responses.stored_reference(body)):
                hit = await self._cache_lookup(request, call, body)
                if hit is not None:
                    return await self._serve_hit(request, call, body, hit)
            deadline = call.deadline
            if call.stream:
                return await self._stream(request, call, body, targets, deadline)
            if route == ROUTE_EMBEDDINGS:
                completion = await self.router.run(
                    targets, lambda t, to: t.provider.embeddings(body, t.model, to), deadline, call)
            else:
                completion = await self.router.run(
                    targets, lambda t, to: t.provider.complete(call.inbound, body, t.model, to), deadline, call)
            call.usage = completion.usage
            if completion.response_id is not None:
                self._remember_response(call, completion.response_id)
            if self.log_bodies:
                call.response_body = completion.body.decode("utf-8", "replace")
            if request.transport is None or request.transport.is_closing():
                call.status, call.outcome = 499, "cancelled"  # the client hung up: billed, not delivered
            if call.idem_key is not None:
                call.idem_answer = Stored(completion.status, "application/json", completion.body)
            await self._record(call)
            if call.shadow is not None and completion.status == 200 and self.cache_audit is not None:
                self.cache_audit.shadow_verdict(call, completion.body)
            if call.cache_put is not None and completion.status == 200:
                self._cache_store(call, completion.body)
            return web.Response(body=completion.body, status=completion.status,
                                headers=id_headers(call.request_id, call.inbound, JSON, call.headers))
        except LlmgwError as e:
            if call.recorded:  # the row went in already (e.g. its commit did not come in time)
                if call.response is not None and call.response.prepared:  # a stream: end it with the error
                    await write_eof_quietly(call.response, error_event(e, call.inbound))
                    return call.response
                return error_response(e, call.inbound, call.request_id, call.headers)
            self._fail(call, e)
            billed = getattr(e, "usage", None)  # the upstream answered and billed, but unusably
            if isinstance(billed, Usage):
                call.usage = billed
            if not call.attempts:  # refused before any upstream attempt: the gateway's own decision
                reason = rejection_reason(e)
                if reason is not None:
                    self.metrics.rejections[reason] += 1
            if isinstance(e, ServiceUnavailable):
                self._record_nowait(call)  # the ledger is down: queue the row, do not wait for it
            else:
                await self._record(call)
            resp = error_response(e, call.inbound, call.request_id, call.headers)
            return await send_and_close(request, resp) if e.close_connection else resp
        except asyncio.CancelledError:  # the shutdown drain ran out of time: the row, without waiting for it
            if not call.recorded:
                call.status, call.outcome = 499, "cancelled"
                self._record_nowait(call)
            raise
        except Exception:  # a bug: still a typed answer and a ledger row, never a traceback
            log.exception("unhandled error in request %s", call.request_id)
            # after an upstream attempt an SDK's retry would cost another provider call
            err = LlmgwError(f"internal error (request {call.request_id})", code="internal_error",
                             headers={"x-should-retry": "false"} if call.attempts else None)
            if not call.recorded:
                self._fail(call, err)
                await self._record(call)
            if call.response is not None and call.response.prepared:
                return call.response  # the stream has begun: a second response would corrupt it
            return error_response(err, call.inbound, call.request_id)
        finally:
            self.metrics.in_flight -= 1
            if forwarding is not None:
                FORWARDED.reset(forwarding)
            if call.idem_key is not None and call.key is not None and self.idempotency is not None:
                # runs before aiohttp sends the response: a retry after this answer finds it
                await self.idempotency.finish(call.key.id, call.idem_key, call.raw_body, call.idem_answer)

    def forwarded(self, request: web.Request) -> dict[str, str]:
        """The client headers ``[server] forward_headers`` lets through to the provider."""
        h = request.headers
        return {name: v for name in self.forward_headers if (v := h.get(name))}

    async def _idempotent(self, call: Call, idem: str) -> web.Response | None:
        assert call.key is not None and self.idempotency is not None
        idem = self.idempotency.check_key(idem)
        stored = await self.idempotency.begin(call.key.id, idem, call.raw_body)
        if stored is None:
            call.idem_key = idem
            return None
        call.idempotent_replay = True
        call.status = stored.status
        await self._record(call)
        headers = id_headers(call.request_id, call.inbound, {"Content-Type": stored.content_type,
                                                             "x-llmgw-idempotent-replay": "true", **call.headers})
        return web.Response(body=stored.body, status=stored.status, headers=headers)

    # ---- response cache ----------------------------------------------------------------------
    async def _cache_lookup(self, request: web.Request, call: Call, body: dict[str, Any]) -> Hit | None:
        assert self.cache is not None and call.key is not None
        cfg = self.cache.config
        mode = call.key.cache_mode or cfg.mode
        if mode == "off":
            return None
        do_lookup, do_store, threshold, ttl_ms, namespace = cache_request_options(
            request.headers, cfg, call.key.cache_threshold, call.model)
        key = call.key
        scope = "*" if cfg.scope == "global" else (key.customer_id or f"key:{key.id}")
        if call.route == ROUTE_RESPONSES:  # keyed by the same conversation view as chat, every field kept
            body = {**{k: v for k, v in body.items() if k not in ("input", "instructions")},
                    **responses.bound_view(body)}
        semantic = mode == "semantic"
        hit = None
        try:  # the keys (guard facts included) and the lookup are made in the cache process
            found, took, failed = await self.cache.lookup(
                body, inbound=call.inbound, scope=scope, namespace=namespace, use_guard=cfg.guard and semantic,
                patterns=cfg.guard_patterns, semantic=semantic, threshold=threshold if do_lookup else None,
                now_ms=call.ts_ms, request_id=call.request_id, log_hit=not cfg.shadow, remember=do_store)
            call.cache_put = (semantic, ttl_ms) if do_store else None
        except Exception as e:  # a failing cache is a miss, never a failed request
            found, took, failed = None, 0.0, e
        if failed is not None:
            self.cache_failed("lookup", failed)
        if not do_lookup:
            call.cache = "bypass"
            call.headers["x-llmgw-cache"] = "bypass"
            return None
        if found is not None:
            hit = found.hit
            if hit is not None and hit.kind == "semantic" and cfg.shadow:
                call.shadow, hit = hit, None  # shadow mode: record what would have been served, serve fresh
            self.metrics.observe_cache(hit.kind if hit else None, took, hit.cost_nanos if hit else 0,
                                       similarity=found.best if semantic else None, blocked=found.blocked)
            self.metrics.cache_entries = self.cache.entries
        if call.shadow is not None:
            call.cache = "shadow"
            call.headers["x-llmgw-cache"] = "miss"
            call.cache_entry_id = call.shadow.entry_id
            call.cache_similarity = round(call.shadow.similarity, 6)
        elif hit is None:
            call.cache = "miss"
            call.headers["x-llmgw-cache"] = "miss"
        return hit

    def _cache_store(self, call: Call, answer: bytes | StreamedText) -> None:
        """Hand a complete answer to the cache (not awaited; this daemon's next lookup finds it);
        a failure only costs the entry."""
        assert self.cache is not None and call.cache_put is not None
        semantic, ttl_ms = call.cache_put
        try:
            self.cache.store(call.request_id, semantic, answer, orjson.dumps(call.usage.to_openai()).decode(),
                             call.cost, ttl_ms, call.ts_ms)
        except Exception as e:  # the request already has its answer
            self.cache_failed("store", e)

    def cache_failed(self, op: str, exc: Exception) -> None:
        """A response cache failure never fails a request: the request goes on as a miss (or without
        storing its answer) and the failure is counted in ``llmgw_cache_errors_total{op}``. Each
        distinct error is logged once (at most ``_CACHE_ERRORS_LOGGED`` of them), never per request."""
        self.metrics.cache_errors[op] = self.metrics.cache_errors.get(op, 0) + 1
        what = f"{type(exc).__name__}: {exc}"
        if what in self._cache_errors_logged or len(self._cache_errors_logged) >= _CACHE_ERRORS_LOGGED:
            return
        self._cache_errors_logged.add(what)
        expected = isinstance(exc, LlmgwError | ImportError | OSError | sqlite3.Error | CacheUnavailable)  # a bug gets its traceback
        log.error("response cache %s failed, requests go on without the cache: %s (logged once; every failure "
                  "is counted in llmgw_cache_errors_total)", op, what, exc_info=None if expected else exc)

    async def _serve_hit(self, request: web.Request, call: Call, body: dict[str, Any], hit: Hit) -> web.StreamResponse:
        assert self.cache is not None
        call.cache = f"hit-{hit.kind}"
        call.cache_put = None
        call.cache_entry_id = hit.entry_id
        call.headers["x-llmgw-cache"] = call.cache
        if hit.kind == "semantic":
            call.cache_similarity = round(hit.similarity, 6)
            call.headers["x-llmgw-cache-similarity"] = f"{hit.similarity:.4f}"
        call.usage = Usage.from_openai(orjson.loads(hit.usage_json)) if hit.usage_json else Usage()
        call.saved = hit.cost_nanos
        if self.cache.config.charge_hits:
            call.cost = hit.cost_nanos
        if hit.kind == "semantic" and self.cache_audit is not None:
            self.cache_audit.maybe_verify(call, body, hit)
        if not call.stream:
            await self._record(call)
            return web.Response(body=hit.body, headers=id_headers(call.request_id, call.inbound, JSON, call.headers))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if call.inbound == "responses":
            events, terminal = responses.replay(orjson.loads(hit.body))
        else:
            events, terminal = replay_stream(call.inbound, hit.body, include_usage)
        resp = SSEResponse(call.request_id, call.inbound, call.headers)
        call.response = resp
        await self._record(call)
        events, terminal = (_with_cost(events, call.inbound, call.headers),
                            _with_cost(terminal, call.inbound, call.headers))
        try:
            await resp.prepare(request)
            await resp.write(events)
            await resp.write_eof(terminal)
        except OSError:
            pass
        return resp

    # ---- governance: authorize, rate-limit, reserve -----------------------------------------
    def authorize(self, key: KeyInfo, model: str, targets: list[Target]) -> None:
        """403 ``model_not_allowed`` unless ``key`` may use ``model`` (an alias: every target of it)."""
        if not key.allows(model) and not (model in self.router.aliases
                                          and all(key.allows(t.qualified) for t in targets)):
            raise PermissionDenied(f"this key may not use model {model!r}", code="model_not_allowed",
                                   param="model")

    async def _admit(self, call: Call, body: dict[str, Any], targets: list[Target]) -> None:
        key = call.key
        assert key is not None and call.model is not None
        self.authorize(key, call.model, targets)
        flight = call.flight = self.budgets.track(key.id, key.team_id, key.customer_id, call.ts_ms)
        budgets = self.budgets.applicable(key.id, key.team_id, key.customer_id)
        if not budgets and not key.rpm and not key.tpm:
            # a budget created while this request runs reserves its bound (computed only then)
            flight.bound = lambda: cost_bound(body, len(call.raw_body), self._bound_price(targets),
                                              inbound=call.inbound, default_max_tokens=self.default_max_tokens)[2]
            return
        if call.route != ROUTE_EMBEDDINGS and _max_tokens_of(body) is None:
            # make the output bound real: the upstream gets the same limit the reservation assumed
            body[_max_tokens_param(call.inbound, targets)] = (
                legacy.DEFAULT_MAX_TOKENS if call.route == ROUTE_COMPLETIONS else self.default_max_tokens)
        price = self._bound_price(targets)
        view = (responses.bound_view(body) if call.route == ROUTE_RESPONSES
                else legacy.bound_view(body) if call.route == ROUTE_COMPLETIONS else body)
        prompt_bound, output_bound, bound = cost_bound(view, len(call.raw_body), price,
                                                       inbound="anthropic" if call.inbound == "anthropic" else "openai",
                                                       default_max_tokens=self.default_max_tokens)
        if key.rpm or key.tpm:
            call.rl_estimate = prompt_bound + output_bound
            if self.shared_limits is not None:
                info = await self.shared_limits.check(key.id, key.rpm, key.tpm, call.rl_estimate)
            else:
                info = self.ratelimiter.check(key.id, key.rpm, key.tpm, call.rl_estimate, time.monotonic())
            call.headers.update(info.headers())
        if not budgets:
            flight.bound = lambda: bound
            return
        if any(b.hard for b in budgets):
            unbounded = list(dict.fromkeys(unbounded_features(view) + (
                responses.unbounded(body) if call.route == ROUTE_RESPONSES else [])))
            if unbounded:
                raise InvalidRequest(f"{', '.join(unbounded)} cannot be cost-bounded before the request runs, so "
                                     "they are refused under a hard budget", code="unbounded_cost")
        shared = self.budgets.shared
        try:
            if shared:  # lease enough of each hard budget's shared room first (usually no Redis call)
                await self.budgets.prepare(budgets, bound, call.ts_ms)
            call.reservation = self.budgets.reserve(budgets, bound, call.ts_ms)
        except BudgetExceeded:
            if not key.clamp:
                raise
            remaining = self.budgets.admissible(budgets, call.ts_ms)
            n = int(view.get("n") or 1) if call.inbound in ("openai", "completions") else 1  # best_of too
            m = clamp_max_tokens(remaining or 0, prompt_bound, price, n)
            if not m:
                raise
            param = _max_tokens_param(call.inbound, targets)
            body.pop("max_completion_tokens" if param == "max_tokens" else "max_tokens", None)
            body[param] = m
            bound = bound_nanos(prompt_bound, m * n, price)
            call.reservation = self.budgets.reserve(budgets, bound, call.ts_ms)
            call.headers["x-llmgw-max-tokens-clamped"] = str(m)
        call.reserved = bound
        flight.reservation = call.reservation
        if call.reservation.raised:
            call.headers["x-llmgw-budget-raised"] = ", ".join(
                f"{e.scope} {e.scope_id} {e.detail['period']} budget to {usd(e.detail['limit_nanos'], dollar=False)}"
                for e in call.reservation.raised)
            if self.events is not None:
                now = self.clock()
                self.events.emit([e.as_dict(now) for e in call.reservation.raised])
        if call.stream:  # its headers go out before the cost is known; other answers get them in _record
            call.headers.update(self.budgets.warning_headers(budgets, call.ts_ms))

    def _bound_price(self, targets: list[Target]) -> Price | None:
        """The dearest price in the fallback chain: any target may end up serving the request."""
        best: Price | None = None
        for t in targets:
            p = self._price(t.provider.name, t.model)
            if p is not None and (best is None or prompt_price(p) + p.output > prompt_price(best) + best.output):
                best = p
        return best

    def _settle(self, call: Call) -> None:
        """Real cost from real usage; release reservations; count tokens against the rate limit."""
        if bound_usage(call.usage):
            log.warning("request %s: %s reported token counts outside 0..2^40; recorded clamped",
                        call.request_id, call.provider or "the cache")
        if call.provider and call.upstream_model:
            price = self._price(call.provider, call.upstream_model)
            if price is None and call.usage.total_tokens:
                name = f"{call.provider}/{call.upstream_model}"
                label = self.metrics.model_label(name)
                self.metrics.unpriced[(call.provider, call.upstream_model if label == name else label)] += 1
                if name not in self._unpriced_warned and len(self._unpriced_warned) < 1000:
                    self._unpriced_warned.add(name)
                    log.warning("no price known for %s: its requests are recorded at cost 0", name)
            call.cost = cost_nanos(price, call.usage)
        call.cost = bound_cost(call.cost)
        events = None
        if call.flight is not None:
            events = self.budgets.settle_flight(call.flight, call.cost, call.ts_ms)
        elif call.reservation is not None:
            events = self.budgets.settle(call.reservation, call.cost, call.ts_ms)
        if events and self.events is not None:
            now = self.clock()
            self.events.emit([e.as_dict(now) for e in events])
        key = call.key
        if call.rl_estimate and key is not None:
            if self.shared_limits is not None:
                self.shared_limits.settle(key.id, key.tpm, call.rl_estimate, call.usage.total_tokens)
            else:
                self.ratelimiter.settle(key.id, call.rl_estimate, call.usage.total_tokens, time.monotonic())

    # ---- pieces ----------------------------------------------------------------------------
    async def _read_json(self, request: web.Request, call: Call) -> Any:
        raw = call.raw_body = await read_body(request, self.max_body, self.config.server.body_timeout)
        if not raw:
            raise InvalidRequest("request body is empty; expected a JSON object", code="invalid_json")
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise InvalidRequest(f"request body is not valid JSON: {e}", code="invalid_json") from e
        validate.nesting(raw, parsed)
        return parsed

    def _fail(self, call: Call, err: LlmgwError) -> None:
        call.error = err
        call.status = err.status
        call.outcome = "cancelled" if err.status == 499 else "error"

    async def _stream(self, request: web.Request, call: Call, body: dict[str, Any], targets: list[Target],
                      deadline: float) -> web.StreamResponse:
        state = StreamState()
        stream: OpenStream = await self.router.run(
            targets, lambda t, to: t.provider.open_stream(call.inbound, body, t.model, to, state), deadline, call)
        opened = time.perf_counter()
        resp = SSEResponse(call.request_id, call.inbound, call.headers)
        client_gone = False
        call.response = resp
        held = b""  # an event with usage in it: it goes out after the commit, with the cost added
        try:
            try:
                await resp.prepare(request)
            except OSError:
                client_gone = True
            try:
                try:
                    async with asyncio.timeout(max(0.0, call.deadline - time.monotonic())):
                        async for event in stream.events():
                            if call.ttfb is None:
                                call.ttfb = time.perf_counter() - call.t0
                            if not client_gone:
                                try:
                                    if held:
                                        await resp.write(held)  # not the last usage after all
                                        held = b""
                                    if _has_usage(event, call.inbound):
                                        held = event
                                    else:
                                        await resp.write(event)
                                except OSError:
                                    client_gone = True  # keep draining: the provider's usage is the bill
                except TimeoutError:
                    raise UpstreamTimeout(f"the stream ran past server.request_timeout ({self.request_timeout:g} s)",
                                          code="request_timeout") from None
                if call.ttfb is None:  # the whole answer came in the read that held its end
                    call.ttfb = time.perf_counter() - call.t0
                if not client_gone and (request.transport is None or request.transport.is_closing()):
                    client_gone = True  # hung up before the last events (they go out after the commit)
            except LlmgwError as e:  # the upstream broke mid-stream: no retry after the first byte
                self._settle_stream(call, state, opened)
                self._fail(call, e)
                call.status = 200 if not client_gone else 499
                await self._record(call)
                if not client_gone:
                    own = getattr(stream, "error_event", None)  # a Responses stream names its response
                    await write_eof_quietly(resp, held + ((own(e) if own else None) or error_event(e, call.inbound)))
                return resp
            self._settle_stream(call, state, opened)
            if client_gone:
                call.status, call.outcome = 499, "cancelled"
            await self._record(call)
            if call.shadow is not None and self.cache_audit is not None and not client_gone:
                self.cache_audit.shadow_verdict(call, state.text.encode())
            if call.cache_put is not None and self.cache is not None and not call.usage_estimated:
                answer: bytes | StreamedText | None
                if call.inbound == "responses":
                    answer = getattr(stream, "answer", None)
                elif not cacheable_finish(state.finish_reason):
                    answer = None
                elif state.openai_sse:  # the cache process parses the events
                    answer = StreamedText(call.inbound, call.model or "", b"".join(state.openai_sse),
                                          state.finish_reason)
                else:
                    answer = completion_from_stream(call.inbound, call.model or "", state.text, state.finish_reason,
                                                    call.usage)
                if answer is not None:
                    self._cache_store(call, answer)
            if not client_gone:
                await write_eof_quietly(resp, _with_cost(held + stream.terminal(), call.inbound, call.headers))
            return resp
        except asyncio.CancelledError:
            # shutdown drain ran out of time: record what we know without waiting for the commit
            self._settle_stream(call, state, opened)
            call.status, call.outcome = 499, "cancelled"
            self._record_nowait(call)
            raise
        finally:
            stored = getattr(stream, "response_id", None)
            if stored is not None:
                self._remember_response(call, stored)
            await stream.aclose()

    def _remember_response(self, call: Call, response_id: str) -> None:
        """A Responses API answer stored at its provider: follow-ups and reads go there, for its owner."""
        if call.provider is not None and call.key is not None:
            self.router.origins.remember(response_id, call.provider, responses.owner_of(call.key))

    def _settle_stream(self, call: Call, state: StreamState, opened: float) -> None:
        call.upstream_seconds += time.perf_counter() - opened  # the body: still the upstream's time
        call.usage = state.usage
        if not state.usage_reported:
            call.usage_estimated = True
            call.usage = Usage(
                prompt_tokens=state.usage.prompt_tokens or max(1, len(call.raw_body) // 4),
                completion_tokens=max(state.usage.completion_tokens, math.ceil(len(state.text) / 4)),
                cached_tokens=state.usage.cached_tokens, cache_write_tokens=state.usage.cache_write_tokens)
        if self.log_bodies:
            call.response_body = state.text

    # ---- settle + record -------------------------------------------------------------------
    def known_model(self, name: str) -> bool:
        """Whether the configuration knows ``name`` (an alias, or provider/model that the provider
        declares in its ``models`` or that has a price): the model names metrics may label."""
        if name in self.router.aliases:
            return True
        pname, _, mname = name.partition("/")
        provider = self.router.providers.get(pname)
        if provider is None or not mname:
            return False
        models = getattr(provider, "models", None)
        if models and provider.serves(mname):
            return True
        return self._price(pname, mname) is not None

    def _price(self, provider: str, model: str) -> Price | None:
        key = (provider, model)
        try:
            return self._prices[key]
        except KeyError:
            p = self.router.providers.get(provider)
            price = self.prices.lookup(provider, model, provider_type=p.type if p else None)
            if len(self._prices) < 10_000:  # bounded: model names come from clients
                self._prices[key] = price
            return price

    def _row(self, call: Call) -> dict[str, Any]:
        latency = time.perf_counter() - call.t0
        key = call.key
        err = call.error
        u = call.usage
        row: dict[str, Any] = {
            "request_id": call.request_id, "ts_ms": call.ts_ms, "route": call.route, "model": call.model,
            "provider": call.provider, "upstream_model": call.upstream_model, "stream": int(call.stream),
            "status": call.status, "outcome": call.outcome,
            "error_type": _text(err.type) if err else None, "error_code": _text(err.code) if err else None,
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "cached_tokens": u.cached_tokens, "cache_write_tokens": u.cache_write_tokens,
            "cost_nanos": call.cost, "latency_ms": round(latency * 1000, 3),
            "ttfb_ms": round(call.ttfb * 1000, 3) if call.ttfb is not None else None,
            "attempts": call.attempts, "key_id": key.id if key else None,
            "team_id": key.team_id if key else None, "customer_id": key.customer_id if key else None,
            "client_retry": call.client_retry, "usage_estimated": int(call.usage_estimated),
            "reserved_nanos": call.reserved, "idempotent_replay": int(call.idempotent_replay),
            "cache": call.cache, "cache_similarity": call.cache_similarity, "saved_nanos": call.saved,
            "cache_entry_id": call.cache_entry_id,
        }
        if self.log_bodies:
            row["request_body"] = call.raw_body.decode("utf-8", "replace") if call.raw_body else None
            row["response_body"] = call.response_body
        self.metrics.observe_request(row, call.upstream_seconds)
        return row

    def _cost_headers(self, call: Call) -> None:
        """``x-llmgw-cost-usd`` (exact) and, where a budget applies, ``x-llmgw-budget-remaining`` after
        this request's cost: on every answer (a stream's went out before its cost was known, so it
        carries them in its final usage, see ``_with_cost``)."""
        call.headers["x-llmgw-cost-usd"] = usd(call.cost, dollar=False)
        key = call.key
        if key is not None and len(self.budgets):
            budgets = self.budgets.applicable(key.id, key.team_id, key.customer_id)
            if budgets:
                call.headers.update(self.budgets.warning_headers(budgets, call.ts_ms))

    async def _record(self, call: Call) -> None:
        """Settle and write the row; wait for its commit until the request's deadline (at least
        ``LEDGER_GRACE`` seconds), else ``ServiceUnavailable`` (``ledger_timeout``): the row stays
        queued and is written when the ledger recovers."""
        call.recorded = True
        self._settle(call)
        self._cost_headers(call)
        try:
            fut = self.writer.submit(self._row(call), trusted=True,
                                     deadline=max(call.deadline, time.monotonic() + LEDGER_GRACE))
        except RuntimeError as e:  # stopped, or its queue is full
            log.error("request %s could not be recorded: %s", call.request_id, e)
            raise ServiceUnavailable(f"the gateway could not record this request: {e}") from None
        flight = call.flight
        if flight is not None:
            flight.seq = self.writer.last_seq
        try:
            await fut
        except CommitTimeout:
            # the flight stays tracked (its row is not committed yet) until a budget reload prunes it
            raise ServiceUnavailable("the ledger did not commit this request's row within server.request_timeout; "
                                     "it stays queued and is written once the ledger recovers",
                                     code="ledger_timeout") from None
        if flight is not None:
            self.budgets.untrack(flight)

    def _record_nowait(self, call: Call) -> None:
        call.recorded = True
        self._settle(call)
        try:
            self.writer.submit(self._row(call), trusted=True)
        except RuntimeError as e:  # stopped, or the queue is full (a long outage): logged at most every 10 s
            self._unrecorded += 1
            now = time.monotonic()
            if now - self._unrecorded_logged >= 10.0:
                self._unrecorded_logged = now
                log.error("request %s could not be recorded: %s (%d such requests so far)", call.request_id, e,
                          self._unrecorded)
            return
        if call.flight is not None:
            call.flight.seq = self.writer.last_seq


_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
#: the least time a request waits for its row's commit, even past its deadline (an error row of a
#: request that ran out of time still gets its commit)
LEDGER_GRACE = 1.0

# error class -> ``llmgw_rejections_total`` reason for an error raised before any upstream attempt
# (None: not a refusal, e.g. a bug); filled lazily, one dict lookup per error afterwards
_REJECTION_CLASSES: tuple[tuple[type[LlmgwError], str], ...] = (
    (BudgetExceeded, "budget_exceeded"),
    (RateLimited, "rate_limit_exceeded"),
    (PermissionDenied, "model_not_allowed"),
    (Unauthorized, "auth"),
    (InvalidRequest, "invalid_request"),  # bad JSON or fields, body too large, unbounded cost, idempotency
    (ModelNotFound, "invalid_request"),  # the client named a model no route serves
)
_REJECTIONS: dict[type[LlmgwError], str | None] = {}


def rejection_reason(err: LlmgwError) -> str | None:
    """The reason the gateway refused a request with ``err``, or None if it did not refuse it."""
    cls = type(err)
    try:
        return _REJECTIONS[cls]
    except KeyError:
        reason = next((r for c, r in _REJECTION_CLASSES if issubclass(cls, c)), None)
        _REJECTIONS[cls] = reason
        return reason


def _has_usage(event: bytes, inbound: str) -> bool:
    """Whether a run of SSE events may hold the stream's usage: an OpenAI chunk with a usage object,
    or the Anthropic ``message_delta`` (its ``message_start`` has usage too, but is never the last)."""
    if inbound == "anthropic":
        return b"message_delta" in event
    return b'"usage":{' in event or b'"usage": {' in event


def _with_cost(blob: bytes, inbound: str, headers: dict[str, str]) -> bytes:
    """The events of ``blob`` with ``cost_usd`` (and ``budget_remaining_usd`` where a budget applies),
    exact decimal strings, added to the usage object of the events that have one: the stream's final
    usage, which the client sees only if it asked for it (OpenAI ``stream_options.include_usage``;
    Anthropic's ``message_delta`` always has it)."""
    if not blob or not _has_usage(blob, inbound):
        return blob
    extra = {"cost_usd": headers.get("x-llmgw-cost-usd", "0.00")}
    if "x-llmgw-budget-remaining" in headers:
        extra["budget_remaining_usd"] = headers["x-llmgw-budget-remaining"]
    out = []
    for name, data in split_events(blob):
        if data != b"[DONE]" and b'"usage"' in data:
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                obj = None
            usage = obj.get("usage") if isinstance(obj, dict) else None
            if isinstance(usage, dict) and (inbound == "openai" or obj.get("type") == "message_delta"):
                usage.update(extra)
                data = orjson.dumps(obj)
        out.append(anthropic_raw(name, data) if name is not None else openai_raw(data))
    return b"".join(out)


def _text(v: Any) -> str | None:
    """A TEXT column from what an upstream's error envelope said (a type or code may be any JSON)."""
    return v if v is None or isinstance(v, str) else str(v)


def _max_tokens_of(body: dict[str, Any]) -> Any:
    mct = body.get("max_completion_tokens")
    if mct is None:
        mct = body.get("max_output_tokens")  # the Responses API's name
    return mct if mct is not None else body.get("max_tokens")


def _max_tokens_param(inbound: str, targets: list[Target]) -> str:
    """OpenAI reasoning models refuse ``max_tokens``; everything else understands it."""
    if inbound == "responses":
        return "max_output_tokens"
    if inbound == "openai" and any(t.provider.type == "openai" and t.model.startswith(_REASONING_PREFIXES)
                                   for t in targets):
        return "max_completion_tokens"
    return "max_tokens"
