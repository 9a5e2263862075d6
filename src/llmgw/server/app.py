"""aiohttp app factory and thin route handlers.

Handlers only pick the route; ``Gateway.handle`` does the work and owns the error envelope and
the ledger row of API requests. Every other route is wrapped by ``guarded``: an ``x-request-id``
on every answer, errors in the dialect's envelope (the Anthropic one under ``/v1/messages``, the
OpenAI one everywhere else), unknown routes and methods as typed 404/405, and a typed 500 with the
request id, never a traceback, for a bug. (No aiohttp middleware: it costs on every request.)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .. import housekeeping, paths, redact, validate
from ..cache.sidecar import CacheSidecar
from ..clock import Clock, wall_ms
from ..config import Config
from ..errors import LlmgwError, MethodNotAllowed, ModelNotFound, NotFound, Unauthorized
from ..gateway import (
    ROUTE_CHAT,
    ROUTE_COMPLETIONS,
    ROUTE_EMBEDDINGS,
    ROUTE_MESSAGES,
    ROUTE_RESPONSES,
    Gateway,
    new_request_id,
)
from ..governance.budgets import BudgetBook, ledger_raises, ledger_spend, read_budgets
from ..governance.events import EventSink
from ..governance.idempotency import Idempotency
from ..governance.keys import KeyTable
from ..metrics import Metrics
from ..pricing import PriceBook
from ..providers.router import Router
from ..providers.upstream import UpstreamClient
from ..store import db as store_db
from ..store.writer import LedgerWriter
from ..units import window
from . import openapi, unbilled
from .admin import add_routes as add_admin_routes
from .http import bearer, error_response, send_and_close
from .ui import add_routes as add_ui_routes

log = logging.getLogger("llmgw.server")

GATEWAY = web.AppKey("gateway", Gateway)
STATE = web.AppKey("state", dict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _dialect(request: web.Request) -> str:
    return "anthropic" if request.path.startswith("/v1/messages") else "openai"


def guarded(handler: Handler) -> Handler:
    """Give a plain handler the envelope: typed errors in the dialect's shape, an ``x-request-id``
    on every answer, a typed 500 (never a traceback) for a bug. Done per handler instead of as an
    aiohttp middleware, which measurably costs on every request (~15 us at c=32)."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        rid = new_request_id()
        try:
            validate.request_headers(request.headers)
            resp = await handler(request)
        except LlmgwError as e:
            resp = error_response(e, _dialect(request), rid)
            return await send_and_close(request, resp) if e.close_connection else resp
        except Exception:
            log.exception("unhandled error in request %s", rid)
            return error_response(LlmgwError(f"internal error (request {rid})", code="internal_error"),
                                  _dialect(request), rid)
        if not resp.prepared and "x-request-id" not in resp.headers:
            resp.headers["x-request-id"] = rid
        return resp

    return wrapper


async def not_found(request: web.Request) -> web.StreamResponse:
    raise NotFound(f"no route {request.method} {request.path}")


async def method_not_allowed(request: web.Request) -> web.StreamResponse:
    raise MethodNotAllowed(f"method {request.method} not allowed on {request.path}")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].handle(request, ROUTE_CHAT)


async def messages(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].handle(request, ROUTE_MESSAGES)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].handle(request, ROUTE_EMBEDDINGS)


async def responses_api(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].handle(request, ROUTE_RESPONSES)


async def completions(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].handle(request, ROUTE_COMPLETIONS)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    return await unbilled.count_tokens(request.app[GATEWAY], request)


async def response_input_tokens(request: web.Request) -> web.StreamResponse:
    return await unbilled.response_input_tokens(request.app[GATEWAY], request)


async def stored_response(request: web.Request) -> web.StreamResponse:
    return await unbilled.stored_response(request.app[GATEWAY], request)


async def _served(request: web.Request) -> list[dict[str, object]]:
    """The models this key may use, as OpenAI model objects (``Router.served_models``)."""
    gw = request.app[GATEWAY]
    key = await gw.keys.resolve(bearer(request))
    created = gw.clock() // 1000
    return [{"id": m, "object": "model", "created": created, "owned_by": owner}
            for m, owner in await gw.router.served_models(gw.prices) if key.allows(m)]


def _anthropic_model(m: dict[str, object]) -> dict[str, object]:
    """A model object in the Anthropic shape (the Anthropic SDK sends ``anthropic-version``)."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(m["created"])))  # type: ignore[call-overload]
    return {"type": "model", "id": m["id"], "display_name": m["id"], "created_at": created}


async def models(request: web.Request) -> web.Response:
    data = await _served(request)
    if "anthropic-version" in request.headers:
        shaped = [_anthropic_model(m) for m in data]
        body: dict[str, object] = {"data": shaped, "has_more": False,
                                   "first_id": shaped[0]["id"] if shaped else None,
                                   "last_id": shaped[-1]["id"] if shaped else None}
    else:
        body = {"object": "list", "data": data}
    return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())


async def model(request: web.Request) -> web.Response:
    wanted = request.match_info["id"]
    found = next((m for m in await _served(request) if m["id"] == wanted), None)
    if found is None:
        raise ModelNotFound(f"model {wanted!r} is not served here (or not to this key)", param="model")
    if "anthropic-version" in request.headers:
        found = _anthropic_model(found)
    return web.json_response(found, dumps=lambda o: orjson.dumps(o).decode())


async def quota(request: web.Request) -> web.Response:
    """``GET /v1/llmgw/quota``, authenticated with the virtual key itself: every budget that applies to
    the key (its own, its team's, its customer's) with limit, spent, reserved (in flight), remaining,
    percent used and the reset time, from the daemon's live book; money as exact decimal strings."""
    from ..units import iso_utc, usd

    gw = request.app[GATEWAY]
    key = await gw.keys.resolve(bearer(request))
    now = gw.clock()
    book = gw.budgets
    out = []
    for b in book.applicable(key.id, key.team_id, key.customer_id):
        st = book.status(b, now)
        end = st["window_end_ms"]
        out.append({
            "id": b.id, "scope": b.scope, "scope_id": b.scope_id, "name": book.names.get((b.scope, b.scope_id)),
            "period": b.period, "hard": b.hard,
            **{f"{m}_usd": usd(st[f"{m}_nanos"], dollar=False) for m in ("limit", "spent", "reserved", "remaining")},
            "used_pct": st["utilisation_pct"], "warn_pct": st["warn_pct"], "warn": st["warn"],
            "window_start": iso_utc(st["window_start_ms"]) if b.period != "total" else None,
            "resets_at": iso_utc(end) if end is not None else None,
            "auto_raise": {"step_usd": usd(st["raise_step_nanos"], dollar=False),
                           "ceiling_usd": usd(st["ceiling_nanos"], dollar=False),
                           "base_limit_usd": usd(st["base_limit_nanos"], dollar=False),
                           "raises": st["raises"]} if st["raise_step_nanos"] else None,
        })
    left = book.remaining(book.applicable(key.id, key.team_id, key.customer_id), now)
    body = {"object": "llmgw.quota", "key": {"id": key.id, "name": key.name}, "customer_id": key.customer_id,
            "team_id": key.team_id, "remaining_usd": None if left is None else usd(left, dollar=False),
            "budgets": out, "as_of": iso_utc(now)}
    return web.Response(body=orjson.dumps(body), content_type="application/json",
                        headers={"cache-control": "no-store"})


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI description of the public routes (``server/openapi.py``)."""
    return web.Response(body=request.app[STATE]["openapi"], content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """200 while the daemon can serve; 503 naming the problem when its ledger cannot record requests
    (the writer down or restarting, the disk full, the database locked): it refuses them then, and a
    container HEALTHCHECK or a supervisor should see it."""
    problem = request.app[GATEWAY].writer.health()
    if problem is not None:
        return web.json_response({"status": "unhealthy", "problems": [problem]}, status=503)
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    gw = request.app[GATEWAY]
    problems = []
    if state.get("draining"):
        problems.append("draining")
    problem = gw.writer.health()
    if problem is not None:
        problems.append(problem)
    cluster = state.get("cluster")
    if cluster is not None and (problem := cluster.problem()) is not None:
        problems.append(problem)
    if problems:
        return web.json_response({"status": "unavailable", "problems": problems}, status=503)
    body: dict[str, Any] = {"status": "ready", "keys": len(gw.keys), "providers": sorted(gw.router.providers)}
    if gw.writer.spooled:  # still ready: the rows are durable here and go in once PostgreSQL answers
        body["ledger_spooled_rows"] = gw.writer.spooled
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus scrape; behind ``Authorization: Bearer <token>`` when ``[metrics] token_env``
    is set (compared in constant time, as the admin token), 401 otherwise."""
    digest = request.app[STATE].get("metrics_token_digest")
    if digest is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        challenge = {"www-authenticate": 'Bearer realm="llmgw-metrics"'}
        if scheme.lower() != "bearer" or not given.strip():
            raise Unauthorized("metrics: send Authorization: Bearer <metrics token>", code="missing_metrics_token",
                               headers=challenge)
        if not hmac.compare_digest(hashlib.sha256(given.strip().encode("utf-8")).digest(), digest):
            raise Unauthorized("metrics: invalid metrics token", code="invalid_metrics_token", headers=challenge)
    gw = request.app[GATEWAY]
    return web.Response(body=gw.metrics.render(), headers={"content-type": gw.metrics.content_type})


def _read_definitions(conn: sqlite3.Connection, keys: KeyTable, last: int, now_ms: int,
                      known: frozenset[tuple[str, str, str, str]] = frozenset(), upto_rowid: int | None = None,
                      mine: str = "") -> tuple[int, list[sqlite3.Row] | None, dict[tuple[str, str, int], int],
                                 dict[tuple[str, int], int], dict[tuple[str, str], str]]:
    """In a worker thread: if definitions changed, reload keys and read the budget rows plus the
    ledger spend of the current window of each budget the daemon does not track yet (``known``:
    (id, scope, scope_id, period) of tracked ones), so the loop never waits on SQLite.

    With ``upto_rowid`` (the ledger writer's committed point when the read began) the spend leaves
    out this instance's rows after it (``mine``: its request-id prefix): those requests are still
    tracked by the budget book, which adds them (``BudgetBook.reload(committed_seq=)``); every other
    instance's row on a shared store counts, whatever its id. One read transaction, so
    the spend and what is taken out of it come from the same snapshot."""
    version = store_db.definitions_version(conn)
    if version == last:
        return version, None, {}, {}, {}
    conn.execute("BEGIN")
    try:
        keys.load(conn)
        rows = read_budgets(conn)
        spend = ledger_spend(conn)
        raised = ledger_raises(conn)
        spends = {}
        raises = {}
        for r in rows:
            if (r["id"], r["scope"], r["scope_id"], r["period"]) in known:
                continue
            start, _ = window(r["period"], now_ms)
            got = spend(r["scope"], r["scope_id"], start)
            if upto_rowid is not None:
                got -= _spend_after(conn, r["scope"], r["scope_id"], start, upto_rowid, mine)
            spends[(r["scope"], r["scope_id"], start)] = got
            if r["raise_step_nanos"]:
                raises[(r["id"], start)] = raised(r["id"], start)
        names = {(scope, r[0]): r[1] for scope, table in (("key", "keys"), ("team", "teams"),
                                                          ("customer", "customers"))
                 for r in conn.execute(f"SELECT id, name FROM {table} WHERE name IS NOT NULL")}
    finally:
        conn.rollback()
    return version, rows, spends, raises, names


_SCOPE_COLUMN = {"customer": "customer_id", "team": "team_id", "key": "key_id"}


def _spend_after(conn: sqlite3.Connection, scope: str, scope_id: str, since_ms: int, rowid: int, mine: str) -> int:
    """Ledger spend of one scope since ``since_ms`` in this instance's rows (request ids starting
    ``mine``) after ``rowid``: the rows it committed after the read's committed point, which the
    budget book still counts as in flight. Other instances' rows on a shared store are the spend
    the read must keep, whatever their id."""
    # NOT INDEXED: the rowid range (a few rows) and not the scope's index (the whole window's rows)
    row = conn.execute(f"SELECT COALESCE(SUM(cost_nanos), 0) FROM ledger NOT INDEXED WHERE id > ?"
                       f" AND request_id >= ? AND request_id < ? AND {_SCOPE_COLUMN[scope]} = ? AND ts_ms >= ?",
                       (rowid, mine, mine + "~", scope_id, since_ms)).fetchone()
    return int(row[0])


class Definitions:
    """The daemon's copy of keys and budgets, kept in step with the database.

    ``refresh`` re-reads them when the definitions version moved (another process, or this daemon's
    admin API, changed them); ``watch`` calls it every ``interval`` seconds. Refreshes never overlap,
    and the SQLite work runs in a worker thread so the loop never waits on it. A budget new to the
    daemon counts the requests in flight (see ``BudgetBook.begin_snapshot``)."""

    def __init__(self, conn: sqlite3.Connection, gw: Gateway, interval: float) -> None:
        self.conn, self.gw, self.interval = conn, gw, interval
        self.version = -1
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """The first load, at start (before the loop serves requests)."""
        self._apply(*_read_definitions(self.conn, self.gw.keys, self.version, self.gw.clock()))

    async def refresh(self) -> None:
        async with self._lock:
            if self.gw.writer.spooled:
                # rows answered while PostgreSQL was down are not in it yet: a budget new to this
                # instance would read a spend without them. The spool drains first thing once the
                # server answers, and a later round reads the definitions then.
                return
            book = self.gw.budgets
            known = frozenset((b.id, b.scope, b.scope_id, b.period) for b in book.budgets())
            seq, rowid = self.gw.writer.committed
            book.begin_snapshot(seq)
            try:
                got = await asyncio.to_thread(_read_definitions, self.conn, self.gw.keys, self.version,
                                              self.gw.clock(), known, rowid, self.gw.new_request_id.prefix)
                self._apply(*got, committed_seq=seq)
            finally:
                book.end_snapshot()

    def _apply(self, version: int, rows: list[sqlite3.Row] | None, spends: dict[tuple[str, str, int], int],
               raises: dict[tuple[str, int], int], names: dict[tuple[str, str], str],
               committed_seq: int | None = None) -> None:
        self.version = version
        if rows is not None:
            self.gw.budgets.names = names
            self.gw.budgets.reload(rows, lambda scope, scope_id, start: spends.get((scope, scope_id, start), 0),
                                   self.gw.clock(), lambda bid, start: raises.get((bid, start), 0),
                                   committed_seq=committed_seq)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except sqlite3.Error as e:
                log.warning("could not reload definitions: %s", e)
            except Exception:  # a bug: logged, and the watch goes on (a dead watcher never reloads again)
                log.exception("could not reload definitions")


def create_app(config: Config, home: Path, *, environ: Mapping[str, str] | None = None,
               reload_interval: float = 0.5, clock: Clock = wall_ms, worker: int | None = None) -> web.Application:
    """The daemon's app. ``clock`` (epoch ms) is its business time: budget windows, key expiry,
    idempotency and cache TTLs, ledger and event timestamps. ``worker``: this process is worker N of
    ``serve --workers`` (only worker 0 delivers an earlier run's webhook backlog and runs retention)."""
    primary = not worker
    env = dict(os.environ if environ is None else environ)
    redact.register(config, env)  # no configured secret in an answer, a log line or the metrics
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[STATE] = {"openapi": orjson.dumps(openapi.document())}
    token = config.token("metrics", env)
    secret = config.webhooks.resolve_secret(env) if config.webhooks else None
    if token is not None:
        app[STATE]["metrics_token_digest"] = hashlib.sha256(token.encode("utf-8")).digest()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        paths.ensure_home(home)
        dbfile = store_db.target(config.store.url, home)  # the SQLite file, or PostgreSQL ([store] url)
        if not isinstance(dbfile, Path):  # the response cache stays in the home's own SQLite file
            await asyncio.to_thread(lambda: store_db.open_db(paths.db_path(home)).close())
        await asyncio.to_thread(housekeeping.catch_up, dbfile)  # roll-ups exact before the budgets load
        writer = LedgerWriter(dbfile, spool=paths.spool_path(home),  # (the spool: PostgreSQL only)
                              adopt=paths.orphan_spools(home))
        writer.start()
        reader = store_db.connect(dbfile)
        keys = KeyTable(dbfile, clock)
        upstream = UpstreamClient(environ=env)  # provider calls: the hot path (see providers/upstream.py)
        session = aiohttp.ClientSession(  # webhooks
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            json_serialize=lambda o: orjson.dumps(o).decode(), auto_decompress=True)
        router = Router(config, upstream, env)
        events = EventSink(dbfile, config.webhooks, session, secret)
        cluster = None
        if config.cluster.redis_url:  # several instances: caps, rate limits and claims shared in Redis
            from ..cluster.node import Cluster

            cluster = Cluster(config.cluster, now_ms=clock, error_status=config.defaults.budget_error_status,
                              request_timeout=config.server.request_timeout, emit=events.emit)
            book: BudgetBook = cluster.budgets
        else:
            book = BudgetBook(error_status=config.defaults.budget_error_status)
        cache = CacheSidecar(home, config.cache)
        prom = Metrics({
            "llmgw_cache_process_restarts": ("Response cache processes restarted after dying.",
                                             lambda: cache.restarts),
            "llmgw_ledger_queue_depth": ("Ledger rows waiting for the writer.", lambda: writer.queue_depth),
            "llmgw_ledger_last_commit_seconds": ("Duration of the last ledger commit.",
                                                 lambda: writer.last_commit_seconds),
            "llmgw_ledger_writer_up": ("1 while the ledger can record requests, 0 while they are refused.",
                                       lambda: int(writer.health() is None)),
            "llmgw_ledger_writer_restarts": ("Ledger writer processes restarted after dying.",
                                             lambda: writer.restarts),
            **({} if writer.spool is None else {
                "llmgw_ledger_spooled_rows": ("PostgreSQL store: rows answered while it was unreachable, in the local "
                                              "spool file until they are moved into it.", lambda: writer.spooled),
            }),
            **({} if cluster is None else {
                "llmgw_cluster_redis_up": ("Cluster mode: 1 while the shared state (Redis) answers, 0 while it is "
                                           "unreachable.", lambda: int(cluster.problem() is None)),
                "llmgw_cluster_budget_slices": ("Cluster mode: budget slices this instance holds now.",
                                                lambda: len(cluster.budgets._slices)),
                "llmgw_cluster_lease_calls": ("Cluster mode: lease calls to Redis made on a request's path since "
                                              "start.", lambda: cluster.budgets.lease_calls),
            }),
        }, budgets=lambda: [book.status(b, clock()) for b in book.budgets()], histograms={
            "llmgw_ledger_commit_seconds": ("Ledger writer batch insert + commit duration.",
                                            writer.commit_times.snapshot),
        })
        idempotency = Idempotency(dbfile, clock)
        gw = Gateway(config, router, writer, keys, PriceBook.load(config.pricing), prom, budgets=book,
                     idempotency=idempotency, cache=cache, events=events, clock=clock)
        if cluster is not None:
            gw.shared_limits = cluster.ratelimiter
            idempotency.shared, idempotency.wait_s = cluster.claims, config.server.request_timeout
            app[STATE]["cluster"] = cluster
        definitions = Definitions(reader, gw, reload_interval)
        definitions.load()
        app[STATE]["definitions"] = definitions
        events.start(backlog=primary)
        try:
            if cache.config.mode != "off":  # else started by the first key with a cache mode of its own
                await cache.start()
        except Exception as e:  # the daemon serves without the cache (each request a miss) rather than not at all
            gw.cache_failed("warm", e)
        app[GATEWAY] = gw
        if cluster is not None:
            await cluster.start()
        watcher = asyncio.create_task(definitions.watch())
        keeper = housekeeping.Retention(dbfile, clock, ledger_days=config.ledger.retain_days,
                                        bodies_days=config.log.bodies_retain_days)
        app[STATE]["retention"] = keeper
        tasks = [watcher, *([asyncio.create_task(keeper.run())] if keeper.enabled and primary else [])]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            if cluster is not None:
                await cluster.stop()  # the last reports and the slices back before the events go
            await events.drain(5.0)
            await events.close()
            if gw.cache_audit is not None:
                await gw.cache_audit.drain()  # shadow verdicts and verifications under way
            await cache.close()
            await router.close()
            await upstream.close()
            await session.close()
            await asyncio.to_thread(writer.stop)
            keys.close()
            reader.close()

    app.cleanup_ctx.append(lifecycle)
    # The gateway routes handle their own errors (and ledger rows) in Gateway.handle.
    routes: list[tuple[str, str, Handler]] = [
        ("POST", "/v1/chat/completions", chat_completions),
        ("POST", "/chat/completions", chat_completions),
        ("POST", "/v1/messages", messages),
        ("POST", "/v1/messages/count_tokens", guarded(count_tokens)),
        ("POST", "/v1/responses", responses_api),
        ("POST", "/responses", responses_api),
        ("POST", "/v1/responses/input_tokens", guarded(response_input_tokens)),
        ("GET", "/v1/responses/{id}", guarded(stored_response)),
        ("DELETE", "/v1/responses/{id}", guarded(stored_response)),
        ("GET", "/v1/responses/{id}/input_items", guarded(stored_response)),
        ("POST", "/v1/completions", completions),
        ("POST", "/completions", completions),
        ("POST", "/v1/embeddings", embeddings),
        ("POST", "/embeddings", embeddings),
        ("GET", "/v1/models", guarded(models)),
        ("GET", "/v1/llmgw/quota", guarded(quota)),
        ("GET", "/models", guarded(models)),
        ("GET", "/v1/models/{id:.+}", guarded(model)),
        ("GET", "/models/{id:.+}", guarded(model)),
        ("GET", "/healthz", guarded(healthz)),
        ("GET", "/readyz", guarded(readyz)),
        ("GET", "/metrics", guarded(metrics)),
        ("GET", "/openapi.json", guarded(openapi_json)),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    for path in dict.fromkeys(p for _, p, _ in routes):
        app.router.add_route("*", path, guarded(method_not_allowed))
    add_admin_routes(app, config, home, env, guarded, clock=clock, refresh=lambda: app[STATE]["definitions"].refresh())  # /admin/...: 404 unless an admin token is set
    app[STATE]["ui"] = add_ui_routes(app, config, home, env, guarded, clock=clock)  # /ui and /: 404 unless [ui] is set
    app.router.add_route("*", "/{tail:.*}", guarded(not_found))
    return app
