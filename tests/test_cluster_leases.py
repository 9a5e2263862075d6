"""Budget leases in a real redis-server (scale-out, step 1): the sum of every instance's admitted
spend never exceeds a hard cap, a dead instance's slice counts as spent, Redis down fails closed."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import wait_until
from llmgw.cluster.leases import GovernanceUnavailable, LeaseStore, LocalLease
from services import free_port, redis_server

redis = pytest.importorskip("redis", reason="redis-py not installed (the test extra has it)")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from redis_server(tmp_path_factory.mktemp("redis"))


def store(url: str, **kw: int) -> LeaseStore:
    return LeaseStore(redis.Redis.from_url(url), **kw)


def test_instances_together_never_admit_more_than_the_cap(redis_url: str) -> None:
    cap, window, budget = 5_000_000, 1_700_000_000_000, "bud_race"
    admitted = [0] * 8
    errors: list[BaseException] = []

    def instance(i: int) -> None:
        try:
            s, rnd, lease = store(redis_url), random.Random(i), LocalLease()
            for _ in range(300):
                cost = rnd.randrange(1, 40_000)
                if not lease.reserve(cost):
                    if lease.unreported:  # report what was used, then ask for a new slice
                        sent = lease.unreported
                        lease.reported(s.settle(budget, window, f"i{i}", sent), sent)
                    g = s.acquire(budget, window, f"i{i}", rnd.randrange(20_000, 200_000), cap, seed_spent=1_000_000)
                    lease.granted(g)
                    assert g.spent + g.leased <= cap
                    if not lease.reserve(cost):
                        continue  # refused: the cluster is at its cap
                lease.settle(cost, cost - rnd.randrange(0, cost // 2 + 1))
                admitted[i] += cost  # what it admitted (the reservation: an upper bound of the cost)
            sent = lease.unreported
            lease.reported(s.settle(budget, window, f"i{i}", sent, leave=True), sent)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=instance, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, [str(e) for e in errors[:2]]
    spent, leased, reclaimed = store(redis_url).state(budget, window)
    assert leased == 0 and reclaimed == 0  # every instance left and gave its rest back
    assert 1_000_000 < spent <= cap  # seeded once from the ledger, then what was settled, never past the cap
    assert sum(admitted) > cap - 1_000_000  # the instances did run into the cap (a test that can fail)


def test_a_dead_instance_loses_its_slice_as_spent(redis_url: str) -> None:
    s = store(redis_url, ttl_ms=300)
    budget, window, cap = "bud_dead", 1_700_000_000_000, 1_000_000
    a, b = LocalLease(), LocalLease()
    a.granted(s.acquire(budget, window, "a", 600_000, cap, seed_spent=0))
    b.granted(s.acquire(budget, window, "b", 600_000, cap, seed_spent=0))
    assert (a.slice, b.slice) == (600_000, 400_000)  # b got only what was left
    assert a.reserve(100_000)
    a.settle(100_000, 70_000)
    # "a" is killed: it never renews. "b" keeps renewing; after a's TTL its slice counts as spent
    wait_until(lambda: (b.granted(s.acquire(budget, window, "b", 0, cap, seed_spent=0)), s.state(budget, window))[1][2]
               == 600_000, 10, "the dead instance's slice to be taken back")
    spent, leased, reclaimed = s.state(budget, window)
    assert (spent, leased, reclaimed) == (600_000, 400_000, 600_000)
    g = s.acquire(budget, window, "c", 500_000, cap, seed_spent=0)
    assert g.granted == 0  # nothing left: the dead slice is not handed out again
    late = s.settle(budget, window, "a", a.unreported)  # a comes back: its slice is gone
    assert late.granted == -1
    a.reported(late, a.unreported)
    assert (a.slice, a.lost) == (0, 1) and not a.reserve(1)


def test_settle_reports_used_and_gives_back(redis_url: str) -> None:
    s = store(redis_url)
    budget, window, cap = "bud_settle", 1_700_000_000_000, 1_000_000
    g = s.acquire(budget, window, "x", 300_000, cap, seed_spent=250_000)
    assert (g.granted, g.slice, g.spent, g.leased) == (300_000, 300_000, 250_000, 300_000)
    g = s.acquire(budget, window, "y", 10**9, cap, seed_spent=999)  # the seed applies once only
    assert (g.granted, g.spent) == (450_000, 250_000)
    g = s.settle(budget, window, "x", 120_000, give_back=100_000)
    assert (g.granted, g.slice, g.spent, g.leased) == (120_000, 80_000, 370_000, 530_000)
    g = s.settle(budget, window, "x", 5_000, leave=True)
    assert (g.slice, g.spent, g.leased) == (0, 375_000, 450_000)
    with pytest.raises(ValueError):
        s.acquire(budget, window, "x", -1, cap, seed_spent=0)


def test_unreachable_redis_fails_closed() -> None:
    s = LeaseStore(redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5))
    with pytest.raises(GovernanceUnavailable) as e:
        s.acquire("b", 0, "i", 1, 10, seed_spent=0)
    assert e.value.status == 503 and e.value.type == "governance_unavailable"


def test_redis_is_only_imported_when_used(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = "import llmgw.gateway, llmgw.server.app, sys; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
