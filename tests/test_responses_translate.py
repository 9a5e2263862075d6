"""The Responses API translation, pure functions: request to chat, chat answer and chat stream to
Responses, the cost-bound view, stored-response pinning."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest

from llmgw.errors import InvalidRequest, NotFound
from llmgw.providers import responses as R


def test_to_chat_maps_every_item_kind():
    out = R.to_chat({
        "model": "m", "instructions": "be brief", "max_output_tokens": 50, "temperature": 0.3, "user": "u1",
        "input": [
            {"role": "developer", "content": "dev note"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/cat.png", "detail": "low"},
                {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
                  {"type": "web_search", "user_location": {"type": "approximate", "city": "Oslo"}}],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}},
        "reasoning": {"effort": "low", "summary": "auto"}, "store": True, "include": ["x"],
    }, provider="p")
    assert out["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": "dev note"},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}}]},
        {"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]},
    ]
    assert out["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"},
                                                              "strict": True}}]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert out["web_search_options"] == {"user_location": {"type": "approximate", "approximate": {"city": "Oslo"}}}
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"},
                                                                             "strict": True}}
    assert out["reasoning_effort"] == "low" and out["max_tokens"] == 50 and out["user"] == "u1"
    assert "store" not in out and "include" not in out


@pytest.mark.parametrize(("body", "param"), [
    ({"previous_response_id": "resp_1", "input": "x"}, "previous_response_id"),
    ({"background": True, "input": "x"}, "background"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}, {"role": "user", "content": "x"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
     "input[0].content[0].image_url"),
    ({"input": "x", "tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type"),
    ({"input": [{"type": "computer_call", "call_id": "c"}]}, "input[0].type"),
])
def test_to_chat_refuses_what_has_no_counterpart(body, param):
    with pytest.raises(InvalidRequest) as e:
        R.to_chat({"model": "m", **body}, provider="anthropic")
    assert e.value.param == param
    assert "anthropic" in e.value.message or param.endswith("image_url")


def test_chat_answer_to_response():
    chat = {"choices": [{"message": {"content": "hi", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}}
    r = R.chat_to_response(chat, {"model": "a/b", "max_output_tokens": 3}, model="a/b", created=7)
    assert r["status"] == "incomplete" and r["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [o["type"] for o in r["output"]] == ["message", "function_call"]
    assert r["output"][0]["content"][0] == {"type": "output_text", "text": "hi", "annotations": [], "logprobs": []}
    assert r["output"][1]["call_id"] == "c1" and r["output"][1]["status"] == "completed"
    assert r["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 3,
                          "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13}
    assert r["store"] is False and r["created_at"] == 7


def _chunk(delta=None, finish=None, usage=None):
    c = {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}] if delta is not None or finish
         else []}
    if usage:
        c["usage"] = usage
    return c


def test_chat_stream_to_response_events():
    conv = R.ChatStreamToResponses({"model": "m"}, "m", resp_id="resp_x", created=1)
    events = []
    for c in [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hel"}), _chunk({"content": "lo"}),
              _chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]}),
              _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]}),
              _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
              _chunk(finish="tool_calls"), _chunk(usage={"prompt_tokens": 5, "completion_tokens": 2})]:
        events += conv.feed(c)
    events += conv.finish()
    assert conv.finish() == []
    types = [t for t, _ in events]
    assert types == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    final = events[-1][1]["response"]
    assert final["id"] == "resp_x" and final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["output"][1]["arguments"] == "{\"a\":1}" and final["output"][1]["call_id"] == "c1"
    assert final["usage"]["input_tokens"] == 5 and final["usage"]["output_tokens"] == 2
    assert events[0][1]["response"]["output"] == [] and events[0][1]["response"]["status"] == "in_progress"


def test_replay_of_a_stored_response():
    doc = R.chat_to_response({"choices": [{"message": {"content": "cached"}, "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 1, "completion_tokens": 1}}, {"model": "m"}, model="m")
    events, terminal = R.replay(doc)
    assert b"event: response.output_text.delta" in events and b'"delta":"cached"' in events
    assert terminal.startswith(b"event: response.completed\n")
    assert orjson.loads(terminal.split(b"data: ", 1)[1])["response"] == doc


def test_bound_view_keeps_every_billed_byte():
    body = {"model": "m", "input": [{"type": "reasoning", "encrypted_content": "E" * 500},
                                    {"role": "user", "content": "hi"}],
            "tools": [{"type": "web_search"}], "max_output_tokens": 9}
    view = R.bound_view(body)
    assert view["max_tokens"] == 9 and view["tools"] == body["tools"]
    assert "E" * 500 in orjson.dumps(view["messages"]).decode()  # passed through and billed by OpenAI
    assert R.unbounded({**body, "previous_response_id": "r"}) == ["previous_response_id", "tools[web_search]"]


def _target(name, native):
    provider = SimpleNamespace(name=name, native_responses=native)
    return SimpleNamespace(provider=provider, qualified=f"{name}/m")


def test_pinning():
    origins = R.Origins(limit=2)
    a, b = _target("openai", True), _target("anthropic", False)
    origins.remember("r1", "openai", "cust")
    assert R.pin_targets({"input": "x"}, [b, a], origins, "chain", "cust") == [b, a]
    assert R.pin_targets({"previous_response_id": "r1"}, [b, a], origins, "chain", "cust") == [a]
    with pytest.raises(NotFound):
        R.pin_targets({"previous_response_id": "r1"}, [b, a], origins, "chain", "someone else")
    with pytest.raises(InvalidRequest) as e:
        R.pin_targets({"previous_response_id": "r1"}, [b], origins, "claude", "cust")
    assert e.value.code == "stored_response_elsewhere"
    assert R.pin_targets({"conversation": "conv_1"}, [a, b], origins, "chain", "cust") == [a]  # unknown: first only
    with pytest.raises(InvalidRequest):
        R.pin_targets({"conversation": {"id": "conv_1"}}, [b, a], origins, "chain", "cust")
    origins.remember("r2", "openai", "cust")
    origins.remember("r3", "openai", "cust")
    assert origins.get("r1") is None and origins.get("r3") == ("openai", "cust")  # bounded, oldest out


def test_completions_bound_view_counts_best_of():
    from llmgw.governance.bounds import output_token_bound
    from llmgw.providers import completions

    view = completions.bound_view({"model": "m", "prompt": ["a", "b"], "n": 2, "best_of": 3, "max_tokens": 10})
    assert output_token_bound(view, inbound="openai", default_max_tokens=4096) == 30  # every best_of is billed
    view = completions.bound_view({"model": "m", "prompt": "x"})
    assert output_token_bound(view, inbound="openai", default_max_tokens=4096) == completions.DEFAULT_MAX_TOKENS
