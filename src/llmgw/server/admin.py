"""The admin API: customers, teams, keys, budgets and spend reports over HTTP, JSON in and out,
under ``/admin/``, for automation. The same operations as the CLI, through the same governance
functions, so both apply the same rules.

Invariants:

* Off unless an admin token is configured: ``[admin] token_env = "NAME"`` names the environment
  variable holding it, else ``LLMGW_ADMIN_TOKEN``. Off, every ``/admin/`` route answers 404
  ``not_found``. On, every ``/admin/`` request (unknown paths and methods included, so they reveal
  nothing) must carry ``Authorization: Bearer <token>``, compared in constant time (SHA-256 of
  both, then ``hmac.compare_digest``), else 401 ``authentication_error``. The token is never
  logged or echoed.
* Errors are the OpenAI envelope with an ``x-request-id`` on every answer (``guarded`` from the app).
  Bad JSON, unknown fields and wrong types are 400 ``invalid_request_error`` naming the field in
  ``param`` (``checks.Checks``, raising at the first problem); the values are checked by the
  governance functions, whose errors name their field, shown here as the JSON field; unknown ids
  are 404; an id or key name that already exists, or a revoked key, is 409.
* Every write runs in one transaction of its own (``db(..., write=True)``): all of it or nothing.
* Money in: decimal strings of USD (``"12.50"``) or integers, or integer ``*_nanos`` fields; a JSON
  number with a fraction is refused (it went through a float). Money out: ``*_nanos`` integers and
  exact ``*_usd`` decimal strings; never a float.
* Every SQLite access runs in a worker thread (``asyncio.to_thread``) on a short-lived connection,
  never on the event loop. A change made here is in this daemon's key table and budgets before its
  answer is sent (the app's ``refresh``); other daemons on the same database see it through their
  reload watchers (the ``definitions_version`` counter) within a second. The ledger is never
  written here.
* Secrets: a key's secret is in the answer of ``POST /admin/keys`` and ``.../rotate`` only, once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web

from .. import reports
from ..checks import Checks
from ..clock import Clock
from ..config import Config
from ..errors import InvalidRequest, MethodNotAllowed, NotFound, Unauthorized, UsageError
from ..governance import hierarchy
from ..governance import keys as govkeys
from ..governance.budgets import PERIODS, SCOPES, budget_report, delete_budget, select_budgets, upsert_budget
from ..store import db as store_db
from ..store.conn import Target
from ..tomltext import show
from ..units import MAX_NANOS, parse_time, parse_usd, usd
from .http import read_body

log = logging.getLogger("llmgw.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")

#: reads request bodies and queries: the first problem is a 400 naming the field in ``param``
V = Checks(error=InvalidRequest)


# ---- request parsing ------------------------------------------------------------------------------


@contextmanager
def _param(name: str | None = None, **json_names: str) -> Iterator[None]:
    """A governance error raised inside is about the field ``name`` when it names none, or about the
    JSON field ``json_names`` maps its ``param`` to (``limit`` → ``limit_usd``)."""
    try:
        yield
    except (UsageError, NotFound) as e:
        if e.param is None:
            e.param = name
        elif e.param in json_names:
            e.message, e.param = e.about(json_names.__getitem__), json_names[e.param]
        raise


def _money(d: Mapping[str, Any], base: str, *, required: bool = False) -> int | None:
    """Nano-dollars from ``<base>_usd`` (decimal string or integer) or ``<base>_nanos`` (integer)."""
    usd_name, nanos_name = f"{base}_usd", f"{base}_nanos"
    usd = d.get(usd_name)
    if usd is not None and d.get(nanos_name) is not None:
        V.add(nanos_name, f"give {usd_name} or {nanos_name}, not both")
    if d.get(nanos_name) is not None:
        return V.integer(d, nanos_name, lo=0, hi=MAX_NANOS)
    if isinstance(usd, float):
        V.add(usd_name, 'give USD as a decimal string such as "12.50", not a JSON number with a fraction '
                        "(it would pass through a float)", "invalid_type")
    if usd is not None and (isinstance(usd, bool) or not isinstance(usd, str | int)):
        V.add(usd_name, f"expected a decimal string of USD, got {show(usd)}", "invalid_type")
    return V.parsed(d, usd_name, parse_usd, required=required)


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    q = request.rel_url.query
    for k in q:
        if len(q.getall(k)) > 1:
            V.add(k, "query parameter given more than once")
    V.unknown(q, allowed, what="query parameter")
    return {k: q[k] for k in q}


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _budget_def(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["hard"] = bool(d["hard"])
    d["limit_usd"] = usd(d["limit_nanos"], dollar=False)
    d["grace_usd"] = usd(d["grace_nanos"], dollar=False)
    if "raise_step_nanos" in d:
        d["auto_raise_usd"] = usd(d["raise_step_nanos"], dollar=False)
        d["ceiling_usd"] = usd(d["ceiling_nanos"], dollar=False)
    return d


# ---- the API --------------------------------------------------------------------------------------


class AdminApi:
    body_timeout: float | None = None  # server.body_timeout, set by add_routes

    def __init__(self, dbfile: Target, token: str, max_body: int, clock: Clock,
                 refresh: Callable[[], Awaitable[None]]) -> None:
        self.dbfile = dbfile
        self.clock = clock
        self.refresh = refresh  # re-reads keys and budgets into the gateway after a change
        self._token_digest = hashlib.sha256(token.encode("utf-8")).digest()
        self.max_body = max_body

    # -- plumbing ----------------------------------------------------------------------------------

    def authorize(self, request: web.Request) -> None:
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        challenge = {"www-authenticate": 'Bearer realm="llmgw-admin"'}
        if scheme.lower() != "bearer" or not given.strip():
            raise Unauthorized("admin API: send Authorization: Bearer <admin token>", code="missing_admin_token",
                               headers=challenge)
        digest = hashlib.sha256(given.strip().encode("utf-8")).digest()
        if not hmac.compare_digest(digest, self._token_digest):
            raise Unauthorized("admin API: invalid admin token", code="invalid_admin_token", headers=challenge)

    def protected(self, handler: Handler) -> Handler:
        """Check the admin token first, then run ``handler``; a governance ``UsageError`` left over
        becomes an ``invalid_request_error`` naming its field (400, or 409 for a ``Conflict``)."""

        async def wrapper(request: web.Request) -> web.StreamResponse:
            self.authorize(request)
            try:
                resp = await handler(request)
            except UsageError as e:
                raise InvalidRequest(e.message, param=e.param, code=e.code or "invalid_value", status=e.status) from None
            if request.method != "GET" and resp.status < 400:
                await self.refresh()  # the change applies here before the client hears of it
            return resp

        return wrapper

    async def db(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """Run ``fn`` on a short-lived connection in a worker thread (the loop never waits on SQLite);
        ``write``: in one transaction, committed when ``fn`` returns, rolled back if it raises."""

        def run() -> T:
            conn = store_db.open_db(self.dbfile)
            try:
                if not write:
                    return fn(conn)
                with store_db.transaction(conn):
                    return fn(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(run)

    async def body(self, request: web.Request, allowed: tuple[str, ...], *, optional: bool = False) -> dict[str, Any]:
        """The JSON object of the body, with only ``allowed`` fields (``optional``: may be empty)."""
        raw = await read_body(request, self.max_body, self.body_timeout)
        if not raw.strip():
            if optional:
                return {}
            raise InvalidRequest("request body is empty; expected a JSON object", code="invalid_json")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise InvalidRequest(f"request body is not valid JSON: {e}", code="invalid_json") from e
        if not isinstance(data, dict):
            raise InvalidRequest(f"request body must be a JSON object, got {show(data)}", code="invalid_json")
        V.unknown(data, allowed, what="field")
        return data

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("GET", "/admin/customers", self.list_customers),
            ("POST", "/admin/customers", self.create_customer),
            ("GET", "/admin/customers/{id}", self.show_customer),
            ("GET", "/admin/teams", self.list_teams),
            ("POST", "/admin/teams", self.create_team),
            ("GET", "/admin/keys", self.list_keys),
            ("POST", "/admin/keys", self.create_key),
            ("GET", "/admin/keys/{ref}", self.show_key),
            ("POST", "/admin/keys/{ref}/disable", self.disable_key),
            ("POST", "/admin/keys/{ref}/enable", self.enable_key),
            ("POST", "/admin/keys/{ref}/revoke", self.revoke_key),
            ("POST", "/admin/keys/{ref}/rotate", self.rotate_key),
            ("GET", "/admin/budgets", self.list_budgets),
            ("PUT", "/admin/budgets", self.put_budget),
            ("DELETE", "/admin/budgets/{budget_id}", self.delete_budget),
            ("GET", "/admin/report", self.report),
        ]

    # -- customers and teams -----------------------------------------------------------------------

    async def list_customers(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        return _json({"data": await self.db(hierarchy.list_customers)})

    async def create_customer(self, request: web.Request) -> web.StreamResponse:
        f = await self.body(request, ("id", "name"))
        cid, name = V.string(f, "id", required=True), V.string(f, "name", nonempty=False)
        assert cid is not None

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            hierarchy.create_customer(conn, cid, name=name)
            return hierarchy.show_customer(conn, cid)

        out = await self.db(run, write=True)
        log.info("admin: created customer %s", cid)
        return _json(out, 201)

    async def show_customer(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        cid = request.match_info["id"]
        return _json(await self.db(lambda conn: hierarchy.show_customer(conn, cid)))

    async def list_teams(self, request: web.Request) -> web.StreamResponse:
        customer = V.string(_query(request, ("customer",)), "customer")
        return _json({"data": await self.db(lambda conn: hierarchy.list_teams(conn, customer_id=customer))})

    async def create_team(self, request: web.Request) -> web.StreamResponse:
        f = await self.body(request, ("id", "customer", "name"))
        tid, customer = V.string(f, "id", required=True), V.string(f, "customer", required=True)
        name = V.string(f, "name", nonempty=False)
        assert tid is not None and customer is not None
        out = await self.db(lambda conn: hierarchy.create_team(conn, tid, customer_id=customer, name=name),
                            write=True)
        log.info("admin: created team %s (customer %s)", tid, customer)
        return _json(out, 201)

    # -- keys --------------------------------------------------------------------------------------

    async def list_keys(self, request: web.Request) -> web.StreamResponse:
        q = _query(request, ("customer", "team"))
        customer, team = V.string(q, "customer"), V.string(q, "team")

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            if customer is not None:
                hierarchy.get_customer(conn, customer, param="customer")
            if team is not None:
                hierarchy.get_team(conn, team, param="team")
            return govkeys.list_keys(conn, customer_id=customer, team_id=team)

        return _json({"data": await self.db(run)})

    async def create_key(self, request: web.Request) -> web.StreamResponse:
        f = await self.body(request, ("customer", "team", "name", "models", "budget_usd", "budget_nanos", "period",
                                      "rpm", "tpm", "expires", "clamp", "cache"))
        # types here; the values are mint's to check (the same rules as the CLI's)
        kw: dict[str, Any] = {
            "customer_id": V.string(f, "customer"), "team_id": V.string(f, "team"), "name": V.string(f, "name"),
            "models": V.strings(f, "models", what="model name"), "budget_nanos": _money(f, "budget"),
            "budget_period": V.string(f, "period"), "rpm": V.integer(f, "rpm"), "tpm": V.integer(f, "tpm"),
            "expires_at": V.string(f, "expires"), "clamp": bool(V.boolean(f, "clamp")),
            "cache_mode": V.string(f, "cache")}

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            with _param(budget="budget_usd"):
                secret, info = govkeys.mint(conn, **kw)
            return {**govkeys.get_key(conn, info.id), "secret": secret}

        out = await self.db(run, write=True)
        log.info("admin: created key %s", out["id"])
        return _json(out, 201)

    async def show_key(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        ref = request.match_info["ref"]
        return _json(await self.db(lambda conn: govkeys.get_key(conn, ref)))

    async def _lifecycle(self, request: web.Request, op: Callable[[sqlite3.Connection, str], T],
                         verb: str) -> T:
        """Run a key lifecycle operation on the key of the path (404 if unknown, 409 if revoked)."""
        ref = request.match_info["ref"]
        out = await self.db(lambda conn: op(conn, ref), write=True)
        log.info("admin: %s key %s", verb, ref)
        return out

    async def disable_key(self, request: web.Request) -> web.StreamResponse:
        await self.body(request, (), optional=True)
        return _json(await self._lifecycle(request, lambda c, k: govkeys.set_status(c, k, "disabled"), "disabled"))

    async def enable_key(self, request: web.Request) -> web.StreamResponse:
        await self.body(request, (), optional=True)
        return _json(await self._lifecycle(request, lambda c, k: govkeys.set_status(c, k, "active"), "enabled"))

    async def revoke_key(self, request: web.Request) -> web.StreamResponse:
        await self.body(request, (), optional=True)
        return _json(await self._lifecycle(request, govkeys.revoke, "revoked"))

    async def rotate_key(self, request: web.Request) -> web.StreamResponse:
        f = await self.body(request, ("grace_seconds",), optional=True)
        seconds = V.integer(f, "grace_seconds", lo=0, hi=10 * 365 * 86400, default=govkeys.DEFAULT_GRACE_SECONDS)
        secret, key = await self._lifecycle(request, lambda c, k: govkeys.rotate(c, k, seconds), "rotated")
        return _json({**key, "secret": secret})

    # -- budgets -----------------------------------------------------------------------------------

    async def list_budgets(self, request: web.Request) -> web.StreamResponse:
        q = _query(request, SCOPES)
        given = [(s, V.string(q, s)) for s in SCOPES if q.get(s) is not None]
        if len(given) > 1:
            V.add(given[1][0], "give at most one of customer, team or key")
        scope, value = given[0] if given else (None, None)
        now_ms = self.clock()
        return _json({"data": await self.db(lambda conn: budget_report(conn, select_budgets(conn, scope, value),
                                                                         now_ms))})

    async def put_budget(self, request: web.Request) -> web.StreamResponse:
        f = await self.body(request, ("scope", "id", "period", "limit_usd", "limit_nanos", "hard", "warn_pct",
                                      "grace_usd", "grace_nanos", "auto_raise_usd", "auto_raise_nanos", "ceiling_usd",
                                      "ceiling_nanos", "fail_open"))
        scope, sid = V.choice(f, "scope", SCOPES, required=True), V.string(f, "id", required=True)
        period, limit = V.choice(f, "period", PERIODS, required=True), _money(f, "limit", required=True)
        hard, warn_pct, grace = V.boolean(f, "hard"), V.integer(f, "warn_pct", lo=1, hi=100), _money(f, "grace")
        step, ceiling, fail_open = _money(f, "auto_raise"), _money(f, "ceiling"), V.boolean(f, "fail_open")
        assert scope is not None and sid is not None and period is not None and limit is not None
        now_ms = self.clock()

        def run(conn: sqlite3.Connection) -> tuple[dict[str, Any], bool]:
            with _param(customer="id", team="id", key="id", limit="limit_usd", grace="grace_usd", warn_at="warn_pct",
                        auto_raise="auto_raise_usd", ceiling="ceiling_usd"):
                row, created = upsert_budget(conn, scope, sid, period, limit, hard=hard, warn_pct=warn_pct,
                                             grace_nanos=grace, raise_step_nanos=step, ceiling_nanos=ceiling,
                                             fail_open=fail_open)
            return budget_report(conn, [row], now_ms)[0], created

        out, created = await self.db(run, write=True)
        log.info("admin: %s budget %s (%s %s, %s)", "created" if created else "updated", out["id"], scope,
                 out["scope_id"], period)
        return _json(out, 201 if created else 200)

    async def delete_budget(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        bid = request.match_info["budget_id"]
        row = await self.db(lambda conn: delete_budget(conn, bid), write=True)
        log.info("admin: deleted budget %s", bid)
        return _json({**_budget_def(row), "deleted": True})

    # -- reports -----------------------------------------------------------------------------------

    async def report(self, request: web.Request) -> web.StreamResponse:
        q = _query(request, ("by", "period", "since", "until", "customer"))
        by = V.choice(q, "by", tuple(reports.BY), default="customer")
        period, since, until = V.string(q, "period"), V.string(q, "since"), V.string(q, "until")
        customer = V.string(q, "customer")
        if period is not None and (since is not None or until is not None):
            V.add("period", "give either period or since/until, not both")
        if period is not None:
            with _param("period"):
                reports.parse_period(period)
        for name, value in (("since", since), ("until", until)):
            if value is not None:
                with _param(name):
                    parse_time(value, name)
        with _param("until"):
            window = reports.resolve_window(period, since, until)

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            with _param("customer"):
                return reports.to_json(reports.report(conn, by=by, window=window, customer=customer))

        return _json(await self.db(run))


# ---- registration ---------------------------------------------------------------------------------


def add_routes(app: web.Application, config: Config, home: Path, environ: Mapping[str, str],
               guarded: Callable[[Handler], Handler], *, clock: Clock,
               refresh: Callable[[], Awaitable[None]]) -> None:
    """Register ``/admin/...`` on ``app`` (before its catch-all route); ``guarded`` gives each handler the
    error envelope and the request id. ``ConfigError`` when the token variable ``[admin]`` names is unset."""
    token = config.token("admin", environ)
    if token is None:
        async def off(request: web.Request) -> web.StreamResponse:
            raise NotFound("the admin API is off: set LLMGW_ADMIN_TOKEN, or [admin] token_env in the config, "
                           "to turn it on")

        for path in ("/admin", "/admin/{tail:.*}"):
            app.router.add_route("*", path, guarded(off))
        return
    if len(token) < 16:
        log.warning("the admin token is short (%d characters): use a long random one", len(token))
    api = AdminApi(store_db.target(config.store.url, home), token, config.server.max_body_bytes, clock, refresh)
    api.body_timeout = config.server.body_timeout
    methods: dict[str, list[str]] = {}
    for method, path, handler in api.routes():
        app.router.add_route(method, path, guarded(api.protected(handler)))
        methods.setdefault(path, []).append(method)
    for path, allowed in methods.items():
        app.router.add_route("*", path, guarded(api.protected(_method_not_allowed(allowed))))

    async def unknown(request: web.Request) -> web.StreamResponse:
        raise NotFound(f"no admin route {request.method} {request.path}")

    for path in ("/admin", "/admin/{tail:.*}"):
        app.router.add_route("*", path, guarded(api.protected(unknown)))


def _method_not_allowed(allowed: list[str]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise MethodNotAllowed(f"method {request.method} not allowed on {request.path} "
                               f"(allowed: {', '.join(allowed)})", headers={"allow": ", ".join(allowed)})

    return handler
