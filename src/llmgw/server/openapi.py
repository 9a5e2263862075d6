"""The OpenAPI 3.1 description of the daemon's public routes, served at ``GET /openapi.json``.

Hand-written, and kept honest by ``tests/test_openapi.py``: every public route of ``server/app.py``
is described (the admin API under ``/admin/`` is not: it is off unless a token is set and is
documented in the README), and schemathesis runs generated requests against the real daemon
checking that no answer is a 5xx and that statuses, content types, bodies and headers match what
is described here. Request schemas describe the shapes the validator (``llmgw.validate``) checks;
the validator also enforces what a schema cannot say (a routable model, nesting depth, header
encodings), so a body valid here may still get a typed 4xx.
"""

from __future__ import annotations

from typing import Any

from .. import __version__, validate

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


_MODEL: Schema = {"type": "string", "minLength": 1, "pattern": r"\S",
                  "description": "provider/model (e.g. openai/gpt-4o-mini) or an alias from the config",
                  "examples": ["demo/echo"]}
_JSON_VALUE: Schema = {}  # any JSON value
_TEXT_PART: Schema = {"type": "object", "required": ["type", "text"],
                      "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}

OPENAI_PART: Schema = {
    "type": "object", "required": ["type"],
    "properties": {"type": {"enum": sorted(validate.OPENAI_PARTS)}, "text": {"type": "string"},
                   "image_url": {"oneOf": [{"type": "string"}, {"type": "object", "properties": {
                       "url": {"type": "string"}, "detail": {"type": "string"}}}]},
                   "refusal": {"type": "string"}},
}
OPENAI_MESSAGE: Schema = {
    "type": "object", "required": ["role"],
    "properties": {
        "role": {"enum": sorted(validate.OPENAI_ROLES)},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": OPENAI_PART}, {"type": "null"}]},
        "name": {"type": "string"},
        "tool_call_id": {"type": "string"},
        "tool_calls": {"type": "array", "items": {"type": "object", "required": ["function"], "properties": {
            "id": {"type": "string"}, "type": {"type": "string"},
            "function": {"type": "object", "properties": {"name": {"type": "string"},
                                                          "arguments": {"type": "string"}}}}}},
    },
}
CHAT_REQUEST: Schema = {
    "type": "object", "required": ["model", "messages"],
    "properties": {
        "model": _MODEL,
        "messages": {"type": "array", "minItems": 1, "items": OPENAI_MESSAGE,
                     "examples": [[{"role": "user", "content": "hello"}]]},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "n": {"type": "integer", "minimum": 1, "maximum": 128},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "seed": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "maxItems": 4, "items": {"type": "string"}}]},
        "user": {"type": "string"},
        "metadata": {"type": "object"},
        "tools": {"type": "array", "items": {"type": "object", "required": ["function"], "properties": {
            "type": {"type": "string"},
            "function": {"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "description": {"type": "string"}, "parameters": {"type": "object"}}}}}},
        "tool_choice": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "parallel_tool_calls": {"type": "boolean"},
        "response_format": {"type": "object", "required": ["type"], "properties": {
            "type": {"enum": ["text", "json_object", "json_schema"]}, "json_schema": {"type": "object"}}},
    },
}
ANTHROPIC_BLOCK: Schema = {
    "type": "object", "required": ["type"],
    "properties": {"type": {"enum": sorted(validate.ANTHROPIC_BLOCKS)}, "text": {"type": "string"},
                   "source": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}},
                   "id": {"type": "string"}, "name": {"type": "string"}, "input": {"type": "object"},
                   "tool_use_id": {"type": "string"}},
}
MESSAGES_REQUEST: Schema = {
    "type": "object", "required": ["model", "messages"],
    "properties": {
        "model": _MODEL,
        "messages": {"type": "array", "minItems": 1, "examples": [[{"role": "user", "content": "hello"}]],
                     "items": {"type": "object", "required": ["role", "content"], "properties": {
                         "role": {"enum": ["user", "assistant"]},
                         "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": ANTHROPIC_BLOCK}]}}}},
        "max_tokens": {"type": "integer", "minimum": 1,
                       "description": "defaults.max_tokens when absent"},
        "system": {"oneOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]},
        "stream": {"type": "boolean"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 0},
        "stop_sequences": {"type": "array", "items": {"type": "string"}},
        "metadata": {"type": "object", "properties": {"user_id": {"type": "string"}}},
        "thinking": {"type": "object"},
        "tools": {"type": "array", "items": {"type": "object", "properties": {
            "type": {"type": "string"}, "name": {"type": "string"}, "description": {"type": "string"},
            "input_schema": {"type": "object"}}}},
        "tool_choice": {"type": "object", "properties": {"type": {"type": "string"}, "name": {"type": "string"}}},
    },
}
EMBEDDINGS_REQUEST: Schema = {
    "type": "object", "required": ["model", "input"],
    "properties": {"model": {**_MODEL, "examples": ["demo/embed"]},
                   "input": {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1}]},
                   "encoding_format": {"type": "string"}, "dimensions": {"type": "integer"}},
}

OPENAI_ERROR: Schema = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message"], "properties": {
        "message": {"type": "string"}, "type": {"type": ["string", "null"]},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "integer", "null"]}}}},
}
ANTHROPIC_ERROR: Schema = {
    "type": "object", "required": ["type", "error"],
    "properties": {"type": {"const": "error"}, "error": {"type": "object", "required": ["type", "message"],
                                                         "properties": {"type": {"type": "string"},
                                                                        "message": {"type": "string"}}}},
}
CHAT_COMPLETION: Schema = {
    "type": "object", "required": ["choices"],
    "properties": {"id": {"type": "string"}, "object": {"type": "string"}, "created": {"type": "integer"},
                   "model": {"type": "string"}, "choices": {"type": "array"}, "usage": {"type": ["object", "null"]}},
}
MESSAGE: Schema = {
    "type": "object", "required": ["type", "content"],
    "properties": {"id": {"type": "string"}, "type": {"const": "message"}, "role": {"const": "assistant"},
                   "model": {"type": "string"}, "content": {"type": "array"},
                   "stop_reason": {"type": ["string", "null"]}, "usage": {"type": "object"}},
}
EMBEDDINGS: Schema = {
    "type": "object", "required": ["data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array"}, "model": {"type": "string"},
                   "usage": {"type": "object"}},
}
MODELS: Schema = {
    "type": "object", "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
        "type": "object", "required": ["id", "object"],
        "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
                       "owned_by": {"type": "string"}}}}},
}

_USD = {"type": "string", "pattern": r"^[0-9]+\.[0-9]{2,9}$"}
_USD_OR_NULL = {"type": ["string", "null"], "pattern": r"^[0-9]+\.[0-9]{2,9}$"}
QUOTA: Schema = {
    "type": "object", "required": ["object", "key", "budgets", "remaining_usd", "as_of"],
    "properties": {
        "object": {"const": "llmgw.quota"}, "as_of": {"type": "string"}, "remaining_usd": _USD_OR_NULL,
        "key": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": ["string", "null"]}}},
        "customer_id": {"type": ["string", "null"]}, "team_id": {"type": ["string", "null"]},
        "budgets": {"type": "array", "items": {
            "type": "object", "required": ["id", "scope", "scope_id", "period", "limit_usd", "spent_usd",
                                           "remaining_usd", "resets_at"],
            "properties": {"id": {"type": "string"}, "scope": {"enum": ["customer", "team", "key"]},
                           "scope_id": {"type": "string"}, "name": {"type": ["string", "null"]},
                           "period": {"enum": ["day", "week", "month", "total"]}, "hard": {"type": "boolean"},
                           "limit_usd": _USD, "spent_usd": _USD, "reserved_usd": _USD, "remaining_usd": _USD,
                           "used_pct": {"type": "integer"}, "resets_at": {"type": ["string", "null"]}}}},
    },
}

_REQUEST_ID = {"x-request-id": {"description": "the request's id (its ledger row's request_id)",
                                "schema": {"type": "string"}}}
#: one server-sent event: ``data`` is a JSON object (a chunk, an Anthropic event, an error) or ``[DONE]``
_SSE = {"text/event-stream": {"schema": {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}}}}}


def _json(schema: Schema, description: str, headers: dict[str, Any] | None = None) -> Schema:
    out: Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _errors(envelope: str) -> Schema:
    return {"default": _json(_ref(envelope), "a typed error: 4xx for the request, 5xx for the upstream "
                             "(x-should-retry: false once the gateway's own attempts are spent)", _REQUEST_ID)}


def _api(summary: str, request: str, answer: str, envelope: str, *, streams: bool) -> Schema:
    ok = _json(_ref(answer), "the answer (an SSE stream when the request has stream: true)", _REQUEST_ID)
    if streams:
        ok["content"].update(_SSE)
    return {"post": {
        "summary": summary, "security": [{"bearer": []}, {"apiKey": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
        "responses": {"200": ok, **_errors(envelope)},
    }}


def _more_routes(plain: Schema) -> Schema:
    """The Responses API, legacy completions, count_tokens and the routes without /v1 (loose schemas:
    their checks are the gateway's validators)."""
    auth: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]

    def post(summary: str, envelope: str) -> Schema:
        return {"post": {"summary": summary, "security": auth,
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"type": "object"}}}},
                         "responses": {"200": {**plain, "description": "the answer (SSE when stream: true)"},
                                       **_errors(envelope)}}}

    def get(summary: str, *methods: str) -> Schema:
        op = {"summary": summary, "security": auth,
              "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
              "responses": {"200": {**plain, "description": summary}, **_errors("OpenAIError")}}
        return {m: op for m in methods}

    responses = post("OpenAI Responses API (streaming or not)", "OpenAIError")
    completions = post("legacy text completions", "OpenAIError")
    models = {"get": {"summary": "the models and aliases this key may use", "security": auth,
                      "responses": {"200": _json(_ref("Models"), "the models", _REQUEST_ID),
                                    **_errors("OpenAIError")}}}
    return {
        "/v1/responses": responses, "/responses": responses,
        "/v1/responses/input_tokens": post("input tokens of a Responses API request", "OpenAIError"),
        "/v1/responses/{id}": get("a stored response", "get", "delete"),
        "/v1/responses/{id}/input_items": get("a stored response's input items", "get"),
        "/v1/completions": completions, "/completions": completions,
        "/v1/messages/count_tokens": post("input tokens of an Anthropic Messages request", "AnthropicError"),
        "/embeddings": _api("OpenAI embeddings", "EmbeddingsRequest", "Embeddings", "OpenAIError", streams=False),
        "/models": models,
        "/v1/models/{id}": get("one model", "get"), "/models/{id}": get("one model", "get"),
    }


def document() -> Schema:
    """The OpenAPI document (a new dict each call)."""
    chat = _api("OpenAI Chat Completions (streaming or not)", "ChatRequest", "ChatCompletion", "OpenAIError",
                streams=True)
    plain = {"description": "", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "llmgw", "version": __version__,
                 "description": "Self-hosted LLM gateway: OpenAI- and Anthropic-compatible API with virtual keys, "
                                "budgets, a response cache and an exact cost ledger."},
        "paths": {
            "/v1/chat/completions": chat,
            "/chat/completions": chat,
            "/v1/messages": _api("Anthropic Messages (streaming or not)", "MessagesRequest", "Message",
                                 "AnthropicError", streams=True),
            "/v1/embeddings": _api("OpenAI embeddings", "EmbeddingsRequest", "Embeddings", "OpenAIError",
                                   streams=False),
            "/v1/models": {"get": {"summary": "the models and aliases this key may use",
                                   "security": [{"bearer": []}, {"apiKey": []}],
                                   "responses": {"200": _json(_ref("Models"), "the models", _REQUEST_ID),
                                                 **_errors("OpenAIError")}}},
            "/v1/llmgw/quota": {"get": {"summary": "the budgets that apply to this key: limit, spent, reserved, "
                                                   "remaining (exact decimal USD strings) and reset time",
                                        "security": [{"bearer": []}, {"apiKey": []}],
                                        "responses": {"200": _json(_ref("Quota"), "the key's quota", _REQUEST_ID),
                                                      **_errors("OpenAIError")}}},
            **_more_routes(plain),
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": {**plain, "description": "alive"},
                                                                      **_errors("OpenAIError")}}},
            "/readyz": {"get": {"summary": "readiness", "responses": {
                "200": {**plain, "description": "ready"}, "503": {**plain, "description": "draining, the "
                                                                                          "ledger writer is down, or "
                                                                                          "(cluster mode) Redis is "
                                                                                          "unreachable"},
                **_errors("OpenAIError")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (behind a bearer token when [metrics] token_env "
                                            "is set)",
                                 "responses": {"200": {"description": "the scrape", "content": {
                                     "text/plain": {"schema": {"type": "string"}}}}, **_errors("OpenAIError")}}},
            "/openapi.json": {"get": {"summary": "this document", "responses": {
                "200": {**plain, "description": "OpenAPI 3.1"}, **_errors("OpenAIError")}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "a virtual key"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                                           "description": "a virtual key (the Anthropic SDK's header)"}},
            "schemas": {"ChatRequest": CHAT_REQUEST, "MessagesRequest": MESSAGES_REQUEST,
                        "EmbeddingsRequest": EMBEDDINGS_REQUEST, "ChatCompletion": CHAT_COMPLETION,
                        "Message": MESSAGE, "Embeddings": EMBEDDINGS, "Models": MODELS, "Quota": QUOTA,
                        "OpenAIError": OPENAI_ERROR, "AnthropicError": ANTHROPIC_ERROR},
        },
    }
