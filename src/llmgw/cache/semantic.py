"""The response cache policy: what may be served from the cache, and to whom.

Two layers. **Exact**: a hash of the normalised request (model, messages, tools and every
parameter that changes the output). **Semantic**: the embedding of the prompt text (the last user
message) searched in the usearch index, cosine >= threshold.

Isolation, for both layers:
- scope: the customer (or, for a key without one, the key) unless ``[cache] scope = "global"``;
- the dialect and the model name as the client gave it;
- an optional namespace (``x-llmgw-cache-namespace``, e.g. a SKU);
- for a semantic hit also the *context hash* (system prompt, earlier turns, images by content
  hash, parameters: everything that is not the embedded text) and the *facts* fingerprint of the
  field guard (``brand: null`` vs ``brand: Nike`` can never hit each other).

Only complete 200 answers are stored (never an errored or truncated stream). In the daemon all of
it (the request's keys and guard facts, one embedding, an exact scan of the partition or a widened
ANN search, SQLite: ~0.1-0.5 ms a lookup) runs in the cache process (``sidecar.py``), not on the
HTTP event loop.
Semantic search is inside the partition (scope, model, namespace, context, facts), so recall does not
depend on unrelated entries; the instruction gate (``gate.py``) then vets each candidate. ``warm``,
``lookup`` and ``store`` raise whatever failed (a model that cannot be
loaded, usearch missing, SQLite): the gateway turns that into a miss or no store, counts and logs
it (``Gateway.cache_failed``), so a failing cache never fails a request. Configuration (``[cache]``, all optional, read by ``config.py``): ``mode`` off|exact|semantic (default
off: a gateway must not silently serve stored samples), ``threshold`` (0.95), ``ttl`` seconds
(86400; 0 = no expiry), ``max_entries`` (100000, least recently used evicted), ``scope``
customer|global, ``guard`` (true), ``guard_patterns`` (extra regexes), ``model`` (a model2vec path
or hub id; default the bundled one), ``charge_hits`` (false: hits cost the customer nothing).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from .. import paths
from ..config import CacheConfig
from ..errors import InvalidRequest
from ..store import db as store_db
from . import gate, guard
from . import store as cstore
from .partitions import EXACT_MAX

__all__ = ["EXACT_MAX", "Hit", "Keys", "Lookup", "ResponseCache", "request_keys", "request_options"]

log = logging.getLogger("llmgw.cache")

_INDEX_MARGIN = 0.02  # bf16 cosine error is far below this (partitions.INDEX_MARGIN)
# parameters that do not change the answer (transport and bookkeeping only)
_NOT_OUTPUT = frozenset({"stream", "stream_options", "user", "metadata", "model", "messages", "system"})


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _image_hash(part: dict[str, Any]) -> str:
    src = part.get("image_url") or part.get("source") or {}
    ref = src.get("url") if isinstance(src, dict) else src
    if isinstance(src, dict) and src.get("data"):
        ref = src["data"]
    return hashlib.sha256(str(ref).encode()).hexdigest()


@dataclass(slots=True)
class Keys:
    """Where a request lives in the cache."""

    scope: str
    model: str
    namespace: str
    exact_hash: str
    context_hash: str
    prompt: str
    facts: str = ""
    vector: Any = None  # the prompt's embedding (float32, numpy or bytes), once a lookup made it (the store reuses it)
    _pk: int | None = None
    _ek: int | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as a plain tuple, the vector as bytes (keys cross the pipe to the cache process
        twice per miss: the generic dataclass pickle took ~25 µs, and numpy in the daemon)."""
        vec = self.vector
        return Keys, (self.scope, self.model, self.namespace, self.exact_hash, self.context_hash, self.prompt,
                      self.facts, vec if vec is None or isinstance(vec, bytes) else vec.tobytes(), self._pk, self._ek)

    def partition(self) -> int:
        """The semantic partition as a 64-bit digest: scope, model, namespace, context and facts."""
        if self._pk is None:
            self._pk = partition_key(self.scope, self.model, self.namespace, self.context_hash, self.facts)
        return self._pk

    def exact(self) -> int:
        """The exact entry's key as a 64-bit digest: scope, model, namespace and exact hash
        (``store.exact_digest``, the ``exact_key`` column)."""
        if self._ek is None:
            self._ek = cstore.exact_digest(self.scope, self.model, self.namespace, self.exact_hash)
        return self._ek


def partition_key(scope: str, model: str, namespace: str, context_hash: str, facts: str) -> int:
    return cstore.digest(scope, model, namespace, context_hash, facts)


@lru_cache(maxsize=1024)
def _facts(prompt: str, patterns: tuple[str, ...]) -> str:
    """The guard's fingerprint of a prompt (pure): a prompt that comes back (a retry, the paraphrase
    that keeps hitting an entry) is not parsed again (~20-40 us each time)."""
    return guard.fingerprint(prompt, patterns)


def request_keys(body: dict[str, Any], *, inbound: str, scope: str, namespace: str, use_guard: bool,
                 patterns: tuple[str, ...] | list[str]) -> Keys:
    messages = body.get("messages") or []
    last_user = next((i for i in range(len(messages) - 1, -1, -1)
                      if isinstance(messages[i], dict) and messages[i].get("role") == "user"), None)
    prompt = _text_of(messages[last_user].get("content")) if last_user is not None else ""
    context: list[Any] = [body.get("system")]
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        images = [_image_hash(p) for p in content if isinstance(p, dict) and p.get("type") in ("image_url", "image")] \
            if isinstance(content, list) else []
        if i == last_user:
            context.append(["user", images])  # the text itself is what gets embedded
        else:
            context.append([m.get("role"), _text_of(content), images, m.get("tool_calls"), m.get("tool_call_id")])
    params = {k: v for k, v in body.items() if k not in _NOT_OUTPUT}
    context.append(params)
    exact = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "user", "metadata")}
    return Keys(
        scope=scope, model=f"{inbound}:{body.get('model')}", namespace=namespace,
        exact_hash=hashlib.sha256(orjson.dumps(exact, option=orjson.OPT_SORT_KEYS)).hexdigest(),
        context_hash=hashlib.sha256(orjson.dumps(context, option=orjson.OPT_SORT_KEYS)).hexdigest(),
        prompt=prompt, facts=_facts(prompt, tuple(patterns)) if use_guard else "")


@dataclass(slots=True)
class Hit:
    kind: str  # "exact" | "semantic"
    similarity: float
    body: bytes
    usage_json: str | None
    cost_nanos: int
    entry_id: int = 0
    prompt: str | None = None  # the stored prompt that answers
    asked: str = ""  # the prompt of the request (a semantic hit)

    def __reduce__(self) -> tuple[Any, ...]:
        return Hit, (self.kind, self.similarity, self.body, self.usage_json, self.cost_nanos, self.entry_id,
                     self.prompt, self.asked)


@dataclass(slots=True)
class Lookup:
    """What one lookup found: the hit (or None), the best similarity in the partition (for the
    similarity histograms; None without a semantic search) and what blocked a closer candidate."""

    hit: Hit | None
    best: float | None = None
    blocked: str | None = None  # a gate class that refused a candidate above the threshold

    def __reduce__(self) -> tuple[Any, ...]:
        return Lookup, (self.hit, self.best, self.blocked)


_TRIM_EVERY = 32  # semantic stores between two malloc_trim calls
#: entries of one partition stored without a vector at most (stores without a lookup, ``no-cache``,
#: could pile them up for one lookup to embed); beyond that a store embeds its own
_PENDING_MAX = 16
_EXACT_FOLD = 4096  # exact digests stored since the sorted array was built, then folded into it
_HIT_LOG_MAX = 100_000  # rows of cache_hit_log kept (the oldest are pruned)
_FEATURES_MAX = 20_000  # gate features of stored prompts kept in memory
_EMBEDDED_MAX = 1024  # recent texts' embeddings kept (1 KB each at 256 dimensions)


@dataclass(slots=True)
class _Put:
    """One answer to store."""

    keys: Keys
    blob: bytes | None
    body: bytes
    usage_json: str
    cost: int
    ttl_ms: int | None
    now_ms: int
    vec: Any = None  # the prompt's float32 embedding (the lookup's, or made by the store)


@dataclass
class ResponseCache:
    """The response cache: single-threaded, synchronous, one SQLite connection for reads and writes.

    The daemon runs it in its own process (``sidecar.CacheSidecar``), so its work (the guard, the
    embedding, the search, SQLite) never competes with the HTTP event loop for the GIL; CLI tools,
    tests and benchmarks use it in-process. ``autocommit`` (the default) commits each write; the
    cache process sets it to False and calls ``commit`` after each request it handles."""

    home: Path
    config: CacheConfig
    embedder: Any = None  # an Embedder; created lazily for semantic mode
    _conn: Any = None
    _index: Any = None
    entries: int = 0
    _parts: Any = None  # a partitions.Partitions once the semantic layer is loaded
    _features: dict[int, gate.Features] = field(default_factory=dict)
    _embedded: dict[str, Any] = field(default_factory=dict)  # ``_embed``'s recent texts, oldest first
    #: exact digests (``Keys.exact``) of the entries this cache knows of: a sorted uint64 array and
    #: the ones stored since it was built. A digest in neither has no entry (a miss without SQLite);
    #: one in them may (the entry may be gone since: SQLite decides). 8 bytes an entry, where a dict
    #: of 100k keys cost ~15 MB
    _exact_sorted: Any = None
    _exact_new: set[int] = field(default_factory=set)
    _stores: int = 0
    _stores_since_trim: int = _TRIM_EVERY - 1  # the first semantic store trims
    _hit_logs: int = 0
    autocommit: bool = True
    #: ``autocommit = False``: stores and writes waiting for ``commit`` (in order), and the exact
    #: and partition digests of those stores (a lookup there commits them first)
    _queued: list[tuple[str, Any]] = field(default_factory=list)
    _queued_keys: set[int] = field(default_factory=set)
    #: exact digests of the stores applied in the transaction not yet committed (not in the
    #: digests yet: a second store of the same request there replaces the first)
    _applied: set[int] = field(default_factory=set)
    _entries_applied: int | None = None  # the entry count after the stores applied in that transaction
    commit_error: Exception | None = None  # what the last failed ``commit`` raised (the cache process reads it)

    @property
    def queued(self) -> int:
        """Stores and writes waiting for ``commit``."""
        return len(self._queued)

    @property
    def truncated_searches(self) -> int:
        """Lookups whose widened ANN search stopped without reaching the partition."""
        return 0 if self._parts is None else int(self._parts.truncated_searches)

    # ---- lifecycle ---------------------------------------------------------------------------
    def _open(self) -> None:
        if self._conn is not None:
            return
        conn = store_db.connect(paths.db_path(self.home))
        self._exact_new = {cstore.exact_digest_of(k) for (k,) in conn.execute("SELECT exact_key FROM cache_entries")}
        self.entries = len(self._exact_new)
        self._exact_sorted = None
        self._fold_exact()
        self._conn = conn

    def _fold_exact(self) -> None:
        import numpy as np

        new = np.fromiter(self._exact_new, dtype=np.uint64, count=len(self._exact_new))
        old = self._exact_sorted
        self._exact_sorted = np.unique(new if old is None else np.concatenate((old, new)))
        self._exact_new = set()

    def _may_have_exact(self, digest: int) -> bool:
        if digest in self._exact_new:
            return True
        import numpy as np

        known = self._exact_sorted
        if known is None or not len(known):
            return False
        i = int(known.searchsorted(np.uint64(digest)))  # the method: np.searchsorted's wrapper costs ~1 µs
        return i < len(known) and int(known[i]) == digest

    def _semantic(self) -> Any:
        if self._index is None:
            from .embedder import Model2VecEmbedder
            from .index import VectorIndex
            from .partitions import Partitions

            if self.embedder is None:
                self.embedder = Model2VecEmbedder(self.config.model)
            parts = Partitions(self.embedder.dim, paths.cache_index_path(self.home))
            count = int(self._conn.execute("SELECT count(*) FROM cache_entries WHERE length(vector) > 0")
                        .fetchone()[0])  # the matrix's rows: entries not embedded yet take none
            rows = ((eid, partition_key(scope, model, ns, ctx, facts), bytes(blob))
                    for eid, scope, model, ns, ctx, facts, blob in self._conn.execute(
                        "SELECT id, scope, model, namespace, context_hash, facts, vector FROM cache_entries "
                        "WHERE vector IS NOT NULL ORDER BY id"))
            dim = self.embedder.dim
            parts.load(rows, count, lambda expected, entries: VectorIndex(
                paths.cache_index_path(self.home), dim, expected_count=expected, entries=entries))
            self._parts = parts
            self._index = parts.index
            trim_heap()  # loading the model and the rows leaves ~10 MB of free heap pages behind
        return self._index

    def warm(self, semantic: bool) -> None:
        """Open the database (and for semantic mode load the model and the partitions): before the
        daemon serves."""
        self._open()
        if semantic:
            self._semantic()

    def commit(self) -> None:
        """``autocommit = False``: write what was stored and recorded since the last commit, in one
        short transaction (SQLite's write lock is never held while the cache embeds or searches),
        then bring memory in line. On a failure nothing of it is kept, and it raises."""
        queued, self._queued = self._queued, []
        self._queued_keys.clear()
        if not queued:
            return
        self._open()
        try:
            results = [self._apply(self._conn, op, args) for op, args in queued]
            self._conn.commit()
        except Exception as e:
            self._conn.rollback()
            self.commit_error = e
            raise
        finally:
            self._applied.clear()
            self._entries_applied = None
        for (op, args), result in zip(queued, results, strict=True):
            if op == "put":
                self._stored(args, result)

    def close(self) -> None:
        try:
            self.commit()
        finally:
            if self._index is not None:
                self._index.save()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ---- partitions in memory ------------------------------------------------------------------
    def _forget(self, gone: Iterable[tuple[int, int]]) -> None:
        """Entries gone from SQLite (replaced, evicted, deleted by another process, expired), as
        ``(id, partition digest)``: their memory and index slots are freed now."""
        for eid, pk in gone:
            self._features.pop(eid, None)
            if self._parts is not None:
                self._parts.forget(eid, pk)

    def _gate_features(self, entry: cstore.Entry) -> gate.Features:
        got = self._features.get(entry.id)
        if got is None:
            if len(self._features) >= _FEATURES_MAX:
                self._features.clear()
            got = self._features[entry.id] = gate.features(entry.prompt_text or "")
        return got

    # ---- lookup --------------------------------------------------------------------------------
    def lookup(self, keys: Keys, semantic: bool, threshold: float, now_ms: int, request_id: str = "",
               log_hit: bool = True) -> Lookup:
        self._open()
        queued = self._queued_keys
        if queued and (keys.exact() in queued or (semantic and keys.partition() in queued)):
            self.commit()  # a store not written yet may answer this lookup
        # the exact entry from SQLite's unique index, when the digests say there may be one (~30 µs a probe)
        e = cstore.lookup_exact(self._conn, scope=keys.scope, model=keys.model, exact_hash=keys.exact_hash,
                                now_ms=now_ms, namespace=keys.namespace, exact=keys.exact()) \
            if self._may_have_exact(keys.exact()) else None  # an expired one: a miss
        if e is not None:
            self._write("touch", (e.id, now_ms))
            return Lookup(Hit("exact", 1.0, e.response, e.usage_json, e.cost_nanos, e.id, e.prompt_text), 1.0)
        if not semantic or not keys.prompt.strip():
            return Lookup(None)
        self._semantic()
        pk = keys.partition()
        if pk not in self._parts:  # nothing to compare with: no embedding (the store does without one)
            return Lookup(None)
        vec = keys.vector = self._embed(keys.prompt)
        made = self._embed_pending(pk) if pk in self._parts.pending else {}
        ranked = self._parts.ranked(pk, vec, threshold)
        if not ranked:
            return Lookup(None)
        best = ranked[0][0]
        wanted = [eid for sim, eid in ranked if sim >= threshold - _INDEX_MARGIN][:16]
        if not wanted:
            return Lookup(None, best)
        found = cstore.candidates(self._conn, wanted, scope=keys.scope, model=keys.model,
                                  context_hash=keys.context_hash, now_ms=now_ms, namespace=keys.namespace,
                                  facts=keys.facts)
        if len(found) < len(wanted):
            present = {f.id for f in found}
            for i in wanted:
                if i not in present:  # deleted by another process, or expired
                    self._features.pop(i, None)
                    self._parts.forget(i, pk)
        # the threshold applies to the exact cosine against the stored float16 vector
        for f in found:  # embedded once, but its vector never reached SQLite (that commit failed): again
            if not f.vector and f.vector is not None and f.id not in made:
                made[f.id] = cstore.vector_to_blob(self.embedder.encode([f.prompt_text or ""])[0])
                self._write("vector", (f.id, made[f.id]))
        # (an entry embedded just now has its vector in ``made``: the write is queued)
        scored = sorted(((float(vec @ cstore.blob_to_vector(f.vector or made[f.id])), f) for f in found
                         if f.vector or f.id in made), key=lambda x: -x[0])
        blocked = None
        classes = self.config.gate_classes if self.config.gate else ()
        mine = gate.features(keys.prompt) if classes else None
        for sim, cand in scored:
            if sim < threshold:
                break
            if mine is not None:
                why = gate.conflict(self._gate_features(cand), mine, classes)
                if why is not None:
                    blocked = blocked or why
                    continue
            sim = min(sim, 1.0)
            self._write("touch", (cand.id, now_ms))
            if log_hit and request_id:
                self._write("log", (request_id, now_ms, cand.id, sim, keys.prompt, "hit"))
            return Lookup(Hit("semantic", sim, cand.response, cand.usage_json, cand.cost_nanos, cand.id,
                              cand.prompt_text, keys.prompt), max(best, sim), blocked)
        return Lookup(None, max(best, scored[0][0]) if scored else best, blocked)

    def _embed(self, text: str) -> Any:
        """The float32 embedding of an asked prompt; the last ``_EMBEDDED_MAX`` are kept (a prompt
        that comes back, a retry, a popular question or the paraphrase that keeps hitting an entry,
        is not embedded again: ~40-60 us each time). Stored prompts are embedded once each, without
        it: a stored prompt asked again is an exact hit."""
        got = self._embedded.get(text)
        if got is None:
            if len(self._embedded) >= _EMBEDDED_MAX:
                del self._embedded[next(iter(self._embedded))]  # the oldest first
            got = self.embedder.encode([text])[0]
            got.flags.writeable = False  # shared by every lookup of the text: nobody may change it
            self._embedded[text] = got
        return got

    def _embed_pending(self, pk: int) -> dict[int, bytes]:
        """The first lookup in a partition whose entries were stored without a vector embeds them
        (their vectors join the partition now; the rows get them with the next commit):
        ``{entry id: float16 vector bytes}``. An entry gone from SQLite is skipped."""
        import numpy as np

        ids = self._parts.pending.pop(pk)
        marks = ", ".join("?" * len(ids))
        made: dict[int, bytes] = {}
        for eid, prompt in self._conn.execute(
                f"SELECT id, prompt_text FROM cache_entries WHERE id IN ({marks}) AND vector = X''", ids):
            v = self.embedder.encode([prompt or ""])[0]
            blob = cstore.vector_to_blob(v)
            self._parts.add(int(eid), pk, v, np.frombuffer(blob, dtype=np.float16))
            self._write("vector", (int(eid), blob))
            made[int(eid)] = blob
        if made and not self.autocommit:
            self._queued_keys.add(pk)  # the next lookup here commits the vectors first
        return made

    # ---- writes ---------------------------------------------------------------------------------
    def _write(self, op: str, args: Any) -> None:
        """A write no answer depends on (touch, hit log, label)."""
        if not self.autocommit:
            self._queued.append((op, args))
            return
        self._open()
        self._apply(self._conn, op, args)
        self._conn.commit()

    def _apply(self, conn: Any, op: str, args: Any) -> Any:
        if op == "put":
            p: _Put = args
            k = p.keys
            ek = k.exact()
            fresh = ek not in self._applied and not self._may_have_exact(ek)  # no entry to replace
            self._applied.add(ek)
            new_id, replaced = cstore.insert(
                conn, scope=k.scope, model=k.model, exact_hash=k.exact_hash, context_hash=k.context_hash,
                response=p.body, content_type="application/json", now_ms=p.now_ms, namespace=k.namespace,
                facts=k.facts, prompt_text=k.prompt, vector=p.blob, usage_json=p.usage_json, cost_nanos=p.cost,
                ttl_ms=p.ttl_ms, commit=False, fresh=fresh, exact=ek)
            self._stores += 1
            before = self.entries if self._entries_applied is None else self._entries_applied
            total = before + (1 if replaced is None else 0)
            recount = self._stores % 1000 == 0
            gone = cstore.evict_lru(conn, self.config.max_entries, commit=False, total=None if recount else total,
                                    rows=True) if recount or total > self.config.max_entries else []
            entries = int(conn.execute("SELECT count(*) FROM cache_entries").fetchone()[0]) if recount \
                else total - len(gone)
            keyed = [(eid, partition_key(sc, mo, ns, ctx, fa))
                     for eid, sc, mo, ns, ctx, fa, _ex in gone]
            if replaced is not None:
                keyed.append((replaced, k.partition()))
            self._entries_applied = entries
            return new_id, keyed, entries
        if op == "touch":
            cstore.touch(conn, args[0], args[1], commit=False)
        elif op == "vector":  # an entry stored without one, embedded by a lookup
            conn.execute("UPDATE cache_entries SET vector = ? WHERE id = ? AND vector = X''", (args[1], args[0]))
        elif op == "log":
            request_id, now_ms, entry_id, sim, prompt, kind = args
            conn.execute("INSERT OR REPLACE INTO cache_hit_log (request_id, ts_ms, entry_id, similarity, prompt,"
                         " kind) VALUES (?, ?, ?, ?, ?, ?)", (request_id, now_ms, entry_id, sim, prompt, kind))
            self._hit_logs += 1
            if self._hit_logs % 1000 == 0:
                conn.execute("DELETE FROM cache_hit_log WHERE rowid <= (SELECT max(rowid) FROM cache_hit_log) - ?",
                             (_HIT_LOG_MAX,))
        elif op == "label":
            cstore.add_label(conn, **args)
        return None

    def _put(self, keys: Keys, semantic: bool, body: bytes, usage_json: str, cost: int, ttl_ms: int | None,
             now_ms: int) -> _Put:
        """What to store. A semantic entry needs the prompt's embedding: the lookup's when it made
        one; otherwise (its partition was empty, so the lookup did not embed) the store makes it."""
        put = _Put(keys, None, bytes(body), usage_json, int(cost), ttl_ms, now_ms)
        if semantic and keys.prompt.strip():
            self._semantic()
            pk = keys.partition()
            if keys.vector is None and not self._parts.embedded(pk) and \
                    len(self._parts.pending.get(pk, ())) < _PENDING_MAX:
                put.blob = b""  # not embedded until a lookup in its partition needs it
                return put
            if keys.vector is None:
                keys.vector = self.embedder.encode([keys.prompt])[0]
            elif isinstance(keys.vector, bytes):  # back from the daemon (``Keys.__reduce__``)
                import numpy as np

                keys.vector = np.frombuffer(keys.vector, dtype=np.float32)
            put.vec, put.blob = keys.vector, cstore.vector_to_blob(keys.vector)
        return put

    def _stored(self, put: _Put, result: Any) -> None:
        """``put`` is in SQLite: bring memory in line."""
        new_id, gone, entries = result
        self.entries = entries
        self._forget(gone)
        self._exact_new.add(put.keys.exact())
        if len(self._exact_new) >= _EXACT_FOLD:
            self._fold_exact()
        if self._parts is not None and put.blob == b"":
            self._parts.add_pending(new_id, put.keys.partition())
        elif self._parts is not None and put.vec is not None and put.blob is not None:
            import numpy as np

            self._parts.add(new_id, put.keys.partition(), put.vec, np.frombuffer(put.blob, dtype=np.float16))
            self._stores_since_trim += 1
            if self._stores_since_trim >= _TRIM_EVERY:
                self._stores_since_trim = 0
                trim_heap()

    def store(self, keys: Keys, semantic: bool, body: bytes, usage_json: str, cost: int, ttl_ms: int | None,
              now_ms: int) -> None:
        """Store a complete answer (replacing the entry of the same exact request)."""
        self._open()
        put = self._put(keys, semantic, body, usage_json, cost, ttl_ms, now_ms)
        if not self.autocommit:  # written by the next ``commit``
            self._queued.append(("put", put))
            self._queued_keys.add(keys.exact())
            if semantic:  # an exact store is no semantic candidate: exact lookups in its partition need not wait
                self._queued_keys.add(keys.partition())
            return
        try:
            result = self._apply(self._conn, "put", put)
        finally:
            self._applied.clear()
            self._entries_applied = None
        self._conn.commit()
        self._stored(put, result)

    def record_label(self, source: str, request_id: str, entry_id: int | None, similarity: float | None,
                     cached_prompt: str | None, asked_prompt: str | None, label: int | None, now_ms: int) -> None:
        """Keep a labelled pair for ``ablate``: ``source`` shadow | verify | mark-wrong;
        ``label`` 1 when the cached answer was right for the asked prompt, 0 when wrong."""
        self._write("label", {"source": source, "request_id": request_id, "entry_id": entry_id,
                              "similarity": similarity, "cached_prompt": cached_prompt,
                              "asked_prompt": asked_prompt, "label": label, "now_ms": now_ms})

    def log_shadow(self, request_id: str, now_ms: int, hit: Hit, prompt: str) -> None:
        self._write("log", (request_id, now_ms, hit.entry_id, hit.similarity, prompt, "shadow"))


_malloc_trim: Any = None


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``).

    A usearch ``add`` between searches leaves the glibc heap fragmented: measured at 100k entries,
    each miss (lookup + store) kept ~0.3 MB that ``malloc_trim`` returned, so a full cache under
    steady misses grew by 100 MB per 300 requests (163 -> 261 MB), with the trim after every store
    it peaks at 166 MB. It costs ~0.4 ms in the cache process (off the daemon's event loop),
    small next to the upstream call a miss has just made. Other C libraries have no malloc_trim:
    then this does nothing (said once in the log).
    """
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
            log.info("this C library has no malloc_trim: the semantic cache's memory may grow with "
                     "heap fragmentation until restart")
    if _malloc_trim:
        _malloc_trim(0)


def request_options(headers: Mapping[str, str], config: CacheConfig, key_threshold: float | None = None,
                    model: str | None = None) -> tuple[bool, bool, float, int | None, str]:
    """(lookup?, store?, threshold, ttl_ms, namespace) from the request's headers. The threshold: the
    ``x-llmgw-cache-threshold`` header, else the key's (``keys create --cache-threshold``), else the
    namespace's or the model's in ``[cache]``, else ``[cache] threshold``."""
    cc = {p.strip().lower() for p in headers.get("cache-control", "").split(",")}
    namespace = headers.get("x-llmgw-cache-namespace", "")
    threshold = key_threshold if key_threshold is not None else config.threshold_for(namespace, model)
    if "x-llmgw-cache-threshold" in headers:
        try:
            threshold = float(headers["x-llmgw-cache-threshold"])
        except ValueError as e:
            raise InvalidRequest("x-llmgw-cache-threshold: expected a number in (0, 1]",
                                 param="x-llmgw-cache-threshold", code="invalid_value") from e
        if not 0 < threshold <= 1:
            raise InvalidRequest("x-llmgw-cache-threshold: expected a number in (0, 1]",
                                 param="x-llmgw-cache-threshold", code="invalid_value")
    ttl_ms = config.ttl * 1000 if config.ttl else None
    if "x-llmgw-cache-ttl" in headers:
        raw = headers["x-llmgw-cache-ttl"]
        if not raw.isdigit():
            raise InvalidRequest("x-llmgw-cache-ttl: expected whole seconds", param="x-llmgw-cache-ttl",
                                 code="invalid_value")
        ttl_ms = int(raw) * 1000 or None
    if len(namespace) > 200:
        raise InvalidRequest("x-llmgw-cache-namespace: at most 200 characters", param="x-llmgw-cache-namespace",
                             code="invalid_value")
    return "no-cache" not in cc, "no-store" not in cc, threshold, ttl_ms, namespace
