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
