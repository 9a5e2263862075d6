"""The finance page in a real browser: Debian's Chromium, headless, driven by Playwright (PyPI,
with the system browser through ``executable_path``: nothing is downloaded), against the real
daemon with real ledger rows. Log in, read the customer table, open a customer, download CSVs and
compare them with ``llmgw report --format csv``, and take screenshots.

One browser for the module. Skipped (with the reason) when Chromium or Playwright is missing,
unless ``UI_REQUIRE_BROWSER=1`` (CI sets it), where a missing browser fails instead."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Daemon
from llmgw import paths, reports
from llmgw.store.db import connect
from llmgw.units import usd
from ui_home import NOW_MS, UI_CONFIG, UI_ENV, UI_TOKEN, build


def _chromium() -> str | None:
    return os.environ.get("UI_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _unavailable(reason: str) -> None:
    if os.environ.get("UI_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (UI_REQUIRE_BROWSER=1: the browser tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright not installed (pip install playwright; no browser download needed)")
    exe = _chromium()
    if exe is None:
        _unavailable("chromium not installed (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def ui(daemon_factory: Any, tmp_path: Path) -> Daemon:
    home = tmp_path / "uihome"
    d = daemon_factory(UI_CONFIG, UI_ENV, home=home)
    build(home)
    d.set_clock(NOW_MS)
    return d


@pytest.fixture
def page(browser: Any, ui: Daemon) -> Iterator[Any]:
    ctx = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    problems: list[str] = []  # any CSP violation or script error fails the test
    failed: list[tuple[int, str]] = []  # answers >= 400 (the console reports each as "Failed to load")
    pg.on("console", lambda m: problems.append(m.text)
          if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    pg.on("pageerror", lambda e: problems.append(str(e)))
    pg.on("response", lambda r: failed.append((r.status, r.url.removeprefix(ui.url))) if r.status >= 400 else None)
    pg.problems, pg.failed = problems, failed
    try:
        yield pg
    finally:
        ctx.close()


def cli_report(d: Daemon, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "llmgw", "report", "--format", "csv", "--home", str(d.home), *args],
                       capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def download(pg: Any, selector: str) -> str:
    with pg.expect_download() as info:
        pg.click(selector)
    return Path(info.value.path()).read_text()


def ready(pg: Any) -> None:
    pg.wait_for_selector("body[data-ready]", state="attached")
    assert pg.get_attribute("body", "data-ready") == "1", pg.inner_text("#status")


def test_finance_page_in_chromium(page: Any, ui: Daemon, tmp_path: Path) -> None:
    pg = page
    pg.goto(ui.url + "/")
    assert pg.url == ui.url + "/ui/login"  # / -> /ui -> the login form
    pg.fill("#token", "wrong token")
    pg.click("#login-button")
    assert "not valid" in pg.inner_text("body.login")
    pg.fill("#token", UI_TOKEN)
    pg.click("#login-button")
    pg.wait_for_url(ui.url + "/ui")
    ready(pg)
    cookie = next(c for c in pg.context.cookies() if c["name"] == "llmgw_ui")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert pg.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read the session

    # the customer table: every row and the total as the report has them (cents on the page)
    conn = connect(paths.db_path(ui.home))
    try:
        rep = reports.report(conn, by="customer", window=reports.parse_period("2026-12"))
    finally:
        conn.close()
    rows = pg.query_selector_all("#customers-table tbody tr")
    assert len(rows) == len(rep.groups) == 3
    for tr, g in zip(rows, rep.groups, strict=True):
        cells = [td.inner_text() for td in tr.query_selector_all("td")]
        assert cells[0] == g["id"] and cells[1] == g["name"]
        assert tr.query_selector("td.cost").inner_text() == usd(int(g["cost_nanos"]), places=2)
        assert tr.query_selector("td.cost").get_attribute("title") == f"{usd(int(g['cost_nanos']))} (exact)"
    total = pg.inner_text("#customers-table tfoot td.cost")
    assert total == usd(rep.total["cost_nanos"], places=2)
    assert "EUR" in pg.inner_text("#customers-table thead") and "converted" in pg.inner_text("#currency-note")
    assert "Globex <Inc>" in pg.inner_text("#customers-table")  # names are text, never markup
    assert len(pg.query_selector_all("#customers-chart rect")) == 3
    assert pg.query_selector("#customers-table .meter .fill") is not None

    # the CSV download is `llmgw report --format csv`, byte for byte
    assert download(pg, "#customers-csv") == cli_report(ui, "--by", "customer", "--period", "2026-12")
    shot = tmp_path / "overview.png"
    pg.screenshot(path=str(shot), full_page=True)

    # one customer
    pg.click("#customers-table a:text-is('acme')")
    pg.wait_for_url("**/ui?customer=acme")
    ready(pg)
    assert pg.inner_text("#customer-title") == "Acme Corp (acme)"
    acme = next(g for g in rep.groups if g["id"] == "acme")
    assert pg.inner_text("#card-spend .card-value").startswith(usd(int(acme["cost_nanos"]), places=2))
    assert len(pg.query_selector_all("#c-daily-table tbody tr")) == 31
    assert len(pg.query_selector_all("#daily-chart rect")) == 31
    assert pg.inner_text("#c-daily-table tfoot td.cost") == usd(int(acme["cost_nanos"]), places=2)
    assert "2027-01-01" in pg.inner_text("#c-budgets-table")
    assert download(pg, "#c-models-csv") == cli_report(ui, "--by", "model", "--period", "2026-12", "--customer", "acme")
    assert download(pg, "#c-keys-csv") == cli_report(ui, "--by", "key", "--period", "2026-12", "--customer", "acme")
    daily = list(csv.DictReader(io.StringIO(download(pg, "#c-daily-csv"))))
    assert int(daily[-1]["cost_nanos"]) == acme["cost_nanos"]
    converted = list(csv.DictReader(io.StringIO(download(pg, "#c-daily-csv-converted"))))
    assert converted[-1]["usd_to_EUR_rate"] == "0.92"
    shot2 = tmp_path / "customer.png"
    pg.screenshot(path=str(shot2), full_page=True)

    # the window picker: last 30 days, then a custom range (the "to" day included)
    pg.select_option("#mode", "last30")
    pg.click("#show")
    pg.wait_for_url("**/ui?customer=acme&last=30")
    ready(pg)
    assert len(pg.query_selector_all("#c-daily-table tbody tr")) == 30
    pg.select_option("#mode", "custom")
    pg.fill("#since", "2026-11-28")
    pg.fill("#until", "2026-12-02")
    pg.click("#show")
    pg.wait_for_url("**/ui?customer=acme&since=2026-11-28&until=2026-12-03")
    ready(pg)
    assert [td.inner_text() for td in pg.query_selector_all("#c-daily-table tbody tr td:first-child")] == [
        "2026-11-28", "2026-11-29", "2026-11-30", "2026-12-01", "2026-12-02"]
    assert download(pg, "#c-models-csv") == cli_report(ui, "--by", "model", "--since", "2026-11-28",
                                                       "--until", "2026-12-03", "--customer", "acme")
    pg.click("#back")
    ready(pg)
    assert pg.url.endswith("/ui?since=2026-11-28&until=2026-12-03")

    # log out: the page is gone until the next login
    pg.click(".logout button")
    pg.wait_for_url(ui.url + "/ui/login")
    pg.goto(ui.url + "/ui")
    assert pg.url == ui.url + "/ui/login"

    assert pg.problems == []  # no CSP violation, no script error
    # the only failed answers: the wrong token, and the favicon the browser asks for on its own
    assert {f for f in pg.failed if f[1] != "/favicon.ico"} == {(401, "/ui/login")}
    for p in (shot, shot2):
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
