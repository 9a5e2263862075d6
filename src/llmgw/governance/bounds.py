"""An upper bound of one request's cost, computed before it is sent (what a hard budget reserves).

Owns ``cost_bound`` (prompt tokens, output tokens and nano-dollars a request can cost at most) and
``clamp_max_tokens`` (the largest ``max_tokens`` a remaining budget can still pay for).

Why the prompt bound holds:

* Every tokeniser the providers use (OpenAI's o200k/cl100k, Anthropic's, Llama's, Qwen's) is a
  byte-level BPE: each token stands for at least one byte of UTF-8 text, so a text of N bytes is at
  most N tokens. The request's JSON (``orjson``: compact, no ASCII escaping) holds every piece of
  text the provider turns into prompt tokens (message text, system, tool definitions, tool call
  arguments, names, response schemas) plus the keys and quotes around them, so its length bounds
  them. The raw body length (``raw_len``) bounds the same text: JSON escapes only make text longer.
  The bound is the tighter of the two; both are correct.
* Chat formatting adds a few tokens per message (OpenAI: 3, plus 1 for a name, plus 3 priming the
  reply); we add ``PER_MESSAGE_TOKENS`` (8) per message and once more for the reply.
* Images are priced by size, not bytes: a URL is short and a base64 image is far longer than its
  tokens. Their payload (the URL or base64 string) is taken out of the JSON length and each image
  counts ``IMAGE_TOKENS`` (1600) whatever its size. Known facts: OpenAI high detail scales an image
  to fit 2048x2048 then its short side to 768, and charges 85 + 170 per 512 px tile, at most
  1105 + 85 = 1190 tokens for a 2048x768 image; Anthropic charges about width*height/750 tokens
  for images it resizes to at most ~1.15 megapixels, about 1600 tokens.
* Tools: OpenAI renders function definitions into a TypeScript-like namespace whose text can be up to
  ~1.5x the JSON of the definitions (``"a" | "b"`` for ``["a","b"]``), and Anthropic adds a tool-use
  system prompt (~350 tokens). Tool definitions are therefore counted a second time and
  ``TOOLS_OVERHEAD_TOKENS`` is added once. An Anthropic built-in client tool (``bash_…``,
  ``text_editor_…``, ``computer_…``: a short JSON for a long hidden definition, 245-735 tokens)
  counts ``BUILTIN_TOOL_TOKENS`` each.
* Cache writes are dearer than plain input (Anthropic: 1.25x or 2x), cache reads cheaper: the prompt
  bound is priced at the highest of ``input``, ``cache_write`` and ``cached_input``.

Not bounded by the request (``unbounded_features`` names them so the gateway can refuse them under
a hard budget): server-side tools that pull more input in while the request runs (Anthropic
``web_search``/``web_fetch``/``code_execution`` tools and ``mcp_servers``, OpenAI
``web_search_options``). PDF documents, files and audio count their encoded bytes plus one image
bound each, which covers ordinary files; a very highly compressed PDF can exceed it. The ledger stays
exact in every case: settling charges the real cost.

Output: ``max_completion_tokens``, else ``max_tokens``, else ``default_max_tokens`` (the gateway must
then send that value upstream for the bound to be real), times OpenAI's ``n``. Reasoning and thinking
tokens are inside ``max_completion_tokens`` / Anthropic's ``max_tokens``. Predicted-output text
(``prediction``) may be billed as completion tokens, so its length is added to the output bound.
Embeddings requests (``input`` and no ``messages``) have no output.

Invariant: integers only; a missing price (``None``) costs 0, as in ``pricing.cost_nanos``.

Also the bounds of every integer a ledger row holds, applied before the row is built so a row can
always be written (SQLite's INTEGER is 64-bit; a larger value would fail the row after the provider
was paid): ``client_retry_count`` (the ``x-stainless-retry-count`` header: a typed 400 when it is
not ASCII digits, clamped to ``CLIENT_RETRY_MAX``), ``bound_nanos`` / ``cost_bound`` (at most
``MAX_NANOS``, whatever ``max_tokens`` says) and ``bound_usage`` / ``bound_cost`` (token counts an
upstream reports, clamped to ``MAX_TOKENS``, and costs to ``MAX_NANOS``). The other integer
columns are the gateway's own (timestamps, statuses, attempts, 0/1 flags).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import InvalidRequest
from ..pricing import Price
from ..units import MAX_NANOS
from ..usage import Usage

PER_MESSAGE_TOKENS = 8
IMAGE_TOKENS = 1600
TOOLS_OVERHEAD_TOKENS = 1024
BUILTIN_TOOL_TOKENS = 1024
#: what ``clamp_max_tokens`` returns when output costs nothing and the caller gave no cap
MAX_TOKENS_CEILING = 2**31 - 1

#: the most ``x-stainless-retry-count`` the ledger records (the SDKs send 0, 1, 2)
CLIENT_RETRY_MAX = 1_000_000
#: the most tokens of one kind a ledger row records (far beyond any context window)
MAX_TOKENS = 2**40
RETRY_HEADER = "x-stainless-retry-count"

_IMAGE_TYPES = frozenset({"image_url", "image", "input_image"})
_FILE_TYPES = frozenset({"document", "file", "input_audio", "input_file"})
_SERVER_TOOL_PREFIXES = ("web_search", "web_fetch", "code_execution", "mcp")


def _str_bytes(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def _image_payload(part: dict[str, Any]) -> int:
    """UTF-8 length of the one string that carries an image part's pixels (URL or base64 data)."""
    for holder_key in ("image_url", "source"):
        holder = part.get(holder_key)
        if isinstance(holder, str):
            return _str_bytes(holder)
        if isinstance(holder, dict):
            for k in ("url", "data"):
                v = holder.get(k)
                if isinstance(v, str):
                    return _str_bytes(v)
    v = part.get("image_url") or part.get("url")
    return _str_bytes(v) if isinstance(v, str) else 0


class _Scan:
    __slots__ = ("images", "files", "payload")

    def __init__(self) -> None:
        self.images = 0
        self.files = 0
        self.payload = 0  # bytes of image payloads, taken out of the JSON length

    def walk(self, obj: Any) -> None:
        stack = [obj]  # iterative: a deeply nested body must not hit the recursion limit
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(v for v in item if isinstance(v, dict | list))
                continue
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if not isinstance(kind, str):  # e.g. a schema property named "type"
                kind = None
            if kind in _IMAGE_TYPES:
                self.images += 1
                self.payload += _image_payload(item)
                continue
            if kind in _FILE_TYPES:
                self.files += 1
            stack.extend(v for v in item.values() if isinstance(v, dict | list))


def _positive_int(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        return None
    return v


def _is_builtin_tool(tool: Any) -> bool:
    """An Anthropic client tool defined by the provider (``{"type": "bash_20250124", "name": "bash"}``)."""
    if not isinstance(tool, dict):
        return False
    kind = tool.get("type")
    return isinstance(kind, str) and kind not in ("custom", "function") and "input_schema" not in tool


def unbounded_features(body: dict[str, Any]) -> list[str]:
    """Request features whose cost the request itself cannot bound (server-side tools, MCP servers)."""
    out: list[str] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict):
                kind = tool.get("type")
                if isinstance(kind, str) and kind.startswith(_SERVER_TOOL_PREFIXES):
                    out.append(f"tools[{kind}]")
    if body.get("mcp_servers"):
        out.append("mcp_servers")
    if body.get("web_search_options") is not None:
        out.append("web_search_options")
    return out


def output_token_bound(body: dict[str, Any], *, inbound: str, default_max_tokens: int) -> int:
    """Output tokens the request may produce at most (max tokens times ``n``, plus any prediction)."""
    if "messages" not in body and "input" in body:  # embeddings
        return 0
    per_choice = (_positive_int(body.get("max_completion_tokens")) or _positive_int(body.get("max_tokens"))
                  or default_max_tokens)
    n = _positive_int(body.get("n")) if inbound == "openai" else None
    bound = per_choice * (n or 1)
    prediction = body.get("prediction")
    if prediction is not None:  # rejected predicted tokens are billed as completion tokens
        try:
            bound += len(orjson.dumps(prediction))
        except (orjson.JSONEncodeError, TypeError):
            bound += len(str(prediction).encode("utf-8", "surrogatepass"))
    return bound


def prompt_token_bound(body: dict[str, Any], raw_len: int) -> int:
    """An upper bound of the prompt tokens of ``body`` (whose raw JSON was ``raw_len`` bytes)."""
    scan = _Scan()
    messages = body.get("messages")
    n_messages = len(messages) if isinstance(messages, list) else 0
    scan.walk(body)
    try:
        json_len = len(orjson.dumps(body)) - scan.payload
    except (orjson.JSONEncodeError, TypeError):  # e.g. an integer beyond 64 bits: the raw length bounds
        json_len = raw_len
    extra = PER_MESSAGE_TOKENS * (n_messages + 1) + IMAGE_TOKENS * (scan.images + scan.files)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        extra += TOOLS_OVERHEAD_TOKENS + len(orjson.dumps(tools))
        extra += BUILTIN_TOOL_TOKENS * sum(1 for t in tools if _is_builtin_tool(t))
    return min(max(0, raw_len), json_len) + extra


def prompt_price(price: Price | None) -> int:
    """Nano-dollars per prompt token at worst: cache writes can cost more than plain input."""
    if price is None:
        return 0
    return max(price.input, price.cache_write, price.cached_input)


def bound_nanos(prompt_bound: int, output_bound: int, price: Price | None) -> int:
    """Cost in nano-dollars of ``prompt_bound`` prompt and ``output_bound`` output tokens at worst
    (at most ``MAX_NANOS``: what a budget or the ledger can hold)."""
    if price is None:
        return 0
    return min(prompt_bound * prompt_price(price) + output_bound * price.output, MAX_NANOS)


def client_retry_count(value: str | None) -> int | None:
    """The ``x-stainless-retry-count`` header as the ledger's ``client_retry``: None when absent or
    empty, clamped to ``CLIENT_RETRY_MAX``; ``InvalidRequest`` unless it is ASCII digits."""
    if not value:
        return None
    v = value.strip()
    if not (v.isascii() and v.isdigit()):
        raise InvalidRequest(f"{RETRY_HEADER}: expected a non-negative integer", param=RETRY_HEADER,
                             code="invalid_header")
    return CLIENT_RETRY_MAX if len(v) > 7 else min(int(v), CLIENT_RETRY_MAX)


def _clamp(n: int, hi: int) -> int:
    return 0 if n < 0 else hi if n > hi else n


def bound_usage(u: Usage) -> bool:
    """Clamp the token counts an upstream reported to ``0..MAX_TOKENS`` (in place); True if any was
    outside (the caller logs it: an upstream that reports that is broken or hostile)."""
    fields = (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cache_write_tokens)
    if all(isinstance(n, int) and 0 <= n <= MAX_TOKENS for n in fields):
        return False
    p, c, r, w = (_clamp(n if isinstance(n, int) else 0, MAX_TOKENS) for n in fields)
    u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cache_write_tokens = p, c, r, w
    return True


def bound_cost(nanos: int) -> int:
    """A cost as the ledger and the budgets hold it: ``0..MAX_NANOS``."""
    return _clamp(nanos, MAX_NANOS)


def cost_bound(body: dict[str, Any], raw_len: int, price: Price | None, *, inbound: str,
               default_max_tokens: int) -> tuple[int, int, int]:
    """``(prompt_token_bound, output_token_bound, cost_bound_nanos)``: the most this request can cost.

    ``inbound`` is the client's dialect (``"openai"`` or ``"anthropic"``); ``default_max_tokens`` is
    the output limit the gateway sends when the client gave none.
    """
    p = prompt_token_bound(body, raw_len)
    o = output_token_bound(body, inbound=inbound, default_max_tokens=default_max_tokens)
    return p, o, bound_nanos(p, o, price)


def clamp_max_tokens(remaining_nanos: int, prompt_bound: int, price: Price | None, n: int = 1, *,
                     cap: int | None = None) -> int | None:
    """The largest ``max_tokens`` (per choice, ``n`` choices) ``remaining_nanos`` can pay for.

    ``None`` when the remaining budget cannot pay for the prompt and one output token. The result is
    never above ``cap`` (the client's own ``max_tokens``) when given; when output is free it is
    ``cap`` or ``MAX_TOKENS_CEILING``. Reserve ``bound_nanos(prompt_bound, result * n, price)``.
    """
    n = max(1, n)
    left = remaining_nanos - bound_nanos(prompt_bound, 0, price)
    if left < 0:
        return None
    per_token = 0 if price is None else price.output * n
    best = MAX_TOKENS_CEILING if per_token == 0 else left // per_token
    if cap is not None:
        best = min(best, cap)
    return best if best >= 1 else None
