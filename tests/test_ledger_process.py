"""The ledger writer runs as its own process (store/writer_proc.py): what that adds to the contract.

Real writer processes on real SQLite files; the daemon tests go through ``daemon_factory``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmgw.store import db as dbmod
from llmgw.store import ledger
from llmgw.store.writer import LedgerWriter
from llmgw.store.writer_proc import frame, unframe


def row(i: int = 0, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"request_id": f"req-{i}", "ts_ms": 1_700_000_000_000 + i,
                            "route": "/v1/chat/completions", "status": 200, "outcome": "ok"}
    base.update(kw)
    return base


async def until(cond: Any, timeout: float = 20.0) -> None:
    """Poll ``cond`` on the loop until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for _ in iter(int, 1):
        if cond():
            return
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def resend_unconfirmed(w: LedgerWriter, rows: list[dict[str, Any]], timeout: float = 20.0) -> None:
    """Send ``rows`` as a recovery frame (rows the daemon holds unconfirmed, as after a writer died
    between its commit and its answer) and wait until every one is confirmed."""
    from llmgw.store.ledger import as_tuple, normalise_row

    w._unacked.extend(as_tuple(normalise_row(r)) for r in rows)
    w._deadlines.extend([float("inf")] * len(rows))
    loop = asyncio.get_running_loop()
    futs = [loop.create_future() for _ in rows]
    w._futures.update({w._seq + 1 + i: f for i, f in enumerate(futs)})
    w._seq += len(rows)
    w._send(frame([w._acked + 1, list(w._unacked), 1]))
    await asyncio.wait_for(asyncio.gather(*futs), timeout)


def count(db_path: Path) -> int:
    conn = dbmod.open_db(db_path)
    try:
        return ledger.count(conn)
    finally:
        conn.close()


def test_frames_round_trip_and_wait_for_the_rest() -> None:
    data = frame([1, [["a", 1, None, 2.5]]]) + frame([2, []])
    buf = bytearray(data[:-3])  # the second frame is incomplete
    assert unframe(buf) == [[1, [["a", 1, None, 2.5]]]]
    buf += data[-3:]
    assert unframe(buf) == [[2, []]]
    assert buf == bytearray()


async def test_rows_larger_than_the_pipe_arrive_whole(tmp_path: Path) -> None:
    # ~20 MB in one loop iteration: far more than a pipe holds, so the writer gets it in pieces
    db_path = tmp_path / "llmgw.db"
    w = LedgerWriter(db_path)
    w.start()
    try:
        body = "x" * 100_000
        futs = [w.submit(row(i, request_body=body)) for i in range(200)]
        await asyncio.wait_for(asyncio.gather(*futs), 60)
        assert w.rows_written == 200 and w.queue_depth == 0
        conn = dbmod.open_db(db_path)
        try:
            lengths = [r[0] for r in conn.execute("SELECT length(request_body) FROM ledger")]
        finally:
            conn.close()
        assert lengths == [100_000] * 200
    finally:
        await asyncio.to_thread(w.stop)


async def test_writer_process_ignores_sigterm_and_sigint(tmp_path: Path) -> None:
    # a Ctrl-C or systemd's stop signals the whole process group: the daemon decides when the
    # ledger stops, so the writer must outlive the signal and keep committing
    db_path = tmp_path / "llmgw.db"
    w = LedgerWriter(db_path)
    w.start()
    try:
        await w.write(row(0))
        assert w._proc is not None
        os.kill(w._proc.pid, signal.SIGTERM)
        os.kill(w._proc.pid, signal.SIGINT)
        # both signals are pending before the writer runs again, so they are handled before row 1
        await asyncio.wait_for(w.write(row(1)), 10)
        assert w._proc.poll() is None
        assert count(db_path) == 2
    finally:
        await asyncio.to_thread(w.stop)
    assert w._proc is not None and w._proc.returncode == 0


async def test_a_dead_writer_is_restarted_and_loses_no_accepted_row(tmp_path: Path) -> None:
    db_path = tmp_path / "llmgw.db"
    w = LedgerWriter(db_path)
    w.start()
    try:
        await w.write(row(0))
        assert w.alive and w.health() is None
        assert w._proc is not None
        first = w._proc
        first.send_signal(signal.SIGSTOP)  # hold it so that the next row is surely in flight
        fut = w.submit(row(1))
        await asyncio.sleep(0)  # one loop turn: the hand-over scheduled by submit runs
        assert not w._pending  # row 1 is in the pipe: in flight
        w._backoff = 3600.0  # the restart waits until the test has looked at the writer while it is down
        first.kill()
        first.send_signal(signal.SIGCONT)
        await until(lambda: w._dead is not None)  # the EOF on its pipe arrives
        assert "restarting" in (w.health() or "")
        fut2 = w.submit(row(2))  # accepted while it is down: queued for the new writer
        assert not fut.done() and not fut2.done()
        assert w._restart_handle is not None
        w._restart_handle.cancel()
        w._restart()  # what the backoff timer does
        await asyncio.wait_for(asyncio.gather(fut, fut2), 10)
        assert w.restarts == 1 and w._proc is not first and w.alive and w.health() is None
    finally:
        await asyncio.to_thread(w.stop)
    assert count(db_path) == 3


async def test_a_restarted_writer_does_not_insert_confirmed_rows_twice(tmp_path: Path) -> None:
    # a writer killed after its commit but before its answer: the recovery frame finds the rows
    from llmgw.store.ledger import as_tuple, normalise_row

    db_path = tmp_path / "llmgw.db"
    w = LedgerWriter(db_path)
    w.start()
    try:
        await w.write(row(0))
        # row 1 committed behind the daemon's back, as if the answer had been lost
        conn = dbmod.open_db(db_path)
        with conn:
            conn.execute(ledger.insert_sql(), as_tuple(normalise_row(row(1))))
        conn.close()
        await resend_unconfirmed(w, [row(1), row(2)])
    finally:
        await asyncio.to_thread(w.stop)
    conn = dbmod.open_db(db_path)
    try:
        ids = [r[0] for r in conn.execute("SELECT request_id FROM ledger ORDER BY id")]
        assert ids == ["req-0", "req-1", "req-2"]
        assert w.committed == (3, conn.execute("SELECT MAX(id) FROM ledger").fetchone()[0])
    finally:
        conn.close()


async def test_a_locked_database_makes_the_writer_unhealthy_and_rows_wait(tmp_path: Path) -> None:
    db_path = tmp_path / "llmgw.db"
    w = LedgerWriter(db_path)
    w.start()
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        await w.write(row(0))
        holder.execute("BEGIN EXCLUSIVE")
        futs = [w.submit(row(i)) for i in range(1, 50)]
        await until(lambda: w.health() is not None)
        assert "database is locked" in (w.health() or "")
        assert not any(f.done() for f in futs)  # retried, not failed
        holder.execute("COMMIT")
        await asyncio.wait_for(asyncio.gather(*futs), 20)
        assert w.health() is None
    finally:
        holder.close()
        await asyncio.to_thread(w.stop)
    assert count(db_path) == 50


async def test_stop_on_the_loop_thread_commits_everything(tmp_path: Path) -> None:
    # stop() called synchronously on the loop's own thread (as a fixture teardown does) cannot
    # wait for the loop: it must drain the writer itself
    db_path = tmp_path / "llmgw.db"
    w = LedgerWriter(db_path, max_batch=3)
    w.start()
    futs = [w.submit(row(i)) for i in range(50)]
    w.stop()
    assert count(db_path) == 50
    assert all(f.done() and f.exception() is None for f in futs)
    assert w.rows_written == 50


def test_submit_outside_a_loop_and_after_stop(tmp_path: Path) -> None:
    w = LedgerWriter(tmp_path / "llmgw.db")
    w.start()
    w.stop()
    w.stop()  # idempotent

    async def go() -> None:
        with pytest.raises(RuntimeError, match="not running"):
            w.submit(row())

    asyncio.run(go())
    assert w._proc is not None and w._proc.returncode == 0


async def test_integrity_error_keeps_its_class(tmp_path: Path) -> None:
    db_path = tmp_path / "llmgw.db"
    w = LedgerWriter(db_path)
    w.start()
    try:
        conn = dbmod.open_db(db_path)
        conn.execute("CREATE TRIGGER boom BEFORE INSERT ON ledger WHEN NEW.route = 'boom' "
                     "BEGIN SELECT RAISE(ABORT, 'boom'); END")
        conn.commit()
        conn.close()
        with pytest.raises(sqlite3.IntegrityError, match="boom"):
            await w.write(row(1, route="boom"))
        await w.write(row(2))
    finally:
        await asyncio.to_thread(w.stop)
    assert count(db_path) == 1


def test_daemon_readyz_reports_a_dead_writer_until_it_is_back(daemon_factory: Any) -> None:
    d = daemon_factory("[providers.demo]\ntype = \"demo\"\n")
    assert httpx.get(d.url + "/readyz").status_code == 200
    writer = d.gateway.writer
    proc = writer._proc
    proc.send_signal(signal.SIGSTOP)  # down and not restarting yet: the stall is what shows
    writer.stall_seconds = 0.0
    req = {"model": "demo/echo", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"Authorization": f"Bearer {d.key}"}
    try:
        with httpx.Client(timeout=30) as c:
            d._loop.call_soon_threadsafe(lambda: writer.submit(
                {"request_id": "x", "ts_ms": 1, "route": "chat", "status": 200, "outcome": "ok"}))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                r = c.get(d.url + "/readyz")
                if r.status_code == 503:
                    break
                time.sleep(0.05)
            assert r.status_code == 503
            h = c.get(d.url + "/healthz")
            assert h.status_code == 503 and "committed nothing" in h.json()["problems"][0]
            # a request now is refused before any upstream attempt, with a typed 503
            r = c.post(d.url + "/v1/chat/completions", headers=auth, json=req)
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "ledger_unavailable"
    finally:
        proc.kill()
        proc.send_signal(signal.SIGCONT)
    writer.stall_seconds = 5.0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and httpx.get(d.url + "/healthz").status_code != 200:
        time.sleep(0.05)
    assert httpx.get(d.url + "/readyz").status_code == 200
    r = httpx.post(d.url + "/v1/chat/completions", headers=auth, json=req)
    assert r.status_code == 200
    assert writer.restarts == 1
    assert [x["status"] for x in d.ledger()] == [200, 503, 200]  # the queued row came back


async def test_a_row_that_cannot_be_encoded_fails_alone(tmp_path: Path) -> None:
    from llmgw.store.writer import LedgerWriteError

    db_path = tmp_path / "llmgw.db"
    w = LedgerWriter(db_path)
    w.start()
    try:
        futs = [w.submit(row(i, request_id=object() if i == 2 else f"req-{i}"), trusted=True) for i in range(5)]
        results = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 10)
        assert [type(r).__name__ for r in results] == ["NoneType", "NoneType", "LedgerWriteError", "NoneType",
                                                      "NoneType"]
        assert isinstance(results[2], LedgerWriteError)
        await w.write(row(9))  # the numbering stayed in step: later rows still resolve
        assert w.rows_written == 5 and w.queue_depth == 0
    finally:
        await asyncio.to_thread(w.stop)
    assert count(db_path) == 5


async def test_a_late_commit_fails_the_wait_but_keeps_the_row(tmp_path: Path) -> None:
    from llmgw.store.writer import CommitTimeout

    db_path = tmp_path / "llmgw.db"
    w = LedgerWriter(db_path)
    w.start()
    try:
        await w.write(row(0))
        assert w._proc is not None
        w._proc.send_signal(signal.SIGSTOP)  # commits stop coming
        try:
            with pytest.raises(CommitTimeout):
                await asyncio.wait_for(w.submit(row(1), deadline=time.monotonic() + 0.3), 20)
        finally:
            w._proc.send_signal(signal.SIGCONT)
        await w.write(row(2))  # commits come in order: row 1 is in before row 2's answer
    finally:
        await asyncio.to_thread(w.stop)
    assert count(db_path) == 3


def _move_db(src: Path, dst: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{src}{suffix}")
        if p.exists():
            p.rename(Path(f"{dst}{suffix}"))


async def test_a_writer_that_cannot_start_is_retried_with_backoff(tmp_path: Path) -> None:
    db_path = tmp_path / "llmgw.db"
    w = LedgerWriter(db_path)
    w.start()
    aside = tmp_path / "aside.db"
    try:
        await w.write(row(0))
        assert w._proc is not None
        w._proc.send_signal(signal.SIGSTOP)
        fut = w.submit(row(1))
        await asyncio.sleep(0)  # row 1 is in the pipe
        _move_db(db_path, aside)  # the database goes away; garbage takes its place
        db_path.write_bytes(b"not a database" * 100)
        w._proc.kill()
        w._proc.send_signal(signal.SIGCONT)
        await until(lambda: w.restarts >= 3, 30)  # each new writer fails to open it and exits
        assert w._backoff > 0.1 and "restarting" in (w.health() or "")
        assert not fut.done()
        db_path.unlink()
        _move_db(aside, db_path)
        await asyncio.wait_for(fut, 30)  # the next restart works and gets row 1 again
        assert w.health() is None
    finally:
        await asyncio.to_thread(w.stop)
    assert count(db_path) == 2


async def test_writers_killed_under_thousands_of_rows_lose_none_and_double_none(tmp_path: Path) -> None:
    # recovery frames far larger than one batch (and than SQLite's variable limit in one statement)
    db_path = tmp_path / "llmgw.db"
    w = LedgerWriter(db_path)
    w.start()
    futs = []
    try:
        for k in range(20):
            futs += [w.submit(row(k * 500 + i)) for i in range(500)]
            await asyncio.sleep(0)
            if k in (5, 12):
                assert w._proc is not None
                w._proc.kill()
            await asyncio.sleep(0.01)
        results = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 60)
        assert not [r for r in results if isinstance(r, BaseException)]
        assert w.restarts >= 1
    finally:
        await asyncio.to_thread(w.stop)
    conn = dbmod.open_db(db_path)
    try:
        n, distinct, top = conn.execute("SELECT COUNT(*), COUNT(DISTINCT request_id), MAX(id) FROM ledger").fetchone()
    finally:
        conn.close()
    assert n == distinct == 10_000
    assert w.committed == (10_000, top)  # every row up to the committed id is confirmed
