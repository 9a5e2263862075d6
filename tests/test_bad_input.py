"""Bad input: every case gets a typed 4xx in the right envelope and exactly one ledger row, never a 500."""

from __future__ import annotations

import httpx
import openai
import pytest

CASES = [
    # (description, raw body, expected status, expected code, expected param)
    ("invalid json", b'{"model": "demo/echo",', 400, "invalid_json", None),
    ("empty body", b"", 400, "invalid_json", None),
    ("not an object", b"[1, 2]", 400, "invalid_type", None),
    ("missing model", b'{"messages": [{"role": "user", "content": "x"}]}', 400, "missing_parameter", "model"),
    ("model wrong type", b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', 400, "invalid_type", "model"),
    ("missing messages", b'{"model": "demo/echo"}', 400, "missing_parameter", "messages"),
    ("messages wrong type", b'{"model": "demo/echo", "messages": "hi"}', 400, "invalid_type", "messages"),
    ("empty messages", b'{"model": "demo/echo", "messages": []}', 400, "invalid_value", "messages"),
    ("bad role", b'{"model": "demo/echo", "messages": [{"role": "robot", "content": "x"}]}', 400, "invalid_value",
     "messages[0].role"),
    ("unsupported part", b'{"model": "demo/echo", "messages": [{"role": "user", "content": [{"type": "video_url"}]}]}',
     400, "unsupported_content_part", "messages[0].content[0].type"),
    ("bad image url", b'{"model": "demo/echo", "messages": [{"role": "user", "content": [{"type": "image_url", '
     b'"image_url": {"url": "ftp://x"}}]}]}', 400, "invalid_value", "messages[0].content[0].image_url.url"),
    ("n zero", b'{"model": "demo/echo", "n": 0, "messages": [{"role": "user", "content": "x"}]}', 400,
     "invalid_value", "n"),
    ("n bool", b'{"model": "demo/echo", "n": true, "messages": [{"role": "user", "content": "x"}]}', 400,
     "invalid_type", "n"),
    ("temperature high", b'{"model": "demo/echo", "temperature": 2.5, "messages": [{"role": "user", "content": "x"}]}',
     400, "invalid_value", "temperature"),
    ("temperature string", b'{"model": "demo/echo", "temperature": "hot", "messages": [{"role": "user", "content": "x"}]}',
     400, "invalid_type", "temperature"),
    ("stream not bool", b'{"model": "demo/echo", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}',
     400, "invalid_type", "stream"),
    ("unknown provider", b'{"model": "nope/gpt", "messages": [{"role": "user", "content": "x"}]}', 404,
     "model_not_found", "model"),
    ("unknown model", b'{"model": "demo/gpt-9", "messages": [{"role": "user", "content": "x"}]}', 404,
     "model_not_found", "model"),
    ("no provider prefix", b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}', 404,
     "model_not_found", "model"),
]


@pytest.fixture
def http(gw):
    with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {gw.key}",
                                                "content-type": "application/json"}) as c:
        yield c


@pytest.mark.parametrize("desc,body,status,code,param", CASES, ids=[c[0] for c in CASES])
def test_bad_chat_input(gw, http, desc, body, status, code, param):
    before = len(gw.ledger())
    r = http.post("/v1/chat/completions", content=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"
    assert r.headers["x-request-id"].startswith("req_")
    rows = gw.ledger()
    assert len(rows) == before + 1
    assert rows[-1]["status"] == status and rows[-1]["error_code"] == code
    assert rows[-1]["request_id"] == r.headers["x-request-id"]
    assert rows[-1]["key_id"] is not None and rows[-1]["cost_nanos"] == 0


def test_body_over_limit_is_413(daemon_factory):
    d = daemon_factory("[server]\nmax_body_bytes = 2000\n")
    with httpx.Client(base_url=d.url, headers={"Authorization": f"Bearer {d.key}"}) as c:
        big = '{"model": "demo/echo", "messages": [{"role": "user", "content": "' + "x" * 5000 + '"}]}'
        r = c.post("/v1/chat/completions", content=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert d.ledger()[-1]["status"] == 413


def test_anthropic_bad_input_envelope(gw, http):
    r = http.post("/v1/messages", content=b'{"model": "demo/echo", "max_tokens": 5, "messages": '
                                          b'[{"role": "system", "content": "x"}]}')
    assert r.status_code == 400
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "messages[0].role" in body["error"]["message"]


@pytest.mark.parametrize("auth,code", [(None, "missing_api_key"), ("Bearer sk-llmgw-nope", "invalid_api_key")])
def test_auth_errors(gw, auth, code):
    headers = {"Authorization": auth} if auth else {}
    r = httpx.post(gw.url + "/v1/chat/completions", headers=headers,
                   json={"model": "demo/echo", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == code
    row = gw.ledger()[-1]
    assert row["status"] == 401 and row["key_id"] is None


def test_sdk_sees_typed_errors(gw):
    with openai.OpenAI(base_url=gw.openai_base, api_key=gw.key, max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="demo/echo", messages=[{"role": "user", "content": "x"}], temperature=3)
        assert e.value.code == "invalid_value" and e.value.param == "temperature"
        with pytest.raises(openai.NotFoundError) as e2:
            c.chat.completions.create(model="acme/x", messages=[{"role": "user", "content": "x"}])
        assert e2.value.code == "model_not_found"


def test_unknown_route_and_method(gw):
    r = httpx.get(gw.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(gw.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


# ---- the fuzzer's 500s (issue 13.7): each is a typed 400 with one ledger row ----------------------

def _deep(depth: int) -> object:
    v: object = "x"
    for _ in range(depth):
        v = [v]
    return v


USER = [{"role": "user", "content": "hi"}]
SHAPES = [
    # (description, path, body, expected param or None)
    ("role array", "/v1/chat/completions", {"model": "openai/gpt-4o-mini", "messages": [{"role": ["user"], "content": "x"}]},
     "messages[0].role"),
    ("role object", "/v1/chat/completions", {"model": "openai/gpt-4o-mini", "messages": [{"role": {"a": 1}, "content": "x"}]},
     "messages[0].role"),
    ("anthropic role array", "/v1/messages", {"model": "anthropic/claude-sonnet-4-5", "max_tokens": 5,
                                              "messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
    ("part type array", "/v1/chat/completions", {"model": "openai/gpt-4o-mini", "messages": [
        {"role": "user", "content": [{"type": ["text"], "text": "x"}]}]}, "messages[0].content[0].type"),
    ("block type object", "/v1/messages", {"model": "anthropic/claude-sonnet-4-5", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": {"t": "text"}, "text": "x"}]}]}, "messages[0].content[0].type"),
    ("image source string to an OpenAI model", "/v1/messages", {"model": "openai/gpt-4o-mini", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "image", "source": "x"}]}]}, "messages[0].content[0].source"),
    ("tool call function string", "/v1/chat/completions", {"model": "anthropic/claude-sonnet-4-5", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": "f"}]}, *USER]},
     "messages[0].tool_calls[0].function"),
    ("anthropic tool_choice string", "/v1/messages", {"model": "openai/gpt-4o-mini", "max_tokens": 5, "messages": USER,
                                                      "tools": [{"name": "f"}], "tool_choice": "auto"}, "tool_choice"),
    ("anthropic metadata string", "/v1/messages", {"model": "openai/gpt-4o-mini", "max_tokens": 5, "messages": USER,
                                                   "metadata": "u"}, "metadata"),
    ("json_schema not an object", "/v1/chat/completions", {"model": "anthropic/claude-sonnet-4-5", "messages": USER,
                                                           "response_format": {"type": "json_schema", "json_schema": "s"}},
     "response_format.json_schema"),
]


@pytest.mark.parametrize("desc,path,body,param", SHAPES, ids=[c[0] for c in SHAPES])
def test_unhashable_and_misshapen_fields_are_typed_400s(gw, http, desc, path, body, param):
    before = len(gw.ledger())
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    if path == "/v1/messages":
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert r.json()["error"]["message"].startswith(param)
    else:
        assert r.json()["error"]["param"] == param
    rows = gw.ledger()
    assert len(rows) == before + 1 and rows[-1]["status"] == 400


DEEP = [
    ("chat metadata", "/v1/chat/completions", {"model": "openai/gpt-4o-mini", "messages": USER, "metadata": _deep(300)}),
    ("tool parameters just past orjson", "/v1/chat/completions",
     {"model": "openai/gpt-4o-mini", "messages": USER,
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": _deep(250)}}}]}),
    ("chat to anthropic", "/v1/chat/completions", {"model": "anthropic/claude-sonnet-4-5", "messages": USER,
                                                   "extra": _deep(260)}),
    ("messages to openai", "/v1/messages", {"model": "openai/gpt-4o-mini", "max_tokens": 5, "messages": USER,
                                            "x": _deep(300)}),
    ("messages tool input", "/v1/messages", {"model": "anthropic/claude-sonnet-4-5", "max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": _deep(200)}}]},
        *USER]}),
]


@pytest.mark.parametrize("desc,path,body", DEEP, ids=[c[0] for c in DEEP])
def test_deep_nesting_is_a_typed_400_before_the_cache_the_bound_and_the_providers(daemon_factory, upstream, desc,
                                                                                  path, body):
    from conftest import UPSTREAM_ENV, upstream_config
    from test_governance_gateway import budget

    d = daemon_factory(upstream_config(upstream, '[cache]\nmode = "exact"\n'), UPSTREAM_ENV)
    key = d.mint(name="deep")
    conn = d.db()
    kid = conn.execute("SELECT id FROM keys WHERE name = 'deep'").fetchone()[0]
    conn.close()
    budget(d, "key", kid, 10**12, hard=0)  # a soft budget: the cost bound walks the body
    d.synced()
    r = httpx.post(d.url + path, json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 400, r.text
    text = r.text
    assert "nested deeper than 128 levels" in text
    assert upstream.requests == []
    assert d.ledger()[-1]["status"] == 400


def test_nesting_up_to_the_limit_passes(gw, http, upstream):
    def body(depth):  # body, tools, tool, function, parameters: 5 levels, then ``depth`` arrays
        return {"model": "anthropic/claude-sonnet-4-5", "messages": USER,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": _deep(depth)}}}]}

    r = http.post("/v1/chat/completions", json=body(123))  # 128 levels, translated for Anthropic
    assert r.status_code == 200, r.text
    assert upstream.requests[-1]["json"]["tools"][0]["input_schema"] == {"a": _deep(123)}
    r = http.post("/v1/chat/completions", json=body(124))
    assert r.status_code == 400 and r.json()["error"]["code"] == "nesting_too_deep"


@pytest.mark.parametrize("name,value,param", [
    ("x-api-key", b"\xff\xfe", "x-api-key"),
    ("x-llmgw-cache-namespace", b"\xff\xfe", "x-llmgw-cache-namespace"),
    ("x-llmgw-cache-ttl", "\u00b2".encode(), "x-llmgw-cache-ttl"),
    ("x-llmgw-cache-ttl", b"9" * 5000, "x-llmgw-cache-ttl"),
    ("idempotency-key", b"k\xc3", "idempotency-key"),
    ("anthropic-beta", "\u20ac-beta".encode(), "anthropic-beta"),  # UTF-8, but forwarded headers are ASCII
])
def test_undecodable_and_non_ascii_headers_are_typed_400s(daemon_factory, upstream, name, value, param):
    from conftest import UPSTREAM_ENV, upstream_config

    d = daemon_factory(upstream_config(upstream, '[cache]\nmode = "exact"\n'), UPSTREAM_ENV)
    headers = {name: value} if name == "x-api-key" else {"Authorization": f"Bearer {d.key}", name: value}
    r = httpx.post(d.url + "/v1/chat/completions", headers=headers,
                   json={"model": "openai/gpt-4o-mini", "messages": USER})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert d.ledger()[-1]["status"] == 400
    assert upstream.requests == []


def test_non_utf8_metrics_token_is_a_typed_400(gw):
    r = httpx.get(gw.url + "/metrics", headers={"authorization": b"Bearer \xff"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "authorization"


def test_a_slow_body_gets_a_408_and_the_connection_is_closed(daemon_factory):
    import socket

    d = daemon_factory("[server]\nbody_timeout = 0.3\n")
    host, port = d.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"authorization: Bearer " + d.key.encode() + b"\r\ncontent-length: 100\r\n\r\n{\"model\":")
        got = b""
        while chunk := s.recv(65536):  # the gateway answers, then closes: recv returns b""
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), got
    assert b'"code":"body_timeout"' in body
    row = d.ledger()[-1]
    assert row["status"] == 408 and row["error_code"] == "body_timeout"


def test_a_slow_admin_body_gets_a_408_too(daemon_factory):
    import socket

    d = daemon_factory("[server]\nbody_timeout = 0.3\n", {"LLMGW_ADMIN_TOKEN": "admin-token-0123456789"})
    host, port = d.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /admin/customers HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"authorization: Bearer admin-token-0123456789\r\ncontent-length: 100\r\n\r\n{\"id\":")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 408") and b'"code":"body_timeout"' in got, got
