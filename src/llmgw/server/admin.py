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
  ``param``; unknown ids are 404; an id or key name that already exists is 409.
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
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web

from .. import paths, reports
from ..clock import Clock
from ..config import Config
from ..errors import (
    ConfigError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    Unauthorized,
    UsageError,
)
from ..governance import hierarchy
from ..governance import keys as govkeys
from ..governance.budgets import PERIODS, SCOPES, budget_report, delete_budget, select_budgets, upsert_budget
from ..store import db as store_db
from ..units import parse_time, parse_usd, usd
from .http import read_body

log = logging.getLogger("llmgw.admin")

TOKEN_ENV = "LLMGW_ADMIN_TOKEN"
CONFIG_KEYS = ("token_env",)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


# ---- configuration --------------------------------------------------------------------------------


def admin_token(raw: Mapping[str, Any], environ: Mapping[str, str], source: str = "llmgw.toml") -> str | None:
    """The admin token, or ``None`` (admin API off). ``[admin] token_env`` names the variable holding
    it (which must then be set); without it, ``LLMGW_ADMIN_TOKEN``. ``ConfigError`` naming
    ``admin.<key>`` for an unknown key or a wrong type."""
    section = raw.get("admin")
    name: str | None = None
    if section is not None:
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: admin: expected a table")
        for k in section:
            if k not in CONFIG_KEYS:
                raise ConfigError(f"{source}: admin.{k}: unknown key (known: {', '.join(CONFIG_KEYS)})")
        value = section.get("token_env")
        if value is not None:
            if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
                raise ConfigError(f"{source}: admin.token_env: expected the name of an environment variable, "
                                  f"got {value!r}")
            name = value
    if name is not None:
        token = environ.get(name, "").strip()
        if not token:
            raise ConfigError(f"{source}: admin.token_env: environment variable {name!r} is not set")
        return token
    return environ.get(TOKEN_ENV, "").strip() or None


# ---- request parsing ------------------------------------------------------------------------------


def _bad(message: str, param: str | None, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


@contextmanager
def _param(name: str | None) -> Iterator[None]:
    """Report a governance ``UsageError`` as a 400 ``invalid_request_error`` about field ``name``."""
    try:
        yield
    except UsageError as e:
        raise _bad(e.message, name) from None


class Fields:
    """A JSON object from a request body or query, read field by field with typed 400s."""

    def __init__(self, data: Mapping[str, Any], allowed: tuple[str, ...], *, where: str = "field") -> None:
        for k in data:
            if k not in allowed:
                known = ", ".join(allowed) or "none"
                raise _bad(f"unknown {where} {k!r} (known: {known})", k, "unknown_field")
        self.data = data

    def _get(self, name: str, required: bool) -> Any:
        value = self.data.get(name)
        if value is None and required:
            raise _bad(f"{name} is required", name, "missing_field")
        return value

    def string(self, name: str, *, required: bool = False) -> str | None:
        value = self._get(name, required)
        if value is not None and not isinstance(value, str):
            raise _bad(f"{name}: expected a string, got {_kind(value)}", name, "invalid_type")
        if required and value is not None and not value.strip():
            raise _bad(f"{name}: expected a non-empty string", name)
        return value

    def choice(self, name: str, options: tuple[str, ...], *, required: bool = False) -> str | None:
        value = self.string(name, required=required)
        if value is not None and value not in options:
            raise _bad(f"{name}: expected one of {', '.join(options)}, got {value!r}", name)
        return value

    def integer(self, name: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
        value = self._get(name, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(f"{name}: expected an integer, got {_kind(value)}", name, "invalid_type")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"from {lo} to {hi}" if lo is not None and hi is not None else f">= {lo}" if lo is not None \
                else f"<= {hi}"
            raise _bad(f"{name}: expected an integer {span}, got {value}", name)
        return value

    def boolean(self, name: str) -> bool | None:
        value = self._get(name, False)
        if value is not None and not isinstance(value, bool):
            raise _bad(f"{name}: expected true or false, got {_kind(value)}", name, "invalid_type")
        return value

    def strings(self, name: str) -> list[str] | None:
        value = self._get(name, False)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _bad(f"{name}: expected a list of strings, got {_kind(value)}", name, "invalid_type")
        return value

    def money(self, base: str, *, required: bool = False) -> int | None:
        """Nano-dollars from ``<base>_usd`` (decimal string or integer) or ``<base>_nanos`` (integer)."""
        usd_name, nanos_name = f"{base}_usd", f"{base}_nanos"
        usd, nanos = self.data.get(usd_name), self.data.get(nanos_name)
        if usd is not None and nanos is not None:
            raise _bad(f"give {usd_name} or {nanos_name}, not both", nanos_name)
        if nanos is not None:
            return self.integer(nanos_name, lo=0, hi=2**63 - 1)
        if usd is None:
            if required:
                raise _bad(f"{usd_name} is required (a decimal string of USD such as \"150\" or \"12.50\")",
                           usd_name, "missing_field")
            return None
        if isinstance(usd, float):
            raise _bad(f"{usd_name}: give USD as a decimal string such as \"12.50\", not a JSON number with a "
                       "fraction (it would pass through a float)", usd_name, "invalid_type")
        if isinstance(usd, bool) or not isinstance(usd, (str, int)):
            raise _bad(f"{usd_name}: expected a decimal string of USD, got {_kind(usd)}", usd_name,
                       "invalid_type")
        with _param(usd_name):
            return parse_usd(usd, usd_name)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _query(request: web.Request, allowed: tuple[str, ...]) -> Fields:
    q = request.rel_url.query
    for k in q:
        if len(q.getall(k)) > 1:
            raise _bad(f"query parameter {k!r} given more than once", k)
    return Fields({k: q[k] for k in q}, allowed, where="query parameter")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _budget_def(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["hard"] = bool(d["hard"])
    d["limit_usd"] = usd(d["limit_nanos"], dollar=False)
    d["grace_usd"] = usd(d["grace_nanos"], dollar=False)
    return d


# ---- the API --------------------------------------------------------------------------------------


class AdminApi:
    def __init__(self, dbfile: Path, token: str, max_body: int, clock: Clock,
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
        becomes a 400 ``invalid_request_error``."""

        async def wrapper(request: web.Request) -> web.StreamResponse:
            self.authorize(request)
            with _param(None):
                resp = await handler(request)
            if request.method != "GET" and resp.status < 400:
                await self.refresh()  # the change applies here before the client hears of it
            return resp

        return wrapper

    async def db(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on a short-lived connection in a worker thread (the loop never waits on SQLite)."""

        def run() -> T:
            conn = store_db.open_db(self.dbfile)
            try:
                return fn(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(run)

    async def body(self, request: web.Request, allowed: tuple[str, ...], *, optional: bool = False) -> Fields:
        raw = await read_body(request, self.max_body)
        if not raw.strip():
            if optional:
                return Fields({}, allowed)
            raise _bad("request body is empty; expected a JSON object", None, "invalid_json")
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise _bad(f"request body is not valid JSON: {e}", None, "invalid_json") from e
        if not isinstance(data, dict):
            raise _bad(f"request body must be a JSON object, got {_kind(data)}", None, "invalid_json")
        return Fields(data, allowed)

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
        cid = f.string("id", required=True)
        name = f.string("name")
        assert cid is not None
        with _param("id"):
            hierarchy.validate_slug("customer", cid)

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            if conn.execute("SELECT 1 FROM customers WHERE id = ?", (cid,)).fetchone():
                raise InvalidRequest(f"customer {cid!r} already exists", param="id", code="already_exists",
                                     status=409)
            with _param("id"):
                hierarchy.create_customer(conn, cid, name=name)
            return hierarchy.show_customer(conn, cid)

        out = await self.db(run)
        log.info("admin: created customer %s", cid)
        return _json(out, 201)

    async def show_customer(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        cid = request.match_info["id"]
        return _json(await self.db(lambda conn: hierarchy.show_customer(conn, cid)))

    async def list_teams(self, request: web.Request) -> web.StreamResponse:
        customer = _query(request, ("customer",)).string("customer")

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            if customer is not None:
                _exists(conn, "customer", customer, "customer")
            return hierarchy.list_teams(conn, customer_id=customer)

        return _json({"data": await self.db(run)})

    async def create_team(self, request: web.Request) -> web.StreamResponse:
        f = await self.body(request, ("id", "customer", "name"))
        tid = f.string("id", required=True)
        customer = f.string("customer", required=True)
        name = f.string("name")
        assert tid is not None and customer is not None
        with _param("id"):
            hierarchy.validate_slug("team", tid)

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            _exists(conn, "customer", customer, "customer")
            row = conn.execute("SELECT customer_id FROM teams WHERE id = ?", (tid,)).fetchone()
            if row is not None:
                raise InvalidRequest(f"team {tid!r} already exists (customer {row['customer_id']!r}); team ids "
                                     "are unique across customers", param="id", code="already_exists", status=409)
            with _param("id"):
                return hierarchy.create_team(conn, tid, customer_id=customer, name=name)

        out = await self.db(run)
        log.info("admin: created team %s (customer %s)", tid, customer)
        return _json(out, 201)

    # -- keys --------------------------------------------------------------------------------------

    async def list_keys(self, request: web.Request) -> web.StreamResponse:
        q = _query(request, ("customer", "team"))
        customer, team = q.string("customer"), q.string("team")

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            if customer is not None:
                _exists(conn, "customer", customer, "customer")
            if team is not None:
                _exists(conn, "team", team, "team")
            return govkeys.list_keys(conn, customer_id=customer, team_id=team)

        return _json({"data": await self.db(run)})

    async def create_key(self, request: web.Request) -> web.StreamResponse:
        f = await self.body(request, ("customer", "team", "name", "models", "budget_usd", "budget_nanos", "period",
                                      "rpm", "tpm", "expires", "clamp", "cache"))
        customer, team, name = f.string("customer"), f.string("team"), f.string("name")
        if name is not None and not name.strip():
            raise _bad("name: a key name cannot be empty", "name")
        with _param("models"):
            models = govkeys.validate_models(f.strings("models"))
        budget = f.money("budget")
        period = f.choice("period", PERIODS)
        if period is not None and budget is None:
            raise _bad("period applies to a budget: give budget_usd too", "period")
        rpm, tpm = f.integer("rpm", lo=1), f.integer("tpm", lo=1)
        expires = f.string("expires")
        with _param("expires"):
            govkeys.parse_expires(expires)
        clamp = f.boolean("clamp")
        cache = f.choice("cache", govkeys.CACHE_MODES)

        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            if name is not None and conn.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone():
                raise InvalidRequest(f"a key named {name!r} already exists", param="name", code="already_exists",
                                     status=409)
            if team is not None:
                owner = _exists(conn, "team", team, "team")
                if customer is not None and owner["customer_id"] != customer:
                    raise _bad(f"team {team!r} belongs to customer {owner['customer_id']!r}, not {customer!r}",
                               "team")
            elif customer is not None:
                _exists(conn, "customer", customer, "customer")
            secret, info = govkeys.mint(conn, name=name, customer_id=customer, team_id=team, models=models,
                                        expires_at=expires, rpm=rpm, tpm=tpm, clamp=bool(clamp), cache_mode=cache,
                                        budget_nanos=budget, budget_period=period)
            return {**govkeys.get_key(conn, info.id), "secret": secret}

        out = await self.db(run)
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

        def run(conn: sqlite3.Connection) -> T:
            kid = govkeys.get_key(conn, ref)["id"]  # NotFound first
            try:
                return op(conn, kid)
            except UsageError as e:  # the key was revoked: final
                raise InvalidRequest(e.message, code="key_revoked", status=409) from None

        out = await self.db(run)
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
        grace = f.integer("grace_seconds", lo=0, hi=10 * 365 * 86400)
        seconds = govkeys.DEFAULT_GRACE_SECONDS if grace is None else grace
        secret, key = await self._lifecycle(request, lambda c, k: govkeys.rotate(c, k, seconds), "rotated")
        return _json({**key, "secret": secret})

    # -- budgets -----------------------------------------------------------------------------------

    async def list_budgets(self, request: web.Request) -> web.StreamResponse:
        q = _query(request, SCOPES)
        given = [(s, q.string(s)) for s in SCOPES if q.data.get(s) is not None]
        if len(given) > 1:
            raise _bad("give at most one of customer, team or key", given[1][0])
        scope, value = given[0] if given else (None, None)
        now_ms = self.clock()

        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            try:
                rows = select_budgets(conn, scope, value)
            except NotFound as e:
                raise NotFound(e.message, param=scope) from None
            return budget_report(conn, rows, now_ms)

        return _json({"data": await self.db(run)})

    async def put_budget(self, request: web.Request) -> web.StreamResponse:
        f = await self.body(request, ("scope", "id", "period", "limit_usd", "limit_nanos", "hard", "warn_pct",
                                      "grace_usd", "grace_nanos"))
        scope = f.choice("scope", SCOPES, required=True)
        sid = f.string("id", required=True)
        period = f.choice("period", PERIODS, required=True)
        limit = f.money("limit", required=True)
        hard = f.boolean("hard")
        warn_pct = f.integer("warn_pct", lo=1, hi=100)
        grace = f.money("grace")
        if hard is False and grace:
            raise _bad("a grace applies to hard budgets only (drop hard: false or the grace)", "grace_usd")
        assert scope is not None and sid is not None and period is not None and limit is not None
        now_ms = self.clock()

        def run(conn: sqlite3.Connection) -> tuple[dict[str, Any], bool]:
            try:
                row, created = upsert_budget(conn, scope, sid, period, limit, hard=hard, warn_pct=warn_pct,
                                             grace_nanos=grace)
            except NotFound as e:
                raise NotFound(e.message, param="id") from None
            return budget_report(conn, [row], now_ms)[0], created

        out, created = await self.db(run)
        log.info("admin: %s budget %s (%s %s, %s)", "created" if created else "updated", out["id"], scope,
                 out["scope_id"], period)
        return _json(out, 201 if created else 200)

    async def delete_budget(self, request: web.Request) -> web.StreamResponse:
        _query(request, ())
        bid = request.match_info["budget_id"]
        row = await self.db(lambda conn: delete_budget(conn, bid))
        log.info("admin: deleted budget %s", bid)
        return _json({**_budget_def(row), "deleted": True})

    # -- reports -----------------------------------------------------------------------------------

    async def report(self, request: web.Request) -> web.StreamResponse:
        q = _query(request, ("by", "period", "since", "until", "customer"))
        by = q.choice("by", tuple(reports.BY)) or "customer"
        period, since, until = q.string("period"), q.string("since"), q.string("until")
        customer = q.string("customer")
        if period is not None and (since is not None or until is not None):
            raise _bad("give either period or since/until, not both", "period")
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
            try:
                rep = reports.report(conn, by=by, window=window, customer=customer)
            except NotFound as e:
                raise NotFound(e.message, param="customer") from None
            return reports.to_json(rep)

        return _json(await self.db(run))


def _exists(conn: sqlite3.Connection, kind: str, ident: str, param: str) -> dict[str, Any]:
    """The customer or team ``ident``, or 404 ``not_found`` naming the field ``param``."""
    try:
        return hierarchy.get_customer(conn, ident) if kind == "customer" else hierarchy.get_team(conn, ident)
    except NotFound as e:
        raise NotFound(e.message, param=param) from None


# ---- registration ---------------------------------------------------------------------------------


def add_routes(app: web.Application, config: Config, home: Path, environ: Mapping[str, str],
               guarded: Callable[[Handler], Handler], *, clock: Clock,
               refresh: Callable[[], Awaitable[None]]) -> None:
    """Register ``/admin/...`` on ``app`` (before its catch-all route); ``guarded`` gives each handler the
    error envelope and the request id. ``ConfigError`` for a bad ``[admin]`` section."""
    token = admin_token(config.raw, environ, str(config.path or "llmgw.toml"))
    if token is None:
        async def off(request: web.Request) -> web.StreamResponse:
            raise NotFound("the admin API is off: set LLMGW_ADMIN_TOKEN, or [admin] token_env in the config, "
                           "to turn it on")

        for path in ("/admin", "/admin/{tail:.*}"):
            app.router.add_route("*", path, guarded(off))
        return
    if len(token) < 16:
        log.warning("the admin token is short (%d characters): use a long random one", len(token))
    api = AdminApi(paths.db_path(home), token, config.server.max_body_bytes, clock, refresh)
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
