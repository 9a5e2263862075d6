"""The admin API through the real daemon: off without a token (404), 401 for a bad token, customers,
teams and keys made over HTTP and used on /v1/chat/completions once the daemon reloads, a budget
set over HTTP that stops the next request, key rotation and lifecycle, report totals equal to the
ledger (and to ``llmgw report --format json``), and typed 400s that write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmgw import config as cfgmod
from llmgw.config import Config
from llmgw.errors import ConfigError

TOKEN = "adm-" + "x" * 40
DEMO = '[providers.demo]\ntype = "demo"\n'
ADMIN = DEMO + '\n[admin]\ntoken_env = "TEST_ADMIN_TOKEN"\n'
ENV = {"TEST_ADMIN_TOKEN": TOKEN}
CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hello admin"}]
NANOS = 1_000_000_000


class Admin:
    """An httpx client on the daemon with the admin token."""

    def __init__(self, daemon: Any, token: str | None = TOKEN) -> None:
        self.d = daemon
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=daemon.url, headers=headers, timeout=10)
        self.chats = 0  # each chat request gets one ledger row, whatever its answer

    def __call__(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                 params: dict[str, str] | None = None) -> httpx.Response:
        content = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        r = self.http.request(method, path, content=content, params=params)
        assert r.headers.get("x-request-id", "").startswith("req_"), (method, path, r.headers)
        assert r.headers["content-type"].startswith("application/json")
        return r

    def chat(self, secret: str, model: str = "demo/echo") -> httpx.Response:
        self.chats += 1
        return httpx.post(self.d.url + CHAT, json={"model": model, "messages": MSG},
                          headers={"authorization": f"Bearer {secret}"}, timeout=10)

    def models(self, secret: str) -> httpx.Response:
        """``/v1/models`` with a virtual key: authenticates like a chat request, writes no ledger row."""
        return httpx.get(self.d.url + "/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=10)

    def check_key(self, secret: str, code: str | None = None) -> None:
        """The key works (or, with ``code``, fails with that code) at once: an admin change applies in
        the daemon that made it before its answer is sent."""
        r = self.models(secret)
        if code is None:
            assert r.status_code == 200, r.text
        else:
            error(r, 401, "authentication_error", code)

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def admin(daemon_factory: Any) -> Iterator[Admin]:
    a = Admin(daemon_factory(ADMIN, ENV))
    yield a
    a.close()


def error(r: httpx.Response, status: int, type_: str, code: str | None = None,
          param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    err = body["error"]
    assert err["type"] == type_, err
    if code is not None:
        assert err["code"] == code, err
    assert err["param"] == param, err
    return dict(err)


def counts(d: Any) -> dict[str, int]:
    conn = d.db()
    try:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("customers", "teams", "keys", "budgets", "ledger")}
    finally:
        conn.close()


def ledger_when(d: Any, n: int) -> list[dict[str, Any]]:
    """The ledger once it holds ``n`` rows (the writer commits in batches)."""
    deadline = time.monotonic() + 5
    while True:
        rows = d.ledger()
        if len(rows) >= n or time.monotonic() > deadline:
            assert len(rows) == n
            return rows
        time.sleep(0.02)


# ---- on, off and the token ------------------------------------------------------------------------


def test_admin_api_is_off_without_a_token(daemon_factory: Any) -> None:
    d = daemon_factory(DEMO, {})
    a = Admin(d, token=None)
    try:
        for method, path in (("GET", "/admin/customers"), ("POST", "/admin/keys"), ("GET", "/admin/nothing"),
                             ("DELETE", "/admin/budgets/bud_1"), ("GET", "/admin")):
            err = error(a(method, path), 404, "invalid_request_error", "not_found")
            assert "admin API is off" in err["message"]
        # a token does not help when none is configured
        a.http.headers["authorization"] = f"Bearer {TOKEN}"
        error(a("GET", "/admin/customers"), 404, "invalid_request_error", "not_found")
        assert a.http.get("/healthz").status_code == 200
    finally:
        a.close()


def test_bad_or_missing_token_is_401(admin: Admin) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {TOKEN[:-1]}y"},
                    {"authorization": f"Basic {TOKEN}"}, {"x-api-key": TOKEN},
                    {"authorization": f"Bearer {admin.d.key}"}):  # a virtual key is no admin token
        for method, path in (("GET", "/admin/customers"), ("POST", "/admin/customers"), ("GET", "/admin/nope"),
                             ("PATCH", "/admin/keys")):  # unknown routes and methods reveal nothing either
            r = httpx.request(method, admin.d.url + path, headers=headers, content=b'{"id": "x"}')
            err = error(r, 401, "authentication_error")
            assert err["code"] in ("missing_admin_token", "invalid_admin_token")
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert TOKEN not in r.text and "x-request-id" in r.headers
    assert counts(admin.d)["customers"] == 0
    # with the token: unknown routes are 404, wrong methods 405
    error(admin("GET", "/admin/nope"), 404, "invalid_request_error", "not_found")
    r = admin("DELETE", "/admin/customers")
    error(r, 405, "invalid_request_error", "method_not_allowed")
    assert r.headers["allow"] == "GET, POST"


def test_token_from_llmgw_admin_token(daemon_factory: Any) -> None:
    d = daemon_factory(DEMO, {"LLMGW_ADMIN_TOKEN": TOKEN})
    a = Admin(d)
    try:
        r = a("GET", "/admin/customers")
        assert r.status_code == 200 and r.json() == {"data": []}
    finally:
        a.close()


def test_admin_config_is_validated(daemon_factory: Any, tmp_path: Path) -> None:
    """``[admin]`` is part of the config's schema: every problem listed, and the daemon refuses to start."""
    path = tmp_path / "f.toml"

    def load(text: str, env: dict[str, str]) -> Config:
        path.write_text(text)
        return cfgmod.load(path, environ=env)

    with pytest.raises(ConfigError) as e:
        load('[admin]\ntokn = "X"\ntoken_env = "not a name"\n', {})
    assert str(e.value).splitlines() == [
        f'{path}: admin.tokn: unknown key; did you mean "token_env"?',
        f'{path}: admin.token_env: not an environment variable name ([A-Za-z_][A-Za-z0-9_]*): "not a name"']
    with pytest.raises(ConfigError, match=r"admin\.token_env: expected the name of an environment variable"):
        load("[admin]\ntoken_env = 5\n", {})
    with pytest.raises(ConfigError, match=r"admin: expected a table"):
        load('admin = "secret"\n', {})
    with pytest.raises(ConfigError, match=r'admin\.token_env: environment variable "NOPE" is not set'):
        load('[admin]\ntoken_env = "NOPE"\n', {"LLMGW_ADMIN_TOKEN": TOKEN})
    assert load("", {}).token("admin", {}) is None
    assert load("[admin]\n", {}).token("admin", {"LLMGW_ADMIN_TOKEN": " "}) is None
    cfg = load('[admin]\ntoken_env = "T"\n', {"T": "abc"})
    assert cfg.token("admin", {"T": "abc\n", "LLMGW_ADMIN_TOKEN": "other"}) == "abc"
    assert load("", {}).token("admin", {"LLMGW_ADMIN_TOKEN": "zzz"}) == "zzz"
    # the daemon refuses to start with a bad [admin] section
    with pytest.raises(ConfigError, match=r"admin\.tokn: unknown key"):
        daemon_factory(DEMO + '\n[admin]\ntokn = "X"\n', ENV)


# ---- customers, teams, keys, budgets --------------------------------------------------------------


def test_customer_team_key_made_over_http_serve_requests_and_a_budget_stops_them(admin: Admin) -> None:
    r = admin("POST", "/admin/customers", {"id": "acme_corp", "name": "Acme Corp"})
    assert r.status_code == 201, r.text
    assert r.json() | {"created_at": None} == {"id": "acme_corp", "name": "Acme Corp", "created_at": None,
                                               "teams": [], "keys": []}
    r = admin("POST", "/admin/teams", {"id": "captioning", "customer": "acme_corp"})
    assert r.status_code == 201 and r.json()["customer_id"] == "acme_corp", r.text
    r = admin("POST", "/admin/keys", {"customer": "acme_corp", "team": "captioning", "name": "vk_acme",
                                      "models": ["demo/echo"], "budget_usd": "200", "period": "month", "rpm": 600,
                                      "tpm": 1_000_000, "expires": "2099-01-01", "clamp": False, "cache": "off"})
    assert r.status_code == 201, r.text
    key = r.json()
    secret = key.pop("secret")
    assert secret.startswith("sk-llmgw-") and key["display"].endswith(secret[-4:])
    assert "key_hash" not in key and "prev_key_hash" not in key
    assert (key["customer_id"], key["team_id"], key["models"], key["rpm"], key["status"], key["expires_at"]) == (
        "acme_corp", "captioning", ["demo/echo"], 600, "active", "2099-01-01T00:00:00Z")
    # the secret is shown once: never again
    assert secret not in admin("GET", f"/admin/keys/{key['id']}").text
    assert admin("GET", "/admin/keys/vk_acme").json() == key  # by name too

    # listings
    assert [c["id"] for c in admin("GET", "/admin/customers").json()["data"]] == ["acme_corp"]
    shown = admin("GET", "/admin/customers/acme_corp").json()
    assert [t["id"] for t in shown["teams"]] == ["captioning"] and [k["id"] for k in shown["keys"]] == [key["id"]]
    assert [t["id"] for t in admin("GET", "/admin/teams", params={"customer": "acme_corp"}).json()["data"]] == [
        "captioning"]
    assert [k["id"] for k in admin("GET", "/admin/keys", params={"customer": "acme_corp"}).json()["data"]] == [
        key["id"]]
    assert {k["name"] for k in admin("GET", "/admin/keys").json()["data"]} == {"test", "vk_acme"}

    # the running daemon picks the key up within a second
    admin.check_key(secret)
    r = admin.chat(secret)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Echo: hello admin"
    error(admin.chat(secret, "demo/lorem"), 403, "permission_error", "model_not_allowed", "model")

    # a budget of 0 on the customer: the next request is refused, typed and not to be retried
    r = admin("PUT", "/admin/budgets", {"scope": "customer", "id": "acme_corp", "limit_usd": "0",
                                        "period": "month"})
    assert r.status_code == 201, r.text
    bud = r.json()
    assert (bud["scope"], bud["scope_id"], bud["period"], bud["hard"], bud["limit_nanos"], bud["limit_usd"],
            bud["warn_pct"], bud["grace_usd"]) == ("customer", "acme_corp", "month", True, 0, "0.00", 80, "0.00")
    r = admin.chat(secret)  # the budget applies to the very next request
    err = error(r, 429, "budget_exceeded", "month_budget_exceeded")
    assert "customer acme_corp" in err["message"] and r.headers["x-should-retry"] == "false"
    assert "retry-after" not in r.headers

    # upsert: same id, new limit, options not given kept; the request goes through again
    r = admin("PUT", "/admin/budgets", {"scope": "customer", "id": "acme_corp", "limit_usd": "150.5",
                                        "period": "month", "warn_pct": 90, "grace_usd": "10"})
    assert r.status_code == 200, r.text
    up = r.json()
    assert (up["id"], up["limit_nanos"], up["limit_usd"], up["warn_pct"], up["grace_nanos"], up["hard"]) == (
        bud["id"], 150_500_000_000, "150.50", 90, 10 * NANOS, True)
    assert admin.chat(secret).status_code == 200

    # budgets with spend from the ledger: the customer's and its key's (made with budget_usd)
    rows = ledger_when(admin.d, admin.chats)
    spent = sum(r["cost_nanos"] for r in rows if r["customer_id"] == "acme_corp")
    assert spent > 0
    listed = admin("GET", "/admin/budgets", params={"customer": "acme_corp"}).json()["data"]
    assert [(b["scope"], b["scope_id"]) for b in listed] == [("customer", "acme_corp"), ("key", key["id"])]
    for b in listed:
        assert b["spent_nanos"] == spent and isinstance(b["spent_usd"], str)
        assert b["remaining_nanos"] == b["limit_nanos"] - spent
        assert not any(isinstance(v, float) for v in b.values())
    assert listed[1]["limit_usd"] == "200.00" and listed[1]["name"] == "vk_acme"
    assert admin("GET", "/admin/budgets", params={"key": "vk_acme"}).json()["data"] == listed[1:]
    assert len(admin("GET", "/admin/budgets").json()["data"]) == 2

    # delete
    r = admin("DELETE", f"/admin/budgets/{bud['id']}")
    assert r.status_code == 200 and r.json()["deleted"] is True and r.json()["limit_usd"] == "150.50", r.text
    error(admin("DELETE", f"/admin/budgets/{bud['id']}"), 404, "invalid_request_error", "not_found")
    assert len(admin("GET", "/admin/budgets").json()["data"]) == 1


def test_key_rotate_disable_enable_revoke(admin: Admin) -> None:
    r = admin("POST", "/admin/keys", {"name": "rot"})
    assert r.status_code == 201, r.text
    key = r.json()
    old = key["secret"]
    admin.check_key(old)

    # rotate with a grace: both secrets work for now
    r = admin("POST", "/admin/keys/rot/rotate", {"grace_seconds": 3600})
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new != old and r.json()["id"] == key["id"] and r.json()["prev_valid_until"]
    admin.check_key(new)
    assert admin.chat(new).status_code == 200 and admin.chat(old).status_code == 200
    # grace 0: the previous secret stops at once
    r = admin("POST", f"/admin/keys/{key['id']}/rotate", {"grace_seconds": 0})
    newer = r.json()["secret"]
    admin.check_key(newer)
    assert admin.chat(newer).status_code == 200
    error(admin.chat(new), 401, "authentication_error", "key_rotated")
    error(admin.chat(old), 401, "authentication_error", "invalid_api_key")
    r = admin("POST", "/admin/keys/rot/rotate")  # no body: the default grace (a day)
    assert r.status_code == 200 and r.json()["prev_valid_until"] > datetime.now(UTC).isoformat()
    secret = r.json()["secret"]
    admin.check_key(secret)
    assert admin.chat(newer).status_code == 200

    # disable / enable / revoke
    live = admin("GET", "/admin/keys/rot").json()
    assert live["status"] == "active"
    r = admin("POST", "/admin/keys/rot/disable")
    assert r.status_code == 200 and r.json()["status"] == "disabled"
    admin.check_key(secret, "key_disabled")
    error(admin.chat(secret), 401, "authentication_error", "key_disabled")
    assert admin("POST", "/admin/keys/rot/enable").json()["status"] == "active"
    admin.check_key(secret)
    r = admin("POST", "/admin/keys/rot/revoke")
    assert r.status_code == 200 and r.json()["status"] == "revoked" and r.json()["revoked_at"]
    admin.check_key(secret, "key_revoked")
    error(admin.chat(secret), 401, "authentication_error", "key_revoked")
    # revocation is final
    error(admin("POST", "/admin/keys/rot/enable"), 409, "invalid_request_error", "key_revoked")
    error(admin("POST", "/admin/keys/rot/rotate"), 409, "invalid_request_error", "key_revoked")
    assert admin("POST", "/admin/keys/rot/revoke").json()["revoked_at"] == r.json()["revoked_at"]  # idempotent
    error(admin("POST", "/admin/keys/nokey/disable"), 404, "invalid_request_error", "not_found")
    error(admin("GET", "/admin/keys/nokey"), 404, "invalid_request_error", "not_found")


# ---- reports --------------------------------------------------------------------------------------


def test_report_totals_equal_the_ledger_and_the_cli(admin: Admin) -> None:
    secrets = {}
    for cid in ("acme_corp", "globex"):
        assert admin("POST", "/admin/customers", {"id": cid}).status_code == 201
        secrets[cid] = admin("POST", "/admin/keys", {"customer": cid, "name": f"vk_{cid}"}).json()["secret"]
    for cid, n in (("acme_corp", 3), ("globex", 2)):
        admin.check_key(secrets[cid])
        for _ in range(n):
            assert admin.chat(secrets[cid]).status_code == 200
    rows = ledger_when(admin.d, 5)
    now = datetime.now(UTC)
    period = f"{now.year:04d}-{now.month:02d}"

    r = admin("GET", "/admin/report", params={"by": "customer", "period": period})
    assert r.status_code == 200, r.text
    rep = r.json()
    total = sum(x["cost_nanos"] for x in rows)
    assert total > 0 and rep["total"]["cost_nanos"] == total and rep["total"]["requests"] == 5
    assert sum(g["cost_nanos"] for g in rep["groups"]) == total
    by_id = {g["id"]: g for g in rep["groups"]}
    assert by_id["acme_corp"]["requests"] == 3 and by_id["globex"]["requests"] == 2
    assert by_id["acme_corp"]["cost_nanos"] == sum(x["cost_nanos"] for x in rows if x["customer_id"] == "acme_corp")
    assert isinstance(rep["total"]["cost_usd"], str)

    # the same JSON as the CLI's
    env = {k: v for k, v in os.environ.items() if k not in ("LLMGW_CONFIG", "LLMGW_HOME")}
    env["LLMGW_HOME"] = str(admin.d.home)
    cli = subprocess.run([sys.executable, "-m", "llmgw", "report", "--by", "customer", "--period", period,
                          "--format", "json"], env=env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == rep

    # other groupings, filters and windows
    by_key = admin("GET", "/admin/report", params={"by": "key", "customer": "globex"}).json()
    assert [g["name"] for g in by_key["groups"]] == ["vk_globex"] and by_key["customer"] == "globex"
    assert by_key["total"]["cost_nanos"] == by_id["globex"]["cost_nanos"]
    since = admin("GET", "/admin/report", params={"since": "2000-01-01", "until": "2100-01-01"}).json()
    assert since["total"]["cost_nanos"] == total and since["window"]["since"] == "2000-01-01T00:00:00.000Z"
    empty = admin("GET", "/admin/report", params={"period": "2001-01"}).json()
    assert empty["groups"] == [] and empty["total"]["cost_nanos"] == 0
    assert admin("GET", "/admin/report").json()["window"]["label"] == period  # default: this month


# ---- bad input --------------------------------------------------------------------------------------

# (method, path, body (bytes: sent as is), query, status, code, param)
BAD: list[tuple[str, str, Any, dict[str, str] | None, int, str, str | None]] = [
    ("POST", "/admin/customers", b"{not json", None, 400, "invalid_json", None),
    ("POST", "/admin/customers", b"", None, 400, "invalid_json", None),
    ("POST", "/admin/customers", b"[1, 2]", None, 400, "invalid_json", None),
    ("POST", "/admin/customers", {}, None, 400, "missing_field", "id"),
    ("POST", "/admin/customers", {"id": 5}, None, 400, "invalid_type", "id"),
    ("POST", "/admin/customers", {"id": "Not A Slug"}, None, 400, "invalid_value", "id"),
    ("POST", "/admin/customers", {"id": "ok", "nmae": "typo"}, None, 400, "unknown_field", "nmae"),
    ("POST", "/admin/customers", {"id": "ok", "name": ["x"]}, None, 400, "invalid_type", "name"),
    ("POST", "/admin/customers", {"id": "acme_corp"}, None, 409, "already_exists", "id"),
    ("POST", "/admin/teams", {"id": "t2", "customer": "nobody"}, None, 404, "not_found", "customer"),
    ("POST", "/admin/teams", {"id": "t2"}, None, 400, "missing_field", "customer"),
    ("POST", "/admin/teams", {"id": "captioning", "customer": "acme_corp"}, None, 409, "already_exists", "id"),
    ("POST", "/admin/keys", {"models": "demo/*"}, None, 400, "invalid_type", "models"),
    ("POST", "/admin/keys", {"models": []}, None, 400, "invalid_value", "models"),
    ("POST", "/admin/keys", {"models": ["bad model"]}, None, 400, "invalid_value", "models"),
    ("POST", "/admin/keys", {"budget_usd": 1.5}, None, 400, "invalid_type", "budget_usd"),
    ("POST", "/admin/keys", {"budget_usd": "-1"}, None, 400, "invalid_value", "budget_usd"),
    ("POST", "/admin/keys", {"budget_usd": "ten"}, None, 400, "invalid_value", "budget_usd"),
    ("POST", "/admin/keys", {"budget_usd": "1", "budget_nanos": 1}, None, 400, "invalid_value", "budget_nanos"),
    ("POST", "/admin/keys", {"budget_nanos": -1}, None, 400, "invalid_value", "budget_nanos"),
    ("POST", "/admin/keys", {"period": "month"}, None, 400, "invalid_value", "period"),
    ("POST", "/admin/keys", {"budget_usd": "1", "period": "year"}, None, 400, "invalid_value", "period"),
    ("POST", "/admin/keys", {"rpm": 0}, None, 400, "invalid_value", "rpm"),
    ("POST", "/admin/keys", {"tpm": "1000"}, None, 400, "invalid_type", "tpm"),
    ("POST", "/admin/keys", {"expires": "2001-01-01"}, None, 400, "invalid_value", "expires"),
    ("POST", "/admin/keys", {"expires": "soon"}, None, 400, "invalid_value", "expires"),
    ("POST", "/admin/keys", {"clamp": "yes"}, None, 400, "invalid_type", "clamp"),
    ("POST", "/admin/keys", {"cache": "maybe"}, None, 400, "invalid_value", "cache"),
    ("POST", "/admin/keys", {"name": " "}, None, 400, "invalid_value", "name"),
    ("POST", "/admin/keys", {"name": "test"}, None, 409, "already_exists", "name"),
    ("POST", "/admin/keys", {"customer": "nobody"}, None, 404, "not_found", "customer"),
    ("POST", "/admin/keys", {"team": "nobody"}, None, 404, "not_found", "team"),
    ("POST", "/admin/keys", {"team": "captioning", "customer": "globex"}, None, 400, "invalid_value", "team"),
    ("POST", "/admin/keys/test/rotate", {"grace_seconds": -1}, None, 400, "invalid_value", "grace_seconds"),
    ("POST", "/admin/keys/test/rotate", {"grace_seconds": "60"}, None, 400, "invalid_type", "grace_seconds"),
    ("POST", "/admin/keys/test/disable", {"now": True}, None, 400, "unknown_field", "now"),
    ("PUT", "/admin/budgets", {"scope": "org", "id": "acme_corp", "limit_usd": "1", "period": "day"}, None, 400,
     "invalid_value", "scope"),
    ("PUT", "/admin/budgets", {"scope": "customer", "id": "acme_corp", "period": "day"}, None, 400,
     "missing_field", "limit_usd"),
    ("PUT", "/admin/budgets", {"scope": "customer", "id": "acme_corp", "limit_usd": "1"}, None, 400,
     "missing_field", "period"),
    ("PUT", "/admin/budgets", {"scope": "customer", "id": "acme_corp", "limit_usd": "1", "period": "year"}, None,
     400, "invalid_value", "period"),
    ("PUT", "/admin/budgets", {"scope": "customer", "id": "acme_corp", "limit_usd": "0.0000000001",
                               "period": "day"}, None, 400, "invalid_value", "limit_usd"),
    ("PUT", "/admin/budgets", {"scope": "customer", "id": "acme_corp", "limit_usd": "1e30", "period": "day"},
     None, 400, "invalid_value", "limit_usd"),
    ("PUT", "/admin/budgets", {"scope": "customer", "id": "acme_corp", "limit_usd": "NaN", "period": "day"},
     None, 400, "invalid_value", "limit_usd"),
    ("PUT", "/admin/budgets", {"scope": "customer", "id": "acme_corp", "limit_usd": 2.5, "period": "day"},
     None, 400, "invalid_type", "limit_usd"),
    ("PUT", "/admin/budgets", {"scope": "customer", "id": "acme_corp", "limit_usd": "1", "period": "day",
                               "warn_pct": 0}, None, 400, "invalid_value", "warn_pct"),
    ("PUT", "/admin/budgets", {"scope": "customer", "id": "acme_corp", "limit_usd": "1", "period": "day",
                               "hard": "yes"}, None, 400, "invalid_type", "hard"),
    ("PUT", "/admin/budgets", {"scope": "customer", "id": "acme_corp", "limit_usd": "1", "period": "day",
                               "hard": False, "grace_usd": "1"}, None, 400, "invalid_value", "grace_usd"),
    ("PUT", "/admin/budgets", {"scope": "customer", "id": "nobody", "limit_usd": "1", "period": "day"}, None,
     404, "not_found", "id"),
    ("PUT", "/admin/budgets", {"scope": "key", "id": "nokey", "limit_usd": "1", "period": "day"}, None,
     404, "not_found", "id"),
    ("DELETE", "/admin/budgets/bud_nope", None, None, 404, "not_found", None),
    ("GET", "/admin/budgets", None, {"customer": "acme_corp", "key": "test"}, 400, "invalid_value", "key"),
    ("GET", "/admin/budgets", None, {"customer": "nobody"}, 404, "not_found", "customer"),
    ("GET", "/admin/report", None, {"by": "planet"}, 400, "invalid_value", "by"),
    ("GET", "/admin/report", None, {"period": "2026-13"}, 400, "invalid_value", "period"),
    ("GET", "/admin/report", None, {"period": "2026-11", "since": "2026-11-01"}, 400, "invalid_value", "period"),
    ("GET", "/admin/report", None, {"since": "yesterday"}, 400, "invalid_value", "since"),
    ("GET", "/admin/report", None, {"since": "2026-12-01", "until": "2026-11-01"}, 400, "invalid_value", "until"),
    ("GET", "/admin/report", None, {"customer": "nobody"}, 404, "not_found", "customer"),
    ("GET", "/admin/report", None, {"group": "customer"}, 400, "unknown_field", "group"),
    ("GET", "/admin/keys", None, {"customer": "nobody"}, 404, "not_found", "customer"),
    ("GET", "/admin/teams", None, {"customer": "nobody"}, 404, "not_found", "customer"),
    ("GET", "/admin/customers", None, {"limit": "10"}, 400, "unknown_field", "limit"),
    ("GET", "/admin/customers/nobody", None, None, 404, "not_found", None),
]


def test_bad_input_is_a_typed_error_and_writes_nothing(admin: Admin) -> None:
    admin("POST", "/admin/customers", {"id": "acme_corp"})
    admin("POST", "/admin/customers", {"id": "globex"})
    admin("POST", "/admin/teams", {"id": "captioning", "customer": "acme_corp"})
    before = counts(admin.d)
    keys_before = admin("GET", "/admin/keys").json()
    for method, path, body, query, status, code, param in BAD:
        raw = body if isinstance(body, bytes) else None
        r = admin(method, path, None if raw is not None else body, raw=raw, params=query)
        what = f"{method} {path} {body!r} {query!r}"
        assert r.status_code == status, (what, r.text)
        err = r.json()["error"]
        assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, param), (what, err)
        assert err["message"]
    assert counts(admin.d) == before
    assert admin("GET", "/admin/keys").json() == keys_before  # no key rotated, disabled or made


def test_body_size_limit_applies(daemon_factory: Any) -> None:
    a = Admin(daemon_factory(ADMIN + "\n[server]\nmax_body_bytes = 1024\n", ENV))
    try:
        big = json.dumps({"id": "acme", "name": "x" * 4000}).encode()
        error(a("POST", "/admin/customers", raw=big), 413, "invalid_request_error", "request_too_large")
        # chunked (no content-length): the limit holds while reading
        r = a.http.post("/admin/customers", content=iter([big[:512], big[512:]]))
        error(r, 413, "invalid_request_error", "request_too_large")
        assert counts(a.d)["customers"] == 0
        assert a("POST", "/admin/customers", {"id": "acme"}).status_code == 201
    finally:
        a.close()
