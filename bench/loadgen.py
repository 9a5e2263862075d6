"""Closed-loop HTTP load for the benchmark: wrk when it is on PATH, else a built-in aiohttp generator.

    from loadgen import run_load
    run_load(url, body, headers, concurrency=32, duration=10.0, stream=False)
    -> {"tool", "requests", "errors", "duration", "rps", "p50_ms", "p99_ms", "mean_ms", "max_ms"}

    python bench/loadgen.py URL [--body JSON] [-H "Name: value"] [-c 32] [-d 10] [--stream] [--tool wrk]

wrk (`apt-get install -y wrk`) is preferred: it is C, so the load generator takes far less of the
machine's CPU than the thing being measured. It runs as `wrk -t1 -cC -dDs --latency` with a small
Lua script (POST, JSON body, headers) whose `done` hook prints exact percentiles; the `--latency`
text is parsed as a fallback. The built-in generator keeps C requests in flight for D seconds on
one event loop (uvloop if importable), reads every body to the end (for streams too) and counts a
non-2xx answer or a socket error as an error, like wrk does.

`requests` counts completed responses (including non-2xx, as wrk does); rps = requests / duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import aiohttp

RESULT_TAG = "LOADGEN_RESULT"

LUA_TEMPLATE = """
wrk.method = "POST"
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("{tag} %d %d %d %d %d %d %d %.1f %.1f %.1f %.1f\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


def _lua_string(text: str) -> str:
    """A Lua long-bracket literal holding `text` verbatim."""
    level = 1
    while "]" + "=" * level + "]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def _prepare_body(body: dict[str, Any], stream: bool) -> bytes:
    if stream and not body.get("stream"):
        body = {**body, "stream": True}
    return json.dumps(body, separators=(",", ":")).encode()


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


# --------------------------------------------------------------------------- wrk


def _wrk_time(text: str) -> float:
    """'1.23ms' -> milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def _parse_wrk(out: str) -> dict[str, Any]:
    for line in out.splitlines():
        if line.startswith(RESULT_TAG):
            f = line.split()[1:]
            requests, duration_us = int(f[0]), int(f[1])
            errors = sum(int(x) for x in f[2:7])
            p50, p99, mean, mx = (float(x) / 1000.0 for x in f[7:11])
            duration = duration_us / 1e6
            return {
                "requests": requests,
                "errors": errors,
                "duration": duration,
                "rps": requests / duration if duration else 0.0,
                "p50_ms": p50,
                "p99_ms": p99,
                "mean_ms": mean,
                "max_ms": mx,
            }
    # fallback: the human-readable --latency report
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and total and p50 and p99):
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return {
        "requests": int(total.group(1)),
        "errors": errors,
        "duration": float("nan"),
        "rps": float(rps.group(1)),
        "p50_ms": _wrk_time(p50.group(1)),
        "p99_ms": _wrk_time(p99.group(1)),
        "mean_ms": float("nan"),
        "max_ms": float("nan"),
    }


def _run_wrk(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float, threads: int
) -> dict[str, Any]:
    hdrs = {"Content-Type": "application/json", **headers}
    header_lines = "\n".join(f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in hdrs.items())
    script = LUA_TEMPLATE.format(body=_lua_string(body.decode()), headers=header_lines, tag=RESULT_TAG)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="loadgen-", delete=False) as fh:
        fh.write(script)
        path = fh.name
    try:
        cmd = [
            "wrk",
            f"-t{max(1, min(threads, concurrency))}",
            f"-c{concurrency}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            path,
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        if proc.returncode != 0:
            raise RuntimeError(
                f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
            )
        if RESULT_TAG not in proc.stdout and proc.stderr.strip():
            raise RuntimeError(f"wrk script error: {proc.stderr.strip()}")
        return _parse_wrk(proc.stdout)
    finally:
        os.unlink(path)


# --------------------------------------------------------------------------- built-in generator


async def _aio_load(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float
) -> dict[str, Any]:
    hdrs = {"Content-Type": "application/json", **headers}
    latencies: list[float] = []
    completed = 0
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        deadline = start + duration

        async def worker() -> None:
            nonlocal completed, errors
            while True:
                t0 = time.perf_counter()
                if t0 >= deadline:
                    return
                try:
                    async with session.post(url, data=body, headers=hdrs) as resp:
                        await resp.read()
                        completed += 1
                        if resp.status >= 400:
                            errors += 1
                            continue
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    await asyncio.sleep(0.01)  # a refused connection must not spin
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    ms = [x * 1000.0 for x in latencies]
    return {
        "requests": completed,
        "errors": errors,
        "duration": elapsed,
        "rps": completed / elapsed if elapsed else 0.0,
        "p50_ms": _percentile(ms, 0.50),
        "p99_ms": _percentile(ms, 0.99),
        "mean_ms": sum(ms) / len(ms) if ms else float("nan"),
        "max_ms": ms[-1] if ms else float("nan"),
    }


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# --------------------------------------------------------------------------- entry points


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_load(
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    concurrency: int = 32,
    duration: float = 10.0,
    stream: bool = False,
    *,
    tool: str = "auto",
    threads: int = 1,
) -> dict[str, Any]:
    """POST `body` to `url` with `concurrency` requests in flight for `duration` seconds.

    stream=True sets "stream": true in the body (if absent); the whole response is read either way.
    tool: "auto" (wrk if on PATH), "wrk" or "aiohttp". threads: wrk threads (-t).
    """
    if tool not in ("auto", "wrk", "aiohttp"):
        raise ValueError(f"unknown tool {tool!r}")
    payload = _prepare_body(body, stream)
    use_wrk = tool == "wrk" or (tool == "auto" and have_wrk())
    if use_wrk:
        result = _run_wrk(url, payload, headers, concurrency, duration, threads)
        result["tool"] = "wrk"
    else:
        loop = _new_loop()
        try:
            result = loop.run_until_complete(_aio_load(url, payload, headers, concurrency, duration))
        finally:
            loop.close()
        result["tool"] = "aiohttp"
    result["concurrency"] = concurrency
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="closed-loop POST load (wrk or built-in aiohttp)")
    parser.add_argument("url")
    parser.add_argument(
        "--body", default='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    )
    parser.add_argument("-H", "--header", action="append", default=[], help='"Name: value", repeatable')
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--tool", choices=["auto", "wrk", "aiohttp"], default="auto")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    result = run_load(
        args.url,
        json.loads(args.body),
        headers,
        args.concurrency,
        args.duration,
        args.stream,
        tool=args.tool,
        threads=args.threads,
    )
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
