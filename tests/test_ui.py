"""The finance page over plain HTTP against the real daemon: off unless configured, login and
sessions (cookie flags, expiry, rate limit, cross-site refusal), the security headers on every
answer, and the JSON/CSV endpoints equal to ``llmgw report`` and the raw ledger to the nano-dollar."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from decimal import Decimal
from typing import Any

import httpx
import pytest

from conftest import Daemon
from llmgw import paths, reports, ui_data
from llmgw.server.app import STATE
from llmgw.server.ui import CSP, LOGIN_FAILURES
from llmgw.store.db import connect
from ui_home import ADMIN_TOKEN, DEC_1, NOW_MS, UI_CONFIG, UI_ENV, UI_TOKEN, build

JAN_1 = DEC_1 + 31 * 86_400_000


@pytest.fixture
def ui(daemon_factory: Any, tmp_path: Any) -> Daemon:
    home = tmp_path / "uihome"
    d = daemon_factory(UI_CONFIG, UI_ENV, home=home)
    d.extra["rows"] = build(home)
    d.set_clock(NOW_MS)
    return d


def client(d: Daemon) -> httpx.Client:
    return httpx.Client(base_url=d.url, follow_redirects=False, trust_env=False)


def login(c: httpx.Client, d: Daemon, token: str = UI_TOKEN) -> httpx.Response:
    return c.post("/ui/login", data={"token": token}, headers={"origin": d.url})


def raw_sums(d: Daemon, since: int, until: int, where: str = "1") -> dict[str, int]:
    conn = connect(paths.db_path(d.home))
    try:
        r = conn.execute(f"SELECT COUNT(*), COALESCE(SUM(cost_nanos), 0), COALESCE(SUM(saved_nanos), 0),"
                         f" COALESCE(SUM(status >= 400 OR error_type IS NOT NULL), 0)"
                         f" FROM ledger WHERE ts_ms >= ? AND ts_ms < ? AND {where}", (since, until)).fetchone()
    finally:
        conn.close()
    return {"requests": r[0], "cost_nanos": r[1], "saved_nanos": r[2], "errors": r[3]}


def assert_secure(resp: httpx.Response) -> None:
    assert resp.headers["content-security-policy"] == CSP
    assert "unsafe-inline" not in CSP and "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
    assert resp.headers["cache-control"] == "no-store"
    assert resp.headers["x-content-type-options"] == "nosniff"


# ---- off unless configured -----------------------------------------------------------------------


def test_off_without_ui_section(daemon_factory: Any) -> None:
    d = daemon_factory("", {"LLMGW_ADMIN_TOKEN": ADMIN_TOKEN})
    with client(d) as c:
        for path in ("/ui", "/ui/login", "/ui/api/customers", "/ui/static/app.js"):
            r = c.get(path, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
            assert r.status_code == 404, path
            assert "finance page is off" in r.json()["error"]["message"]
        assert c.get("/").status_code == 404  # no redirect to a page that is off


# ---- who may look --------------------------------------------------------------------------------


def test_without_a_session_pages_redirect_and_the_api_is_401(ui: Daemon) -> None:
    with client(ui) as c:
        r = c.get("/")
        assert r.status_code == 302 and r.headers["location"] == "/ui"
        assert_secure(r)
        r = c.get("/ui")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        assert_secure(r)
        r = c.get("/ui/login")
        assert r.status_code == 200 and 'action="/ui/login"' in r.text and "set-cookie" not in r.headers
        assert "<script" not in r.text  # no script at all on the login page, and none inline anywhere
        assert_secure(r)
        for path in ("/ui/api/customers", "/ui/api/customers.csv", "/ui/api/customer/acme", "/ui/api/nope"):
            r = c.get(path)
            assert r.status_code == 401, path
            assert r.json()["error"]["type"] == "authentication_error"
            assert_secure(r)
        for token in ("wrong", UI_TOKEN + "x", UI_TOKEN[:-1]):
            r = c.get("/ui/api/customers", headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 401
        r = c.get("/ui/api/customers", headers={"cookie": "llmgw_ui=made-up-session"})
        assert r.status_code == 401
        # the static files hold no data: served without a session, with the same headers
        r = c.get("/ui/static/app.js")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        assert_secure(r)
        assert c.get("/ui/static/../config.py").status_code in (401, 404)
        assert c.get("/ui/static/index.html").status_code == 404


def test_bearer_viewer_and_admin_tokens(ui: Daemon) -> None:
    with client(ui) as c:
        for token in (UI_TOKEN, ADMIN_TOKEN):
            r = c.get("/ui/api/customers", headers={"authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            assert_secure(r)


def test_login_sets_a_strict_httponly_session_cookie(ui: Daemon) -> None:
    with client(ui) as c:
        r = login(c, ui, "not the token")
        assert r.status_code == 401 and "not valid" in r.text and "set-cookie" not in r.headers
        assert_secure(r)
        r = login(c, ui)
        assert r.status_code == 303 and r.headers["location"] == "/ui"
        assert_secure(r)
        cookie = r.headers["set-cookie"]
        attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")}
        name, _, value = cookie.split(";")[0].partition("=")
        assert name == "llmgw_ui" and len(value) >= 40 and UI_TOKEN not in cookie
        assert "httponly" in attrs and attrs["samesite"].lower() == "samesite=strict"
        assert attrs["path"] == "Path=/ui" and attrs["max-age"] == f"Max-Age={12 * 3600}"
        assert "secure" not in attrs  # plain HTTP here; over HTTPS the cookie is Secure
        assert c.get("/ui").status_code == 200
        r = c.get("/ui/api/customers")
        assert r.status_code == 200
        assert c.get("/ui/login").status_code == 303  # already logged in
        # a second login is a second, different session
        with client(ui) as c2:
            assert login(c2, ui, ADMIN_TOKEN).status_code == 303  # the admin token also logs in
            assert c2.cookies["llmgw_ui"] != c.cookies["llmgw_ui"]
        # logging out ends the session on the server, not only in this browser
        kept = c.cookies["llmgw_ui"]
        r = c.post("/ui/logout", headers={"origin": ui.url})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        with client(ui) as c3:
            assert c3.get("/ui/api/customers", headers={"cookie": f"llmgw_ui={kept}"}).status_code == 401


def test_sessions_expire(ui: Daemon) -> None:
    with client(ui) as c:
        login(c, ui)
        assert c.get("/ui/api/customers").status_code == 200
        ui.extra["app"][STATE]["ui"].sessions.expire_all()
        assert c.get("/ui/api/customers").status_code == 401
        assert c.get("/ui").status_code == 303


def test_cross_site_posts_are_refused(ui: Daemon) -> None:
    with client(ui) as c:
        for headers in ({"origin": "https://evil.example"}, {}, {"origin": "null"},
                        {"origin": "null", "sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"},
                        {"origin": "https://evil.example", "sec-fetch-site": "same-origin"}):
            r = c.post("/ui/login", data={"token": UI_TOKEN}, headers=headers)
            assert r.status_code == 403, headers
            assert r.json()["error"]["code"] == "cross_site_request" and "set-cookie" not in r.headers
            assert_secure(r)
        r = c.post("/ui/login", data={"token": UI_TOKEN}, headers={"sec-fetch-site": "same-origin"})
        assert r.status_code == 303
        assert c.post("/ui/logout", headers={"origin": "https://evil.example"}).status_code == 403
        assert c.get("/ui/api/customers").status_code == 200  # still logged in
        # reads only: no other method anywhere under /ui
        for method, path in (("POST", "/ui/api/customers"), ("DELETE", "/ui/api/customer/acme"),
                             ("PUT", "/ui"), ("GET", "/ui/logout")):
            assert c.request(method, path).status_code == 405, (method, path)


def test_failed_logins_are_limited(ui: Daemon) -> None:
    with client(ui) as c:
        for _ in range(LOGIN_FAILURES):
            assert login(c, ui, "guess").status_code == 401
        r = login(c, ui, "guess")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert login(c, ui).status_code == 429  # even the right token waits: guessing gains nothing


# ---- the numbers ---------------------------------------------------------------------------------


def get(c: httpx.Client, path: str, **params: str) -> Any:
    r = c.get(path, params=params, headers={"authorization": f"Bearer {UI_TOKEN}"})
    assert r.status_code == 200, r.text
    assert_secure(r)
    return r.json() if r.headers["content-type"].startswith("application/json") else r.text


def test_customers_equal_the_ledger_and_the_report(ui: Daemon) -> None:
    with client(ui) as c:
        data = get(c, "/ui/api/customers")  # default: this month at the business clock
        rep = data["customers"]
        assert rep["window"]["since_ms"] == DEC_1 and rep["window"]["until_ms"] == JAN_1
        want = raw_sums(ui, DEC_1, JAN_1)
        assert rep["total"]["cost_nanos"] == want["cost_nanos"] > 0
        assert rep["total"]["requests"] == want["requests"] and rep["total"]["saved_nanos"] == want["saved_nanos"]
        for g in rep["groups"]:
            one = raw_sums(ui, DEC_1, JAN_1, f"customer_id = '{g['id']}'")
            assert (g["cost_nanos"], g["requests"], g["errors"]) == (one["cost_nanos"], one["requests"], one["errors"])
            assert g["cost"]["usd"] == ui_data.usd(g["cost_nanos"], dollar=False)
            assert g["cost"]["converted"] == ui_data.Currency("EUR", Decimal("0.92")).display(g["cost_nanos"])
        by_id = {g["id"]: g for g in rep["groups"]}
        assert by_id["acme"]["budget"]["limit_nanos"] == 5_000_000_000 and by_id["initech"]["budget"] is None
        assert by_id["globex"]["budget"]["level"] == ("cap" if by_id["globex"]["cost_nanos"] >= 10**9 else
                                                      by_id["globex"]["budget"]["level"])
        assert data["currency"] == {"code": "EUR", "rate": "0.92",
                                    "label": "converted from USD at 0.92 EUR per USD"}
        # errors by type: every failed request of the month, counted once
        errors = get(c, "/ui/api/errors")
        assert errors["total_errors"] == want["errors"] > 0
        assert {e["error_type"] for e in errors["errors"]} == {"rate_limit_exceeded", "upstream_error"}
        assert get(c, "/ui/api/errors", customer="acme")["total_errors"] == raw_sums(
            ui, DEC_1, JAN_1, "customer_id = 'acme'")["errors"]
        rows = list(csv.DictReader(io.StringIO(get(c, "/ui/api/errors.csv"))))
        assert rows[-1]["error_type"] == "TOTAL" and int(rows[-1]["errors"]) == want["errors"]
        assert sum(int(r["errors"]) for r in rows[:-1]) == want["errors"]

        # the CSV is `llmgw report --format csv`, byte for byte
        text = get(c, "/ui/api/customers.csv")
        cli = subprocess.run([sys.executable, "-m", "llmgw", "report", "--by", "customer", "--period", "2026-12",
                              "--format", "csv", "--home", str(ui.home)], capture_output=True, text=True,
                             env={**os.environ, "COLUMNS": "200"}, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert text == cli.stdout


def test_windows(ui: Daemon) -> None:
    with client(ui) as c:
        nov = get(c, "/ui/api/customers", period="2026-11")["customers"]
        assert nov["total"]["cost_nanos"] == raw_sums(ui, DEC_1 - 30 * 86_400_000, DEC_1)["cost_nanos"] > 0
        last = get(c, "/ui/api/customers", last="30")["customers"]
        assert last["window"]["since"] == "2026-11-21T00:00:00.000Z"
        assert last["window"]["until"] == "2026-12-21T00:00:00.000Z"
        assert last["total"]["cost_nanos"] == raw_sums(ui, last["window"]["since_ms"],
                                                       last["window"]["until_ms"])["cost_nanos"]
        custom = get(c, "/ui/api/customers", since="2026-11-28", until="2026-12-03T06:00:00Z")["customers"]
        s, u = custom["window"]["since_ms"], custom["window"]["until_ms"]
        assert custom["total"]["cost_nanos"] == raw_sums(ui, s, u)["cost_nanos"]
        for bad in ({"last": "0"}, {"last": "x"}, {"period": "2026-13"}, {"since": "yesterday"},
                    {"since": "2026-12-05", "until": "2026-12-01"}, {"last": "30", "period": "2026-12"},
                    {"color": "blue"}):
            r = c.get("/ui/api/customers", params=bad, headers={"authorization": f"Bearer {UI_TOKEN}"})
            assert r.status_code == 400, (bad, r.text)
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and "--" not in err["message"], err


def test_one_customer(ui: Daemon) -> None:
    with client(ui) as c:
        d = get(c, "/ui/api/customer/acme")
        want = raw_sums(ui, DEC_1, JAN_1, "customer_id = 'acme'")
        assert d["name"] == "Acme Corp"
        days = d["daily"]["days"]
        assert [x["day"] for x in days] == [f"2026-12-{n:02d}" for n in range(1, 32)]  # every day of the month
        assert sum(x["cost_nanos"] for x in days) == d["daily"]["total"]["cost_nanos"] == want["cost_nanos"]
        for x in days[:21]:
            start = DEC_1 + (int(x["day"][-2:]) - 1) * 86_400_000
            assert x["cost_nanos"] == raw_sums(ui, start, start + 86_400_000, "customer_id = 'acme'")["cost_nanos"]
        assert d["models"]["total"]["cost_nanos"] == d["keys"]["total"]["cost_nanos"] == want["cost_nanos"]
        assert {g["name"] for g in d["keys"]["groups"]} <= {"acme-k0", "acme-k1"}
        [budget] = d["budgets"]
        assert budget["scope_id"] == "acme" and budget["resets"] == "2027-01-01T00:00:00Z" and budget["hard"]
        assert budget["spent_nanos"] == want["cost_nanos"]  # this month, all of it before now
        assert sum(o["requests"] for o in d["cache"]["outcomes"]) == want["requests"]
        assert sum(o["saved"]["nanos"] for o in d["cache"]["outcomes"]) == want["saved_nanos"]
        assert d["errors"]["total_errors"] == want["errors"]

        # the CSVs: by model/key are the CLI's report, the daily one adds up to the same total
        conn = connect(paths.db_path(ui.home))
        try:
            w = reports.parse_period("2026-12")
            for table, by in (("models", "model"), ("keys", "key")):
                assert get(c, f"/ui/api/customer/acme/{table}.csv") == reports.to_csv(
                    reports.report(conn, by=by, window=w, customer="acme"))
        finally:
            conn.close()
        daily = list(csv.DictReader(io.StringIO(get(c, "/ui/api/customer/acme/daily.csv"))))
        assert daily[-1]["day"] == "TOTAL" and int(daily[-1]["cost_nanos"]) == want["cost_nanos"]
        assert sum(int(r["cost_nanos"]) for r in daily[:-1]) == want["cost_nanos"]
        budgets_csv = list(csv.DictReader(io.StringIO(get(c, "/ui/api/customer/acme/budgets.csv"))))
        assert budgets_csv[0]["limit_usd"] == "5.00" and budgets_csv[0]["level"] == budget["level"]
        cache_csv = list(csv.DictReader(io.StringIO(get(c, "/ui/api/customer/acme/cache.csv"))))
        assert cache_csv[-1]["cache"] == "TOTAL" and int(cache_csv[-1]["requests"]) == want["requests"]
        assert int(cache_csv[-1]["saved_nanos"]) == want["saved_nanos"]
        errors_csv = list(csv.DictReader(io.StringIO(get(c, "/ui/api/customer/acme/errors.csv"))))
        assert int(errors_csv[-1]["errors"]) == want["errors"]

        r = c.get("/ui/api/customer/nobody", headers={"authorization": f"Bearer {UI_TOKEN}"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = c.get("/ui/api/customer/acme/secrets.csv", headers={"authorization": f"Bearer {UI_TOKEN}"})
        assert r.status_code == 404


def test_converted_csv_is_exact(ui: Daemon) -> None:
    with client(ui) as c:
        plain = list(csv.reader(io.StringIO(get(c, "/ui/api/customers.csv"))))
        conv = list(csv.reader(io.StringIO(get(c, "/ui/api/customers.csv", converted="1"))))
        head = conv[0]
        assert head[:len(plain[0])] == plain[0]
        assert head[len(plain[0]):] == ["cost_EUR_converted", "saved_EUR_converted", "usd_to_EUR_rate"]
        for p, r in zip(plain[1:], conv[1:], strict=True):
            assert r[:len(p)] == p
            nanos = int(p[plain[0].index("cost_nanos")])
            assert Decimal(r[head.index("cost_EUR_converted")]) == Decimal(nanos) * Decimal("0.92") / 10**9
            assert r[-1] == "0.92"
        # an amount that a float could not carry: 2**53 + 1 nano-dollars at 0.92
        assert ui_data.Currency("EUR", Decimal("0.92")).exact(2**53 + 1) == "8286623.31436171356"
        assert ui_data.Currency("EUR", Decimal("0.92")).display(2**53 + 1) == "EUR 8286623.31"
        assert ui_data.Currency("JPY", Decimal("150")).exact(1) == "0.00000015"


def test_converted_needs_a_currency(daemon_factory: Any, tmp_path: Any) -> None:
    d = daemon_factory('[ui]\ntoken_env = "TEST_UI_TOKEN"\n', UI_ENV, home=tmp_path / "plain")
    with client(d) as c:
        r = c.get("/ui/api/customers.csv", params={"converted": "1"},
                  headers={"authorization": f"Bearer {UI_TOKEN}"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "converted"
        data = get(c, "/ui/api/customers")
        assert data["currency"] is None and data["customers"]["groups"] == []

