"""The semantic cache's partitions in memory: where a lookup searches, and only there.

A partition is everything that must be equal for a semantic hit (scope, model, namespace, context
hash, guard facts), as a 64-bit digest (``semantic.partition_key``). Small partitions (up to
``EXACT_MAX`` entries; with fields in the prompts nearly all of them hold one or two) keep their
float16 vectors in one shared matrix and are scored exactly; a larger one moves its vectors to the
usearch index (``index.VectorIndex``), which is searched with a widening ``k`` until members of the
partition turn up or the results fall below the threshold. A vector lives in exactly one of the two.

Compact on purpose (measured at 100k entries: this structure is most of the cache's memory): a
one-entry partition is a single int (its matrix slot) in one dict, the slot's entry id is in a numpy
array. Invariants: ``ids[slot] == 0`` for a free slot (entry ids start at 1); a small partition is
a slot (int) or a list of 2..``EXACT_MAX`` slots; a large one a ``_Large`` with its member ids.
Loop-side only (no locking): the cache changes it on the event loop.

Entries not embedded yet (``pending``): the first entries of a partition are stored without a
vector (``vector = X''`` in SQLite; ``semantic.ResponseCache._put``), because most partitions, with
fields in the prompts, never see a second request; the first lookup there embeds them
(``ResponseCache._embed_pending``). A pending entry has no slot and no row of the matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

#: partitions up to this size are scored exactly from memory; larger ones are searched in the index
EXACT_MAX = 256
INDEX_MARGIN = 0.02  # the bf16 index only proposes candidates; the threshold applies to f16 cosines
_WIDEN_START = 16
_WIDEN_MAX = 4096


class _Large:
    __slots__ = ("members",)

    def __init__(self, members: set[int]) -> None:
        self.members = members


class Partitions:
    def __init__(self, dim: int, index_path: Path) -> None:
        import numpy as np

        self.dim = dim
        self.index_path = index_path
        self.parts: dict[int, Any] = {}
        self.mat = np.zeros((0, dim), dtype=np.float16)
        self.ids = np.zeros(0, dtype=np.int64)
        self.free: list[int] = []
        self.top = 0  # slots below are in use or free
        self.index: Any = None
        #: lookups whose widened ANN search stopped at ``_WIDEN_MAX`` without reaching the partition
        self.truncated_searches = 0
        #: partition digest -> its entries not embedded yet, oldest first
        self.pending: dict[int, list[int]] = {}

    # ---- slots ---------------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        import numpy as np

        cap = self.mat.shape[0]
        if need <= cap:
            return
        new = max(need, int(cap * 1.5) + 1024)
        mat = np.zeros((new, self.dim), dtype=np.float16)
        mat[:cap] = self.mat
        ids = np.zeros(new, dtype=np.int64)
        ids[:cap] = self.ids
        self.mat, self.ids = mat, ids

    def _put(self, eid: int, vec16: Any) -> int:
        if self.free:
            slot = self.free.pop()
        else:
            self._grow(self.top + 1)
            slot = self.top
            self.top += 1
        self.mat[slot] = vec16
        self.ids[slot] = eid
        return slot

    def _drop(self, slot: int) -> None:
        self.ids[slot] = 0
        self.free.append(slot)

    # ---- loading -------------------------------------------------------------------------------
    def load(self, rows: Iterable[tuple[int, int, bytes]], count: int,
             open_index: Callable[[int, Callable[[], Iterator[tuple[int, Any]]]], Any]) -> None:
        """``rows``: ``(entry id, partition digest, float16 vector bytes)``; ``open_index(expected
        count, entries)`` opens the ANN index (rebuilding it from ``entries()`` when it disagrees)."""
        import numpy as np

        self._grow(count)
        groups: dict[int, list[int]] = {}
        for eid, pk, blob in rows:
            if not blob:  # stored before any lookup there: embedded by the first one
                self.pending.setdefault(pk, []).append(int(eid))
                continue
            slot = self._put(int(eid), np.frombuffer(blob, dtype=np.float16))
            groups.setdefault(pk, []).append(slot)
        large = {pk: slots for pk, slots in groups.items() if len(slots) > EXACT_MAX}

        def entries() -> Iterator[tuple[int, Any]]:
            for slots in large.values():
                for s in slots:
                    yield int(self.ids[s]), self.mat[s].astype(np.float32)

        self.index = open_index(sum(len(s) for s in large.values()), entries)
        for pk, slots in groups.items():
            if pk in large:
                self.parts[pk] = _Large({int(self.ids[s]) for s in slots})
                for s in slots:
                    self._drop(s)
            else:
                self.parts[pk] = slots[0] if len(slots) == 1 else slots

    # ---- changes -------------------------------------------------------------------------------
    def add(self, eid: int, pk: int, vec: Any, vec16: Any) -> None:
        v = self.parts.get(pk)
        if v is None:
            self.parts[pk] = self._put(eid, vec16)
        elif isinstance(v, int):
            self.parts[pk] = [v, self._put(eid, vec16)]
        elif isinstance(v, list):
            v.append(self._put(eid, vec16))
            if len(v) > EXACT_MAX:  # too large to scan: its vectors move to the ANN index
                import numpy as np

                members = set()
                for s in v:
                    i = int(self.ids[s])
                    self.index.add(i, self.mat[s].astype(np.float32))
                    members.add(i)
                    self._drop(s)
                self.parts[pk] = _Large(members)
        else:
            v.members.add(eid)
            self.index.add(eid, vec)

    def add_pending(self, eid: int, pk: int) -> None:
        """Entry ``eid`` of partition ``pk`` is stored without a vector."""
        self.pending.setdefault(pk, []).append(eid)

    def embedded(self, pk: int) -> bool:
        """Whether partition ``pk`` holds an entry with a vector."""
        return pk in self.parts

    def forget(self, eid: int, pk: int) -> None:
        """Entry ``eid`` of partition ``pk`` is gone: its slot (or index slot) is free now."""
        waiting = self.pending.get(pk)
        if waiting is not None and eid in waiting:
            waiting.remove(eid)
            if not waiting:
                del self.pending[pk]
            return
        v = self.parts.get(pk)
        if v is None:
            return
        if isinstance(v, int):
            if self.ids[v] == eid:
                self._drop(v)
                del self.parts[pk]
        elif isinstance(v, list):
            for n, s in enumerate(v):
                if self.ids[s] == eid:
                    self._drop(s)
                    del v[n]
                    break
            if len(v) == 1:
                self.parts[pk] = v[0]
        elif eid in v.members:
            v.members.discard(eid)
            self.index.remove(eid)
            if not v.members:
                del self.parts[pk]

    # ---- search --------------------------------------------------------------------------------
    def ranked(self, pk: int, vec: Any, threshold: float) -> list[tuple[float, int]]:
        """The partition's best candidates ``(cosine, entry id)``, best first: an exact scan of a
        small partition (its 64 best), or the widened ANN search of a large one."""
        import numpy as np

        v = self.parts.get(pk)
        if v is None:
            return []
        if isinstance(v, int):
            return [(float(self.mat[v].astype(np.float32) @ vec), int(self.ids[v]))]
        if isinstance(v, list):
            sims = self.mat[v].astype(np.float32) @ vec
            order = np.argsort(-sims)[:64]
            return [(float(sims[i]), int(self.ids[v[int(i)]])) for i in order]
        k = _WIDEN_START
        while True:
            near = self.index.search(vec, k)
            mine = [(sim, eid) for eid, sim in near if eid in v.members]
            if mine or len(near) < k or near[-1][1] < threshold - INDEX_MARGIN:
                return mine
            if k >= _WIDEN_MAX:
                self.truncated_searches += 1
                return mine
            k *= 4

    # ---- introspection (tests, benchmarks, stats) ------------------------------------------------
    def __len__(self) -> int:
        return len(self.parts) + sum(1 for pk in self.pending if pk not in self.parts)

    def __contains__(self, pk: object) -> bool:
        """Whether partition ``pk`` holds an entry, embedded or not (none: a lookup there cannot hit)."""
        return pk in self.parts or pk in self.pending

    def members(self, pk: int) -> list[int]:
        """The partition's entry ids, pending ones included."""
        waiting = self.pending.get(pk, [])
        v = self.parts.get(pk)
        if v is None:
            return sorted(waiting)
        if isinstance(v, int):
            return sorted([int(self.ids[v]), *waiting])
        if isinstance(v, list):
            return sorted([*(int(self.ids[s]) for s in v), *waiting])
        return sorted([*v.members, *waiting])

    def is_large(self, pk: int) -> bool:
        return isinstance(self.parts.get(pk), _Large)

    def contains(self, eid: int, pk: int) -> bool:
        return eid in self.members(pk)
