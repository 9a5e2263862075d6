"""Counting the input tokens of a request for an OpenAI-format model, for ``/v1/messages/count_tokens``
(Anthropic answers that endpoint itself; OpenAI has none).

The count uses the model family's real tokeniser (``quicktok``: o200k for GPT-4o, GPT-4.1, GPT-5 and
the o-series, cl100k for GPT-4 and GPT-3.5, Llama 3/4 and Qwen for open models by name) and OpenAI's
chat accounting: 3 tokens per message plus its role and content, 3 priming the reply; tool
definitions count the tokens of their JSON. That is what the model sees up to a few tokens of
formatting. Images and documents have no count without the provider's own sizing rules, and a
model with no known tokeniser has none at all: both are a clear 400, never a guess.

Tokenisers load lazily (about a second each, in a worker thread) and stay loaded.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from ..errors import InvalidRequest

# prefix of the model name (after any "org/" part, lower case) -> quicktok encoding
_FAMILIES: tuple[tuple[str, str], ...] = (
    ("gpt-oss", "o200k_harmony"),
    ("gpt-4o", "o200k_base"), ("gpt-4.1", "o200k_base"), ("gpt-4.5", "o200k_base"), ("gpt-5", "o200k_base"),
    ("chatgpt-4o", "o200k_base"), ("o1", "o200k_base"), ("o3", "o200k_base"), ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"), ("gpt-3.5", "cl100k_base"), ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada", "cl100k_base"),
    ("llama-4", "llama4"), ("llama4", "llama4"), ("llama-3", "llama3"), ("llama3", "llama3"),
    ("meta-llama-3", "llama3"), ("qwen", "qwen3"),
)
_LOADED: dict[str, Any] = {}
PER_MESSAGE = 3
REPLY_PRIMING = 3


def encoding_name(model: str) -> str | None:
    name = model.rsplit("/", 1)[-1].lower()
    return next((enc for prefix, enc in _FAMILIES if name.startswith(prefix)), None)


def _load(name: str) -> Any:
    enc = _LOADED.get(name)
    if enc is None:
        try:
            import quicktok
        except ImportError as e:  # an install without it: say what is missing
            raise InvalidRequest("count_tokens for OpenAI-format models needs the quicktok-v1 package",
                                 code="tokenizer_unavailable") from e
        enc = _LOADED[name] = quicktok.get_encoding(name)
    return enc


def _text(content: Any, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    out = []
    for i, part in enumerate(content if isinstance(content, list) else []):
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype == "text":
            out.append(str(part.get("text") or ""))
        else:
            raise InvalidRequest(f"{param}[{i}]: {ptype} content cannot be counted for an OpenAI-format model "
                                 "(only text)", param=f"{param}[{i}]", code="uncountable_content")
    return "".join(out)


def count_chat(enc: Any, chat: dict[str, Any]) -> int:
    """Input tokens of a Chat Completions request under encoding ``enc``."""
    total = REPLY_PRIMING
    for i, msg in enumerate(chat.get("messages") or []):
        total += PER_MESSAGE + len(enc.encode(str(msg.get("role") or "")))
        total += len(enc.encode(_text(msg.get("content"), f"messages[{i}].content")))
        for call in msg.get("tool_calls") or []:
            total += len(enc.encode(orjson.dumps(call.get("function") or {}).decode()))
        if msg.get("tool_call_id"):
            total += len(enc.encode(str(msg["tool_call_id"])))
    if chat.get("tools"):
        total += len(enc.encode(orjson.dumps(chat["tools"]).decode()))
    return total


async def count(model: str, chat: dict[str, Any], provider: str) -> int:
    """Input tokens of ``chat`` for ``model`` (a 400 when no tokeniser is known for it)."""
    name = encoding_name(model)
    if name is None:
        raise InvalidRequest(f"model: no tokenizer is known for {provider}/{model}, so its tokens cannot be counted",
                             param="model", code="tokenizer_unknown")
    enc = _LOADED.get(name) or await asyncio.to_thread(_load, name)
    return count_chat(enc, chat)
