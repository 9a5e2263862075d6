"""The API routes that reach a provider but are not billed: ``POST /v1/messages/count_tokens``,
``POST /v1/responses/input_tokens`` and the Responses API's stored responses (``GET``/``DELETE
/v1/responses/{id}``, ``.../input_items``).

They authenticate like the gateway routes and, for count_tokens, check the key's allow-list for the
model, but take no budget, rate limit or cache and write no ledger row (as ``/v1/models``). Errors
leave through the route's ``guarded`` envelope (Anthropic for count_tokens, OpenAI otherwise).
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from .. import validate
from ..errors import InvalidRequest, NotFound
from ..gateway import Call, Gateway, new_request_id
from ..providers import responses
from ..providers.base import FORWARDED
from .http import JSON, bearer, id_headers, read_body

#: seconds a stored-response read may take at most
STORED_TIMEOUT = 60.0


async def count_tokens(gw: Gateway, request: web.Request) -> web.StreamResponse:
    """Input tokens of an Anthropic Messages request for its model: Anthropic counts itself, an
    OpenAI-format model is counted with its tokeniser (``providers/tokens``), the demo by its rule."""
    rid = new_request_id()
    fwd = gw.forwarded(request) if gw.forward_headers else None
    forwarding = FORWARDED.set(fwd) if fwd else None
    try:
        key = await gw.keys.resolve(bearer(request))
        body = validate.messages_request(await _json(gw, request))
        targets = gw.router.resolve(body["model"])
        gw.authorize(key, body["model"], targets)
        call = Call(request_id=rid, route="count_tokens", inbound="anthropic", ts_ms=gw.clock(), key=key)
        n = await gw.router.run(targets[:1], lambda t, to: t.provider.count_tokens(body, t.model, to),
                                time.monotonic() + gw.request_timeout, call)
        return web.Response(body=orjson.dumps({"input_tokens": n}), headers=id_headers(rid, "anthropic", JSON))
    finally:
        if forwarding is not None:
            FORWARDED.reset(forwarding)


async def response_input_tokens(gw: Gateway, request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses/input_tokens``: the input tokens of a Responses API request, counted by
    the provider that would serve it (OpenAI itself; Anthropic on the translation; a tokeniser for
    other OpenAI-format servers), for a stored response's follow-up by the provider that stores it."""
    rid = new_request_id()
    key = await gw.keys.resolve(bearer(request))
    body = responses.validate_request(await _json(gw, request))
    targets = gw.router.resolve(body["model"])
    targets = responses.pin_targets(body, targets, gw.router.origins, body["model"], responses.owner_of(key))
    gw.authorize(key, body["model"], targets)
    call = Call(request_id=rid, route="input_tokens", inbound="responses", ts_ms=gw.clock(), key=key)
    n = await gw.router.run(targets[:1], lambda t, to: t.provider.count_response_tokens(body, t.model, to),
                            time.monotonic() + gw.request_timeout, call)
    return web.Response(body=orjson.dumps({"object": "response.input_tokens", "input_tokens": n}),
                        headers=id_headers(rid, "openai", JSON))


async def _json(gw: Gateway, request: web.Request) -> object:
    raw = await read_body(request, gw.max_body)
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object", code="invalid_json")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidRequest(f"request body is not valid JSON: {e}", code="invalid_json") from e


async def stored_response(gw: Gateway, request: web.Request) -> web.StreamResponse:
    """A stored response's resource, relayed to the provider that stores it, for its owner only
    (anyone else, and any id this gateway did not relay, gets a 404)."""
    key = await gw.keys.resolve(bearer(request))
    ref = request.match_info["id"]
    known = gw.router.origins.get(ref)
    provider = gw.router.providers.get(known[0]) if known is not None else None
    stored = getattr(provider, "stored", None)
    if known is None or known[1] != responses.owner_of(key) or stored is None:
        raise NotFound(f"response {ref!r} not found (this gateway relays the stored responses it created, to the "
                       "keys of their owner)", code="response_not_found")
    path = "/responses/" + ref + ("/input_items" if request.path.endswith("/input_items") else "")
    if request.query_string:
        path += "?" + request.query_string
    body = await stored(request.method, path, min(gw.request_timeout, STORED_TIMEOUT))
    if request.method == "DELETE":
        gw.router.origins.forget(ref)
    return web.Response(body=body, headers=id_headers(new_request_id(), "openai", JSON))
