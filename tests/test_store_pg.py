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
