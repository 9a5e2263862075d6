"""``llmgw top``: a live Textual dashboard over the llmgw database, safe next to a running daemon.

Owns the screens (customers with the live tail; one customer's teams and keys), the refresh loop
and the keyboard actions. Data comes from ``tui.data`` and changes go through ``tui.actions``.

Invariants:
- Reads never block input: every refresh runs ``data.snapshot`` in a thread (its own ``mode=ro``
  connection, one read transaction), at most one at a time; the UI applies the result.
- Writes are the governance functions on a short-lived writable connection, also in a thread. An
  ``LlmgwError`` (or an SQLite error) becomes an error notification, never a traceback.
- The clock is injectable (``clock`` returns epoch milliseconds): windows, "requests/min" and the
  title use it, so tests and snapshots are deterministic.
- The app leaves through ``App.exit`` (``q``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Sparkline, Static

from ..clock import now_ms
from ..errors import LlmgwError
from ..governance.budgets import ADJECTIVE
from ..store.conn import PgStore, Target
from ..units import usd
from . import actions, data, fmt
from .modals import MODAL_CSS, ConfirmScreen, FormScreen, HelpScreen, SecretScreen

LEVEL_STYLE = {"ok": "green", "warn": "yellow", "cap": "bold red"}
PERIOD_SUFFIX = {"day": "/d", "week": "/wk", "month": "/mo", "total": ""}

Column = tuple[str, str, int]  # key, label, width
Cell = str | Text

#: from this many terminal columns the tables use their wide layout (more columns, wider cells)
WIDE_FROM = 110

# (key, label, width) per layout; every cell function fills every key, a layout picks its columns
CUSTOMER_COLUMNS: dict[str, list[Column]] = {
    "narrow": [("customer", "customer", 10), ("bar", "used", 13), ("spent", "spent", 7), ("budget", "budget", 9),
               ("rpm", "req/m", 5), ("blocked", "blocked", 7), ("errors", "errors", 13)],
    "wide": [("customer", "customer", 12), ("bar", "used", 13), ("spent", "spent", 8), ("budget", "budget", 10),
             ("rpm", "req/m", 5), ("spark", f"$/h {data.SPARK_HOURS}h", 10), ("cache", "hit%", 4),
             ("blocked", "blocked", 7), ("errors", "errors", 24)],
}
TAIL_COLUMNS: dict[str, list[Column]] = {
    "narrow": [("time", "time", 8), ("customer", "customer", 9), ("model", "model", 14), ("status", "st", 3),
               ("tokens", "in/out", 9), ("cost", "cost", 7), ("cache", "cache", 5), ("latency", "lat", 6)],
    "wide": [("time", "time", 8), ("customer", "customer", 12), ("key", "key", 12), ("model", "model", 18),
             ("status", "st", 3), ("tokens", "in/out", 9), ("cost", "cost", 9), ("cache", "cache", 5),
             ("latency", "lat", 6), ("error", "error", 14)],
}
TEAM_COLUMNS: dict[str, list[Column]] = {
    "narrow": [("team", "team", 14), ("keys", "keys", 4), ("bar", "used", 13), ("spent", "spent", 7),
               ("budget", "budget", 10), ("requests", "req", 6), ("errors", "err", 4)],
    "wide": [("team", "team", 16), ("keys", "keys", 4), ("bar", "used", 13), ("spent", "spent", 8),
             ("budget", "budget", 10), ("requests", "req", 6), ("errors", "errors", 30)],
}
KEY_COLUMNS: dict[str, list[Column]] = {
    "narrow": [("key", "key", 13), ("team", "team", 8), ("status", "status", 8), ("bar", "used", 13),
               ("spent", "spent", 7), ("budget", "budget", 10), ("requests", "req", 5)],
    "wide": [("key", "key", 16), ("team", "team", 10), ("status", "status", 8), ("bar", "used", 13),
             ("spent", "spent", 8), ("budget", "budget", 10), ("requests", "req", 5), ("errors", "errors", 24)],
}


def layout_for(width: int) -> str:
    return "wide" if width >= WIDE_FROM else "narrow"


def pick(cells: dict[str, Cell], columns: list[Column]) -> list[Cell]:
    return [cells[key] for key, _, _ in columns]

APP_CSS = """
Screen {
    layout: vertical;
}
.title {
    height: 1;
    width: 100%;
    background: $primary-background;
    color: $text;
    padding: 0 1;
}
.section {
    height: 1;
    width: 100%;
    color: $text-muted;
    text-style: bold;
    padding: 0 1;
}
DataTable {
    height: 1fr;
    scrollbar-size-vertical: 1;
}
#customers {
    height: auto;
    max-height: 10;
}
#tail {
    height: 1fr;
}
#teams {
    height: auto;
    max-height: 6;
}
#keys {
    height: 1fr;
}
#budgetline {
    height: 2;
    padding: 0 1;
}
#spark {
    height: 2;
    margin: 0 1;
}
"""


# ---- cells ---------------------------------------------------------------------------------------


def right(text: str, style: str = "") -> Text:
    return Text(text, style=style, justify="right")


def budget_cells(row: dict[str, Any]) -> tuple[Cell, Cell, Cell]:
    """The bar (coloured at the warn level and at the cap), the spend and the budget of a scope row."""
    spent, b = int(row["spent_nanos"]), row["budget"]
    if b is None:
        return Text(fmt.DASH, style="dim"), right(fmt.money(spent)), right(fmt.DASH, "dim")
    limit = fmt.money(b["limit_nanos"])
    limit = limit[:-3] if limit.endswith(".00") else limit
    return (Text(fmt.bar(spent, b["limit_nanos"]), style=LEVEL_STYLE[b["level"]]),
            right(fmt.money(spent), LEVEL_STYLE[b["level"]] if b["level"] != "ok" else ""),
            right(limit + PERIOD_SUFFIX[b["period"]]))


def errors_cell(n: int) -> Text:
    return right(str(n), "bold red" if n else "dim")


def error_codes_cell(row: dict[str, Any], width: int) -> Text:
    """Why requests fail: the top error codes with counts (a dim dash when nothing failed)."""
    codes = row.get("error_codes") or []
    return Text(fmt.error_codes(codes, width), style="bold red" if codes else "dim")


def width_of(columns: list[Column], key: str) -> int:
    return next((w for k, _, w in columns if k == key), 0)


def customer_cells(c: dict[str, Any], columns: list[Column]) -> list[Cell]:
    bar, spent, budget = budget_cells(c)
    hot = any(c["cost_per_hour"])
    n_blocked, n_keys = c.get("keys_blocked", 0), c.get("keys_active", 0)
    limits = c.get("limits") or []
    if n_blocked:
        blocked = right(f"{n_blocked}/{n_keys}", "bold red")  # keys every request is refused for / active keys
    elif limits:  # a team or key budget is exhausted but no active key is cut off by it
        blocked = right(f"{len(limits)} cap", "yellow")
    else:
        blocked = right(fmt.DASH, "dim")
    return pick({
        "customer": fmt.clip(c["id"], width_of(columns, "customer")), "bar": bar, "spent": spent, "budget": budget,
        "rpm": right(str(c["rpm"]), "" if c["rpm"] else "dim"),
        "spark": Text(fmt.spark(c["cost_per_hour"]), style="cyan" if hot else "dim"),
        "cache": right(fmt.hit_rate(c["cache_hit_rate"]), "" if c["cache_lookups"] else "dim"),
        "blocked": blocked, "errors": error_codes_cell(c, width_of(columns, "errors")),
    }, columns)


def status_style(r: dict[str, Any]) -> str:
    if r["status"] >= 500 or (r["error_type"] and r["status"] < 400):
        return "bold red"
    return "yellow" if r["status"] >= 400 else "green"


def tail_cells(r: dict[str, Any], now: int, columns: list[Column]) -> list[Cell]:
    cache = r["cache"] or ""
    error = r.get("error_code") or r.get("error_type")
    return pick({
        "time": fmt.when(r["ts_ms"], now), "customer": fmt.clip(r["customer_id"], width_of(columns, "customer")),
        "key": fmt.clip(r.get("key_name") or r.get("key_id"), width_of(columns, "key")),
        "model": fmt.model(r["model"], width_of(columns, "model")),
        "status": Text(str(r["status"]), style=status_style(r)), "tokens": right(fmt.tokens(r)),
        "cost": right(fmt.money(int(r["cost_nanos"]))),
        "cache": Text(fmt.cache_label(r["cache"]), style="cyan" if cache.startswith("hit") else "dim"),
        "latency": right(fmt.latency(r["latency_ms"])),
        "error": Text(fmt.clip(fmt.error_label(error), width_of(columns, "error")) if error else "",
                      style=status_style(r)),
    }, columns)


def team_cells(t: dict[str, Any], columns: list[Column]) -> list[Cell]:
    bar, spent, budget = budget_cells(t)
    return pick({"team": fmt.clip(t["id"], width_of(columns, "team")), "keys": right(str(t["keys"])), "bar": bar,
                 "spent": spent, "budget": budget, "requests": right(str(t["requests"])),
                 "errors": (error_codes_cell(t, width_of(columns, "errors")) if width_of(columns, "errors") > 4
                            else errors_cell(t["errors"]))}, columns)


def key_status(k: dict[str, Any]) -> Text:
    """``blocked`` (red) for an active key every request is refused for, else its status."""
    if k["status"] == "active" and k.get("blocked"):
        return Text("blocked", style="bold red")
    return Text(k["status"], style={"active": "green", "disabled": "yellow", "revoked": "red"}.get(k["status"], ""))


def key_cells(k: dict[str, Any], columns: list[Column]) -> list[Cell]:
    bar, spent, budget = budget_cells(k)
    return pick({"key": fmt.clip(k["name"] or k["display"], width_of(columns, "key")),
                 "team": fmt.clip(k["team_id"], width_of(columns, "team")), "status": key_status(k),
                 "bar": bar, "spent": spent, "budget": budget, "requests": right(str(k["requests"])),
                 "errors": error_codes_cell(k, width_of(columns, "errors"))}, columns)


def ensure_columns(table: DataTable[Cell], columns: list[Column]) -> None:
    """Give ``table`` these columns (replacing others: the layout changed with the terminal's width)."""
    if [c.value for c in table.columns] != [key for key, _, _ in columns]:
        table.clear(columns=True)
        for key, label, width in columns:
            table.add_column(label, width=width, key=key)


def fill(table: DataTable[Cell], columns: list[Column], rows: list[tuple[str, list[Cell]]]) -> None:
    """Show ``rows`` (key, cells) in ``table``, keeping the selected row when it is still there."""
    ensure_columns(table, columns)
    keys = [k for k, _ in rows]
    if keys == [rk.value for rk in table.rows]:
        for k, cells in rows:
            for (ckey, _, _), value in zip(columns, cells, strict=True):
                table.update_cell(k, ckey, value)
        return
    chosen = selected_key(table)
    table.clear()
    for k, cells in rows:
        table.add_row(*cells, key=k)
    if chosen in keys:
        table.move_cursor(row=keys.index(chosen), animate=False)


def selected_key(table: DataTable[Cell]) -> str | None:
    """The key of the row under the cursor (None for an empty table)."""
    if table.row_count == 0:
        return None
    return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value


# ---- screens -------------------------------------------------------------------------------------


class CustomerTable(DataTable[Cell]):
    """The customers table: Enter opens the selected customer (shown in the footer)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Open")]


class MainScreen(Screen[None]):
    """All customers (spend vs budget, traffic, cache, errors) over the live tail of requests."""

    ready = False
    width_layout = "narrow"  # or "wide": the terminal's width decides (``layout_for``)
    _tail_id: int | None = None  # the ledger id the tail was last drawn at

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "new_key", "New key"), Binding("b", "budget", "Budget"),
    ]
    AUTO_FOCUS = "#customers"

    def compose(self) -> ComposeResult:
        yield Static("llmgw top", id="title", classes="title", markup=False)
        yield CustomerTable(id="customers", cursor_type="row", cell_padding=1)
        yield Static("Latest requests", classes="section", markup=False)
        yield DataTable(id="tail", cursor_type="row", cell_padding=1, zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.width_layout = layout_for(self.app.size.width)
        ensure_columns(self.query_one("#customers", DataTable), CUSTOMER_COLUMNS[self.width_layout])
        ensure_columns(self.query_one("#tail", DataTable), TAIL_COLUMNS[self.width_layout])
        self.ready = True
        if self.top.snap is not None:
            self.show(self.top.snap)

    def on_resize(self, event: events.Resize) -> None:
        if self.ready and layout_for(event.size.width) != self.width_layout:
            self.width_layout = layout_for(event.size.width)
            self._tail_id = None  # redraw the tail in the new columns
            if self.top.snap is not None:
                self.show(self.top.snap)

    @property
    def top(self) -> TopApp:
        app = self.app
        assert isinstance(app, TopApp)
        return app

    def show(self, snap: dict[str, Any]) -> None:
        if not self.ready:
            return  # on_mount shows the latest snapshot
        cs = snap["customers"]
        rpm = sum(c["rpm"] for c in cs)
        hour = sum(c["cost_per_hour"][-1] for c in cs)
        self.query_one("#title", Static).update(
            f"llmgw top  {fmt.stamp(snap['now_ms'])}  {len(cs)} customers  {rpm} req/min  {fmt.money(hour)} this hour")
        cols = CUSTOMER_COLUMNS[self.width_layout]
        fill(self.query_one("#customers", DataTable), cols, [(c["id"], customer_cells(c, cols)) for c in cs])
        tail = self.query_one("#tail", DataTable)
        if snap["last_id"] != self._tail_id:
            self._tail_id = snap["last_id"]
            tcols = TAIL_COLUMNS[self.width_layout]
            fill(tail, tcols, [(str(r["id"]), tail_cells(r, snap["now_ms"], tcols)) for r in snap["tail"]])

    def selected_customer(self) -> str | None:
        return selected_key(self.query_one("#customers", DataTable))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "customers" and event.row_key.value is not None:
            event.stop()
            self.top.open_customer(event.row_key.value)

    def action_new_key(self) -> None:
        self.top.new_key(self.selected_customer())

    def action_budget(self) -> None:
        cid = self.selected_customer()
        if cid is None:
            self.top.error("no customer selected (create one with: llmgw customers create ID)")
            return
        self.top.edit_budget(cid)


class CustomerScreen(Screen[None]):
    """One customer: its budget, cost per hour, teams and keys (Escape goes back)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"), Binding("n", "new_key", "New key"), Binding("b", "budget", "Budget"),
        Binding("d", "disable", "Disable key"), Binding("e", "enable", "Enable key", show=False),
    ]
    AUTO_FOCUS = "#keys"

    def __init__(self, customer_id: str) -> None:
        super().__init__()
        self.customer_id = customer_id
        self.keys: dict[str, dict[str, Any]] = {}
        self.ready = False
        self.width_layout = "narrow"

    @property
    def top(self) -> TopApp:
        app = self.app
        assert isinstance(app, TopApp)
        return app

    def compose(self) -> ComposeResult:
        yield Static(f"customer {self.customer_id}", id="title", classes="title", markup=False)
        yield Static("", id="budgetline")
        yield Static("cost per hour", id="sparktitle", classes="section", markup=False)
        yield Sparkline([], id="spark")
        yield Static("Teams", classes="section", markup=False)
        yield DataTable(id="teams", cursor_type="row", cell_padding=1)
        yield Static("Keys", classes="section", markup=False)
        yield DataTable(id="keys", cursor_type="row", cell_padding=1)
        yield Footer()

    def on_mount(self) -> None:
        self.width_layout = layout_for(self.app.size.width)
        ensure_columns(self.query_one("#teams", DataTable), TEAM_COLUMNS[self.width_layout])
        ensure_columns(self.query_one("#keys", DataTable), KEY_COLUMNS[self.width_layout])
        self.ready = True
        if self.top.snap is not None:
            self.show(self.top.snap)

    def on_resize(self, event: events.Resize) -> None:
        if self.ready and layout_for(event.size.width) != self.width_layout:
            self.width_layout = layout_for(event.size.width)
            if self.top.snap is not None:
                self.show(self.top.snap)

    def show(self, snap: dict[str, Any]) -> None:
        if not self.ready or snap.get("detail_for") != self.customer_id:
            return  # read before this screen opened
        detail = snap["detail"]
        if detail is None:
            self.top.error(f"customer {self.customer_id} is gone")
            self.action_back()
            return
        c = detail["customer"]
        name = f" ({c['name']})" if c["name"] else ""
        self.query_one("#title", Static).update(
            f"customer {c['id']}{name}  {fmt.stamp(snap['now_ms'])}  {c['rpm']} req/min")
        self.query_one("#budgetline", Static).update(budget_line(c))
        hours = c["cost_per_hour"]
        self.query_one("#sparktitle", Static).update(
            f"cost per hour, last {len(hours)} h  (max {fmt.money(max(hours, default=0))}, "
            f"this hour {fmt.money(hours[-1] if hours else 0)})")
        self.query_one("#spark", Sparkline).data = [float(h) for h in hours]
        tcols, kcols = TEAM_COLUMNS[self.width_layout], KEY_COLUMNS[self.width_layout]
        fill(self.query_one("#teams", DataTable), tcols, [(t["id"], team_cells(t, tcols)) for t in detail["teams"]])
        self.keys = {k["id"]: k for k in detail["keys"]}
        fill(self.query_one("#keys", DataTable), kcols, [(k["id"], key_cells(k, kcols)) for k in detail["keys"]])

    def selected_key(self) -> dict[str, Any] | None:
        kid = selected_key(self.query_one("#keys", DataTable))
        return self.keys.get(kid) if kid else None

    def action_back(self) -> None:
        self.top.close_customer()

    def action_new_key(self) -> None:
        self.top.new_key(self.customer_id)

    def action_budget(self) -> None:
        self.top.edit_budget(self.customer_id)

    def action_disable(self) -> None:
        k = self.selected_key()
        if k is None:
            self.top.error("no key selected")
            return
        if k["status"] != "active":
            self.top.error(f"key {k['name'] or k['id']} is {k['status']} already")
            return
        self.top.disable_key(k)

    def action_enable(self) -> None:
        k = self.selected_key()
        if k is None:
            self.top.error("no key selected")
            return
        self.top.enable_key(k)


def budget_line(c: dict[str, Any]) -> Text:
    """Two lines: the budget bar (coloured by level) with spend of limit, then this window's counts."""
    spent, b = int(c["spent_nanos"]), c["budget"]
    counts = (f"this {c['period']}: {c['requests']} requests, {c['errors']} errors, "
              f"cache hits {fmt.hit_rate(c['cache_hit_rate'])}")
    if b is None:
        return Text(f"no budget: {fmt.money(spent)} spent this month\n" + counts)
    kind = "hard" if b["hard"] else "soft"
    resets = f"resets {b['resets'][:10]} · " if b["resets"] else ""
    text = Text()
    text.append(f"{fmt.bar(spent, b['limit_nanos'], width=16)} ", style=LEVEL_STYLE[b["level"]])
    text.append(f"{fmt.money(spent)} of {fmt.money(b['limit_nanos'])} {ADJECTIVE[b['period']]} "
                f"({kind}, warn at {b['warn_pct']}%)\n{resets}{counts}")
    return text


# ---- the app -------------------------------------------------------------------------------------


class TopApp(App[None]):
    """The ``llmgw top`` dashboard over the database at ``db_path``."""

    TITLE = "llmgw top"
    ENABLE_COMMAND_PALETTE = False
    CSS = APP_CSS + MODAL_CSS
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"), Binding("question_mark", "help", "Help"),
        Binding("r", "refresh", "Refresh", show=False),
    ]

    def __init__(self, db_path: Target, *, refresh: float = 1.0, clock: Callable[[], int] = now_ms) -> None:
        super().__init__()
        self.db_path = db_path if isinstance(db_path, PgStore) else Path(db_path)
        self.refresh_seconds = refresh
        self.clock = clock
        self.drill: str | None = None
        self.snap: dict[str, Any] | None = None
        self.errors: list[str] = []  # every error shown, for tests and the log
        self._loading = False
        self._again = False
        self._last_load_error: str | None = None

    def get_default_screen(self) -> Screen[Any]:
        return MainScreen()

    def on_mount(self) -> None:
        self.set_interval(self.refresh_seconds, self.action_refresh)
        self.action_refresh()

    # -- refresh ------------------------------------------------------------------------------------

    def action_refresh(self) -> None:
        """Read a new snapshot in a thread (one at a time; a request meanwhile runs right after)."""
        if self._loading:
            self._again = True
            return
        self._loading = True
        self.run_worker(self._load(self.drill), group="refresh")

    async def _load(self, drill: str | None) -> None:
        try:
            snap = await asyncio.to_thread(self._read, drill)
        except (LlmgwError, sqlite3.Error) as e:
            msg = e.message if isinstance(e, LlmgwError) else f"database: {e}"
            if msg != self._last_load_error:  # once, not every second
                self._last_load_error = msg
                self.error(msg)
            snap = None
        finally:
            self._loading = False
        if snap is not None:
            self._last_load_error = None
            self.apply(snap)
        if self._again:
            self._again = False
            self.action_refresh()

    def _read(self, drill: str | None) -> dict[str, Any]:
        conn = data.open_readonly(self.db_path)
        try:
            snap = data.snapshot(conn, self.clock(), customer_id=drill)
        finally:
            conn.close()
        snap["detail_for"] = drill
        return snap

    def apply(self, snap: dict[str, Any]) -> None:
        self.snap = snap
        for screen in self.screen_stack:
            if isinstance(screen, MainScreen | CustomerScreen):
                try:
                    screen.show(snap)
                except NoMatches:  # a read that finished while the app or the screen is being torn down
                    pass  # (its widgets are gone; the screens' content is checked by the snapshot tests)

    # -- navigation ---------------------------------------------------------------------------------

    def open_customer(self, customer_id: str) -> None:
        self.drill = customer_id
        self.push_screen(CustomerScreen(customer_id))
        self.action_refresh()  # a read in flight has no detail for this customer: one more follows it

    def close_customer(self) -> None:
        self.drill = None
        if isinstance(self.screen, CustomerScreen):
            self.pop_screen()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # -- actions --------------------------------------------------------------------------------------

    def error(self, message: str) -> None:
        self.errors.append(message)
        self.notify(message, title="error", severity="error", markup=False, timeout=8)

    def act(self, fn: Callable[[], Any], done: Callable[[Any], None]) -> None:
        """Run the write ``fn`` in a thread; ``done(result)`` on success, a notification on failure."""

        async def run() -> None:
            try:
                result = await asyncio.to_thread(fn)
            except LlmgwError as e:
                self.error(e.message)
                return
            except sqlite3.Error as e:
                self.error(f"database: {e}")
                return
            done(result)
            self.action_refresh()

        self.run_worker(run(), group="action")

    def new_key(self, customer_id: str | None) -> None:
        fields = [("customer", "customer", customer_id or "", "customer id"),
                  ("team", "team", "", "optional team id"), ("name", "name", "", "optional, unique"),
                  ("models", "models", "", "optional: openai/gpt-4o-mini,anthropic/*"),
                  ("budget", "budget USD/mo", "", "optional hard monthly budget, e.g. 50")]

        def submitted(values: dict[str, str] | None) -> None:
            if values is None:
                return
            self.act(lambda: actions.create_key(self.db_path, customer=values["customer"], team=values["team"],
                                                name=values["name"], models=values["models"],
                                                budget_usd=values["budget"]),
                     lambda res: self._show_secret(*res))

        self.push_screen(FormScreen("New virtual key", fields, ok="Create"), submitted)

    def _show_secret(self, secret: str, key: dict[str, Any]) -> None:
        self.push_screen(SecretScreen(secret, key))

    def edit_budget(self, customer_id: str) -> None:
        current = self._customer_budget(customer_id)
        limit = usd(current["limit_nanos"], dollar=False) if current else ""  # exact: it is saved as typed
        period = current["period"] if current else "month"
        warn = str(current["warn_pct"]) if current else "80"
        fields = [("limit", "limit USD", limit, "e.g. 200 or 12.50"),
                  ("period", "period", period, "day, week, month or total"),
                  ("warn", "warn at %", warn, "1-100")]
        verb = "Change" if current else "Set"

        def submitted(values: dict[str, str] | None) -> None:
            if values is None:
                return

            def done(res: tuple[dict[str, Any], bool]) -> None:
                row, created = res
                self.notify(f"{'set' if created else 'updated'} {row['period']} budget of {customer_id}: "
                            f"{fmt.money(row['limit_nanos'])}", markup=False)

            self.act(lambda: actions.set_budget(self.db_path, "customer", customer_id, limit_usd=values["limit"],
                                                period=values["period"], warn_pct=values["warn"]), done)

        self.push_screen(FormScreen(f"{verb} the budget of customer {customer_id}", fields, ok="Save",
                                    hint="An existing budget of that period is updated in place (hard/soft kept)."),
                         submitted)

    def _customer_budget(self, customer_id: str) -> dict[str, Any] | None:
        for c in (self.snap or {}).get("customers", []):
            if c["id"] == customer_id and c["budget"] is not None:
                return dict(c["budget"])
        return None

    def disable_key(self, key: dict[str, Any]) -> None:
        label = key["name"] or key["display"]

        def answered(yes: bool | None) -> None:
            if yes:
                self.act(lambda: actions.set_key_status(self.db_path, key["id"], "disabled"),
                         lambda k: self.notify(f"disabled key {label}", markup=False))

        self.push_screen(ConfirmScreen(f"Disable key {label} ({key['id']})? Requests with it will get 401 "
                                       "until it is enabled again.", yes="Disable"), answered)

    def enable_key(self, key: dict[str, Any]) -> None:
        label = key["name"] or key["display"]
        self.act(lambda: actions.set_key_status(self.db_path, key["id"], "active"),
                 lambda k: self.notify(f"enabled key {label}", markup=False))
