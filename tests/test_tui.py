"""``llmgw top``: the data layer on a real SQLite file, the Textual app through its pilot at 80x24, and
snapshots of the main screens.

Snapshots live in tests/snapshots/: ``top_<name>.txt`` (the screen as plain text, always compared) and
``top_<name>.svg`` (``App.export_screenshot``, compared when the installed Textual is the version
recorded in ``textual-version.txt``, since styling details move between Textual releases). After an
intended change, regenerate them with ``LLMGW_UPDATE_SNAPSHOTS=1 pytest tests/test_tui.py`` and
look at the diff. Every snapshot uses a fixed clock and fixed data (fixed key ids too).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from llmgw import paths
from llmgw.governance import budgets, hierarchy, keys
from llmgw.store import db
from llmgw.store.ledger import as_tuple, insert_sql, normalise_row
from llmgw.tui import actions, data, fmt

NOW = int(datetime(2026, 11, 27, 10, 30, 5, tzinfo=UTC).timestamp() * 1000)
HOUR = 3_600_000
USD = 1_000_000_000
SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("LLMGW_UPDATE_SNAPSHOTS") == "1"


# ---- fixture data --------------------------------------------------------------------------------


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.n = 0

    def add(self, ts_ms: int, key: tuple[str, str | None, str], cost_nanos: int, *, status: int = 200,
            cache: str | None = None, model: str = "openai/gpt-4o-mini", error_type: str | None = None,
            request_id: str | None = None) -> None:
        key_id, team_id, customer_id = key
        self.n += 1
        row = normalise_row({
            "request_id": request_id or f"req_{self.n:04d}", "ts_ms": ts_ms, "route": "/v1/chat/completions",
            "model": model, "provider": model.split("/")[0], "status": status,
            "outcome": "ok" if status < 400 else "error", "error_type": error_type,
            "prompt_tokens": 100 + self.n, "completion_tokens": 20 + self.n, "cost_nanos": cost_nanos,
            "latency_ms": 200.0 + self.n, "key_id": key_id, "team_id": team_id, "customer_id": customer_id,
            "cache": cache,
        })
        conn = db.connect(self.path)
        try:
            with conn:
                conn.execute(insert_sql(), as_tuple(row))
        finally:
            conn.close()


ACME_PROD = ("key_acmeprod000001", "acme-ml", "acme")
ACME_DEV = ("key_acmedev0000002", "acme-web", "acme")
GLOBEX = ("key_globex00000003", None, "globex")
INITECH = ("key_initech0000004", None, "initech")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """customers acme (monthly $100, $61 spent: ok), globex (monthly $10 warn at 50 %, $9.50: warn),
    initech (daily $1, $1.20: capped), umbrella (no budget, no traffic); teams and keys with fixed ids."""
    h = tmp_path / "home"
    conn = db.open_db(paths.db_path(h))
    try:
        with conn:
            hierarchy.create_customer(conn, "acme", name="Acme Corp")
            hierarchy.create_customer(conn, "globex", name="Globex")
            hierarchy.create_customer(conn, "initech")
            hierarchy.create_customer(conn, "umbrella")
            hierarchy.create_team(conn, "acme-ml", customer_id="acme")
            hierarchy.create_team(conn, "acme-web", customer_id="acme")
            for (kid, team, cust), name in ((ACME_PROD, "acme-prod"), (ACME_DEV, "acme-dev"), (GLOBEX, "globex-1"),
                                            (INITECH, "initech-1")):
                _, info = keys.mint(conn, name=name, customer_id=cust, team_id=team)
                conn.execute("UPDATE keys SET id = ?, created_at = ? WHERE id = ?",
                             (kid, "2026-11-01T00:00:00+00:00", info.id))
            budgets.upsert_budget(conn, "customer", "acme", "month", 100 * USD)
            budgets.upsert_budget(conn, "customer", "globex", "month", 10 * USD, warn_pct=50)
            budgets.upsert_budget(conn, "customer", "initech", "day", 1 * USD)
            budgets.upsert_budget(conn, "team", "acme-ml", "month", 50 * USD)
    finally:
        conn.close()
    led = Ledger(paths.db_path(h))  # oldest first, as the daemon writes them
    led.add(NOW - 40 * 86_400_000, ACME_PROD, 7 * USD)  # last month: not in this period
    led.add(NOW - 2 * 86_400_000, INITECH, 5 * USD)  # an earlier day: outside the daily window
    for i in reversed(range(10)):  # acme: $1 an hour over the last 10 hours (at hh:00:05)...
        led.add(NOW - i * HOUR - 30 * 60_000, ACME_PROD, 1 * USD)
    led.add(NOW - 20_000, ACME_PROD, 51 * USD, cache="miss")  # ...then $51 in this minute
    led.add(NOW - 15_000, ACME_DEV, 0, cache="hit-exact")
    led.add(NOW - 10_000, ACME_DEV, 0, cache="hit-semantic", model="anthropic/claude-haiku-4-5")
    led.add(NOW - 5000, GLOBEX, 9_500_000_000, cache="miss", model="openai/gpt-4.1")
    led.add(NOW - 4000, GLOBEX, 0, status=429, error_type="budget_exceeded", model="openai/gpt-4.1")
    led.add(NOW - 3000, INITECH, 1_200_000_000)
    return h


def db_file(home: Path) -> Path:
    return paths.db_path(home)


def query(home: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = db.connect(db_file(home), readonly=True)
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


# ---- the data layer (no Textual) -----------------------------------------------------------------


def test_customers_numbers(home: Path) -> None:
    conn = data.open_readonly(db_file(home))
    try:
        rows = {c["id"]: c for c in data.customers(conn, NOW)}
    finally:
        conn.close()
    assert list(rows) == ["acme", "globex", "initech", "umbrella"]
    acme = rows["acme"]
    assert acme["spent_nanos"] == 61 * USD and acme["period"] == "month"
    assert acme["budget"]["limit_nanos"] == 100 * USD and acme["budget"]["level"] == "ok"
    assert acme["requests"] == 13 and acme["errors"] == 0
    assert (acme["cache_lookups"], acme["cache_hits"]) == (3, 2)
    assert acme["cache_hit_rate"] == pytest.approx(2 / 3)
    assert acme["rpm"] == 3  # the three rows of the last minute
    assert len(acme["cost_per_hour"]) == data.SPARK_HOURS
    assert acme["cost_per_hour"][-1] == 52 * USD and acme["cost_per_hour"][0] == 1 * USD
    assert sum(acme["cost_per_hour"]) == 61 * USD
    g = rows["globex"]
    assert (g["spent_nanos"], g["errors"], g["budget"]["level"]) == (9_500_000_000, 1, "warn")
    i = rows["initech"]
    assert (i["period"], i["spent_nanos"], i["budget"]["level"]) == ("day", 1_200_000_000, "cap")
    assert i["cache_hit_rate"] is None  # no cache data: no rate, not 0 %
    u = rows["umbrella"]
    assert (u["budget"], u["spent_nanos"], u["requests"], u["rpm"]) == (None, 0, 0, 0)


def test_binding_budget_is_the_most_used(home: Path) -> None:
    conn = db.connect(db_file(home))
    try:
        with conn:
            budgets.upsert_budget(conn, "customer", "acme", "day", 200 * USD)  # 30.5 % used vs 61 % monthly
    finally:
        conn.close()
    conn = data.open_readonly(db_file(home))
    try:
        acme = data.customers(conn, NOW)[0]
        assert acme["budget"]["period"] == "month"
        detail = data.customer_detail(conn, "acme", NOW)
    finally:
        conn.close()
    assert [t["id"] for t in detail["teams"]] == ["acme-ml", "acme-web"]
    assert detail["teams"][0]["budget"]["limit_nanos"] == 50 * USD
    assert [(k["name"], k["requests"]) for k in detail["keys"]] == [("acme-prod", 11), ("acme-dev", 2)]
    assert len(detail["customer"]["cost_per_hour"]) == data.DETAIL_SPARK_HOURS


def test_snapshot_is_read_only_and_detail_optional(home: Path) -> None:
    conn = data.open_readonly(db_file(home))
    try:
        snap = data.snapshot(conn, NOW, customer_id="nobody")
        assert snap["detail"] is None
        assert snap["tail"][0]["customer_id"] == "initech" or snap["tail"][0]["id"] == snap["last_id"]
        assert snap["tail"][0]["id"] == snap["last_id"]  # newest first
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("DELETE FROM ledger")
    finally:
        conn.close()


def test_open_readonly_without_database(tmp_path: Path) -> None:
    from llmgw.errors import NotFound

    with pytest.raises(NotFound):
        data.open_readonly(tmp_path / "nope.db")


def test_formatting() -> None:
    assert fmt.money(0) == "$0"
    assert fmt.money(61 * USD) == "$61.00"
    assert fmt.money(150_000) == "$0.0002"
    assert fmt.money(12_345 * USD) == "$12.3k"
    assert fmt.money(2_500_000 * USD) == "$2.50M"
    assert fmt.money(1) == "$0.000000001" and fmt.money(-150_000) == "-$0.0002"  # never $0 for a cost
    assert fmt.bar(61, 100) == "████░░░░  61%"
    assert fmt.bar(0, 100) == "░░░░░░░░   0%"
    assert fmt.bar(1, 1000) == "█░░░░░░░   0%"  # anything spent shows
    assert fmt.bar(300, 100) == "████████ 300%"
    assert fmt.bar(5, 0) == "████████ 100%"
    assert fmt.spark([0, 1, 2, 4]) == "▁▃▅█"
    assert fmt.spark([0, 0]) == "▁▁"
    assert fmt.hit_rate(None) == "—" and fmt.hit_rate(2 / 3) == "67%"
    assert data.level(0, 0, 80) == "ok" and data.level(80, 100, 80) == "warn" and data.level(100, 100, 80) == "cap"


def test_actions_use_the_governance_rules(home: Path) -> None:
    from llmgw.errors import NotFound, UsageError

    secret, key = actions.create_key(db_file(home), customer="acme", team="acme-ml", name="new", models="a/b, c/*",
                                     budget_usd="12.5")
    assert secret.startswith(keys.PREFIX) and key["models"] == ["a/b", "c/*"]
    [b] = query(home, "SELECT * FROM budgets WHERE scope = 'key' AND scope_id = ?", key["id"])
    assert (b["limit_nanos"], b["period"]) == (12_500_000_000, "month")
    with pytest.raises(UsageError):
        actions.create_key(db_file(home), customer="", team="")
    with pytest.raises(NotFound):
        actions.create_key(db_file(home), customer="nobody")
    with pytest.raises(UsageError):
        actions.set_budget(db_file(home), "customer", "acme", limit_usd="lots")
    with pytest.raises(UsageError):
        actions.set_budget(db_file(home), "customer", "acme", limit_usd="5", period="fortnight")
    with pytest.raises(UsageError):
        actions.set_budget(db_file(home), "customer", "acme", limit_usd="5", warn_pct="x")


# ---- the app through the pilot ---------------------------------------------------------------------


def make_app(home: Path, **kw: Any) -> Any:
    from llmgw.tui.app import TopApp

    return TopApp(db_file(home), clock=lambda: NOW, **kw)


async def settle(pilot: Any) -> None:
    """Let every refresh and action (and what they start) finish, and the screen catch up."""
    app = pilot.app
    for _ in range(10):
        await pilot.pause()
        if not list(app.workers):
            break
        await app.workers.wait_for_complete()
    await pilot.pause()


def cells(table: Any, row_key: str) -> list[str]:
    return [getattr(c, "plain", c) for c in table.get_row(row_key)]


def style_of(table: Any, row_key: str, column: str) -> str:
    return str(table.get_cell(row_key, column).style)


async def test_customers_table_shows_spend_and_budget(home: Path) -> None:
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        table = app.screen.query_one("#customers")
        assert [rk.value for rk in table.rows] == ["acme", "globex", "initech", "umbrella"]
        # 80 columns: customer, used, spent, budget, req/m, blocked, errors
        acme = cells(table, "acme")
        assert acme[0] == "acme" and "61%" in acme[1] and acme[2] == "$61.00" and acme[3] == "$100/mo"
        assert acme[4] == "3" and acme[5] == "1/2" and acme[6] == "—"  # acme-prod: its team's budget is spent
        globex = cells(table, "globex")
        assert "95%" in globex[1] and globex[2] == "$9.50" and globex[3] == "$10/mo"
        assert globex[6] == "budget ×1"  # why its requests fail
        initech = cells(table, "initech")
        assert "120%" in initech[1] and initech[2] == "$1.20" and initech[3] == "$1/d"
        assert initech[5] == "1/1"  # its only key is cut off by the exhausted daily budget
        assert cells(table, "umbrella")[1:4] == ["—", "$0", "—"]
        # the bar's colour: green below the warn level, yellow from it, red at the cap
        assert style_of(table, "acme", "bar") == "green"
        assert style_of(table, "globex", "bar") == "yellow"
        assert style_of(table, "initech", "bar") == "bold red"
        assert app.errors == []


async def test_drill_down_shows_teams_and_keys_and_escape_goes_back(home: Path) -> None:
    from llmgw.tui.app import CustomerScreen, MainScreen

    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("enter")  # acme is selected first
        await settle(pilot)
        assert isinstance(app.screen, CustomerScreen) and app.screen.customer_id == "acme"
        keys_table = app.screen.query_one("#keys")
        assert [rk.value for rk in keys_table.rows] == [ACME_PROD[0], ACME_DEV[0]]
        assert cells(keys_table, ACME_PROD[0])[:3] == ["acme-prod", "acme-ml", "blocked"]  # team acme-ml: $61 of $50
        teams = app.screen.query_one("#teams")
        assert cells(teams, "acme-ml")[3] == "$61.00" and cells(teams, "acme-ml")[4] == "$50/mo"
        assert "Acme Corp" in str(app.screen.query_one("#title").render())
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, MainScreen) and app.drill is None
        await pilot.press("down", "enter")
        await settle(pilot)
        assert app.screen.customer_id == "globex"
        assert [rk.value for rk in app.screen.query_one("#keys").rows] == [GLOBEX[0]]


async def test_wider_terminal_shows_more(home: Path) -> None:
    from llmgw.tui.app import CUSTOMER_COLUMNS, KEY_COLUMNS, TAIL_COLUMNS

    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        table = app.screen.query_one("#customers")
        assert [c.value for c in table.columns] == [k for k, _, _ in CUSTOMER_COLUMNS["wide"]]
        acme = dict(zip([c.value for c in table.columns], cells(table, "acme"), strict=True))
        assert acme["cache"] == "67%" and len(acme["spark"]) == data.SPARK_HOURS and acme["spark"][-1] == "█"
        assert acme["blocked"] == "1/2"
        tail = app.screen.query_one("#tail")
        assert [c.value for c in tail.columns] == [k for k, _, _ in TAIL_COLUMNS["wide"]]
        rows = [dict(zip([c.value for c in tail.columns], cells(tail, rk.value), strict=True)) for rk in tail.rows]
        assert {r["key"] for r in rows} >= {"acme-prod", "globex-1"}
        assert [r["error"] for r in rows if r["status"] == "429"] == ["budget"]
        await pilot.press("enter")
        await settle(pilot)
        keys_table = app.screen.query_one("#keys")
        assert [c.value for c in keys_table.columns] == [k for k, _, _ in KEY_COLUMNS["wide"]]
        # narrower again: the narrow columns come back
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        assert [c.value for c in keys_table.columns] == [k for k, _, _ in KEY_COLUMNS["narrow"]]
        await pilot.press("escape")
        await settle(pilot)
        assert [c.value for c in app.screen.query_one("#customers").columns] == [
            k for k, _, _ in CUSTOMER_COLUMNS["narrow"]]


def test_blocked_keys_and_error_codes(home: Path) -> None:
    conn = db.open_db(db_file(home))
    try:
        with conn:  # globex-1 gets a key budget it still has 6 % of; its latest request was refused
            budgets.upsert_budget(conn, "key", GLOBEX[0], "month", 10_100_000_000)
    finally:
        conn.close()
    conn = data.open_readonly(db_file(home))
    try:
        blocked = data.blocked_keys(conn, NOW)
        exhausted = data.exhausted_budgets(conn, NOW)
        snap = data.snapshot(conn, NOW, customer_id="acme")
    finally:
        conn.close()
    assert exhausted == {("customer", "initech"): "customer daily budget exhausted",
                         ("team", "acme-ml"): "team monthly budget exhausted"}
    assert blocked == {INITECH[0]: "customer daily budget exhausted", ACME_PROD[0]: "team monthly budget exhausted",
                       GLOBEX[0]: "its latest request was refused by a budget"}
    cs = {c["id"]: c for c in snap["customers"]}
    assert (cs["acme"]["keys_active"], cs["acme"]["keys_blocked"], cs["acme"]["limits"]) == (2, 1, ["team acme-ml"])
    assert (cs["globex"]["keys_blocked"], cs["globex"]["error_codes"]) == (1, [("budget_exceeded", 1)])
    assert cs["umbrella"]["keys_active"] == 0 and cs["umbrella"]["error_codes"] == []
    keys_ = {k["id"]: k for k in snap["detail"]["keys"]}
    assert keys_[ACME_PROD[0]]["blocked"] and keys_[ACME_DEV[0]]["blocked"] is None
    assert {t["id"]: t["capped"] for t in snap["detail"]["teams"]} == {"acme-ml": True, "acme-web": False}
    assert fmt.error_codes([("month_budget_exceeded", 3), ("http_502", 1)], 40) == "budget/mo ×3, http_502 ×1"
    assert fmt.error_codes([("month_budget_exceeded", 3), ("http_502", 1)], 12) == "budget/mo ×…"
    assert fmt.error_codes([], 10) == "—"


async def test_new_ledger_row_appears_in_the_tail(home: Path) -> None:
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        tail = app.screen.query_one("#tail")
        before = tail.row_count
        Ledger(db_file(home)).add(NOW - 100, GLOBEX, 2_000_000_000, model="openai/gpt-4.1",
                                  cache="hit-semantic", request_id="req_fresh")
        await pilot.press("r")
        await settle(pilot)
        first = tail.coordinate_to_cell_key((0, 0)).row_key.value
        row = cells(tail, first)
        assert row[1] == "globex" and row[2] == "openai/gpt-4.1" and row[3] == "200"
        assert row[5] == "$2.00" and row[6] == "sem" and row[0] == "10:30:04"
        assert tail.row_count == before + 1
        assert cells(app.screen.query_one("#customers"), "globex")[2] == "$11.50"


async def test_refresh_runs_by_itself(home: Path) -> None:
    import asyncio

    app = make_app(home, refresh=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        Ledger(db_file(home)).add(NOW - 100, INITECH, 1, request_id="req_timer")
        tail = app.screen.query_one("#tail")
        for _ in range(50):
            await asyncio.sleep(0.05)
            if cells(tail, tail.coordinate_to_cell_key((0, 0)).row_key.value)[5] == "$0.000000001":  # a cheap call never shows as $0
                break
        assert int(tail.coordinate_to_cell_key((0, 0)).row_key.value) == query(
            home, "SELECT MAX(id) AS m FROM ledger")[0]["m"]


async def test_create_key_through_the_modal_shows_the_secret_once(home: Path) -> None:
    from llmgw.tui.modals import FormScreen, SecretScreen

    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)
        form = app.screen
        assert isinstance(form, FormScreen)
        assert form.query_one("#f-customer").value == "acme"  # the selected customer
        form.query_one("#f-team").value = "acme-web"
        form.query_one("#f-name").value = "from-top"
        form.query_one("#f-models").value = "openai/*"
        form.query_one("#f-budget").value = "25"
        form.query_one("#f-name").focus()
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, SecretScreen), app.errors
        secret = str(app.screen.query_one("#secret").render())
        assert secret.startswith(keys.PREFIX)
        [row] = query(home, "SELECT * FROM keys WHERE name = 'from-top'")
        assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
        assert (row["customer_id"], row["team_id"], json.loads(row["models"])) == ("acme", "acme-web", ["openai/*"])
        [b] = query(home, "SELECT * FROM budgets WHERE scope = 'key' AND scope_id = ?", row["id"])
        assert b["limit_nanos"] == 25 * USD and b["hard"] == 1
        await pilot.press("c")  # copy (OSC 52); the modal stays
        await settle(pilot)
        assert isinstance(app.screen, SecretScreen)
        await pilot.press("enter")  # close: the secret is gone from the screen
        await settle(pilot)
        assert not isinstance(app.screen, SecretScreen)
        assert secret not in app.export_screenshot()


async def test_set_and_change_a_budget_through_the_modal(home: Path) -> None:
    from llmgw.tui.modals import FormScreen

    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("down", "b")  # globex: has a monthly budget of $10
        await settle(pilot)
        form = app.screen
        assert isinstance(form, FormScreen)
        assert (form.query_one("#f-limit").value, form.query_one("#f-period").value,
                form.query_one("#f-warn").value) == ("10.00", "month", "50")
        form.query_one("#f-limit").value = "25.50"
        await pilot.click("#ok")
        await settle(pilot)
        [b] = query(home, "SELECT * FROM budgets WHERE scope = 'customer' AND scope_id = 'globex'")
        assert (b["limit_nanos"], b["warn_pct"], b["period"]) == (25_500_000_000, 50, "month")
        assert cells(app.screen.query_one("#customers"), "globex")[3] == "$25.50/mo"
        await pilot.press("down", "down", "b")  # umbrella: no budget yet
        await settle(pilot)
        app.screen.query_one("#f-limit").value = "5"
        app.screen.query_one("#f-period").value = "week"
        await pilot.click("#ok")
        await settle(pilot)
        [b] = query(home, "SELECT * FROM budgets WHERE scope = 'customer' AND scope_id = 'umbrella'")
        assert (b["limit_nanos"], b["period"], b["hard"], b["warn_pct"]) == (5 * USD, "week", 1, 80)
        assert app.errors == []


async def test_disable_a_key_asks_first(home: Path) -> None:
    from llmgw.tui.modals import ConfirmScreen

    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("down", "d")  # acme-dev
        await settle(pilot)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await settle(pilot)
        assert query(home, "SELECT status FROM keys WHERE id = ?", ACME_DEV[0]) == [{"status": "active"}]
        await pilot.press("d")
        await settle(pilot)
        await pilot.press("y")
        await settle(pilot)
        assert query(home, "SELECT status FROM keys WHERE id = ?", ACME_DEV[0]) == [{"status": "disabled"}]
        assert query(home, "SELECT status FROM keys WHERE id = ?", ACME_PROD[0]) == [{"status": "active"}]
        assert cells(app.screen.query_one("#keys"), ACME_DEV[0])[2] == "disabled"
        await pilot.press("d")  # already disabled: said so, nothing asked
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmScreen)
        assert app.errors[-1].endswith("is disabled already")
        await pilot.press("e")
        await settle(pilot)
        assert query(home, "SELECT status FROM keys WHERE id = ?", ACME_DEV[0]) == [{"status": "active"}]


async def test_action_errors_are_notifications_not_tracebacks(home: Path) -> None:
    app = make_app(home)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await settle(pilot)
        await pilot.press("n")
        await settle(pilot)
        app.screen.query_one("#f-customer").value = "nobody"
        await pilot.press("enter")
        await settle(pilot)
        assert app.errors and "no customer 'nobody'" in app.errors[-1]
        await pilot.press("b")
        await settle(pilot)
        app.screen.query_one("#f-limit").value = "a lot"
        await pilot.press("enter")
        await settle(pilot)
        assert "expected an amount in USD" in app.errors[-1]
        await pilot.press("n")
        await settle(pilot)
        app.screen.query_one("#f-customer").value = "acme"
        app.screen.query_one("#f-name").value = "acme-prod"  # taken
        await pilot.press("enter")
        await settle(pilot)
        assert "already exists" in app.errors[-1]
        assert app.is_running and app.return_code is None
        assert "exists" in screen_text(app)  # the toast


async def test_help_screen_and_quit(home: Path) -> None:
    from llmgw.tui.modals import HelpScreen

    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await settle(pilot)
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_database_gone_is_a_notification(tmp_path: Path) -> None:
    from llmgw.tui.app import TopApp

    app = TopApp(tmp_path / "missing.db", clock=lambda: NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("r")
        await settle(pilot)
        assert len(app.errors) == 1 and "no database" in app.errors[0]  # said once, not every second


# ---- snapshots ------------------------------------------------------------------------------------


def screen_text(app: Any) -> str:
    """The screen as plain text, as ``export_screenshot`` renders it (without the SVG)."""
    from rich.console import Console

    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def check_snapshot(app: Any, name: str) -> None:
    import textual

    text, svg = screen_text(app), app.export_screenshot(title="llmgw top")
    txt_path, svg_path = SNAPSHOTS / f"top_{name}.txt", SNAPSHOTS / f"top_{name}.svg"
    version_path = SNAPSHOTS / "textual-version.txt"
    if UPDATE:
        SNAPSHOTS.mkdir(exist_ok=True)
        txt_path.write_text(text)
        svg_path.write_text(svg)
        version_path.write_text(textual.__version__ + "\n")
        return
    assert txt_path.exists(), f"no snapshot {txt_path.name}: run with LLMGW_UPDATE_SNAPSHOTS=1"
    assert text == txt_path.read_text(), (
        f"screen differs from {txt_path.name} (if intended: LLMGW_UPDATE_SNAPSHOTS=1 pytest tests/test_tui.py)\n"
        + text)
    if version_path.read_text().strip() == textual.__version__:
        assert svg == svg_path.read_text(), f"SVG differs from {svg_path.name} (LLMGW_UPDATE_SNAPSHOTS=1 to accept)"


async def test_snapshot_main(home: Path) -> None:
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        check_snapshot(app, "main")


async def test_snapshot_main_wide(home: Path) -> None:
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        check_snapshot(app, "main_wide")


async def test_snapshot_customer_wide(home: Path) -> None:
    app = make_app(home)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        check_snapshot(app, "customer_wide")


async def test_snapshot_customer(home: Path) -> None:
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        check_snapshot(app, "customer")


async def test_snapshot_help(home: Path) -> None:
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot)
        check_snapshot(app, "help")


async def test_snapshot_confirm_disable(home: Path) -> None:
    app = make_app(home)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("d")
        await settle(pilot)
        check_snapshot(app, "confirm_disable")


# ---- the command ------------------------------------------------------------------------------------


def test_top_without_database_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from llmgw.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["top", "--home", str(tmp_path / "empty")])
    assert exc.value.code == 4
    err = capsys.readouterr().err
    assert err.startswith(f"llmgw: error: no llmgw home at {tmp_path / 'empty'}") and "Traceback" not in err
    assert not (tmp_path / "empty").exists()


def test_top_help_and_data_layer_do_not_import_textual(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import contextlib, io, json, sys
        import llmgw.tui.data, llmgw.tui.actions, llmgw.tui.fmt
        from llmgw.cli.main import main
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["top", "--help"])
            except SystemExit:
                pass
        sys.__stdout__.write(json.dumps("textual" in sys.modules))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("LLMGW_CONFIG", "LLMGW_HOME")}
    env["LLMGW_HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) is False
