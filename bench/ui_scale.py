"""The finance page's JSON and CSV endpoints on a big home: how long each takes to answer.

    python bench/ui_scale.py                  # N = 1,000,000 rows
    python bench/ui_scale.py --rows 10000000  # the issue's target size (fill: about 10 minutes)
    python bench/ui_scale.py --home KEPT      # reuse a home bench/ledger_scale.py or this script kept

Builds the home the way ``bench/ledger_scale.py`` does (its ``fill``: 80 customers, 3 keys each, a
monthly budget each, N rows over the 30 days before now), starts ``llmgw serve`` with ``[ui]`` on
(the first start catches the roll-ups up), and times each endpoint over loopback with a bearer
token: the first call and the median of ``--repeat`` more. Then checks that the page's total for
the month equals a raw ``SUM`` over the ledger. Target: every endpoint under 300 ms at 10M rows.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "src"))

import ledger_scale  # noqa: E402

from llmgw import paths  # noqa: E402
from llmgw.units import window  # noqa: E402

TOKEN = "bench-ui-token-0123456789abcdef"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> tuple[float, bytes]:
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {TOKEN}"})
    t = time.perf_counter()
    with _OPENER.open(req, timeout=120) as r:
        body = r.read()
    return time.perf_counter() - t, body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--home", type=Path, help="reuse this home")
    ap.add_argument("--keep", action="store_true", help="keep the home this run builds")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    now = int(time.time() * 1000)
    tmp = None
    out: list[tuple[str, str]] = []
    if args.home is not None:
        home = args.home
    else:
        tmp = Path(tempfile.mkdtemp(prefix="llmgw-ui-"))
        home = tmp / "home"
        out.append(("fill", f"{ledger_scale.fill(home, args.rows, now):.1f} s"))
    (home / "llmgw.toml").write_text('[ui]\ntoken_env = "BENCH_UI_TOKEN"\ncurrency = "EUR"\nrate = "0.92"\n')
    conn = sqlite3.connect(paths.db_path(home))
    nrows = conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
    conn.close()
    out.insert(0, ("ledger rows", f"{nrows:,}"))

    env_for = ledger_scale.env_for
    ledger_scale.env_for = lambda h: {**env_for(h), "BENCH_UI_TOKEN": TOKEN}  # type: ignore[assignment]
    port = ledger_scale.free_port()
    real_free_port = ledger_scale.free_port
    ledger_scale.free_port = lambda: port  # type: ignore[assignment]
    proc, started = ledger_scale.start(home)
    ledger_scale.free_port = real_free_port  # type: ignore[assignment]
    out.append(("serve -> /healthz (roll-up catch-up included)", f"{started:.2f} s"))
    base = f"http://127.0.0.1:{port}"
    month = time.strftime("%Y-%m", time.gmtime(now / 1000))
    prev = time.strftime("%Y-%m", time.gmtime((window("month", now)[0] - 1) / 1000))
    since = time.strftime("%Y-%m-%d", time.gmtime((now - 15 * ledger_scale.DAY_MS) / 1000))
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((now - 3 * ledger_scale.DAY_MS) / 1000 + 1234))
    endpoints = [
        ("/ui/api/customers (this month)", f"/ui/api/customers?period={month}"),
        ("/ui/api/errors (this month)", f"/ui/api/errors?period={month}"),
        ("/ui/api/customers (last month: monthly roll-ups)", f"/ui/api/customers?period={prev}"),
        ("/ui/api/errors (last month)", f"/ui/api/errors?period={prev}"),
        ("/ui/api/customer/cust00 (last month: 30 per-day queries)", f"/ui/api/customer/cust00?period={prev}"),
        ("/ui/api/customers?last=30", "/ui/api/customers?last=30"),
        ("/ui/api/errors?last=30", "/ui/api/errors?last=30"),
        ("/ui/api/customers, custom range (partial hours at the edges)",
         f"/ui/api/customers?since={since}&until={until}"),
        ("/ui/api/customer/cust00 (daily, models, keys, budgets, cache, errors)",
         f"/ui/api/customer/cust00?period={month}"),
        ("/ui/api/customer/cust00?last=30", "/ui/api/customer/cust00?last=30"),
        ("/ui/api/customers.csv (= llmgw report --format csv)", f"/ui/api/customers.csv?period={month}"),
        ("/ui/api/customer/cust00/daily.csv?converted=1", f"/ui/api/customer/cust00/daily.csv?period={month}&converted=1"),
        ("/ui/api/budgets.csv (80 budgets)", "/ui/api/budgets.csv"),
    ]
    try:
        for label, path in endpoints:
            first, _ = get(base + path)
            times = [get(base + path)[0] for _ in range(args.repeat)]
            out.append((label, f"first {first * 1000:.0f} ms, median {statistics.median(times) * 1000:.0f} ms,"
                               f" max {max(times) * 1000:.0f} ms"))
        for label, q in (("this month", f"period={month}"), ("last month", f"period={prev}"),
                         ("last 30 days", "last=30")):
            # the overview as the page loads it: customers and errors at the same time
            with ThreadPoolExecutor(2) as pool:
                loads = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    list(pool.map(get, [f"{base}/ui/api/customers?{q}", f"{base}/ui/api/errors?{q}"]))
                    loads.append(time.perf_counter() - t)
            out.append((f"overview data as the page loads it ({label}, both in parallel)",
                        f"median {statistics.median(loads) * 1000:.0f} ms, max {max(loads) * 1000:.0f} ms"))
        _, body = get(base + f"/ui/api/customers?period={month}")
        got = json.loads(body)["customers"]["total"]["cost_nanos"]
    finally:
        ledger_scale.stop(proc)
    start, end = window("month", now)
    conn = sqlite3.connect(paths.db_path(home))
    raw = conn.execute("SELECT COALESCE(SUM(cost_nanos), 0) FROM ledger WHERE ts_ms >= ? AND ts_ms < ?",
                       (start, end)).fetchone()[0]
    conn.close()
    out.append(("the month's total equals the raw SUM", "yes" if got == raw else f"NO: {got} != {raw}"))
    ledger_scale.finish(out, tmp, home, keep=args.keep)


if __name__ == "__main__":
    main()
