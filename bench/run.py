"""Throughput benchmark: llmgw against the mock upstream, the 30-line forwarder and (optionally) peers.

    python bench/run.py                                  # mock, forwarder, llmgw; 10 s each mode
    python bench/run.py --targets mock,forwarder --duration 3
    python bench/run.py --peers litellm,portkey          # also the peers, if installed
    python bench/run.py --cluster                        # one instance with [cluster] (Redis) vs embedded
    python bench/run.py --cluster --store-url URL        # ... and one with Redis + PostgreSQL (an empty database)

Starts every server as a subprocess on a free 127.0.0.1 port (own session, logs in a temp dir),
waits until each answers a real request, then measures each target at --concurrency (32) for
--duration seconds, non-stream and stream, with bench/loadgen.py (wrk if on PATH). Prints one table
(requests/s, p50, p99, errors, server RSS from /proc/PID/status) and the llmgw/forwarder ratios
against the targets (rps >= 0.8x, p99 <= 1.5x). Every process it started is stopped at the end,
also on Ctrl-C, SIGTERM or an error. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from loadgen import have_wrk, run_load  # noqa: E402

HOST = "127.0.0.1"
PROMPT = [{"role": "user", "content": "Say hello in five words."}]
RPS_TARGET = 0.8  # llmgw rps >= 0.8x the forwarder
P99_TARGET = 1.5  # llmgw p99 <= 1.5x the forwarder
ALL_TARGETS = ("mock", "forwarder", "llmgw")
ALL_PEERS = ("litellm", "portkey")
LITELLM_MASTER_KEY = "sk-bench-master-key"
NO_PROXY_ENV = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

# Binds every net.Server to 127.0.0.1 (Portkey listens on all interfaces otherwise).
NODE_LOOPBACK_PRELOAD = """\
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object' && !Array.isArray(first) && 'port' in first) {
    args[0] = Object.assign({}, first, { host: '127.0.0.1' });
  } else if (typeof first === 'number' || (typeof first === 'string' && /^[0-9]+$/.test(first))) {
    if (typeof args[1] === 'string' || args[1] === undefined || args[1] === null) {
      args[1] = '127.0.0.1';
    } else {
      args.splice(1, 0, '127.0.0.1');
    }
  }
  return listen.apply(this, args);
};
"""


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Procs:
    """The subprocesses this run started; `stop_all` ends them (their own process groups only)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.items: list[Proc] = []

    def start(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> Proc:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as fh:
            popen = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **NO_PROXY_ENV, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # its own process group: we can stop it and its children
            )
        proc = Proc(name, popen, log_path)
        self.items.append(proc)
        return proc

    @staticmethod
    def _signal(proc: Proc, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # the group we created with start_new_session

    def stop_all(self, timeout: float = 5.0) -> None:
        live = [p for p in self.items if p.alive()]
        for p in live:
            self._signal(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in live:
            try:
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(p, signal.SIGKILL)
                p.popen.wait(5)
        # children left in a group whose leader already exited
        for p in self.items:
            self._signal(p, signal.SIGKILL)
        self.items.clear()


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state: the parent pid
            out.append(int(stat.parent.name))
    return out


def rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` and all its descendants (llmgw: the daemon and its ledger writer process)."""
    total = _rss_kb(pid)
    if total is None:
        return None
    todo = _children(pid)
    while todo:
        child = todo.pop()
        total += _rss_kb(child) or 0
        todo.extend(_children(child))
    return total / 1024.0


# --------------------------------------------------------------------------- HTTP checks

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def http(
    method: str, url: str, body: dict | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with _OPENER.open(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(proc: Proc, check, timeout: float) -> None:
    """Poll `check()` (True when ready) until it succeeds, the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    last: str = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            ok, last = check()
            if ok:
                return
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{proc.name} not ready after {timeout:.0f} s (last: {last[:300]})\n{proc.log_tail()}")


def post_check(url: str, body: dict, headers: dict[str, str]):
    def check() -> tuple[bool, str]:
        status, data = http("POST", url, body, headers)
        return status == 200, f"HTTP {status}: {data[:300]!r}"

    return check


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    model: str
    proc: Proc | None
    note: str = ""
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


def start_mock(procs: Procs) -> tuple[Proc, int]:
    port = free_port()
    proc = procs.start(
        "mock", [sys.executable, str(BENCH / "mock_upstream.py"), "--host", HOST, "--port", str(port)]
    )
    body = {"model": "gpt-4o-mini", "messages": PROMPT}
    wait_ready(proc, post_check(f"http://{HOST}:{port}/v1/chat/completions", body, {}), 20)
    return proc, port


def start_forwarder(procs: Procs, mock_port: int) -> Target:
    port = free_port()
    upstream = f"http://{HOST}:{mock_port}/v1"
    cmd = [
        sys.executable,
        str(BENCH / "forwarder.py"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--upstream",
        upstream,
    ]
    proc = procs.start("forwarder", cmd)
    t = Target(
        "forwarder",
        f"http://{HOST}:{port}/v1/chat/completions",
        {"Authorization": "Bearer x"},
        "gpt-4o-mini",
        proc,
    )
    wait_ready(proc, post_check(t.url, {"model": t.model, "messages": PROMPT}, t.headers), 20)
    return t


def start_llmgw(procs: Procs, mock_port: int, workdir: Path, python: str, name: str = "llmgw",
                extra_config: str = "", store_url: str | None = None,
                serve_args: tuple[str, ...] = ()) -> Target:
    home = workdir / f"{name}-home"
    home.mkdir()
    cfg = workdir / f"{name}.toml"
    cfg.write_text(
        "[providers.mock]\n"
        'type = "openai"\n'
        f'base_url = "http://{HOST}:{mock_port}/v1"\n'
        'api_key_env = "MOCK_KEY"\n' + extra_config
    )
    src = str(REPO / "src")
    pythonpath = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, **NO_PROXY_ENV, "PYTHONPATH": pythonpath, "MOCK_KEY": "x"}
    env.pop("LLMGW_HOME", None)
    env.pop("LLMGW_CONFIG", None)
    store_env: dict[str, str] = {}
    if store_url:  # [store] on PostgreSQL: the URL through the environment, the CLI reads the same config
        cfg.write_text(cfg.read_text() + '\n[store]\nurl_env = "BENCH_STORE_URL"\n')
        store_env = {"BENCH_STORE_URL": store_url, "LLMGW_CONFIG": str(cfg)}
        env.update(store_env)
    # Governance on, as the target demands: the key belongs to a team and a customer, has a
    # monthly budget, the customer a daily one, and the key request and token rate limits (all far
    # above what the run can spend, so every request is admitted but pays for the checks).
    def llmgw_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python, "-m", "llmgw", *args, "--home", str(home)], capture_output=True,
                              text=True, env=env, cwd=workdir, timeout=60)

    for step in (("customers", "create", "bench_customer"),
                 ("teams", "create", "bench_team", "--customer", "bench_customer"),
                 ("budget", "set", "--customer", "bench_customer", "--limit", "1000000", "--period", "day")):
        done = llmgw_cli(*step)
        if done.returncode != 0:
            raise BenchError(f"`llmgw {' '.join(step)}` failed: {(done.stderr or done.stdout).strip()[-800:]}")
    created = llmgw_cli("keys", "create", "--name", "bench", "--team", "bench_team", "--budget", "1000000",
                        "--period", "month", "--rpm", "100000000", "--tpm", "100000000000")
    lines = created.stdout.strip().splitlines()
    if created.returncode != 0 or len(lines) != 1:
        raise BenchError(
            f"`llmgw keys create` failed (exit {created.returncode}): "
            f"{(created.stderr or created.stdout).strip()[-800:]}"
        )
    secret = lines[0].strip()
    port = free_port()
    cmd = [
        python,
        "-m",
        "llmgw",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--home",
        str(home),
        "--config",
        str(cfg),
        *serve_args,
    ]
    proc = procs.start(name, cmd, env={"PYTHONPATH": pythonpath, "MOCK_KEY": "x", **store_env}, cwd=workdir)
    base = f"http://{HOST}:{port}"

    def healthz() -> tuple[bool, str]:
        status, data = http("GET", base + "/healthz")
        return status == 200, f"HTTP {status}: {data[:200]!r}"

    wait_ready(proc, healthz, 60)
    t = Target(
        name,
        base + "/v1/chat/completions",
        {"Authorization": f"Bearer {secret}"},
        "mock/gpt-4o-mini",
        proc,
    )
    wait_ready(proc, post_check(t.url, {"model": t.model, "messages": PROMPT}, t.headers), 20)
    return t


def start_litellm(procs: Procs, mock_port: int, workdir: Path, binary: str | None) -> Target:
    exe = binary or shutil.which("litellm")
    if not exe or not Path(exe).exists():
        raise BenchError(
            "not installed (pip install 'litellm[proxy]' in its own venv, then pass --litellm-bin PATH)"
        )
    cfg = workdir / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: mock-gpt\n"
        "    litellm_params:\n"
        "      model: openai/mock-gpt\n"
        f"      api_base: http://{HOST}:{mock_port}/v1\n"
        "      api_key: x\n"
    )
    port = free_port()
    env = {
        "LITELLM_MASTER_KEY": LITELLM_MASTER_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # do not fetch the price map from the internet
        "LITELLM_TELEMETRY": "False",
    }
    cmd = [exe, "--config", str(cfg), "--host", HOST, "--port", str(port), "--num_workers", "1"]
    proc = procs.start("litellm", cmd, env=env, cwd=workdir)
    t = Target(
        "litellm",
        f"http://{HOST}:{port}/v1/chat/completions",
        {"Authorization": f"Bearer {LITELLM_MASTER_KEY}"},
        "mock-gpt",
        proc,
        note="main pid RSS",
    )
    wait_ready(proc, post_check(t.url, {"model": t.model, "messages": PROMPT}, t.headers), 180)
    return t


def start_portkey(procs: Procs, mock_port: int, workdir: Path, portkey_dir: str | None) -> Target:
    node = shutil.which("node")
    root = Path(portkey_dir).expanduser() if portkey_dir else None
    entry = root / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js" if root else None
    if node is None or entry is None or not entry.exists():
        raise BenchError(
            "not installed (npm install @portkey-ai/gateway@1.15.2 with the @hono/node-server 1.13.8 "
            "override in a directory, then pass --portkey-dir DIR; see bench/README.md)"
        )
    preload = workdir / "loopback.cjs"
    preload.write_text(NODE_LOOPBACK_PRELOAD)
    port = free_port()
    proc = procs.start("portkey", [node, "--require", str(preload), str(entry), f"--port={port}"], cwd=root)
    headers = {
        "Authorization": "Bearer x",
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": f"http://{HOST}:{mock_port}/v1",
    }
    t = Target("portkey", f"http://{HOST}:{port}/v1/chat/completions", headers, "gpt-4o-mini", proc)
    wait_ready(proc, post_check(t.url, {"model": t.model, "messages": PROMPT}, t.headers), 60)
    return t


# --------------------------------------------------------------------------- measuring


MODES = ("non-stream", "stream")


def measure(t: Target, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    stream = mode == "stream"
    body: dict[str, Any] = {"model": t.model, "messages": PROMPT, "max_tokens": 16}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    load = {"concurrency": args.concurrency, "stream": stream, "tool": args.tool, "threads": args.threads}
    try:
        if args.warmup > 0:
            run_load(t.url, body, t.headers, duration=args.warmup, **load)
        res = run_load(t.url, body, t.headers, duration=args.duration, **load)
    except RuntimeError as exc:  # the load generator failed: say why, and whether the server died
        died = f"\n{t.name} exited:\n{t.proc.log_tail()}" if t.proc and not t.proc.alive() else ""
        raise BenchError(f"measuring {t.name} {mode}: {exc}{died}") from exc
    res["rss_mb"] = rss_mb(t.proc.pid) if t.proc else None
    log(
        f"  {t.name:<10} {mode:<10} {res['rps']:>9.0f} req/s  p50 {res['p50_ms']:.2f} ms  "
        f"p99 {res['p99_ms']:.2f} ms  errors {res['errors']}"
    )
    return res


def paired(num: list[dict[str, Any]], den: list[dict[str, Any]]) -> tuple[float, list[float]]:
    """The median over rounds of each round's req/s ratio, and the ratios: the two configurations of
    a round ran seconds apart, so a slower or faster phase of a shared machine (here the same
    configuration varies by 20-30 % between minutes) cancels out of each ratio."""
    rs = [a["rps"] / b["rps"] for a, b in zip(num, den, strict=True) if b["rps"]]
    return (statistics.median(rs) if rs else float("nan")), rs


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each figure over the rounds; errors summed; RSS from the last round."""
    out = dict(runs[-1])
    for key in ("rps", "p50_ms", "p99_ms", "mean_ms"):
        out[key] = statistics.median(r[key] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["requests"] = sum(r["requests"] for r in runs)
    out["rps_min"] = min(r["rps"] for r in runs)
    out["rps_max"] = max(r["rps"] for r in runs)
    out["rounds"] = len(runs)
    return out


def fmt(value: float | None, spec: str) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return format(value, spec)


def report(targets: list[Target], skipped: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    tool = next((r["tool"] for t in targets for r in t.results.values()), "-")
    print()
    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    print(
        f"llmgw bench: {tool}, concurrency {args.concurrency}, {args.duration:g} s per run{rounds}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    head = f"{'target':<10} {'mode':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'RSS MB':>7}"
    if args.rounds > 1:
        head += f" {'req/s min-max':>15}"
    print(head)
    print("-" * len(head))
    for t in targets:
        for mode, r in t.results.items():
            print(
                f"{t.name:<10} {mode:<10} {fmt(r['rps'], '9.0f')} {fmt(r['p50_ms'], '8.2f')} "
                f"{fmt(r['p99_ms'], '8.2f')} {r['errors']:>7} {fmt(r.get('rss_mb'), '7.1f')}"
                + (f" {r['rps_min']:>7.0f}-{r['rps_max']:.0f}" if args.rounds > 1 else "")
            )
    for name, why in skipped.items():
        print(f"{name:<10} skipped: {why.splitlines()[0]}")

    ratios: dict[str, Any] = {}
    by_name = {t.name: t for t in targets}
    gw, fw = by_name.get("llmgw"), by_name.get("forwarder")
    print()
    if gw and fw:
        for mode in ("non-stream", "stream"):
            g, f = gw.results.get(mode), fw.results.get(mode)
            if not g or not f or not f["rps"] or not f["p99_ms"]:
                continue
            rps_ratio = g["rps"] / f["rps"]
            p99_ratio = g["p99_ms"] / f["p99_ms"]
            ratios[mode] = {"rps": rps_ratio, "p99": p99_ratio}
            print(
                f"llmgw/forwarder {mode:<10}  rps {rps_ratio:.2f}x "
                f"({'ok' if rps_ratio >= RPS_TARGET else 'BELOW'} target >= {RPS_TARGET}x)   "
                f"p99 {p99_ratio:.2f}x ({'ok' if p99_ratio <= P99_TARGET else 'ABOVE'} target <= {P99_TARGET}x)"
            )
    else:
        print("llmgw/forwarder ratios: n/a (needs both llmgw and forwarder in --targets)")
    pg = by_name.get("llmgw-pg")
    if pg and gw:
        for mode in ("non-stream", "stream"):
            p, g = pg.results.get(mode), gw.results.get(mode)
            if p and g and g["rps"] and g["p99_ms"]:
                ratios[f"pg-{mode}"] = {"rps": p["rps"] / g["rps"], "p99": p["p99_ms"] / g["p99_ms"]}
                print(f"llmgw-pg/llmgw  {mode:<10}  rps {p['rps'] / g['rps']:.2f}x   p99 {p['p99_ms'] / g['p99_ms']:.2f}x"
                      "   (the store on PostgreSQL against the embedded SQLite default)")
    return {
        "tool": tool,
        "concurrency": args.concurrency,
        "duration": args.duration,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "results": {t.name: t.results for t in targets},
        "skipped": skipped,
        "ratios": ratios,
    }


# ---- --cache: the response cache's cost on the request path ----------------------------------------

CACHE_CONFIGS = {"cache-off": "", "cache-exact": '[cache]\nmode = "exact"\n',
                 "cache-semantic": '[cache]\nmode = "semantic"\n'}
CACHE_LUA = """
local counter = 0
local prefix = {prefix}
wrk.method = "POST"
{headers}
request = function()
  counter = counter + 1
  local text
  if {fixed} then
    text = {fixed_text}
  else
    text = string.format("Write a short catalogue caption for this product. sku: %s-%d", prefix, counter)
  end
  local stream = ""
  if {streams} and counter % 5 == 0 then stream = '"stream": true, ' end
  local body = string.format('{{"model": "%s", "max_tokens": 16, %s"messages": [{{"role": "user", "content": "%s"}}]}}',
                             {model}, stream, text)
  return wrk.format(nil, nil, nil, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("{tag} %d %d %d %d %d %d %d %.1f %.1f %.1f %.1f\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""
SEEDED = "Write a short catalogue caption for this product. sku: SEED-1"
PARAPHRASE = "Please write a short catalogue caption for the product. sku: SEED-1"


def print_table(rows: list[tuple[str, str, dict[str, Any]]], name_w: int, mode_w: int) -> None:
    """One line per (config, mode): req/s, p50, p99, errors, server RSS."""
    head = f"{'config':<{name_w}} {'mode':<{mode_w}} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'RSS MB':>7}"
    print(head)
    print("-" * len(head))
    for name, mode, r in rows:
        print(f"{name:<{name_w}} {mode:<{mode_w}} {fmt(r['rps'], '9.0f')} {fmt(r['p50_ms'], '8.2f')} "
              f"{fmt(r['p99_ms'], '8.2f')} {r['errors']:>7} {fmt(r.get('rss_mb'), '7.1f')}")


def cache_load(t: Target, args: argparse.Namespace, *, fixed: str | None, streams: bool) -> dict[str, Any]:
    """wrk with a fresh prompt per request (every request a cache miss, 1 in 5 streamed when
    ``streams``), or one ``fixed`` prompt (a hit once it is cached)."""
    import uuid

    from loadgen import RESULT_TAG, _lua_string, _parse_wrk

    hdrs = {"Content-Type": "application/json", **t.headers}
    script = CACHE_LUA.format(
        prefix=_lua_string(uuid.uuid4().hex[:10]), headers="\n".join(
            f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in hdrs.items()),
        fixed="true" if fixed else "false", fixed_text=_lua_string(fixed or ""), streams="true" if streams else "false",
        model=_lua_string(t.model), tag=RESULT_TAG)
    path = Path(tempfile.mkstemp(suffix=".lua", prefix="cache-load-")[1])
    path.write_text(script)
    try:
        proc = subprocess.run(["wrk", "-t1", f"-c{args.concurrency}", f"-d{max(1, round(args.duration))}s",
                               "--timeout", "30s", "--latency", "-s", str(path), t.url],
                              capture_output=True, text=True, timeout=args.duration + 60)
        if proc.returncode != 0 or RESULT_TAG not in proc.stdout:
            raise BenchError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
        res = _parse_wrk(proc.stdout)
    finally:
        path.unlink()
    res["rss_mb"] = rss_mb(t.proc.pid) if t.proc else None
    return res


def run_cache(args: argparse.Namespace, procs: Procs, workdir: Path) -> int:
    """Throughput with the cache off, exact and semantic in one run: every request a miss (new
    prompts, 20 % streams), then hits (semantic: a paraphrase of a stored prompt; exact: the same
    prompt). Target: semantic misses >= 0.7x cache off, and hits faster than misses."""
    if not have_wrk():
        raise SystemExit("--cache needs wrk on PATH (apt-get install -y wrk): a fresh prompt per request")
    log(f"starting servers (logs in {workdir})")
    _, mock_port = start_mock(procs)
    targets = {name: start_llmgw(procs, mock_port, workdir, args.python, name, extra)
               for name, extra in CACHE_CONFIGS.items()}
    for t in targets.values():
        for text in (SEEDED, SEEDED):  # stored, then served: every index and model is warm
            http("POST", t.url, {"model": t.model, "messages": [{"role": "user", "content": text}],
                                 "max_tokens": 16}, t.headers)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rnd in range(args.rounds):
        log(f"round {rnd + 1}/{args.rounds}")
        for name, t in targets.items():
            runs = results.setdefault(name, {})
            if args.warmup > 0:
                saved, args.duration = args.duration, args.warmup
                cache_load(t, args, fixed=None, streams=True)
                args.duration = saved
            runs.setdefault("miss", []).append(cache_load(t, args, fixed=None, streams=True))
            if name != "cache-off":
                runs.setdefault("hit", []).append(
                    cache_load(t, args, fixed=PARAPHRASE if name == "cache-semantic" else SEEDED, streams=False))
            for mode, rs in runs.items():
                r = rs[-1]
                log(f"  {name:<15} {mode:<5} {r['rps']:>8.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
                    f"  errors {r['errors']}")
    final = {name: {mode: combine(rs) for mode, rs in runs.items()} for name, runs in results.items()}
    print()
    print(f"llmgw cache bench: wrk -t1 -c{args.concurrency}, {args.duration:g} s per run, median of {args.rounds} "
          f"round(s), {os.cpu_count()} CPUs; misses: a new prompt per request, 1 in 5 streamed")
    print_table([(name, mode, r) for name, modes in final.items() for mode, r in modes.items()], 15, 5)
    sem = final["cache-semantic"]
    ratio, per_round = paired(results["cache-semantic"]["miss"], results["cache-off"]["miss"])
    exact, _ = paired(results["cache-exact"]["miss"], results["cache-off"]["miss"])
    print(f"\nsemantic misses / cache off: {ratio:.2f}x ({'ok' if ratio >= 0.7 else 'BELOW'} target >= 0.7x; "
          f"median of the rounds' ratios {', '.join(f'{r:.2f}' for r in per_round)}); exact misses / off: {exact:.2f}x")
    faster = sem["hit"]["rps"] > sem["miss"]["rps"] and sem["hit"]["p50_ms"] < sem["miss"]["p50_ms"]
    print(f"semantic hits {sem['hit']['rps']:.0f} req/s, p50 {sem['hit']['p50_ms']:.2f} ms vs misses "
          f"{sem['miss']['rps']:.0f} req/s, p50 {sem['miss']['p50_ms']:.2f} ms: hits {'faster' if faster else 'NOT faster'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": final, "semantic_miss_ratio": ratio}, indent=2))
    return 0


def start_redis(procs: Procs) -> str:
    """A throwaway redis-server (no persistence) on a free loopback port: its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("--cluster needs redis-server on PATH (apt-get install -y redis-server)")
    port = free_port()
    proc = procs.start("redis", [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"])

    def ping() -> tuple[bool, str]:
        try:
            with socket.create_connection((HOST, port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                got = c.recv(16)
            return got.startswith(b"+PONG"), repr(got)
        except OSError as e:
            return False, str(e)

    wait_ready(proc, ping, 20)
    return f"redis://{HOST}:{port}/0"


def run_cluster(args: argparse.Namespace, procs: Procs, workdir: Path) -> int:
    """Per-instance throughput with cluster mode on (budgets leased from Redis, the key's rate-limit
    cells taken in batches) against the embedded default, same governance, interleaved rounds, and
    ``serve --workers 2`` against one process. Target: cluster >= 0.8x embedded."""
    log(f"starting servers (logs in {workdir})")
    _, mock_port = start_mock(procs)
    url = start_redis(procs)
    targets = {
        "embedded": start_llmgw(procs, mock_port, workdir, args.python, "embedded"),
        "cluster": start_llmgw(procs, mock_port, workdir, args.python, "cluster",
                               f'[cluster]\nredis_url = "{url}"\n'),
        "workers-2": start_llmgw(procs, mock_port, workdir, args.python, "workers-2",
                                 f'[cluster]\nredis_url = "{url}"\nprefix = "w2"\n', serve_args=("--workers", "2")),
    }
    if args.store_url:  # the whole scale-out stack: caps in Redis, definitions and ledger in PostgreSQL
        targets["cluster-pg"] = start_llmgw(procs, mock_port, workdir, args.python, "cluster-pg",
                                            f'[cluster]\nredis_url = "{url}"\nprefix = "pg"\n',
                                            store_url=args.store_url)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rnd in range(args.rounds):
        log(f"round {rnd + 1}/{args.rounds}")
        for t in targets.values():
            for mode in MODES:
                runs.setdefault((t.name, mode), []).append(measure(t, mode, args))
    final = {(name, mode): combine(rs) for (name, mode), rs in runs.items()}
    print()
    print(f"llmgw cluster bench: concurrency {args.concurrency}, {args.duration:g} s per run, median of "
          f"{args.rounds} round(s), {os.cpu_count()} CPUs; governance on (budgets, rpm/tpm) in both")
    print_table([(name, mode, r) for (name, mode), r in final.items()], 10, 10)
    ratios = {}
    print("(ratios: the median over rounds of each round's ratio; the rounds' ratios in brackets)")
    for mode in MODES:
        base = runs[("embedded", mode)]
        ratios[mode], rs = paired(runs[("cluster", mode)], base)
        print(f"cluster / embedded {mode}: {ratios[mode]:.2f}x "
              f"({'ok' if ratios[mode] >= RPS_TARGET else 'BELOW'} target >= {RPS_TARGET}x) "
              f"[{', '.join(f'{r:.2f}' for r in rs)}]")
        if "cluster-pg" in targets:
            r, rs = paired(runs[("cluster-pg", mode)], base)
            ratios[f"cluster-pg/{mode}"] = r
            print(f"cluster + PostgreSQL / embedded {mode}: {r:.2f}x "
                  f"({'ok' if r >= RPS_TARGET else 'BELOW'} target >= {RPS_TARGET}x) "
                  f"[{', '.join(f'{x:.2f}' for x in rs)}]")
    for mode in MODES:
        ratios[f"workers-2/{mode}"], _ = paired(runs[("workers-2", mode)], runs[("cluster", mode)])
        print(f"--workers 2 / one process (both with Redis) {mode}: {ratios[f'workers-2/{mode}']:.2f}x "
              f"on {os.cpu_count()} CPUs (the load generator and the mock share them)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": {f"{n}/{m}": r for (n, m), r in final.items()},
                                               "ratios": ratios}, indent=2))
    return 0


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="llmgw throughput benchmark (prints numbers; not a test)")
    parser.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma list of mock,forwarder,llmgw")
    parser.add_argument(
        "--peers", default="", help="comma list of litellm,portkey (skipped if not installed)"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat every measurement, interleaved; report medians"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of unmeasured load before each run"
    )
    parser.add_argument("--tool", choices=["auto", "wrk", "aiohttp"], default="auto", help="load generator")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (REFERENCE.md used -t1)")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs llmgw")
    parser.add_argument(
        "--litellm-bin", default=os.environ.get("LITELLM_BIN"), help="path to the litellm CLI"
    )
    parser.add_argument(
        "--portkey-dir",
        default=os.environ.get("PORTKEY_DIR"),
        help="dir with node_modules/@portkey-ai/gateway",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--cache", action="store_true",
                        help="instead: llmgw with the response cache off, exact and semantic (misses and hits)")
    parser.add_argument("--cluster", action="store_true",
                        help="instead: one llmgw instance with [cluster] (a throwaway redis-server) against the "
                             "embedded default")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, server logs)")
    parser.add_argument("--store-url", default=os.environ.get("BENCH_STORE_URL"), metavar="URL",
                        help="also measure llmgw-pg: llmgw with [store] on this (empty) PostgreSQL database "
                             "(or $BENCH_STORE_URL); its ratio to llmgw is printed")
    args = parser.parse_args(argv)
    targets = parse_list(args.targets, ALL_TARGETS, "target")
    peers = parse_list(args.peers, ALL_PEERS, "peer")
    if args.rounds < 1 or args.concurrency < 1 or args.duration <= 0:
        raise SystemExit("--rounds and --concurrency must be >= 1, --duration > 0")
    if not targets and not peers:
        raise SystemExit("nothing to measure")
    if args.tool == "wrk" and not have_wrk():
        raise SystemExit("wrk is not on PATH (apt-get install -y wrk)")
    if args.tool == "auto" and not have_wrk():
        log(
            "wrk not on PATH: using the built-in aiohttp load generator (apt-get install -y wrk for better numbers)"
        )

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="llmgw-bench-"))
    procs = Procs(workdir)
    if args.cache or args.cluster:
        try:
            return (run_cache if args.cache else run_cluster)(args, procs, workdir)
        except KeyboardInterrupt:
            log("interrupted: stopping servers")
            return 130
        except BenchError as exc:
            log(f"error: {exc}")
            return 1
        finally:
            procs.stop_all()
            if args.keep:
                log(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    measured: list[Target] = []
    skipped: dict[str, str] = {}
    try:
        log(f"starting servers (logs in {workdir})")
        mock_proc, mock_port = start_mock(procs)
        ready: list[Target] = []
        if "mock" in targets:
            url = f"http://{HOST}:{mock_port}/v1/chat/completions"
            ready.append(Target("mock", url, {"Authorization": "Bearer x"}, "gpt-4o-mini", mock_proc))
        starters = {
            "forwarder": lambda: start_forwarder(procs, mock_port),
            "llmgw": lambda: start_llmgw(procs, mock_port, workdir, args.python),
            "llmgw-pg": lambda: start_llmgw(procs, mock_port, workdir, args.python, "llmgw-pg",
                                            store_url=args.store_url),
            "litellm": lambda: start_litellm(procs, mock_port, workdir, args.litellm_bin),
            "portkey": lambda: start_portkey(procs, mock_port, workdir, args.portkey_dir),
        }
        extra_targets = ["llmgw-pg"] if args.store_url else []
        for name in [t for t in targets if t != "mock"] + extra_targets + peers:
            try:
                ready.append(starters[name]())
                log(f"  {name} ready")
            except BenchError as exc:
                skipped[name] = str(exc)
                log(f"  skipping {name}: {exc}")
        log(
            f"measuring: concurrency {args.concurrency}, {args.duration:g} s per run, warm-up {args.warmup:g} s"
        )
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for rnd in range(args.rounds):
            if args.rounds > 1:
                log(f"round {rnd + 1}/{args.rounds}")
            for t in ready:  # interleaved, so slow drift on a shared machine hits every target alike
                for mode in MODES:
                    runs.setdefault((t.name, mode), []).append(measure(t, mode, args))
        for t in ready:
            t.results = {mode: combine(runs[(t.name, mode)]) for mode in MODES}
            measured.append(t)
        summary = report(measured, skipped, args)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2))
        return 0
    except KeyboardInterrupt:
        log("interrupted: stopping servers")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        procs.stop_all()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
