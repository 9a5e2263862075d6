"""Provider calls through a corporate proxy: ``HTTP_PROXY``/``HTTPS_PROXY`` and ``NO_PROXY``, with a
real forwarding and CONNECT proxy (an asyncio server) in front of real upstreams."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import openai
import pytest
from aiohttp import web

from conftest import UPSTREAM_ENV, upstream_config
from llmgw.providers.upstream import ProxySettings, UpstreamClient


class Proxy:
    """A forwarding (absolute-URL) and CONNECT proxy on 127.0.0.1, in a thread; records each
    request head it relays."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        async def start() -> None:
            server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self.server = server
            ready.set()

        def run() -> None:
            loop = self.loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(start())
            loop.run_forever()
            self.server.close()
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in tasks:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(self.server.wait_closed())
            loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if method == b"CONNECT":
            host, port = target.decode().rsplit(":", 1)
            ur, uw = await asyncio.open_connection(host, int(port))
            w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await w.drain()
        else:
            hostport = target.split(b"/", 3)[2].decode()
            host, port = hostport.rsplit(":", 1)
            ur, uw = await asyncio.open_connection(host, int(port))
            uw.write(head)  # aiohttp servers accept the absolute form
        try:
            await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
        finally:
            uw.close()
            w.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def proxy():
    p = Proxy()
    yield p
    p.stop()


def test_provider_calls_go_through_http_proxy(upstream, daemon_factory, proxy):
    env = {**UPSTREAM_ENV, "HTTP_PROXY": f"http://alice:s3cret@127.0.0.1:{proxy.port}"}
    d = daemon_factory(upstream_config(upstream), env)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        r = c.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "via proxy"}])
    assert r.choices[0].message.content == "fake reply to: via proxy"
    (head,) = proxy.heads
    assert head.startswith(f"POST {upstream.openai_url}/chat/completions HTTP/1.1".encode())
    assert b"proxy-authorization: Basic YWxpY2U6czNjcmV0\r\n" in head  # alice:s3cret


def test_no_proxy_bypasses_it(upstream, daemon_factory, proxy):
    env = {**UPSTREAM_ENV, "HTTP_PROXY": f"http://127.0.0.1:{proxy.port}", "NO_PROXY": "localhost,127.0.0.0/8"}
    d = daemon_factory(upstream_config(upstream), env)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        c.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "direct"}])
    assert proxy.heads == [] and upstream.requests[-1]["json"]["messages"][0]["content"] == "direct"


@pytest.mark.parametrize(("entry", "host", "port", "bypass"), [
    ("*", "api.openai.com", 443, True),
    ("openai.com", "api.openai.com", 443, True),
    (".openai.com", "api.openai.com", 443, True),
    ("openai.com", "notopenai.com", 443, False),
    ("api.openai.com:8443", "api.openai.com", 443, False),
    ("api.openai.com:443", "api.openai.com", 443, True),
    ("10.0.0.0/8", "10.1.2.3", 80, True),
    ("10.0.0.0/8", "11.1.2.3", 80, False),
])
def test_no_proxy_rules(entry, host, port, bypass):
    settings = ProxySettings({"https_proxy": "http://proxy:3128", "HTTP_PROXY": "http://proxy:3128",
                              "NO_PROXY": entry})
    assert (settings.for_origin("https", host, port) is None) is bypass


def test_a_proxy_url_that_is_not_http_is_a_config_error():
    from llmgw.errors import ConfigError

    with pytest.raises(ConfigError, match="HTTPS_PROXY"):
        ProxySettings({"HTTPS_PROXY": "socks5://proxy:1080"})


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def test_https_through_a_connect_tunnel(certificate: tuple[Path, Path], proxy):
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path, "body": (await request.read()).decode()})

    app = web.Application()
    app.router.add_post("/v1/x", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client = UpstreamClient(ssl_context=client_ctx, environ={"HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}"})
    try:
        for _ in range(2):  # the second call reuses the tunnelled connection
            r = await client.post(f"https://localhost:{port}/v1/x", b"ping", {"content-type": "text/plain"}, timeout=10)
            assert r.status == 200 and await r.read() == b'{"path": "/v1/x", "body": "ping"}'
        assert [h.split(b"\r\n", 1)[0] for h in proxy.heads] == [f"CONNECT localhost:{port} HTTP/1.1".encode()]
    finally:
        await client.close()
        await runner.cleanup()
