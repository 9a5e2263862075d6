"""Cache entries in SQLite (table ``cache_entries``, migration ``m005_cache``): the source of truth.

Owns: inserting, looking up (exact and semantic candidates), touching, evicting (LRU) and clearing
cache entries; the vectors as float16 bytes so the usearch index can be rebuilt. (The ``cache_meta``
table that ``m005_cache`` created is not used.)

Invariants:
- An entry belongs to one exact partition ``(scope, model, namespace)``; a semantic hit must also
  match ``context_hash`` (everything that is not the embedded text) and ``facts`` (the field-guard
  fingerprint) exactly. ``(scope, model, namespace, exact_hash)`` is unique, through its 64-bit
  digest ``exact_key`` (``exact_digest``; migration ``m011_cache_exact_key``): a new insert replaces.
  Two requests whose digests collide (about 3e-10 at 100k entries) replace each other's entry;
  a lookup still compares every column, so a collision costs an entry, never a wrong answer.
- Expired entries (``expires_ms <= now``) are never returned; they stay until LRU eviction, a clear or
  a new insert of the same request removes them.
- Functions that delete rows return the removed ids so the caller removes them from the index;
  ids the index still holds but SQLite does not are harmless (``candidates`` drops them).
- Every write commits before returning. numpy is imported lazily (only for vectors).
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

_COLUMNS = ("id", "scope", "model", "namespace", "context_hash", "exact_hash", "facts", "prompt_text",
            "vector", "response", "content_type", "usage_json", "cost_nanos", "created_ms", "expires_ms",
            "last_hit_ms", "hits")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM cache_entries"
_LIVE = "(expires_ms IS NULL OR expires_ms > ?)"
_CHUNK = 500  # ids per IN (...) query, under SQLite's variable limit


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    scope: str
    model: str
    namespace: str
    context_hash: str
    exact_hash: str
    facts: str
    prompt_text: str | None
    vector: bytes | None
    response: bytes
    content_type: str
    usage_json: str | None
    cost_nanos: int
    created_ms: int
    expires_ms: int | None
    last_hit_ms: int
    hits: int


def _entry(row: Sequence[Any]) -> Entry:
    values = list(row)
    if isinstance(values[9], str):
        values[9] = values[9].encode()
    return Entry(*values)


# ---- vectors -------------------------------------------------------------------------------------


def vector_to_blob(vec: Any) -> bytes:
    """A vector as float16 bytes (what the f16 index holds, so a rebuild loses nothing)."""
    import numpy as np

    return np.asarray(vec, dtype=np.float16).reshape(-1).tobytes()


def blob_to_vector(blob: bytes) -> Any:
    """float16 bytes back to a float32 numpy vector."""
    import numpy as np

    return np.frombuffer(blob, dtype=np.float16).astype(np.float32)


def vector_count(conn: sqlite3.Connection) -> int:
    """Entries that carry a vector: what the index must hold."""
    return int(conn.execute("SELECT count(*) FROM cache_entries WHERE length(vector) > 0").fetchone()[0])


def iter_vectors(conn: sqlite3.Connection) -> Iterator[tuple[int, Any]]:
    """``(id, vector)`` of every entry with a vector, for ``VectorIndex.rebuild``."""
    cur = conn.execute("SELECT id, vector FROM cache_entries WHERE length(vector) > 0 ORDER BY id")
    for row in cur:
        yield int(row[0]), blob_to_vector(row[1])


def iter_pending(conn: sqlite3.Connection) -> Iterator[tuple[int, str]]:
    """``(id, prompt)`` of every semantic entry stored without a vector yet (``vector = X''``: the
    first lookup in its partition embeds it)."""
    for row in conn.execute("SELECT id, prompt_text FROM cache_entries WHERE vector = X'' ORDER BY id"):
        yield int(row[0]), row[1] or ""


# ---- entries -------------------------------------------------------------------------------------


_INSERT = ("INSERT INTO cache_entries (scope, model, namespace, context_hash, exact_hash, facts, prompt_text, vector,"
           " response, content_type, usage_json, cost_nanos, created_ms, expires_ms, last_hit_ms, hits, exact_key)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)")
_SIGN = 1 << 63


def digest(*parts: str) -> int:
    """An unsigned 64-bit BLAKE2b digest of ``parts`` (joined by U+001F): exact keys and semantic
    partitions (``semantic.partition_key``)."""
    raw = "\x1f".join(parts).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


def exact_digest(scope: str, model: str, namespace: str, exact_hash: str) -> int:
    """The exact entry's key: the digest of scope, model, namespace and the exact hash
    (``semantic.Keys.exact``; the cache keeps these in memory)."""
    return digest(scope, model, namespace, exact_hash, "")


def exact_key(unsigned: int) -> int:
    """``exact_digest`` as SQLite's signed INTEGER (the ``exact_key`` column). Why a digest: the
    unique index on the four text columns (~90 bytes a row, random order) cost a random index page
    per store, ~12 us of insert and commit a row measured at 20k entries; the 8-byte key ~6 us."""
    return unsigned - (_SIGN << 1) if unsigned >= _SIGN else unsigned


def exact_digest_of(key: int) -> int:
    """The ``exact_key`` column back to ``exact_digest`` (the inverse of ``exact_key``)."""
    return key + (_SIGN << 1) if key < 0 else key


def insert(conn: sqlite3.Connection, *, scope: str, model: str, exact_hash: str, context_hash: str,
           response: bytes, content_type: str, now_ms: int, namespace: str = "", facts: str = "",
           prompt_text: str | None = None, vector: Any = None, usage_json: str | None = None,
           cost_nanos: int = 0, ttl_ms: int | None = None, commit: bool = True,
           fresh: bool = False, exact: int | None = None) -> tuple[int, int | None]:
    """Store an entry; returns ``(new id, id it replaced or None)``. The replaced id (same scope,
    model, namespace and exact hash) must be removed from the index by the caller. ``vector`` may
    be a numpy vector, a sequence of floats or float16 bytes; ``ttl_ms`` None means no expiry.
    ``commit=False``: part of the caller's transaction (``ResponseCache.commit``). ``fresh``: the
    caller knows of no entry with this exact key, so the INSERT is tried first, without looking
    for one to replace (a statement less per store); should one exist after all, the unique index
    refuses the row and the entry is replaced as usual. ``exact``: the caller's ``exact_digest``
    of the entry (computed here when None)."""
    blob = None if vector is None else (bytes(vector) if isinstance(vector, bytes | bytearray | memoryview)
                                        else vector_to_blob(vector))
    expires_ms = None if ttl_ms is None else now_ms + int(ttl_ms)
    key = exact_key(exact_digest(scope, model, namespace, exact_hash) if exact is None else exact)
    row = (scope, model, namespace, context_hash, exact_hash, facts, prompt_text, blob, bytes(response),
           content_type, usage_json, int(cost_nanos), now_ms, expires_ms, now_ms, key)
    with conn if commit else contextlib.nullcontext(conn):
        if fresh:
            try:
                cur = conn.execute(_INSERT, row)
            except sqlite3.IntegrityError:  # only this statement is undone, not the transaction
                pass
            else:
                assert cur.lastrowid is not None
                return int(cur.lastrowid), None
        old = conn.execute("SELECT id FROM cache_entries WHERE exact_key = ?", (key,)).fetchone()
        if old is not None:
            conn.execute("DELETE FROM cache_entries WHERE id = ?", (old[0],))
        cur = conn.execute(_INSERT, row)
    new_id = cur.lastrowid
    assert new_id is not None
    return int(new_id), (None if old is None else int(old[0]))


def get(conn: sqlite3.Connection, entry_id: int) -> Entry | None:
    row = conn.execute(f"{_SELECT} WHERE id = ?", (int(entry_id),)).fetchone()
    return None if row is None else _entry(row)


def lookup_exact(conn: sqlite3.Connection, *, scope: str, model: str, exact_hash: str, now_ms: int,
                 namespace: str = "", exact: int | None = None) -> Entry | None:
    """The live entry with this exact hash in the partition, or None (``exact``: the caller's
    ``exact_digest``)."""
    key = exact_key(exact_digest(scope, model, namespace, exact_hash) if exact is None else exact)
    row = conn.execute(f"{_SELECT} WHERE exact_key = ? AND +scope = ? AND +model = ? AND +namespace = ? "
                       f"AND +exact_hash = ? AND {_LIVE}", (key, scope, model, namespace, exact_hash, now_ms)).fetchone()
    return None if row is None else _entry(row)


def candidates(conn: sqlite3.Connection, ids: Iterable[int], *, scope: str, model: str, context_hash: str,
               now_ms: int, namespace: str = "", facts: str = "") -> list[Entry]:
    """Of the index's nearest ``ids``, the live entries in the same exact partition (scope, model,
    namespace, context hash, facts), in the order of ``ids`` (best first)."""
    order = [int(i) for i in ids]
    found: dict[int, Entry] = {}
    for start in range(0, len(order), _CHUNK):
        chunk = order[start:start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        for row in conn.execute(
                # "+" keeps SQLite from choosing the partition index (a scan of the whole partition,
                # ~4 ms at 100k entries) over fetching the few ids by primary key (~11 us)
                f"{_SELECT} WHERE id IN ({marks}) AND +scope = ? AND +model = ? AND +namespace = ? "
                f"AND context_hash = ? AND facts = ? AND {_LIVE}",
                (*chunk, scope, model, namespace, context_hash, facts, now_ms)):
            found[int(row[0])] = _entry(row)
    return [found[i] for i in dict.fromkeys(order) if i in found]


def touch(conn: sqlite3.Connection, entry_id: int, now_ms: int, commit: bool = True) -> None:
    """Record a hit: ``hits + 1`` and ``last_hit_ms`` (the LRU clock)."""
    with conn if commit else contextlib.nullcontext(conn):
        conn.execute("UPDATE cache_entries SET hits = hits + 1, last_hit_ms = ? WHERE id = ?",
                     (now_ms, int(entry_id)))


def _delete(conn: sqlite3.Connection, ids: list[int]) -> None:
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        conn.execute(f"DELETE FROM cache_entries WHERE id IN ({', '.join('?' * len(chunk))})", chunk)


def evict_lru(conn: sqlite3.Connection, max_entries: int, commit: bool = True, total: int | None = None,
              rows: bool = False) -> list[Any]:
    """Delete the least recently used entries beyond ``max_entries``; returns their ids, least
    recently used first (ties: oldest id first). ``total``: the caller's count of entries (saves a
    ``count(*)``, a scan of the table). ``rows``: return ``(id, scope, model, namespace,
    context_hash, facts, exact_hash)`` instead (what the cache needs to forget them)."""
    with conn if commit else contextlib.nullcontext(conn):
        if total is None:
            total = int(conn.execute("SELECT count(*) FROM cache_entries").fetchone()[0])
        excess = total - max(0, int(max_entries))
        if excess <= 0:
            return []
        found = [tuple(r) for r in conn.execute(
            "SELECT id, scope, model, namespace, context_hash, facts, exact_hash FROM cache_entries "
            "ORDER BY last_hit_ms, id LIMIT ?", (excess,))]
        ids = [int(r[0]) for r in found]
        _delete(conn, ids)
    return found if rows else ids


def delete(conn: sqlite3.Connection, ids: Iterable[int]) -> list[int]:
    """Delete these entries; returns the ids that existed."""
    wanted = [int(i) for i in ids]
    with conn:
        found: list[int] = []
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start:start + _CHUNK]
            found += [int(r[0]) for r in conn.execute(
                f"SELECT id FROM cache_entries WHERE id IN ({', '.join('?' * len(chunk))})", chunk)]
        _delete(conn, found)
    return sorted(found)


def ids_by_prompt(conn: sqlite3.Connection, prompt: str) -> list[int]:
    """Entries whose stored prompt is exactly ``prompt`` (any partition)."""
    return [int(r[0]) for r in conn.execute("SELECT id FROM cache_entries WHERE prompt_text = ? ORDER BY id",
                                            (prompt,))]


# ---- the hit log and labelled pairs (migration m008_cache_audit) -----------------------------------


def add_label(conn: sqlite3.Connection, *, source: str, request_id: str | None, entry_id: int | None,
              similarity: float | None, cached_prompt: str | None, asked_prompt: str | None, label: int | None,
              now_ms: int) -> None:
    """Keep a labelled pair (the caller commits)."""
    conn.execute("INSERT INTO cache_labels (ts_ms, source, request_id, entry_id, similarity, cached_prompt,"
                 " asked_prompt, label) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (now_ms, source, request_id, entry_id, similarity, cached_prompt, asked_prompt, label))


def labels(conn: sqlite3.Connection, since_ms: int | None = None, until_ms: int | None = None) -> list[dict[str, Any]]:
    """Labelled pairs with both prompts, oldest first."""
    cur = conn.execute(
        "SELECT ts_ms, source, request_id, entry_id, similarity, cached_prompt, asked_prompt, label FROM cache_labels"
        " WHERE label IS NOT NULL AND cached_prompt IS NOT NULL AND asked_prompt IS NOT NULL"
        " AND ts_ms >= ? AND ts_ms < ? ORDER BY id",
        (since_ms if since_ms is not None else -(2**62), until_ms if until_ms is not None else 2**62))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur]


def hit_log(conn: sqlite3.Connection, request_id: str) -> dict[str, Any] | None:
    cur = conn.execute("SELECT request_id, ts_ms, entry_id, similarity, prompt, kind FROM cache_hit_log "
                       "WHERE request_id = ?", (request_id,))
    row = cur.fetchone()
    return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))


def recent_hits(conn: sqlite3.Connection, since_ms: int, *, sort: str = "time", limit: int = 50,
                kind: str = "hit") -> list[dict[str, Any]]:
    """Recent semantic hits (``kind`` hit or shadow): the prompt asked, the entry that answered (its
    prompt, or None when the entry is gone), similarity; newest first or least similar first."""
    order = "h.similarity ASC, h.ts_ms DESC" if sort == "similarity" else "h.ts_ms DESC"
    cur = conn.execute(
        "SELECT h.request_id, h.ts_ms, h.entry_id, h.similarity, h.prompt AS asked, e.prompt_text AS cached,"
        " e.namespace, e.hits AS entry_hits, h.kind FROM cache_hit_log h LEFT JOIN cache_entries e ON e.id = h.entry_id"
        f" WHERE h.ts_ms >= ? AND h.kind = ? ORDER BY {order} LIMIT ?", (since_ms, kind, int(limit)))
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur]


def clear(conn: sqlite3.Connection, namespace: str | None = None) -> int:
    """Delete every entry (or those of ``namespace``); returns how many. The index is brought back
    in line by its count check on next open, or by the caller (``clear_ids`` gives the ids)."""
    return len(clear_ids(conn, namespace))


def clear_ids(conn: sqlite3.Connection, namespace: str | None = None) -> list[int]:
    """``clear`` returning the removed ids."""
    with conn:
        if namespace is None:
            ids = [int(r[0]) for r in conn.execute("SELECT id FROM cache_entries ORDER BY id")]
            conn.execute("DELETE FROM cache_entries")
        else:
            ids = [int(r[0]) for r in conn.execute(
                "SELECT id FROM cache_entries WHERE namespace = ? ORDER BY id", (namespace,))]
            conn.execute("DELETE FROM cache_entries WHERE namespace = ?", (namespace,))
    return ids


def stats(conn: sqlite3.Connection, now_ms: int | None = None) -> dict[str, Any]:
    """Totals for ``llmgw cache stats``: entries, with vectors, expired (if ``now_ms``), hits, the
    cost the hits saved, stored bytes, oldest/newest entry, and entries/hits per namespace."""
    row = conn.execute(
        "SELECT count(*), count(vector), coalesce(sum(hits), 0), coalesce(sum(hits * cost_nanos), 0),"
        " coalesce(sum(length(response) + coalesce(length(vector), 0) + coalesce(length(prompt_text), 0)),"
        " 0), min(created_ms), max(created_ms), max(last_hit_ms) FROM cache_entries").fetchone()
    out: dict[str, Any] = {
        "entries": int(row[0]), "with_vector": int(row[1]), "hits": int(row[2]),
        "saved_nanos": int(row[3]), "bytes": int(row[4]), "oldest_ms": row[5], "newest_ms": row[6],
        "last_hit_ms": row[7],
    }
    if now_ms is not None:
        out["expired"] = int(conn.execute(
            "SELECT count(*) FROM cache_entries WHERE expires_ms IS NOT NULL AND expires_ms <= ?",
            (now_ms,)).fetchone()[0])
    out["namespaces"] = {
        r[0]: {"entries": int(r[1]), "hits": int(r[2])}
        for r in conn.execute("SELECT namespace, count(*), coalesce(sum(hits), 0) FROM cache_entries "
                              "GROUP BY namespace ORDER BY namespace")}
    return out
