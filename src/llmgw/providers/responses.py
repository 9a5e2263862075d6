"""The OpenAI Responses API (``POST /v1/responses``): validation, translation to and from Chat
Completions, the typed stream events, and where stored responses live.

Two ways a Responses request reaches a provider:

* **pass-through** to an OpenAI provider's own ``/responses`` endpoint (``native_responses``): the
  body goes as the client sent it (model name replaced), the answer and its SSE events come back
  unchanged; usage is read from the response object (``usage_of``).
* **translated** for every other provider (Anthropic, the demo, an OpenAI-compatible server
  declared ``responses = false``): ``to_chat`` turns the request into a Chat Completions request
  (which the Anthropic adapter turns into a Messages request as it does for chat clients), and
  ``chat_to_response`` / :class:`ChatStreamToResponses` turn the answer back into a ``response``
  object or the typed events (``response.created`` ... ``response.completed``).

Choices for translated requests: ``reasoning.summary``, ``include``, ``truncation``, ``store``,
``metadata``, ``service_tier``, ``prompt_cache_key`` and ``stream_options`` change nothing in the
answer's content and are not sent (the response says ``store: false``); every other field with no
counterpart (hosted tools but web search, ``background``, ``prompt``, stored items) is a 400 naming
it. Reasoning items echoed back in ``input`` are dropped (they only mean something to OpenAI).

Stored responses (``previous_response_id``, ``conversation``, ``item_reference`` items) only exist
at the upstream that created them: :class:`Origins` remembers which provider created each response
id this daemon relayed, and ``pin_targets`` sends a follow-up there alone (no fallback), or refuses
it when the model's route does not include that provider. An id this daemon never saw (it was
restarted, the map is bounded) goes to the first target only, if that target stores responses.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections import OrderedDict
from typing import Any

import orjson

from ..errors import InvalidRequest, NotFound
from ..usage import Usage
from . import sse

Json = dict[str, Any]

_REFUSED = {
    "background": "background responses are stored and polled at the provider; provider {p} stores none",
    "prompt": "reusable prompts are stored at OpenAI; provider {p} cannot read them",
    "conversation": "conversations are stored at the provider that created them; provider {p} stores none, so "
                    "send the whole conversation in input",
    "previous_response_id": "stored responses live at the provider that created them; provider {p} stores none, "
                            "so send the whole conversation in input",
    "max_tool_calls": "it caps hosted tool calls, which provider {p} does not run",
}
_HOSTED_TOOLS = ("web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11")
_STORE_FIELDS = ("previous_response_id", "conversation")


def _id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(v),
                                                                                                   type(v).__name__)


def _bad(param: str, expected: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"{param}: expected {expected}, got {_type_name(value)}", param=param, code="invalid_type")


# ---- validation -------------------------------------------------------------------------------


def validate_request(body: Any) -> Json:
    """The checks every provider needs (shapes and types); provider-specific limits are the provider's."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {_type_name(body)}", code="invalid_type")
    model = body.get("model")
    if model is None:
        raise InvalidRequest("missing required parameter: model", param="model", code="missing_parameter")
    if not isinstance(model, str) or not model.strip():
        raise _bad("model", "a non-empty string", model)
    inp = body.get("input")
    if inp is None and not any(body.get(k) for k in (*_STORE_FIELDS, "prompt")):
        raise InvalidRequest("missing required parameter: input", param="input", code="missing_parameter")
    if inp is not None and not isinstance(inp, (str, list)):
        raise _bad("input", "a string or an array of input items", inp)
    for i, item in enumerate(inp if isinstance(inp, list) else []):
        if not isinstance(item, dict):
            raise _bad(f"input[{i}]", "an object", item)
    for name in ("instructions", "previous_response_id"):
        v = body.get(name)
        if v is not None and not isinstance(v, str):
            raise _bad(name, "a string", v)
    for name in ("stream", "store", "parallel_tool_calls", "background"):
        v = body.get(name)
        if v is not None and not isinstance(v, bool):
            raise _bad(name, "a boolean", v)
    mot = body.get("max_output_tokens")
    if mot is not None and (isinstance(mot, bool) or not isinstance(mot, int) or mot < 1):
        raise InvalidRequest(f"max_output_tokens: expected an integer >= 1, got {mot!r}", param="max_output_tokens",
                             code="invalid_value")
    for name, lo, hi in (("temperature", 0, 2), ("top_p", 0, 1)):
        v = body.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _bad(name, "a number", v)
        if not lo <= v <= hi:
            raise InvalidRequest(f"{name}: {v} is out of range [{lo}, {hi}]", param=name, code="invalid_value")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "an array", tools)
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("type"), str):
                raise InvalidRequest(f"tools[{i}]: expected an object with a type", param=f"tools[{i}]",
                                     code="invalid_value")
            if t["type"] == "function" and not isinstance(t.get("name"), str):
                raise InvalidRequest(f"tools[{i}].name: function tools need a name", param=f"tools[{i}].name",
                                     code="missing_parameter")
    for name in ("text", "reasoning"):
        v = body.get(name)
        if v is not None and not isinstance(v, dict):
            raise _bad(name, "an object", v)
    return body


# ---- Responses request -> Chat Completions request --------------------------------------------


def _content_parts(content: Any, param: str, role: str) -> Any:
    """A message item's content as Chat Completions content (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(param, "a string or an array of content parts", content)
    parts: list[Json] = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text") or "")})
        elif ptype == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif ptype == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise InvalidRequest(f"{p}: only images given by image_url (a URL or a data URL) can be translated; "
                                     "file_id names a file stored at OpenAI", param=f"{p}.image_url")
            image: Json = {"url": url}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif ptype == "input_file":
            if part.get("file_data"):
                file: Json = {"file_data": part["file_data"]}
                if part.get("filename"):
                    file["filename"] = part["filename"]
            elif part.get("file_id"):
                file = {"file_id": part["file_id"]}
            else:
                raise InvalidRequest(f"{p}: only files given inline (file_data) can be translated; file_url is "
                                     "fetched by OpenAI itself", param=p)
            parts.append({"type": "file", "file": file})
        elif ptype == "input_audio":
            parts.append({"type": "input_audio", "input_audio": part.get("input_audio") or {}})
        else:
            raise InvalidRequest(f"{p}: content type {ptype!r} cannot be translated", param=f"{p}.type")
    if role != "user" and all(q["type"] == "text" for q in parts):
        return "".join(q["text"] for q in parts)
    return parts


def _tool_output(output: Any, param: str) -> Any:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return [{"type": "text", "text": str(p.get("text") or "")} for p in output
                if isinstance(p, dict) and p.get("type") in ("input_text", "output_text", "text")]
    raise _bad(param, "a string or an array of content parts", output)


def _chat_tools(tools: list[Any], provider: str) -> tuple[list[Json], Json | None]:
    """Function tools as Chat Completions tools; a web search tool as ``web_search_options``."""
    out: list[Json] = []
    search: Json | None = None
    for i, tool in enumerate(tools):
        ttype = tool.get("type")
        if ttype == "function":
            fn: Json = {"name": tool["name"]}
            if tool.get("description"):
                fn["description"] = tool["description"]
            fn["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
            if tool.get("strict") is not None:
                fn["strict"] = tool["strict"]
            out.append({"type": "function", "function": fn})
        elif ttype in _HOSTED_TOOLS:
            search = {}
            if tool.get("user_location"):
                loc = dict(tool["user_location"])
                loc.pop("type", None)
                search["user_location"] = {"type": "approximate", "approximate": loc}
            if tool.get("search_context_size"):
                search["search_context_size"] = tool["search_context_size"]
        else:
            raise InvalidRequest(f"tools[{i}]: tool type {ttype!r} runs at OpenAI and cannot be translated for "
                                 f"provider {provider}", param=f"tools[{i}].type")
    return out, search


def _chat_tool_choice(choice: Any) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "function": {"name": choice["name"]}}
    ctype = choice.get("type") if isinstance(choice, dict) else choice
    raise InvalidRequest(f"tool_choice: {ctype!r} cannot be translated", param="tool_choice")


def _response_format(text: Any) -> Json | None:
    fmt = (text or {}).get("format") if isinstance(text, dict) else None
    if fmt is not None and not isinstance(fmt, dict):
        raise _bad("text.format", "an object", fmt)
    if fmt is None or fmt.get("type") in (None, "text"):
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    if fmt["type"] == "json_schema":
        schema: Json = {"name": fmt.get("name") or "output", "schema": fmt.get("schema") or {}}
        for k in ("strict", "description"):
            if fmt.get(k) is not None:
                schema[k] = fmt[k]
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidRequest(f"text.format: type {fmt['type']!r} is not supported", param="text.format.type")


def to_chat(body: Json, *, provider: str) -> Json:
    """A Responses request as the equivalent Chat Completions request (for ``provider``, named in errors)."""
    for name, why in _REFUSED.items():
        if body.get(name):
            raise InvalidRequest(f"{name}: {why.format(p=provider)}", param=name, code="unsupported_parameter")
    messages: list[Json] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    inp = body.get("input")
    if isinstance(inp, str):
        messages.append({"role": "user", "content": inp})
    for i, item in enumerate(inp if isinstance(inp, list) else []):
        param = f"input[{i}]"
        itype = item.get("type") or ("message" if "role" in item else None)
        if itype == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(f"{param}.role: {role!r} is not one of user, assistant, system, developer",
                                     param=f"{param}.role", code="invalid_value")
            messages.append({"role": role, "content": _content_parts(item.get("content"), f"{param}.content", role)})
        elif itype == "function_call":
            call = {"id": item.get("call_id") or item.get("id") or "", "type": "function",
                    "function": {"name": item.get("name") or "", "arguments": item.get("arguments") or "{}"}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # one assistant turn: its text, then its calls
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif itype == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id") or "",
                             "content": _tool_output(item.get("output"), f"{param}.output")})
        elif itype == "reasoning":
            continue  # OpenAI's own reasoning state: meaningless to another provider
        elif itype == "item_reference":
            raise InvalidRequest(f"{param}: item_reference names an item stored at OpenAI, which provider {provider} "
                                 "cannot read; send the item itself", param=f"{param}.type",
                                 code="unsupported_parameter")
        else:
            raise InvalidRequest(f"{param}: input item type {itype!r} cannot be translated for provider {provider}",
                                 param=f"{param}.type")
    if not messages or all(m["role"] in ("system", "developer") for m in messages):
        raise InvalidRequest("input: needs at least one message", param="input", code="invalid_value")
    out: Json = {"model": body["model"], "messages": messages}
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    for k in ("temperature", "top_p", "parallel_tool_calls", "top_logprobs", "user"):
        if body.get(k) is not None:
            out[k] = body[k]
    if body.get("top_logprobs"):
        out["logprobs"] = True
    if body.get("stream"):
        out["stream"] = True
    if body.get("tools"):
        tools, search = _chat_tools(body["tools"], provider)
        if tools:
            out["tools"] = tools
            choice = _chat_tool_choice(body.get("tool_choice"))
            if choice is not None:
                out["tool_choice"] = choice
        if search is not None:
            out["web_search_options"] = search
    fmt = _response_format(body.get("text"))
    if fmt is not None:
        out["response_format"] = fmt
    verbosity = (body.get("text") or {}).get("verbosity")
    if verbosity:
        out["verbosity"] = verbosity  # gpt-5's chat knob; a best-effort style hint elsewhere
    effort = (body.get("reasoning") or {}).get("effort")
    if effort:
        out["reasoning_effort"] = effort
    return out


def bound_view(body: Json) -> Json:
    """A Chat Completions-shaped view of a Responses request for the cost bound and the cache keys:
    the same text, images, files, tools and output limit. Never sent anywhere."""
    try:
        view = to_chat({k: v for k, v in body.items() if k not in _REFUSED and k != "tools"}, provider="-")
    except InvalidRequest:
        view = {"model": body.get("model"), "messages": [{"role": "user", "content": orjson.dumps(
            body.get("input")).decode()}]}
        if body.get("max_output_tokens") is not None:
            view["max_tokens"] = body["max_output_tokens"]
    inp = body.get("input")
    hidden = [i for i in inp if isinstance(i, dict) and i.get("type") == "reasoning"] if isinstance(inp, list) else []
    if hidden:  # not translated, but passed through to OpenAI, which bills them as input
        view["messages"].append({"role": "user", "content": orjson.dumps(hidden).decode()})
    if body.get("tools"):
        view["tools"] = body["tools"]  # as sent: the bound counts their JSON
    return view


def unbounded(body: Json) -> list[str]:
    """Responses fields whose cost the request cannot bound: stored context pulled in, hosted tools."""
    out = [k for k in _STORE_FIELDS if body.get(k)]
    inp = body.get("input")
    if isinstance(inp, list) and any(isinstance(i, dict) and i.get("type") == "item_reference" for i in inp):
        out.append("input[item_reference]")
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") != "function":
            out.append(f"tools[{tool.get('type')}]")
    return out


# ---- usage --------------------------------------------------------------------------------------


def usage_of(u: Any) -> Usage:
    """A Responses ``usage`` object in the gateway's shape (input tokens include cached ones)."""
    if not isinstance(u, dict):
        return Usage()
    details = u.get("input_tokens_details") or {}
    return Usage(prompt_tokens=int(u.get("input_tokens") or 0), completion_tokens=int(u.get("output_tokens") or 0),
                 cached_tokens=int(details.get("cached_tokens") or 0),
                 cache_write_tokens=int(details.get("cache_write_tokens") or 0))


def usage_json(u: Usage) -> Json:
    out: Json = {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": u.cached_tokens},
                 "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": u.total_tokens}
    if u.cache_write_tokens:
        out["input_tokens_details"]["cache_write_tokens"] = u.cache_write_tokens
    return out


# ---- Chat Completions answer -> Responses answer ----------------------------------------------


def _skeleton(req: Json, resp_id: str, model: str, created: int, status: str) -> Json:
    fmt = (req.get("text") or {}).get("format") if isinstance(req.get("text"), dict) else None
    return {
        "id": resp_id, "object": "response", "created_at": created, "status": status, "background": False,
        "error": None, "incomplete_details": None, "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"), "model": model, "output": [],
        "parallel_tool_calls": req.get("parallel_tool_calls", True), "previous_response_id": None,
        "reasoning": {"effort": (req.get("reasoning") or {}).get("effort"), "summary": None},
        "store": False, "temperature": req.get("temperature"), "text": {"format": fmt or {"type": "text"}},
        "tool_choice": req.get("tool_choice") or "auto", "tools": req.get("tools") or [],
        "top_p": req.get("top_p"), "truncation": "disabled", "usage": None, "user": req.get("user"),
        "metadata": req.get("metadata") or {},
    }


def _finish(resp: Json, finish_reason: str | None) -> None:
    if finish_reason == "length":
        resp["status"], resp["incomplete_details"] = "incomplete", {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        resp["status"], resp["incomplete_details"] = "incomplete", {"reason": "content_filter"}
    else:
        resp["status"] = "completed"


def _message_item(item_id: str, text: str, status: str = "completed") -> Json:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> Json:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def chat_to_response(chat: Json, req: Json, *, model: str, created: int | None = None) -> Json:
    """A ``chat.completion`` (choice 0) as a ``response`` object answering ``req``."""
    created = int(time.time()) if created is None else created
    resp = _skeleton(req, _id("resp_"), model, created, "completed")
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    text = message.get("content") or message.get("refusal")
    if text:
        resp["output"].append(_message_item(_id("msg_"), text))
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        resp["output"].append(_call_item(_id("fc_"), call.get("id") or "", fn.get("name") or "",
                                         fn.get("arguments") or ""))
    _finish(resp, choice.get("finish_reason"))
    resp["usage"] = usage_json(Usage.from_openai(chat.get("usage")))
    return resp


# ---- Chat Completions stream -> Responses stream ----------------------------------------------


class ChatStreamToResponses:
    """Turns ``chat.completion.chunk`` dicts (choice 0) into ``(event type, data)`` Responses events.

    The text of the answer is one ``message`` item, opened at its first delta and closed when a tool
    call starts or the stream ends; each tool call is a ``function_call`` item, closed at the end
    (a late argument fragment may still arrive for any of them). ``finish`` closes everything and
    returns ``response.completed`` (or ``response.incomplete``) with the usage seen."""

    def __init__(self, req: Json, model: str, resp_id: str | None = None, created: int | None = None) -> None:
        self.response = _skeleton(req, resp_id or _id("resp_"), model,
                                  int(time.time()) if created is None else created, "in_progress")
        self.usage = Usage()
        self.finish_reason: str | None = None
        self._seq = 0
        self._started = False
        self._finished = False
        self._items: list[Json] = []  # every output item so far, in order
        self._text_at: int | None = None  # output index of the open message item
        self._calls: dict[int, int] = {}  # chat tool_calls index -> output index

    def _ev(self, etype: str, **data: Any) -> tuple[str, Json]:
        ev = {"type": etype, "sequence_number": self._seq, **data}
        self._seq += 1
        return etype, ev

    def _start(self) -> list[tuple[str, Json]]:
        if self._started:
            return []
        self._started = True
        snap = dict(self.response)
        return [self._ev("response.created", response=snap), self._ev("response.in_progress", response=snap)]

    def _close_text(self) -> list[tuple[str, Json]]:
        at = self._text_at
        if at is None:
            return []
        self._text_at = None
        item = self._items[at]
        part = item["content"][0]
        item["status"] = "completed"
        common = {"item_id": item["id"], "output_index": at, "content_index": 0}
        return [self._ev("response.output_text.done", **common, text=part["text"], logprobs=[]),
                self._ev("response.content_part.done", **common, part=dict(part)),
                self._ev("response.output_item.done", output_index=at, item=_copy(item))]

    def feed(self, chunk: Json) -> list[tuple[str, Json]]:
        events = self._start()
        if chunk.get("usage"):
            self.usage = Usage.from_openai(chunk["usage"])
        choice = (chunk.get("choices") or [None])[0]
        if not choice:
            return events
        delta = choice.get("delta") or {}
        text = delta.get("content") or delta.get("refusal")
        if text:
            if self._text_at is None:
                at = self._text_at = len(self._items)
                item = _message_item(_id("msg_"), "", "in_progress")
                self._items.append(item)
                empty = dict(item, content=[])
                events.append(self._ev("response.output_item.added", output_index=at, item=empty))
                events.append(self._ev("response.content_part.added", item_id=item["id"], output_index=at,
                                       content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                              "logprobs": []}))
            item = self._items[self._text_at]
            item["content"][0]["text"] += text
            events.append(self._ev("response.output_text.delta", item_id=item["id"], output_index=self._text_at,
                                   content_index=0, delta=text, logprobs=[]))
        for call in delta.get("tool_calls") or []:
            index = int(call.get("index") or 0)
            fn = call.get("function") or {}
            if index not in self._calls:
                events += self._close_text()
                at = self._calls[index] = len(self._items)
                item = _call_item(_id("fc_"), call.get("id") or _id("call_"), fn.get("name") or "", "",
                                  "in_progress")
                self._items.append(item)
                events.append(self._ev("response.output_item.added", output_index=at, item=dict(item)))
            at = self._calls[index]
            if fn.get("arguments"):
                self._items[at]["arguments"] += fn["arguments"]
                events.append(self._ev("response.function_call_arguments.delta", item_id=self._items[at]["id"],
                                       output_index=at, delta=fn["arguments"]))
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return events

    def finish(self) -> list[tuple[str, Json]]:
        """Close the open items and the response; later calls return nothing."""
        if self._finished:
            return []
        self._finished = True
        events = [*self._start(), *self._close_text()]
        for at in sorted(self._calls.values()):
            item = self._items[at]
            item["status"] = "completed"
            events.append(self._ev("response.function_call_arguments.done", item_id=item["id"], output_index=at,
                                   arguments=item["arguments"], name=item["name"]))
            events.append(self._ev("response.output_item.done", output_index=at, item=dict(item)))
        resp = self.response
        resp["output"] = [_copy(i) for i in self._items]
        resp["usage"] = usage_json(self.usage)
        _finish(resp, self.finish_reason)
        kind = "response.completed" if resp["status"] == "completed" else "response.incomplete"
        events.append(self._ev(kind, response=resp))
        return events

    @property
    def text(self) -> str:
        return "".join(i["content"][0]["text"] for i in self._items if i["type"] == "message")

    def failed(self, code: str | None, message: str) -> bytes:
        """``response.failed`` for this stream, if it began (else a stream of its own)."""
        self._finished = True
        if not self._started:
            return encode(self._start()) + error_event(code, message, self.response["id"], self._seq)
        return error_event(code, message, self.response["id"], self._seq, [_copy(i) for i in self._items])


def _copy(item: Json) -> Json:
    out = dict(item)
    if "content" in out:
        out["content"] = [dict(c) for c in out["content"]]
    return out


def encode(events: list[tuple[str, Json]]) -> bytes:
    return b"".join(sse.anthropic_event(name, data) for name, data in events)


def error_event(code: str | None, message: str, resp_id: str | None = None, seq: int = 0,
                output: list[Json] | None = None) -> bytes:
    """The last event of a Responses stream that failed after it began (``response.failed``): for the
    SDK's stream helper, with the id of the response the stream created and the next sequence number."""
    resp = {"id": resp_id or _id("resp_"), "object": "response", "status": "failed", "output": output or [],
            "error": {"code": code or "server_error", "message": message}}
    return sse.anthropic_event("response.failed", {"type": "response.failed", "sequence_number": seq,
                                                   "response": resp})


# ---- replaying a cached answer ------------------------------------------------------------------


def replay(doc: Json) -> tuple[bytes, bytes]:
    """(events, terminal event) replaying a stored ``response`` object as a Responses stream."""
    seq = 0

    def ev(etype: str, **data: Any) -> bytes:
        nonlocal seq
        seq += 1
        return sse.anthropic_event(etype, {"type": etype, "sequence_number": seq - 1, **data})

    snap = {**doc, "status": "in_progress", "output": [], "usage": None}
    out = [ev("response.created", response=snap), ev("response.in_progress", response=snap)]
    for at, item in enumerate(doc.get("output") or []):
        if item.get("type") == "message":
            out.append(ev("response.output_item.added", output_index=at,
                          item={**item, "status": "in_progress", "content": []}))
            for ci, part in enumerate(item.get("content") or []):
                common = {"item_id": item.get("id"), "output_index": at, "content_index": ci}
                out.append(ev("response.content_part.added", **common, part={**part, "text": ""}
                              if part.get("type") == "output_text" else part))
                if part.get("type") == "output_text":
                    out.append(ev("response.output_text.delta", **common, delta=part.get("text", ""), logprobs=[]))
                    out.append(ev("response.output_text.done", **common, text=part.get("text", ""), logprobs=[]))
                out.append(ev("response.content_part.done", **common, part=part))
        elif item.get("type") == "function_call":
            out.append(ev("response.output_item.added", output_index=at,
                          item={**item, "status": "in_progress", "arguments": ""}))
            out.append(ev("response.function_call_arguments.delta", item_id=item.get("id"), output_index=at,
                          delta=item.get("arguments", "")))
            out.append(ev("response.function_call_arguments.done", item_id=item.get("id"), output_index=at,
                          arguments=item.get("arguments", ""), name=item.get("name")))
        else:
            out.append(ev("response.output_item.added", output_index=at, item=item))
        out.append(ev("response.output_item.done", output_index=at, item=item))
    kind = "response.completed" if doc.get("status", "completed") == "completed" else "response.incomplete"
    return b"".join(out), ev(kind, response=doc)


# ---- stored responses: where they live ----------------------------------------------------------


class Origins:
    """Response id -> (provider that created and stores it, owner): the newest ``limit`` ids. The
    owner is the customer of the key that created it (or the key itself, without a customer): only
    its keys may continue or read it."""

    def __init__(self, limit: int = 50_000) -> None:  # about 250 bytes an entry, its id included: ~12 MB
        self.limit = limit
        self._ids: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def remember(self, response_id: str, provider: str, owner: str) -> None:
        self._ids[response_id] = (sys.intern(provider), sys.intern(owner))
        self._ids.move_to_end(response_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def get(self, response_id: str) -> tuple[str, str] | None:
        return self._ids.get(response_id)

    def forget(self, response_id: str) -> None:
        self._ids.pop(response_id, None)


def owner_of(key: Any) -> str:
    """Who owns the responses a key creates: its customer, or the key itself."""
    return key.customer_id or f"key:{key.id}"


def not_found(ref: str) -> Exception:
    return NotFound(f"previous_response_id: response {ref!r} not found", param="previous_response_id",
                    code="previous_response_not_found")


def stored_reference(body: Json) -> str | None:
    """The stored response (or conversation) a request continues, if any."""
    prev = body.get("previous_response_id")
    if isinstance(prev, str) and prev:
        return prev
    conv = body.get("conversation")
    if isinstance(conv, str) and conv:
        return conv
    if isinstance(conv, dict) and isinstance(conv.get("id"), str):
        return conv["id"]
    inp = body.get("input")
    if isinstance(inp, list):
        for item in inp:
            if isinstance(item, dict) and item.get("type") == "item_reference" and isinstance(item.get("id"), str):
                return item["id"]
    return None


def pin_targets(body: Json, targets: list[Any], origins: Origins, model: str, owner: str) -> list[Any]:
    """The targets a request may go to: all of them, unless it continues a stored response, which
    only the provider that created it can serve (then exactly that target: never a fallback), and
    only for its owner (anyone else is told it does not exist)."""
    ref = stored_reference(body)
    if ref is None:
        return targets
    known = origins.get(ref)
    if known is not None and known[1] != owner:
        raise not_found(ref)
    origin = known[0] if known is not None else None
    if origin is not None:
        same = [t for t in targets if t.provider.name == origin]
        if not same:
            route = ", ".join(t.qualified for t in targets)
            raise InvalidRequest(f"previous_response_id: {ref} was created by provider {origin}, and model {model!r} "
                                 f"routes to {route}; continue it with a model served by {origin}",
                                 param="previous_response_id", code="stored_response_elsewhere")
        return same[:1]
    first = targets[0]
    if not getattr(first.provider, "native_responses", False):
        raise InvalidRequest(f"previous_response_id: {ref} is unknown to this gateway and provider "
                             f"{first.provider.name} does not store responses; send the whole conversation in input",
                             param="previous_response_id", code="unsupported_parameter")
    return [first]
