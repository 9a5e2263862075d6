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

Only complete 200 answers are stored (never an errored or truncated stream). Everything that
touches SQLite, the embedder or the index runs in a worker thread under one lock; the event loop
only awaits it. ``warm``, ``lookup`` and ``store`` raise whatever failed (a model that cannot be
loaded, usearch missing, SQLite): the gateway turns that into a miss or no store, counts and logs
it (``Gateway.cache_failed``), so a failing cache never fails a request. Configuration (``[cache]``, all optional, read by ``config.py``): ``mode`` off|exact|semantic (default
off: a gateway must not silently serve stored samples), ``threshold`` (0.95), ``ttl`` seconds
(86400; 0 = no expiry), ``max_entries`` (100000, least recently used evicted), ``scope``
customer|global, ``guard`` (true), ``guard_patterns`` (extra regexes), ``model`` (a model2vec path
or hub id; default the bundled one), ``charge_hits`` (false: hits cost the customer nothing).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .. import paths
from ..config import CacheConfig
from ..errors import InvalidRequest
from ..store import db as store_db
from . import guard
from . import store as cstore

log = logging.getLogger("llmgw.cache")

_INDEX_MARGIN = 0.02  # bf16 cosine error is far below this
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


def request_keys(body: dict[str, Any], *, inbound: str, scope: str, namespace: str, use_guard: bool,
                 patterns: tuple[str, ...]) -> Keys:
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
        prompt=prompt, facts=guard.fingerprint(prompt, patterns) if use_guard else "")


@dataclass(slots=True)
class Hit:
    kind: str  # "exact" | "semantic"
    similarity: float
    body: bytes
    usage_json: str | None
    cost_nanos: int


@dataclass
class ResponseCache:
    home: Path
    config: CacheConfig
    embedder: Any = None  # an Embedder; created lazily for semantic mode
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _conn: Any = None
    _index: Any = None
    entries: int = 0

    # ---- lifecycle (worker thread) -----------------------------------------------------------
    def _open(self) -> None:
        if self._conn is not None:
            return
        self._conn = store_db.connect(paths.db_path(self.home))
        self.entries = int(self._conn.execute("SELECT count(*) FROM cache_entries").fetchone()[0])

    def _semantic(self) -> Any:
        if self._index is None:
            from .embedder import Model2VecEmbedder
            from .index import VectorIndex

            if self.embedder is None:
                self.embedder = Model2VecEmbedder(self.config.model)
            conn = self._conn
            self._index = VectorIndex(paths.cache_index_path(self.home), self.embedder.dim,
                                      expected_count=cstore.vector_count(conn),
                                      entries=lambda: cstore.iter_vectors(conn))
        return self._index

    def warm(self, semantic: bool) -> None:
        with self._lock:
            self._open()
            if semantic:
                self._semantic()

    def close(self) -> None:
        with self._lock:
            if self._index is not None:
                self._index.save()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ---- lookup / store (worker thread) ------------------------------------------------------
    def _lookup(self, keys: Keys, semantic: bool, threshold: float, now_ms: int) -> Hit | None:
        with self._lock:
            self._open()
            e = cstore.lookup_exact(self._conn, scope=keys.scope, model=keys.model, exact_hash=keys.exact_hash,
                                    now_ms=now_ms, namespace=keys.namespace)
            if e is not None:
                cstore.touch(self._conn, e.id, now_ms)
                return Hit("exact", 1.0, e.response, e.usage_json, e.cost_nanos)
            if not semantic or not keys.prompt.strip():
                return None
            index = self._semantic()
            vec = self.embedder.encode([keys.prompt])[0]
            # the index (bf16) only proposes candidates, with a margin; the threshold is applied to
            # the exact cosine against each candidate's stored f16 vector
            near = index.search(vec, 8, threshold - _INDEX_MARGIN)
            if not near:
                return None
            found = cstore.candidates(self._conn, [i for i, _ in near], scope=keys.scope, model=keys.model,
                                      context_hash=keys.context_hash, now_ms=now_ms, namespace=keys.namespace,
                                      facts=keys.facts)
            scored = [(float(vec @ cstore.blob_to_vector(e.vector)), e) for e in found if e.vector]
            scored = [(sim, e) for sim, e in scored if sim >= threshold]
            if not scored:
                return None
            sim, best = max(scored, key=lambda x: x[0])
            cstore.touch(self._conn, best.id, now_ms)
            return Hit("semantic", min(sim, 1.0), best.response, best.usage_json, best.cost_nanos)

    def _store(self, keys: Keys, semantic: bool, body: bytes, usage_json: str, cost: int, ttl_ms: int | None,
               now_ms: int) -> None:
        with self._lock:
            self._open()
            vec = None
            if semantic and keys.prompt.strip():
                vec = self.embedder_vector(keys.prompt)
            new_id, replaced = cstore.insert(
                self._conn, scope=keys.scope, model=keys.model, exact_hash=keys.exact_hash,
                context_hash=keys.context_hash, response=body, content_type="application/json", now_ms=now_ms,
                namespace=keys.namespace, facts=keys.facts, prompt_text=keys.prompt, vector=vec,
                usage_json=usage_json, cost_nanos=cost, ttl_ms=ttl_ms)
            gone = cstore.evict_lru(self._conn, self.config.max_entries)
            if self._index is not None:
                if replaced is not None:
                    gone.append(replaced)
                self._index.remove_many(gone)
                if vec is not None:
                    self._index.add(new_id, vec)
                    trim_heap()
            self.entries = int(self._conn.execute("SELECT count(*) FROM cache_entries").fetchone()[0])

    def embedder_vector(self, text: str) -> Any:
        self._semantic()
        return self.embedder.encode([text])[0]

    # ---- the loop-side API -------------------------------------------------------------------
    async def lookup(self, keys: Keys, semantic: bool, threshold: float, now_ms: int) -> Hit | None:
        return await asyncio.to_thread(self._lookup, keys, semantic, threshold, now_ms)

    async def store(self, keys: Keys, semantic: bool, body: bytes, usage_json: str, cost: int,
                    ttl_ms: int | None, now_ms: int) -> None:
        await asyncio.to_thread(self._store, keys, semantic, body, usage_json, cost, ttl_ms, now_ms)


_malloc_trim: Any = None


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``).

    A usearch ``add`` between searches leaves the glibc heap fragmented: measured at 100k entries,
    each miss (lookup + store) kept ~0.3 MB that ``malloc_trim`` returned, so a full cache under
    steady misses grew by 100 MB per 300 requests (163 -> 261 MB), with the trim after every store
    it peaks at 166 MB. It costs ~0.4 ms in the cache's worker thread (ctypes releases the GIL),
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


def request_options(headers: Mapping[str, str], config: CacheConfig) -> tuple[bool, bool, float, int | None, str]:
    """(lookup?, store?, threshold, ttl_ms, namespace) from the request's headers."""
    cc = {p.strip().lower() for p in headers.get("cache-control", "").split(",")}
    threshold = config.threshold
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
    namespace = headers.get("x-llmgw-cache-namespace", "")
    if len(namespace) > 200:
        raise InvalidRequest("x-llmgw-cache-namespace: at most 200 characters", param="x-llmgw-cache-namespace",
                             code="invalid_value")
    return "no-cache" not in cc, "no-store" not in cc, threshold, ttl_ms, namespace
