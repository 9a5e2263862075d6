"""The usearch vector index of the semantic cache (one file next to the SQLite database).

Owns: opening (``Index.restore``: writable, never a read-only ``view``), adding, removing, searching
and saving cache vectors; rebuilding the file from SQLite, which is the source of truth.

Invariants:
- Keys are ``cache_entries.id``; vectors are bf16 (hardware-accelerated search, ~40 % faster than
  f16 at 100k entries here; its cosine is only used to find candidates: the cache re-scores them
  exactly from the f16 vectors in SQLite), metric cosine. ``search`` returns cosine
  *similarity* (``1 - distance``) and applies any threshold in code (usearch's ``radius`` does not
  filter in 2.26).
- A missing, unreadable or truncated file, a file of another dimension or metric, or one whose count
  disagrees with SQLite's is rebuilt from SQLite (and logged), never trusted.
- usearch and numpy are imported lazily: importing this module loads neither.
- ``save`` writes a temporary file and renames it, so a crash never leaves a half-written index.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from usearch.index import Index

log = logging.getLogger("llmgw.cache.index")

# expansion_search: the search is memory-latency bound at 100k entries (the 66 MB index does not fit
# in cache: ~85 us at 10k, ~280-330 us at 100k with 64 here). 48 / 40 / 32 are ~15 / 25 / 37 % faster
# but each missed 1 of 1,556 exact-best hits at threshold 0.95 on cache_bench's 3,000 queries (and 8 /
# 11 / 11 instead of 4 at 0.90); 64 missed none at 0.95, so it stays.
DEFAULT_EXPANSION_SEARCH = 64

VectorEntries = Iterable[tuple[int, Any]]


def _vec(vec: Any, ndim: int) -> Any:
    import numpy as np

    arr = np.asarray(vec, dtype=np.float32).reshape(-1)
    if arr.shape[0] != ndim:
        raise ValueError(f"vector has {arr.shape[0]} dimensions, the index {ndim}")
    return arr


class VectorIndex:
    """A writable usearch index at ``path`` with ``ndim`` bf16 cosine vectors keyed by entry id.

    ``problem`` says why the file on disk could not be used as is (``None`` when it loaded fine);
    pass ``expected_count`` and ``entries`` (a callable yielding ``(id, vector)`` from SQLite) to
    rebuild immediately in that case or when the counts disagree (see ``sync``).
    """

    def __init__(self, path: str | os.PathLike[str], ndim: int, *,
                 expansion_search: int = DEFAULT_EXPANSION_SEARCH,
                 expected_count: int | None = None,
                 entries: Callable[[], VectorEntries] | None = None) -> None:
        self.path = Path(path)
        self.ndim = int(ndim)
        self.expansion_search = int(expansion_search)
        self.problem: str | None = None
        self.rebuilt = False
        self._index = self._open()
        if entries is not None:
            self.sync(expected_count, entries)

    # ---- opening ---------------------------------------------------------------------------------

    def _new(self) -> Index:
        from usearch.index import Index

        return Index(ndim=self.ndim, metric="cos", dtype="bf16", expansion_search=self.expansion_search)

    def _open(self) -> Index:
        if not self.path.exists():
            self.problem = "missing"
            return self._new()
        try:
            from usearch.index import Index, MetricKind, ScalarKind

            index = Index.restore(str(self.path), view=False)
            if index is None:
                raise ValueError("not a usearch index")
        except Exception as exc:  # usearch raises ValueError/RuntimeError for truncated or foreign files
            self.problem = f"unreadable ({exc})"
            return self._new()
        if index.ndim != self.ndim:
            self.problem = f"dimension {index.ndim}, expected {self.ndim}"
            return self._new()
        if index.metric != MetricKind.Cos or index.dtype != ScalarKind.BF16:
            self.problem = f"metric {index.metric} / dtype {index.dtype}, expected cos / bf16"
            return self._new()
        index.expansion_search = self.expansion_search  # type: ignore[misc]  # not persisted in the file; settable
        return index

    def sync(self, expected_count: int | None, entries: Callable[[], VectorEntries]) -> bool:
        """Rebuild from ``entries()`` if the file was unusable or holds another count than SQLite
        (``expected_count``; ``None`` skips the count check). Returns whether it rebuilt."""
        reason = self.problem
        if reason is None and expected_count is not None and len(self) != expected_count:
            reason = f"count {len(self)} but SQLite has {expected_count}"
        if reason is None:
            return False
        log.warning("cache index %s: %s; rebuilding from SQLite", self.path, reason)
        self.rebuild(entries())
        self.save()
        return True

    def rebuild(self, entries: VectorEntries) -> int:
        """Replace the in-memory index with ``entries`` (``(id, vector)`` pairs); returns the count.
        Call ``save`` to persist it."""
        import numpy as np

        index = self._new()
        keys: list[int] = []
        vecs: list[Any] = []

        def flush() -> None:
            if keys:
                index.add(np.asarray(keys, dtype=np.uint64), np.stack(vecs))
                keys.clear()
                vecs.clear()

        for key, vec in entries:
            keys.append(int(key))
            vecs.append(_vec(vec, self.ndim))
            if len(keys) >= 4096:
                flush()
        flush()
        self._index = index
        self.problem = None
        self.rebuilt = True
        return len(index)

    # ---- operations ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: int) -> bool:
        return bool(self._index.contains(int(key)))

    def add(self, key: int, vec: Any) -> None:
        """Add (or replace) the vector of entry ``key``."""
        key = int(key)
        if self._index.contains(key):
            self._index.remove(key)
        self._index.add(key, _vec(vec, self.ndim))

    def remove(self, key: int) -> bool:
        """Remove entry ``key`` (lazy in usearch: the slot is freed on rebuild); False if absent."""
        return bool(self._index.remove(int(key)))

    def remove_many(self, keys: Iterable[int]) -> int:
        return sum(self.remove(k) for k in keys)

    def search(self, vec: Any, k: int, threshold: float | None = None) -> list[tuple[int, float]]:
        """The ``k`` nearest entries as ``(id, cosine similarity)``, best first; those below
        ``threshold`` (if given) are dropped here, in code."""
        import math

        n = len(self._index)
        if n == 0 or k <= 0:
            return []
        matches = self._index.search(_vec(vec, self.ndim), min(int(k), n))
        out: list[tuple[int, float]] = []
        for key, dist in zip(matches.keys.tolist(), matches.distances.tolist(), strict=True):
            sim = 1.0 - float(dist)
            if not math.isfinite(sim) or (threshold is not None and sim < threshold):
                continue
            out.append((int(key), sim))
        return out

    def save(self) -> None:
        """Write the index atomically (temporary file, then rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        self._index.save(str(tmp))
        os.replace(tmp, self.path)
