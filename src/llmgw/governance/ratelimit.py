"""Per-key rate limits: requests per minute and tokens per minute, with OpenAI's headers.

Owns ``RateLimiter`` (GCRA, the generic cell rate algorithm: one "theoretical arrival time" per key
and limit, O(1) time and memory), ``LimitInfo`` (the ``x-ratelimit-*`` headers) and ``RateLimited``.

Semantics: a limit of L per minute is a bucket of L that refills continuously at L/60 per second, so an
idle key may send L requests at once, then one every 60/L seconds. Tokens are charged at admission
with an estimate (the request's token bound) and corrected by ``settle`` with the real total once
known; a request whose estimate alone exceeds the per-minute limit is admitted only when its bucket is
full (and pays the full estimate), so it is slowed, never blocked forever.

Invariants: single-threaded and clock-free (every method takes ``now`` in seconds from a monotonic
clock), ``check`` either charges both limits or neither, and memory stays bounded: a key whose
buckets are full again is indistinguishable from a new one and is dropped by a periodic sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import LlmgwError

PERIOD_S = 60.0
RETRY_AFTER_MAX_S = 120
_EPS = 1e-6  # float slack so that exactly L requests fit in a full bucket


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes its reset headers (Go style): ``0s``, ``120ms``, ``1.5s``, ``6m0s``."""
    ms = math.ceil(round(seconds * 1000, 6))
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    sec = f"{whole}.{frac:03d}".rstrip("0") + "s" if frac else f"{whole}s"
    if hours:
        return f"{hours}h{minutes}m{sec}"
    if minutes:
        return f"{minutes}m{sec}"
    return sec


@dataclass(frozen=True, slots=True)
class LimitInfo:
    """The state of a key's limits after a check; ``None`` limits are not configured."""

    limit_requests: int | None = None
    remaining_requests: int = 0
    reset_requests_s: float = 0.0
    limit_tokens: int | None = None
    remaining_tokens: int = 0
    reset_tokens_s: float = 0.0

    def headers(self) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers, for the limits that are configured."""
        out: dict[str, str] = {}
        if self.limit_requests is not None:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(self.remaining_requests)
            out["x-ratelimit-reset-requests"] = format_duration(self.reset_requests_s)
        if self.limit_tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens)
            out["x-ratelimit-reset-tokens"] = format_duration(self.reset_tokens_s)
        return out


NO_LIMITS = LimitInfo()


class RateLimited(LlmgwError):
    """429 ``rate_limit_exceeded``, code ``requests`` or ``tokens``, with Retry-After (1-120 s)."""

    status = 429
    type = "rate_limit_exceeded"
    anthropic_type = "rate_limit_error"

    def __init__(self, message: str, *, code: str, retry_after_s: float, info: LimitInfo) -> None:
        wait_ms = max(1, min(RETRY_AFTER_MAX_S * 1000, math.ceil(round(retry_after_s * 1000, 6))))
        headers = {
            "Retry-After": str(max(1, min(RETRY_AFTER_MAX_S, math.ceil(wait_ms / 1000)))),
            "retry-after-ms": str(wait_ms),
            **info.headers(),
        }
        super().__init__(message, code=code, headers=headers)
        self.retry_after_s = retry_after_s
        self.info = info


class _Key:
    __slots__ = ("req_tat", "tok_tat", "tok_interval")

    def __init__(self, now: float) -> None:
        self.req_tat = now  # theoretical arrival time: when the bucket will be full again
        self.tok_tat = now
        self.tok_interval = 0.0  # seconds per token at the last check (for settle)


class RateLimiter:
    """GCRA per key for requests/min and tokens/min."""

    def __init__(self, *, sweep_every_s: float = 60.0, max_keys: int = 100_000) -> None:
        self._keys: dict[str, _Key] = {}
        self._sweep_every_s = sweep_every_s
        self._max_keys = max_keys
        self._next_sweep: float | None = None
        self._high_water = max_keys

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, key_id: str, rpm: int | None, tpm: int | None, tokens_estimate: int, now: float) -> LimitInfo:
        """Admit one request estimated at ``tokens_estimate`` tokens, or raise ``RateLimited``."""
        if not rpm and not tpm:
            return NO_LIMITS
        self._maybe_sweep(now)
        k = self._keys.get(key_id)
        if k is None:
            k = self._keys[key_id] = _Key(now)
        req_tat = tok_tat = now
        req_interval = tok_interval = 0.0
        if rpm:
            req_interval = PERIOD_S / rpm
            start = max(k.req_tat, now)
            req_tat = start + req_interval
            if req_tat - now > PERIOD_S + _EPS:
                wait = req_tat - now - PERIOD_S
                info = self._info(k.req_tat, req_interval, rpm, k.tok_tat, PERIOD_S / tpm if tpm else 0.0, tpm, now)
                raise RateLimited(
                    f"rate limit reached for key {key_id}: {rpm} requests per minute; try again in "
                    f"{format_duration(wait)}", code="requests", retry_after_s=wait, info=info)
        cost = max(0, tokens_estimate)
        if tpm:
            tok_interval = PERIOD_S / tpm
            start = max(k.tok_tat, now)
            admit_at = start + min(cost, tpm) * tok_interval  # an oversize request waits for a full bucket
            if admit_at - now > PERIOD_S + _EPS:
                wait = admit_at - now - PERIOD_S
                info = self._info(k.req_tat, req_interval, rpm, k.tok_tat, tok_interval, tpm, now)
                raise RateLimited(
                    f"rate limit reached for key {key_id}: {tpm} tokens per minute (this request may use up to "
                    f"{cost}); try again in {format_duration(wait)}", code="tokens", retry_after_s=wait, info=info)
            tok_tat = start + cost * tok_interval
        if rpm:
            k.req_tat = req_tat
        if tpm:
            k.tok_tat = tok_tat
            k.tok_interval = tok_interval
        return self._info(k.req_tat, req_interval, rpm, k.tok_tat, tok_interval, tpm, now)

    def settle(self, key_id: str, estimate: int, actual: int, now: float) -> None:
        """Correct the tokens charged at admission (``estimate``) to the real total (``actual``)."""
        k = self._keys.get(key_id)
        if k is None or not k.tok_interval:
            return
        k.tok_tat += (max(0, actual) - max(0, estimate)) * k.tok_interval

    def info(self, key_id: str, rpm: int | None, tpm: int | None, now: float) -> LimitInfo:
        """The current state without charging anything."""
        k = self._keys.get(key_id)
        tat_r = k.req_tat if k else now
        tat_t = k.tok_tat if k else now
        return self._info(tat_r, PERIOD_S / rpm if rpm else 0.0, rpm, tat_t, PERIOD_S / tpm if tpm else 0.0, tpm, now)

    @staticmethod
    def _info(req_tat: float, req_interval: float, rpm: int | None, tok_tat: float, tok_interval: float,
              tpm: int | None, now: float) -> LimitInfo:
        def state(tat: float, interval: float, limit: int) -> tuple[int, float]:
            debt = max(0.0, tat - now)  # time until the bucket is full again
            remaining = int((PERIOD_S - debt) / interval + _EPS) if interval else limit
            return max(0, min(limit, remaining)), debt

        rr, rs = state(req_tat, req_interval, rpm) if rpm else (0, 0.0)
        tr, ts = state(tok_tat, tok_interval, tpm) if tpm else (0, 0.0)
        return LimitInfo(rpm or None, rr, rs, tpm or None, tr, ts)

    def _maybe_sweep(self, now: float) -> None:
        if self._next_sweep is None:
            self._next_sweep = now + self._sweep_every_s
        if now < self._next_sweep and len(self._keys) < self._high_water:
            return
        self._next_sweep = now + self._sweep_every_s
        self.sweep(now)
        # all busy: do not sweep on every request; memory is bounded by the number of keys in use anyway
        self._high_water = max(self._max_keys, 2 * len(self._keys))

    def sweep(self, now: float) -> int:
        """Drop keys whose buckets are full again (they behave like new keys); returns how many."""
        idle = [kid for kid, k in self._keys.items() if k.req_tat <= now and k.tok_tat <= now]
        for kid in idle:
            del self._keys[kid]
        return len(idle)
