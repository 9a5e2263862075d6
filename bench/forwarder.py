"""The Python floor (REFERENCE.md): a minimal aiohttp forwarder to compare llmgw against.

    python bench/forwarder.py --port 9002 --upstream http://127.0.0.1:9001/v1

POST /v1/chat/completions: parse the JSON body, forward it with one shared ClientSession, parse and
return the JSON answer (a gateway must read usage), or relay a stream chunk by chunk. Nothing else.
"""

import argparse
import asyncio

import orjson
from aiohttp import ClientSession, web

SESSION = web.AppKey("session", ClientSession)
URL = web.AppKey("url", str)
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer x"}


async def session_ctx(app: web.Application):
    async with ClientSession() as app[SESSION]:
        yield


async def chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    async with request.app[SESSION].post(request.app[URL], data=orjson.dumps(body), headers=HEADERS) as up:
        if not body.get("stream"):
            data = orjson.loads(await up.read())
            return web.Response(body=orjson.dumps(data), status=up.status, content_type="application/json")
        resp = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="OpenAI base URL, e.g. http://127.0.0.1:9001/v1")
    args = parser.parse_args()
    app = web.Application()
    app[URL] = args.upstream.rstrip("/") + "/chat/completions"
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", chat)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(
        app, host=args.host, port=args.port, access_log=None, print=None, shutdown_timeout=1, loop=loop
    )


if __name__ == "__main__":
    main()
