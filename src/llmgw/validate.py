"""Request validation for the inbound dialects: every problem becomes a typed ``InvalidRequest``
naming the offending parameter, before anything is sent upstream.

The checks are the ones that must hold whatever the provider (shapes, types, ranges); a
provider-specific refusal is left to the provider and passed on with its own status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .errors import InvalidRequest

OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
OPENAI_PARTS = frozenset({"text", "image_url", "refusal", "file", "input_audio"})
ANTHROPIC_BLOCKS = frozenset({"text", "image", "tool_use", "tool_result", "document", "thinking",
                              "redacted_thinking", "server_tool_use", "web_search_tool_result", "search_result"})


#: the deepest nesting of JSON arrays and objects a request body may have (the body itself is level 1).
#: orjson, which serialises every body the gateway passes on (cache keys, translation, the upstream
#: call), stops at 254 levels; what is left below it is headroom for the levels translation adds.
MAX_DEPTH = 128
_ORJSON_DEPTH = 254
#: request headers whose values llmgw reads or forwards (besides every ``x-llmgw-*`` one)
_READ_HEADERS = frozenset({"authorization", "x-api-key", "idempotency-key", "x-stainless-retry-count"})
_READ_PREFIXES = ("x-llmgw-",)
#: client headers that may be forwarded to a provider (``anthropic-beta``, ``openai-beta``...)
_FORWARDED_PREFIXES = ("anthropic-", "openai-")
#: whole seconds, at most this many digits (317 years): larger values cannot be stored as milliseconds
_TTL_DIGITS = 10


def nesting(raw: bytes, body: Any) -> None:
    """Refuse a body nested deeper than ``MAX_DEPTH`` levels (typed 400) before anything walks it.

    A small body with few brackets cannot be that deep (the common case costs one ``count``);
    otherwise orjson itself measures it: the body wrapped in ``254 - MAX_DEPTH`` arrays serialises
    exactly when it is at most ``MAX_DEPTH`` deep (C speed: ~20 us for a 30 KB body, a third of a
    Python walk)."""
    if len(raw) <= 4096 and raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    wrapped = body
    for _ in range(_ORJSON_DEPTH - MAX_DEPTH):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError as e:
        raise InvalidRequest(f"request body: arrays and objects nested deeper than {MAX_DEPTH} levels",
                             code="nesting_too_deep") from e


def request_headers(headers: Mapping[str, str]) -> None:
    """Refuse (typed 400, naming the header) a header llmgw reads whose value is not UTF-8 text
    (aiohttp hands undecodable bytes on as lone surrogates, which nothing downstream can encode),
    a header it may forward upstream (``anthropic-*``, ``openai-*``) that is not ASCII, and an
    ``x-llmgw-cache-ttl`` that is not whole seconds in ASCII digits."""
    for name, value in headers.items():
        if value.isascii():
            continue
        low = name.lower()
        if low.startswith(_FORWARDED_PREFIXES):  # may go upstream, where a header is ASCII
            raise InvalidRequest(f"{low}: header value must be ASCII", param=low, code="invalid_header")
        if low in _READ_HEADERS or low.startswith(_READ_PREFIXES):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InvalidRequest(f"{low}: header value is not valid UTF-8", param=low,
                                     code="invalid_header") from e
    ttl = headers.get("x-llmgw-cache-ttl")
    if ttl is not None and not (ttl.isascii() and ttl.isdigit() and len(ttl) <= _TTL_DIGITS):
        raise InvalidRequest(f"x-llmgw-cache-ttl: expected whole seconds (at most {_TTL_DIGITS} ASCII digits)",
                             param="x-llmgw-cache-ttl", code="invalid_value")


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


def _optional(obj: dict[str, Any], key: str, param: str, kind: type | tuple[type, ...], expected: str) -> Any:
    """``obj[key]`` when it is absent, null or of ``kind``; a typed 400 naming ``param`` otherwise."""
    v = obj.get(key)
    if v is not None and not isinstance(v, kind):
        raise _bad(param, expected, v)
    return v


def _one_of(v: Any, allowed: frozenset[str], param: str, what: str, code: str = "invalid_value") -> str:
    """``v`` when it is one of the ``allowed`` strings; a typed 400 otherwise (never a TypeError:
    an array or object is not hashable, so it is refused by type before the set is asked)."""
    if not isinstance(v, str):
        raise InvalidRequest(f"{param}: expected {what} (one of {sorted(allowed)}), got {_type_name(v)}",
                             param=param, code=code)
    if v not in allowed:
        raise InvalidRequest(f"{param}: {v[:100]!r} is not one of {sorted(allowed)}", param=param, code=code)
    return v


def _openai_tool_calls(m: dict[str, Any], p: str) -> None:
    calls = m.get("tool_calls")
    if calls is None:
        return
    if not isinstance(calls, list):
        raise _bad(f"{p}.tool_calls", "an array", calls)
    for k, call in enumerate(calls):
        pc = f"{p}.tool_calls[{k}]"
        if not isinstance(call, dict):
            raise _bad(pc, "an object", call)
        _optional(call, "id", f"{pc}.id", str, "a string")
        _optional(call, "type", f"{pc}.type", str, "a string")
        fn = call.get("function")
        if not isinstance(fn, dict):
            raise _bad(f"{pc}.function", "an object", fn)
        _optional(fn, "name", f"{pc}.function.name", str, "a string")
        _optional(fn, "arguments", f"{pc}.function.arguments", str, "a string")


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
        if role.__class__ is not str or role not in OPENAI_ROLES:
            _one_of(role, OPENAI_ROLES, f"{p}.role", "a role")  # raises
        if "name" in m or "tool_call_id" in m or "tool_calls" in m:  # a plain message skips this
            _optional(m, "name", f"{p}.name", str, "a string")
            _optional(m, "tool_call_id", f"{p}.tool_call_id", str, "a string")
            _openai_tool_calls(m, p)
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
            if not isinstance(ptype, str) or ptype not in OPENAI_PARTS:
                shown = repr(ptype[:100]) if isinstance(ptype, str) else _type_name(ptype)
                raise InvalidRequest(f"{pp}.type: unsupported content part {shown} (supported: "
                                     f"{', '.join(sorted(OPENAI_PARTS))})",
                                     param=f"{pp}.type", code="unsupported_content_part")
            if ptype == "text" and not isinstance(part.get("text"), str):
                raise _bad(f"{pp}.text", "a string", part.get("text"))
            if ptype == "refusal":
                _optional(part, "refusal", f"{pp}.refusal", str, "a string")
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
    if "user" in body:
        _optional(body, "user", "user", str, "a string")
    if "metadata" in body:
        _optional(body, "metadata", "metadata", dict, "an object")
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
            _optional(t, "type", f"tools[{i}].type", str, "a string")
            _optional(fn, "description", f"tools[{i}].function.description", str, "a string")
            _optional(fn, "parameters", f"tools[{i}].function.parameters", dict, "an object")
    tc = body.get("tool_choice")
    if tc is not None and not isinstance(tc, str):
        if not isinstance(tc, dict):
            raise _bad("tool_choice", "a string or an object", tc)
        _optional(tc, "type", "tool_choice.type", str, "a string")
        fn = _optional(tc, "function", "tool_choice.function", dict, "an object")
        if fn is not None:
            _optional(fn, "name", "tool_choice.function.name", str, "a string")
    if "parallel_tool_calls" in body:
        _bool(body, "parallel_tool_calls")
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or not isinstance(rf.get("type"), str) \
                or rf["type"] not in ("text", "json_object", "json_schema"):
            raise InvalidRequest("response_format: type must be text, json_object or json_schema",
                                 param="response_format", code="invalid_value")
        js = _optional(rf, "json_schema", "response_format.json_schema", dict, "an object")
        if js is not None:
            _optional(js, "schema", "response_format.json_schema.schema", dict, "an object")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise _bad("stream_options", "an object", so)
    return body


def _anthropic_source(block: dict[str, Any], p: str) -> None:
    """An image or document block's ``source``: an object whose ``type`` says which fields it has."""
    src = block.get("source")
    if not isinstance(src, dict):
        raise _bad(f"{p}.source", "an object", src)
    stype = src.get("type")
    if not isinstance(stype, str):
        raise _bad(f"{p}.source.type", "a string", stype)
    if stype == "base64":
        for k in ("media_type", "data"):
            if not isinstance(src.get(k), str):
                raise _bad(f"{p}.source.{k}", "a string", src.get(k))
    elif stype == "url" and not isinstance(src.get("url"), str):
        raise _bad(f"{p}.source.url", "a string", src.get("url"))


def _anthropic_block(block: Any, p: str) -> None:
    if not isinstance(block, dict):
        raise InvalidRequest(f"{p}: unsupported content block of type {_type_name(block)}", param=p,
                             code="unsupported_content_part")
    btype = block.get("type")
    if not isinstance(btype, str) or btype not in ANTHROPIC_BLOCKS:
        shown = repr(btype[:100]) if isinstance(btype, str) else f"of type {_type_name(btype)}"
        raise InvalidRequest(f"{p}.type: unsupported content block {shown}", param=f"{p}.type",
                             code="unsupported_content_part")
    if btype == "text" and not isinstance(block.get("text"), str):
        raise _bad(f"{p}.text", "a string", block.get("text"))
    elif btype in ("image", "document"):
        _anthropic_source(block, p)
    elif btype == "tool_use":
        _optional(block, "id", f"{p}.id", str, "a string")
        _optional(block, "name", f"{p}.name", str, "a string")
        _optional(block, "input", f"{p}.input", dict, "an object")
    elif btype == "tool_result":
        _optional(block, "tool_use_id", f"{p}.tool_use_id", str, "a string")
        content = block.get("content")
        if content is not None and not isinstance(content, str):
            if not isinstance(content, list):
                raise _bad(f"{p}.content", "a string or an array of content blocks", content)
            for k, inner in enumerate(content):
                _anthropic_block(inner, f"{p}.content[{k}]")


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
        if not isinstance(m.get("role"), str) or m["role"] not in ("user", "assistant"):
            raise InvalidRequest(f"{p}.role: must be user or assistant (system goes in the top-level system field)",
                                 param=f"{p}.role", code="invalid_value")
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise _bad(f"{p}.content", "a string or an array of content blocks", content)
        for j, block in enumerate(content):
            _anthropic_block(block, f"{p}.content[{j}]")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            raise _bad("system", "a string or an array of text blocks", system)
        for j, block in enumerate(system):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise InvalidRequest(f"system[{j}]: expected a text block {{\"type\": \"text\", \"text\": ...}}",
                                     param=f"system[{j}]", code="invalid_value")
    _int(body, "max_tokens", 1)
    _bool(body, "stream")
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    _int(body, "top_k", 0)
    ss = body.get("stop_sequences")
    if ss is not None and (not isinstance(ss, list) or not all(isinstance(s, str) for s in ss)):
        raise _bad("stop_sequences", "an array of strings", ss)
    md = _optional(body, "metadata", "metadata", dict, "an object")
    if md is not None:
        _optional(md, "user_id", "metadata.user_id", str, "a string")
    _optional(body, "thinking", "thinking", dict, "an object")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "an array", tools)
        for i, t in enumerate(tools):
            if not isinstance(t, dict):
                raise _bad(f"tools[{i}]", "an object", t)
            _optional(t, "type", f"tools[{i}].type", str, "a string")
            _optional(t, "name", f"tools[{i}].name", str, "a string")
            _optional(t, "description", f"tools[{i}].description", str, "a string")
            _optional(t, "input_schema", f"tools[{i}].input_schema", dict, "an object")
    tc = _optional(body, "tool_choice", "tool_choice", dict, "an object")
    if tc is not None:
        _optional(tc, "type", "tool_choice.type", str, "a string")
        _optional(tc, "name", "tool_choice.name", str, "a string")
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
