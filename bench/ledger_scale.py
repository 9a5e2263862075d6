"""The ledger at production scale: what history costs to read after months of traffic.

    python bench/ledger_scale.py                 # N = 1,000,000 rows
    python bench/ledger_scale.py --rows 10000000 # the issue's target size (about 10 minutes)
    python bench/ledger_scale.py --home KEPT     # reuse a home this script built (--keep)

Builds a home with N ledger rows spread over the 30 days before now (80 customers, 3 keys each,
a monthly budget each) through the project's own code: definitions with the governance functions,
rows as the writer process inserts them (``writer_proc.insert``, 512-row batches), *without*
rolling them up, like a home written by a version before roll-ups. Then prints:

- fill time; first ``llmgw serve`` to ``/healthz`` (it catches the roll-ups up first: the
  upgrade path) and a second start after it;
- ``llmgw report --by customer --period <month>`` and ``llmgw budget show --json`` as commands
  (wall time, Python start included) with no daemon and next to a running one;
- ``llmgw top``'s first paint (Textual, headless, until the customers table is filled) with and
  without a daemon;
- ``llmgw ledger prune`` of the oldest 10 days: its time and the database size before and after;
- that every number printed by the report equals a raw ``SUM`` over the ledger (exact).

Targets at N = 10M on a 2-core machine: report <= 0.5 s, budget show <= 0.5 s, top first paint
<= 2 s (daemon up or not), serve to healthz <= 5 s after the catch-up. Loopback only; the daemon is
stopped at the end and a home this script built is deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))

from llmgw import paths  # noqa: E402
from llmgw.governance import budgets, hierarchy, keys  # noqa: E402
from llmgw.store import db, ledger, rollups  # noqa: E402
from llmgw.store.writer_proc import insert  # noqa: E402
from llmgw.units import DAY_MS  # noqa: E402

CUSTOMERS, KEYS_EACH = 80, 3
MODELS = [("openai/gpt-4o-mini", "openai"), ("openai/gpt-4o", "openai"), ("anthropic/claude-haiku-4-5", "anthropic")]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMGW_", "OPENAI_", "ANTHROPIC_"))}
    env.update(LLMGW_HOME=str(home), PYTHONPATH=str(BENCH.parent / "src"), COLUMNS="200")
    return env


def fill(home: Path, n: int, now_ms: int) -> float:
    home.mkdir(parents=True, exist_ok=True)
    conn = db.open_db(paths.db_path(home))
    key_ids = []
    with db.transaction(conn):
        for c in range(CUSTOMERS):
            cid = f"cust{c:02d}"
            hierarchy.create_customer(conn, cid, name=f"Customer {c}")
            for k in range(KEYS_EACH):
                key_ids.append((cid, keys.mint(conn, name=f"{cid}-k{k}", customer_id=cid)[1].id))
            budgets.upsert_budget(conn, "customer", cid, "month", 10**15, hard=True)
    conn.isolation_level = None
    # no roll-ups: a home written before they existed (the watermark stays at 0)
    rnd = random.Random(42)
    start = now_ms - 30 * DAY_MS
    step = 30 * DAY_MS / n
    started = time.perf_counter()
    batch: list[tuple[object, ...]] = []
    for i in range(n):
        cid, kid = key_ids[rnd.randrange(len(key_ids))]
        model, provider = MODELS[rnd.randrange(3)]
        status = 200 if rnd.random() < 0.97 else rnd.choice((429, 502))
        cache = None if rnd.random() < 0.7 else rnd.choice(("miss", "hit-exact", "hit-semantic"))
        batch.append(ledger.as_tuple({
            "request_id": f"req_{i:010d}", "ts_ms": int(start + i * step), "route": "/v1/chat/completions",
            "model": model, "provider": provider, "status": status, "outcome": "ok" if status == 200 else "error",
            "error_type": None if status == 200 else "upstream_error", "prompt_tokens": rnd.randrange(2000),
            "completion_tokens": rnd.randrange(400), "cost_nanos": rnd.randrange(5_000_000),
            "latency_ms": 100.0, "key_id": kid, "customer_id": cid, "cache": cache,
            "saved_nanos": rnd.randrange(1000) if cache and cache.startswith("hit") else 0,
        }))
        if len(batch) == 512:
            insert(conn, batch)
            batch = []
    if batch:
        insert(conn, batch)
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(home: Path) -> tuple[subprocess.Popen[bytes], float]:
    port = free_port()
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "llmgw", "serve", "--port", str(port)], env=env_for(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while True:
        try:
            with _OPENER.open(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return proc, time.perf_counter() - t
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("llmgw serve exited") from None
            time.sleep(0.05)  # polling a server that is starting up, not a test


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)


def timed_cli(home: Path, *args: str) -> tuple[float, str]:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "llmgw", *args], env=env_for(home), capture_output=True, text=True,
                         timeout=600)
    if res.returncode:
        raise RuntimeError(f"llmgw {' '.join(args)} failed: {res.stderr}")
    return time.perf_counter() - t, res.stdout


def top_first_paint(home: Path) -> float:
    from llmgw.tui.app import TopApp

    async def run() -> float:
        t = time.perf_counter()
        app = TopApp(paths.db_path(home), refresh=60.0)
        async with app.run_test(size=(120, 40)) as pilot:
            while True:
                table = app.screen.query("#customers")
                if table and len(table.first().rows) >= CUSTOMERS:
                    return time.perf_counter() - t
                await pilot.pause(0.01)

    return asyncio.run(run())


def drop_caches_note() -> str:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "cold (page cache dropped)"
    except OSError:
        return "warm (could not drop the page cache)"


def finish(out: list[tuple[str, str]], tmp: Path | None, home: Path, *, keep: bool) -> None:
    """Print the ``(measure, value)`` table; delete the home this run built unless ``keep``."""
    width = max(len(k) for k, _ in out)
    for k, v in out:
        print(f"{k:<{width}}  {v}")
    if tmp is not None and not keep:
        shutil.rmtree(tmp)
    elif tmp is not None:
        print(f"kept: --home {home}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--home", type=Path, help="reuse this home (built by an earlier --keep run)")
    ap.add_argument("--keep", action="store_true", help="keep the home this run builds")
    args = ap.parse_args()
    now = int(time.time() * 1000)
    tmp = None
    if args.home is not None:
        home, fill_s = args.home, None
    else:
        tmp = Path(tempfile.mkdtemp(prefix="llmgw-ledger-"))
        home = tmp / "home"
        fill_s = fill(home, args.rows, now)
    dbfile = paths.db_path(home)
    conn = sqlite3.connect(dbfile)
    nrows = conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
    conn.close()
    month = time.strftime("%Y-%m", time.gmtime(now / 1000))
    out: list[tuple[str, str]] = [("ledger rows", f"{nrows:,}")]
    if fill_s is not None:
        out.append(("fill (writer_proc.insert, 512-row batches)", f"{fill_s:.1f} s ({nrows / fill_s:,.0f} rows/s)"))
    out.append(("page cache at first start", drop_caches_note()))
    proc, first = start(home)
    stop(proc)
    out.append(("first serve -> /healthz (roll-up catch-up included)", f"{first:.2f} s"))
    proc, second = start(home)
    out.append(("serve -> /healthz after the catch-up", f"{second:.2f} s"))
    since = time.strftime("%Y-%m-%d", time.gmtime((now - 30 * DAY_MS) / 1000))
    last30 = ("report", "--by", "customer", "--since", since, "--format", "json")
    try:
        rep_s, rep = timed_cli(home, *last30)
        month_s, _ = timed_cli(home, "report", "--by", "customer", "--period", month, "--format", "json")
        show_s, _ = timed_cli(home, "budget", "show", "--json")
        top_up = top_first_paint(home)
    finally:
        stop(proc)
    rep2_s, _ = timed_cli(home, *last30)
    show2_s, _ = timed_cli(home, "budget", "show", "--json")
    top_down = top_first_paint(home)
    help_s, _ = timed_cli(home, "--help")
    out += [("llmgw --help (the CLI's own start, in every time below)", f"{help_s:.2f} s"),
            (f"report --by customer --since {since}, all rows (daemon up / none)", f"{rep_s:.2f} s / {rep2_s:.2f} s"),
            (f"report --by customer --period {month} (daemon up)", f"{month_s:.2f} s"),
            ("budget show --json (daemon up / none)", f"{show_s:.2f} s / {show2_s:.2f} s"),
            ("top first paint, 120x40 (daemon up / none)", f"{top_up:.2f} s / {top_down:.2f} s")]
    # exactness: the report's numbers against a raw SUM over the same month
    conn = sqlite3.connect(dbfile)
    raw = dict(conn.execute("SELECT customer_id, SUM(cost_nanos) FROM ledger WHERE ts_ms >= ?"
                            " GROUP BY customer_id", (now - now % DAY_MS - 30 * DAY_MS,)).fetchall())
    got = {g["id"]: g["cost_nanos"] for g in json.loads(rep)["groups"]}
    out.append(("report equals the raw SUM, per customer", "yes" if got == raw else f"NO: {got} != {raw}"))
    page, count = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count"))
    conn.close()
    before = page * count
    cut = time.strftime("%Y-%m-%d", time.gmtime((now - 20 * DAY_MS) / 1000))
    prune_s, _ = timed_cli(home, "ledger", "prune", "--before", cut, "--yes")
    conn = sqlite3.connect(dbfile)
    after = conn.execute("PRAGMA page_size").fetchone()[0] * conn.execute("PRAGMA page_count").fetchone()[0]
    left = conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
    assert rollups.verify(db.connect(dbfile, readonly=True)) == []
    conn.close()
    rep3_s, rep3 = timed_cli(home, *last30)
    same = {g["id"]: g["cost_nanos"] for g in json.loads(rep3)["groups"]} == got
    out += [(f"ledger prune --before {cut}", f"{prune_s:.1f} s, {nrows - left:,} rows deleted"),
            ("database size before / after prune", f"{before / 2**20:,.0f} MiB / {after / 2**20:,.0f} MiB"),
            ("the same report after prune: unchanged", f"{'yes' if same else 'NO'} ({rep3_s:.2f} s)")]
    finish(out, tmp, home, keep=args.keep)


if __name__ == "__main__":
    main()
