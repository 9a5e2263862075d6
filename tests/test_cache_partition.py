"""Semantic search inside the partition: recall does not depend on how many unrelated entries are
cached, large partitions use the widened ANN search, and entries deleted elsewhere are forgotten at
once. Real SQLite, the real bundled model, the real usearch index; no daemon (that is
tests/test_cache_audit.py)."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from llmgw import paths
from llmgw.cache import semantic
from llmgw.cache import store as cstore
from llmgw.config import CacheConfig
from llmgw.store import db as dbmod

NOW = 1_800_000_000_000
PRODUCTS = ["linen shirt", "wool coat", "rain jacket", "running shoe", "leather belt", "silk scarf", "denim jeans",
            "canvas tote", "down vest", "trail boot", "sun hat", "yoga mat", "water bottle", "desk lamp",
            "ceramic mug", "cotton towel", "bike helmet", "camping tent", "travel pillow", "phone case"]
MATERIALS = ["cotton", "wool", "nylon", "leather", "bamboo", "steel", "glass", "oak", "felt", "cork"]
ADJ = ["sturdy", "light", "soft", "classic", "modern", "compact", "elegant", "durable", "cosy", "bright"]


def cache_at(home: Path, **cfg: object) -> semantic.ResponseCache:
    dbmod.open_db(paths.db_path(home)).close()
    return semantic.ResponseCache(home, CacheConfig(mode="semantic", **cfg))  # type: ignore[arg-type]


def keys(text: str, scope: str = "acme") -> semantic.Keys:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return semantic.request_keys(body, inbound="openai", scope=scope, namespace="", use_guard=True, patterns=())


def put(cache: semantic.ResponseCache, text: str, scope: str = "acme") -> None:
    cache.store(keys(text, scope), True, text.encode(), "{}", 1, None, NOW)


COLOURS = ["red", "navy", "olive", "cream", "black", "white", "teal", "rust", "sand", "plum"]


def other_products(n: int, seed: int) -> list[str]:
    """``n`` distinct prompts of the same template with no facts: one partition with the targets."""
    combos = [(a, m, p, c) for a in ADJ for m in MATERIALS for p in PRODUCTS for c in COLOURS]
    return [f"Write a catalogue caption for the {a} {c} {m} {p}." for a, m, p, c in random.Random(seed).sample(combos, n)]


TARGETS = [f"Write a catalogue caption for our {p}." for p in PRODUCTS]
QUERIES = [f"Please write a catalogue caption for this {p}." for p in PRODUCTS]


def recall(home: Path, unrelated: list[str], scope_of_unrelated: str) -> tuple[int, int]:
    cache = cache_at(home, threshold=0.9)
    try:
        for t in TARGETS:
            put(cache, t)
        for u in unrelated:
            put(cache, u, scope_of_unrelated)
        right = wrong = 0
        for q, t in zip(QUERIES, TARGETS, strict=True):
            got = cache.lookup(keys(q), True, 0.9, NOW + 1).hit
            if got is not None:
                right += got.body == t.encode()
                wrong += got.body != t.encode()
        return right, wrong
    finally:
        cache.close()


@pytest.mark.parametrize("scope", ["acme", "globex"], ids=["same-partition", "other-customer"])
def test_recall_is_the_same_with_50_or_2000_other_entries(tmp_path: Path, scope: str) -> None:
    small = recall(tmp_path / "small", other_products(50, 1), scope)
    large = recall(tmp_path / "large", other_products(2000, 2), scope)
    assert small[0] >= 15  # the paraphrases find their products
    assert large[0] >= small[0] - 1 and large[1] <= small[1] + 1, (small, large)


def test_a_large_partition_uses_the_index_and_a_small_one_memory(tmp_path: Path) -> None:
    cache = cache_at(tmp_path, threshold=0.9)
    try:
        for u in other_products(semantic.EXACT_MAX + 10, 3):
            put(cache, u)
        put(cache, "Describe the teapot. sku: 555")  # its own partition (facts)
        big = keys(TARGETS[0]).partition()
        assert len(cache._parts.pending[big]) == semantic._PENDING_MAX  # stored before any lookup there
        cache.lookup(keys(TARGETS[0]), True, 0.9, NOW + 1)  # the first lookup embeds them
        assert big not in cache._parts.pending
        assert cache._parts.is_large(big) and len(cache._index) == len(cache._parts.members(big))
        small = keys("Describe the teapot. sku: 555").partition()
        assert not cache._parts.is_large(small) and len(cache._parts.members(small)) == 1
        hit = cache.lookup(keys("Please describe the teapot. sku: 555"), True, 0.9, NOW + 1).hit
        assert hit is not None and hit.kind == "semantic"
    finally:
        cache.close()


def test_entries_deleted_by_another_process_are_forgotten_at_once(tmp_path: Path) -> None:
    cache = cache_at(tmp_path, threshold=0.9)
    try:
        for u in other_products(semantic.EXACT_MAX + 10, 4):
            put(cache, u)
        put(cache, TARGETS[0])
        first = cache.lookup(keys(QUERIES[0]), True, 0.9, NOW + 1).hit
        assert first is not None
        before = len(cache._index)
        conn = dbmod.connect(paths.db_path(tmp_path))
        try:
            assert cstore.delete(conn, [first.entry_id]) == [first.entry_id]  # e.g. llmgw cache delete
        finally:
            conn.close()
        again = cache.lookup(keys(QUERIES[0]), True, 0.9, NOW + 2).hit
        assert again is None or again.entry_id != first.entry_id
        assert not cache._parts.contains(first.entry_id, keys(QUERIES[0]).partition())
        assert len(cache._index) == before - 1
    finally:
        cache.close()


def test_restart_reloads_partitions_and_rebuilds_an_index_of_the_large_ones(tmp_path: Path) -> None:
    cache = cache_at(tmp_path, threshold=0.9)
    for u in other_products(semantic.EXACT_MAX + 5, 5):
        put(cache, u)
    put(cache, TARGETS[3])
    cache.close()
    again = semantic.ResponseCache(tmp_path, CacheConfig(mode="semantic", threshold=0.9))
    try:
        hit = again.lookup(keys(QUERIES[3]), True, 0.9, NOW + 1).hit
        assert hit is not None and hit.body == TARGETS[3].encode()
        assert len(again._index) == semantic.EXACT_MAX + 6
    finally:
        again.close()


def test_the_gate_refuses_a_closer_candidate_and_serves_the_next(tmp_path: Path) -> None:
    cache = cache_at(tmp_path, threshold=0.85)
    try:
        put(cache, "Write a product caption for the linen shirt in French.")
        found = cache.lookup(keys("Write a product caption for the linen shirt."), True, 0.85, NOW + 1)
        assert found.hit is None and found.blocked == "languages" and found.best is not None and found.best > 0.9
        put(cache, "Could you write a product caption for our linen shirt?")
        found = cache.lookup(keys("Write a product caption for the linen shirt."), True, 0.85, NOW + 1)
        assert found.hit is not None and found.hit.body == b"Could you write a product caption for our linen shirt?"
        assert cache.lookup(keys("Write a product caption for the linen shirt in German."), True, 0.85,
                             NOW + 1).hit is None
    finally:
        cache.close()


def test_partitions_reuse_freed_slots_and_move_a_growing_partition_to_the_index(tmp_path: Path) -> None:
    import numpy as np

    from llmgw.cache.index import VectorIndex
    from llmgw.cache.partitions import EXACT_MAX, Partitions

    parts = Partitions(4, tmp_path / "i.usearch")
    parts.load([], 0, lambda n, entries: VectorIndex(tmp_path / "i.usearch", 4, expected_count=n, entries=entries))
    rng = np.random.default_rng(0)

    def vec() -> tuple[np.ndarray, np.ndarray]:
        v = rng.standard_normal(4).astype(np.float32)
        v /= np.linalg.norm(v)
        return v, v.astype(np.float16)

    v1, h1 = vec()
    parts.add(1, 100, v1, h1)
    parts.add(2, 100, *vec())
    assert parts.members(100) == [1, 2] and parts.top == 2
    assert parts.ranked(100, v1, 0.9)[0][1] == 1  # exact scan, best first
    parts.forget(1, 100)
    assert parts.members(100) == [2] and isinstance(parts.parts[100], int)
    parts.add(3, 200, *vec())
    assert parts.top == 2  # the freed slot was reused, nothing grew
    for eid in range(10, 11 + EXACT_MAX):
        parts.add(eid, 300, *vec())
    # past EXACT_MAX the vectors moved to the index and every one of their slots is free again
    assert parts.is_large(300) and len(parts.index) == EXACT_MAX + 1 and len(parts.free) == EXACT_MAX + 1
    parts.forget(10, 300)
    assert len(parts.index) == EXACT_MAX and 10 not in parts.members(300)


class CountingEmbedder:
    """The real embedder, counting the texts it embedded."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def encode(self, texts: list[str]) -> object:
        self.texts.extend(texts)
        return self.inner.encode(texts)  # type: ignore[attr-defined]


def vector_of(home: Path, entry_id: int) -> bytes | None:
    conn = sqlite3.connect(paths.db_path(home))
    try:
        row = conn.execute("SELECT vector FROM cache_entries WHERE id = ?", (entry_id,)).fetchone()
        return None if row is None else row[0]
    finally:
        conn.close()


def test_the_first_entry_of_a_partition_is_embedded_by_the_first_lookup_there(tmp_path: Path) -> None:
    """A miss in an empty partition embeds nothing, and neither does its store (most partitions,
    with fields in the prompt, never see a second request): the entry is stored without a vector,
    and the first lookup in its partition embeds it, finds it and writes the vector; from then on
    a store reuses its lookup's embedding."""
    cache = cache_at(tmp_path, threshold=0.9)
    try:
        cache._open()
        cache._semantic()
        counting = CountingEmbedder(cache.embedder)
        cache.embedder = counting  # type: ignore[assignment]
        first = keys("Write a catalogue caption for our linen shirt.")
        assert cache.lookup(first, True, 0.9, NOW).hit is None
        cache.store(first, True, b"caption", "{}", 1, None, NOW)
        assert counting.texts == []  # no embedding for the lookup, none for the store
        entry = cache.lookup(first, True, 0.9, NOW).hit  # the same request: an exact hit, no embedding
        assert entry is not None and entry.kind == "exact" and counting.texts == []
        assert vector_of(tmp_path, entry.entry_id) == b""  # stored without a vector, not as exact-only
        assert cache._parts.pending[first.partition()] == [entry.entry_id]
        again = keys("Please write a catalogue caption for our linen shirt.")
        got = cache.lookup(again, True, 0.9, NOW).hit
        assert got is not None and got.kind == "semantic" and got.body == b"caption"
        assert sorted(counting.texts) == sorted([again.prompt, first.prompt])  # the asked one, the stored one
        assert first.partition() not in cache._parts.pending
        stored = vector_of(tmp_path, entry.entry_id)
        assert stored is not None and len(stored) == 2 * cache.embedder.dim  # float16, written back
        cache.store(again, True, b"caption 2", "{}", 1, None, NOW)
        assert len(counting.texts) == 2  # the lookup's embedding is reused by the store
        other = keys("Write a catalogue caption for our linen shirt.", scope="globex")  # another partition
        assert cache.lookup(other, True, 0.9, NOW).hit is None
        assert len(counting.texts) == 2
    finally:
        cache.close()


def test_entries_stored_without_a_vector_survive_a_restart_and_a_delete(tmp_path: Path) -> None:
    cache = cache_at(tmp_path, threshold=0.9)
    put(cache, "Write a catalogue caption for our wool coat. sku: 71")
    put(cache, "Write a catalogue caption for our rain jacket. sku: 72")
    cache.close()
    again = cache_at(tmp_path, threshold=0.9)
    try:
        again._open()
        again._semantic()
        assert len(again._parts.pending) == 2 and again._parts.top == 0  # no matrix row for them
        coat = again.lookup(keys("Please write a catalogue caption for our wool coat. sku: 71"), True, 0.9,
                            NOW + 1).hit
        assert coat is not None and coat.kind == "semantic" and coat.body.startswith(b"Write a catalogue caption for our wool")
        jacket = keys("Please write a catalogue caption for our rain jacket. sku: 72")
        conn = dbmod.connect(paths.db_path(tmp_path))
        try:  # deleted by another process (llmgw cache delete) before any lookup embedded it
            gone = conn.execute("SELECT id FROM cache_entries WHERE vector = X''").fetchone()[0]
            assert cstore.delete(conn, [gone]) == [gone]
        finally:
            conn.close()
        assert again.lookup(jacket, True, 0.9, NOW + 2).hit is None
        assert jacket.partition() not in again._parts
    finally:
        again.close()


def test_stores_of_one_request_queued_for_one_commit_leave_one_entry_the_last(tmp_path: Path) -> None:
    """The cache process's queued writes: the second store of the same request in one transaction
    replaces the first (its digest is not known yet), and a lookup finds the second answer."""
    dbmod.open_db(paths.db_path(tmp_path)).close()
    cache = semantic.ResponseCache(tmp_path, CacheConfig(mode="semantic"), autocommit=False)
    try:
        k = keys("Write a catalogue caption for our linen shirt.")
        cache.store(k, True, b"first", "{}", 1, None, NOW)
        cache.store(keys(k.prompt), True, b"second", "{}", 1, None, NOW)
        assert cache.queued == 2
        cache.commit()
        assert cache.entries == 1
        got = cache.lookup(keys(k.prompt), True, 0.95, NOW).hit
        assert got is not None and got.kind == "exact" and got.body == b"second"
        conn = sqlite3.connect(paths.db_path(tmp_path))
        assert conn.execute("SELECT count(*) FROM cache_entries").fetchone()[0] == 1
        conn.close()
    finally:
        cache.close()


def test_a_lookup_commits_the_queued_stores_only_when_they_may_answer_it(tmp_path: Path) -> None:
    """Queued stores are committed by a lookup they may answer: the same request (exact), or a
    semantic store in the lookup's partition when the lookup is semantic. An exact lookup of another
    request leaves them queued (they share a partition, but an exact store is no semantic candidate)."""
    dbmod.open_db(paths.db_path(tmp_path)).close()
    cache = semantic.ResponseCache(tmp_path, CacheConfig(mode="semantic"), autocommit=False)

    def stores() -> int:  # queued stores (a hit queues its touch too)
        return sum(op == "put" for op, _ in cache._queued)

    try:
        cache.store(keys("Write a catalogue caption for our linen shirt."), False, b"shirt", "{}", 1, None, NOW)
        other = keys("Write a catalogue caption for our wool coat.")
        assert other.partition() == keys("Write a catalogue caption for our linen shirt.").partition()
        assert cache.lookup(other, False, 0.95, NOW).hit is None
        assert stores() == 1  # not committed for a lookup it cannot answer
        got = cache.lookup(keys("Write a catalogue caption for our linen shirt."), False, 0.95, NOW).hit
        assert stores() == 0 and got is not None and got.body == b"shirt"  # committed, then found
        cache.store(keys("Write a catalogue caption for our silk scarf."), True, b"scarf", "{}", 1, None, NOW)
        assert cache.lookup(other, False, 0.95, NOW).hit is None and stores() == 1
        cache.lookup(keys("Please write a catalogue caption for our silk scarf."), True, 0.95, NOW)
        assert stores() == 0  # a semantic lookup in the partition of a queued semantic store
    finally:
        cache.close()


def test_an_entry_whose_vector_never_reached_sqlite_is_embedded_again(tmp_path: Path) -> None:
    """The lookup that embedded a pending entry queued its vector; if that write is lost (its
    commit failed), the entry is in memory with a vector and in SQLite without one: the next
    lookup that meets it embeds it again, serves it and writes the vector."""
    cache = cache_at(tmp_path, threshold=0.9)
    try:
        put(cache, "Write a catalogue caption for our linen shirt.")
        first = cache.lookup(keys("Please write a catalogue caption for our linen shirt."), True, 0.9, NOW).hit
        assert first is not None and len(vector_of(tmp_path, first.entry_id) or b"") > 0
        conn = sqlite3.connect(paths.db_path(tmp_path))
        conn.execute("UPDATE cache_entries SET vector = X'' WHERE id = ?", (first.entry_id,))  # the lost write
        conn.commit()
        conn.close()
        again = cache.lookup(keys("Kindly write a catalogue caption for our linen shirt."), True, 0.9, NOW).hit
        assert again is not None and again.entry_id == first.entry_id
        assert len(vector_of(tmp_path, first.entry_id) or b"") == 2 * cache.embedder.dim
    finally:
        cache.close()


def test_a_prompt_that_comes_back_is_not_embedded_again(tmp_path: Path) -> None:
    """The paraphrase that keeps hitting an entry is embedded once: later lookups reuse its vector
    (read-only, so no caller can change what the others get) and find the same entry."""
    cache = cache_at(tmp_path, threshold=0.9)
    try:
        put(cache, "Write a catalogue caption for our linen shirt.")
        put(cache, "Write a catalogue caption for our wool coat.")
        embedded: list[str] = []
        encode = cache.embedder.encode
        cache.embedder.encode = lambda texts: embedded.extend(texts) or encode(texts)  # counts, then embeds
        asked = "Please write a catalogue caption for our linen shirt."
        hits = [cache.lookup(keys(asked), True, 0.9, NOW).hit for _ in range(3)]
        assert all(h is not None and h.body.startswith(b"Write a catalogue caption for our linen") for h in hits)
        assert embedded.count(asked) == 1  # the stored prompts once each (pending), the asked one once
        assert sorted(embedded) == sorted([asked, "Write a catalogue caption for our linen shirt.",
                                           "Write a catalogue caption for our wool coat."])
        vec = cache._embed(asked)
        with pytest.raises(ValueError):
            vec[0] = 1.0
    finally:
        cache.close()


def test_a_prompt_that_comes_back_keeps_its_facts_without_a_second_parse() -> None:
    """The guard's fingerprint is memoised by prompt and patterns: the same prompt gives the same
    facts without parsing it again, other patterns give their own."""
    semantic._facts.cache_clear()
    a = keys("Write a catalogue caption for our linen shirt. sku: 4711")
    b = keys("Write a catalogue caption for our linen shirt. sku: 4711")
    assert a.facts == b.facts and semantic._facts.cache_info().hits == 1
    assert keys("Write a catalogue caption for our linen shirt. sku: 4712").facts != a.facts
    body = {"model": "m", "messages": [{"role": "user", "content": "Write a catalogue caption. code AB-12"}]}
    plain, coded = (semantic.request_keys(body, inbound="openai", scope="acme", namespace="", use_guard=True,
                                          patterns=p) for p in ((), (r"[A-Z]{2}-\d+",)))
    assert plain.facts != coded.facts and semantic._facts.cache_info().misses == 4  # 4711, 4712, two patterns
