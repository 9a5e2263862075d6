"""bench/cache_bench.py: it measures lookups the way the daemon runs them, and --keep/--reuse work."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "cache_bench.py"


def test_bench_mirrors_the_daemon_gc_tuning() -> None:
    """The measuring process tunes the GC exactly as ``llmgw serve`` does once it is up."""
    from llmgw.server import runner

    calls = re.findall(r"gc\.\w+\([^)]*\)", inspect.getsource(runner.tune_gc))
    assert calls, "tune_gc no longer calls gc.*: update bench/cache_bench.py's measure()"
    src = BENCH.read_text()
    for call in calls:
        assert call in src, call


def test_bench_runs_small_and_reuses_a_kept_home(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "a.json"
    p = subprocess.run([sys.executable, str(BENCH), "--entries", "300", "--queries", "20", "--keep",
                        "--json", str(out)], capture_output=True, text=True, env=env, timeout=300, check=True)
    assert "target lookup p99" in p.stdout
    home = re.search(r"kept (\S+)", p.stderr).group(1)  # type: ignore[union-attr]
    try:
        first = json.loads(out.read_text())
        assert first["lookup"]["partitions"] >= 250 and first["lookup"]["queries"] == 20
        assert first["lookup"]["near_hit_wrong"] == 0
        p2 = subprocess.run([sys.executable, str(BENCH), "--reuse", home, "--json", "-"], capture_output=True,
                            text=True, env=env, timeout=300, check=True)
        again = json.loads(p2.stdout[p2.stdout.index("{"):])
        assert again["build"] == first["build"] and again["lookup"]["partitions"] == first["lookup"]["partitions"]
        assert again["lookup"]["near_hit_right"] == first["lookup"]["near_hit_right"]
    finally:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
