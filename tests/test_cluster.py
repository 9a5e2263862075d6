"""Cluster mode through real daemons on one real redis-server (issue 15): exact hard caps across
instances, with an instance SIGKILLed and with Redis restarted mid-burst; Redis unreachable (fail
closed, fail open with its event); rate limits and Idempotency-Key shared; Redis off the hot path.

The proof tests run twice: on SQLite, each instance has its own home holding the same definitions
(a copy of one template database), so the sum of their ledgers is the cluster's spend; on one
PostgreSQL database shared by every instance (``[store] url``), one ledger, each instance's rows
told apart by its request-id prefix."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import UPSTREAM_ENV, Daemon, start_daemon, upstream_config, wait_until
from llmgw import paths
from llmgw.gateway import RequestIds
from llmgw.governance import hierarchy
from llmgw.governance.budgets import upsert_budget
from llmgw.governance.keys import mint
from llmgw.store import db as store_db
from llmgw.store.conn import PgStore
from services import RedisServer
from test_faults import Served

redis = pytest.importorskip("redis", reason="redis-py not installed (the test extra has it)")

CHAT = "/v1/chat/completions"
CAP = 240_000  # a request reserves ~23.6k nano-dollars (its bound) and costs ~5k: ~10 bounds fit at once
#: every instance's business clock stands here (mid-January 2027): a burst of several seconds must not
#: straddle a month end (the suite runs at any instant), where the cap would rightly start afresh
NOW_MS = 1_800_000_000_000
PREFIX = len(RequestIds().prefix)  # the part of a request id that names the instance that made it


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


STORES = ["sqlite", "postgresql"]


def store_url(kind: str, request: pytest.FixtureRequest) -> str | None:
    """None for SQLite homes; a fresh database on the session's PostgreSQL server for ``postgresql``."""
    return None if kind == "sqlite" else str(request.getfixturevalue("pg_url"))


def template(tmp: Path, cap: int = CAP, *, hard: bool = True, fail_open: bool = False,
             rpm: int | None = None, url: str | None = None) -> tuple[Path, str, str]:
    """A database with customer ``burst``, its key and its monthly budget: (file, key, budget id);
    with ``url`` they are made in that PostgreSQL database (the file is then not created)."""
    db = tmp / "template.db"
    conn = store_db.open_db(PgStore(url) if url else db)
    try:
        with conn:
            hierarchy.create_customer(conn, "burst")
            key = mint(conn, name="burst", customer_id="burst", rpm=rpm)[0]
            row, _ = upsert_budget(conn, "customer", "burst", "month", cap, hard=hard, fail_open=fail_open)
            bid = row["id"]
    finally:
        conn.close()
    return db, key, bid


def homes(tmp: Path, db: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        home = tmp / f"node{i}"
        home.mkdir(parents=True)
        if db.exists():  # SQLite: each home a copy of the definitions
            shutil.copy(db, paths.db_path(home))
        out.append(home)
    return out


def store_section(url: str | None) -> str:
    return "" if url is None else '\n[store]\nurl_env = "LLMGW_TEST_STORE_URL"\n'


def store_env(url: str | None) -> dict[str, str]:
    return {**UPSTREAM_ENV, **({} if url is None else {"LLMGW_TEST_STORE_URL": url})}


def cluster_config(upstream: Any, url: str, prefix: str, extra: str = "") -> str:
    return upstream_config(upstream, f"""
[cluster]
redis_url = "{url}"
prefix = "{prefix}"
sync_interval = 0.1
lease_ttl = 2
timeout = 2
{extra}""")


def body(i: int, tag: str = "c") -> dict[str, Any]:
    return {"model": "openai/gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": f"{tag} caption {i}"}]}


async def burst(urls: list[str], key: str, n: int, tag: str = "c") -> list[tuple[int, httpx.Response]]:
    """``n`` concurrent requests spread round-robin over ``urls``: (instance index, response); the
    prompts of instance j start with ``{tag}{j}``."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as c:
        rs = await asyncio.gather(*[c.post(urls[i % len(urls)] + CHAT, headers={"Authorization": f"Bearer {key}"},
                                           json=body(i, f"{tag}{i % len(urls)}")) for i in range(n)])
    return [(i % len(urls), r) for i, r in enumerate(rs)]


def ledger(home: Path, url: str | None = None, prefix: str = "") -> list[dict[str, Any]]:
    """Customer ``burst``'s ledger rows of one instance: its home's SQLite file, or (``url``) the
    shared PostgreSQL ledger's rows whose request id starts with ``prefix``."""
    conn = store_db.connect(PgStore(url) if url else paths.db_path(home))
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM ledger WHERE customer_id = 'burst' ORDER BY id")
                if r["request_id"].startswith(prefix)]
    finally:
        conn.close()


def node_rows(nodes: list[Daemon], url: str | None) -> list[list[dict[str, Any]]]:
    """Each in-process instance's ledger rows (on PostgreSQL: by its gateway's request-id prefix)."""
    return [ledger(d.home, url, d.gateway.new_request_id.prefix if url else "") for d in nodes]


def chat_calls(upstream: Any, tag: str | None = None) -> int:
    return sum(1 for r in upstream.requests if r["path"] == CHAT and (
        tag is None or (r["json"] or {}).get("messages", [{}])[-1].get("content", "").startswith(tag + " ")))


def window(url: str, prefix: str, bid: str) -> tuple[int, int, int]:
    """(spent, leased, reclaimed) of the budget's only window in Redis."""
    from llmgw.cluster.leases import LeaseStore

    client = redis.Redis.from_url(url)
    try:
        keys = [k.decode() for k in client.scan_iter(f"{prefix}:budget:{bid}:*") if not k.endswith(b":slices")]
        assert len(keys) == 1, keys
        return LeaseStore(client, prefix=prefix).state(bid, int(keys[0].rsplit(":", 1)[1]))
    finally:
        client.close()


def start_nodes(upstream: Any, redis_url: str, prefix: str, tmp: Path, db: Path, n: int = 3,
                extra: str = "", url: str | None = None) -> list[Daemon]:
    nodes = [start_daemon(home, cluster_config(upstream, redis_url, prefix, extra + store_section(url)),
                          store_env(url)) for home in homes(tmp, db, n)]
    for d in nodes:
        d.set_clock(NOW_MS)
    return nodes


@pytest.mark.parametrize("kind", STORES)
def test_three_instances_hold_one_cap_under_300_concurrent_requests(tmp_path, upstream, redis_srv, kind, request):
    url = store_url(kind, request)
    db, key, bid = template(tmp_path, url=url)
    nodes = start_nodes(upstream, redis_srv.url, "t3", tmp_path, db, url=url)
    try:
        results = asyncio.run(burst([d.url for d in nodes], key, 300))
    finally:
        for d in nodes:
            d.stop()  # gives every slice back
    codes = [r.status_code for _, r in results]
    assert set(codes) <= {200, 429}, codes
    assert all(r.json()["error"]["type"] == "budget_exceeded" for _, r in results if r.status_code == 429)
    ok = codes.count(200)
    rows = node_rows(nodes, url)
    if url:  # one ledger: every row belongs to one of the instances
        assert sum(map(len, rows)) == len(ledger(tmp_path, url)) == len(results)
    for i, rs in enumerate(rows):  # exactly one row per request, on the instance that took it
        assert len(rs) == sum(1 for j, _ in results if j == i)
        assert len({r["request_id"] for r in rs}) == len(rs)
    spent = sum(r["cost_nanos"] for rs in rows for r in rs)
    assert 0 < spent <= CAP
    assert ok >= 5  # the cap is shared, not split three ways up front
    assert sum(1 for rs in rows for r in rs if r["status"] == 200) == ok
    assert chat_calls(upstream) == ok  # refused requests never reached the provider
    redis_spent, leased, reclaimed = window(redis_srv.url, "t3", bid)
    assert (redis_spent, leased, reclaimed) == (spent, 0, 0)  # every cost reported exactly, every slice returned


@pytest.mark.parametrize("kind", STORES)
def test_an_instance_killed_mid_burst_never_causes_overspend(tmp_path, upstream, redis_srv, kind, request):
    url = store_url(kind, request)
    db, key, bid = template(tmp_path, url=url)
    cfg = cluster_config(upstream, redis_srv.url, "tk", store_section(url))
    nodes = [Served(home, cfg, store_env(url)) for home in homes(tmp_path, db, 3)]
    try:
        victim = nodes[0]
        box: dict[str, Any] = {}

        def kill_when_admitting() -> None:  # the first instance dies as soon as it has sent requests upstream
            wait_until(lambda: chat_calls(upstream, "k0") >= 1 or "done" in box, 60, "a provider call from node 0")
            victim.p.send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill_when_admitting)
        upstream.add_fault(delay=0.2, times=300)  # keep requests in flight across the kill
        killer.start()

        async def run() -> list[tuple[int, httpx.Response | BaseException]]:
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=300)) as c:
                async def one(i: int) -> tuple[int, httpx.Response | BaseException]:
                    try:
                        return i % 3, await c.post(nodes[i % 3].url + CHAT, headers={"Authorization": f"Bearer {key}"},
                                                   json=body(i, f"k{i % 3}"))
                    except httpx.HTTPError as e:
                        return i % 3, e
                return await asyncio.gather(*[one(i) for i in range(300)])

        results = asyncio.run(run())
        box["done"] = True
        killer.join(60)
        assert victim.p.wait(10) == -signal.SIGKILL
        survivors = nodes[1:]
        # the dead instance's slice is taken back as spent once its TTL (2 s) runs out
        wait_until(lambda: window(redis_srv.url, "tk", bid)[2] > 0 or window(redis_srv.url, "tk", bid)[1] == 0,
                   30, "the killed instance's slice to expire")
        # after the TTL the survivors go on under what is left of the cap
        late = asyncio.run(burst([s.url for s in survivors], key, 40, "late"))
        for s in survivors:
            s.stop()
    finally:
        for s in nodes:
            s.stop(signal.SIGKILL if s.p.poll() is None else signal.SIGTERM)
    if url:  # one ledger: a survivor's rows carry the request-id prefix of its answers, the rest are the victim's
        every = ledger(tmp_path, url)
        mine = {i: {r.headers["x-request-id"][:PREFIX] for j, r in [*results, *((j + 1, r) for j, r in late)]
                    if j == i and isinstance(r, httpx.Response)} for i in (1, 2)}
        assert all(len(p) == 1 for p in mine.values()), mine
        rows = {i: [r for r in every if r["request_id"][:PREFIX] in mine[i]] for i in (1, 2)}
        rows[0] = [r for r in every if r["request_id"][:PREFIX] not in mine[1] | mine[2]]
    else:
        rows = {i: ledger(s.home) for i, s in enumerate(nodes)}
    for i in (1, 2):  # survivors: one row per request they took, upstream calls = their admitted requests
        took = sum(1 for j, _ in results if j == i) + sum(1 for j, _ in late if j == i - 1)
        assert len(rows[i]) == took
        ok = sum(1 for r in rows[i] if r["status"] == 200)
        assert chat_calls(upstream, f"k{i}") + chat_calls(upstream, f"late{i - 1}") == ok
        answered = [r for j, r in results if j == i] + [r for j, r in late if j == i - 1]
        assert ok == sum(1 for r in answered if isinstance(r, httpx.Response) and r.status_code == 200)
    # what the cluster really spent: every row written, plus the victim's provider calls it never recorded
    per_call = max(r["cost_nanos"] for rs in rows.values() for r in rs if r["status"] == 200)
    recorded = sum(r["cost_nanos"] for rs in rows.values() for r in rs)
    unrecorded = chat_calls(upstream, "k0") - sum(1 for r in rows[0] if r["status"] == 200)
    assert unrecorded >= 0
    assert 0 < recorded and recorded + unrecorded * per_call <= CAP
    _, leased, reclaimed = window(redis_srv.url, "tk", bid)
    assert leased == 0  # the survivors gave theirs back, the victim's was taken back


@pytest.mark.parametrize("kind", STORES)
def test_redis_restarted_mid_burst_keeps_the_cap(tmp_path, upstream, redis_srv, kind, request):
    url = store_url(kind, request)
    db, key, bid = template(tmp_path, url=url)
    nodes = start_nodes(upstream, redis_srv.url, "tr", tmp_path, db, url=url)
    try:
        first = asyncio.run(burst([d.url for d in nodes], key, 150, "a"))
        assert any(r.status_code == 429 for _, r in first)  # the cap is reached before Redis goes

        async def second() -> list[tuple[int, httpx.Response]]:
            task = asyncio.ensure_future(burst([d.url for d in nodes], key, 150, "b"))
            await asyncio.to_thread(redis_srv.stop)  # everything Redis knew is lost
            await asyncio.to_thread(redis_srv.start)
            return await task

        later = asyncio.run(second())
        # once the instances have re-added what they knew, a third burst finds the cap still spent
        wait_until(lambda: all(d.gateway.budgets.down is None for d in nodes), 30, "the instances to see Redis again")
        third = asyncio.run(burst([d.url for d in nodes], key, 60, "c"))
    finally:
        for d in nodes:
            d.stop()
    results = first + later + third
    codes = {r.status_code for _, r in results}
    assert codes <= {200, 429, 503}, codes
    assert all(r.json()["error"]["type"] == "governance_unavailable" for _, r in results if r.status_code == 503)
    rows = [r for rs in node_rows(nodes, url) for r in rs]
    assert len(rows) == len(results) == len({r["request_id"] for r in rows})
    spent = sum(r["cost_nanos"] for r in rows)
    assert 0 < spent <= CAP
    assert chat_calls(upstream) == sum(1 for _, r in results if r.status_code == 200)
    assert not any(r.status_code == 200 for _, r in third) or spent <= CAP


def test_after_a_redis_restart_an_idle_instance_restores_the_spend_it_saw(tmp_path, upstream, redis_srv):
    db, key, _ = template(tmp_path, 40_000)  # 4 requests fit (a bound of ~23.6k on top of the spend)
    a, b = start_nodes(upstream, redis_srv.url, "tx", tmp_path, db, 2)
    try:
        codes = [httpx.post(a.url + CHAT, headers={"Authorization": f"Bearer {key}"}, json=body(i),
                            timeout=30).status_code for i in range(6)]
        assert codes == [200] * 4 + [429] * 2
        wait_until(lambda: not a.gateway.budgets._slices, 30, "instance a to give its idle slice back")
        redis_srv.stop()
        redis_srv.start()  # empty: only instance a knows what was spent (b's ledger has nothing)
        r = httpx.post(b.url + CHAT, headers={"Authorization": f"Bearer {key}"}, json=body(9), timeout=30)
        assert r.status_code == 429, r.text  # a pushed its sight of the spend during the hold
        assert r.json()["error"]["type"] == "budget_exceeded"
    finally:
        a.stop()
        b.stop()
    assert sum(r["cost_nanos"] for d in (a, b) for r in ledger(d.home)) <= 40_000


def test_redis_unreachable_fails_closed_or_open_per_budget(tmp_path, upstream, redis_srv):
    db, key, bid = template(tmp_path, 50_000)  # room for 2 bounds: the 2nd request needs a 2nd lease
    conn = store_db.open_db(db)
    with conn:
        hierarchy.create_customer(conn, "open")
        open_key = mint(conn, name="open", customer_id="open")[0]
        upsert_budget(conn, "customer", "open", "month", 10**9, hard=True, fail_open=True)
        hierarchy.create_customer(conn, "soft")
        soft_key = mint(conn, name="soft", customer_id="soft")[0]
        upsert_budget(conn, "customer", "soft", "month", 10**9, hard=False)
    conn.close()
    [d] = start_nodes(upstream, redis_srv.url, "td", tmp_path, db, 1)
    try:
        def post(k: str, i: int) -> httpx.Response:
            return httpx.post(d.url + CHAT, headers={"Authorization": f"Bearer {k}"}, json=body(i), timeout=30)

        assert post(key, 0).status_code == 200
        assert httpx.get(d.url + "/readyz").status_code == 200
        redis_srv.stop()
        # what is left of the slice leased before still admits; this request needs more of the cap
        wait_until(lambda: d.gateway.budgets.down is not None, 30, "the instance to notice Redis is gone")
        r = post(key, 1)
        assert r.status_code == 503, r.text
        err = r.json()["error"]
        assert err["type"] == "governance_unavailable" and "hard cap" in err["message"]
        assert r.headers["retry-after"] == "1"
        ready = httpx.get(d.url + "/readyz")
        assert ready.status_code == 503 and "Redis" in json.dumps(ready.json())
        assert post(open_key, 2).status_code == 200  # fail_open: admitted on this instance's view
        assert post(open_key, 3).status_code == 200
        assert post(soft_key, 4).status_code == 200  # a soft budget never needs Redis
        redis_srv.start()
        wait_until(lambda: httpx.get(d.url + "/readyz").status_code == 200, 30, "/readyz to recover")
        assert post(key, 5).status_code == 200
    finally:
        d.stop()
    conn = store_db.connect(paths.db_path(d.home))
    try:
        kinds = [(r["kind"], r["scope_id"]) for r in conn.execute("SELECT kind, scope_id FROM events")]
        statuses = [r["status"] for r in conn.execute("SELECT status FROM ledger WHERE key_id IS NOT NULL ORDER BY id")]
    finally:
        conn.close()
    assert kinds.count(("governance_degraded", "open")) == 1  # once per outage and budget
    assert statuses == [200, 503, 200, 200, 200, 200]  # nothing admitted or refused is missing from the ledger


def test_redis_stays_off_the_hot_path_while_a_budget_has_room(tmp_path, upstream, redis_srv):
    db, key, _ = template(tmp_path, 10**10)
    [d] = start_nodes(upstream, redis_srv.url, "th", tmp_path, db, 1)
    try:
        with httpx.Client(timeout=30) as c:
            for i in range(30):
                r = c.post(d.url + CHAT, headers={"Authorization": f"Bearer {key}"}, json=body(i))
                assert r.status_code == 200
        book = d.gateway.budgets
        assert book.lease_calls <= 3  # a slice (a sixteenth of the cap) covers them: not a call per request
        scrape = httpx.get(d.url + "/metrics").text
        assert f"llmgw_cluster_lease_calls {book.lease_calls}" in scrape and "llmgw_cluster_redis_up 1" in scrape
    finally:
        d.stop()


def test_rate_limits_are_shared_by_every_instance(tmp_path, upstream, redis_srv):
    db, key, _ = template(tmp_path, 10**10, rpm=3)
    nodes = start_nodes(upstream, redis_srv.url, "tl", tmp_path, db, 2)
    try:
        codes = []
        for i in range(6):
            r = httpx.post(nodes[i % 2].url + CHAT, headers={"Authorization": f"Bearer {key}"}, json=body(i), timeout=30)
            codes.append(r.status_code)
            if r.status_code == 429:
                err = r.json()["error"]
                assert err["type"] == "rate_limit_exceeded" and err["code"] == "requests"
                assert "across every llmgw instance" in err["message"]
                assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert codes == [200, 200, 200, 429, 429, 429]  # 3 a minute in all, not 3 per instance
    finally:
        for d in nodes:
            d.stop()


def test_a_large_rate_limit_takes_cells_in_batches_and_gives_idle_ones_back(tmp_path, upstream, redis_srv):
    db, key, _ = template(tmp_path, 10**10, rpm=6400)  # batches of 100 cells (1/64 of the limit)
    [d] = start_nodes(upstream, redis_srv.url, "tb", tmp_path, db, 1)
    client = redis.Redis.from_url(redis_srv.url)
    try:
        limiter = d.gateway.shared_limits
        with httpx.Client(timeout=30) as c:
            # the first request waits out the hold of a fresh Redis (its cells go back meanwhile)
            assert c.post(d.url + CHAT, headers={"Authorization": f"Bearer {key}"}, json=body(0)).status_code == 200
            wait_until(lambda: not limiter._cells, 30, "the idle cells to go back")
            before = limiter.calls
            remaining = []
            for i in range(30):
                r = c.post(d.url + CHAT, headers={"Authorization": f"Bearer {key}"}, json=body(i))
                assert r.status_code == 200
                remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
        assert limiter.calls - before == 1  # one Redis call for 30 requests
        assert [a - b for a, b in zip(remaining, remaining[1:], strict=False)] == [1] * 29
        [kid] = [k.decode().rsplit(":", 1)[1] for k in client.scan_iter("tb:rl:*")]
        assert limiter._cells[kid].req == 70  # the batch of 100 came from the shared bucket at once
        wait_until(lambda: not limiter._cells, 30, "the unused cells to go back to the bucket")
    finally:
        client.close()
        d.stop()


def test_rate_limit_scripts_take_batches_and_take_back_only_what_is_unspent(redis_srv):
    from llmgw.cluster.node import _GCRA, _GCRA_SETTLE

    client = redis.Redis.from_url(redis_srv.url)
    try:
        take, back = client.register_script(_GCRA), client.register_script(_GCRA_SETTLE)
        iv = 60 / 640  # 94 ms a cell: wide margins for the time the calls take

        def debt() -> float:
            sec, usec = client.time()
            return float(client.hget("u:rl:k", "r")) - (sec + usec / 1e6)

        code, _, _, _, gr, gt = take(keys=["u:rl:k"], args=[640, 0, 50, 100, 0])
        assert (int(code), int(gr), int(gt)) == (0, 100, 0)
        d1 = debt()
        assert 99 * iv < d1 <= 100 * iv
        back(keys=["u:rl:k"], args=[repr(-70 * iv), "0"])  # 70 cells unused
        assert 29 * iv < debt() <= 30 * iv
        back(keys=["u:rl:k"], args=[repr(-1000 * iv), "0"])  # never below now: nothing is returned twice
        assert -0.01 < debt() <= 0
        # a bucket nearly empty grants what is left (at least this request's cell), then refuses
        take(keys=["u:rl:k"], args=[640, 0, 0, 630, 0])
        code, _, _, _, gr, _ = take(keys=["u:rl:k"], args=[640, 0, 0, 100, 0])
        assert int(code) == 0 and 1 <= int(gr) <= 11
        code, wait, *_ = take(keys=["u:rl:k"], args=[640, 0, 0, 100, 0])
        assert int(code) == 1 and float(wait) > 0
        # tokens: an estimate above the per-minute limit is taken whole, with no batch on top
        code, _, _, _, _, gt = take(keys=["u:rl:t"], args=[0, 1000, 5000, 0, 5000])
        assert (int(code), int(gt)) == (0, 5000)
    finally:
        client.close()


def test_an_idempotency_key_runs_once_across_instances(tmp_path, upstream, redis_srv):
    db, key, _ = template(tmp_path, 10**10)
    nodes = start_nodes(upstream, redis_srv.url, "ti", tmp_path, db, 2)
    upstream.add_fault(delay=0.5)  # the first is still running when the duplicate arrives
    h = {"Authorization": f"Bearer {key}", "Idempotency-Key": "order-77"}
    try:
        async def both() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as c:
                first = asyncio.ensure_future(c.post(nodes[0].url + CHAT, headers=h, json=body(1)))
                for _ in range(3000):  # until the first request is upstream (no fixed sleep: polled)
                    if chat_calls(upstream) >= 1:
                        break
                    await asyncio.sleep(0.01)
                dup = await c.post(nodes[1].url + CHAT, headers=h, json=body(1))
                same = await c.post(nodes[0].url + CHAT, headers=h, json=body(1))
                reused = await c.post(nodes[1].url + CHAT, headers=h, json=body(2))
                return [await first, dup, same, reused]

        first, dup, same, reused = asyncio.run(both())
    finally:
        for d in nodes:
            d.stop()
    assert first.status_code == 200
    # the other instance waited for the first to end, then refused to run it again (its store is not shared)
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "idempotency_key_answered_elsewhere"
    assert same.status_code == 200 and same.headers["x-llmgw-idempotent-replay"] == "true"
    assert same.json() == first.json()
    assert reused.status_code == 400 and reused.json()["error"]["code"] == "idempotency_key_reused"
    assert chat_calls(upstream) == 1
