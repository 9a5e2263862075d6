"""Uncensored evidence about semantic hits: shadow mode and sampled verification.

A cache that serves its hits never learns what the model would have said instead, so a replay of
its own traffic cannot see its wrong answers (the hits are censored). Two ways to see them:

* ``[cache] shadow = true``: a semantic hit is *not* served. The ledger row says ``cache = "shadow"``
  with the entry id and similarity that would have answered; the request goes upstream; the fresh
  answer is compared with the cached one (normalised text, ``ablate.normalise_answer``).
* ``[cache] verify_sample = 0.01``: that fraction of served semantic hits is re-asked upstream in the
  background (non-streamed, admitted and charged like any request of the same key, its own ledger row
  with ``cache = "verify"``); the answers are compared the same way.

Each verdict is a labelled pair in ``cache_labels`` (source shadow | verify, label 1 = agree) that
``llmgw cache ablate --from-log`` uses, and a count in ``llmgw_cache_shadow_total`` /
``llmgw_cache_verify_total``. Background work is tracked and drained at shutdown (``drain``); a
failing verification is counted (``failed``), never raised.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from .ablate import answer_text, normalise_answer

if TYPE_CHECKING:
    from ..gateway import Call, Gateway
    from .semantic import Hit

log = logging.getLogger("llmgw.cache")


def same_answer(a: bytes | str, b: bytes | str) -> bool:
    """Whether two answers (JSON bodies in either dialect, or streamed text) say the same thing."""
    ta = a.decode("utf-8", "replace") if isinstance(a, bytes) else a
    tb = b.decode("utf-8", "replace") if isinstance(b, bytes) else b
    return normalise_answer(answer_text(ta)) == normalise_answer(answer_text(tb))


class CacheAudit:
    def __init__(self, gw: Gateway, rng: random.Random | None = None) -> None:
        self.gw = gw
        self.rng = rng or random.Random()
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the verdicts and verifications under way (at shutdown, and in tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- shadow ----------------------------------------------------------------------------------
    def shadow_verdict(self, call: Call, fresh: bytes) -> None:
        hit = call.shadow
        cache = self.gw.cache
        assert hit is not None and cache is not None
        agree = same_answer(hit.body, fresh)
        self.gw.metrics.cache_shadow["agree" if agree else "disagree"] += 1
        self._label("shadow", call.request_id, hit, int(agree), call.ts_ms)

    def _label(self, source: str, request_id: str, hit: Hit, label: int, now_ms: int) -> None:
        """Queued for the cache's writer (a failure there is counted by ``Gateway.cache_failed``)."""
        cache = self.gw.cache
        assert cache is not None
        try:
            if source == "shadow":
                cache.log_shadow(request_id, now_ms, hit, hit.asked)
            cache.record_label(source, request_id, hit.entry_id, hit.similarity, hit.prompt, hit.asked, label,
                               now_ms)
        except Exception as e:  # evidence lost, never a request
            self.gw.cache_failed("record", e)

    # ---- verify ----------------------------------------------------------------------------------
    def maybe_verify(self, call: Call, body: dict[str, Any], hit: Hit) -> None:
        cache = self.gw.cache
        assert cache is not None
        rate = cache.config.verify_sample
        if rate <= 0 or self.rng.random() >= rate:
            return
        again = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        self._spawn(self._verify(call, again, hit))

    async def _verify(self, hit_call: Call, body: dict[str, Any], hit: Hit) -> None:
        from ..errors import LlmgwError
        from ..gateway import Call

        gw = self.gw
        call = Call(request_id=gw.new_request_id(), route=hit_call.route, ts_ms=gw.clock(), inbound=hit_call.inbound)
        call.key, call.model, call.cache, call.cache_entry_id = hit_call.key, hit_call.model, "verify", hit.entry_id
        call.raw_body = hit_call.raw_body
        try:
            targets = gw.router.resolve(call.model or "")
            await gw._admit(call, body, targets)
        except LlmgwError:
            gw.metrics.cache_verify["skipped"] += 1  # over budget or rate limit: no verification
            return
        try:
            deadline = time.monotonic() + gw.request_timeout
            completion = await gw.router.run(
                targets, lambda t, to: t.provider.complete(call.inbound, body, t.model, to), deadline, call)
            call.usage = completion.usage
            call.status = completion.status
            if gw.log_bodies:
                call.response_body = completion.body.decode("utf-8", "replace")
        except LlmgwError as e:
            gw._fail(call, e)
            await gw._record(call)
            gw.metrics.cache_verify["failed"] += 1
            return
        except Exception:
            log.exception("verification of cache entry %s failed", hit.entry_id)
            gw.metrics.cache_verify["failed"] += 1
            return
        await gw._record(call)
        if completion.status != 200:
            gw.metrics.cache_verify["failed"] += 1
            return
        agree = same_answer(hit.body, completion.body)
        gw.metrics.cache_verify["agree" if agree else "disagree"] += 1
        self._label("verify", hit_call.request_id, hit, int(agree), call.ts_ms)
