"""PostgreSQL as the store (``[store] url``), against a real throwaway server (``services.postgres_server``):
migrations from the one list of steps, the connection layer, the CLI and the admin API on
definitions, the real daemon's ledger (one row per request, written by the writer process), roll-ups,
reports and budget spend read from PostgreSQL, a definitions change reaching the running daemon, and
the URL's password never shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import UPSTREAM_ENV, upstream_config, wait_until
from llmgw import config as cfgmod
from llmgw import paths
from llmgw.errors import ConfigError, ResourceError
from llmgw.store import db as store_db
from llmgw.store import rollups
from llmgw.store.conn import PgStore, Row
from test_ledger_process import resend_unconfirmed

psycopg = pytest.importorskip("psycopg", reason="psycopg not installed (the test extra has it)")


def pg(url: str) -> Any:
    return store_db.open_db(PgStore(url))


def raw_rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as c:
        return [tuple(r) for r in c.execute(sql, args or None).fetchall()]


# ---- config ------------------------------------------------------------------------------------------


def test_store_url_and_url_env_are_read_and_never_shown(tmp_path: Path) -> None:
    f = tmp_path / "llmgw.toml"
    f.write_text('[store]\nurl = "postgresql://llmgw:hunter2hunter2@db.example:5432/llmgw"\n')
    cfg = cfgmod.load(f, environ={})
    assert cfg.store.url == "postgresql://llmgw:hunter2hunter2@db.example:5432/llmgw"
    assert "hunter2" not in repr(cfg) and "hunter2" not in repr(cfg.store) and "hunter2" not in str(cfg.store)
    assert "db.example:5432" in repr(cfg.store)
    assert "hunter2" not in repr(PgStore(cfg.store.url))
    f.write_text('[store]\nurl_env = "LLMGW_TEST_PG"\n')
    assert cfgmod.load(f, environ={"LLMGW_TEST_PG": "postgresql://u:pw@h/db"}).store.url == "postgresql://u:pw@h/db"
    assert cfgmod.load_store(f, environ={"LLMGW_TEST_PG": "postgresql://u:pw@h/db"}).url == "postgresql://u:pw@h/db"
    with pytest.raises(ConfigError, match="LLMGW_TEST_PG.*not set"):
        cfgmod.load(f, environ={})
    assert cfgmod.load(tmp_path / "missing.toml" if False else None).store.url is None  # the default: SQLite


@pytest.mark.parametrize("text, problem", [
    ('url = "mysql://u:secretsecret@h/db"', "expected a postgresql:// URL"),
    ('url = "postgresql://h/db"\nurl_env = "X"', "give url or url_env, not both"),
    ('url = 5', "url"),
    ('uri = "postgresql://h/db"', "uri"),
])
def test_bad_store_section_is_a_config_error(tmp_path: Path, text: str, problem: str) -> None:
    f = tmp_path / "llmgw.toml"
    f.write_text(f"[store]\n{text}\n")
    with pytest.raises(ConfigError, match=problem) as e:
        cfgmod.load(f, environ={"X": "postgresql://h/db"})
    assert "secretsecret" not in str(e.value)
    with pytest.raises(ConfigError, match=problem):
        cfgmod.load_store(f, environ={"X": "postgresql://h/db"})


def test_an_unreachable_or_refusing_server_is_a_resource_error_without_the_password(pg_server: Any) -> None:
    wrong = pg_server.url.replace(pg_server.password, "not-the-password-at-all")
    with pytest.raises(ResourceError) as e:
        pg(wrong)
    assert "not-the-password-at-all" not in str(e.value) and "***@127.0.0.1" in str(e.value)
    assert "password authentication failed" in str(e.value)


# ---- migrations and the connection layer ----------------------------------------------------------------


def test_migrations_apply_once_from_the_one_list_and_are_idempotent(pg_url: str) -> None:
    conn = pg(pg_url)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM llmgw_migrations WHERE migration_set = 'llmgw'"
                                            " ORDER BY name")]
        assert names == [fn.__name__ for fn in store_db.MIGRATIONS]
        store_db.migrate(conn)
    finally:
        conn.close()
    pg(pg_url).close()
    rows = raw_rows(pg_url, "SELECT name, count(*) FROM llmgw_migrations GROUP BY name HAVING count(*) > 1")
    assert rows == []
    # the schema is PostgreSQL's own: 64-bit integers (epoch ms does not fit in 32), real doubles, bytea
    types = dict(raw_rows(pg_url, "SELECT column_name, data_type FROM information_schema.columns"
                                  " WHERE table_name = 'ledger'"))
    assert types["ts_ms"] == "bigint" and types["cost_nanos"] == "bigint" and types["latency_ms"] == "double precision"
    assert dict(raw_rows(pg_url, "SELECT column_name, data_type FROM information_schema.columns"
                                 " WHERE table_name = 'idempotency'"))["body"] == "bytea"


def test_racing_migrators_apply_each_step_once(pg_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def go() -> None:
        try:
            barrier.wait()
            pg(pg_url).close()
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert raw_rows(pg_url, "SELECT count(*) FROM llmgw_migrations")[0][0] == len(store_db.MIGRATIONS)


def test_rows_placeholders_transactions_and_errors_look_like_sqlite(pg_url: str) -> None:
    import sqlite3

    conn = pg(pg_url)
    try:
        with store_db.transaction(conn):
            conn.execute("INSERT INTO customers (id, name, created_at) VALUES (?, ?, ?)", ("acme", "Acme 100%", "t"))
            conn.execute("INSERT INTO customers (id, name, created_at) VALUES (:id, :name, 't')",
                         {"id": "beta", "name": None})
        row = conn.execute("SELECT id, name FROM customers WHERE name LIKE '%100%%' OR ? IS NULL", (None,)).fetchone()
        assert isinstance(row, Row) and row[0] == "acme" and row["name"] == "Acme 100%" and dict(row) == {
            "id": "acme", "name": "Acme 100%"}
        assert [r["id"] for r in conn.execute("SELECT id FROM customers ORDER BY created_at, rowid")] == ["acme", "beta"]
        total = conn.execute("SELECT SUM(rowid), COUNT(*) FROM customers").fetchone()
        assert total[0] == 3 and type(total[0]) is int  # SUM is numeric in PostgreSQL: an int here, as on SQLite
        with pytest.raises(sqlite3.IntegrityError):
            with store_db.transaction(conn):
                conn.execute("INSERT INTO customers (id, created_at) VALUES ('acme', 't')")
        assert not conn.in_transaction
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("SELECT * FROM no_such_table")
        # a definitions change moves the version the daemon polls (triggers, as on SQLite)
        v = store_db.definitions_version(conn)
        with store_db.transaction(conn):
            conn.execute("UPDATE customers SET name = 'x' WHERE id = 'beta'")
        assert store_db.definitions_version(conn) == v + 1
    finally:
        conn.close()


# ---- the real daemon and the CLI on one PostgreSQL store ------------------------------------------------


def cli(home: Path, *args: str, env: dict[str, str] | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LLMGW_")}
    environ.update(LLMGW_HOME=str(home), COLUMNS="200", **(env or {}))
    r = subprocess.run([sys.executable, "-m", "llmgw", *args], env=environ, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    if ok:
        assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def pg_config(url: str, fake: Any, extra: str = "") -> str:
    return upstream_config(fake, f'\n[store]\nurl_env = "LLMGW_TEST_STORE_URL"\n{extra}')


def chat(base: str, key: str, text: str = "hi", **headers: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", headers={"authorization": f"Bearer {key}", **headers},
                      json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
                      timeout=30)


def test_daemon_on_postgres_writes_one_ledger_row_per_request_and_the_cli_reads_them(
        daemon_factory: Any, upstream: Any, pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    env = {**UPSTREAM_ENV, "LLMGW_TEST_STORE_URL": pg_url}
    d = daemon_factory(pg_config(pg_url, upstream), env)
    assert isinstance(d.target, PgStore)
    ids = []
    for i in range(20):
        r = chat(d.url, d.key, f"hello {i}")
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-request-id"])
    # each response completed after its row was committed: the rows are in PostgreSQL already
    got = raw_rows(pg_url, "SELECT request_id, status, cost_nanos FROM ledger ORDER BY id")
    assert [g[0] for g in got] == ids and all(g[1] == 200 and g[2] > 0 for g in got)
    # nothing went to the home's SQLite file (it holds the response cache only)
    local = store_db.connect(paths.db_path(d.home))
    try:
        assert local.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 0
        assert local.execute("SELECT COUNT(*) FROM keys").fetchone()[0] == 0
    finally:
        local.close()
    spent = sum(g[2] for g in got)
    cenv = {"LLMGW_TEST_STORE_URL": pg_url}
    home = d.home
    # the CLI, with the same config file, reads and writes the same PostgreSQL database
    stats = json.loads(cli(home, "ledger", "rollup", "--verify", "--json", env=cenv).stdout)
    assert stats["raw_rows"] == 20 and stats["verified"] and stats["pending"] == 0, stats
    rep = json.loads(cli(home, "report", "--by", "key", "--format", "json", env=cenv).stdout)
    assert rep["total"]["requests"] == 20 and rep["total"]["cost_nanos"] == spent, rep
    # roll-ups run in the writer process on PostgreSQL: the watermark reaches the last row
    conn = pg(pg_url)
    try:
        wait_until(lambda: rollups.rolled_up_to(conn) >= raw_rows(pg_url, "SELECT MAX(id) FROM ledger")[0][0], 10,
                   "the writer to roll up the ledger")
        assert rollups.verify(conn) == []
        assert tuple(conn.execute("SELECT SUM(requests), SUM(cost_nanos) FROM ledger_hourly").fetchone()) == (20, spent)
    finally:
        conn.close()
    assert pg_url.split("@")[0].split(":")[-1] not in caplog.text


def test_definitions_made_by_the_cli_reach_the_running_daemon_and_budgets_read_pg_spend(
        daemon_factory: Any, upstream: Any, pg_url: str) -> None:
    env = {**UPSTREAM_ENV, "LLMGW_TEST_STORE_URL": pg_url}
    d = daemon_factory(pg_config(pg_url, upstream), env)
    cenv = {"LLMGW_TEST_STORE_URL": pg_url}
    home = d.home
    cli(home, "customers", "create", "acme", "--name", "Acme", env=cenv)
    cli(home, "teams", "create", "research", "--customer", "acme", env=cenv)
    key = cli(home, "keys", "create", "--name", "acme-key", "--customer", "acme", "--team", "research", env=cenv
              ).stdout.strip()
    assert key.startswith("sk-")
    # a key made by the CLI works on its very next request (looked up in PostgreSQL, then reloaded)
    r = chat(d.url, key)
    assert r.status_code == 200, r.text
    cost = raw_rows(pg_url, "SELECT cost_nanos FROM ledger WHERE key_id IS NOT NULL AND customer_id = 'acme'")
    assert len(cost) == 1 and cost[0][0] > 0
    # a hard budget below what is already spent: the daemon reloads it with the spend read from PostgreSQL
    cli(home, "budget", "set", "--customer", "acme", "--limit", "0.000001", "--period", "month", env=cenv)
    d.synced()
    r = chat(d.url, key)
    assert r.status_code == 429 and r.json()["error"]["type"] == "budget_exceeded", r.text
    shown = json.loads(cli(home, "budget", "show", "--json", env=cenv).stdout)
    (b,) = [b for b in shown if b["scope"] == "customer"]
    assert b["spent_nanos"] == cost[0][0]
    # disabling the key through the CLI reaches the daemon too
    cli(home, "budget", "delete", "--id", b["id"], env=cenv)
    cli(home, "keys", "disable", "acme-key", env=cenv)
    d.synced()
    r = chat(d.url, key)
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_disabled", r.text
    listed = json.loads(cli(home, "keys", "list", "--json", env=cenv).stdout)
    assert {k["name"]: k["status"] for k in listed}["acme-key"] == "disabled"
    customers = json.loads(cli(home, "customers", "list", "--json", env=cenv).stdout)
    assert [c["id"] for c in customers] == ["acme"]


def test_a_budget_new_to_an_instance_counts_every_instance_s_rows_on_one_database(
        daemon_factory: Any, upstream: Any, pg_url: str) -> None:
    """Two instances, one PostgreSQL: a budget reload leaves out only the reading instance's rows
    after its committed point (it still tracks those requests), never another writer's rows."""
    env = {**UPSTREAM_ENV, "LLMGW_TEST_STORE_URL": pg_url}
    a = daemon_factory(pg_config(pg_url, upstream), env)
    b = daemon_factory(pg_config(pg_url, upstream), env)
    cenv = {"LLMGW_TEST_STORE_URL": pg_url}
    cli(a.home, "customers", "create", "acme", env=cenv)
    key = cli(a.home, "keys", "create", "--name", "acme-key", "--customer", "acme", env=cenv).stdout.strip()
    assert chat(b.url, key, "on b").status_code == 200  # b's committed point: this row
    for i in range(3):  # a's rows: ids above b's committed point
        assert chat(a.url, key, f"on a {i}").status_code == 200
    costs = raw_rows(pg_url, "SELECT cost_nanos, request_id FROM ledger WHERE customer_id = 'acme' ORDER BY id")
    assert len(costs) == 4 and len({c[1][:len(a.gateway.new_request_id.prefix)] for c in costs}) == 2  # one request-id prefix per instance
    cli(a.home, "budget", "set", "--customer", "acme", "--limit", "5", "--period", "month", env=cenv)
    for d in (a, b):
        d.synced()
        book = d.gateway.budgets
        (st,) = [book.status(x, d.clock()) for x in book.budgets() if x.scope_id == "acme"]
        assert st["spent_nanos"] == sum(c[0] for c in costs), d.url


def test_restarting_the_daemon_migrates_nothing_again_and_keeps_the_ledger(
        daemon_factory: Any, upstream: Any, pg_url: str, tmp_path: Path) -> None:
    env = {**UPSTREAM_ENV, "LLMGW_TEST_STORE_URL": pg_url}
    home = tmp_path / "same-home"
    d = daemon_factory(pg_config(pg_url, upstream), env, home=home)
    assert chat(d.url, d.key).status_code == 200
    before = raw_rows(pg_url, "SELECT name, applied_at FROM llmgw_migrations ORDER BY name")
    d.stop()
    d2 = daemon_factory(pg_config(pg_url, upstream), env, home=home)
    assert chat(d2.url, d2.key).status_code == 200
    assert raw_rows(pg_url, "SELECT name, applied_at FROM llmgw_migrations ORDER BY name") == before
    assert raw_rows(pg_url, "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM ledger")[0] == (2, 2)


ADMIN_TOKEN = "adm-" + "p" * 40


def test_admin_api_and_config_apply_write_definitions_to_postgres(daemon_factory: Any, upstream: Any,
                                                                  pg_url: str) -> None:
    env = {**UPSTREAM_ENV, "LLMGW_TEST_STORE_URL": pg_url, "TEST_ADMIN_TOKEN": ADMIN_TOKEN}
    d = daemon_factory(pg_config(pg_url, upstream, '\n[admin]\ntoken_env = "TEST_ADMIN_TOKEN"\n'), env)
    h = httpx.Client(base_url=d.url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    try:
        assert h.post("/admin/customers", json={"id": "acme", "name": "Acme"}).status_code == 201
        assert h.post("/admin/teams", json={"id": "ops", "customer": "acme"}).status_code == 201
        r = h.post("/admin/keys", json={"customer": "acme", "team": "ops", "name": "vk", "rpm": 600})
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        assert chat(d.url, secret).status_code == 200  # the admin change applied before its answer
        r = h.put("/admin/budgets", json={"scope": "customer", "id": "acme", "limit_usd": "5", "period": "month"})
        assert r.status_code in (200, 201), r.text
        got = h.get("/admin/budgets").json()["data"]
        assert [(b["scope"], b["scope_id"]) for b in got] == [("customer", "acme")]
        assert got[0]["spent_nanos"] > 0  # the request above, read from the PostgreSQL ledger
        assert [k["name"] for k in h.get("/admin/keys").json()["data"]] == ["test", "vk"]
    finally:
        h.close()
    assert raw_rows(pg_url, "SELECT id, customer_id FROM teams") == [("ops", "acme")]
    # `config apply` with the same config file, declarations added: into PostgreSQL, idempotent
    cfg = d.home / "llmgw.toml"
    cfg.write_text(cfg.read_text() + '\n[customers.globex]\nname = "Globex"\n'
                   'budgets = [{ period = "month", limit = 20 }]\n\n[keys.globex-key]\ncustomer = "globex"\n')
    cenv = {"LLMGW_TEST_STORE_URL": pg_url, **UPSTREAM_ENV, "TEST_ADMIN_TOKEN": ADMIN_TOKEN}
    out = cli(d.home, "config", "apply", env=cenv)
    assert "+ customer globex" in out.stdout and "+ key globex-key" in out.stdout, out.stdout
    assert cli(d.home, "config", "apply", env=cenv).stdout == ""  # nothing left to change
    assert raw_rows(pg_url, "SELECT id, name FROM customers ORDER BY id") == [("acme", "Acme"), ("globex", "Globex")]
    assert raw_rows(pg_url, "SELECT scope_id, limit_nanos FROM budgets WHERE scope_id = 'globex'") == [
        ("globex", 20_000_000_000)]
    exported = cli(d.home, "config", "export", env=cenv).stdout
    assert "[customers.globex]" in exported and "[customers.acme]" in exported
    # `config validate` checks references against PostgreSQL: team ops exists there (made over HTTP)
    cfg.write_text(cfg.read_text() + '\n[keys.ops-key]\nteam = "ops"\n')
    assert "ok" in cli(d.home, "config", "validate", env=cenv).stderr
    cfg.write_text(cfg.read_text() + '\n[keys.nowhere-key]\nteam = "no_such_team"\n')
    bad = cli(d.home, "config", "validate", env=cenv, ok=False)
    assert bad.returncode == 2 and "no_such_team" in bad.stdout, bad


def test_tail_export_prune_top_and_finance_data_read_postgres(daemon_factory: Any, upstream: Any,
                                                              pg_url: str) -> None:
    from llmgw import reports, ui_data
    from llmgw.tui import data as top_data

    env = {**UPSTREAM_ENV, "LLMGW_TEST_STORE_URL": pg_url}
    d = daemon_factory(pg_config(pg_url, upstream), env)
    ids = [chat(d.url, d.key, f"q{i}").headers["x-request-id"] for i in range(5)]
    cenv = {"LLMGW_TEST_STORE_URL": pg_url}
    tailed = [json.loads(line) for line in cli(d.home, "tail", "--last", "3", "--no-follow", "--json", env=cenv).stdout.splitlines()]
    assert [t["request_id"] for t in tailed] == ids[-3:]
    exported = [json.loads(line) for line in
                cli(d.home, "ledger", "export", "--format", "jsonl", env=cenv).stdout.splitlines()]
    assert [e["request_id"] for e in exported] == ids
    dry = cli(d.home, "ledger", "prune", "--before", "2020-01-01", "--dry-run", env=cenv)
    assert "0" in dry.stdout + dry.stderr, dry
    conn = store_db.connect(PgStore(pg_url), readonly=True)
    try:
        now = d.clock()
        snap = top_data.snapshot(conn, now)
        assert sorted(t["request_id"] for t in snap["tail"]) == sorted(ids)
        window = ui_data.resolve({}, now)
        rep = ui_data.report(conn, "key", window, None, None)
        assert rep["total"]["requests"] == 5, rep
        assert reports.last_id(conn) == 5
    finally:
        conn.close()


def test_events_and_idempotency_records_live_in_postgres(daemon_factory: Any, upstream: Any, pg_url: str) -> None:
    env = {**UPSTREAM_ENV, "LLMGW_TEST_STORE_URL": pg_url}
    d = daemon_factory(pg_config(pg_url, upstream), env)
    cenv = {"LLMGW_TEST_STORE_URL": pg_url}
    cli(d.home, "customers", "create", "acme", env=cenv)
    key = cli(d.home, "keys", "create", "--customer", "acme", env=cenv).stdout.strip()
    # a soft budget far below one request's cost: its warnings are stored once each, in PostgreSQL
    cli(d.home, "budget", "set", "--customer", "acme", "--limit", "0.000001", "--soft", "--warn-at", "50",
        "--period", "month", env=cenv)
    d.synced()
    for _ in range(3):
        assert chat(d.url, key).status_code == 200
    got = wait_until(lambda: raw_rows(pg_url, "SELECT kind, threshold FROM events ORDER BY id"), 10,
                     "the soft-cap events")
    assert got == [("soft_cap", 50), ("soft_cap", 100)]
    # an Idempotency-Key: the first answer is stored in PostgreSQL and replayed, one upstream call
    calls = len(upstream.requests)
    first = chat(d.url, key, "once", **{"Idempotency-Key": "idem-1"})
    again = chat(d.url, key, "once", **{"Idempotency-Key": "idem-1"})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    stored = raw_rows(pg_url, "SELECT idem_key, status, length(body) > 0 FROM idempotency")
    assert stored == [("idem-1", 200, True)]
    assert len(upstream.requests) == calls + 1
    replays = raw_rows(pg_url, "SELECT COUNT(*) FROM ledger WHERE idempotent_replay = 1")
    assert replays == [(1,)]


def test_the_daemon_rides_out_a_postgres_restart(daemon_factory: Any, upstream: Any, pg_server: Any) -> None:
    url = pg_server.database()
    env = {**UPSTREAM_ENV, "LLMGW_TEST_STORE_URL": url}
    d = daemon_factory(pg_config(url, upstream), env)
    assert chat(d.url, d.key).status_code == 200
    pg_server.pg_ctl("restart", "-m", "fast", "-w")
    # the writer reconnects (rows wait, never lost); reloads and key lookups reconnect too
    wait_until(lambda: chat(d.url, d.key).status_code == 200, 30, "a request to succeed after the restart")
    cenv = {"LLMGW_TEST_STORE_URL": url}
    key = cli(d.home, "keys", "create", "--name", "after-restart", env=cenv).stdout.strip()
    assert chat(d.url, key).status_code == 200
    d.synced()
    # rows answered during the restart may be in the spool: they reach the ledger once it drains
    wait_until(lambda: paths.spool_path(d.home).stat().st_size == 0 if paths.spool_path(d.home).exists() else True,
               20, "the spool to drain")
    rows = raw_rows(url, "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM ledger WHERE status = 200")[0]
    assert rows[0] == rows[1] >= 3


def test_a_long_lived_connection_reconnects_after_a_server_restart(pg_server: Any) -> None:
    import sqlite3

    url = pg_server.database()
    conn = store_db.open_db(PgStore(url))
    try:
        assert store_db.definitions_version(conn) == 0
        pg_server.pg_ctl("restart", "-m", "fast", "-w")
        assert store_db.definitions_version(conn) == 0  # outside a transaction: reconnected, run again
        conn.execute("BEGIN")
        conn.execute("SELECT 1").fetchone()
        pg_server.pg_ctl("restart", "-m", "fast", "-w")
        with pytest.raises(sqlite3.OperationalError):  # inside one: it fails, the caller rolls back
            conn.execute("SELECT 1")
        conn.rollback()
        assert not conn.in_transaction
        assert conn.execute("SELECT 2").fetchone()[0] == 2
        # down for a while: each statement fails (a reconnect that fails too), until it is back
        pg_server.pg_ctl("stop", "-m", "fast", "-w")
        try:
            for _ in range(2):
                with pytest.raises(sqlite3.OperationalError):
                    conn.execute("SELECT 3")
        finally:
            pg_server.pg_ctl("start", "-w", "-t", "30", "-l", str(pg_server.datadir.parent / "log"), "-o",
                             pg_server.options)
        assert conn.execute("SELECT 4").fetchone()[0] == 4
    finally:
        conn.close()


def test_config_show_and_errors_never_print_the_password(tmp_path: Path, pg_server: Any) -> None:
    home = tmp_path / "home"
    home.mkdir()
    url = pg_server.url.replace(pg_server.password, "pw-" + pg_server.password)  # a wrong password
    (home / "llmgw.toml").write_text(f'[store]\nurl = "{url}"\n')
    shown = json.loads(cli(home, "config", "show").stdout)
    assert shown["store"] == {"url": f"postgresql://***@127.0.0.1:{pg_server.port}/postgres", "url_env": None,
                              "kind": "postgresql"}
    r = cli(home, "keys", "list", ok=False)
    assert r.returncode != 0 and "password authentication failed" in r.stderr, r.stderr
    r2 = cli(home, "report", ok=False)
    assert r2.returncode != 0
    for out in (r.stdout, r.stderr, r2.stdout, r2.stderr, json.dumps(shown)):
        assert pg_server.password not in out


def test_doctor_checks_the_postgres_store(tmp_path: Path, pg_url: str, pg_server: Any) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "llmgw.toml").write_text('[providers.demo]\ntype = "demo"\n\n[store]\nurl_env = "LLMGW_TEST_STORE_URL"\n')
    env = {"LLMGW_TEST_STORE_URL": pg_url}

    def checks() -> dict[str, tuple[str, str]]:
        r = cli(home, "doctor", "--offline", "--json", env=env, ok=False)
        assert pg_server.password not in r.stdout + r.stderr
        return {c["check"]: (c["status"], c["detail"]) for c in json.loads(r.stdout)}

    got = checks()
    assert got["store"][0] == "ok" and "PostgreSQL 1" in got["store"][1]
    assert got["store migrations"][0] == "warn"
    cli(home, "customers", "create", "acme", env=env)  # a command that writes migrates the store
    got = checks()
    assert got["store migrations"] == ("ok", f"current ({len(store_db.MIGRATIONS)} applied)")
    assert got["store ledger"] == ("ok", "0 row(s)")
    env["LLMGW_TEST_STORE_URL"] = pg_url.replace(pg_server.password, "wrong-password-here")
    got = checks()
    assert got["store"][0] == "fail" and "wrong-password-here" not in got["store"][1]


# ---- the ledger writer process on PostgreSQL --------------------------------------------------------


def lrow(i: int, **kw: Any) -> dict[str, Any]:
    return {"request_id": f"req-{i}", "ts_ms": 1_700_000_000_000 + i, "route": "/v1/chat/completions",
            "status": 200, "outcome": "ok", "cost_nanos": 1000 + i, **kw}


async def until(cond: Any, timeout: float = 20.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_writer_batches_big_frames_and_a_killed_writer_loses_and_repeats_nothing(pg_url: str) -> None:
    import asyncio
    import signal

    from llmgw.store.ledger import as_tuple, insert_sql, normalise_row
    from llmgw.store.writer import LedgerWriter

    w = LedgerWriter(PgStore(pg_url))
    w.start()
    try:
        assert w._proc is not None and pg_url not in " ".join(w._proc.args)  # the URL is not on its command line
        await asyncio.gather(*(w.submit(lrow(i)) for i in range(1500)))  # several 512-row INSERTs, one transaction
        assert raw_rows(pg_url, "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM ledger")[0] == (1500, 1500)
        # a writer killed with a row in flight: a new one gets it again and commits it once
        first = w._proc
        first.send_signal(signal.SIGSTOP)
        fut = w.submit(lrow(1500))
        await asyncio.sleep(0)
        w._backoff = 3600.0
        first.kill()
        first.send_signal(signal.SIGCONT)
        await until(lambda: w._dead is not None)
        assert w._restart_handle is not None
        w._restart_handle.cancel()
        w._restart()
        await asyncio.wait_for(fut, 20)
        # a row committed behind the writer's back (its answer lost): the recovery frame skips it
        with psycopg.connect(pg_url) as c:
            c.execute(store_db_translate(insert_sql()), as_tuple(normalise_row(lrow(1501))))
        await resend_unconfirmed(w, [lrow(1501), lrow(1502)])
        top = raw_rows(pg_url, "SELECT MAX(id) FROM ledger")[0][0]
        assert w.committed == (w.last_seq, top)
    finally:
        await asyncio.to_thread(w.stop)
    assert raw_rows(pg_url, "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM ledger")[0] == (1503, 1503)


def store_db_translate(sql: str) -> str:
    from llmgw.store.conn import translate

    return translate(sql)[0]


async def test_a_locked_ledger_or_a_stopped_server_makes_the_writer_unhealthy_and_rows_wait(pg_server: Any) -> None:
    import asyncio

    from llmgw.store.writer import LedgerWriter

    url = pg_server.database()
    w = LedgerWriter(PgStore(url))
    w.start()
    try:
        await w.write(lrow(0))
        with psycopg.connect(url) as holder:
            holder.execute("LOCK TABLE ledger IN EXCLUSIVE MODE")  # held until this transaction ends
            futs = [w.submit(lrow(i)) for i in range(1, 50)]
            await until(lambda: w.health() is not None)
            assert "lock timeout" in (w.health() or ""), w.health()
            assert not any(f.done() for f in futs)  # retried, not failed
        await asyncio.wait_for(asyncio.gather(*futs), 20)
        assert w.health() is None
        pg_server.pg_ctl("stop", "-m", "fast", "-w")
        try:
            futs = [w.submit(lrow(i)) for i in range(50, 80)]
            await until(lambda: w.health() is not None)
            assert "cannot commit" in (w.health() or "") and pg_server.password not in (w.health() or "")
            assert not any(f.done() for f in futs)
        finally:
            pg_server.pg_ctl("start", "-w", "-t", "30", "-l", str(pg_server.datadir.parent / "log"), "-o",
                             pg_server.options)
        await asyncio.wait_for(asyncio.gather(*futs), 30)
        assert w.health() is None
    finally:
        await asyncio.to_thread(w.stop)
    assert raw_rows(url, "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM ledger")[0] == (80, 80)


# ---- PostgreSQL unreachable: rows spool to a local file and drain when it is back ------------------------


def test_rows_spool_locally_while_postgres_is_down_and_drain_once_it_is_back(
        daemon_factory: Any, upstream: Any, pg_server: Any, tmp_path: Path) -> None:
    url = pg_server.database()
    env = {**UPSTREAM_ENV, "LLMGW_TEST_STORE_URL": url}
    home = tmp_path / "spool-home"
    d = daemon_factory(pg_config(url, upstream), env, home=home)
    before = [chat(d.url, d.key, f"before {i}").headers["x-request-id"] for i in range(3)]
    spool = paths.spool_path(home)
    pg_server.pg_ctl("stop", "-m", "fast", "-w")
    try:
        during = []
        for i in range(10):  # answered: each row is in the fsynced spool file before its response
            r = chat(d.url, d.key, f"during {i}")
            assert r.status_code == 200, r.text
            during.append(r.headers["x-request-id"])
        assert spool.stat().st_size > 0 and oct(spool.stat().st_mode & 0o777) == "0o600"
        assert pg_server.password not in spool.read_text(errors="replace")
        # the daemon stops with rows still spooled: the next one moves them in before it reads the ledger
        d.stop()
    finally:
        pg_server.pg_ctl("start", "-w", "-t", "30", "-l", str(pg_server.datadir.parent / "log"), "-o",
                         pg_server.options)
    d2 = daemon_factory(pg_config(url, upstream), env, home=home)
    assert spool.stat().st_size == 0
    ids = [r[0] for r in raw_rows(url, "SELECT request_id FROM ledger ORDER BY id")]
    assert ids[: len(before) + len(during)] == before + during  # in order, each once
    # and while it runs: down, spooled, back, drained by the running writer (no restart)
    pg_server.pg_ctl("stop", "-m", "fast", "-w")
    try:
        more = [chat(d2.url, d2.key, f"again {i}").headers["x-request-id"] for i in range(5)]
        ready = httpx.get(d2.url + "/readyz", timeout=10)  # still ready (the rows are durable here), and says so
        assert ready.status_code == 200 and ready.json()["ledger_spooled_rows"] == 5, ready.text
        assert "llmgw_ledger_spooled_rows 5" in httpx.get(d2.url + "/metrics", timeout=10).text
    finally:
        pg_server.pg_ctl("start", "-w", "-t", "30", "-l", str(pg_server.datadir.parent / "log"), "-o",
                         pg_server.options)
    wait_until(lambda: spool.stat().st_size == 0, 20, "the writer to drain its spool")
    wait_until(lambda: "ledger_spooled_rows" not in httpx.get(d2.url + "/readyz", timeout=10).json(), 10,
               "the daemon to hear that the spool drained")
    assert "llmgw_ledger_spooled_rows 0" in httpx.get(d2.url + "/metrics", timeout=10).text
    last = chat(d2.url, d2.key, "after").headers["x-request-id"]
    got = raw_rows(url, "SELECT request_id FROM ledger ORDER BY id")
    assert [g[0] for g in got] == [*ids, *more, last]
    assert raw_rows(url, "SELECT COUNT(*) = COUNT(DISTINCT request_id) FROM ledger") == [(True,)]
    # the spooled rows are rolled up like any other, and reports count each once
    conn = pg(url)
    try:
        wait_until(lambda: rollups.rolled_up_to(conn) >= raw_rows(url, "SELECT MAX(id) FROM ledger")[0][0], 10,
                   "the roll-ups to catch up")
        assert rollups.verify(conn) == []
    finally:
        conn.close()


async def test_a_writer_restarted_during_an_outage_spools_from_its_start(pg_server: Any, tmp_path: Path) -> None:
    import asyncio

    from llmgw.store.writer import LedgerWriter

    url = pg_server.database()
    spool = tmp_path / "spool"
    w = LedgerWriter(PgStore(url), spool=spool)
    w.start()
    try:
        await w.write(lrow(0))
        pg_server.pg_ctl("stop", "-m", "fast", "-w")
        try:
            await asyncio.wait_for(w.write(lrow(1)), 10)  # spooled: confirmed without the server
            assert w._proc is not None
            first = w._proc
            first.kill()
            await until(lambda: w._proc is not first and w.alive and w.health() is None, 20)
            await asyncio.wait_for(asyncio.gather(*(w.submit(lrow(i)) for i in range(2, 40))), 20)
            assert spool.stat().st_size > 0 and raw_rows_or_none(url) is None
        finally:
            pg_server.pg_ctl("start", "-w", "-t", "30", "-l", str(pg_server.datadir.parent / "log"), "-o",
                             pg_server.options)
        await until(lambda: spool.stat().st_size == 0, 20)  # drained while idle, no new row needed
    finally:
        await asyncio.to_thread(w.stop)
    assert raw_rows(url, "SELECT request_id FROM ledger ORDER BY id") == [(f"req-{i}",) for i in range(40)]


async def test_a_single_process_drains_the_spools_its_workers_left(pg_url: str, tmp_path: Path) -> None:
    import asyncio

    from llmgw.store.ledger import as_tuple, normalise_row
    from llmgw.store.writer import LedgerWriter
    from llmgw.store.writer_proc import Spool

    home = tmp_path / "home"
    home.mkdir()
    try:  # two workers of `serve --workers 2` each spooled rows, then died before PostgreSQL came back
        for worker, ids in ((0, range(0, 3)), (1, range(3, 5))):
            paths.set_worker(worker)
            assert paths.spool_path(home).name == f"ledger-spool.w{worker}"
            Spool(paths.spool_path(home)).append([as_tuple(normalise_row(lrow(i))) for i in ids])
    finally:
        paths._WORKER = None
    orphans = paths.orphan_spools(home)
    assert [p.name for p in orphans] == ["ledger-spool.w0", "ledger-spool.w1"]
    w = LedgerWriter(PgStore(pg_url), spool=paths.spool_path(home), adopt=orphans)
    w.start()  # one process serves the home again: it drains them before anything else
    try:
        await w.write(lrow(5))
    finally:
        await asyncio.to_thread(w.stop)
    assert raw_rows(pg_url, "SELECT request_id FROM ledger ORDER BY id") == [(f"req-{i}",) for i in range(6)]
    assert all(Spool(p).count == 0 for p in orphans)


def raw_rows_or_none(url: str) -> Any:
    try:
        return raw_rows(url, "SELECT 1")
    except psycopg.OperationalError:
        return None


async def test_prune_rebuild_and_verify_keep_reports_exact_on_postgres(pg_url: str, tmp_path: Path) -> None:
    import asyncio

    from llmgw.store.writer import LedgerWriter
    from llmgw.units import parse_time

    w = LedgerWriter(PgStore(pg_url))
    w.start()
    try:  # three months of rows, a few per day, through the writer (roll-ups in its process)
        start = parse_time("2026-08-30T22:00:00Z")
        await asyncio.gather(*(w.submit(lrow(i, ts_ms=start + i * 7_200_000, customer_id="acme"))
                               for i in range(900)))
    finally:
        await asyncio.to_thread(w.stop)
    home = tmp_path / "home"
    home.mkdir()
    (home / "llmgw.toml").write_text('[store]\nurl_env = "LLMGW_TEST_STORE_URL"\n')
    env = {"LLMGW_TEST_STORE_URL": pg_url}

    def report(period: str) -> Any:
        return json.loads(cli(home, "report", "--period", period, "--format", "json", env=env).stdout)["total"]

    before = {p: report(p) for p in ("2026-09", "2026-10", "2026-08")}
    assert before["2026-09"]["requests"] == 360 and before["2026-08"]["requests"] == 13
    status = json.loads(cli(home, "ledger", "rollup", "--rebuild", "--verify", "--json", env=env).stdout)
    assert status["verified"] and status["mismatches"] == [] and status["pending"] == 0, status
    cli(home, "ledger", "prune", "--before", "2026-10-01", "--yes", env=env)
    assert raw_rows(pg_url, "SELECT COUNT(*) FROM ledger WHERE ts_ms < %s", parse_time("2026-10-01"))[0][0] == 0
    assert {p: report(p) for p in before} == before  # whole months and days: the roll-ups answer
    status = json.loads(cli(home, "ledger", "rollup", "--rebuild", "--verify", "--json", env=env).stdout)
    assert status["verified"] and status["pruned_before"].startswith("2026-10-01"), status
    assert {p: report(p) for p in before} == before


def test_the_response_cache_stays_in_the_home_while_its_ledger_view_reads_postgres(
        daemon_factory: Any, upstream: Any, pg_url: str) -> None:
    env = {**UPSTREAM_ENV, "LLMGW_TEST_STORE_URL": pg_url}
    d = daemon_factory(pg_config(pg_url, upstream, '\n[cache]\nmode = "exact"\n'), env)
    first = chat(d.url, d.key, "cache me")
    again = chat(d.url, d.key, "cache me")
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert raw_rows(pg_url, "SELECT cache FROM ledger ORDER BY id") == [("miss",), ("hit-exact",)]
    local = store_db.connect(paths.db_path(d.home))
    try:  # the entry is in the home's SQLite file (per instance), not in PostgreSQL
        assert local.execute("SELECT COUNT(*) FROM cache_entries").fetchone()[0] == 1
    finally:
        local.close()
    assert raw_rows(pg_url, "SELECT COUNT(*) FROM cache_entries") == [(0,)]
    stats = json.loads(cli(d.home, "cache", "stats", "--json", env={"LLMGW_TEST_STORE_URL": pg_url}).stdout)
    assert stats["entries"] == 1 and stats["window"]["by_result"] == {"miss": 1, "hit-exact": 1}, stats
