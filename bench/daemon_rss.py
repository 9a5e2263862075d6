"""The real daemon's memory with a full semantic cache: issue 4's "RSS <= 200 MB at 100k entries".

    python bench/daemon_rss.py                        # builds 100,000 entries with cache_bench.py
    python bench/daemon_rss.py --home KEPT --misses 500   # a home kept by cache_bench.py --keep

cache_bench.py measures a bare lookup process; this starts ``llmgw serve`` itself on the filled
home (the demo provider, ``[cache] mode = "semantic"``, ``max_entries`` = the entry count, so
every miss also evicts), sends ``--misses`` distinct requests (each: a lookup, a demo answer, a
store, an eviction) and prints the memory after start-up and after the misses:
- RSS of the daemon's main process and of its child processes (the ledger writer and the
  response cache process, which holds the model, the partitions and the index);
- PSS of all of them together (proportional set size, /proc/PID/smaps_rollup): the pages they
  share (the interpreter, libraries) counted once, which is what the daemon really costs.
Loopback only; the daemon is stopped at the end, and a home this script built is deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SRC = BENCH.parent / "src"
TARGET_MB = 200.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy


def kb(pid: int, field: str, source: str = "status") -> int:
    text = Path(f"/proc/{pid}/{source}").read_text()
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    if m is None:
        raise RuntimeError(f"no {field} in /proc/{pid}/{source}")
    return int(m.group(1))


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def memory(pid: int) -> dict[str, float]:
    kids = children(pid)
    return {
        "main_rss_mb": kb(pid, "VmRSS") / 1024,
        "children_rss_mb": sum(kb(c, "VmRSS") for c in kids) / 1024,
        "tree_pss_mb": (kb(pid, "Pss", "smaps_rollup") + sum(kb(c, "Pss", "smaps_rollup") for c in kids)) / 1024,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def llmgw(python: str, env: dict[str, str], *args: str) -> str:
    r = subprocess.run([python, "-m", "llmgw", *args], capture_output=True, text=True, env=env, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"llmgw {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def post(url: str, key: str, text: str) -> int:
    body = json.dumps({"model": "demo/echo", "messages": [{"role": "user", "content": text}]}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with _OPENER.open(req, timeout=30) as r:
        r.read()
        return int(r.status)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, help="a home kept by cache_bench.py --keep (else one is built)")
    ap.add_argument("--entries", type=int, default=100_000, help="entries to build when --home is not given")
    ap.add_argument("--misses", type=int, default=300, help="distinct requests sent after start-up")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--json", help="also write the numbers to this file ('-' = stdout)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    built = None
    home = args.home
    if home is None:
        print(f"building {args.entries:,} entries with cache_bench.py ...", file=sys.stderr)
        r = subprocess.run([args.python, str(BENCH / "cache_bench.py"), "--entries", str(args.entries),
                            "--queries", "50", "--keep"], capture_output=True, text=True, env=env)
        m = re.search(r"^kept (\S+)", r.stdout + r.stderr, re.M)
        if r.returncode != 0 or m is None:
            print(r.stdout + r.stderr, file=sys.stderr)
            return 1
        home = built = Path(m.group(1))
    workdir = Path(tempfile.mkdtemp(prefix="llmgw-daemon-rss-"))
    proc = None
    try:
        entries = int(json.loads((home / "build.json").read_text()).get("entries", args.entries)) \
            if (home / "build.json").exists() else args.entries
        cfg = workdir / "llmgw.toml"
        cfg.write_text(f'[providers.demo]\ntype = "demo"\n\n[cache]\nmode = "semantic"\nmax_entries = {entries}\n')
        key = llmgw(args.python, env, "keys", "create", "--name", f"rss-{os.getpid()}", "--home", str(home))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(workdir / "daemon.log", "wb")
        proc = subprocess.Popen([args.python, "-m", "llmgw", "serve", "--host", "127.0.0.1", "--port", str(port),
                                 "--home", str(home), "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                with _OPENER.open(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the daemon did not become ready:\n" + (workdir / "daemon.log").read_text())
            time.sleep(0.2)
        post(url, key, "warm-up request for the daemon rss benchmark")
        time.sleep(0.5)
        start = memory(proc.pid)
        t0 = time.perf_counter()
        for i in range(args.misses):
            post(url, key, f"daemon rss benchmark: write a caption for product {i}, brand: Acme, sku: {91000 + i}")
        elapsed = time.perf_counter() - t0
        after = memory(proc.pid)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)
        if built is not None:
            shutil.rmtree(built, ignore_errors=True)
    print(f"llmgw daemon with {entries:,} semantic cache entries; {args.misses} misses "
          f"(lookup + demo answer + store + eviction) in {elapsed:.1f} s")
    print(f"{'':22}{'main RSS':>10}{'children RSS':>14}{'all PSS':>10}   (MB)")
    for name, m in (("after start-up", start), (f"after {args.misses} misses", after)):
        print(f"{name:22}{m['main_rss_mb']:>10.1f}{m['children_rss_mb']:>14.1f}{m['tree_pss_mb']:>10.1f}")
    worst = max(start["tree_pss_mb"], after["tree_pss_mb"])
    verdict = "ok" if worst <= TARGET_MB else "ABOVE"
    print(f"target daemon memory <= {TARGET_MB:.0f} MB at {entries:,} entries (PSS of main + children): "
          f"{worst:.1f} MB  {verdict}")
    if args.json:
        data = json.dumps({"entries": entries, "misses": args.misses, "start": start, "after": after}, indent=1)
        if args.json == "-":
            print(data)
        else:
            Path(args.json).write_text(data)
    return 0 if worst <= TARGET_MB else 2


if __name__ == "__main__":
    sys.exit(main())
