"""store/: real SQLite files under tmp_path; the ledger writer (a process); a SIGKILL durability check."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmgw.store import db as dbmod
from llmgw.store import ledger
from llmgw.store.writer import LedgerWriter

SRC = Path(__file__).resolve().parents[1] / "src"


def row(i: int = 0, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "request_id": f"req-{i}",
        "ts_ms": 1_700_000_000_000 + i,
        "route": "/v1/chat/completions",
        "status": 200,
        "outcome": "ok",
    }
    base.update(kw)
    return base


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "home" / "llmgw.db"


@pytest.fixture
def reader(db_path: Path) -> Iterator[sqlite3.Connection]:
    conn = dbmod.open_db(db_path)
    yield conn
    conn.close()


@pytest.fixture
async def writer(db_path: Path, reader: sqlite3.Connection) -> Any:
    w = LedgerWriter(db_path)
    w.start()
    yield w
    w.stop()


# ---- db ------------------------------------------------------------------------------------------


def test_open_creates_dir_sets_pragmas_and_schema(db_path: Path) -> None:
    conn = dbmod.open_db(db_path)
    try:
        assert db_path.exists()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        cols = {r["name"] for r in conn.execute("PRAGMA table_info(ledger)")}
        assert cols == {"id", *ledger.LEDGER_COLUMNS}
        for table, expected in {
            "customers": {"id", "name", "created_at", "meta"},
            "teams": {"id", "customer_id", "name", "created_at", "meta"},
            "keys": {
                "id",
                "name",
                "key_hash",
                "display",
                "customer_id",
                "team_id",
                "status",
                "models",
                "created_at",
                "expires_at",
                "meta",
                "rpm",
                "tpm",
                "clamp",
                "cache_mode",
                "cache_threshold",
                "prev_key_hash",
                "prev_valid_until",
                "revoked_at",
            },
            "budgets": {"id", "scope", "scope_id", "period", "limit_nanos", "hard", "warn_pct", "grace_nanos",
                        "created_at", "updated_at", "raise_step_nanos", "ceiling_nanos", "fail_open"},
        }.items():
            assert {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")} == expected
        indexed = {
            tuple(c["name"] for c in conn.execute(f"PRAGMA index_info({ix['name']})"))
            for ix in conn.execute("PRAGMA index_list(ledger)")
        }
        assert {("ts_ms",), ("request_id",), ("customer_id", "ts_ms"), ("key_id", "ts_ms")} <= indexed
        ctype = {r["name"]: r["type"] for r in conn.execute("PRAGMA table_info(ledger)")}
        assert ctype["cost_nanos"] == "INTEGER"
    finally:
        conn.close()


def test_migrations_idempotent(db_path: Path) -> None:
    dbmod.open_db(db_path).close()
    conn = dbmod.open_db(db_path)  # second open: nothing pending, nothing re-run
    try:
        names = [
            r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations WHERE migration_set='llmgw'")
        ]
        assert names == [fn.__name__ for fn in dbmod.MIGRATIONS]
        dbmod.migrate(conn)
        assert ledger.count(conn) == 0
    finally:
        conn.close()


def test_foreign_keys_enforced(reader: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        reader.execute("INSERT INTO teams(id, customer_id, created_at) VALUES ('t', 'nope', 'now')")
    reader.rollback()


def test_readonly_and_data_version(db_path: Path, reader: sqlite3.Connection) -> None:
    ro = dbmod.connect(db_path, readonly=True)
    try:
        before = dbmod.data_version(ro)
        with pytest.raises(sqlite3.OperationalError):
            ro.execute("INSERT INTO customers(id, created_at) VALUES ('c', 'now')")
        reader.execute("INSERT INTO customers(id, created_at) VALUES ('c', 'now')")
        reader.commit()
        assert dbmod.data_version(ro) != before
    finally:
        ro.close()


# ---- ledger --------------------------------------------------------------------------------------


def test_normalise_row_defaults_and_rejections() -> None:
    full = ledger.normalise_row(row())
    assert tuple(full) == ledger.LEDGER_COLUMNS
    assert full["cost_nanos"] == 0 and full["prompt_tokens"] == 0 and full["model"] is None
    with pytest.raises(ValueError, match="unknown"):
        ledger.normalise_row(row(bogus=1))
    with pytest.raises(ValueError, match="required"):
        ledger.normalise_row({"request_id": "x"})
    with pytest.raises(ValueError, match="cost_nanos"):
        ledger.normalise_row(row(cost_nanos=0.5))  # money is never a float


def test_count_and_rows_in_a_window(reader: sqlite3.Connection) -> None:
    data = [row(n, model="a") for n in range(1, 5)]
    reader.executemany(ledger.insert_sql(), [ledger.as_tuple(ledger.normalise_row(r)) for r in data])
    reader.commit()

    assert ledger.count(reader) == 4
    assert [r["request_id"] for r in ledger.rows(reader)] == ["req-1", "req-2", "req-3", "req-4"]
    assert [r["request_id"] for r in ledger.rows(reader, limit=2)] == ["req-3", "req-4"]
    assert [
        r["request_id"] for r in ledger.rows(reader, since_ms=1_700_000_000_002, until_ms=1_700_000_000_004)
    ] == ["req-2", "req-3"]


# ---- writer --------------------------------------------------------------------------------------


async def test_future_resolves_after_row_visible_elsewhere(
    writer: LedgerWriter, reader: sqlite3.Connection
) -> None:
    seen_at_resolution: list[int] = []
    fut = writer.submit(row(1, cost_nanos=123))
    # runs on the loop the moment the future resolves: the row must already be committed
    fut.add_done_callback(lambda _: seen_at_resolution.append(ledger.count(reader)))
    await fut
    assert seen_at_resolution == [1]
    assert ledger.rows(reader)[0]["cost_nanos"] == 123
    await writer.write(row(2))
    assert ledger.count(reader) == 2
    assert writer.rows_written == 2 and writer.queue_depth == 0 and writer.last_commit_seconds > 0


async def test_group_commit_batches(writer: LedgerWriter, reader: sqlite3.Connection) -> None:
    futs = [writer.submit(row(i)) for i in range(1000)]
    await asyncio.gather(*futs)
    assert ledger.count(reader) == 1000
    assert writer.rows_written == 1000
    assert 2 <= writer.batches < 1000  # max_batch=512 forces at least two
    assert len({r["request_id"] for r in ledger.rows(reader)}) == 1000


async def test_stop_flushes_pending_and_submit_after_stop_raises(
    db_path: Path, reader: sqlite3.Connection
) -> None:
    w = LedgerWriter(db_path, max_batch=7)
    w.start()
    futs = [w.submit(row(i)) for i in range(100)]
    await asyncio.to_thread(w.stop)
    assert ledger.count(reader) == 100  # committed before stop returned
    await asyncio.gather(*futs)
    w.stop()  # idempotent
    with pytest.raises(RuntimeError):
        w.submit(row(101))


async def test_unknown_column_rejected_at_submit(writer: LedgerWriter, reader: sqlite3.Connection) -> None:
    with pytest.raises(ValueError, match="nope"):
        writer.submit(row(1, nope=1))
    await writer.write(row(2))
    assert ledger.count(reader) == 1


async def test_bad_row_fails_alone(writer: LedgerWriter, reader: sqlite3.Connection) -> None:
    # a row that passes validation but fails in SQLite: only its future fails
    reader.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON ledger WHEN NEW.route = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    reader.commit()
    futs = [writer.submit(row(i, route="boom" if i == 5 else "/v1/x")) for i in range(10)]
    results = await asyncio.gather(*futs, return_exceptions=True)
    assert [i for i, r in enumerate(results) if isinstance(r, BaseException)] == [5]
    assert isinstance(results[5], sqlite3.IntegrityError)
    assert ledger.count(reader) == 9
    assert writer.rows_written == 9


def test_submit_requires_start(db_path: Path) -> None:
    async def go() -> None:
        with pytest.raises(RuntimeError):
            LedgerWriter(db_path).submit(row())

    asyncio.run(go())


# ---- durability ----------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from llmgw.store.writer import LedgerWriter

    async def main():
        w = LedgerWriter(Path(sys.argv[1]))
        w.start()
        await asyncio.gather(*(
            w.submit({"request_id": f"r{i}", "ts_ms": i, "route": "/v1/x", "status": 200,
                      "outcome": "ok", "cost_nanos": 1_000_000_007})
            for i in range(200)
        ))
        print("committed", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def test_rows_survive_sigkill(db_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path)], stdout=subprocess.PIPE, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert line.strip() == "committed"
    assert proc.returncode == -signal.SIGKILL
    conn = dbmod.open_db(db_path)
    try:
        assert ledger.count(conn) == 200
        assert conn.execute("SELECT SUM(cost_nanos) FROM ledger").fetchone()[0] == 200 * 1_000_000_007
    finally:
        conn.close()
