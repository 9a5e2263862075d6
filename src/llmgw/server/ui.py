"""The finance page: ``GET /ui``, a read-only page of spend, budgets and savings per customer, and
the JSON and CSV endpoints behind it (``/ui/api/...``, computed by ``ui_data``).

Invariants:

* Off unless ``[ui] token_env`` is configured: then every ``/ui`` path answers 404 and ``/`` stays a
  404. On, ``/`` redirects to ``/ui``.
* Who may look: a browser session (a login form posts the viewer token, or the admin token; the
  answer sets an ``HttpOnly; SameSite=Strict; Path=/ui`` cookie holding a random session token,
  ``Secure`` over HTTPS) or ``Authorization: Bearer <viewer or admin token>``. Tokens are compared
  in constant time (SHA-256 of both, ``hmac.compare_digest``, both tokens always checked); the
  daemon keeps only SHA-256 digests of session tokens, which expire after ``[ui] session_hours``
  and are lost on restart. Failed logins are limited per client address (``LOGIN_FAILURES`` per
  ``LOGIN_WINDOW_S``, then 429). Without a session, a page redirects to the login form and an API
  call is a 401.
* Read-only: no GET changes anything; the only POSTs (login, logout) refuse a request whose
  ``Origin`` is not this host (or, with no ``Origin`` or ``Origin: null``, which is what a form
  sends under the page's ``no-referrer`` policy, whose ``Sec-Fetch-Site`` is not ``same-origin``): 403. There are no admin actions here.
* Every answer under ``/ui`` (and the redirect at ``/``) carries a strict Content-Security-Policy
  (scripts and styles from this origin only, no ``unsafe-inline``, no framing),
  ``Cache-Control: no-store``, ``nosniff`` and ``no-referrer``. The page is static files shipped
  in the package (``llmgw/data/ui``): no inline script, no build step.
* SQLite work runs in a worker thread on a short-lived read-only connection, never on the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import logging
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson
from aiohttp import web

from .. import reports, ui_data
from ..clock import Clock
from ..config import Config
from ..errors import InvalidRequest, LlmgwError, MethodNotAllowed, NotFound, PermissionDenied, Unauthorized
from ..store import db as store_db
from ..store.conn import Target
from .http import read_body

log = logging.getLogger("llmgw.ui")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")

COOKIE = "llmgw_ui"
LOGIN_FAILURES = 10
LOGIN_WINDOW_S = 60.0
MAX_SESSIONS = 10_000
MAX_LOGIN_BODY = 4096

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "cache-control": "no-store",
    "pragma": "no-cache",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
#: the files the page is made of (nothing else under llmgw/data/ui is served)
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
WINDOW_PARAMS = ("period", "since", "until", "last")
REPORT_CSV = {"models": "model", "keys": "key"}


def _asset(name: str) -> bytes:
    return resources.files("llmgw").joinpath("data", "ui", name).read_bytes()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def secured(handler: Handler) -> Handler:
    """The security headers on every answer of ``handler`` (error answers included)."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        resp = await handler(request)
        resp.headers.update(SECURITY_HEADERS)
        return resp

    return wrapper


def redirect(location: str, status: int = 303) -> web.Response:
    return web.Response(status=status, headers={"location": location})


def same_origin(request: web.Request) -> bool:
    """Whether a POST comes from a page of this host (its ``Origin``, else ``Sec-Fetch-Site``)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":  # the page's no-referrer policy makes a form's Origin "null"
        return request.headers.get("sec-fetch-site") == "same-origin"  # set by the browser, not by pages
    try:
        return urlsplit(origin).netloc.lower() == request.host.lower()
    except ValueError:
        return False


class Sessions:
    """Session tokens by their SHA-256 digest, each with its expiry (monotonic seconds)."""

    def __init__(self, hours: int, now: Callable[[], float] = time.monotonic) -> None:
        self.ttl = hours * 3600
        self.now = now
        self._by_digest: dict[bytes, float] = {}

    def create(self) -> str:
        now = self.now()
        for d in [d for d, exp in self._by_digest.items() if exp <= now]:
            del self._by_digest[d]
        while len(self._by_digest) >= MAX_SESSIONS:  # the oldest goes (dicts keep insertion order)
            del self._by_digest[next(iter(self._by_digest))]
        token = secrets.token_urlsafe(32)
        self._by_digest[_digest(token)] = now + self.ttl
        return token

    def valid(self, token: str | None) -> bool:
        if not token or len(token) > 100:
            return False
        d = _digest(token)
        exp = self._by_digest.get(d)
        if exp is None:
            return False
        if exp <= self.now():
            del self._by_digest[d]
            return False
        return True

    def end(self, token: str | None) -> None:
        if token:
            self._by_digest.pop(_digest(token), None)

    def expire_all(self) -> None:
        """Every session expires now (tests; a restart does the same)."""
        for d in self._by_digest:
            self._by_digest[d] = self.now()


class LoginLimiter:
    """At most ``LOGIN_FAILURES`` failed logins per client address per ``LOGIN_WINDOW_S`` seconds."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, who: str) -> deque[float]:
        q = self._failures.setdefault(who, deque())
        cutoff = self.now() - LOGIN_WINDOW_S
        while q and q[0] <= cutoff:
            q.popleft()
        return q

    def check(self, who: str) -> None:
        q = self._recent(who)
        if len(q) >= LOGIN_FAILURES:
            wait = max(1, int(q[0] + LOGIN_WINDOW_S - self.now()) + 1)
            raise LlmgwError(f"login: too many failed attempts from this address; try again in {wait} s",
                             code="too_many_login_attempts", status=429, headers={"retry-after": str(wait)})

    def failed(self, who: str) -> None:
        if len(self._failures) > 10_000:
            self._failures.clear()
        self._recent(who).append(self.now())


class FinancePage:
    def __init__(self, dbfile: Target, config: Config, tokens: list[str], clock: Clock,
                 now: Callable[[], float] = time.monotonic) -> None:
        assert config.ui is not None
        self.dbfile, self.clock = dbfile, clock
        self.digests = [_digest(t) for t in tokens]  # the viewer token, then the admin token if any
        self.sessions = Sessions(config.ui.session_hours, now)
        self.limiter = LoginLimiter(now)
        self.currency = (ui_data.Currency(config.ui.currency, config.ui.rate)
                         if config.ui.currency and config.ui.rate is not None else None)
        self._login_html = _asset("login.html").decode("utf-8")
        self._index_html = _asset("index.html")
        self._static = {name: _asset(name) for name in STATIC}

    # -- who is asking -------------------------------------------------------------------------------

    def token_ok(self, given: str) -> bool:
        d = _digest(given)
        ok = False
        for want in self.digests:  # every one is compared: the time does not say which matched
            ok |= hmac.compare_digest(d, want)
        return ok

    def authed(self, request: web.Request) -> bool:
        auth = request.headers.get("authorization")
        if auth:
            scheme, _, given = auth.partition(" ")
            return scheme.lower() == "bearer" and bool(given.strip()) and self.token_ok(given.strip())
        return self.sessions.valid(request.cookies.get(COOKIE))

    def api(self, handler: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            if not self.authed(request):
                raise Unauthorized("finance page: log in at /ui/login, or send Authorization: Bearer <token>",
                                   code="login_required", headers={"www-authenticate": 'Bearer realm="llmgw-ui"'})
            return await handler(request)

        return wrapper

    # -- pages -------------------------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.StreamResponse:
        return redirect("/ui", 302)

    async def index(self, request: web.Request) -> web.StreamResponse:
        if not self.authed(request):
            return redirect("/ui/login")
        return web.Response(body=self._index_html, content_type="text/html", charset="utf-8")

    def _login_page(self, message: str = "", status: int = 200) -> web.Response:
        note = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
        return web.Response(text=self._login_html.replace("<!--message-->", note), status=status,
                            content_type="text/html", charset="utf-8")

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if self.authed(request):
            return redirect("/ui")
        return self._login_page()

    async def login(self, request: web.Request) -> web.StreamResponse:
        if not same_origin(request):
            raise PermissionDenied("login: refused a request from another site (Origin does not match this host)",
                                   code="cross_site_request")
        who = request.remote or "?"
        self.limiter.check(who)
        body = await read_body(request, MAX_LOGIN_BODY)
        try:
            form = parse_qs(body.decode("utf-8"), max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            form = {}
        given = (form.get("token") or [""])[0].strip()
        if not given or not self.token_ok(given):
            self.limiter.failed(who)
            log.info("finance page: failed login from %s", who)
            return self._login_page("That token is not valid.", status=401)
        resp = redirect("/ui")
        resp.set_cookie(COOKIE, self.sessions.create(), max_age=self.sessions.ttl, path="/ui", httponly=True,
                        samesite="Strict", secure=request.secure)
        log.info("finance page: login from %s", who)
        return resp

    async def logout(self, request: web.Request) -> web.StreamResponse:
        if not same_origin(request):
            raise PermissionDenied("logout: refused a request from another site (Origin does not match this host)",
                                   code="cross_site_request")
        self.sessions.end(request.cookies.get(COOKIE))
        resp = redirect("/ui/login")
        resp.del_cookie(COOKIE, path="/ui")
        return resp

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC:
            raise NotFound(f"no file {request.path}")
        return web.Response(body=self._static[name], content_type=STATIC[name], charset="utf-8")

    # -- data --------------------------------------------------------------------------------------

    async def db(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            if isinstance(self.dbfile, Path) and not self.dbfile.exists():
                raise NotFound("nothing recorded yet: no database")
            conn = store_db.connect(self.dbfile, readonly=True)
            try:
                conn.execute("BEGIN")  # one read transaction: every table of an answer sees one snapshot
                return fn(conn)
            finally:  # closing ends the read transaction
                conn.close()

        return await asyncio.to_thread(run)

    def _params(self, request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
        q = request.rel_url.query
        for k in q:
            if k not in allowed:
                raise InvalidRequest(f"{k}: unknown query parameter (known: {', '.join(allowed)})", param=k,
                                     code="unknown_field")
            if len(q.getall(k)) > 1:
                raise InvalidRequest(f"{k}: query parameter given more than once", param=k)
        return {k: q[k] for k in q}

    def _window(self, q: dict[str, str]) -> reports.Window:
        try:
            return ui_data.resolve({k: q[k] for k in WINDOW_PARAMS if k in q}, self.clock())
        except LlmgwError as e:
            raise InvalidRequest(e.message, param=e.param, code="invalid_value") from None

    def _meta(self) -> dict[str, Any]:
        return {"currency": self.currency.as_json() if self.currency else None}

    def _converted(self, q: dict[str, str]) -> ui_data.Currency | None:
        flag = q.get("converted")
        if flag not in (None, "0", "1"):
            raise InvalidRequest(f"converted: expected 0 or 1, got {flag!r}", param="converted")
        if flag == "1" and self.currency is None:
            raise InvalidRequest("converted: no display currency is configured ([ui] currency and rate)",
                                 param="converted")
        return self.currency if flag == "1" else None

    @staticmethod
    def _json(obj: Any) -> web.Response:
        return web.Response(body=orjson.dumps(obj), content_type="application/json")

    @staticmethod
    def _csv(text: str, name: str) -> web.Response:
        return web.Response(text=text, content_type="text/csv", charset="utf-8",
                            headers={"content-disposition": f'attachment; filename="{name}.csv"'})

    def _filename(self, what: str, window: reports.Window, customer: str | None = None) -> str:
        label = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in window.label)[:60]
        who = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in customer)[:60] + "-" if customer else ""
        return f"llmgw-{who}{what}-{label}"

    async def customers(self, request: web.Request) -> web.StreamResponse:
        q = self._params(request, WINDOW_PARAMS)
        w, now = self._window(q), self.clock()
        out = await self.db(lambda c: {**self._meta(), "customers": ui_data.customers(c, w, now, self.currency)})
        return self._json(out)

    async def errors(self, request: web.Request) -> web.StreamResponse:
        """Errors by type (all customers, or ``customer``'s): its own route, so the page asks for it
        and for the customers at the same time (two worker threads, each with its own connection)."""
        q = self._params(request, (*WINDOW_PARAMS, "customer"))
        w = self._window(q)
        return self._json(await self.db(lambda c: ui_data.errors(c, w, q.get("customer"))))

    async def customers_csv(self, request: web.Request) -> web.StreamResponse:
        q = self._params(request, (*WINDOW_PARAMS, "converted"))
        w, cur = self._window(q), self._converted(q)
        text = await self.db(lambda c: reports.to_csv(reports.report(c, by="customer", window=w)))
        return self._csv(ui_data.with_converted(text, cur), self._filename("customers", w))

    async def errors_csv(self, request: web.Request) -> web.StreamResponse:
        q = self._params(request, (*WINDOW_PARAMS, "customer"))
        w = self._window(q)
        text = await self.db(lambda c: ui_data.errors_csv(ui_data.errors(c, w, q.get("customer"))))
        return self._csv(text, self._filename("errors", w))

    async def budgets_csv(self, request: web.Request) -> web.StreamResponse:
        self._params(request, ())
        now = self.clock()
        return self._csv(await self.db(lambda c: ui_data.budgets_csv(ui_data.budgets(c, now))), "llmgw-budgets")

    async def customer(self, request: web.Request) -> web.StreamResponse:
        q = self._params(request, WINDOW_PARAMS)
        cid, w, now = request.match_info["id"], self._window(q), self.clock()
        return self._json(await self.db(lambda c: {**self._meta(),
                                                   **ui_data.customer(c, cid, w, now, self.currency)}))

    async def customer_csv(self, request: web.Request) -> web.StreamResponse:
        table, cid = request.match_info["table"], request.match_info["id"]
        if table not in ("daily", "models", "keys", "budgets", "cache", "errors"):
            raise NotFound(f"no table {table!r} (daily, models, keys, budgets, cache, errors)")
        q = self._params(request, () if table == "budgets" else
                         (*WINDOW_PARAMS, *(("converted",) if table != "errors" else ())))
        w, now, cur = self._window(q), self.clock(), self._converted(q)

        def run(c: sqlite3.Connection) -> str:
            if table in REPORT_CSV:
                text = reports.to_csv(reports.report(c, by=REPORT_CSV[table], window=w, customer=cid))
                return ui_data.with_converted(text, cur)
            if table == "daily":
                return ui_data.with_converted(ui_data.daily_csv(ui_data.daily(c, w, cid, None)), cur)
            if table == "errors":
                return ui_data.errors_csv(ui_data.errors(c, w, cid))
            if table == "cache":
                reports.check_customer(c, cid)
                return ui_data.with_converted(ui_data.cache_csv(ui_data.cache(c, w, cid, None)), cur)
            reports.check_customer(c, cid)
            return ui_data.budgets_csv(ui_data.budgets(c, now, cid))

        return self._csv(await self.db(run), self._filename(table, w, cid))

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("GET", "/", self.root),
            ("GET", "/ui", self.index),
            ("GET", "/ui/", self.index),
            ("GET", "/ui/login", self.login_form),
            ("POST", "/ui/login", self.login),
            ("POST", "/ui/logout", self.logout),
            ("GET", "/ui/static/{name}", self.static),
            ("GET", "/ui/api/customers", self.api(self.customers)),
            ("GET", "/ui/api/customers.csv", self.api(self.customers_csv)),
            ("GET", "/ui/api/errors", self.api(self.errors)),
            ("GET", "/ui/api/errors.csv", self.api(self.errors_csv)),
            ("GET", "/ui/api/budgets.csv", self.api(self.budgets_csv)),
            ("GET", "/ui/api/customer/{id}", self.api(self.customer)),
            ("GET", "/ui/api/customer/{id}/{table}.csv", self.api(self.customer_csv)),
        ]


def add_routes(app: web.Application, config: Config, home: Path, environ: dict[str, str],
               guarded: Callable[[Handler], Handler], *, clock: Clock) -> FinancePage | None:
    """Register ``/`` and ``/ui...`` on ``app`` (before its catch-all); without ``[ui]`` every
    ``/ui`` path is a 404 and ``/`` is left to the catch-all. Returns the page (None when off)."""
    token = config.token("ui", environ)
    if token is None:
        async def off(request: web.Request) -> web.StreamResponse:
            raise NotFound("the finance page is off: set [ui] token_env in the config to turn it on")

        for path in ("/ui", "/ui/{tail:.*}"):
            app.router.add_route("*", path, secured(guarded(off)))
        return None
    if len(token) < 16:
        log.warning("the finance page's token is short (%d characters): use a long random one", len(token))
    admin = config.token("admin", environ)
    page = FinancePage(store_db.target(config.store.url, home), config, [token, *([admin] if admin else [])], clock)
    methods: dict[str, list[str]] = {}
    for method, path, handler in page.routes():
        app.router.add_route(method, path, secured(guarded(handler)))
        methods.setdefault(path, []).append(method)
    for path, allowed in methods.items():
        app.router.add_route("*", path, secured(guarded(_method_not_allowed(allowed))))

    async def unknown(request: web.Request) -> web.StreamResponse:
        if page.authed(request):
            raise NotFound(f"no route {request.method} {request.path}")
        raise Unauthorized("finance page: log in at /ui/login", code="login_required")

    app.router.add_route("*", "/ui/{tail:.*}", secured(guarded(unknown)))
    return page


def _method_not_allowed(allowed: list[str]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise MethodNotAllowed(f"method {request.method} not allowed on {request.path} "
                               f"(allowed: {', '.join(allowed)})", headers={"allow": ", ".join(allowed)})

    return handler
