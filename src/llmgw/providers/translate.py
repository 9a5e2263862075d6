"""Translation between OpenAI Chat Completions and Anthropic Messages, both directions.

Owns the pure mapping of requests, responses and stream events: dicts in, dicts out, no I/O.
Invariants: usage always goes through :class:`llmgw.usage.Usage`, so both directions share one
meaning of "prompt tokens" (cache reads and writes included); input with no faithful counterpart
raises :class:`InvalidRequest` naming the field (never a silently different request); malformed
upstream output raises :class:`UpstreamError`.

Choices, OpenAI request -> Anthropic:

* system/developer messages, wherever they are, are hoisted into ``system``, joined by blank
  lines; a string unless one of them used content parts, then a list of text blocks.
* content is always a list of blocks; empty text (which Anthropic rejects) is dropped, and so are
  messages left empty; consecutive same-role messages merge, so ``role: tool`` results form one
  user turn ahead of any user text that follows them.
* ``n`` > 1, ``logprobs``/``top_logprobs``, ``audio`` and non-text ``modalities`` are rejected (the
  answer could not be what was asked); ``seed``, ``stream_options``, ``frequency_penalty``,
  ``presence_penalty``, ``logit_bias``, ``prediction`` and other sampling knobs are dropped; ``temperature`` is
  passed unchanged (Anthropic's range is 0..1 and it says so itself); ``tool_choice`` and
  ``parallel_tool_calls`` only matter when ``tools`` are given.
* ``response_format`` ``json_schema`` becomes Anthropic's native structured output
  (``output_config.format``) on models that have it (Claude 4.1 and later); for Claude 3.x and 4.0,
  and for ``json_object`` (any JSON, no schema: no Anthropic counterpart), an instruction to answer
  with a single JSON object (conforming to the schema, if any) is appended to the system prompt (a
  prompt, not a guarantee).
* ``reasoning_effort`` becomes ``output_config.effort`` (``minimal`` → ``low``; ``none`` is Anthropic's
  default, no thinking); ``web_search_options`` becomes Anthropic's web search server tool.
* ``file`` parts with inline data (PDFs) become ``document`` blocks; a ``file_id`` (a file stored at
  OpenAI) is refused.

Anthropic request -> OpenAI: ``output_config.format`` (or the beta ``output_format``) becomes
``response_format: json_schema`` (``strict`` when the schema allows it: every object closed with
``additionalProperties: false``); ``output_config.effort`` and ``thinking`` become ``reasoning_effort``
for OpenAI reasoning models (o1/o3/o4/gpt-5; ``thinking`` by its budget: under 4096 tokens low, under
16384 medium, else high) and are refused with a 400 for other models; ``document`` blocks with base64
PDF data become ``file`` parts, text documents text parts, URL and file-id documents are refused;
the web search server tool becomes ``web_search_options``; ``mcp_servers`` and ``container`` are
rejected. ``top_k``, ``cache_control`` and thinking
blocks echoed in assistant history are dropped; a tool result's ``is_error`` has no OpenAI field,
only its text passes; ``max_tokens`` becomes ``max_completion_tokens`` for reasoning models.

Responses: thinking and server-tool blocks are dropped; tool-call ``arguments`` from an OpenAI
upstream that are not a JSON object are an :class:`UpstreamError`.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from llmgw.errors import InvalidRequest, UpstreamError
from llmgw.usage import Usage

__all__ = [
    "AnthropicStreamToOpenAI", "OpenAIStreamToAnthropic", "anthropic_request_to_openai",
    "anthropic_to_openai_response", "openai_to_anthropic_request", "openai_to_anthropic_response",
]

Json = dict[str, Any]
Event = tuple[str, Json]

ANTHROPIC_TO_OPENAI_FINISH: dict[str, str] = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}
OPENAI_TO_ANTHROPIC_STOP = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
    "function_call": "tool_use", "content_filter": "refusal",
}
_TOOL_CHOICE_TO_ANTHROPIC = {"auto": "auto", "required": "any", "none": "none"}
_TOOL_CHOICE_TO_OPENAI = {"auto": "auto", "any": "required", "none": "none"}
_REASONING_MODEL_PREFIXES = ("o1", "o3", "o4", "gpt-5")
_EFFORT_TO_ANTHROPIC = {"minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh"}
_EFFORT_TO_OPENAI = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
#: OpenAI request fields an Anthropic model cannot honour (refused, not dropped: the answer would differ)
_NO_ANTHROPIC_COUNTERPART = {
    "logprobs": "Anthropic models return no log probabilities",
    "top_logprobs": "Anthropic models return no log probabilities",
    "audio": "Anthropic models have no audio output",
    "modalities": "Anthropic models answer in text only",
}
#: Anthropic request fields an OpenAI model cannot honour
_NO_OPENAI_COUNTERPART = {
    "mcp_servers": "MCP servers are run by Anthropic's API; OpenAI Chat Completions has no counterpart",
    "container": "code execution containers are Anthropic's; OpenAI Chat Completions has no counterpart",
}
#: Claude models without structured outputs: 3.x and 4.0 (their json_schema becomes an instruction)
_LEGACY_CLAUDE = re.compile(r"^claude-(?:3|(?:sonnet|opus)-4-(?:0|20\d{6}))")
_JSON_INSTRUCTION = "Respond with a single JSON object only: no prose before or after it and no code fences."
_EMPTY_SCHEMA: Json = {"type": "object", "properties": {}}


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _finish_reason(stop_reason: str | None) -> str:
    return ANTHROPIC_TO_OPENAI_FINISH.get(stop_reason or "end_turn", "stop")


def _stop_reason(finish_reason: str | None) -> str:
    return OPENAI_TO_ANTHROPIC_STOP.get(finish_reason or "stop", "end_turn")


def _type_of(item: Any) -> Any:
    return item.get("type") if isinstance(item, dict) else None


def _texts(content: Any, param: str) -> list[str]:
    """Texts of a string or a list of ``{"type": "text"}`` items (the same shape in both APIs)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string or a list of content parts", param=param)
    out = []
    for i, item in enumerate(content):
        ctype = _type_of(item)
        if ctype != "text":
            raise InvalidRequest(f"content type {ctype!r} is not supported here", param=f"{param}[{i}]")
        out.append(str(item.get("text") or ""))
    return out


def _unsupported(kind: str, target: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"content {kind} cannot be translated for an {target} model", param=param)


# ---- OpenAI request -> Anthropic request ------------------------------------------------------


def _image_block(part: Json, param: str) -> Json:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or not media_type:
            raise InvalidRequest("image data URLs must be data:<media type>;base64,<data>", param=param)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest("image_url.url must be an http(s) URL or a base64 data URL", param=param)


def _document_block(part: Json, param: str) -> Json:
    """An OpenAI ``file`` part with inline data as an Anthropic ``document`` block."""
    held = part.get("file")
    file: Json = held if isinstance(held, dict) else {}
    data = file.get("file_data")
    if not isinstance(data, str):
        raise InvalidRequest(f"{param}.file: only files given inline (file_data) can be translated for an "
                             "Anthropic model; file_id names a file stored at OpenAI", param=f"{param}.file")
    media_type, b64 = "application/pdf", data
    if data.startswith("data:"):
        header, sep, b64 = data[5:].partition(",")
        media_type = header.partition(";")[0] or media_type
        if not sep or ";base64" not in header:
            raise InvalidRequest(f"{param}.file.file_data: data URLs must be base64 encoded",
                                 param=f"{param}.file.file_data")
    if media_type == "text/plain":
        import base64

        text = base64.b64decode(b64).decode("utf-8", "replace")
        block: Json = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}
    elif media_type == "application/pdf":
        block = {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": b64}}
    else:
        raise InvalidRequest(f"{param}.file: {media_type} files cannot be translated for an Anthropic model "
                             "(PDF and plain text can)", param=f"{param}.file")
    if file.get("filename"):
        block["title"] = file["filename"]
    return block


def _content_blocks(content: Any, param: str, *, images: bool) -> list[Json]:
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string or a list of content parts", param=param)
    blocks: list[Json] = []
    for i, part in enumerate(content):
        ptype = _type_of(part)
        if ptype == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif ptype == "image_url" and images:
            blocks.append(_image_block(part, f"{param}[{i}]"))
        elif ptype == "file" and images:
            blocks.append(_document_block(part, f"{param}[{i}]"))
        else:
            raise _unsupported(f"part type {ptype!r}", "Anthropic", f"{param}[{i}]")
    return blocks


def _tool_use_block(call: Any, param: str) -> Json:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise InvalidRequest(f"tool call type {_type_of(call)!r} is not supported", param=param)
    fn = call.get("function") or {}
    try:
        args = orjson.loads(fn.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise InvalidRequest("tool call arguments must be a JSON object", param=f"{param}.function.arguments")
    return {"type": "tool_use", "id": call.get("id") or "", "name": fn.get("name") or "", "input": args}


def _anthropic_tools(tools: list[Any]) -> list[Json]:
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if _type_of(tool) == "function" else None
        if not isinstance(fn, dict) or not fn.get("name"):
            raise InvalidRequest(f"tool type {_type_of(tool)!r} is not supported (only named function tools)",
                                 param=f"tools[{i}]")
        item: Json = {"name": fn["name"]}
        if fn.get("description"):
            item["description"] = fn["description"]
        item["input_schema"] = fn.get("parameters") or dict(_EMPTY_SCHEMA)
        out.append(item)
    return out


def _anthropic_tool_choice(choice: Any, parallel: Any) -> Json | None:
    result: Json | None = None
    if isinstance(choice, str) and choice in _TOOL_CHOICE_TO_ANTHROPIC:
        result = {"type": _TOOL_CHOICE_TO_ANTHROPIC[choice]}
    elif _type_of(choice) == "function":
        result = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    elif choice is not None:
        raise InvalidRequest(f"tool_choice {choice!r} is not supported", param="tool_choice")
    if parallel is False:
        result = result or {"type": "auto"}
        if result["type"] != "none":
            result["disable_parallel_tool_use"] = True
    return result


def _json_instruction(fmt: Any, native: bool) -> str | None:
    """The system-prompt instruction for ``json_object``, or for ``json_schema`` on a model without
    structured outputs (None: no instruction needed)."""
    ftype = _type_of(fmt)
    if fmt is None or ftype == "text" or (ftype == "json_schema" and native):
        return None
    if ftype == "json_object":
        return _JSON_INSTRUCTION
    if ftype == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema is None:
            return _JSON_INSTRUCTION
        return f"{_JSON_INSTRUCTION} It must conform to this JSON Schema:\n{_dumps(schema)}"
    raise InvalidRequest(f"response_format type {ftype!r} is not supported", param="response_format")


def native_structured_output(model: str) -> bool:
    """Whether an Anthropic model has structured outputs (every Claude from 4.1 on; not 3.x or 4.0)."""
    return _LEGACY_CLAUDE.match(model) is None


def _output_config(req: Json, native: bool) -> Json:
    """Anthropic ``output_config`` for an OpenAI request's json_schema format and reasoning effort."""
    out: Json = {}
    fmt = req.get("response_format")
    if native and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format.json_schema.schema: a JSON schema object is required",
                                 param="response_format.json_schema.schema")
        out["format"] = {"type": "json_schema", "schema": schema}
    effort = req.get("reasoning_effort")
    if effort is not None and effort != "none":
        if effort not in _EFFORT_TO_ANTHROPIC:
            raise InvalidRequest(f"reasoning_effort: {effort!r} is not one of {sorted(_EFFORT_TO_ANTHROPIC)}",
                                 param="reasoning_effort")
        out["effort"] = _EFFORT_TO_ANTHROPIC[effort]
    return out


def _web_search_tool(options: Any) -> Json:
    """OpenAI ``web_search_options`` as Anthropic's web search server tool."""
    if not isinstance(options, dict):
        raise InvalidRequest("web_search_options: expected an object", param="web_search_options")
    tool: Json = {"type": "web_search_20250305", "name": "web_search"}
    approx = (options.get("user_location") or {}).get("approximate")
    if isinstance(approx, dict) and approx:
        tool["user_location"] = {"type": "approximate", **{k: v for k, v in approx.items()
                                                          if k in ("city", "region", "country", "timezone")}}
    return tool


def openai_to_anthropic_request(req: Json, *, model: str, default_max_tokens: int) -> Json:
    """An OpenAI Chat Completions request body as an Anthropic Messages request body for ``model``."""
    n = req.get("n")
    if isinstance(n, int) and n > 1:
        raise InvalidRequest("n > 1 is not supported by Anthropic models", param="n")
    if req.get("functions") or req.get("function_call"):
        raise InvalidRequest("legacy functions are not supported; use tools", param="functions")
    for name, why in _NO_ANTHROPIC_COUNTERPART.items():
        if req.get(name) and not (name == "modalities" and req[name] == ["text"]):
            raise InvalidRequest(f"{name}: {why}", param=name, code="unsupported_parameter")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list", param="messages")

    system: list[str] = []
    system_as_blocks = False
    turns: list[Json] = []

    def add(role: str, blocks: list[Json]) -> None:
        if blocks and turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        elif blocks:
            turns.append({"role": role, "content": blocks})

    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, dict) else None
        content = msg.get("content") if isinstance(msg, dict) else None
        if role in ("system", "developer"):
            system.extend(t for t in _texts(content, f"{param}.content") if t)
            system_as_blocks |= isinstance(content, list)
        elif role == "user":
            add("user", _content_blocks(content, f"{param}.content", images=True))
        elif role == "assistant":
            blocks = _content_blocks(content, f"{param}.content", images=False)
            for j, call in enumerate(msg.get("tool_calls") or []):
                blocks.append(_tool_use_block(call, f"{param}.tool_calls[{j}]"))
            add("assistant", blocks)
        elif role == "tool":
            if not msg.get("tool_call_id"):
                raise InvalidRequest("tool messages need a tool_call_id", param=f"{param}.tool_call_id")
            texts = _texts(content, f"{param}.content")
            result: Any = "".join(texts)
            if isinstance(content, list):
                result = [{"type": "text", "text": t} for t in texts if t]
            add("user", [{"type": "tool_result", "tool_use_id": msg["tool_call_id"], "content": result}])
        else:
            raise InvalidRequest(f"message role {role!r} is not supported", param=f"{param}.role")

    native = native_structured_output(model)
    instruction = _json_instruction(req.get("response_format"), native)
    if instruction:
        system.append(instruction)
    out: Json = {"model": model, "messages": turns}
    if system:
        out["system"] = "\n\n".join(system)
        if system_as_blocks:
            out["system"] = [{"type": "text", "text": t} for t in system]
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens")
    out["max_tokens"] = int(max_tokens) if max_tokens else default_max_tokens
    for key in ("temperature", "top_p", "stream"):
        if req.get(key) is not None:
            out[key] = req[key]
    stop = req.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if req.get("user"):
        out["metadata"] = {"user_id": req["user"]}
    if req.get("tools"):
        out["tools"] = _anthropic_tools(req["tools"])
        choice = _anthropic_tool_choice(req.get("tool_choice"), req.get("parallel_tool_calls"))
        if choice:
            out["tool_choice"] = choice
    if req.get("web_search_options") is not None:
        out.setdefault("tools", []).append(_web_search_tool(req["web_search_options"]))
    config = _output_config(req, native)
    if config:
        out["output_config"] = config
    return out


# ---- Anthropic response -> OpenAI response ----------------------------------------------------


def _openai_tool_call(block: Json) -> Json:
    fn = {"name": block.get("name") or "", "arguments": _dumps(block.get("input") or {})}
    return {"id": block.get("id") or "", "type": "function", "function": fn}


def anthropic_to_openai_response(resp: Json, *, model: str, created: int | None = None) -> Json:
    """An Anthropic ``message`` as an OpenAI ``chat.completion`` with one choice.

    ``created`` defaults to now; pass it for reproducible output.
    """
    texts: list[str] = []
    calls: list[Json] = []
    for block in resp.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            calls.append(_openai_tool_call(block))
    message: Json = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                     "refusal": None}
    if calls:
        message["tool_calls"] = calls
    finish = _finish_reason(resp.get("stop_reason"))
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return {"id": f"chatcmpl-{resp.get('id', '')}", "object": "chat.completion",
            "created": int(time.time()) if created is None else created, "model": model, "choices": [choice],
            "usage": Usage.from_anthropic(resp.get("usage")).to_openai()}


# ---- Anthropic stream -> OpenAI stream --------------------------------------------------------


class AnthropicStreamToOpenAI:
    """Turns parsed Anthropic SSE event data into OpenAI ``chat.completion.chunk`` dicts.

    Tool-use blocks are numbered 0, 1, ... as OpenAI ``tool_calls`` indexes, whatever their
    Anthropic block index; thinking and server-tool blocks produce nothing.
    """

    def __init__(self, model: str, completion_id: str, created: int, include_usage: bool) -> None:
        self.model = model
        self.completion_id = completion_id
        self.created = created
        self.include_usage = include_usage
        self._usage = Usage()
        self._finish_reason: str | None = None
        self._text: list[str] = []
        self._started = False
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index

    @property
    def usage(self) -> Usage:
        return self._usage

    @property
    def finish_reason(self) -> str | None:
        return self._finish_reason

    @property
    def text(self) -> str:
        return "".join(self._text)

    def _chunk(self, delta: Json | None, finish_reason: str | None = None) -> Json:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        return {"id": self.completion_id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": choices}

    def feed(self, event: Json) -> list[Json]:
        """The chunks to emit for one Anthropic event (its parsed ``data``)."""
        etype = event.get("type")
        if etype == "error":
            err = event.get("error") or {}
            raise UpstreamError(str(err.get("message") or "upstream stream error"), code=err.get("type"))
        out: list[Json] = []
        if not self._started and etype in ("message_start", "content_block_start", "content_block_delta",
                                           "message_delta", "message_stop"):
            self._started = True
            out.append(self._chunk({"role": "assistant", "content": ""}))
        if etype == "message_start":
            self._usage.merge_max(Usage.from_anthropic((event.get("message") or {}).get("usage")))
        elif etype == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "text" and block.get("text"):
                out.append(self._text_chunk(block["text"]))
            elif block.get("type") == "tool_use":
                index = self._tool_index[int(event.get("index") or 0)] = len(self._tool_index)
                fn = {"name": block.get("name") or "", "arguments": ""}
                out.append(self._chunk({"tool_calls": [
                    {"index": index, "id": block.get("id") or "", "type": "function", "function": fn}]}))
        elif etype == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                out.append(self._text_chunk(delta["text"]))
            elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                tool = self._tool_index.get(int(event.get("index") or 0))
                if tool is not None:  # else: a server-tool block we did not surface
                    call = {"index": tool, "function": {"arguments": delta["partial_json"]}}
                    out.append(self._chunk({"tool_calls": [call]}))
        elif etype == "message_delta":
            self._usage.merge_max(Usage.from_anthropic(event.get("usage")))
            self._finish_reason = _finish_reason((event.get("delta") or {}).get("stop_reason"))
            out.append(self._chunk({}, self._finish_reason))
        elif etype == "message_stop" and self.include_usage:
            final = self._chunk(None)
            final["usage"] = self._usage.to_openai()
            out.append(final)
        return out  # ping, content_block_stop and future event types add nothing

    def _text_chunk(self, text: str) -> Json:
        self._text.append(text)
        return self._chunk({"content": text})


# ---- Anthropic request -> OpenAI request ------------------------------------------------------


def _image_part(block: Json, param: str) -> Json:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = str(source.get("url") or "")
    else:
        raise _unsupported(f"image source type {source.get('type')!r}", "OpenAI", f"{param}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _file_part(block: Json, param: str) -> Json:
    """An Anthropic ``document`` block as an OpenAI ``file`` part (or a text part for plain text)."""
    source = block.get("source") or {}
    stype = source.get("type")
    if stype == "base64" and source.get("media_type") == "application/pdf":
        file: Json = {"file_data": f"data:application/pdf;base64,{source.get('data')}",
                      "filename": str(block.get("title") or "document.pdf")}
        return {"type": "file", "file": file}
    if stype == "text":
        return {"type": "text", "text": str(source.get("data") or "")}
    raise InvalidRequest(f"{param}.source: {stype} documents cannot be translated for an OpenAI model "
                         "(base64 PDFs and text can)", param=f"{param}.source")


def _user_turn(content: Any, param: str) -> list[Json]:
    """One Anthropic user turn: its tool results as ``tool`` messages first, then its other content."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[Json] = []
    parts: list[Json] = []
    for i, block in enumerate(content or []):
        btype = _type_of(block)
        if btype == "text":
            parts.append({"type": "text", "text": block.get("text") or ""})
        elif btype == "image":
            parts.append(_image_part(block, f"{param}[{i}]"))
        elif btype == "tool_result":
            text = "\n\n".join(t for t in _texts(block.get("content"), f"{param}[{i}].content") if t)
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id") or "", "content": text})
        elif btype == "document":
            parts.append(_file_part(block, f"{param}[{i}]"))
        else:
            raise _unsupported(f"block type {btype!r}", "OpenAI", f"{param}[{i}]")
    if len(parts) == 1 and parts[0]["type"] == "text":
        out.append({"role": "user", "content": parts[0]["text"]})
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def _assistant_turn(content: Any, param: str) -> Json:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[Json] = []
    for i, block in enumerate(content or []):
        btype = _type_of(block)
        if btype == "text":
            texts.append(block.get("text") or "")
        elif btype == "tool_use":
            calls.append(_openai_tool_call(block))
        elif btype not in ("thinking", "redacted_thinking"):
            raise _unsupported(f"block type {btype!r}", "OpenAI", f"{param}[{i}]")
    msg: Json = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _openai_tools(tools: list[Any]) -> list[Json]:
    out = []
    for i, tool in enumerate(tools):
        ttype = tool.get("type", "custom") if isinstance(tool, dict) else None
        if isinstance(ttype, str) and ttype.startswith("web_search_"):
            continue  # becomes web_search_options (``_search_options``)
        if ttype != "custom":
            raise InvalidRequest(f"tool type {ttype!r} cannot be translated for an OpenAI model",
                                 param=f"tools[{i}]")
        fn: Json = {"name": tool.get("name")}
        if tool.get("description"):
            fn["description"] = tool["description"]
        fn["parameters"] = tool.get("input_schema") or dict(_EMPTY_SCHEMA)
        out.append({"type": "function", "function": fn})
    return out


def _search_options(tools: Any) -> Json | None:
    for tool in tools or []:
        if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search_"):
            loc = tool.get("user_location") or {}
            approx = {k: v for k, v in loc.items() if k in ("city", "region", "country", "timezone")}
            return {"user_location": {"type": "approximate", "approximate": approx}} if approx else {}
    return None


def _strict_ok(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts ``schema``: every object closed, every property required."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if node.get("type") == "object" or "properties" in node:
            props = node.get("properties") or {}
            if node.get("additionalProperties") is not False or set(node.get("required") or []) != set(props):
                return False
        stack.extend(v for v in node.values() if isinstance(v, dict | list))
    return True


def _reasoning_effort(req: Json, model: str) -> str | None:
    """OpenAI ``reasoning_effort`` for an Anthropic request's effort or thinking (None: neither)."""
    effort = (req.get("output_config") or {}).get("effort")
    thinking = req.get("thinking")
    if thinking is not None and not isinstance(thinking, dict):
        raise InvalidRequest("thinking: expected an object", param="thinking")
    wants = effort is not None or (thinking is not None and thinking.get("type") != "disabled")
    if not wants:
        return None
    param = "output_config.effort" if effort is not None else "thinking"
    if not model.startswith(_REASONING_MODEL_PREFIXES):
        raise InvalidRequest(f"{param}: {model} is not an OpenAI reasoning model, so it has no counterpart; "
                             "remove it or pick a reasoning model", param=param, code="unsupported_parameter")
    if effort is not None:
        if effort not in _EFFORT_TO_OPENAI:
            raise InvalidRequest(f"output_config.effort: {effort!r} is not one of {sorted(_EFFORT_TO_OPENAI)}",
                                 param="output_config.effort")
        return _EFFORT_TO_OPENAI[effort]
    assert thinking is not None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int):
        return "medium"  # adaptive thinking: the model decides
    return "low" if budget < 4096 else "medium" if budget < 16384 else "high"


def anthropic_request_to_openai(req: Json, *, model: str) -> Json:
    """An Anthropic Messages request body as an OpenAI Chat Completions request body for ``model``."""
    for name, why in _NO_OPENAI_COUNTERPART.items():
        if req.get(name):
            raise InvalidRequest(f"{name}: {why}", param=name, code="unsupported_parameter")
    messages: list[Json] = []
    system = "\n\n".join(t for t in _texts(req.get("system"), "system") if t)
    if system:
        messages.append({"role": "system", "content": system})
    for i, msg in enumerate(req.get("messages") or []):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role == "user":
            messages.extend(_user_turn(msg.get("content"), f"messages[{i}].content"))
        elif role == "assistant":
            messages.append(_assistant_turn(msg.get("content"), f"messages[{i}].content"))
        else:
            raise InvalidRequest(f"message role {role!r} is not supported", param=f"messages[{i}].role")

    out: Json = {"model": model, "messages": messages}
    if req.get("max_tokens") is not None:
        key = "max_completion_tokens" if model.startswith(_REASONING_MODEL_PREFIXES) else "max_tokens"
        out[key] = req["max_tokens"]
    for key in ("temperature", "top_p"):
        if req.get(key) is not None:
            out[key] = req[key]
    if req.get("stop_sequences"):
        out["stop"] = list(req["stop_sequences"])
    if req.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    user = (req.get("metadata") or {}).get("user_id")
    if user:
        out["user"] = user
    if req.get("tools"):
        out["tools"] = _openai_tools(req["tools"])
        choice = req.get("tool_choice") or {}
        ctype = choice.get("type")
        if ctype == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif ctype in _TOOL_CHOICE_TO_OPENAI:
            out["tool_choice"] = _TOOL_CHOICE_TO_OPENAI[ctype]
        elif ctype is not None:
            raise InvalidRequest(f"tool_choice type {ctype!r} is not supported", param="tool_choice.type")
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
        if not out["tools"]:
            del out["tools"]
            out.pop("tool_choice", None)
            out.pop("parallel_tool_calls", None)
        search = _search_options(req["tools"])
        if search is not None:
            out["web_search_options"] = search
    fmt = (req.get("output_config") or {}).get("format") or req.get("output_format")
    if fmt is not None:
        if _type_of(fmt) != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise InvalidRequest("output_config.format: expected {\"type\": \"json_schema\", \"schema\": {...}}",
                                 param="output_config.format")
        out["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": fmt["schema"], "strict": _strict_ok(fmt["schema"])}}
    effort = _reasoning_effort(req, model)
    if effort is not None:
        out["reasoning_effort"] = effort
    return out


# ---- OpenAI response -> Anthropic response ----------------------------------------------------


def _parse_arguments(raw: str | None) -> Json:
    try:
        value = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError("upstream returned tool call arguments that are not a JSON object")
    return value


def openai_to_anthropic_response(resp: Json, *, model: str) -> Json:
    """An OpenAI ``chat.completion`` (its choice 0 only) as an Anthropic ``message``."""
    choice = (resp.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[Json] = []
    text = message.get("content") or message.get("refusal")
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or "", "name": fn.get("name") or "",
                        "input": _parse_arguments(fn.get("arguments"))})
    return {"id": f"msg_{resp.get('id', '')}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": _stop_reason(choice.get("finish_reason")),
            "stop_sequence": None, "usage": Usage.from_openai(resp.get("usage")).to_anthropic()}


# ---- OpenAI stream -> Anthropic stream --------------------------------------------------------

_TEXT = -1  # the kind of the open block: _TEXT, or the OpenAI index of the tool call it carries


class OpenAIStreamToAnthropic:
    """Turns OpenAI ``chat.completion.chunk`` dicts into ``(event name, data)`` Anthropic SSE events.

    Blocks are sequential: a new text or tool-call block closes the open one first. Usage-only
    chunks (empty ``choices``) update usage, reported in ``message_delta`` by :meth:`finish`,
    which the caller invokes once the upstream stream ends (``[DONE]``).
    """

    def __init__(self, model: str, message_id: str) -> None:
        self.model = model
        self.message_id = message_id
        self._usage = Usage()
        self._stop_reason: str | None = None
        self._text: list[str] = []
        self._started = False
        self._finished = False
        self._blocks = 0  # content blocks started so far
        self._open: int | None = None
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool_calls index -> Anthropic block index
        self._tool_args: dict[int, list[str]] = {}  # OpenAI tool_calls index -> argument fragments
        self._tool_names: dict[int, str] = {}

    @property
    def usage(self) -> Usage:
        return self._usage

    def bad_arguments(self) -> str | None:
        """The name of the first tool call whose streamed arguments are not a JSON object (None: all are)."""
        for index, parts in self._tool_args.items():
            try:
                value = orjson.loads("".join(parts) or "{}")
            except orjson.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                return self._tool_names.get(index, "")
        return None

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    @property
    def text(self) -> str:
        return "".join(self._text)

    def _start(self) -> list[Event]:
        if self._started:
            return []
        self._started = True
        message: Json = {"id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
                         "content": [], "stop_reason": None, "stop_sequence": None,
                         "usage": self._usage.to_anthropic()}
        return [("message_start", {"type": "message_start", "message": message})]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1})]

    def _open_block(self, kind: int, block: Json) -> list[Event]:
        events = self._close()
        self._open = kind
        self._blocks += 1
        events.append(("content_block_start",
                       {"type": "content_block_start", "index": self._blocks - 1, "content_block": block}))
        return events

    @staticmethod
    def _delta(index: int, delta: Json) -> Event:
        return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    def feed(self, chunk: Json) -> list[Event]:
        """The events to emit for one OpenAI chunk (choice 0 only)."""
        if chunk.get("error"):
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else err
            raise UpstreamError(str(message or "upstream stream error"))
        if chunk.get("usage"):
            self._usage.merge_max(Usage.from_openai(chunk["usage"]))
        events = self._start()
        choice = (chunk.get("choices") or [None])[0]
        if not choice:
            return events
        delta = choice.get("delta") or {}
        text = delta.get("content") or delta.get("refusal")
        if text:
            if self._open != _TEXT:
                events += self._open_block(_TEXT, {"type": "text", "text": ""})
            self._text.append(text)
            events.append(self._delta(self._blocks - 1, {"type": "text_delta", "text": text}))
        for call in delta.get("tool_calls") or []:
            index = int(call.get("index") or 0)
            fn = call.get("function") or {}
            if index not in self._tool_blocks:
                block: Json = {"type": "tool_use", "id": call.get("id") or f"toolu_{self.message_id}_{index}",
                         "name": fn.get("name") or "", "input": {}}
                events += self._open_block(index, block)
                self._tool_blocks[index] = self._blocks - 1
                self._tool_names[index] = block["name"]
                self._tool_args[index] = []
            if fn.get("arguments"):
                self._tool_args[index].append(fn["arguments"])  # a late fragment of a closed call keeps its own block index
                partial = {"type": "input_json_delta", "partial_json": fn["arguments"]}
                events.append(self._delta(self._tool_blocks[index], partial))
        if choice.get("finish_reason"):
            self._stop_reason = _stop_reason(choice["finish_reason"])
        return events

    def finish(self) -> list[Event]:
        """Close the open block and the message; later calls return nothing."""
        if self._finished:
            return []
        self._finished = True
        self._stop_reason = self._stop_reason or "end_turn"
        delta = {"type": "message_delta", "delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
                 "usage": self._usage.to_anthropic()}
        stop = {"type": "message_stop"}
        return [*self._start(), *self._close(), ("message_delta", delta), ("message_stop", stop)]
