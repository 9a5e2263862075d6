"""Semantic-cache lookup benchmark: embed + search latency at N entries, and the RSS a daemon pays.

    python bench/cache_bench.py                          # 100,000 entries, 5,000 lookups
    python bench/cache_bench.py --entries 20000 --queries 2000
    python bench/cache_bench.py --expansion-search 64 --json out.json
    python bench/cache_bench.py --keep                   # then: --reuse /tmp/llmgw-cache-bench-XXXX

Builds a temporary LLMGW_HOME (migrated SQLite database + usearch index file), fills the cache with
``--entries`` synthetic product-caption prompts (brand/SKU/colour/size fields around varied prose;
fixed seed, so every run stores the same prompts), embedding them with the bundled model2vec model
in batches, storing each row with ``llmgw.cache.store.insert`` (vector, field-guard fingerprint,
response), then opens a ``ResponseCache`` once (partitions grouped, the large ones in a usearch index
saved to disk). Then a fresh subprocess (what a restarted daemon pays) loads the model, the
partitions and the index and runs ``--queries`` lookups (half near-duplicates of stored prompts
with reworded prose and the same fields, half new prompts) through ``ResponseCache._lookup``, the
daemon's own code: the guard fingerprint, then the lookup (exact key, embedding, exact scan of a
small partition or widened ANN search of a large one, SQLite candidates, the instruction gate). It
prints p50/p90/p99/max in microseconds per step and combined, the VmRSS of that process after
loading and after the lookups, and the targets
of issue 4: **lookup p99 <= 1 ms, RSS <= 200 MB** (issue 11: also with prose-only prompts,
``--no-facts``, whose few large partitions are searched in the ANN index). No network.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

EXACT_MAX = 256  # llmgw.cache.semantic.EXACT_MAX (not imported at module level: numpy-free start)

TARGET_P99_US = 1000.0
TARGET_RSS_MB = 200.0
SEED = 20240605
MODEL = "openai/gpt-4o-mini"
SCOPES = ("cust_acme", "cust_globex", "cust_initech", "cust_umbrella")
SYSTEMS = (
    "You write concise, accurate e-commerce captions.",
    "You are a copywriter for an online shoe and apparel store. Be factual.",
    "Write alt text and short captions for product photos.",
)

# ---- synthetic prompts -----------------------------------------------------------------------------

BRANDS = ("Nike", "Adidas", "Puma", "Reebok", "New Balance", "Asics", "Under Armour", "Salomon", "Hoka",
          "Brooks", "Converse", "Vans", "Fila", "Mizuno", "Saucony", "On", "Patagonia", "Columbia",
          "The North Face", "Levi's", "Uniqlo", "Zara", "H&M", "Timberland", "Dr. Martens", "Birkenstock",
          "Crocs", "Merrell", "Lululemon", "Arc'teryx")
PRODUCTS = ("running shoe", "trail runner", "trainer", "basketball sneaker", "hiking boot", "sandal",
            "rain jacket", "fleece hoodie", "down vest", "track pants", "running shorts", "sports bra",
            "base layer top", "beanie", "backpack", "gym bag", "ankle sock", "windbreaker", "polo shirt",
            "denim jacket", "chino", "slip-on", "loafer", "tennis shoe", "yoga legging", "puffer coat")
COLOURS = ("black", "white", "red", "navy", "olive", "grey", "sand", "forest green", "cobalt blue",
           "burgundy", "off-white", "charcoal", "coral", "mustard", "lilac", "teal", "tan", "pink")
MATERIALS = ("mesh", "leather", "suede", "recycled polyester", "merino wool", "nylon", "organic cotton",
             "Gore-Tex", "canvas", "knit", "ripstop", "fleece")
FEATURES = ("cushioned midsole", "breathable upper", "grippy outsole", "reflective details",
            "water-resistant finish", "lightweight build", "padded collar", "adjustable hood",
            "zip pockets", "four-way stretch", "wide toe box", "heel pull tab", "quick-dry fabric",
            "lockdown lacing", "packable design", "moisture-wicking lining")
AUDIENCES = ("runners", "commuters", "hikers", "gym-goers", "kids", "weekend walkers", "travellers",
             "students", "trail athletes", "casual wearers")
TONES = ("friendly", "premium", "playful", "technical", "minimal", "energetic", "warm")
SIZES = ("XS", "S", "M", "L", "XL", "XXL", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45",
         "US 7", "US 8", "US 9", "US 10", "US 11", "UK 6", "UK 9")

OPENERS = (
    "Write a short product caption for this photo.",
    "Generate a caption for the product image below.",
    "Describe the item in the photo for our catalogue.",
    "Create a one-sentence caption for a product listing.",
    "Caption this product photo for the web shop.",
    "We need a punchy caption for the following product shot.",
    "Please write a catalogue caption for the pictured item.",
    "Produce a concise image caption for an online store.",
)
STYLES = (
    "Keep it under {n} words and use a {tone} tone.",
    "Aim for about {n} words, {tone} in voice, no emojis.",
    "Use a {tone} voice; at most {n} words; mention who it is for.",
    "Write it for {audience}, {tone} tone, no more than {n} words.",
    "Stay {tone} and factual. Maximum {n} words.",
)
CLOSERS = (
    "Highlight the {feature}.",
    "Mention the {material} and the {feature}.",
    "Focus on comfort for {audience}.",
    "Do not invent features that are not listed.",
    "Avoid superlatives and keep the brand name exact.",
    "End with a short call to action.",
    "",
)
# near-duplicate rewording: same meaning and the same fields, other words in the prose
REWORDS = (
    ("Write a short product caption", "Write a brief product caption"),
    ("Generate a caption", "Create a caption"),
    ("Describe the item", "Please describe the item"),
    ("Create a one-sentence caption", "Write a one-sentence caption"),
    ("Caption this product photo", "Please caption this product photo"),
    ("We need a punchy caption", "We need a catchy caption"),
    ("Please write a catalogue caption", "Write a catalogue caption"),
    ("Produce a concise image caption", "Produce a short image caption"),
    ("Keep it under", "Keep it below"),
    ("Aim for about", "Aim for roughly"),
    ("Stay ", "Be "),
    ("Highlight the", "Emphasise the"),
    ("Focus on comfort", "Focus on the comfort"),
    ("Avoid superlatives", "Please avoid superlatives"),
    ("End with a short call to action.", "Finish with a short call to action."),
)


def make_prompt(rng: random.Random, no_facts: bool = False) -> str:
    if no_facts:  # prose only: one partition per scope and system prompt, searched in the ANN index
        return (f"{rng.choice(OPENERS)} It is a {rng.choice(COLOURS)} {rng.choice(MATERIALS)} "
                f"{rng.choice(PRODUCTS)} with a {rng.choice(FEATURES)} for {rng.choice(AUDIENCES)}. "
                f"Use a {rng.choice(TONES)} voice.")
    brand = rng.choice(BRANDS)
    fields: list[tuple[str, str]] = [
        ("brand", brand if rng.random() > 0.04 else rng.choice(("null", ""))),
        ("sku", f"{rng.choice(('SKU-', 'SK', ''))}{rng.randint(10000, 999999)}"),
        ("product", rng.choice(PRODUCTS)),
        ("color", rng.choice(COLOURS)),
    ]
    if rng.random() < 0.6:
        fields.append(("size", rng.choice(SIZES)))
    if rng.random() < 0.5:
        fields.append(("material", rng.choice(MATERIALS)))
    if rng.random() < 0.3:
        fields.append(("price", f"${rng.randint(15, 320)}.{rng.choice(('00', '95', '99'))}"))
    subst = {"n": rng.choice((12, 15, 20, 25, 30)), "tone": rng.choice(TONES),
             "audience": rng.choice(AUDIENCES), "feature": rng.choice(FEATURES),
             "material": rng.choice(MATERIALS)}
    prose = [rng.choice(OPENERS), rng.choice(STYLES).format(**subst)]
    closer = rng.choice(CLOSERS).format(**subst)
    if closer:
        prose.append(closer)
    layout = rng.random()
    if layout < 0.45:  # key: value lines
        body = "\n".join(f"{k}: {v}" for k, v in fields)
        return f"{' '.join(prose)}\n\n{body}"
    if layout < 0.75:  # inline key=value
        body = ", ".join(f"{k}={v}" for k, v in fields)
        return f"{prose[0]} Product: {body}. {' '.join(prose[1:])}"
    obj = {k: (None if v in ("null", "") else v) for k, v in fields}  # JSON object
    return f"{' '.join(prose)}\nProduct data: {json.dumps(obj)}"


def near_duplicate(prompt: str, rng: random.Random) -> str:
    """Same fields, reworded prose (one or two phrase swaps, sometimes a greeting in front)."""
    out = prompt
    swaps = [(a, b) for a, b in REWORDS if a in out]
    rng.shuffle(swaps)
    for a, b in swaps[:2]:
        out = out.replace(a, b, 1)
    if out == prompt or rng.random() < 0.3:  # in front: after the fields it would change the last value
        out = rng.choice(("Hi! ", "Hello, ", "Please help. ")) + out
    return out


def sha(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sorted list."""
    rank = max(1, min(len(values), round(q / 100 * len(values) + 0.5)))
    return values[rank - 1]


def summary(values_ns: list[int]) -> dict[str, float]:
    us = sorted(v / 1000 for v in values_ns)
    return {"p50": percentile(us, 50), "p90": percentile(us, 90), "p99": percentile(us, 99), "max": us[-1],
            "mean": sum(us) / len(us)}


# ---- build (parent process) ------------------------------------------------------------------------


def build(home: Path, entries: int, queries: int, batch: int, expansion_search: int,
          no_facts: bool = False) -> dict[str, Any]:
    from llmgw import paths
    from llmgw.cache import guard, store
    from llmgw.cache.embedder import Model2VecEmbedder
    from llmgw.store.db import open_db

    rng = random.Random(SEED)
    t_all = time.perf_counter()
    prompts: list[str] = []
    seen: set[str] = set()
    while len(prompts) < entries:
        p = make_prompt(rng, no_facts)
        if p not in seen:
            seen.add(p)
            prompts.append(p)
    t_gen = time.perf_counter() - t_all

    embedder = Model2VecEmbedder()
    conn = open_db(paths.db_path(home))
    now_ms = int(time.time() * 1000)
    ids: list[int] = []
    meta: list[tuple[str, str]] = []  # (scope, context_hash) per stored prompt
    t_embed = t_guard = t_insert = 0.0
    vectors: list[Any] = []
    for start in range(0, entries, batch):
        chunk = prompts[start:start + batch]
        t0 = time.perf_counter()
        vecs = embedder.encode(chunk)
        t1 = time.perf_counter()
        facts = [guard.fingerprint(p) for p in chunk]
        t2 = time.perf_counter()
        for i, p in enumerate(chunk):
            n = start + i
            scope = SCOPES[n % len(SCOPES)]
            context = sha(SYSTEMS[n % len(SYSTEMS)], MODEL, "temperature=0.7")
            caption = f"A {p.split('product: ')[-1][:40].strip()} shot in studio light, ready for everyday wear."
            response = json.dumps({"id": f"chatcmpl-{n}", "object": "chat.completion", "model": "gpt-4o-mini",
                                   "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                       "role": "assistant", "content": caption}}],
                                   "usage": {"prompt_tokens": 80, "completion_tokens": 24,
                                             "total_tokens": 104}}).encode()
            new_id, _ = store.insert(conn, scope=scope, model=MODEL, exact_hash=sha(scope, context, p),
                                     context_hash=context, response=response, content_type="application/json",
                                     now_ms=now_ms, facts=facts[i], prompt_text=p, vector=vecs[i],
                                     usage_json='{"prompt_tokens":80,"completion_tokens":24}',
                                     cost_nanos=26_400, ttl_ms=7 * 86_400_000)
            ids.append(new_id)
            meta.append((scope, context))
        t3 = time.perf_counter()
        vectors.append(vecs)
        t_embed += t1 - t0
        t_guard += t2 - t1
        t_insert += t3 - t2
        print(f"  built {min(start + batch, entries)}/{entries}", file=sys.stderr, end="\r")
    print(file=sys.stderr)

    conn.close()
    # the daemon's start: partitions loaded, the large ones indexed (and the index saved at close)
    from llmgw.cache.semantic import ResponseCache
    from llmgw.config import CacheConfig

    t0 = time.perf_counter()
    cache = ResponseCache(home, CacheConfig(mode="semantic"))
    cache.embedder = embedder
    cache.warm(True)
    t_index = time.perf_counter() - t0
    t0 = time.perf_counter()
    cache.close()
    t_save = time.perf_counter() - t0
    del cache, vectors
    t_total = time.perf_counter() - t_all

    # queries: half near-duplicates of stored prompts (same scope and context), half new prompts
    qrng = random.Random(SEED + 1)
    qs: list[dict[str, Any]] = []
    for i in range(queries):
        if i % 2 == 0:
            n = qrng.randrange(entries)
            scope, context = meta[n]
            qs.append({"kind": "near", "text": near_duplicate(prompts[n], qrng), "scope": scope,
                       "context": context, "source_id": ids[n]})
        else:
            while True:
                p = make_prompt(qrng, no_facts)
                if p not in seen:
                    break
            qs.append({"kind": "new", "text": p, "scope": SCOPES[i % len(SCOPES)],
                       "context": sha(SYSTEMS[i % len(SYSTEMS)], MODEL, "temperature=0.7"), "source_id": None})
    qrng.shuffle(qs)
    (home / "queries.json").write_text(json.dumps(qs))
    db_mb = sum(f.stat().st_size for f in home.iterdir() if f.name.startswith(paths.DB_NAME)) / 1e6
    return {"entries": entries, "no_facts": no_facts, "batch": batch, "generate_s": t_gen, "embed_s": t_embed, "guard_s": t_guard,
            "insert_s": t_insert, "index_build_s": t_index, "index_save_s": t_save, "total_s": t_total,
            "db_mb": db_mb, "index_mb": (paths.cache_index_path(home).stat().st_size / 1e6
                                         if paths.cache_index_path(home).exists() else 0.0),
            "build_rss_mb": rss_kb() / 1024}


# ---- measure (fresh subprocess: a restarted daemon) -------------------------------------------------


def measure(home: Path, expansion_search: int, k: int, threshold: float = 0.95) -> dict[str, Any]:
    """Lookups the way the daemon runs them: ``ResponseCache._lookup`` (exact key, embedding, the
    partition's exact scan or widened ANN search, SQLite candidates, the instruction gate), after the
    guard's fingerprint (part of the request's keys)."""
    rss_start = rss_kb()
    qs = json.loads((home / "queries.json").read_text())
    t0 = time.perf_counter()
    import numpy  # noqa: F401  (the heavy imports a daemon with the cache on pays for)
    import usearch.index  # noqa: F401

    from llmgw.cache import guard
    from llmgw.cache.semantic import Keys, ResponseCache
    from llmgw.config import CacheConfig

    rss_imports = rss_kb()
    cache = ResponseCache(home, CacheConfig(mode="semantic", threshold=threshold))
    cache._open()
    from llmgw.cache.embedder import Model2VecEmbedder

    cache.embedder = Model2VecEmbedder()
    rss_model = rss_kb()
    cache.warm(True)
    load_s = time.perf_counter() - t0
    index = cache._index
    if index.rebuilt:
        raise SystemExit(f"index was rebuilt from SQLite on load ({index.problem}); the file was not used")
    rss_loaded = rss_kb()
    cache._write = lambda op, args: None  # type: ignore[method-assign]  # hit touches: the writer thread's job

    now_ms = int(time.time() * 1000)

    def keys(q: dict[str, Any], facts: str) -> Keys:
        return Keys(q["scope"], MODEL, "", sha(q["scope"], q["context"], q["text"]), q["context"], q["text"], facts)

    for q in qs[:50]:  # warm-up: first-call costs (tokenizer caches, SQLite page cache) not measured
        cache.lookup(keys(q, guard.fingerprint(q["text"])), True, threshold, now_ms)
    # what the daemon does once it is up (llmgw.server.runner.tune_gc, not imported here: it would
    # pull aiohttp into this process's RSS): start-up objects out of the collector's sight, and a
    # raised young-generation threshold
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    pc = time.perf_counter_ns
    t_guard: list[int] = []
    t_lookup: list[int] = []
    near_right = near_wrong = hits = 0
    for q in qs:
        a = pc()
        facts = guard.fingerprint(q["text"])
        b = pc()
        found = cache.lookup(keys(q, facts), True, threshold, now_ms)
        c = pc()
        t_guard.append(b - a)
        t_lookup.append(c - b)
        if found.hit is not None:
            hits += 1
            if q["kind"] == "near":
                near_right += found.hit.entry_id == q["source_id"]
                near_wrong += found.hit.entry_id != q["source_id"]
    rss_after = rss_kb()
    n_near = sum(q["kind"] == "near" for q in qs)
    steps = {
        "guard": summary(t_guard),
        "lookup": summary(t_lookup),
        "guard+lookup": summary([x + y for x, y in zip(t_guard, t_lookup, strict=True)]),
    }
    return {"queries": len(qs), "threshold": threshold, "expansion_search": expansion_search,
            "index_size": len(index), "partitions": len(cache._parts), "load_s": load_s, "steps": steps,
            "truncated_searches": cache.truncated_searches,
            "rss_mb": {"start": rss_start / 1024, "imports": rss_imports / 1024, "model": rss_model / 1024,
                       "loaded": rss_loaded / 1024, "after_lookups": rss_after / 1024},
            "near_hit_right": near_right / max(1, n_near), "near_hit_wrong": near_wrong / max(1, n_near),
            "hit_rate": hits / len(qs)}


# ---- report ----------------------------------------------------------------------------------------


def report(b: dict[str, Any], m: dict[str, Any]) -> str:
    lines = [
        f"cache_bench: {b['entries']:,} entries ({'prose only' if b.get('no_facts') else 'with fields'}), "
        f"{m['queries']:,} lookups at threshold {m['threshold']:g} (expansion_search={m['expansion_search']}), "
        f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}",
        f"build: {b['total_s']:.1f} s total (generate {b['generate_s']:.1f}, embed {b['embed_s']:.1f} "
        f"[{b['embed_s'] / b['entries'] * 1e6:.0f} us/prompt in batches of {b['batch']}], guard {b['guard_s']:.1f}, "
        f"SQLite insert {b['insert_s']:.1f}, partitions + index {b['index_build_s']:.1f}, save {b['index_save_s']:.2f}); "
        f"db {b['db_mb']:.0f} MB, index file {b['index_mb']:.0f} MB",
        f"load in a fresh process: {m['load_s']:.2f} s (imports + model + partitions + index restore); "
        f"{m['partitions']:,} partitions, {m['index_size']:,} vectors in the ANN index (partitions > "
        f"{EXACT_MAX} entries), {m['truncated_searches']} truncated searches",
        "",
        f"{'step (us)':<14}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>10}{'mean':>9}",
    ]
    for name, s in m["steps"].items():
        lines.append(f"{name:<14}{s['p50']:>9.1f}{s['p90']:>9.1f}{s['p99']:>9.1f}{s['max']:>10.1f}{s['mean']:>9.1f}")
    r = m["rss_mb"]
    lines += [
        "",
        f"RSS (MB): interpreter {r['start']:.0f}, + numpy/usearch/llmgw imports {r['imports']:.0f}, "
        f"+ model {r['model']:.0f}, + partitions and index loaded {r['loaded']:.0f}, after lookups "
        f"{r['after_lookups']:.0f}",
        f"sanity: near-duplicates served their own source {m['near_hit_right']:.1%}, another entry "
        f"{m['near_hit_wrong']:.1%}; lookups that hit {m['hit_rate']:.1%}",
        "",
    ]
    p99 = m["steps"]["lookup"]["p99"]
    rss = max(r["loaded"], r["after_lookups"])
    lines.append(f"target lookup p99 <= {TARGET_P99_US:.0f} us: {p99:.1f} us  "
                 f"{'ok' if p99 <= TARGET_P99_US else 'OVER'}")
    lines.append(f"target RSS <= {TARGET_RSS_MB:.0f} MB: {rss:.0f} MB  {'ok' if rss <= TARGET_RSS_MB else 'OVER'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=100_000, help="cache entries to store (default 100000)")
    ap.add_argument("--queries", type=int, default=5_000, help="lookups to time (default 5000)")
    ap.add_argument("--expansion-search", type=int, default=None,
                    help="usearch expansion_search for the lookups (default: VectorIndex's)")
    ap.add_argument("--k", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--no-facts", action="store_true", help="prose-only prompts: a few large partitions, "
                    "searched in the ANN index (default: prompts with fields, small partitions)")
    ap.add_argument("--batch", type=int, default=1024, help="embedding batch size while building")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-' = stdout)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary LLMGW_HOME and print its path")
    ap.add_argument("--reuse", metavar="HOME", help="measure again in a home kept by --keep (no rebuild; "
                    "--entries and --queries are those it was built with)")
    ap.add_argument("--_measure", metavar="HOME", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    from llmgw.cache.index import DEFAULT_EXPANSION_SEARCH

    es = args.expansion_search or DEFAULT_EXPANSION_SEARCH
    if args._measure:
        json.dump(measure(Path(args._measure), es, args.k), sys.stdout)
        return 0
    if args.entries < 1 or args.queries < 2:
        ap.error("--entries must be >= 1 and --queries >= 2")

    if args.reuse:
        tmp = args.reuse
        home = Path(tmp)
        if not (home / "build.json").is_file():
            ap.error(f"--reuse {tmp}: no build.json (keep a home with --keep)")
        b = json.loads((home / "build.json").read_text())
    else:
        tmp = tempfile.mkdtemp(prefix="llmgw-cache-bench-")
        home = Path(tmp)
    os.environ["LLMGW_HOME"] = tmp
    try:
        if not args.reuse:
            print(f"building {args.entries:,} entries in {tmp} ...", file=sys.stderr)
            b = build(home, args.entries, args.queries, args.batch, es, args.no_facts)
            (home / "build.json").write_text(json.dumps(b))
            print(f"built in {b['total_s']:.1f} s; measuring in a fresh process ...", file=sys.stderr)
        env = dict(os.environ, LLMGW_HOME=tmp, PYTHONPATH=str(ROOT / "src"))
        env.pop("HF_HUB_OFFLINE", None)
        env["HF_HUB_OFFLINE"] = "1"
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_measure", tmp,
                               "--k", str(args.k), "--expansion-search", str(es)],
                              env=env, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"measuring process failed (exit {proc.returncode})")
        m = json.loads(proc.stdout)
        print(report(b, m))
        if args.json:
            data = json.dumps({"build": b, "lookup": m, "targets": {"embed_search_p99_us": TARGET_P99_US,
                                                                     "rss_mb": TARGET_RSS_MB}}, indent=2)
            if args.json == "-":
                print(data)
            else:
                Path(args.json).write_text(data + "\n")
    finally:
        if args.keep or args.reuse:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
