"""The fastest aiohttp OpenAI mock we can write: the upstream for throughput benchmarks.

    python bench/mock_upstream.py --port 9001 [--host 127.0.0.1]

POST /v1/chat/completions answers instantly with a fixed small completion and usage; with
"stream": true it sends 5 content chunks, a finish chunk, a usage chunk when
stream_options.include_usage is true, then `data: [DONE]`. No auth, no validation. Every response
is pre-serialised at start; the only per-request work is parsing the body to find `stream`.
GET /healthz answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

try:
    import orjson

    loads = orjson.loads
except ImportError:  # pragma: no cover
    loads = json.loads


def new_loop() -> asyncio.AbstractEventLoop:
    """A uvloop event loop if uvloop is importable, else the stdlib one."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


CREATED = int(time.time())
MODEL = "gpt-4o-mini"
USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
WORDS = ["Hello", " from", " the", " mock", " upstream."]

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(WORDS)},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
).encode()


def _chunk(choices: list, usage: object = None, with_usage: bool = False) -> bytes:
    obj = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED, "model": MODEL}
    obj["choices"] = choices
    if with_usage:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _stream(with_usage: bool) -> list[bytes]:
    out = [
        _chunk(
            [{"index": 0, "delta": {"role": "assistant", "content": w}, "finish_reason": None}],
            None,
            with_usage,
        )
        for w in WORDS[:1]
    ]
    out += [
        _chunk([{"index": 0, "delta": {"content": w}, "finish_reason": None}], None, with_usage)
        for w in WORDS[1:]
    ]
    out.append(_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}], None, with_usage))
    if with_usage:
        out.append(_chunk([], USAGE, True))
    out.append(b"data: [DONE]\n\n")
    return out


STREAM = {False: _stream(False), True: _stream(True)}
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


async def chat(request: web.Request) -> web.StreamResponse:
    body = loads(await request.read())
    if not body.get("stream"):
        return web.Response(body=COMPLETION, content_type="application/json")
    opts = body.get("stream_options") or {}
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    for piece in STREAM[bool(opts.get("include_usage"))]:
        await resp.write(piece)
    await resp.write_eof()
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        make_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=1,
        loop=new_loop(),
    )


if __name__ == "__main__":
    main()
