"""Property-based fuzzing of the public API through the real daemon: request bodies of both dialects
and of embeddings (valid shapes with any field replaced by any JSON value or deleted, garbage, deep
nesting), with and without budgets and rate limits, and the headers llmgw
reads (``x-llmgw-*``, ``x-stainless-*``, the API key, ``Idempotency-Key``) as arbitrary bytes.

Whatever is sent: never a 5xx, an answer in the dialect's JSON envelope (or a stream), and exactly
one ledger row per request, with the answer's request id. Deterministic (``derandomize``, no example
database) and modest in size so the suite stays fast.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import UPSTREAM_ENV, upstream_config

EXAMPLES = int(os.environ.get("LLMGW_FUZZ_EXAMPLES", "120"))

# no "explain" phase: it imports libcst, which warns (an error under filterwarnings = error)
SETTINGS = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])

MODELS = ["openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5", "demo/echo"]

# ---- JSON values -------------------------------------------------------------------------------

# no lone surrogates (orjson refuses them as invalid JSON: a few come through ``garbage``)
chars = st.characters(exclude_categories=["Cs"])
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(chars, max_size=12))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(chars, max_size=6), inner, max_size=3),
    max_leaves=8)


def deep(depth: int, leaf: Any = "x") -> Any:
    v = leaf
    for i in range(depth):
        v = [v] if i % 2 else {"k": v}
    return v


deep_values = st.integers(min_value=100, max_value=300).map(deep)


def weighted(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], one_in: int) -> st.SearchStrategy[Any]:
    """``rare`` about once in ``one_in`` draws, else ``common``. (``st.one_of(a, a, a, b)`` folds the
    repeats into a 50/50 choice, and an integer draw favours its bounds: the rare value is a middle one.)"""
    return st.integers(0, one_in - 1).flatmap(lambda i: rare if i == one_in // 2 else common)


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value: valid, or rarely any JSON value (``mutated`` breaks more)."""
    return weighted(valid, json_values, 20)



FIELD_NAMES = ["model", "messages", "role", "content", "type", "text", "source", "tools", "tool_choice", "stream",
               "max_tokens", "metadata", "system", "response_format", "n", "stop", "stream_options", "input"]


def _slots(v: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) of ``v``: the places a mutation can replace."""
    if isinstance(v, dict):
        for k, x in v.items():
            out.append((v, k))
            _slots(x, out)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out.append((v, i))
            _slots(x, out)
    return out


@st.composite
def mutated(draw: Any, valid: st.SearchStrategy[Any]) -> Any:
    """A valid body with up to three places replaced by any JSON value (rarely one nested far too
    deep) or deleted, or given a new field: most examples fail one check deep in the request, some pass."""
    body = copy.deepcopy(draw(valid))  # st.just() hands out one object: never mutate it
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        value = draw(weighted(json_values, deep_values, 4))
        slots = _slots(body, [])
        how = draw(st.sampled_from(["replace", "replace", "add", "delete"]))
        if slots and how != "add":
            container, key = slots[draw(st.integers(0, len(slots) - 1))]
            if how == "delete" and isinstance(container, dict):
                del container[key]
            else:
                container[key] = value
        else:
            body[draw(st.sampled_from(FIELD_NAMES))] = value
    return body


texts = st.text(chars, max_size=30)
images = st.sampled_from(["data:image/png;base64,iVBORw0KGgo=", "https://example.com/a.png", "ftp://x", "x", ""])

# ---- OpenAI chat ---------------------------------------------------------------------------------

text_part = st.fixed_dictionaries({"type": st.just("text"), "text": texts})
openai_part = weighted(text_part, st.one_of(
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": images})}),
    st.fixed_dictionaries({"type": st.sampled_from(["refusal", "input_audio"]), "refusal": texts})), 4)
tool_call = st.fixed_dictionaries(
    {"id": field(st.just("call_1")), "type": field(st.just("function")),
     "function": field(st.fixed_dictionaries({"name": field(st.just("f")),
                                              "arguments": field(st.sampled_from(['{"q": 1}', "{", "[]"]))}))})
openai_plain_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user"] * 12 + ["system", "developer", "assistant", "tool", "robot"]),
     "content": field(texts | st.lists(openai_part, max_size=3))},
    optional={"name": field(st.just("n")), "tool_calls": field(st.lists(tool_call, max_size=2)),
              "tool_call_id": field(st.just("call_1"))})
openai_message = weighted(openai_plain_message, st.one_of(
    st.fixed_dictionaries({"role": st.just("assistant"), "tool_calls": st.lists(tool_call, min_size=1, max_size=2)}),
    st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": st.just("call_1"), "content": texts})), 3)
openai_tool = st.fixed_dictionaries(
    {"type": field(st.just("function")),
     "function": field(st.fixed_dictionaries({"name": field(st.just("f"))},
                                             optional={"parameters": field(st.just({"type": "object"})),
                                                       "description": field(texts)}))})
openai_body = st.fixed_dictionaries(
    {"model": field(st.sampled_from(MODELS)), "messages": field(st.lists(openai_message, min_size=1, max_size=3))},
    optional={"stream": field(st.booleans()), "max_tokens": field(st.integers(1, 50)),
              "max_completion_tokens": field(st.integers(1, 50)), "temperature": field(st.floats(0, 2)),
              "top_p": field(st.floats(0, 1)), "n": field(st.integers(1, 3)), "stop": field(texts),
              "seed": field(st.integers()), "user": field(texts), "metadata": field(st.just({"a": "b"})),
              "tools": field(st.lists(openai_tool, max_size=2)),
              "tool_choice": field(st.sampled_from(["auto", "none", "required"])
                                   | st.just({"type": "function", "function": {"name": "f"}})),
              "parallel_tool_calls": field(st.booleans()),
              "response_format": field(st.sampled_from([{"type": "json_object"}, {"type": "text"},
                                                        {"type": "json_schema",
                                                         "json_schema": {"name": "s", "schema": {"type": "object"}}}])),
              "stream_options": field(st.just({"include_usage": True}))})

# ---- Anthropic messages --------------------------------------------------------------------------

source = st.one_of(
    st.fixed_dictionaries({"type": st.just("base64"), "media_type": st.just("image/png"),
                           "data": st.just("iVBORw0KGgo=")}),
    st.fixed_dictionaries({"type": st.just("url"), "url": images}),
    st.fixed_dictionaries({"type": st.just("file"), "file_id": st.just("file_1")}))
anthropic_block = weighted(text_part, st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["image", "document"]), "source": source}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": st.just("toolu_1"), "name": st.just("f"),
                           "input": field(st.just({"q": 1}))}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": st.just("toolu_1"),
                           "content": texts | st.lists(text_part, max_size=2)}),
    st.fixed_dictionaries({"type": st.sampled_from(["thinking", "video"]), "thinking": texts, "signature": texts})), 3)
anthropic_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user"] * 12 + ["assistant", "assistant", "system"]),
     "content": field(texts | st.lists(anthropic_block, max_size=3))})
anthropic_tool = st.fixed_dictionaries(
    {"name": field(st.just("f"))},
    optional={"type": field(st.sampled_from(["custom", "web_search_20250305"])), "description": field(texts),
              "input_schema": field(st.just({"type": "object"}))})
anthropic_body = st.fixed_dictionaries(
    {"model": field(st.sampled_from(MODELS)), "max_tokens": field(st.integers(1, 50)),
     "messages": field(st.lists(anthropic_message, min_size=1, max_size=3))},
    optional={"stream": field(st.booleans()), "system": field(texts | st.lists(
        st.fixed_dictionaries({"type": field(st.just("text")), "text": field(texts)}), max_size=2)),
              "temperature": field(st.floats(0, 1)), "top_p": field(st.floats(0, 1)), "top_k": field(st.integers(0, 5)),
              "stop_sequences": field(st.lists(texts, max_size=2)),
              "metadata": field(st.fixed_dictionaries({"user_id": field(texts)})),
              "tools": field(st.lists(anthropic_tool, max_size=2)),
              "tool_choice": field(st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "f"},
                                                    {"type": "none"}])),
              "thinking": field(st.just({"type": "enabled", "budget_tokens": 1024}))})

# ---- raw bodies and headers ------------------------------------------------------------------------


def encoded(body_strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    as_json = mutated(body_strategy).map(lambda b: json.dumps(b).encode())
    garbage = st.one_of(st.binary(max_size=40), st.just(b'{"model": "demo/echo", "messages": "\\ud800"}'), json_values.map(lambda v: json.dumps(v).encode()),
                        st.just(b'{"model": "demo/echo", "messages": [{"role": "user", "content": "x"}]'),
                        st.just(b'{"model": "demo/echo", "messages": [{"role": "user", "content": "x"}], "x": NaN}'))
    return weighted(as_json, garbage, 8)


# header values: any bytes a client can put on the wire (no line breaks or NUL), often not UTF-8
header_bytes = st.binary(max_size=12).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7f).strip()) | st.sampled_from(
    [b"0", b"1", b"2", b"30", b"-1", "\u00b2".encode(), "\u0661".encode(), b"9" * 30, b"9" * 5000,
     b"0.5", b"nan", b"no-cache", b"no-store", b"\xff\xfe", "caf\u00e9".encode()])
HEADER_NAMES = ["x-llmgw-cache-namespace", "x-llmgw-cache-ttl", "x-llmgw-cache-threshold", "x-llmgw-anything",
                "cache-control", "x-stainless-retry-count", "x-stainless-timeout", "x-stainless-lang",
                "idempotency-key", "x-api-key", "anthropic-version", "anthropic-beta", "openai-beta"]
good_headers = st.fixed_dictionaries({}, optional={
    "x-llmgw-cache-namespace": st.sampled_from([b"a", b"team-1", "caf\u00e9".encode()]),
    "x-llmgw-cache-ttl": st.sampled_from([b"0", b"60"]), "x-llmgw-cache-threshold": st.sampled_from([b"0.9", b"1"]),
    "cache-control": st.sampled_from([b"no-cache", b"no-store", b"no-cache, no-store"]),
    "x-stainless-retry-count": st.sampled_from([b"0", b"1", b"2"]), "x-stainless-lang": st.just(b"python"),
    "idempotency-key": st.uuids().map(lambda u: str(u).encode()), "anthropic-version": st.just(b"2023-06-01")})
headers = weighted(good_headers, st.dictionaries(st.sampled_from(HEADER_NAMES), header_bytes, min_size=1, max_size=3), 5)


# ---- the property --------------------------------------------------------------------------------

@pytest.fixture
def fuzzed(daemon_factory, upstream):
    d = daemon_factory(upstream_config(upstream, '\n[cache]\nmode = "exact"\n'), UPSTREAM_ENV)
    client = httpx.Client(base_url=d.url, timeout=30)
    conn = d.db()
    yield d, client, conn
    conn.close()
    client.close()


@pytest.fixture
def governed(daemon_factory, upstream):
    """A key under a soft budget with rate limits and clamping: the cost bound, the reservation and
    the rate limiter see every fuzzed body too."""
    from test_governance_gateway import budget

    d = daemon_factory(upstream_config(upstream, '\n[cache]\nmode = "exact"\n'), UPSTREAM_ENV)
    key = d.mint(name="fuzz", rpm=100000, tpm=10**12, clamp=True)
    conn = d.db()
    kid = conn.execute("SELECT id FROM keys WHERE name = 'fuzz'").fetchone()[0]
    budget(d, "key", kid, 10**15, hard=0)
    d.synced()
    d.key = key
    client = httpx.Client(base_url=d.url, timeout=30)
    yield d, client, conn
    conn.close()
    client.close()


def check(fuzzed: Any, path: str, body: bytes, extra: dict[str, bytes], dialect: str) -> None:
    d, client, conn = fuzzed
    hdrs: dict[str, Any] = {"content-type": "application/json"}
    if "x-api-key" not in extra:
        hdrs["authorization"] = f"Bearer {d.key}"
    hdrs.update(extra)
    (before,) = conn.execute("SELECT count(*) FROM ledger").fetchone()
    r = client.post(path, content=body, headers=hdrs)
    text = r.text
    assert r.status_code < 500, f"{r.status_code} for {body[:300]!r} with {extra!r}: {text[:500]}"
    rid = r.headers.get("x-request-id")
    assert rid and rid.startswith("req_"), r.headers
    if r.status_code >= 400:
        err = r.json()
        if dialect == "anthropic":
            assert err["type"] == "error" and isinstance(err["error"]["message"], str), err
        else:
            assert isinstance(err["error"]["message"], str), err
    (after,) = conn.execute("SELECT count(*) FROM ledger").fetchone()
    assert after == before + 1, f"{after - before} ledger rows for one request ({r.status_code}: {text[:200]})"
    assert conn.execute("SELECT 1 FROM ledger WHERE request_id = ?", (rid,)).fetchone(), rid


@SETTINGS
@given(body=encoded(openai_body), extra=headers)
def test_fuzz_chat_completions(fuzzed, body, extra):
    check(fuzzed, "/v1/chat/completions", body, extra, "openai")


@SETTINGS
@given(body=encoded(anthropic_body), extra=headers)
def test_fuzz_messages(fuzzed, body, extra):
    check(fuzzed, "/v1/messages", body, extra, "anthropic")


either_dialect = (encoded(openai_body).map(lambda b: ("/v1/chat/completions", "openai", b))
                  | encoded(anthropic_body).map(lambda b: ("/v1/messages", "anthropic", b)))


@SETTINGS
@given(request=either_dialect, extra=headers)
def test_fuzz_under_a_budget_and_rate_limits(governed, request, extra):
    path, dialect, body = request
    check(governed, path, body, extra, dialect)


embeddings_body = st.fixed_dictionaries(
    {"model": field(st.sampled_from(["demo/embed", "openai/text-embedding-3-small", "anthropic/claude-sonnet-4-5"])),
     "input": field(texts | st.lists(texts, min_size=1, max_size=3) | st.lists(st.integers(0, 50000), min_size=1))},
    optional={"encoding_format": field(st.sampled_from(["float", "base64"])), "dimensions": field(st.integers(1, 8)),
              "user": field(texts)})


@SETTINGS
@given(body=encoded(embeddings_body), extra=headers)
def test_fuzz_embeddings(fuzzed, body, extra):
    check(fuzzed, "/v1/embeddings", body, extra, "openai")
