"""The offline demo provider: deterministic answers with realistic usage numbers, no network.

Models: ``echo`` answers "Echo: <last user text>"; ``lorem`` writes placeholder prose up to
``max_tokens``; ``embed`` returns deterministic embeddings. Token counts follow the usual rule of
thumb (about 4 characters per token, a few tokens of overhead per message, 85 per image) so cost
reports, budgets and limits behave as they would with a real model. Priced in the bundled
pricing file like a small commercial model, so a newcomer sees money move.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..errors import ModelNotFound
from . import translate
from .http import Event
from .openai import OpenAIFormat

MODELS = ("echo", "lorem", "embed")
_LOREM = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
          "et dolore magna aliqua").split()


def _tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _content_text(content: Any) -> tuple[str, int]:
    """(text, image count) of an OpenAI message content."""
    if isinstance(content, str):
        return content, 0
    texts, images = [], 0
    for part in content or []:
        if isinstance(part, dict):
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                images += 1
    return " ".join(texts), images


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    total = 3
    for m in messages:
        text, images = _content_text(m.get("content"))
        total += 4 + _tokens(text) + 85 * images
        for tc in m.get("tool_calls") or []:
            total += _tokens(orjson.dumps(tc).decode())
    return total


class DemoProvider(OpenAIFormat):
    type = "demo"

    def __init__(self, name: str = "demo") -> None:
        super().__init__(name, list(MODELS))

    def _answer(self, payload: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        model = payload.get("model")
        if model not in ("echo", "lorem"):
            raise ModelNotFound(f"the demo provider has no chat model {model!r}; try demo/echo or demo/lorem")
        messages = payload.get("messages") or []
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
        last = next((m for m in reversed(messages) if m.get("role") == "user"), None)
        user_text = _content_text(last.get("content"))[0] if last else ""
        if model == "echo":
            reply = "Echo: " + user_text
        else:
            n = int(limit or 64)
            reply = " ".join(_LOREM[i % len(_LOREM)] for i in range(n))
        finish = "stop"
        if limit is not None and _tokens(reply) > int(limit):
            reply = reply[: max(0, int(limit)) * 4]
            finish = "length"
        p = prompt_tokens(messages)
        usage = {"prompt_tokens": p, "completion_tokens": _tokens(reply), "total_tokens": p + _tokens(reply),
                 "prompt_tokens_details": {"cached_tokens": 0}}
        return reply, finish, usage

    async def _send(self, path: str, payload: dict[str, Any], timeout: float) -> bytes:
        if path == "/embeddings":
            return self._embed(payload)
        reply, finish, usage = self._answer(payload)
        n = int(payload.get("n") or 1)
        return orjson.dumps({
            "id": "chatcmpl-demo" + format(random.getrandbits(64), "x"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": f"{self.name}/{payload['model']}",
            "choices": [{"index": i, "message": {"role": "assistant", "content": reply}, "finish_reason": finish,
                         "logprobs": None} for i in range(n)],
            "usage": {**usage, "completion_tokens": usage["completion_tokens"] * n,
                      "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"] * n},
        })

    async def _open(self, payload: dict[str, Any], timeout: float,
                    path: str = "/chat/completions") -> tuple[AsyncIterator[list[Event] | bytes], Any]:
        reply, finish, usage = self._answer(payload)
        cid = "chatcmpl-demo" + format(random.getrandbits(64), "x")
        created = int(time.time())
        model = f"{self.name}/{payload['model']}"

        def chunk(delta: dict[str, Any], fin: str | None = None) -> Event:
            return None, orjson.dumps({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                 "choices": [{"index": 0, "delta": delta, "finish_reason": fin}]})

        async def gen() -> AsyncIterator[list[Event]]:
            yield [chunk({"role": "assistant", "content": ""})]
            words = reply.split(" ")
            for i, w in enumerate(words):
                yield [chunk({"content": w if i == 0 else " " + w})]
            tail = [chunk({}, finish)]
            if (payload.get("stream_options") or {}).get("include_usage"):
                tail.append((None, orjson.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                                 "model": model, "choices": [], "usage": usage})))
            yield tail + [(None, b"[DONE]")]

        return gen(), None

    async def list_models(self, timeout: float) -> list[str] | None:
        return list(MODELS)

    async def count_tokens(self, body: dict[str, Any], model: str, timeout: float) -> int:
        """The demo's own rule of thumb, the same one its answers report as prompt tokens."""
        return prompt_tokens(translate.anthropic_request_to_openai(body, model=model)["messages"])

    async def _count_chat(self, chat: dict[str, Any], model: str) -> int:
        return prompt_tokens(chat.get("messages") or [])

    def _embed(self, payload: dict[str, Any]) -> bytes:
        if payload.get("model") != "embed":
            raise ModelNotFound(f"the demo provider has no embedding model {payload.get('model')!r}; try demo/embed")
        inputs = payload.get("input")
        items = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data, total = [], 0
        for i, text in enumerate(items):
            s = text if isinstance(text, str) else orjson.dumps(text).decode()
            total += _tokens(s)
            digest = hashlib.sha256(s.encode()).digest()
            vec = [(b - 127.5) / 127.5 for b in digest[:16]]
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            data.append({"object": "embedding", "index": i, "embedding": [v / norm for v in vec]})
        return orjson.dumps({"object": "list", "data": data, "model": "embed",
                             "usage": {"prompt_tokens": total, "total_tokens": total}})
