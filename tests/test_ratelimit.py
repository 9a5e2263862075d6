"""Rate limits per key (GCRA, requests and tokens per minute) with an injected clock, and the
OpenAI-style headers and error they produce."""

from __future__ import annotations

import random

import pytest

from llmgw.governance.ratelimit import LimitInfo, RateLimited, RateLimiter, format_duration

T0 = 1000.0


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (-3, "0s"), (0.0004, "1ms"), (0.12, "120ms"), (0.999, "999ms"), (1, "1s"), (1.5, "1.5s"),
    (17.25, "17.25s"), (59.999, "59.999s"), (60, "1m0s"), (90.25, "1m30.25s"), (360, "6m0s"),
    (3723, "1h2m3s"), (3600, "1h0m0s"),
])
def test_durations_are_formatted_like_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_no_limits_no_headers() -> None:
    rl = RateLimiter()
    info = rl.check("k", None, None, 10**6, T0)
    assert info.headers() == {} and len(rl) == 0


def test_requests_per_minute() -> None:
    rl = RateLimiter()
    infos = [rl.check("k", 3, None, 0, T0) for _ in range(3)]  # a full bucket: 3 at once
    assert [i.remaining_requests for i in infos] == [2, 1, 0]
    assert infos[0].headers() == {"x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "2",
                                  "x-ratelimit-reset-requests": "20s"}
    assert infos[2].headers()["x-ratelimit-reset-requests"] == "1m0s"
    with pytest.raises(RateLimited) as ei:
        rl.check("k", 3, None, 0, T0 + 5)
    e = ei.value
    assert (e.status, e.type, e.code, e.anthropic_type) == (429, "rate_limit_exceeded", "requests", "rate_limit_error")
    assert e.headers["Retry-After"] == "15" and e.headers["retry-after-ms"] == "15000"
    assert e.headers["x-ratelimit-remaining-requests"] == "0"
    assert e.headers["x-ratelimit-reset-requests"] == "55s"
    assert "3 requests per minute" in e.message and "try again in 15s" in e.message
    assert e.openai_body()["error"]["type"] == "rate_limit_exceeded"
    # another key has its own bucket
    rl.check("other", 3, None, 0, T0 + 5)
    # one request refills every 20 s
    with pytest.raises(RateLimited):
        rl.check("k", 3, None, 0, T0 + 19.99)
    assert rl.check("k", 3, None, 0, T0 + 20).remaining_requests == 0
    assert rl.check("k", 3, None, 0, T0 + 100).remaining_requests == 2  # 80 s idle: full again, minus this one


def test_retry_after_is_between_1_and_120_seconds() -> None:
    rl = RateLimiter()
    rl.check("k", 600, None, 0, T0)  # 0.1 s per request
    for _ in range(599):
        rl.check("k", 600, None, 0, T0)
    with pytest.raises(RateLimited) as ei:
        rl.check("k", 600, None, 0, T0 + 0.05)
    assert ei.value.headers["Retry-After"] == "1" and ei.value.headers["retry-after-ms"] == "50"
    # a large token debt (estimate far below the real use) would mean minutes: capped at 120 s
    rl.check("t", None, 1000, 1000, T0)
    rl.settle("t", 1000, 10_000, T0 + 1)
    with pytest.raises(RateLimited) as ei:
        rl.check("t", None, 1000, 10, T0 + 2)
    assert ei.value.code == "tokens"
    assert ei.value.headers["Retry-After"] == "120" and ei.value.headers["retry-after-ms"] == "120000"
    assert ei.value.retry_after_s > 500


def test_tokens_per_minute_with_settle() -> None:
    rl = RateLimiter()
    info = rl.check("k", 60, 1000, 600, T0)
    assert info.headers() == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59", "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "36s"}
    with pytest.raises(RateLimited) as ei:
        rl.check("k", 60, 1000, 600, T0)
    assert ei.value.code == "tokens" and ei.value.headers["Retry-After"] == "12"
    # the refused request charged nothing, requests included
    assert rl.info("k", 60, 1000, T0).remaining_requests == 59
    # the first request really used 100 tokens: the correction frees the rest
    rl.settle("k", 600, 100, T0 + 1)
    info = rl.check("k", 60, 1000, 600, T0 + 1)
    assert info.remaining_tokens == 316  # 1000 - 100 - 600 + 16 refilled in 1 s
    rl.settle("unknown", 5, 1, T0)  # harmless


def test_an_oversize_request_waits_for_a_full_bucket() -> None:
    rl = RateLimiter()
    rl.check("k", None, 1000, 5000, T0)  # idle bucket: admitted, and pays all of it
    with pytest.raises(RateLimited):
        rl.check("k", None, 1000, 1, T0 + 60)
    with pytest.raises(RateLimited):
        rl.check("k", None, 1000, 5000, T0 + 299)
    rl.check("k", None, 1000, 5000, T0 + 300)  # 5 minutes later the bucket is full again


def test_long_run_rate_and_window_bound() -> None:
    """A greedy client gets L at once, then L per minute; any 60 s window sees at most 2L - 1."""
    rl = RateLimiter()
    limit = 30
    rng = random.Random(1)
    now = T0
    admitted: list[float] = []
    while now < T0 + 600:
        try:
            rl.check("k", limit, None, 0, now)
            admitted.append(now)
        except RateLimited as e:
            assert e.retry_after_s > 0
        now += rng.random() * 0.5
    assert limit * 10 <= len(admitted) <= limit * 11
    j = 0
    for i, t in enumerate(admitted):
        while admitted[j] <= t - 60:
            j += 1
        assert i - j + 1 <= 2 * limit - 1


def test_limit_changes_apply_at_once() -> None:
    """The state is a time (when the bucket is full again): a new limit re-reads it at once."""
    rl = RateLimiter()
    for _ in range(5):
        rl.check("k", 10, None, 0, T0)  # 30 s of a 60 s bucket used
    assert rl.info("k", 5, None, T0).remaining_requests == 2  # half a bucket of 5
    rl.check("k", 5, None, 0, T0)
    rl.check("k", 5, None, 0, T0)
    with pytest.raises(RateLimited):
        rl.check("k", 5, None, 0, T0)
    rl.check("k", 1000, None, 0, T0)


def test_idle_keys_are_dropped() -> None:
    rl = RateLimiter(sweep_every_s=60)
    for i in range(1000):
        rl.check(f"k{i}", 10, 1000, 100, T0)
    assert len(rl) == 1000
    rl.check("busy", 1, None, 0, T0 + 59)
    assert len(rl) == 1001  # the sweep waits for its interval
    rl.check("late", 10, None, 0, T0 + 61)  # the first keys' buckets are full again: forgotten
    assert len(rl) == 2  # "busy" is still refilling, "late" just came
    assert rl.sweep(T0 + 200) == 2 and len(rl) == 0
    # a forgotten key behaves as a new one
    assert rl.check("k1", 10, None, 0, T0 + 200).remaining_requests == 9


def test_memory_is_bounded_under_a_flood_of_keys() -> None:
    rl = RateLimiter(sweep_every_s=3600, max_keys=100)
    now = T0
    for i in range(1000):
        now += 1.0  # each key refills within 6 s (10 rpm)
        rl.check(f"k{i}", 10, None, 0, now)
    assert len(rl) <= 100


def test_limit_info_headers_for_tokens_only() -> None:
    info = LimitInfo(limit_tokens=5000, remaining_tokens=4000, reset_tokens_s=0.12)
    assert info.headers() == {"x-ratelimit-limit-tokens": "5000", "x-ratelimit-remaining-tokens": "4000",
                              "x-ratelimit-reset-tokens": "120ms"}
