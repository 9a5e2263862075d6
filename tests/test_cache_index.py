"""The semantic cache's usearch index (``llmgw.cache.index``) and its SQLite entries
(``llmgw.cache.store``): round trips, thresholds in code, rebuilds from SQLite, partitions, TTL, LRU."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmgw import paths
from llmgw.cache import store
from llmgw.cache.index import VectorIndex
from llmgw.config import CacheConfig
from llmgw.store import db as dbmod

DIM = 16


def vec(seed: int) -> Any:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def near(base: Any, cos: float, seed: int = 99) -> Any:
    """A unit vector with cosine ``cos`` to the unit vector ``base``."""
    r = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    r -= r.dot(base) * base
    r /= np.linalg.norm(r)
    return (cos * base + np.sqrt(1 - cos * cos) * r).astype(np.float32)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = dbmod.open_db(tmp_path / "llmgw.db")
    yield c
    c.close()


def put(conn: sqlite3.Connection, exact: str, *, now: int = 1000, vector: Any = None, **kw: Any) -> int:
    args: dict[str, Any] = {"scope": "cust", "model": "m", "context_hash": "ctx", "response": b"{}",
                            "content_type": "application/json", "now_ms": now}
    args.update(kw)
    new_id, _ = store.insert(conn, exact_hash=exact, vector=vector, **args)
    return new_id


# ---- index ---------------------------------------------------------------------------------------


def test_cache_index_path_is_next_to_the_db(tmp_path: Path) -> None:
    assert paths.cache_index_path(tmp_path).parent == paths.db_path(tmp_path).parent


def test_add_search_remove_save_restore_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cache.usearch"
    ix = VectorIndex(path, DIM)
    assert ix.problem == "missing" and len(ix) == 0 and ix.search(vec(1), 5) == []
    for i in range(1, 51):
        ix.add(i, vec(i))
    assert len(ix) == 50
    hits = ix.search(vec(7), 3)
    assert hits[0][0] == 7 and hits[0][1] == pytest.approx(1.0, abs=2e-3)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert ix.remove(7) and not ix.remove(7) and 7 not in ix
    assert len(ix) == 49 and all(k != 7 for k, _ in ix.search(vec(7), 10))
    ix.add(3, vec(300))  # replacing a key keeps one vector for it
    assert len(ix) == 49 and ix.search(vec(300), 1)[0][0] == 3
    ix.save()
    assert path.exists() and not path.with_name(path.name + ".tmp").exists()

    again = VectorIndex(path, DIM, expansion_search=150)
    assert again.problem is None and len(again) == 49 and 7 not in again
    assert again._index.expansion_search == 150
    assert again.search(vec(12), 1)[0][0] == 12
    again.add(7, vec(7))  # restored index is writable (restore, not view)
    assert again.search(vec(7), 1)[0][0] == 7


def test_similarity_threshold_is_applied_in_code(tmp_path: Path) -> None:
    ix = VectorIndex(tmp_path / "i.usearch", DIM)
    base = vec(1)
    ix.add(1, near(base, 0.99, 1))
    ix.add(2, near(base, 0.95, 2))
    ix.add(3, near(base, 0.80, 3))
    sims = dict(ix.search(base, 3))
    assert sims[1] == pytest.approx(0.99, abs=3e-3)
    assert sims[2] == pytest.approx(0.95, abs=3e-3)
    assert sims[3] == pytest.approx(0.80, abs=3e-3)
    assert [k for k, _ in ix.search(base, 3, threshold=0.97)] == [1]
    assert [k for k, _ in ix.search(base, 3, threshold=0.90)] == [1, 2]
    assert ix.search(base, 3, threshold=0.999) == []


def _index_with_sqlite(conn: sqlite3.Connection, path: Path, n: int = 20) -> list[int]:
    ids = [put(conn, f"h{i}", vector=vec(i)) for i in range(n)]
    put(conn, "novec")  # an exact-only entry: not in the index
    ix = VectorIndex(path, DIM)
    ix.rebuild(store.iter_vectors(conn))
    ix.save()
    return ids


def _reopen(conn: sqlite3.Connection, path: Path, ndim: int = DIM) -> VectorIndex:
    return VectorIndex(path, ndim, expected_count=store.vector_count(conn),
                       entries=lambda: store.iter_vectors(conn))


def test_synced_index_is_not_rebuilt(conn: sqlite3.Connection, tmp_path: Path) -> None:
    path = tmp_path / "cache.usearch"
    _index_with_sqlite(conn, path)
    ix = _reopen(conn, path)
    assert not ix.rebuilt and len(ix) == 20


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage", "empty"])
def test_rebuilt_from_sqlite_when_file_missing_or_corrupt(conn: sqlite3.Connection, tmp_path: Path,
                                                          damage: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.usearch"
    ids = _index_with_sqlite(conn, path)
    data = path.read_bytes()
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not an index at all" * 50)
    else:
        path.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="llmgw.cache.index"):
        ix = _reopen(conn, path)
    assert ix.rebuilt and len(ix) == 20
    assert "rebuilding from SQLite" in caplog.text
    assert ix.search(vec(5), 1)[0][0] == ids[5]
    assert VectorIndex(path, DIM).problem is None  # the rebuilt index was saved


def test_rebuilt_when_dimension_differs(conn: sqlite3.Connection, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.usearch"
    other = VectorIndex(path, 8)
    other.add(1, np.ones(8, dtype=np.float32))
    other.save()
    put(conn, "a", vector=vec(1))
    assert VectorIndex(path, DIM).problem == f"dimension 8, expected {DIM}"
    with caplog.at_level(logging.WARNING, logger="llmgw.cache.index"):
        ix = _reopen(conn, path)
    assert ix.rebuilt and "dimension 8" in caplog.text and len(ix) == 1
    assert VectorIndex(path, DIM).problem is None


def test_count_mismatch_triggers_rebuild(conn: sqlite3.Connection, tmp_path: Path) -> None:
    path = tmp_path / "cache.usearch"
    _index_with_sqlite(conn, path)
    extra = put(conn, "late", vector=vec(500))  # written to SQLite, index never saved
    ix = _reopen(conn, path)
    assert ix.rebuilt and len(ix) == 21 and ix.search(vec(500), 1)[0][0] == extra
    removed = store.clear(conn)  # the other direction: SQLite emptied, stale index on disk
    assert removed == 22
    ix = _reopen(conn, path)
    assert ix.rebuilt and len(ix) == 0


def test_vectors_round_trip_as_float16(conn: sqlite3.Connection) -> None:
    v = vec(3)
    eid = put(conn, "x", vector=v)
    entry = store.get(conn, eid)
    assert entry is not None and entry.vector is not None and len(entry.vector) == DIM * 2
    back = store.blob_to_vector(entry.vector)
    assert back.dtype == np.float32 and np.allclose(back, v, atol=1e-3)
    assert list(store.iter_vectors(conn))[0][0] == eid


# ---- store ---------------------------------------------------------------------------------------


def test_lookup_exact_respects_scope_model_namespace_and_ttl(conn: sqlite3.Connection) -> None:
    eid = put(conn, "h", namespace="sku-1", ttl_ms=500, response=b"answer")
    hit = store.lookup_exact(conn, scope="cust", model="m", namespace="sku-1", exact_hash="h", now_ms=1499)
    assert hit is not None and hit.id == eid and hit.response == b"answer" and hit.expires_ms == 1500
    for kw in ({"scope": "other"}, {"model": "m2"}, {"namespace": ""}, {"namespace": "sku-2"},
               {"exact_hash": "h2"}, {"now_ms": 1500}):
        args: dict[str, Any] = {"scope": "cust", "model": "m", "namespace": "sku-1", "exact_hash": "h",
                                "now_ms": 1499, **kw}
        assert store.lookup_exact(conn, **args) is None, kw
    forever = put(conn, "h", scope="*")  # no TTL: never expires
    got = store.lookup_exact(conn, scope="*", model="m", exact_hash="h", now_ms=10**15)
    assert got is not None and got.id == forever


def test_insert_replaces_same_exact_hash_and_reports_the_old_id(conn: sqlite3.Connection) -> None:
    first = put(conn, "h", response=b"1")
    new_id, replaced = store.insert(conn, scope="cust", model="m", exact_hash="h", context_hash="ctx",
                                    response=b"2", content_type="application/json", now_ms=2000)
    assert replaced == first and new_id > first
    hit = store.lookup_exact(conn, scope="cust", model="m", exact_hash="h", now_ms=2000)
    assert hit is not None and hit.response == b"2"
    assert store.stats(conn)["entries"] == 1


@pytest.mark.parametrize("commit", [True, False])
def test_a_fresh_insert_that_meets_an_entry_after_all_replaces_it(conn: sqlite3.Connection, commit: bool) -> None:
    """``fresh``: the caller's digests knew of no entry (one written by another process): the
    unique index refuses the first INSERT, the entry is replaced as usual, the transaction goes on."""
    first = put(conn, "h", response=b"1")
    other = put(conn, "k", response=b"k")
    new_id, replaced = store.insert(conn, scope="cust", model="m", exact_hash="h", context_hash="ctx",
                                    response=b"2", content_type="application/json", now_ms=2000, fresh=True,
                                    commit=commit)
    conn.commit()
    assert replaced == first and new_id > other
    hit = store.lookup_exact(conn, scope="cust", model="m", exact_hash="h", now_ms=2000)
    assert hit is not None and hit.response == b"2"
    assert store.stats(conn)["entries"] == 2


def test_candidates_filter_by_partition_context_facts_and_ttl(conn: sqlite3.Connection) -> None:
    good = put(conn, "a", namespace="n", facts="brand=nike")
    ids = {
        "good2": put(conn, "b", namespace="n", facts="brand=nike"),
        "scope": put(conn, "c", namespace="n", facts="brand=nike", scope="other"),
        "model": put(conn, "d", namespace="n", facts="brand=nike", model="m2"),
        "ns": put(conn, "e", namespace="n2", facts="brand=nike"),
        "ctx": put(conn, "f", namespace="n", facts="brand=nike", context_hash="ctx2"),
        "facts": put(conn, "g", namespace="n", facts="brand=null"),
        "expired": put(conn, "h", namespace="n", facts="brand=nike", ttl_ms=10),
    }
    order = [ids["facts"], ids["good2"], 987654, *ids.values(), good]
    got = store.candidates(conn, order, scope="cust", model="m", namespace="n", context_hash="ctx",
                           facts="brand=nike", now_ms=5000)
    assert [e.id for e in got] == [ids["good2"], good]  # order of the index's ranking, unknown ids dropped
    assert store.candidates(conn, [], scope="cust", model="m", context_hash="ctx", now_ms=0) == []


def test_ids_are_never_reused(conn: sqlite3.Connection) -> None:
    a = put(conn, "a")
    assert store.evict_lru(conn, 0) == [a]
    assert put(conn, "b") > a  # a stale index key can never name a newer entry


def test_touch_and_lru_eviction_order(conn: sqlite3.Connection) -> None:
    a = put(conn, "a", now=100)
    b = put(conn, "b", now=200)
    c = put(conn, "c", now=300)
    d = put(conn, "d", now=400)
    store.touch(conn, a, 500)  # a becomes most recently used
    store.touch(conn, a, 600)
    entry = store.get(conn, a)
    assert entry is not None and entry.hits == 2 and entry.last_hit_ms == 600
    assert store.evict_lru(conn, 10) == []
    assert store.evict_lru(conn, 2) == [b, c]
    assert store.get(conn, b) is None and store.get(conn, d) is not None
    assert store.evict_lru(conn, 0) == [d, a]
    assert store.stats(conn)["entries"] == 0


def test_clear_by_namespace_and_all(conn: sqlite3.Connection) -> None:
    put(conn, "a", namespace="x")
    put(conn, "b", namespace="x")
    keep = put(conn, "c", namespace="y")
    put(conn, "d")
    assert store.clear(conn, namespace="x") == 2
    assert store.clear(conn, namespace="x") == 0
    assert store.clear_ids(conn, namespace="y") == [keep]
    assert store.clear(conn) == 1
    assert store.stats(conn)["entries"] == 0


def test_stats(conn: sqlite3.Connection) -> None:
    a = put(conn, "a", namespace="x", cost_nanos=1000, vector=vec(1), response=b"12345")
    put(conn, "b", cost_nanos=50)
    store.touch(conn, a, 2000)
    store.touch(conn, a, 3000)
    s = store.stats(conn)
    assert s["entries"] == 2 and s["with_vector"] == 1 and s["hits"] == 2 and s["saved_nanos"] == 2000
    assert s["namespaces"] == {"": {"entries": 1, "hits": 0}, "x": {"entries": 1, "hits": 2}}
    assert s["last_hit_ms"] == 3000 and s["bytes"] > 0
    put(conn, "short-lived", ttl_ms=100)
    assert store.stats(conn, now_ms=1100)["expired"] == 1


def migrated_before(path: Path, step: Any) -> sqlite3.Connection:
    """A database at ``path`` migrated up to (not including) migration ``step``."""
    conn = dbmod.connect(path)
    original = dbmod.MIGRATIONS
    try:
        dbmod.MIGRATIONS = original[:original.index(step)]
        dbmod.migrate(conn)
    finally:
        dbmod.MIGRATIONS = original
    return conn


def test_migration_applies_on_an_existing_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = migrated_before(path, dbmod.m005_cache)  # a database migrated before the cache existed
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'cache_entries'").fetchone() is None
    conn.close()
    for _ in range(2):  # open_db twice: applies m005 once, then nothing pending
        conn = dbmod.open_db(path)
        cols = {r["name"] for r in conn.execute("PRAGMA table_info(cache_entries)")}
        assert {"scope", "namespace", "context_hash", "exact_hash", "facts", "vector", "expires_ms",
                "last_hit_ms", "hits", "cost_nanos"} <= cols
        assert {r["name"] for r in conn.execute("PRAGMA table_info(cache_meta)")} == {"key", "value"}
        applied = [r[0] for r in conn.execute(f"SELECT name FROM {dbmod.MIGRATIONS_TABLE}")]
        assert applied.count("m005_cache") == 1
        conn.close()
    conn = dbmod.open_db(path)
    try:
        uniq = [ix["name"] for ix in conn.execute("PRAGMA index_list(cache_entries)") if ix["unique"]]
        cols_u = {tuple(c["name"] for c in conn.execute(f"PRAGMA index_info({n})")) for n in uniq}
        assert ("exact_key",) in cols_u  # m011: the digest of (scope, model, namespace, exact_hash)
        assert ("scope", "model", "namespace", "exact_hash") not in cols_u
    finally:
        conn.close()


def test_entries_stored_before_the_exact_key_get_it_from_the_migration(tmp_path: Path) -> None:
    """m011 gives rows stored under the four-column unique index their digest: the cache loads
    them as known exact keys (signed column, unsigned digest) and serves them as exact hits, and
    storing the same request again replaces the row instead of adding a second one."""
    from llmgw.cache import semantic

    prompts = [f"Write a catalogue caption for product {i}." for i in range(8)]
    asked = [semantic.request_keys({"model": "m", "messages": [{"role": "user", "content": p}]}, inbound="openai",
                                   scope="cust", namespace="sku-1" if i % 2 else "", use_guard=False, patterns=())
             for i, p in enumerate(prompts)]
    conn = migrated_before(paths.db_path(tmp_path), dbmod.m011_cache_exact_key)
    for i, k in enumerate(asked):
        conn.execute("INSERT INTO cache_entries (scope, model, namespace, context_hash, exact_hash, response,"
                     " content_type, created_ms, last_hit_ms) VALUES (?, ?, ?, ?, ?, ?, 'application/json', 1, 1)",
                     (k.scope, k.model, k.namespace, k.context_hash, k.exact_hash, f"old-{i}".encode()))
    conn.commit()
    conn.close()
    dbmod.open_db(paths.db_path(tmp_path)).close()  # applies m011
    cache = semantic.ResponseCache(tmp_path, CacheConfig(mode="exact"))
    try:
        for i, k in enumerate(asked):
            hit = cache.lookup(k, False, 0.95, 2).hit
            assert hit is not None and hit.kind == "exact" and hit.body == f"old-{i}".encode()
        conn = cache._conn
        stored = [r[0] for r in conn.execute("SELECT exact_key FROM cache_entries ORDER BY id")]
        assert stored == [store.exact_key(k.exact()) for k in asked]
        assert min(stored) < 0 < max(stored)  # both halves of the signed column came back right
        cache.store(asked[3], False, b"new", "{}", 1, None, 3)
        assert conn.execute("SELECT count(*) FROM cache_entries").fetchone()[0] == len(asked)
        hit = cache.lookup(asked[3], False, 0.95, 4).hit
        assert hit is not None and hit.body == b"new"
    finally:
        cache.close()


def test_trim_heap_finds_malloc_trim_on_glibc() -> None:
    # on glibc it must really be bound (on other C libraries it logs once and does nothing)
    import platform

    from llmgw.cache import semantic

    semantic.trim_heap()
    if platform.libc_ver()[0] == "glibc":
        assert callable(semantic._malloc_trim)


def test_semantic_store_trims_the_heap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # each update between searches fragments the heap (bench/daemon_rss.py): loading the semantic
    # layer hands the free pages back, then the first semantic store and every _TRIM_EVERY-th
    from llmgw.cache import semantic

    calls: list[int] = []
    monkeypatch.setattr(semantic, "_malloc_trim", lambda pad: calls.append(pad))
    dbmod.open_db(paths.db_path(tmp_path)).close()  # migrated, as the daemon's start leaves it
    cache = semantic.ResponseCache(tmp_path, CacheConfig(mode="semantic"))
    try:
        for i, mode in enumerate((True, False, True)):
            body = {"model": "m", "messages": [{"role": "user", "content": f"caption product {i}"}]}
            keys = semantic.request_keys(body, inbound="openai", scope="c", namespace="", use_guard=True,
                                         patterns=[])
            if i == 0:  # embedded by its lookup (the last: stored without a vector, nothing added)
                cache.warm(True)
                keys.vector = cache.embedder.encode([keys.prompt])[0]
            cache.store(keys, mode, b"{}", "{}", 0, None, 1_700_000_000_000)
    finally:
        cache.close()
    assert calls == [0, 0]  # the load and the semantic store with a vector trimmed; the others did not
