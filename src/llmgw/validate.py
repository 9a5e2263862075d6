"""Request validation for the inbound dialects: every problem becomes a typed ``InvalidRequest``
naming the offending parameter, before anything is sent upstream.

The checks are the ones that must hold whatever the provider (shapes, types, ranges); a
provider-specific refusal is left to the provider and passed on with its own status.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidRequest

OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
OPENAI_PARTS = frozenset({"text", "image_url", "refusal", "file", "input_audio"})
ANTHROPIC_BLOCKS = frozenset({"text", "image", "tool_use", "tool_result", "document", "thinking",
                              "redacted_thinking", "server_tool_use", "web_search_tool_result", "search_result"})


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(v), type(v).__name__)


def _bad(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"{param}: expected {expected}, got {_type_name(value)}", param=param, code="invalid_type")


def _number(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _bad(name, "a number", v)
    if not lo <= v <= hi:
        raise InvalidRequest(f"{name}: {v} is out of range [{lo:g}, {hi:g}]", param=name, code="invalid_value")


def _int(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, "an integer", v)
    if v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InvalidRequest(f"{name}: {v} is out of range {rng}", param=name, code="invalid_value")


def _bool(body: dict[str, Any], name: str) -> None:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise _bad(name, "a boolean", v)


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("missing required parameter: model", param="model", code="missing_parameter")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model", "a non-empty string", model)
    return model


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {_type_name(body)}", code="invalid_type")
    return body


def _image_url(url: Any, param: str) -> None:
    if not isinstance(url, str):
        raise _bad(param, "a string", url)
    if not (url.startswith("data:") or url.startswith("https://") or url.startswith("http://")):
        raise InvalidRequest(f"{param}: image URLs must be data: URLs or http(s) URLs", param=param,
                             code="invalid_value")
    if url.startswith("data:") and ";base64," not in url[:200]:
        raise InvalidRequest(f"{param}: data URLs must be base64 encoded (data:<type>;base64,...)", param=param,
                             code="invalid_value")


def chat_request(body: Any) -> dict[str, Any]:
    body = _object(body)
    _model(body)
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("missing required parameter: messages", param="messages", code="missing_parameter")
    if not isinstance(messages, list):
        raise _bad("messages", "an array", messages)
    if not messages:
        raise InvalidRequest("messages: must contain at least one message", param="messages", code="invalid_value")
    for i, m in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(p, "an object", m)
        role = m.get("role")
        if role not in OPENAI_ROLES:
            raise InvalidRequest(f"{p}.role: {role!r} is not one of {sorted(OPENAI_ROLES)}", param=f"{p}.role",
                                 code="invalid_value")
        content = m.get("content")
        if content is None:
            if role == "assistant" and (m.get("tool_calls") or m.get("function_call")):
                continue
            if role == "assistant":
                continue
            raise InvalidRequest(f"{p}.content: required for role {role}", param=f"{p}.content",
                                 code="missing_parameter")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise _bad(f"{p}.content", "a string or an array of content parts", content)
        for j, part in enumerate(content):
            pp = f"{p}.content[{j}]"
            if not isinstance(part, dict):
                raise _bad(pp, "an object", part)
            ptype = part.get("type")
            if ptype not in OPENAI_PARTS:
                raise InvalidRequest(f"{pp}.type: unsupported content part {ptype!r} (supported: {', '.join(sorted(OPENAI_PARTS))})",
                                     param=f"{pp}.type", code="unsupported_content_part")
            if ptype == "text" and not isinstance(part.get("text"), str):
                raise _bad(f"{pp}.text", "a string", part.get("text"))
            if ptype == "image_url":
                iu = part.get("image_url")
                url = iu.get("url") if isinstance(iu, dict) else iu
                _image_url(url, f"{pp}.image_url.url")
    _bool(body, "stream")
    _int(body, "n", 1, 128)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    _int(body, "max_tokens", 1)
    _int(body, "max_completion_tokens", 1)
    _int(body, "seed", -(2**63), 2**63 - 1)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str):
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("stop", "a string or an array of strings", stop)
        if len(stop) > 4:
            raise InvalidRequest("stop: at most 4 sequences", param="stop", code="invalid_value")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "an array", tools)
        for i, t in enumerate(tools):
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise InvalidRequest(f"tools[{i}]: expected {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                                     param=f"tools[{i}]", code="invalid_value")
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
            raise InvalidRequest("response_format: type must be text, json_object or json_schema",
                                 param="response_format", code="invalid_value")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise _bad("stream_options", "an object", so)
    return body


def messages_request(body: Any) -> dict[str, Any]:
    body = _object(body)
    _model(body)
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("missing required parameter: messages", param="messages", code="missing_parameter")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: expected a non-empty array", param="messages", code="invalid_value")
    for i, m in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(p, "an object", m)
        if m.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"{p}.role: must be user or assistant (system goes in the top-level system field)",
                                 param=f"{p}.role", code="invalid_value")
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise _bad(f"{p}.content", "a string or an array of content blocks", content)
        for j, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") not in ANTHROPIC_BLOCKS:
                btype = block.get("type") if isinstance(block, dict) else _type_name(block)
                raise InvalidRequest(f"{p}.content[{j}]: unsupported content block {btype!r}",
                                     param=f"{p}.content[{j}].type", code="unsupported_content_part")
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise _bad("system", "a string or an array of text blocks", system)
    _int(body, "max_tokens", 1)
    _bool(body, "stream")
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    _int(body, "top_k", 0)
    ss = body.get("stop_sequences")
    if ss is not None and (not isinstance(ss, list) or not all(isinstance(s, str) for s in ss)):
        raise _bad("stop_sequences", "an array of strings", ss)
    return body


def embeddings_request(body: Any) -> dict[str, Any]:
    body = _object(body)
    _model(body)
    inp = body.get("input")
    if inp is None:
        raise InvalidRequest("missing required parameter: input", param="input", code="missing_parameter")
    if isinstance(inp, str):
        return body
    if not isinstance(inp, list) or not inp:
        raise _bad("input", "a string or a non-empty array", inp)
    return body
