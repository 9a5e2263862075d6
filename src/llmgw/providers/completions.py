"""The legacy text completions API (``POST /v1/completions``): passed through to OpenAI-format
upstreams (OpenAI's ``gpt-3.5-turbo-instruct``, ``davinci-002``, most self-hosted servers), billed
like chat. Anthropic and the demo have no such endpoint: a typed 400.

What the gateway checks before the call is the shape of the fields that bound its cost
(``prompt``, ``max_tokens``, ``n``, ``best_of``); the upstream checks the rest.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import InvalidRequest

#: OpenAI's documented default ``max_tokens`` for completions (sent when a budget needs a bound)
DEFAULT_MAX_TOKENS = 16


def validate_request(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_type")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model: a non-empty string is required", param="model", code="missing_parameter")
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("missing required parameter: prompt", param="prompt", code="missing_parameter")
    if not isinstance(prompt, (str, list)):
        raise InvalidRequest("prompt: expected a string or an array", param="prompt", code="invalid_type")
    for name in ("max_tokens", "n", "best_of"):
        v = body.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "max_tokens" else 1)):
            raise InvalidRequest(f"{name}: expected a positive integer, got {v!r}", param=name, code="invalid_value")
    v = body.get("stream")
    if v is not None and not isinstance(v, bool):
        raise InvalidRequest("stream: expected a boolean", param="stream", code="invalid_type")
    return body


def bound_view(body: dict[str, Any]) -> dict[str, Any]:
    """A chat-shaped view for the cost bound: the prompt as one message, ``n`` as the larger of
    ``n`` and ``best_of`` (the server generates ``best_of`` completions and bills them all)."""
    prompt = body.get("prompt")
    text = prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()
    view: dict[str, Any] = {"model": body.get("model"), "messages": [{"role": "user", "content": text}],
                            "max_tokens": body.get("max_tokens") or DEFAULT_MAX_TOKENS,
                            "n": max(int(body.get("n") or 1), int(body.get("best_of") or 1))}
    if body.get("suffix"):
        view["messages"].append({"role": "user", "content": str(body["suffix"])})
    return view
