"""OpenAI <-> Anthropic translation: every mapping, checked against the official SDK models."""

from __future__ import annotations

import json
from typing import Any

import anthropic.types as at
import pydantic
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from llmgw.errors import InvalidRequest, UpstreamError
from llmgw.providers.translate import (
    AnthropicStreamToOpenAI,
    OpenAIStreamToAnthropic,
    anthropic_request_to_openai,
    anthropic_to_openai_response,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
)
from llmgw.usage import Usage

STREAM_EVENT = pydantic.TypeAdapter(at.RawMessageStreamEvent)
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def to_anthropic(req: dict[str, Any], **kw: Any) -> dict[str, Any]:
    kw.setdefault("model", "claude-up")
    kw.setdefault("default_max_tokens", 4096)
    return openai_to_anthropic_request(req, **kw)


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


# ---- OpenAI request -> Anthropic request ------------------------------------------------------


def test_basic_request_fields():
    out = to_anthropic({
        "model": "my-alias",
        "messages": [{"role": "system", "content": "Be brief."}, user("Hi")],
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": "END",
        "stream": True,
        "user": "u-42",
        "seed": 7,
        "stream_options": {"include_usage": True},
        "frequency_penalty": 0.5,
        "presence_penalty": 0.5,
        "logprobs": False,
    })
    assert out == {
        "model": "claude-up",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": 4096,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "stream": True,
        "metadata": {"user_id": "u-42"},
    }


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, 4096),
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 200}, 200),
        ({"max_completion_tokens": 200, "max_tokens": 100}, 200),
    ],
)
def test_max_tokens(extra, expected):
    assert to_anthropic({"messages": [user("x")], **extra})["max_tokens"] == expected


def test_stop_list_and_no_optional_fields():
    out = to_anthropic({"messages": [user("x")], "stop": ["a", "b"]})
    assert out["stop_sequences"] == ["a", "b"]
    for key in ("system", "temperature", "top_p", "stream", "metadata", "tools", "tool_choice"):
        assert key not in out


def test_system_and_developer_strings_join_into_one_string():
    out = to_anthropic({"messages": [
        {"role": "system", "content": "One."},
        {"role": "developer", "content": "Two."},
        user("x"),
    ]})
    assert out["system"] == "One.\n\nTwo."
    assert [m["role"] for m in out["messages"]] == ["user"]


def test_system_parts_give_text_blocks():
    out = to_anthropic({"messages": [
        {"role": "system", "content": "One."},
        {"role": "developer", "content": [{"type": "text", "text": "Two."}, {"type": "text", "text": "Three."}]},
        user("x"),
    ]})
    assert out["system"] == [
        {"type": "text", "text": "One."},
        {"type": "text", "text": "Two."},
        {"type": "text", "text": "Three."},
    ]


def test_system_part_of_other_type_is_rejected():
    with pytest.raises(InvalidRequest) as e:
        to_anthropic({"messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            user("x"),
        ]})
    assert "image_url" in e.value.message
    assert e.value.param == "messages[0].content[0]"


def test_images_base64_and_url():
    out = to_anthropic({"messages": [user([
        {"type": "text", "text": "Compare these"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ])]})
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "Compare these"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "data:image/png,notbase64", "data:;base64,AAAA"])
def test_bad_image_urls(url):
    with pytest.raises(InvalidRequest) as e:
        to_anthropic({"messages": [user([{"type": "image_url", "image_url": {"url": url}}])]})
    assert e.value.param == "messages[0].content[0]"
    assert e.value.status == 400


@pytest.mark.parametrize("ptype", ["input_audio", "refusal"])
def test_unsupported_part_type_is_named(ptype):
    with pytest.raises(InvalidRequest) as e:
        to_anthropic({"messages": [user("hi"), {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": ptype, ptype: {}},
        ]}]})
    assert ptype in e.value.message
    assert e.value.param == "messages[1].content[1]"


def test_n_greater_than_one_is_rejected():
    with pytest.raises(InvalidRequest) as e:
        to_anthropic({"messages": [user("x")], "n": 2})
    assert e.value.param == "n"
    assert e.value.openai_body()["error"]["type"] == "invalid_request_error"
    assert "n" not in to_anthropic({"messages": [user("x")], "n": 1})


@pytest.mark.parametrize(
    "bad",
    [
        {"messages": []},
        {"messages": [{"role": "function", "name": "f", "content": "x"}]},
        {"messages": [user("x")], "functions": [{"name": "f"}]},
    ],
)
def test_untranslatable_requests(bad):
    with pytest.raises(InvalidRequest):
        to_anthropic(bad)


def test_consecutive_same_role_messages_merge_and_empty_text_is_dropped():
    out = to_anthropic({"messages": [
        user("a"),
        user([{"type": "text", "text": "b"}, {"type": "text", "text": ""}]),
        {"role": "assistant", "content": "c"},
        {"role": "assistant", "content": ""},
        user(""),
        user("d"),
    ]})
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
        {"role": "user", "content": [{"type": "text", "text": "d"}]},
    ]


def tool_conversation() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are a weather bot."},
        user("Weather in Paris and Oslo?"),
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "3C snow"}]},
        user("And tomorrow?"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_3", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        ]},
        {"role": "tool", "tool_call_id": "call_3", "content": "unknown"},
    ]


def test_multi_turn_tool_conversation():
    out = to_anthropic({"messages": tool_conversation(), "tools": [WEATHER_TOOL]})
    assert out["system"] == "You are a weather bot."
    msgs = out["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    # tool results first, in one user turn, then the user's text
    assert msgs[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C sunny"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "3C snow"}]},
        {"type": "text", "text": "And tomorrow?"},
    ]
    assert msgs[3]["content"] == [{"type": "tool_use", "id": "call_3", "name": "get_weather", "input": {}}]
    assert msgs[4]["content"] == [{"type": "tool_result", "tool_use_id": "call_3", "content": "unknown"}]
    assert out["tools"] == [{
        "name": "get_weather",
        "description": "Current weather for a city",
        "input_schema": WEATHER_TOOL["function"]["parameters"],
    }]


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]"])
def test_bad_tool_call_arguments(arguments):
    with pytest.raises(InvalidRequest) as e:
        to_anthropic({"messages": [user("x"), {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}},
        ]}]})
    assert e.value.param == "messages[1].tool_calls[0].function.arguments"


def test_tool_message_without_id_is_rejected():
    with pytest.raises(InvalidRequest) as e:
        to_anthropic({"messages": [user("x"), {"role": "tool", "content": "r"}]})
    assert e.value.param == "messages[1].tool_call_id"


def test_tool_without_parameters_gets_empty_schema():
    out = to_anthropic({"messages": [user("x")], "tools": [{"type": "function", "function": {"name": "now"}}]})
    assert out["tools"] == [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]


def test_non_function_tool_is_rejected():
    with pytest.raises(InvalidRequest) as e:
        to_anthropic({"messages": [user("x")], "tools": [{"type": "custom", "custom": {"name": "x"}}]})
    assert e.value.param == "tools[0]"


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ({"type": "function", "function": {"name": "get_weather"}}, False,
         {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        (None, True, None),
        (None, None, None),
    ],
)
def test_tool_choice(choice, parallel, expected):
    req: dict[str, Any] = {"messages": [user("x")], "tools": [WEATHER_TOOL]}
    if choice is not None:
        req["tool_choice"] = choice
    if parallel is not None:
        req["parallel_tool_calls"] = parallel
    out = to_anthropic(req)
    assert out.get("tool_choice") == expected


def test_unknown_tool_choice_is_rejected():
    with pytest.raises(InvalidRequest) as e:
        to_anthropic({"messages": [user("x")], "tools": [WEATHER_TOOL],
                      "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}})
    assert e.value.param == "tool_choice"


def test_response_format_text_is_ignored():
    out = to_anthropic({"messages": [user("x")], "response_format": {"type": "text"}})
    assert "system" not in out


def test_response_format_json_object_appends_to_system():
    out = to_anthropic({"messages": [{"role": "system", "content": "Be terse."}, user("x")],
                        "response_format": {"type": "json_object"}})
    first, _, instruction = out["system"].partition("\n\n")
    assert first == "Be terse."
    assert "single JSON object" in instruction


def test_response_format_json_schema_is_native_structured_output():
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    out = to_anthropic({"messages": [user("x")],
                        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}})
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "system" not in out  # a guarantee, not a prompt


@pytest.mark.parametrize(("model", "native"), [("claude-haiku-4-5-20251001", True), ("claude-sonnet-4-5", True),
                                             ("claude-opus-4-1-20250805", True), ("claude-3-5-haiku-latest", False),
                                             ("claude-3-7-sonnet-20250219", False), ("claude-sonnet-4-20250514", False),
                                             ("claude-opus-4-0", False)])
def test_json_schema_on_claude_without_structured_outputs_is_an_instruction(model, native):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    out = to_anthropic({"messages": [user("x")],
                        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}},
                       model=model)
    if native:
        assert out["output_config"]["format"]["schema"] == schema and "system" not in out
    else:
        assert "output_config" not in out and "single JSON object" in out["system"]
        assert json.loads(out["system"].split("\n", 1)[1]) == schema


@pytest.mark.parametrize(("effort", "expected"), [("minimal", "low"), ("low", "low"), ("high", "high"),
                                                  ("xhigh", "xhigh")])
def test_reasoning_effort_becomes_anthropic_effort(effort, expected):
    out = to_anthropic({"messages": [user("x")], "reasoning_effort": effort})
    assert out["output_config"] == {"effort": expected}
    assert "output_config" not in to_anthropic({"messages": [user("x")], "reasoning_effort": "none"})
    with pytest.raises(InvalidRequest) as e:
        to_anthropic({"messages": [user("x")], "reasoning_effort": "extreme"})
    assert e.value.param == "reasoning_effort"


def test_web_search_options_become_the_web_search_tool():
    out = to_anthropic({"messages": [user("x")], "web_search_options": {
        "search_context_size": "low", "user_location": {"type": "approximate", "approximate": {"city": "Oslo"}}}})
    assert out["tools"] == [{"type": "web_search_20250305", "name": "web_search",
                             "user_location": {"type": "approximate", "city": "Oslo"}}]


def test_pdf_file_parts_become_document_blocks():
    out = to_anthropic({"messages": [user([
        {"type": "text", "text": "summarise"},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}])]})
    assert out["messages"][0]["content"][1] == {
        "type": "document", "title": "a.pdf", "source": {"type": "base64", "media_type": "application/pdf",
                                                          "data": "JVBERi0x"}}
    with pytest.raises(InvalidRequest) as e:
        to_anthropic({"messages": [user([{"type": "file", "file": {"file_id": "file-abc"}}])]})
    assert e.value.param == "messages[0].content[0].file" and "file_id" in e.value.message


def test_response_format_with_block_system_adds_a_block():
    out = to_anthropic({"messages": [{"role": "system", "content": [{"type": "text", "text": "S"}]}, user("x")],
                        "response_format": {"type": "json_object"}})
    assert out["system"][0] == {"type": "text", "text": "S"}
    assert out["system"][1]["type"] == "text"
    assert "single JSON object" in out["system"][1]["text"]


# ---- Anthropic response -> OpenAI response ----------------------------------------------------


def anthropic_message(**over: Any) -> dict[str, Any]:
    msg = {
        "id": "msg_01ABC",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    msg.update(over)
    at.Message.model_validate(msg)  # the fixture itself is a real Anthropic message
    return msg


def test_anthropic_response_text():
    out = anthropic_to_openai_response(anthropic_message(), model="my-alias", created=1700000000)
    cc = ChatCompletion.model_validate(out)
    assert cc.id == "chatcmpl-msg_01ABC"
    assert cc.created == 1700000000
    assert cc.model == "my-alias"
    assert len(cc.choices) == 1
    assert cc.choices[0].message.content == "Hello"
    assert cc.choices[0].message.tool_calls is None
    assert cc.choices[0].finish_reason == "stop"
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                            "prompt_tokens_details": {"cached_tokens": 0}}


def test_anthropic_response_default_created_is_now():
    out = anthropic_to_openai_response(anthropic_message(), model="m")
    assert isinstance(out["created"], int) and out["created"] > 1_700_000_000


def test_anthropic_response_tools_and_thinking():
    msg = anthropic_message(
        content=[
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Checking "},
            {"type": "text", "text": "both."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        stop_reason="tool_use",
    )
    cc = ChatCompletion.model_validate(anthropic_to_openai_response(msg, model="m", created=1))
    choice = cc.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking both."
    calls = choice.message.tool_calls or []
    assert [c.id for c in calls] == ["toolu_1", "toolu_2"]
    assert all(c.type == "function" for c in calls)
    arguments = [json.loads(c.model_dump()["function"]["arguments"]) for c in calls]
    assert arguments == [{"city": "Paris"}, {"city": "Oslo"}]


def test_anthropic_response_only_tool_calls_has_null_content():
    msg = anthropic_message(content=[{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                            stop_reason="tool_use")
    out = anthropic_to_openai_response(msg, model="m", created=1)
    ChatCompletion.model_validate(out)
    assert out["choices"][0]["message"]["content"] is None
    assert out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_anthropic_stop_reasons(stop_reason, finish):
    out = anthropic_to_openai_response(anthropic_message(stop_reason=stop_reason), model="m", created=1)
    assert ChatCompletion.model_validate(out).choices[0].finish_reason == finish


def test_anthropic_response_cached_usage():
    usage = {"input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 1000,
             "cache_creation_input_tokens": 300}
    out = anthropic_to_openai_response(anthropic_message(usage=usage), model="m", created=1)
    cc = ChatCompletion.model_validate(out)
    assert cc.usage is not None
    assert cc.usage.prompt_tokens == 1320  # OpenAI semantics: all input, cache reads and writes included
    assert cc.usage.completion_tokens == 7
    assert cc.usage.total_tokens == 1327
    assert cc.usage.prompt_tokens_details is not None
    assert cc.usage.prompt_tokens_details.cached_tokens == 1000
    assert out["usage"]["prompt_tokens_details"]["cache_write_tokens"] == 300
    # and back again: Anthropic's input_tokens excludes both cache kinds
    assert Usage.from_openai(out["usage"]).to_anthropic() == usage


# ---- Anthropic stream -> OpenAI stream --------------------------------------------------------


def anthropic_stream_events() -> list[dict[str, Any]]:
    """A realistic stream: thinking, text, then a tool call (its JSON in fragments)."""
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {
            "id": "msg_01S", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 400,
                      "cache_creation_input_tokens": 0},
        }},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "User wants"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "abc"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Let me "}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "check."}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {
            "type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 2,
         "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
        {"type": "content_block_delta", "index": 2,
         "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
        {"type": "content_block_stop", "index": 2},
        {"type": "content_block_start", "index": 3, "content_block": {
            "type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}}},
        {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 3},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 42}},
        {"type": "message_stop"},
    ]
    for ev in events:
        if ev["type"] != "ping":
            STREAM_EVENT.validate_python(ev)  # the fixture is made of real Anthropic events
    return events


def run_anthropic_stream(events: list[dict[str, Any]], include_usage: bool) -> tuple[AnthropicStreamToOpenAI, list]:
    conv = AnthropicStreamToOpenAI("my-alias", "chatcmpl-xyz", 1700000000, include_usage)
    chunks = [chunk for ev in events for chunk in conv.feed(ev)]
    for chunk in chunks:
        c = ChatCompletionChunk.model_validate(chunk)
        assert (c.id, c.object, c.created, c.model) == ("chatcmpl-xyz", "chat.completion.chunk", 1700000000,
                                                        "my-alias")
    return conv, chunks


def test_anthropic_stream_to_openai_chunks():
    conv, chunks = run_anthropic_stream(anthropic_stream_events(), include_usage=True)
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1:3] == [{"content": "Let me "}, {"content": "check."}]
    assert deltas[3] == {"tool_calls": [{"index": 0, "id": "toolu_01", "type": "function",
                                         "function": {"name": "get_weather", "arguments": ""}}]}
    assert deltas[4:6] == [
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    ]
    assert chunks[6]["choices"][0]["delta"]["tool_calls"][0]["index"] == 1
    assert deltas[7] == {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}
    assert deltas[8] == {}
    assert chunks[8]["choices"][0]["finish_reason"] == "tool_calls"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:8])
    final = chunks[9]
    assert final["choices"] == [] and deltas[9] is None
    assert final["usage"] == {"prompt_tokens": 425, "completion_tokens": 42, "total_tokens": 467,
                              "prompt_tokens_details": {"cached_tokens": 400}}
    assert len(chunks) == 10
    assert conv.text == "Let me check."
    assert conv.finish_reason == "tool_calls"
    assert conv.usage == Usage(prompt_tokens=425, completion_tokens=42, cached_tokens=400)


def test_anthropic_stream_reassembles_with_openai_sdk():
    _, chunks = run_anthropic_stream(anthropic_stream_events(), include_usage=True)
    state: ChatCompletionStreamState = ChatCompletionStreamState()
    for chunk in chunks:
        list(state.handle_chunk(ChatCompletionChunk.model_validate(chunk)))
    final = state.get_final_completion()
    msg = final.choices[0].message
    assert msg.content == "Let me check."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls or []] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.prompt_tokens == 425


def test_anthropic_stream_without_include_usage():
    conv, chunks = run_anthropic_stream(anthropic_stream_events(), include_usage=False)
    assert all(c["choices"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert conv.usage.completion_tokens == 42  # still tracked for the ledger


def test_anthropic_stream_message_delta_usage_merges_max():
    events = anthropic_stream_events()
    events[-2]["usage"] = {"input_tokens": 25, "cache_read_input_tokens": 400, "output_tokens": 50}
    conv, _ = run_anthropic_stream(events, include_usage=False)
    assert conv.usage == Usage(prompt_tokens=425, completion_tokens=50, cached_tokens=400)


def test_anthropic_stream_plain_text_end_turn():
    events = [e for e in anthropic_stream_events() if e.get("index") in (None, 1)]
    events[-2] = {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
                  "usage": {"output_tokens": 3}}
    conv, chunks = run_anthropic_stream(events, include_usage=False)
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Let me ", "check.", None]
    assert conv.finish_reason == "length"


def test_anthropic_stream_error_event_raises():
    conv = AnthropicStreamToOpenAI("m", "c", 1, False)
    conv.feed(anthropic_stream_events()[0])
    with pytest.raises(UpstreamError) as e:
        conv.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert e.value.message == "Overloaded"


def test_anthropic_stream_ignores_ping_and_unknown_events():
    conv = AnthropicStreamToOpenAI("m", "c", 1, False)
    assert conv.feed({"type": "message_start", "message": anthropic_message(content=[])}) != []
    assert conv.feed({"type": "ping"}) == []
    assert conv.feed({"type": "some_future_event"}) == []


# ---- Anthropic request -> OpenAI request ------------------------------------------------------


def test_anthropic_request_basic():
    out = anthropic_request_to_openai({
        "model": "claude-alias",
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                   {"type": "text", "text": "Be kind."}],
        "messages": [user("Hi")],
        "max_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.8,
        "top_k": 5,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "thinking": {"type": "disabled"},
    }, model="gpt-4o")
    assert out == {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "Be brief.\n\nBe kind."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.8,
        "stop": ["END"],
        "user": "u-1",
    }


@pytest.mark.parametrize(
    ("model", "key"),
    [("gpt-4o", "max_tokens"), ("o1-mini", "max_completion_tokens"), ("o3", "max_completion_tokens"),
     ("o4-mini", "max_completion_tokens"), ("gpt-5-nano", "max_completion_tokens"), ("llama-3", "max_tokens")],
)
def test_anthropic_request_max_tokens_key(model, key):
    out = anthropic_request_to_openai({"messages": [user("x")], "max_tokens": 10}, model=model)
    assert out[key] == 10
    other = ({"max_tokens", "max_completion_tokens"} - {key}).pop()
    assert other not in out


def test_anthropic_request_stream_asks_for_usage():
    out = anthropic_request_to_openai({"messages": [user("x")], "max_tokens": 1, "stream": True}, model="gpt-4o")
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}


def test_anthropic_request_images():
    out = anthropic_request_to_openai({"max_tokens": 1, "messages": [user([
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ])]}, model="gpt-4o")
    assert out["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]


def test_anthropic_request_tool_conversation():
    req = {
        "max_tokens": 100,
        "messages": [
            user("Weather in Paris?"),
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "need tool", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ]},
            user([
                {"type": "text", "text": "Also be quick."},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}],
                 "is_error": False},
            ]),
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_2", "name": "get_weather",
                                               "input": {"city": "Oslo"}}]},
            user([{"type": "tool_result", "tool_use_id": "toolu_2", "content": "timeout", "is_error": True}]),
        ],
        "tools": [{"name": "get_weather", "description": "Current weather for a city",
                   "input_schema": WEATHER_TOOL["function"]["parameters"]},
                  {"name": "now", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    }
    out = anthropic_request_to_openai(req, model="gpt-4o")
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "user", "content": "Also be quick."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "timeout"},
    ]
    assert out["tools"] == [WEATHER_TOOL, {"type": "function", "function": {"name": "now",
                                                                            "parameters": {"type": "object"}}}]
    assert out["tool_choice"] == "auto"
    assert out["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_anthropic_tool_choice(choice, expected):
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    out = anthropic_request_to_openai({"max_tokens": 1, "messages": [user("x")], "tools": tools,
                                       "tool_choice": choice}, model="gpt-4o")
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


@pytest.mark.parametrize(
    ("block", "named"),
    [
        ({"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}, "url"),
        ({"type": "search_result", "source": "s", "title": "t", "content": []}, "search_result"),
        ({"type": "image", "source": {"type": "file", "file_id": "f"}}, "file"),
        ({"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://x"}}]}, "image"),
    ],
)
def test_anthropic_request_untranslatable_blocks(block, named):
    with pytest.raises(InvalidRequest) as e:
        anthropic_request_to_openai({"max_tokens": 1, "messages": [user([block])]}, model="gpt-4o")
    assert named in e.value.message
    assert e.value.param and e.value.param.startswith("messages[0].content[0]")


def test_anthropic_request_server_tools_rejected():
    with pytest.raises(InvalidRequest) as e:
        anthropic_request_to_openai({"max_tokens": 1, "messages": [user("x")],
                                     "tools": [{"type": "code_execution_20250825", "name": "code_execution"}]},
                                    model="gpt-4o")
    assert "code_execution_20250825" in e.value.message
    assert e.value.param == "tools[0]"


def test_anthropic_web_search_tool_becomes_web_search_options():
    out = anthropic_request_to_openai({"max_tokens": 1, "messages": [user("x")], "tools": [
        {"type": "web_search_20250305", "name": "web_search", "user_location": {"type": "approximate",
                                                                                "country": "NO"}}]},
        model="gpt-4o-search-preview")
    assert out["web_search_options"] == {"user_location": {"type": "approximate", "approximate": {"country": "NO"}}}
    assert "tools" not in out


@pytest.mark.parametrize("field", ["output_config", "output_format"])
def test_anthropic_structured_output_becomes_response_format(field):
    strict = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    fmt = {"type": "json_schema", "schema": strict}
    req = {"max_tokens": 1, "messages": [user("x")],
           **({"output_config": {"format": fmt}} if field == "output_config" else {"output_format": fmt})}
    out = anthropic_request_to_openai(req, model="gpt-4o")
    assert out["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": strict,
                                                                             "strict": True}}
    loose = {"type": "object", "properties": {"a": {"type": "string"}}}
    out = anthropic_request_to_openai({"max_tokens": 1, "messages": [user("x")], "output_config": {
        "format": {"type": "json_schema", "schema": loose}}}, model="gpt-4o")
    assert out["response_format"]["json_schema"]["strict"] is False  # OpenAI's strict mode would refuse it


@pytest.mark.parametrize(("thinking", "effort"), [({"type": "enabled", "budget_tokens": 1024}, "low"),
                                                  ({"type": "enabled", "budget_tokens": 8000}, "medium"),
                                                  ({"type": "enabled", "budget_tokens": 32000}, "high"),
                                                  ({"type": "adaptive"}, "medium")])
def test_thinking_becomes_reasoning_effort_for_reasoning_models(thinking, effort):
    out = anthropic_request_to_openai({"max_tokens": 1, "messages": [user("x")], "thinking": thinking}, model="o3")
    assert out["reasoning_effort"] == effort
    out = anthropic_request_to_openai({"max_tokens": 1, "messages": [user("x")], "output_config": {"effort": "max"}},
                                      model="gpt-5")
    assert out["reasoning_effort"] == "xhigh"
    with pytest.raises(InvalidRequest) as e:  # no counterpart: refused, never silently dropped
        anthropic_request_to_openai({"max_tokens": 1, "messages": [user("x")], "thinking": thinking}, model="gpt-4o")
    assert e.value.param == "thinking" and "gpt-4o" in e.value.message


def test_anthropic_documents_become_file_parts():
    out = anthropic_request_to_openai({"max_tokens": 1, "messages": [user([
        {"type": "text", "text": "read"},
        {"type": "document", "title": "r.pdf", "source": {"type": "base64", "media_type": "application/pdf",
                                                          "data": "JVBERi0x"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}}])]},
        model="gpt-4o")
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "read"},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0x", "filename": "r.pdf"}},
        {"type": "text", "text": "plain words"}]


def test_request_round_trip_openai_anthropic_openai():
    original = {
        "messages": tool_conversation(),
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 256,
        "temperature": 0.5,
        "stop": ["X"],
        "user": "u-9",
        "stream": True,
    }
    there = to_anthropic(original)
    back = anthropic_request_to_openai(there, model="gpt-4o")
    assert back["tools"] == [WEATHER_TOOL]
    assert back["tool_choice"] == "required"
    assert back["parallel_tool_calls"] is False
    assert (back["max_tokens"], back["temperature"], back["stop"], back["user"]) == (256, 0.5, ["X"], "u-9")
    assert [m["role"] for m in back["messages"]] == ["system", "user", "assistant", "tool", "tool", "user",
                                                     "assistant", "tool"]
    calls = back["messages"][2]["tool_calls"]
    assert [(c["id"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("call_1", {"city": "Paris"}), ("call_2", {"city": "Oslo"})]
    assert back["messages"][3:6] == [
        {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "3C snow"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    # after one round trip the translation is a fixed point (only text-part tool results became strings)
    again = to_anthropic(back)
    assert again["messages"][2]["content"][1]["content"] == "3C snow"
    assert anthropic_request_to_openai(again, model="gpt-4o") == back
    again["messages"][2]["content"][1]["content"] = [{"type": "text", "text": "3C snow"}]
    assert again == there


# ---- OpenAI response -> Anthropic response ----------------------------------------------------


def openai_completion(message: dict[str, Any], finish_reason: str = "stop", usage: Any = None) -> dict[str, Any]:
    resp = {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "logprobs": None,
                     "finish_reason": finish_reason}],
        "usage": usage or {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
    }
    ChatCompletion.model_validate(resp)  # the fixture is a real OpenAI completion
    return resp


def test_openai_response_text():
    out = openai_to_anthropic_response(openai_completion({"content": "Hi there"}), model="claude-alias")
    msg = at.Message.model_validate(out)
    assert msg.id == "msg_chatcmpl-123"
    assert msg.model == "claude-alias"
    assert msg.role == "assistant" and msg.type == "message"
    assert out["content"] == [{"type": "text", "text": "Hi there"}]
    assert msg.stop_reason == "end_turn"
    assert msg.stop_sequence is None
    assert out["usage"] == {"input_tokens": 9, "output_tokens": 12, "cache_read_input_tokens": 0,
                            "cache_creation_input_tokens": 0}


def test_openai_response_tool_calls():
    resp = openai_completion({"content": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": ""}},
    ]}, finish_reason="tool_calls")
    out = openai_to_anthropic_response(resp, model="m")
    at.Message.model_validate(out)
    assert out["content"] == [
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_b", "name": "now", "input": {}},
    ]
    assert out["stop_reason"] == "tool_use"


def test_openai_response_text_then_tool_calls():
    resp = openai_completion({"content": "On it.", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, finish_reason="tool_calls")
    out = openai_to_anthropic_response(resp, model="m")
    assert [b["type"] for b in out["content"]] == ["text", "tool_use"]


def test_openai_response_bad_arguments_are_an_upstream_error():
    resp = openai_completion({"content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]},
        finish_reason="tool_calls")
    with pytest.raises(UpstreamError):
        openai_to_anthropic_response(resp, model="m")


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
     ("function_call", "tool_use"), ("content_filter", "refusal")],
)
def test_openai_finish_reasons(finish, stop_reason):
    out = openai_to_anthropic_response(openai_completion({"content": "x"}, finish_reason=finish), model="m")
    assert at.Message.model_validate(out).stop_reason == stop_reason


def test_openai_response_uses_only_choice_zero():
    resp = openai_completion({"content": "first"})
    resp["choices"].append({"index": 1, "message": {"role": "assistant", "content": "second"},
                            "finish_reason": "length", "logprobs": None})
    out = openai_to_anthropic_response(resp, model="m")
    assert out["content"] == [{"type": "text", "text": "first"}]
    assert out["stop_reason"] == "end_turn"


def test_openai_response_refusal_becomes_text():
    resp = openai_completion({"content": None, "refusal": "I can't help with that."},
                             finish_reason="content_filter")
    out = openai_to_anthropic_response(resp, model="m")
    assert out["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert out["stop_reason"] == "refusal"


def test_openai_response_cached_usage():
    usage = {"prompt_tokens": 2000, "completion_tokens": 50, "total_tokens": 2050,
             "prompt_tokens_details": {"cached_tokens": 1536}}
    out = openai_to_anthropic_response(openai_completion({"content": "x"}, usage=usage), model="m")
    msg = at.Message.model_validate(out)
    assert msg.usage.input_tokens == 464  # uncached part only
    assert msg.usage.cache_read_input_tokens == 1536
    assert msg.usage.cache_creation_input_tokens == 0
    assert msg.usage.output_tokens == 50
    # invariant: the Anthropic parts add up to OpenAI's prompt_tokens, and convert back losslessly
    u = msg.usage
    assert u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0) == 2000
    assert Usage.from_anthropic(out["usage"]).to_openai() == usage


def test_openai_response_without_usage():
    resp = openai_completion({"content": "x"})
    del resp["usage"]
    out = openai_to_anthropic_response(resp, model="m")
    assert at.Message.model_validate(out).usage.input_tokens == 0


# ---- OpenAI stream -> Anthropic stream --------------------------------------------------------


def openai_chunks() -> list[dict[str, Any]]:
    """A realistic stream: role, text, two tool calls (arguments in fragments), finish, usage."""
    base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-4o"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                "usage": None}

    def call(index: int, **kw: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **kw}]}

    chunks = [
        chunk({"role": "assistant", "content": "", "refusal": None}),
        chunk({"content": "Let me "}),
        chunk({"content": "check."}),
        chunk(call(0, id="call_1", type="function", function={"name": "get_weather", "arguments": ""})),
        chunk(call(0, function={"arguments": '{"city":'})),
        chunk(call(0, function={"arguments": ' "Paris"}'})),
        chunk(call(1, id="call_2", type="function", function={"name": "get_time", "arguments": "{}"})),
        chunk({}, "tool_calls"),
        {**base, "choices": [], "usage": {"prompt_tokens": 1200, "completion_tokens": 30, "total_tokens": 1230,
                                          "prompt_tokens_details": {"cached_tokens": 1024}}},
    ]
    for c in chunks:
        ChatCompletionChunk.model_validate(c)  # the fixture is made of real OpenAI chunks
    return chunks


def run_openai_stream(chunks: list[dict[str, Any]]) -> tuple[OpenAIStreamToAnthropic, list[tuple[str, dict]]]:
    conv = OpenAIStreamToAnthropic("claude-alias", "msg_abc")
    events = [ev for c in chunks for ev in conv.feed(c)] + conv.finish()
    for name, data in events:
        assert data["type"] == name
        STREAM_EVENT.validate_python(data)
    return conv, events


def test_openai_stream_to_anthropic_events():
    conv, events = run_openai_stream(openai_chunks())
    names = [n for n, _ in events]
    assert names == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop",
        "content_block_start", "content_block_delta",
        "content_block_stop",
        "message_delta", "message_stop",
    ]
    data = [d for _, d in events]
    start = data[0]["message"]
    assert (start["id"], start["model"], start["content"]) == ("msg_abc", "claude-alias", [])
    assert start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 0 and start["usage"]["output_tokens"] == 0
    assert data[1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert data[2]["delta"] == {"type": "text_delta", "text": "Let me "}
    assert data[4] == {"type": "content_block_stop", "index": 0}
    assert data[5] == {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}}
    assert [d["delta"] for d in data[6:8]] == [
        {"type": "input_json_delta", "partial_json": '{"city":'},
        {"type": "input_json_delta", "partial_json": ' "Paris"}'},
    ]
    assert all(d["index"] == 1 for d in data[6:9])
    assert data[9]["index"] == 2 and data[9]["content_block"]["id"] == "call_2"
    assert data[10] == {"type": "content_block_delta", "index": 2,
                        "delta": {"type": "input_json_delta", "partial_json": "{}"}}
    assert data[11] == {"type": "content_block_stop", "index": 2}
    assert data[12] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                        "usage": {"input_tokens": 176, "output_tokens": 30, "cache_read_input_tokens": 1024,
                                  "cache_creation_input_tokens": 0}}
    assert data[13] == {"type": "message_stop"}
    assert conv.text == "Let me check."
    assert conv.stop_reason == "tool_use"
    assert conv.usage == Usage(prompt_tokens=1200, completion_tokens=30, cached_tokens=1024)


def test_openai_stream_reassembles_into_a_message():
    _, events = run_openai_stream(openai_chunks())
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for _, d in events:
        if d["type"] == "message_start":
            message = dict(d["message"], content=[])
        elif d["type"] == "content_block_start":
            assert d["index"] == len(message["content"])
            message["content"].append(dict(d["content_block"]))
        elif d["type"] == "content_block_delta":
            block = message["content"][d["index"]]
            if d["delta"]["type"] == "text_delta":
                block["text"] += d["delta"]["text"]
            else:
                partial[d["index"]] = partial.get(d["index"], "") + d["delta"]["partial_json"]
        elif d["type"] == "message_delta":
            message.update(d["delta"])
            message["usage"] = d["usage"]
    for index, raw in partial.items():
        message["content"][index]["input"] = json.loads(raw)
    msg = at.Message.model_validate(message)
    assert msg.content[0].type == "text" and msg.content[0].text == "Let me check."
    assert [(b.name, b.input) for b in msg.content[1:] if b.type == "tool_use"] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {})]
    assert msg.stop_reason == "tool_use"


def test_openai_stream_accumulates_with_anthropic_sdk():
    streaming = pytest.importorskip("anthropic.lib.streaming._messages")
    _, events = run_openai_stream(openai_chunks())
    snapshot = None
    bufs: dict[int, bytes] = {}
    for _, d in events:
        snapshot = streaming.accumulate_event(event=STREAM_EVENT.validate_python(d), current_snapshot=snapshot,
                                              json_bufs=bufs)
    assert snapshot is not None
    assert [b.type for b in snapshot.content] == ["text", "tool_use", "tool_use"]
    assert snapshot.content[1].input == {"city": "Paris"}
    assert snapshot.usage.output_tokens == 30


def test_openai_stream_text_only_with_length():
    base = openai_chunks()
    chunks = base[:3] + [dict(base[7], choices=[dict(base[7]["choices"][0], finish_reason="length")])]
    conv, events = run_openai_stream(chunks)
    assert [n for n, _ in events] == ["message_start", "content_block_start", "content_block_delta",
                                      "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert conv.stop_reason == "max_tokens"
    assert events[-2][1]["usage"]["input_tokens"] == 0  # no usage chunk: zeros, never missing


def test_openai_stream_text_after_tool_call_opens_a_new_block():
    base = openai_chunks()
    conv, events = run_openai_stream([base[0], base[3], base[1], base[7]])
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["tool_use", "text"]
    stops = [d["index"] for n, d in events if n == "content_block_stop"]
    assert stops == [0, 1]


def test_openai_stream_empty_and_finish_idempotent():
    conv = OpenAIStreamToAnthropic("m", "msg_1")
    events = conv.finish()
    assert [n for n, _ in events] == ["message_start", "message_delta", "message_stop"]
    for _, d in events:
        STREAM_EVENT.validate_python(d)
    assert conv.finish() == []
    assert conv.stop_reason == "end_turn"


def test_openai_stream_message_start_once_and_usage_in_first_chunk():
    conv = OpenAIStreamToAnthropic("m", "msg_1")
    first = dict(openai_chunks()[1], usage={"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8})
    events = conv.feed(first)
    assert events[0][0] == "message_start"
    assert events[0][1]["message"]["usage"]["input_tokens"] == 7
    assert all(n != "message_start" for n, _ in conv.feed(openai_chunks()[2]))


def test_openai_stream_tool_call_without_id_gets_one():
    conv = OpenAIStreamToAnthropic("m", "msg_1")
    chunk = openai_chunks()[4]  # arguments fragment with no id/name: some servers send these first
    events = conv.feed(chunk)
    block = next(d["content_block"] for n, d in events if n == "content_block_start")
    assert block["id"] and block["type"] == "tool_use"


def test_openai_stream_error_chunk_raises():
    conv = OpenAIStreamToAnthropic("m", "msg_1")
    with pytest.raises(UpstreamError) as e:
        conv.feed({"error": {"message": "server overloaded", "code": 503}})
    assert "overloaded" in e.value.message


# ---- Usage invariants across both directions ---------------------------------------------------


@pytest.mark.parametrize(
    "anthropic_usage",
    [
        {"input_tokens": 0, "output_tokens": 0},
        {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
        {"input_tokens": 3, "output_tokens": 9, "cache_read_input_tokens": 4096, "cache_creation_input_tokens": 0},
        {"input_tokens": 3, "output_tokens": 9, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 2048},
        {"input_tokens": 11, "output_tokens": 2, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 50},
    ],
)
def test_usage_survives_both_response_directions(anthropic_usage):
    to_openai = anthropic_to_openai_response(anthropic_message(usage=anthropic_usage), model="m", created=1)
    u = to_openai["usage"]
    reads = anthropic_usage.get("cache_read_input_tokens", 0)
    writes = anthropic_usage.get("cache_creation_input_tokens", 0)
    assert u["prompt_tokens"] == anthropic_usage["input_tokens"] + reads + writes
    assert u["prompt_tokens_details"]["cached_tokens"] == reads
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    resp = openai_completion({"content": "x"}, usage=u)
    back = openai_to_anthropic_response(resp, model="m")["usage"]
    assert back == {"cache_read_input_tokens": 0, "cache_creation_input_tokens": 0, **anthropic_usage}


@pytest.mark.parametrize("field", [{"logprobs": True}, {"top_logprobs": 2}, {"audio": {"voice": "alloy"}},
                                   {"modalities": ["text", "audio"]}])
def test_openai_fields_anthropic_cannot_honour_are_refused(field):
    with pytest.raises(InvalidRequest) as e:
        to_anthropic({"messages": [user("x")], **field})
    assert e.value.param == next(iter(field)) and e.value.code == "unsupported_parameter"
    to_anthropic({"messages": [user("x")], "logprobs": False, "modalities": ["text"]})  # asks for nothing more


@pytest.mark.parametrize("field", [{"mcp_servers": [{"type": "url", "url": "https://m", "name": "m"}]},
                                   {"container": "cntr_1"}])
def test_anthropic_fields_openai_cannot_honour_are_refused(field):
    with pytest.raises(InvalidRequest) as e:
        anthropic_request_to_openai({"max_tokens": 1, "messages": [user("x")], **field}, model="gpt-4o")
    assert e.value.param == next(iter(field))
