"""Ledger roll-ups, retention and export (issue: the ledger at production scale).

Real SQLite files, the real ledger writer process, the real daemon and the CLI as a subprocess:
reports and budget spend read roll-ups and stay equal to the raw ``SUM`` to the nano-dollar, at any
window and at any roll-up watermark; an upgraded home (raw rows, old schema) is exact after its
first start; prune keeps every report unchanged and shrinks the file; export round-trips."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import start_daemon, wait_until
from llmgw import paths, reports
from llmgw.errors import UsageError
from llmgw.governance.budgets import ledger_spend
from llmgw.server.app import STATE
from llmgw.store import db, retention, rollups
from llmgw.store.ledger import LEDGER_COLUMNS, as_tuple, insert_sql, normalise_row
from llmgw.units import DAY_MS, parse_time, window

HOUR = 3_600_000
START = parse_time("2026-08-01", "t")  # 2026-08-01T00:00Z
SPAN = 75 * DAY_MS  # August, September and half of October
NOW = parse_time("2026-10-20T12:34:56.789Z", "t")


def make_rows(seed: int, n: int, *, start: int = START, span: int = SPAN) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    who = [("acme", "captioning", "key_acme"), ("globex", None, "key_globex"), (None, None, "key_internal"),
           (None, None, None), ("acme", None, "key_acme2")]
    out = []
    for i in range(n):
        customer, team, key = rnd.choice(who)
        status = rnd.choice([200, 200, 200, 429, 502, 499])
        out.append({
            "request_id": f"req_{seed}_{i}", "ts_ms": start + rnd.randrange(span), "route": "/v1/chat/completions",
            "model": rnd.choice(["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5", None]),
            "provider": rnd.choice(["openai", "anthropic", None]), "status": status,
            "outcome": "ok" if status < 400 else "error",
            "error_type": rnd.choice([None, "stream_error"]) if status == 200 else "upstream_error",
            "error_code": rnd.choice([None, "timeout"]), "prompt_tokens": rnd.randrange(5000),
            "completion_tokens": rnd.randrange(500), "cached_tokens": rnd.randrange(100),
            "cache_write_tokens": rnd.randrange(50),
            "cost_nanos": rnd.choice([0, 1, rnd.randrange(10**6), rnd.randrange(10**12), 2**53 + 1]),
            "saved_nanos": rnd.choice([0, rnd.randrange(10**9)]), "key_id": key, "team_id": team, "customer_id": customer,
            "cache": rnd.choice([None, "miss", "hit-exact", "hit-semantic"]),
            "request_body": "{}" if rnd.random() < 0.5 else None, "response_body": "{}" if rnd.random() < 0.5 else None,
        })
    return out


def insert(conn: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    with conn:
        conn.executemany(insert_sql(), [as_tuple(normalise_row(r)) for r in rows])


def raw_totals(conn: sqlite3.Connection, since: int | None, until: int | None, extra: str = "") -> dict[str, int]:
    where = ["1"]
    if since is not None:
        where.append(f"ts_ms >= {since}")
    if until is not None:
        where.append(f"ts_ms < {until}")
    if extra:
        where.append(extra)
    r = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(status >= 400 OR error_type IS NOT NULL), 0), COALESCE(SUM(prompt_tokens), 0),"
        " COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(cost_nanos), 0),"
        " COALESCE(SUM(cache LIKE 'hit-%'), 0), COALESCE(SUM(saved_nanos), 0)"
        f" FROM ledger WHERE {' AND '.join(where)}").fetchone()
    keys = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_nanos", "cache_hits",
            "saved_nanos")
    return dict(zip(keys, (int(v) for v in r), strict=True))


def raw_groups(conn: sqlite3.Connection, col: str, since: int | None, until: int | None) -> dict[Any, tuple[int, int]]:
    where = ["1"]
    if since is not None:
        where.append(f"ts_ms >= {since}")
    if until is not None:
        where.append(f"ts_ms < {until}")
    return {r[0]: (int(r[1]), int(r[2])) for r in conn.execute(
        f"SELECT {col}, COUNT(*), SUM(cost_nanos) FROM ledger WHERE {' AND '.join(where)} GROUP BY {col}")}


def random_window(rnd: random.Random) -> tuple[int | None, int | None]:
    def edge() -> int:
        t = START - DAY_MS + rnd.randrange(SPAN + 2 * DAY_MS)
        # anywhere, on an hour, on a midnight, on the 1st of a month
        return rnd.choice([t, t - t % HOUR, t - t % DAY_MS, window("month", t)[0]])

    s = edge() if rnd.random() < 0.85 else None
    u = edge() if rnd.random() < 0.85 else None
    if s is not None and u is not None and s >= u:
        s, u = u, (s if s > u else None)
    return s, u


@pytest.fixture(scope="module")
def ledger_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 rows over 75 days, the first 2,000 rolled up, the last 1,000 past the watermark."""
    path = tmp_path_factory.mktemp("rollups") / "llmgw.db"
    conn = db.open_db(path)
    insert(conn, make_rows(1, 2000))
    rollups.catch_up(conn, chunk=700)  # several chunks
    insert(conn, make_rows(2, 1000))
    assert rollups.pending(conn) == 1000
    conn.close()
    return path


def aligned(src: str, t: int | None) -> bool:
    if t is None or src == "raw":
        return True
    return window("month", t)[0] == t if src == "month" else t % (HOUR if src == "hour" else DAY_MS) == 0


def test_spans_cover_the_window_exactly_once() -> None:
    rnd = random.Random(3)
    for _ in range(2000):
        s, u = random_window(rnd)
        pieces = rollups.spans(s, u)
        for src, lo, hi in pieces:
            assert aligned(src, lo) and aligned(src, hi), (src, lo, hi)
        ordered = sorted(pieces, key=lambda p: -(2**63) if p[1] is None else p[1])
        assert (ordered[0][1] if ordered else s) == s and (ordered[-1][2] if ordered else u) == (u if pieces else u)
        for a, b in zip(ordered, ordered[1:], strict=False):
            assert a[2] == b[1]  # contiguous, no overlap
    assert rollups.spans(START + 5, START + 10) == [("raw", START + 5, START + 10)]
    assert rollups.spans(START, START + 2 * DAY_MS) == [("day", START, START + 2 * DAY_MS)]
    sept, nov = parse_time("2026-09-01", "t"), parse_time("2026-11-01", "t")
    assert rollups.spans(START - HOUR, nov) == [("hour", START - HOUR, START), ("month", START, nov)]
    assert rollups.spans(START + DAY_MS, None) == [("day", START + DAY_MS, sept), ("month", sept, None)]
    assert rollups.spans(START + HOUR, START + DAY_MS + 30) == [
        ("raw", START + DAY_MS, START + DAY_MS + 30), ("hour", START + HOUR, START + DAY_MS)]


def test_reports_equal_the_raw_sum_at_any_window(ledger_db: Path) -> None:
    conn = db.connect(ledger_db, readonly=True)
    rnd = random.Random(11)
    for i in range(150):
        s, u = random_window(rnd)
        by = ("customer", "team", "key", "model", "provider")[i % 5]
        rep = reports.report(conn, by=by, window=reports.Window(s, u, "w"))
        assert {k: rep.total[k] for k in raw_totals(conn, s, u)} == raw_totals(conn, s, u), (s, u)
        col = reports.BY[by][0]
        assert {g["id"]: (g["requests"], g["cost_nanos"]) for g in rep.groups} == raw_groups(conn, col, s, u)
    conn.close()


def test_customer_filter_and_budget_spend_equal_the_raw_sum(ledger_db: Path) -> None:
    conn = db.connect(ledger_db, readonly=True)
    spend = ledger_spend(conn)
    for since in (START, START + 31 * DAY_MS, START + 40 * DAY_MS + 7 * HOUR, 0):
        for scope, col, ident in (("customer", "customer_id", "acme"), ("team", "team_id", "captioning"),
                                  ("key", "key_id", "key_globex"), ("customer", "customer_id", "nobody")):
            assert spend(scope, ident, since) == raw_totals(conn, since, None, f"{col} = '{ident}'")["cost_nanos"]
    rep = reports.report(conn, by="key", window=reports.Window(START + 3 * HOUR + 17, None, "w"), customer="acme")
    assert rep.total == raw_totals(conn, START + 3 * HOUR + 17, None, "customer_id = 'acme'")
    conn.close()


def test_rolling_up_moves_no_number(tmp_path: Path) -> None:
    """The same windows before and after each roll-up step, and after a rebuild."""
    conn = db.open_db(tmp_path / "llmgw.db")
    insert(conn, make_rows(5, 1500))
    rnd = random.Random(2)
    windows = [random_window(rnd) for _ in range(25)]

    def snapshot() -> list[dict[str, int]]:
        return [reports.report(conn, by="customer", window=reports.Window(s, u, "w")).total for s, u in windows]

    before = snapshot()
    assert before == [raw_totals(conn, s, u) for s, u in windows]
    while True:
        with db.transaction(conn):
            if not rollups.step(conn, 400):
                break
        assert snapshot() == before
    assert rollups.verify(conn) == []
    # a damaged roll-up is found, and a rebuild mends it
    conn.execute(
        "UPDATE ledger_daily SET cost_nanos = cost_nanos + 1 WHERE start_ms = (SELECT MIN(start_ms) FROM ledger_daily)")
    conn.commit()
    assert any("ledger_daily.cost_nanos" in str(m) for m in rollups.verify(conn))
    with db.transaction(conn):
        rollups.rebuild(conn)
    assert rollups.verify(conn) == [] and snapshot() == before
    conn.close()


def _old_home(home: Path, rows: list[dict[str, Any]]) -> None:
    """A home as the version before roll-ups left it: migrations up to m006, rows inserted in SQL."""
    from sqlite_utils import Database, Migrations

    home.mkdir(parents=True)
    conn = db.connect(paths.db_path(home))
    migrations = Migrations(db.MIGRATION_SET)
    for fn in db.MIGRATIONS[: db.MIGRATIONS.index(db.m007_rollups)]:
        migrations()(fn)
    migrations.apply(Database(conn))
    # only the columns that home had (later migrations add more, e.g. m008_cache_audit's cache_entry_id)
    have = {r[1] for r in conn.execute("PRAGMA table_info(ledger)")}
    names = [c for c in LEDGER_COLUMNS if c in have]
    with conn:
        conn.executemany(f"INSERT INTO ledger ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                         [tuple(normalise_row(r)[c] for c in names) for r in rows])
    now = "2026-08-01T00:00:00+00:00"
    with conn:
        conn.execute("INSERT INTO customers (id, name, created_at) VALUES ('acme', 'Acme', ?)", (now,))
        conn.execute("INSERT INTO budgets (id, scope, scope_id, period, limit_nanos, hard, created_at, updated_at)"
                     " VALUES ('bud_acme', 'customer', 'acme', 'total', ?, 1, ?, ?)", (10**18, now, now))
    assert "ledger_daily" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()


def _cli(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMGW_")}
    env.update(LLMGW_HOME=str(home), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "llmgw", *args], env=env, capture_output=True, text=True,
                          timeout=120, input=stdin)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def test_an_upgraded_home_is_exact_after_its_first_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rows = make_rows(9, 4000)
    _old_home(home, rows)
    acme = sum(r["cost_nanos"] for r in rows if r["customer_id"] == "acme")
    # a read command before any start: no migration, still exact (raw rows)
    res = _cli(home, "report", "--format", "json", "--since", "2026-01-01")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["total"]["cost_nanos"] == sum(r["cost_nanos"] for r in rows)
    d = start_daemon(home)
    try:
        conn = d.db()
        assert rollups.pending(conn) == 0  # caught up before the first request
        assert rollups.verify(conn) == []
        book = d.gateway.budgets
        assert book.status("bud_acme", d.clock())["spent_nanos"] == acme
        conn.close()
    finally:
        d.stop()
    res = _cli(home, "budget", "show", "--json")
    assert res.returncode == 0, res.stderr
    assert [b["spent_nanos"] for b in json.loads(res.stdout)] == [acme]
    res = _cli(home, "ledger", "rollup", "--verify", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["verified"] is True


def test_the_daemon_rolls_up_what_it_writes(gw: Any) -> None:
    d = gw
    if True:
        with httpx.Client(base_url=d.openai_base, headers={"authorization": f"Bearer {d.key}"}, timeout=30) as c:
            for i in range(12):
                r = c.post("/chat/completions", json={"model": "openai/gpt-4o-mini",
                                                      "messages": [{"role": "user", "content": f"hi {i}"}]})
                assert r.status_code == 200, r.text
        conn = d.db()
        top = lambda: conn.execute("SELECT COALESCE(MAX(id), 0) FROM ledger").fetchone()[0]  # noqa: E731
        wait_until(lambda: top() >= 12 and rollups.rolled_up_to(conn) == top(), 10, "the writer to roll up")
        assert rollups.verify(conn) == []
        daily = conn.execute("SELECT SUM(requests), SUM(cost_nanos) FROM ledger_daily").fetchone()
        assert tuple(daily) == tuple(conn.execute("SELECT COUNT(*), SUM(cost_nanos) FROM ledger").fetchone())
        assert daily[1] > 0
        conn.close()


def test_prune_keeps_every_report_and_shrinks_the_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    conn = db.open_db(paths.db_path(home))
    rows = make_rows(4, 6000)
    for r in rows:
        r["request_body"] = "x" * 400
    insert(conn, rows)
    months = [("2026-08-01", "2026-09-01"), ("2026-09-01", "2026-10-01"), ("2026-10-01", "2026-11-01")]
    before = {m: raw_totals(conn, parse_time(m[0], "t"), parse_time(m[1], "t")) for m in months}
    conn.close()

    res = _cli(home, "ledger", "prune", "--before", "2026-09-15", "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    old = sum(1 for r in rows if r["ts_ms"] < parse_time("2026-09-15", "t"))
    assert json.loads(res.stdout)["rows"] == old
    res = _cli(home, "ledger", "prune", "--before", "2026-09-15")  # no terminal, no --yes
    assert res.returncode == 2 and "--yes" in res.stderr
    res = _cli(home, "ledger", "prune", "--before", "2999-01-01", "--yes")
    assert res.returncode == 2 and "only whole past days" in res.stderr
    res = _cli(home, "ledger", "prune", "--before", "2026-09-15T10:00", "--yes")
    assert res.returncode == 2 and "a UTC midnight" in res.stderr

    res = _cli(home, "ledger", "prune", "--before", "2026-09-15", "--yes", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["rows"] == old and out["bytes_after"] < out["bytes_before"] and out["file_shrinks"] is True
    conn = db.connect(paths.db_path(home), readonly=True)
    assert conn.execute("SELECT COUNT(*) FROM ledger WHERE ts_ms < ?", (parse_time("2026-09-15", "t"),)).fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == len(rows) - old
    for m in months:
        res = _cli(home, "report", "--format", "json", "--since", m[0], "--until", m[1])
        assert res.returncode == 0, res.stderr
        total = json.loads(res.stdout)["total"]
        assert {k: total[k] for k in before[m]} == before[m], m
    # a partial hour inside the pruned days cannot be answered exactly: a clear error, not a guess
    res = _cli(home, "report", "--since", "2026-08-10T10:30", "--until", "2026-08-20")
    assert res.returncode == 2 and "pruned" in res.stderr
    # a rebuild after a prune keeps the pruned days (September is half pruned) and checks out
    res = _cli(home, "ledger", "rollup", "--rebuild", "--verify", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["verified"] is True, res.stdout
    for m in months:
        res = _cli(home, "report", "--format", "json", "--period", m[0][:7])
        total = json.loads(res.stdout)["total"]
        assert {k: total[k] for k in before[m]} == before[m], m
    with pytest.raises(UsageError):
        reports.report(conn, by="customer", window=reports.Window(START + 30, None, "w"))
    conn.close()


def test_prune_bodies_erases_bodies_and_keeps_rows(tmp_path: Path) -> None:
    conn = db.open_db(tmp_path / "llmgw.db")
    rows = make_rows(6, 800)
    insert(conn, rows)
    cut = START + 30 * DAY_MS
    with_body = sum(1 for r in rows if r["ts_ms"] < cut and (r["request_body"] or r["response_body"]))
    assert retention.prune_bodies(conn, cut, dry_run=True) == with_body
    assert retention.prune_bodies(conn, cut) == with_body
    assert conn.execute("SELECT COUNT(*) FROM ledger WHERE ts_ms < ? AND (request_body IS NOT NULL"
                        " OR response_body IS NOT NULL)", (cut,)).fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 800
    assert retention.prune_bodies(conn, cut) == 0  # resumes from the recorded boundary
    conn.close()


def test_the_daemon_applies_retention(tmp_path: Path) -> None:
    from llmgw.clock import wall_ms

    home = tmp_path / "home"
    home.mkdir()
    conn = db.open_db(paths.db_path(home))
    now = wall_ms()
    rows = make_rows(8, 2000, start=now - 75 * DAY_MS, span=74 * DAY_MS)
    insert(conn, rows)
    total = raw_totals(conn, None, None)
    conn.close()
    d = start_daemon(home, "[ledger]\nretain_days = 30\n[log]\nbodies_retain_days = 20\n")
    try:
        keeper = d.extra["app"][STATE]["retention"]
        wait_until(lambda: keeper.runs >= 1, 20, "the first retention check (at start)")
        for later in (0, 10 * DAY_MS):  # at start, then ten days on (the clock moves, the hourly check prunes)
            d.set_clock(d.clock() + later)
            keeper.once()
            today = d.clock() - d.clock() % DAY_MS
            cut, bcut = today - 30 * DAY_MS, today - 20 * DAY_MS
            conn = d.db()
            assert conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == sum(1 for r in rows if r["ts_ms"] >= cut)
            assert conn.execute("SELECT COUNT(*) FROM ledger WHERE ts_ms < ? AND (request_body IS NOT NULL"
                                " OR response_body IS NOT NULL)", (bcut,)).fetchone()[0] == 0
            assert conn.execute("SELECT COUNT(*) FROM ledger WHERE request_body IS NOT NULL").fetchone()[0] == sum(
                1 for r in rows if r["ts_ms"] >= bcut and r["request_body"])
            rep = reports.report(conn, by="customer", window=reports.Window(None, None, "all"))
            assert {k: rep.total[k] for k in total} == total  # history kept in the roll-ups
            conn.close()
    finally:
        d.stop()


def test_export_round_trips_every_format(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    conn = db.open_db(paths.db_path(home))
    rows = make_rows(12, 12_345)  # more than two export pages
    insert(conn, rows)
    conn.close()
    since, until = "2026-08-20T06:00:00Z", "2026-10-01"
    lo, hi = parse_time(since, "t"), parse_time(until, "t")
    want = sorted((r for r in rows if lo <= r["ts_ms"] < hi), key=lambda r: r["ts_ms"])

    res = _cli(home, "ledger", "export", "--since", since, "--until", until, "--format", "csv")
    assert res.returncode == 0, res.stderr
    got = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [int(g["ts_ms"]) for g in got] == [r["ts_ms"] for r in want]
    assert sum(int(g["cost_nanos"]) for g in got) == sum(r["cost_nanos"] for r in want)
    assert "request_body" not in got[0] and got[0]["ts"].endswith("Z")

    res = _cli(home, "ledger", "export", "--since", since, "--until", until, "--format", "jsonl", "--bodies")
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [x["request_id"] for x in lines] == [r["request_id"] for r in want]
    assert [x["request_body"] for x in lines] == [r["request_body"] for r in want]
    assert all(x["cost_usd"] == reports.usd(x["cost_nanos"], dollar=False) for x in lines)

    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "ledger.parquet"
    res = _cli(home, "ledger", "export", "--format", "parquet", "--output", str(out))
    assert res.returncode == 0, res.stderr
    table = pq.read_table(out)
    assert table.num_rows == len(rows)
    assert str(table.schema.field("cost_nanos").type) == "int64"
    assert sum(table.column("cost_nanos").to_pylist()) == sum(r["cost_nanos"] for r in rows)


def test_readonly_readers_cannot_write(ledger_db: Path) -> None:
    conn = db.connect(ledger_db, readonly=True)
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("DELETE FROM ledger")
    conn.close()
