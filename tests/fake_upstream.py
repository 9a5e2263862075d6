"""A real HTTP fake of the OpenAI and Anthropic APIs, for the test suite.

`FakeUpstream` runs an aiohttp app in a background thread with its own event loop, bound to
127.0.0.1 on an ephemeral port, so it works the same from sync tests, async tests and subprocesses
(the gateway under test connects to it over real TCP).

    with FakeUpstream() as fake:
        openai.OpenAI(base_url=fake.openai_url, api_key="x")       # POST /v1/chat/completions
        anthropic.Anthropic(base_url=fake.url, api_key="x")        # POST /v1/messages

Auth: OpenAI routes need `Authorization: Bearer <anything>` (401 otherwise); /v1/messages needs
`x-api-key` or `Authorization: Bearer` (anthropic SDK 2.x sends the key as a Bearer token) and
`anthropic-version` (401 / 400 otherwise), plus `max_tokens` in the body.

Routes: POST /v1/chat/completions, POST /v1/messages, POST /v1/messages/count_tokens (the prompt
tokens below; unknown fields are a 400 as at Anthropic), POST /v1/responses (the Responses API,
streamed with its typed events; responses are kept in `.stored` unless `store` is false, and an
unknown `previous_response_id` is a 404), POST /v1/completions (legacy), POST /v1/embeddings,
GET /v1/models.

Structured output: a chat `response_format` json_schema, an Anthropic `output_config.format` (or
`output_format`) or a Responses `text.format` json_schema makes the reply the JSON of
`schema_reply(schema, reply_text)` (strings are the reply text, integers 1, numbers 1.5, booleans
true). `.bad_tool_arguments = True` makes OpenAI tool calls carry arguments that are not JSON
(`BAD_TOOL_ARGS`); `.reset()` clears it.

Deterministic behaviour (the helpers below compute the same values, so tests can assert on them):
- reply text: `reply_text(messages)` = "fake reply to: " + first 60 chars of the last user message's
  text (text parts joined with a space), plus " [N image(s)]" when that message carries images.
- tool call: when the request has `tools`, the last message is a user message and its text contains
  "call tool", the answer is a call of the first tool with arguments {"q": "x"}
  (OpenAI finish_reason "tool_calls", Anthropic stop_reason "tool_use"); it counts
  TOOL_CALL_TOKENS output tokens.
- prompt tokens: `prompt_tokens(messages)` = max(1, len(json.dumps(messages)) // 4) (system excluded
  on Anthropic); output tokens = whitespace words of the reply (per choice; OpenAI sums over `n`).
- max_tokens / max_completion_tokens smaller than the reply's word count truncates the reply to
  that many words: finish_reason "length" / stop_reason "max_tokens".
- "cachedprompt" anywhere in the message (or system) text: OpenAI reports
  prompt_tokens_details.cached_tokens = prompt_tokens // 2; Anthropic reports
  cache_read_input_tokens = total // 2, input_tokens = total - cache_read_input_tokens and
  cache_creation_input_tokens = CACHE_CREATION_TOKENS (7).

Instrumentation (thread-safe): `.requests` is a copy of every attempt received, each
{"method", "path", "headers" (lower-case keys), "json" (None if absent/invalid), "t" (time.time())};
`.reset()` clears requests and faults. Faults: `.add_fault(**behaviour)` appends to a FIFO; each
request consumes the first fault whose `path` matches (no path: any request), `times` (default 1)
requests in a row. Behaviours (may be combined; `delay` happens first):
- status=429|500|..., retry_after=1 (Retry-After header), headers={...}: error in the route's envelope
- delay=2.0: sleep before answering
- disconnect_after=N: on a stream, send the preamble and N content chunks/events, then abort the
  TCP connection; on a non-stream request, abort before any response bytes
- stall=5.0: on a stream, send the first content chunk, sleep, then finish; non-stream: like delay
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

REPLY_PREFIX = "fake reply to: "
SNIPPET_CHARS = 60
TOOL_ARGS: dict[str, str] = {"q": "x"}
TOOL_CALL_TOKENS = 5
CACHE_MARKER = "cachedprompt"
CACHE_CREATION_TOKENS = 7
EMBEDDING_DIMS = 8
STREAM_PIECES = 4

OPENAI_MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
ANTHROPIC_MODELS = ["claude-3-5-haiku-latest", "claude-sonnet-4-5"]


# --------------------------------------------------------------------------- pure helpers


def content_text(content: Any) -> tuple[str, int]:
    """(text of a message's content, number of images in it); list parts' texts joined by a space."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    texts: list[str] = []
    images = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind in ("image_url", "image", "input_image"):
                    images += 1
    return " ".join(texts), images


def _last_user(messages: list[Any]) -> dict[str, Any] | None:
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return msg
    return None


def reply_text(messages: list[Any]) -> str:
    """The deterministic reply: "fake reply to: <last user text[:60]>" (+ " [N image(s)]")."""
    msg = _last_user(messages)
    text, images = content_text(msg.get("content")) if msg else ("", 0)
    reply = REPLY_PREFIX + text[:SNIPPET_CHARS]
    if images:
        reply += f" [{images} image(s)]"
    return reply


def wants_tool_call(messages: list[Any], tools: Any) -> bool:
    """True when tools are offered and the last message is a user message asking to "call tool"."""
    if not tools or not messages:
        return False
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return False
    return "call tool" in content_text(last.get("content"))[0]


def prompt_tokens(messages: Any) -> int:
    return max(1, len(json.dumps(messages)) // 4)


def word_count(text: str) -> int:
    return len(text.split())


def mentions_cache_marker(messages: list[Any], system: Any = None) -> bool:
    texts = [content_text(system)[0]] if system is not None else []
    for msg in messages:
        if isinstance(msg, dict):
            texts.append(content_text(msg.get("content"))[0])
    return any(CACHE_MARKER in t for t in texts)


def truncate(text: str, limit: Any) -> tuple[str, bool]:
    """Cut `text` to `limit` words when limit is an int below its word count: (text, truncated)."""
    if isinstance(limit, int) and not isinstance(limit, bool) and limit < word_count(text):
        return " ".join(text.split()[: max(0, limit)]), True
    return text, False


def split_pieces(text: str, pieces: int = STREAM_PIECES) -> list[str]:
    """Split text into at most `pieces` consecutive parts (word boundaries) that concatenate to it."""
    words = re.findall(r"\s*\S+\s*", text)
    if not words:
        return [text] if text else []
    size = -(-len(words) // pieces)
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def embedding_vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()[:EMBEDDING_DIMS]
    raw = [(b - 127.5) / 127.5 for b in digest]
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    return [v / norm for v in raw]


def tool_name(tool: Any) -> str:
    if isinstance(tool, dict):
        fn = tool.get("function")
        if isinstance(fn, dict) and fn.get("name"):
            return str(fn["name"])
        if tool.get("name"):
            return str(tool["name"])
    return "tool"


BAD_TOOL_ARGS = '{"q": "x"'  # cut short: not JSON


def openai_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a Chat Completions request asks the answer to follow (response_format)."""
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        return (rf.get("json_schema") or {}).get("schema") or {}
    return None


def anthropic_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of an Anthropic request's structured output (output_config.format, or the
    beta output_format)."""
    fmt = (body.get("output_config") or {}).get("format") or body.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return fmt.get("schema") or {}
    return None


def schema_reply(schema: dict[str, Any], text: str) -> Any:
    """A deterministic value that follows ``schema``: strings are ``text``, numbers 1, booleans true."""
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {k: schema_reply(v, text) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [schema_reply(schema.get("items") or {}, text)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if "enum" in schema:
        return schema["enum"][0]
    return text


def responses_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A Responses API input as chat-like messages (text parts as {"type": "text"})."""
    inp = body.get("input")
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}]
    out: list[dict[str, Any]] = []
    for item in inp or []:
        if not isinstance(item, dict):
            continue
        if item.get("type", "message") == "message":
            content = item.get("content")
            if isinstance(content, list):
                content = [{"type": "text", "text": p.get("text", "")} if p.get("type") in ("input_text", "output_text")
                           else {"type": "image_url"} if p.get("type") == "input_image" else p for p in content]
            out.append({"role": item.get("role"), "content": content})
        elif item.get("type") == "function_call_output":
            out.append({"role": "tool", "content": str(item.get("output"))})
    return out


# --------------------------------------------------------------------------- faults


@dataclass
class _Fault:
    path: str | None = None
    times: int = 1
    status: int | None = None
    retry_after: float | int | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float | None = None
    disconnect_after: int | None = None
    stall: float | None = None


class _Abort(Exception):
    """Raised inside a handler after the transport has been aborted."""


_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _openai_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    etype, code = _OPENAI_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    hdrs = {"x-request-id": "req_" + uuid.uuid4().hex, **(headers or {})}
    return web.json_response(body, status=status, headers=hdrs)


def _anthropic_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    etype = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    rid = "req_" + uuid.uuid4().hex
    body = {"type": "error", "error": {"type": etype, "message": message}, "request_id": rid}
    return web.json_response(body, status=status, headers={"request-id": rid, **(headers or {})})


# --------------------------------------------------------------------------- the server


class FakeUpstream:
    """OpenAI + Anthropic fake on 127.0.0.1:<ephemeral>, served from a background thread."""

    def __init__(self, *, host: str = "127.0.0.1", shutdown_timeout: float = 0.5) -> None:
        self.host = host
        self.port: int | None = None
        self._shutdown_timeout = shutdown_timeout
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._faults: list[_Fault] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.stored: dict[str, dict[str, Any]] = {}  # Responses API: id -> response it created
        self.bad_tool_arguments = False  # OpenAI chat: tool call arguments that are not JSON

    # ---- lifecycle

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeUpstream is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            raise RuntimeError("FakeUpstream already started")
        ready = threading.Event()
        errors: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._astart())
            except BaseException as exc:  # surfaced to start()'s caller
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]
        if self.port is None:
            raise RuntimeError("FakeUpstream did not start within 10 s")
        return self

    async def _astart(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/responses/input_tokens", self._input_tokens)
        app.router.add_route("*", "/v1/responses/{id}", self._stored_response)
        app.router.add_get("/v1/responses/{id}/input_items", self._stored_response)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None and not loop.is_closed():
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            try:
                fut.result(timeout=self._shutdown_timeout + 10)
            finally:
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)
        self._thread = None
        self._loop = None
        self._runner = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- instrumentation

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self.bad_tool_arguments = False

    def add_fault(self, **behaviour: Any) -> None:
        fault = _Fault(**behaviour)
        if fault.times < 1:
            raise ValueError("times must be >= 1")
        if (
            fault.status is None
            and fault.delay is None
            and fault.disconnect_after is None
            and fault.stall is None
        ):
            raise ValueError("a fault needs one of status, delay, disconnect_after, stall")
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.path is None or fault.path == path:
                    fault.times -= 1
                    if fault.times <= 0:
                        del self._faults[i]
                    return fault
        return None

    async def _receive(self, request: web.Request) -> tuple[Any, bool, _Fault | None]:
        """Record the attempt, take its fault and run the fault's delay: (json, json_ok, fault)."""
        raw = await request.read()
        body: Any = None
        ok = True
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                ok = False
        entry = {
            "method": request.method,
            "path": request.path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "json": body,
            "t": time.time(),
        }
        with self._lock:
            self._requests.append(entry)
        fault = self._take_fault(request.path)
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        return body, ok, fault

    @staticmethod
    def _fault_headers(fault: _Fault) -> dict[str, str]:
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        return headers

    @staticmethod
    def _abort(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()
        raise _Abort()

    async def _nonstream_faults(self, request: web.Request, fault: _Fault | None) -> None:
        if fault is None:
            return
        if fault.disconnect_after is not None:
            self._abort(request)
        if fault.stall:
            await asyncio.sleep(fault.stall)

    # ---- OpenAI

    @staticmethod
    def _openai_auth_ok(request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and bool(auth[7:].strip())

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._chat_completions_inner(request)
        except _Abort:
            return web.Response(status=499)  # never reaches the client: the transport is gone

    async def _chat_completions_inner(self, request: web.Request) -> web.StreamResponse:
        body, ok, fault = await self._receive(request)
        if fault is not None and fault.status:
            return _openai_error(fault.status, f"fake fault {fault.status}", self._fault_headers(fault))
        if not self._openai_auth_ok(request):
            return _openai_error(401, "Incorrect API key provided (fake upstream).")
        if not ok or not isinstance(body, dict):
            return _openai_error(400, "We could not parse the JSON body of your request.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _openai_error(400, "'messages' is a required property")
        if not body.get("model"):
            return _openai_error(400, "you must provide a model parameter")
        n = body.get("n") or 1
        if not isinstance(n, int) or n < 1:
            return _openai_error(400, "'n' must be a positive integer")

        model = body["model"]
        cid = "chatcmpl-fake" + uuid.uuid4().hex[:20]
        created = int(time.time())
        tool = wants_tool_call(messages, body.get("tools"))
        if tool:
            name = tool_name(body["tools"][0])
            args = BAD_TOOL_ARGS if self.bad_tool_arguments else json.dumps(TOOL_ARGS)
            text, finish, per_choice = "", "tool_calls", TOOL_CALL_TOKENS
        else:
            limit = body.get("max_completion_tokens", body.get("max_tokens"))
            text, cut = truncate(reply_text(messages), limit)
            finish, per_choice = ("length" if cut else "stop"), word_count(text)
            schema = openai_schema(body)
            if schema is not None:
                text, finish = json.dumps(schema_reply(schema, reply_text(messages))), "stop"
        pt = prompt_tokens(messages)
        ct = per_choice * n
        usage = {
            "prompt_tokens": pt,
            "completion_tokens": ct,
            "total_tokens": pt + ct,
            "prompt_tokens_details": {
                "cached_tokens": pt // 2 if mentions_cache_marker(messages) else 0,
                "audio_tokens": 0,
            },
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        headers = {"x-request-id": "req_" + uuid.uuid4().hex, "openai-processing-ms": "1"}

        if not body.get("stream"):
            await self._nonstream_faults(request, fault)
            choices = []
            for i in range(n):
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": None if tool else text,
                    "refusal": None,
                }
                if tool:
                    message["tool_calls"] = [
                        {
                            "id": f"call_fake{i}{cid[-8:]}",
                            "type": "function",
                            "function": {"name": name, "arguments": args},
                        }
                    ]
                choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": finish})
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "fp_fake",
                    "choices": choices,
                    "usage": usage,
                },
                headers=headers,
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                **headers,
            }
        )
        await resp.prepare(request)

        def chunk(choices: list[dict[str, Any]], with_usage: Any = None) -> bytes:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": choices,
            }
            if include_usage:
                obj["usage"] = with_usage
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        def choice(i: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        if tool:
            first = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_fake" + cid[-8:],
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ],
            }
            pieces = [args[: len(args) // 2], args[len(args) // 2 :]]
            deltas = [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces]
        else:
            first = {"role": "assistant", "content": "", "refusal": None}
            deltas = [{"content": p} for p in split_pieces(text)]

        for i in range(n):
            await resp.write(chunk([choice(i, first)]))
        sent = 0
        for delta in deltas:
            for i in range(n):
                if (
                    fault is not None
                    and fault.disconnect_after is not None
                    and sent >= fault.disconnect_after
                ):
                    self._abort(request)
                await resp.write(chunk([choice(i, delta)]))
                sent += 1
                if fault is not None and fault.stall and sent == 1:
                    await asyncio.sleep(fault.stall)
        if fault is not None and fault.disconnect_after is not None:
            self._abort(request)
        for i in range(n):
            await resp.write(chunk([choice(i, {}, finish)]))
        if include_usage:
            await resp.write(chunk([], usage))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        try:
            body, ok, fault = await self._receive(request)
            if fault is not None and fault.status:
                return _openai_error(fault.status, f"fake fault {fault.status}", self._fault_headers(fault))
            if not self._openai_auth_ok(request):
                return _openai_error(401, "Incorrect API key provided (fake upstream).")
            if not ok or not isinstance(body, dict) or "input" not in body:
                return _openai_error(400, "'input' is a required property")
            await self._nonstream_faults(request, fault)
        except _Abort:
            return web.Response(status=499)
        raw_inputs = body["input"]
        if isinstance(raw_inputs, str) or (
            isinstance(raw_inputs, list) and raw_inputs and isinstance(raw_inputs[0], int)
        ):
            raw_inputs = [raw_inputs]
        if not isinstance(raw_inputs, list) or not raw_inputs:
            return _openai_error(400, "'input' must be a string or a non-empty array")
        data = []
        tokens = 0
        for i, item in enumerate(raw_inputs):
            if isinstance(item, list):  # token ids
                text, n_tok = json.dumps(item), len(item)
            else:
                text = str(item)
                n_tok = max(1, len(text) // 4)
            tokens += n_tok
            vec = embedding_vector(text)
            emb: Any = vec
            if body.get("encoding_format") == "base64":
                emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "text-embedding-3-small"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            headers={"x-request-id": "req_" + uuid.uuid4().hex},
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        _, _, fault = await self._receive(request)
        anthropic_style = "anthropic-version" in request.headers
        if fault is not None and fault.status:
            make = _anthropic_error if anthropic_style else _openai_error
            return make(fault.status, f"fake fault {fault.status}", self._fault_headers(fault))
        if anthropic_style:
            if not request.headers.get("x-api-key", "").strip() and not self._openai_auth_ok(request):
                return _anthropic_error(401, "x-api-key header is required")
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in ANTHROPIC_MODELS
            ]
            return web.json_response(
                {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
            )
        if not self._openai_auth_ok(request):
            return _openai_error(401, "Incorrect API key provided (fake upstream).")
        models = [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "openai"} for m in OPENAI_MODELS
        ]
        return web.json_response({"object": "list", "data": models})

    # ---- Anthropic

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._messages_inner(request)
        except _Abort:
            return web.Response(status=499)

    async def _messages_inner(self, request: web.Request) -> web.StreamResponse:
        body, ok, fault = await self._receive(request)
        if fault is not None and fault.status:
            return _anthropic_error(fault.status, f"fake fault {fault.status}", self._fault_headers(fault))
        if not request.headers.get("x-api-key", "").strip() and not self._openai_auth_ok(request):
            # anthropic SDK 2.x sends the api key as `Authorization: Bearer`; raw clients use x-api-key
            return _anthropic_error(401, "x-api-key header is required")
        if not request.headers.get("anthropic-version", "").strip():
            return _anthropic_error(400, "anthropic-version: header is required")
        if not ok or not isinstance(body, dict):
            return _anthropic_error(400, "There was an issue with the JSON body of your request.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _anthropic_error(400, "messages: Field required")
        if not body.get("model"):
            return _anthropic_error(400, "model: Field required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            return _anthropic_error(400, "max_tokens: Field required")

        model = body["model"]
        mid = "msg_fake" + uuid.uuid4().hex[:20]
        tool = wants_tool_call(messages, body.get("tools"))
        if tool:
            name = tool_name(body["tools"][0])
            tool_id = "toolu_fake" + uuid.uuid4().hex[:16]
            text, stop_reason, output_tokens = "", "tool_use", TOOL_CALL_TOKENS
        else:
            text, cut = truncate(reply_text(messages), max_tokens)
            stop_reason, output_tokens = ("max_tokens" if cut else "end_turn"), word_count(text)
            schema = anthropic_schema(body)
            if schema is not None:
                text, stop_reason = json.dumps(schema_reply(schema, reply_text(messages))), "end_turn"
        total = prompt_tokens(messages)
        if mentions_cache_marker(messages, body.get("system")):
            cache_read, cache_creation = total // 2, CACHE_CREATION_TOKENS
        else:
            cache_read, cache_creation = 0, 0
        usage = {
            "input_tokens": total - cache_read,
            "cache_creation_input_tokens": cache_creation,
            "cache_read_input_tokens": cache_read,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }
        rid = "req_" + uuid.uuid4().hex
        if tool:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": tool_id,
                "name": name,
                "input": dict(TOOL_ARGS),
            }
        else:
            block = {"type": "text", "text": text}
        message: dict[str, Any] = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }

        if not body.get("stream"):
            await self._nonstream_faults(request, fault)
            return web.json_response(message, headers={"request-id": rid})

        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": rid,
            }
        )
        await resp.prepare(request)

        async def event(name: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        start_msg = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        await event("message_start", {"type": "message_start", "message": start_msg})
        if tool:
            args = json.dumps(TOOL_ARGS)
            start_block: dict[str, Any] = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ("", args[:4], args[4:])]
        else:
            start_block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in split_pieces(text)]
        await event(
            "content_block_start", {"type": "content_block_start", "index": 0, "content_block": start_block}
        )
        await event("ping", {"type": "ping"})
        for sent, delta in enumerate(deltas):
            if fault is not None and fault.disconnect_after is not None and sent >= fault.disconnect_after:
                self._abort(request)
            await event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            if fault is not None and fault.stall and sent == 0:
                await asyncio.sleep(fault.stall)
        if fault is not None and fault.disconnect_after is not None:
            self._abort(request)
        await event("content_block_stop", {"type": "content_block_stop", "index": 0})
        await event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
        await event("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        return resp


# --------------------------------------------------------------------------- more OpenAI and Anthropic routes


async def _responses_handler(self: FakeUpstream, request: web.Request) -> web.StreamResponse:
    try:
        return await _responses_inner(self, request)
    except _Abort:
        return web.Response(status=499)  # never reaches the client: the transport is gone


async def _responses_inner(self: FakeUpstream, request: web.Request) -> web.StreamResponse:
    body, ok, fault = await self._receive(request)
    if fault is not None and fault.status:
        return _openai_error(fault.status, f"fake fault {fault.status}", self._fault_headers(fault))
    if not self._openai_auth_ok(request):
        return _openai_error(401, "Incorrect API key provided (fake upstream).")
    if not ok or not isinstance(body, dict) or not body.get("model"):
        return _openai_error(400, "model: required")
    prev = body.get("previous_response_id")
    if prev is not None and prev not in self.stored:
        err = {"error": {"message": f"Previous response with id '{prev}' not found.", "type": "invalid_request_error",
                         "param": "previous_response_id", "code": "previous_response_not_found"}}
        return web.json_response(err, status=404)
    messages = responses_messages(body)
    rid = "resp_fake" + uuid.uuid4().hex[:20]
    tool = wants_tool_call(messages, body.get("tools"))
    output: list[dict[str, Any]] = []
    if tool:
        call = {"type": "function_call", "id": "fc_fake" + uuid.uuid4().hex[:12], "call_id": "call_" + uuid.uuid4().hex[:12],
                "name": tool_name(body["tools"][0]), "arguments": json.dumps(TOOL_ARGS), "status": "completed"}
        output.append(call)
        out_tokens, status = TOOL_CALL_TOKENS, "completed"
    else:
        text, cut = truncate(reply_text(messages), body.get("max_output_tokens"))
        fmt = (body.get("text") or {}).get("format") or {}
        if fmt.get("type") == "json_schema":
            text, cut = json.dumps(schema_reply(fmt.get("schema") or {}, reply_text(messages))), False
        output.append({"type": "message", "id": "msg_fake" + uuid.uuid4().hex[:12], "status": "completed",
                       "role": "assistant",
                       "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
        out_tokens, status = word_count(text), ("incomplete" if cut else "completed")
    pt = prompt_tokens(messages)
    usage = {"input_tokens": pt, "input_tokens_details": {"cached_tokens": pt // 2 if mentions_cache_marker(messages) else 0},
             "output_tokens": out_tokens, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": pt + out_tokens}
    resp: dict[str, Any] = {
        "id": rid, "object": "response", "created_at": int(time.time()), "status": status, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"], "output": output, "parallel_tool_calls": True, "previous_response_id": prev,
        "reasoning": {"effort": None, "summary": None}, "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0), "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [], "top_p": 1.0,
        "truncation": "disabled", "usage": usage, "user": None, "metadata": {},
    }
    if resp["store"]:
        self.stored[rid] = resp
    if not body.get("stream"):
        return web.json_response(resp, headers={"x-request-id": "req_" + uuid.uuid4().hex})
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await stream.prepare(request)
    seq = 0

    async def event(etype: str, **data: Any) -> None:
        nonlocal seq
        if fault is not None and fault.disconnect_after is not None and etype == "response.output_text.delta":
            if fault.disconnect_after <= 0:
                self._abort(request)
            fault.disconnect_after -= 1
        await stream.write(f"event: {etype}\ndata: {json.dumps({'type': etype, 'sequence_number': seq, **data})}\n\n".encode())
        seq += 1

    start = {**resp, "status": "in_progress", "output": [], "usage": None}
    await event("response.created", response=start)
    await event("response.in_progress", response=start)
    for i, item in enumerate(output):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            await event("response.output_item.added", output_index=i, item={**item, "status": "in_progress", "content": []})
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            common = {"item_id": item["id"], "output_index": i, "content_index": 0}
            await event("response.content_part.added", **common, part=part)
            for piece in split_pieces(text):
                await event("response.output_text.delta", **common, delta=piece, logprobs=[])
            await event("response.output_text.done", **common, text=text, logprobs=[])
            await event("response.content_part.done", **common, part={**part, "text": text})
        else:
            await event("response.output_item.added", output_index=i, item={**item, "status": "in_progress", "arguments": ""})
            await event("response.function_call_arguments.delta", item_id=item["id"], output_index=i, delta=item["arguments"])
            await event("response.function_call_arguments.done", item_id=item["id"], output_index=i,
                        arguments=item["arguments"], name=item["name"])
        await event("response.output_item.done", output_index=i, item=item)
    await event("response.completed" if status == "completed" else "response.incomplete", response=resp)
    await stream.write_eof()
    return stream


async def _count_tokens_handler(self: FakeUpstream, request: web.Request) -> web.StreamResponse:
    body, ok, fault = await self._receive(request)
    if fault is not None and fault.status:
        return _anthropic_error(fault.status, f"fake fault {fault.status}", self._fault_headers(fault))
    if not request.headers.get("x-api-key", "").strip() and not self._openai_auth_ok(request):
        return _anthropic_error(401, "x-api-key header is required")
    if not ok or not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return _anthropic_error(400, "messages: Field required")
    extra = sorted(set(body) - {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers",
                                "output_config", "output_format", "context_management"})
    if extra:
        return _anthropic_error(400, f"{extra[0]}: Extra inputs are not permitted")
    return web.json_response({"input_tokens": prompt_tokens(body["messages"])})


async def _completions_handler(self: FakeUpstream, request: web.Request) -> web.StreamResponse:
    body, ok, fault = await self._receive(request)
    if fault is not None and fault.status:
        return _openai_error(fault.status, f"fake fault {fault.status}", self._fault_headers(fault))
    if not self._openai_auth_ok(request):
        return _openai_error(401, "Incorrect API key provided (fake upstream).")
    if not ok or not isinstance(body, dict) or "prompt" not in body:
        return _openai_error(400, "'prompt' is a required property")
    prompt = body["prompt"] if isinstance(body["prompt"], str) else json.dumps(body["prompt"])
    text, cut = truncate(REPLY_PREFIX + prompt[:SNIPPET_CHARS], body.get("max_tokens", 16))
    pt, ct = max(1, len(prompt) // 4), word_count(text)
    usage = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}
    cid = "cmpl-fake" + uuid.uuid4().hex[:20]
    finish = "length" if cut else "stop"
    base = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": body.get("model")}
    if not body.get("stream"):
        return web.json_response({**base, "choices": [{"index": 0, "text": text, "logprobs": None,
                                                       "finish_reason": finish}], "usage": usage})
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await stream.prepare(request)
    for i, piece in enumerate(split_pieces(text)):
        last = i == len(split_pieces(text)) - 1
        chunk = {**base, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": finish if last else None}]}
        await stream.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    if (body.get("stream_options") or {}).get("include_usage"):
        await stream.write(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
    await stream.write(b"data: [DONE]\n\n")
    await stream.write_eof()
    return stream


async def _stored_response_handler(self: FakeUpstream, request: web.Request) -> web.StreamResponse:
    await self._receive(request)
    if not self._openai_auth_ok(request):
        return _openai_error(401, "Incorrect API key provided (fake upstream).")
    rid = request.match_info["id"]
    resp = self.stored.get(rid)
    if resp is None:
        return _openai_error(404, f"Response with id '{rid}' not found.")
    if request.path.endswith("/input_items"):
        return web.json_response({"object": "list", "data": [], "has_more": False})
    if request.method == "DELETE":
        del self.stored[rid]
        return web.json_response({"id": rid, "object": "response", "deleted": True})
    return web.json_response(resp)


async def _input_tokens_handler(self: FakeUpstream, request: web.Request) -> web.StreamResponse:
    body, ok, _ = await self._receive(request)
    if not self._openai_auth_ok(request):
        return _openai_error(401, "Incorrect API key provided (fake upstream).")
    if not ok or not isinstance(body, dict):
        return _openai_error(400, "We could not parse the JSON body of your request.")
    return web.json_response({"object": "response.input_tokens", "input_tokens": prompt_tokens(responses_messages(body))})


FakeUpstream._responses = _responses_handler  # type: ignore[attr-defined]
FakeUpstream._input_tokens = _input_tokens_handler  # type: ignore[attr-defined]
FakeUpstream._stored_response = _stored_response_handler  # type: ignore[attr-defined]
FakeUpstream._count_tokens = _count_tokens_handler  # type: ignore[attr-defined]
FakeUpstream._completions = _completions_handler  # type: ignore[attr-defined]
