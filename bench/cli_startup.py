"""CLI start-up benchmark: wall time of ``llmgw --help`` and ``llmgw keys list --json``.

    python bench/cli_startup.py                  # 20 runs each (after 3 warm-up runs)
    python bench/cli_startup.py --runs 50 --json out.json
    python bench/cli_startup.py --no-hyperfine   # time with subprocess even if hyperfine is installed

Each command runs as a fresh process against a temporary LLMGW_HOME whose database already exists
(the normal case: migrating a new database is a one-off), with ``hyperfine`` when it is on PATH,
else timed here with ``subprocess`` and ``time.perf_counter``. Prints the median and p90 per
command against the 0.3 s target (lazy imports keep ``--help`` and ``keys list`` light; see
tests/test_boundaries.py). The ``llmgw`` run is the console script next to this interpreter, else
the one on PATH, else ``python -m llmgw``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_S = 0.3
COMMANDS = (("--help",), ("keys", "list", "--json"))


def llmgw_argv() -> list[str]:
    beside = Path(sys.executable).parent / "llmgw"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("llmgw")
    return [found] if found else [sys.executable, "-m", "llmgw"]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def time_subprocess(argv: list[str], env: dict[str, str], runs: int, warmup: int) -> list[float]:
    times: list[float] = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{shlex.join(argv)} failed (exit {proc.returncode}): {proc.stderr.decode()[-500:]}")
        if i >= warmup:
            times.append(elapsed)
    return times


def time_hyperfine(argv: list[str], env: dict[str, str], runs: int, warmup: int, tmp: Path) -> list[float]:
    out = tmp / "hyperfine.json"
    cmd = ["hyperfine", "--shell=none", "--style", "none", "--runs", str(runs), "--warmup", str(warmup),
           "--export-json", str(out), shlex.join(argv)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return [float(t) for t in json.loads(out.read_text())["results"][0]["times"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-hyperfine", action="store_true", help="time with subprocess even if hyperfine exists")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()

    base = llmgw_argv()
    use_hyperfine = shutil.which("hyperfine") is not None and not args.no_hyperfine
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmgw-bench-") as tmpdir:
        tmp = Path(tmpdir)
        home = tmp / "home"
        env = {k: v for k, v in os.environ.items() if k not in ("LLMGW_CONFIG", "LLMGW_HOME")}
        env.update(LLMGW_HOME=str(home), COLUMNS="100")
        # the database exists already, with a few keys, as on a real install
        for i in range(3):
            subprocess.run([*base, "keys", "create", "--name", f"bench{i}"], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for sub in COMMANDS:
            argv = [*base, *sub]
            times = (time_hyperfine(argv, env, args.runs, args.warmup, tmp) if use_hyperfine
                     else time_subprocess(argv, env, args.runs, args.warmup))
            results.append({"command": "llmgw " + " ".join(sub), "runs": len(times),
                            "median_s": statistics.median(times), "p90_s": percentile(times, 90),
                            "min_s": min(times), "max_s": max(times)})

    tool = "hyperfine" if use_hyperfine else "subprocess + perf_counter"
    print(f"llmgw start-up, {args.runs} runs after {args.warmup} warm-up ({tool}); "
          f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{'command':<26} {'median':>8} {'p90':>8} {'min':>8} {'max':>8}  target {TARGET_S:.1f} s")
    worst = True
    for r in results:
        ok = r["p90_s"] < TARGET_S
        worst = worst and ok
        print(f"{r['command']:<26} {r['median_s']:>7.3f}s {r['p90_s']:>7.3f}s {r['min_s']:>7.3f}s "
              f"{r['max_s']:>7.3f}s  {'ok' if ok else 'OVER'} (p90 {'<' if ok else '>='} {TARGET_S:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"tool": tool, "target_s": TARGET_S, "results": results}, indent=2))
    return 0 if worst else 1


if __name__ == "__main__":
    sys.exit(main())
