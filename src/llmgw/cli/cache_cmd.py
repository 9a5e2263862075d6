"""``llmgw cache``: the response cache's commands (``ablate`` chooses a semantic threshold from data)."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import ConfigOpt, HomeOpt, err, load_config, open_readonly, resolve_home

if TYPE_CHECKING:
    from ..cache.ablate import PairReport, ReplayReport, RetrievalReport

app = typer.Typer(help="The response cache: stats, clear, inspect, and choosing the semantic threshold.", no_args_is_help=True)


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


@app.command("ablate")
def ablate(
    pairs: Annotated[Path | None, typer.Option(
        "--pairs", help="Labelled pairs: TSV (text_a, text_b, label; optional leading id column and header), "
                        "JSONL {\"a\",\"b\",\"label\"}, or the GPTCache mock JSON [{\"origin\",\"similar\"}].",
        dir_okay=False)] = None,
    from_log: Annotated[bool, typer.Option(
        "--from-log", help="Replay the ledger's logged requests (needs [log] bodies = true) in time order.")] = False,
    retrieval: Annotated[bool, typer.Option(
        "--retrieval", help="With --pairs: GPTCache's protocol: cache every a, query every b against the whole "
                            "cache, count right / wrong / miss.")] = False,
    since: Annotated[str | None, typer.Option(
        "--since", help="With --from-log: start (inclusive), ISO-8601 date or date-time, UTC unless an offset is given.")] = None,
    until: Annotated[str | None, typer.Option(
        "--until", help="With --from-log: end (exclusive), ISO-8601 date or date-time.")] = None,
    thresholds: Annotated[str, typer.Option(
        "--thresholds", help="Cosine thresholds: a list (0.9,0.95) or start:stop:step, both ends inclusive.")]
    = "0.80:0.99:0.01",
    variants: Annotated[str, typer.Option(
        "--variants", help="Comma-separated: config (the running configuration: guard, guard_patterns, gate), "
                           "config-CLASS (the same without one gate class), guard (the field guard only), "
                           "no-guard (similarity only).")]
    = "config,guard,no-guard",
    target_error: Annotated[float, typer.Option(
        "--target-error", help="Recommend the lowest threshold whose 95 % Wilson upper bound of the error "
                               "(false-hit rate; with --from-log and --retrieval wrong answers per request) "
                               "stays below this.")] = 0.01,
    examples: Annotated[int, typer.Option(
        "--examples", help="Show this many colliding pairs (wrong hits) at the recommended threshold.", min=0)] = 0,
    model: Annotated[str | None, typer.Option(
        "--model", help="A model2vec model directory or hub id. Default: the running configuration's.")] = None,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed for the negatives of a GPTCache mock file (origin i paired with another item's similar).")]
    = 0,
    fmt: Annotated[Format, typer.Option("--format", help="table (with a chart) for people; json or csv for machines.")]
    = Format.table,
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Measure hit rate against wrong hits per semantic threshold, with the running configuration's
    field guard and instruction gate, with the guard only, and with neither.

    --pairs: hit rate on positives (recall), false-hit rate on negatives, precision, F1 and ROC AUC.
    --pairs --retrieval: every a cached, every b asked (GPTCache's protocol): right / wrong / miss.
    --from-log: the vCache replay protocol (empty cache, requests in time order, insert on miss); a hit
    is wrong when the cached answer's normalised text differs from the answer really given. It refuses
    to recommend from traffic the semantic cache answered (censored: the real answer is unknown).
    Pairs labelled by the gateway (shadow, verify_sample, cache mark-wrong) are used in every mode.
    """
    from ..cache import ablate as ab
    from ..errors import UsageError

    if (pairs is None) == (not from_log):
        raise UsageError("give exactly one of --pairs FILE or --from-log")
    if (since or until) and not from_log:
        raise UsageError("--since/--until only apply to --from-log")
    if retrieval and pairs is None:
        raise UsageError("--retrieval applies to --pairs")
    if not 0 < target_error < 1:
        raise UsageError(f"bad --target-error {target_error}: expected a fraction between 0 and 1, e.g. 0.01")
    ts = ab.parse_thresholds(thresholds)
    vs = ab.parse_variants(variants)
    h = resolve_home(home)
    cfg = load_config(config, h).cache
    policy = ab.Policy.of(cfg)

    def running() -> None:
        err(f"running configuration: guard {'on' if policy.guard else 'off'}, {len(policy.patterns)} guard "
            f"pattern(s), gate {', '.join(policy.gate_classes) or 'off'}; threshold {cfg.threshold:g}")

    if pairs is not None:
        items = ab.load_pairs(pairs, seed=seed)
        labelled = _labels(h)
        running()
        n_pos = sum(p.label for p in items)
        err(f"{pairs}: {len(items)} pairs ({n_pos} positive, {len(items) - n_pos} negative)")
        if labelled:
            err(f"+ {len(labelled)} pairs labelled by the gateway (shadow, verify, mark-wrong)")
            items = items + labelled
        embedder = _embedder(model or cfg.model)
        if retrieval:
            trep = ab.retrieval(items, embedder, ts, vs, target_error=target_error, policy=policy,
                                keep_examples=examples)
            _emit(fmt, trep.summary(), [r.as_dict() for r in trep.rows], lambda: _print_retrieval(trep, examples))
            return
        sims = ab.pair_similarities(items, embedder)
        rep = ab.pair_metrics(items, sims, ts, vs, target_error=target_error, policy=policy)
        _emit(fmt, rep.summary(), [r.as_dict() for r in rep.rows], lambda: _print_pairs(rep, examples))
        return

    from ..units import parse_time

    since_ms = parse_time(since, "--since") if since else None
    until_ms = parse_time(until, "--until") if until else None
    from ..store import ledger

    conn = open_readonly(h)
    try:
        rows = ledger.rows(conn, since_ms=since_ms, until_ms=until_ms)
    finally:
        conn.close()
    labelled = _labels(h)
    running()
    reqs, skipped = ab.requests_from_rows(rows)
    censored = sum(1 for r in rows if r.get("cache") == "hit-semantic")
    err(f"ledger: {len(rows)} rows, {len(reqs)} replayable, {skipped} skipped "
        "(no bodies, errors, cache hits or no user text)")
    if not reqs:
        raise UsageError("no replayable requests in the ledger window: log bodies with [log] bodies = true")
    embedder = _embedder(model or cfg.model)
    rrep = ab.replay(reqs, embedder, ts, vs, target_error=target_error, keep_examples=examples, skipped=skipped,
                     policy=policy)
    refusal = None
    if censored:
        refusal = (f"no recommendation: {censored} of {len(rows)} requests in the window were answered by the "
                   "semantic cache, so what the model would have said is unknown and the wrong answers among "
                   "them cannot be counted (the replay only sees the traffic the cache let through). Run with "
                   "[cache] shadow = true for a while (or verify_sample), then ablate --since that time, or use "
                   "--pairs")
        rrep.recommended = dict.fromkeys(rrep.recommended)
    if labelled:
        sims = ab.pair_similarities(labelled, embedder)
        lrep = ab.pair_metrics(labelled, sims, ts, vs, target_error=target_error, policy=policy)
        for v, t in list(rrep.recommended.items()):
            worst = max((s for s, ok, p in zip(lrep.similarities, lrep.allowed[v], lrep.pairs, strict=True)
                         if ok and not p.label), default=None)
            if t is not None and worst is not None and t <= worst:  # never repeat a known wrong hit
                rrep.recommended[v] = next((x for x in ts if x > worst), None)
    summary = {"requests": rrep.requests, "skipped": rrep.skipped, "censored": censored, "refusal": refusal,
               "labelled_pairs": len(labelled), "target_error": target_error, "recommended": rrep.recommended,
               "clean_requests_needed": ab.negatives_needed(target_error)}
    _emit(fmt, summary, [r.as_dict() for r in rrep.rows], lambda: _print_replay(rrep, examples, refusal))


def _labels(home: Path) -> list[Any]:
    """Pairs the gateway labelled (shadow, verify, mark-wrong), if this home has a database."""
    from .. import paths
    from ..cache import ablate as ab
    from ..cache import store as cstore

    if not paths.db_path(home).is_file():
        return []
    conn = open_readonly(home, local=True)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'cache_labels'").fetchone() is None:
            return []
        return [ab.Pair(r["cached_prompt"], r["asked_prompt"], int(r["label"])) for r in cstore.labels(conn)]
    finally:
        conn.close()


def _emit(fmt: Format, summary: dict[str, Any], rows: list[dict[str, Any]], table: Any) -> None:
    from ..cache import ablate as ab

    if fmt is Format.json:
        _json({**summary, "rows": rows})
    elif fmt is Format.csv:
        rec = summary.get("recommended") or {}
        sys.stdout.write(ab.to_csv([{**r, "recommended": rec.get(r["variant"]) == r["threshold"]} for r in rows]))
    else:
        table()


def _embedder(model: str | None) -> Any:
    from ..cache.embedder import Model2VecEmbedder

    return Model2VecEmbedder(model)


def _json(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def _console() -> Any:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    return console


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x * 100:.{digits}f}%"


def _print_pairs(rep: PairReport, examples: int) -> None:
    from rich import box
    from rich.table import Table

    from ..cache.ablate import chart_lines

    console = _console()
    table = Table(title="semantic cache ablation (labelled pairs)", box=box.SIMPLE_HEAD)
    for h in ("threshold", "variant", "hit rate", "false hits", "false-hit rate", "FHR 95% high",
              "precision", "recall", "F1", "n_pos", "n_neg"):
        table.add_column(h, justify="left" if h == "variant" else "right", no_wrap=True)
    for v in rep.variants:
        rows = [r for r in rep.rows if r.variant == v]
        for i, r in enumerate(rows):
            mark = " *" if rep.recommended.get(v) == r.threshold else ""
            table.add_row(f"{r.threshold:.3f}{mark}", v, _pct(r.hit_rate), str(r.fp), _pct(r.false_hit_rate, 2),
                          _pct(r.fhr_high, 2), _pct(r.precision), _pct(r.recall), f"{r.f1:.3f}",
                          str(r.n_pos), str(r.n_neg), end_section=i == len(rows) - 1)
    console.print(table)
    for v in rep.variants:
        auc = rep.auc.get(v)
        rec = rep.recommended.get(v)
        console.print(f"[bold]{v}[/]: ROC AUC {'–' if auc is None else f'{auc:.4f}'}; recommended threshold "
                      f"(false-hit rate 95% upper bound < {rep.target_error:g}): "
                      f"{'none in range' if rec is None else f'{rec:.3f}'}", highlight=False)
    if any(r is None for r in rep.recommended.values()):
        console.print(_needed(rep.target_error, "negative pairs"), highlight=False)
    for v in rep.variants:
        console.print(f"\n[bold]{v}[/]: hit rate (█) and false-hit rate (▒) per threshold", highlight=False)
        pts = [(r.threshold, r.hit_rate, r.false_hit_rate) for r in rep.rows if r.variant == v]
        for line in chart_lines(pts):
            console.print(line, highlight=False, markup=False)
    if examples:
        for v in rep.variants:
            t = rep.recommended.get(v)
            t = rep.thresholds[0] if t is None else t
            found = rep.collisions(v, t, examples)
            console.print(f"\n[bold]{v}[/]: colliding negative pairs at {t:.3f} ({len(found)} shown)", highlight=False)
            for s, p in found:
                console.print(f"  {s:.4f}  A: {p.a}\n          B: {p.b}", highlight=False, markup=False)


def _needed(target: float, what: str) -> str:
    from ..cache.ablate import negatives_needed

    return (f"to recommend at a target error of {target:g}, the evidence needs at least {negatives_needed(target):,} "
            f"clean {what} (none of them a wrong hit) at that threshold")


def _print_retrieval(rep: RetrievalReport, examples: int) -> None:
    from rich import box
    from rich.table import Table

    console = _console()
    table = Table(title=f"semantic cache retrieval ({rep.entries} cached, {rep.queries} queries)",
                  box=box.SIMPLE_HEAD)
    for h in ("threshold", "variant", "right", "wrong", "miss", "wrong/query (95% CI)"):
        table.add_column(h, justify="left" if h == "variant" else "right", no_wrap=True)
    from ..cache.ablate import wilson

    variants = list(dict.fromkeys(r.variant for r in rep.rows))
    for v in variants:
        rows = [r for r in rep.rows if r.variant == v]
        for i, r in enumerate(rows):
            lo, hi = wilson(r.wrong, r.queries)
            mark = " *" if rep.recommended.get(v) == r.threshold else ""
            table.add_row(f"{r.threshold:.3f}{mark}", v, str(r.right), str(r.wrong), str(r.miss),
                          f"{_pct(r.wrong / r.queries if r.queries else 0, 2)} ({_pct(lo, 2)}–{_pct(hi, 2)})",
                          end_section=i == len(rows) - 1)
    console.print(table)
    for v in variants:
        rec = rep.recommended.get(v)
        console.print(f"[bold]{v}[/]: recommended threshold (wrong answers per query, 95% upper bound < "
                      f"{rep.target_error:g}): {'none in range' if rec is None else f'{rec:.3f}'}", highlight=False)
    if any(r is None for r in rep.recommended.values()):
        console.print(_needed(rep.target_error, "queries"), highlight=False)
    if examples:
        for v in variants:
            console.print(f"\n[bold]{v}[/]: wrong answers", highlight=False)
            for sim, a, b in rep.examples.get(v, []):
                console.print(f"  {sim:.4f}  cached: {a}\n          asked:  {b}", highlight=False, markup=False)


def _print_replay(rep: ReplayReport, examples: int, refusal: str | None = None) -> None:
    from rich import box
    from rich.table import Table

    from ..cache.ablate import chart_lines, wilson
    from ..units import usd

    console = _console()
    table = Table(title=f"semantic cache replay ({rep.requests} requests, {rep.skipped} rows skipped)",
                  box=box.SIMPLE_HEAD)
    for h in ("threshold", "variant", "hits", "hit rate", "wrong", "wrong/request (95% CI)",
              "wrong/hit (95% CI)", "saved $"):
        table.add_column(h, justify="left" if h == "variant" else "right", no_wrap=True)
    variants = list(dict.fromkeys(r.variant for r in rep.rows))
    for v in variants:
        rows = [r for r in rep.rows if r.variant == v]
        for i, r in enumerate(rows):
            lo, hi = wilson(r.wrong_hits, r.requests)
            wh = "–"
            if r.hits:
                hlo, hhi = wilson(r.wrong_hits, r.hits)
                wh = f"{_pct(r.wrong_per_hit, 2)} ({_pct(hlo, 2)}–{_pct(hhi, 2)})"
            mark = " *" if rep.recommended.get(v) == r.threshold else ""
            table.add_row(f"{r.threshold:.3f}{mark}", v, str(r.hits), _pct(r.hit_rate), str(r.wrong_hits),
                          f"{_pct(r.wrong_per_request, 2)} ({_pct(lo, 2)}–{_pct(hi, 2)})", wh,
                          usd(r.saved_nanos, dollar=False), end_section=i == len(rows) - 1)
    console.print(table)
    if refusal:
        console.print(f"[bold]{refusal}[/]", highlight=False)
    for v in variants:
        rec = rep.recommended.get(v)
        console.print(f"[bold]{v}[/]: recommended threshold (wrong hits per request, 95% upper bound < "
                      f"{rep.target_error:g}): {'none in range' if rec is None else f'{rec:.3f}'}", highlight=False)
    if not refusal and any(r is None for r in rep.recommended.values()):
        console.print(_needed(rep.target_error, "replayed requests"), highlight=False)
    for v in variants:
        console.print(f"\n[bold]{v}[/]: hit rate (█) and wrong hits per request (▒) per threshold", highlight=False)
        for line in chart_lines([(r.threshold, r.hit_rate, r.wrong_per_request) for r in rep.rows if r.variant == v]):
            console.print(line, highlight=False, markup=False)
    if examples:
        for v in variants:
            t = rep.recommended.get(v)
            row = next((r for r in rep.rows if r.variant == v and (t is None or r.threshold == t)), None)
            if row is None:
                continue
            console.print(f"\n[bold]{v}[/]: wrong hits at {row.threshold:.3f}", highlight=False)
            for s, cached, req in row.examples:
                console.print(f"  {s:.4f}  cached {cached.request_id}: {cached.text}\n"
                              f"          request {req.request_id}: {req.text}", highlight=False, markup=False)


_DURATION_UNITS = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def _since(value: str, what: str = "--since") -> int:
    """``30m``, ``12h``, ``1d``, ``2w`` before now, or an ISO-8601 date / date-time."""
    import re

    from ..clock import now_ms
    from ..units import parse_time

    m = re.fullmatch(r"\s*(\d+)\s*([mhdw])\s*", value)
    if m:
        return now_ms() - int(m.group(1)) * _DURATION_UNITS[m.group(2)]
    return parse_time(value, what)


@app.command("stats")
def stats(
    home: HomeOpt = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    since: Annotated[str, typer.Option(
        "--since", help="Hit rates over requests since: 30m, 12h, 1d, 2w, or an ISO-8601 date / date-time.")] = "1d",
    top: Annotated[int, typer.Option("--top", help="Show the N namespaces with the most entries.", min=1)] = 10,
) -> None:
    """Entries, hits, money saved and size of the response cache; hit rate by type over --since (from
    the ledger); the largest namespaces."""
    from ..cache import store as cstore
    from ..clock import now_ms
    from ..units import iso_utc, usd
    from .common import open_existing_db, print_json

    since_ms = _since(since)
    h = resolve_home(home)
    conn = open_existing_db(h, local=True)  # the cache's entries: the home's own file
    try:
        data = cstore.stats(conn, now_ms())
    finally:
        conn.close()
    conn = open_existing_db(h)  # the ledger: the configured store ([store] url), the same file by default
    try:
        by = {str(r[0]): int(r[1]) for r in conn.execute(
            "SELECT coalesce(cache, 'off'), count(*) FROM ledger WHERE ts_ms >= ? GROUP BY cache", (since_ms,))}
        saved = int(conn.execute("SELECT coalesce(sum(saved_nanos), 0) FROM ledger WHERE ts_ms >= ?",
                                 (since_ms,)).fetchone()[0])
    finally:
        conn.close()
    looked = sum(n for k, n in by.items() if k not in ("off", "bypass", "verify"))
    window: dict[str, Any] = {"since": iso_utc(since_ms), "requests": sum(by.values()), "lookups": looked, "by_result": by,
              "hit_rate": {kind: (by.get(f"hit-{kind}", 0) / looked if looked else None)
                           for kind in ("exact", "semantic")},
              "shadow_rate": by.get("shadow", 0) / looked if looked else None, "saved_nanos": saved,
              "saved_usd": usd(saved, dollar=False)}
    namespaces = sorted(data.pop("namespaces").items(), key=lambda kv: (-kv[1]["entries"], kv[0]))
    data["saved_usd"] = usd(data["saved_nanos"], dollar=False)
    for k in ("oldest_ms", "newest_ms", "last_hit_ms"):
        data[k.replace("_ms", "")] = iso_utc(data[k]) if data[k] is not None else None
    data["window"] = window
    data["namespaces"] = {"count": len(namespaces), "top": [{"namespace": ns, **v} for ns, v in namespaces[:top]]}
    if json:
        print_json(data)
        return
    out = sys.stdout.write
    out(f"entries: {data['entries']} ({data['with_vector']} semantic, {data.get('expired', 0)} expired), "
        f"{data['bytes'] / 1e6:.1f} MB\n")
    out(f"hits (all time): {data['hits']}, saved {usd(data['saved_nanos'])}\n")
    out(f"oldest entry: {data['oldest'] or '-'}  newest: {data['newest'] or '-'}  last hit: {data['last_hit'] or '-'}\n")
    hr = window["hit_rate"]
    out(f"since {window['since']}: {window['requests']} requests, {looked} looked up; "
        f"exact hits {_pct(hr['exact'])}, semantic hits {_pct(hr['semantic'])}"
        + (f", shadow {_pct(window['shadow_rate'])}" if by.get("shadow") else "")
        + f"; saved {usd(saved)}\n")
    out(f"namespaces: {len(namespaces)}" + (f" (top {min(top, len(namespaces))} by entries)" if namespaces else "")
        + "\n")
    for ns, v in namespaces[:top]:
        out(f"  {ns or '(none)'}: {v['entries']} entries, {v['hits']} hits\n")


@app.command("clear")
def clear(
    home: HomeOpt = None,
    namespace: Annotated[str | None, typer.Option("--namespace", help="Only this namespace.")] = None,
) -> None:
    """Delete cache entries (all, or one namespace). A running daemon forgets them the first time a
    lookup meets them; its vector index is brought in line at its next start."""
    from ..cache import store as cstore
    from .common import open_existing_db

    conn = open_existing_db(resolve_home(home), local=True)
    try:
        n = cstore.clear(conn, namespace)
    finally:
        conn.close()
    sys.stdout.write(f"{n}\n")
    err(f"removed {n} cache entr{'y' if n == 1 else 'ies'}" + (f" in namespace {namespace!r}" if namespace else ""))


@app.command("delete")
def delete(
    entry_id: Annotated[int | None, typer.Argument(help="The cache entry id (from cache hits, the ledger's "
                                                        "cache_entry_id, or cache inspect).", show_default=False)] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="Delete every entry whose stored prompt is exactly "
                                                               "this text.")] = None,
    home: HomeOpt = None,
) -> None:
    """Delete one cache entry by id, or the entries stored for a prompt; prints how many."""
    from ..cache import store as cstore
    from ..errors import NotFound, UsageError
    from .common import open_existing_db

    if (entry_id is None) == (prompt is None):
        raise UsageError("give exactly one of ID or --prompt TEXT")
    conn = open_existing_db(resolve_home(home), local=True)
    try:
        ids = [entry_id] if entry_id is not None else cstore.ids_by_prompt(conn, prompt or "")
        gone = cstore.delete(conn, ids)
    finally:
        conn.close()
    if not gone:
        raise NotFound(f"no cache entry {entry_id}" if entry_id is not None else "no cache entry has this prompt",
                       code="not_found")
    sys.stdout.write(f"{len(gone)}\n")
    err(f"deleted cache entr{'y' if len(gone) == 1 else 'ies'} {', '.join(map(str, gone))}")


@app.command("hits")
def hits(
    since: Annotated[str, typer.Option("--since", help="30m, 12h, 1d, 2w, or an ISO-8601 date / date-time.")] = "1d",
    sort: Annotated[str, typer.Option("--sort", metavar="time|similarity",
                                      help="Newest first, or least similar first (the likeliest wrong ones).")] = "time",
    limit: Annotated[int, typer.Option("--limit", help="At most this many.", min=1)] = 50,
    shadow: Annotated[bool, typer.Option("--shadow", help="List shadow-mode hits (not served) instead.")] = False,
    home: HomeOpt = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recent semantic hits: the request, the prompt that was asked, the cache entry and its prompt that
    answered, and their similarity. Fix a wrong one with cache mark-wrong REQUEST_ID."""
    from ..cache import store as cstore
    from ..errors import UsageError
    from ..units import iso_utc
    from .common import print_json

    if sort not in ("time", "similarity"):
        raise UsageError(f"--sort: expected time or similarity, got {sort!r}")
    since_ms = _since(since)
    conn = open_readonly(resolve_home(home), local=True)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'cache_hit_log'").fetchone() is None:
            rows: list[dict[str, Any]] = []
        else:
            rows = cstore.recent_hits(conn, since_ms, sort=sort, limit=limit, kind="shadow" if shadow else "hit")
    finally:
        conn.close()
    for r in rows:
        r["time"] = iso_utc(r.pop("ts_ms"), millis=True)
    if json:
        print_json(rows)
        return
    if not rows:
        err(f"no semantic {'shadow ' if shadow else ''}hits since {iso_utc(since_ms)}")
    for r in rows:
        cached = "(entry deleted)" if r["cached"] is None else repr(str(r["cached"])[:100])
        sys.stdout.write(f"{r['time']}  {r['request_id']}  entry {r['entry_id']}  {r['similarity']:.4f}\n"
                         f"  asked:    {str(r['asked'])[:100]!r}\n  answered: {cached}\n")


@app.command("mark-wrong")
def mark_wrong(
    request_id: Annotated[str, typer.Argument(help="The request id of a semantic hit (x-request-id, cache hits).")],
    home: HomeOpt = None,
) -> None:
    """A semantic hit served a wrong answer: delete the entry that gave it and keep the pair (the prompt
    asked, the prompt that answered) as a labelled negative for the next cache ablate."""
    from ..cache import ablate as ab
    from ..cache import store as cstore
    from ..clock import now_ms
    from ..errors import NotFound, UsageError
    from .common import open_existing_db, writing

    h = resolve_home(home)
    ledger = open_existing_db(h)  # the configured store ([store] url), the same file by default
    try:
        row = ledger.execute("SELECT cache, cache_entry_id, cache_similarity, request_body FROM ledger "
                             "WHERE request_id = ?", (request_id,)).fetchone()
    finally:
        ledger.close()
    with writing(h, existing=True, local=True) as conn:
        logged = cstore.hit_log(conn, request_id)
        if logged is None and row is None:
            raise NotFound(f"REQUEST_ID: no request {request_id!r} in the ledger", param="REQUEST_ID",
                           code="not_found")
        entry_id = logged["entry_id"] if logged else row["cache_entry_id"]
        if entry_id is None or (logged is None and row["cache"] not in ("hit-semantic", "shadow")):
            raise UsageError(f"REQUEST_ID: request {request_id} was not a semantic cache hit "
                             f"(cache = {row['cache'] if row else None!r})")
        asked = logged["prompt"] if logged else None
        if asked is None and row is not None and row["request_body"]:
            import json as _json_mod

            try:
                asked = ab.last_user_text(_json_mod.loads(row["request_body"]))[0]
            except ValueError:
                asked = None
        entry = cstore.get(conn, int(entry_id))
        sim = logged["similarity"] if logged else row["cache_similarity"]
        cstore.add_label(conn, source="mark-wrong", request_id=request_id, entry_id=int(entry_id),
                         similarity=sim, cached_prompt=entry.prompt_text if entry else None, asked_prompt=asked,
                         label=0, now_ms=now_ms())
        gone = cstore.delete(conn, [int(entry_id)])
    sys.stdout.write(f"{entry_id}\n")
    err(f"cache entry {entry_id} " + ("deleted" if gone else "was already gone")
        + ("; the pair is kept as a labelled negative for cache ablate" if entry is not None and asked
           else "; its prompts are unknown, so no labelled pair was kept"))


@app.command("inspect")
def inspect(
    prompt: Annotated[str, typer.Argument(help="The prompt text to look up.")],
    home: HomeOpt = None,
    config: ConfigOpt = None,
    k: Annotated[int, typer.Option("--k", help="How many neighbours to show.", min=1, max=100)] = 5,
    model: Annotated[str | None, typer.Option("--model", help="A model2vec model (default: the running "
                                                             "configuration's).")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the stored prompts nearest to PROMPT: similarity, partition, and what the running
    configuration decides: the field guard (facts must match), the instruction gate (no word of a
    closed class may differ) and the threshold."""
    from ..cache import gate, guard
    from ..cache import store as cstore
    from .common import open_existing_db, print_json

    h = resolve_home(home)
    cfg = load_config(config, h).cache
    conn = open_existing_db(h, local=True)
    try:
        emb = _embedder(model or cfg.model)
        import numpy as np

        ids: list[int] = []
        vecs: list[Any] = []
        for eid, vec in cstore.iter_vectors(conn):
            ids.append(eid)
            vecs.append(vec)
        pending = list(cstore.iter_pending(conn))  # stored before any lookup in their partition
        if pending:
            ids.extend(eid for eid, _ in pending)
            vecs.extend(cstore.blob_to_vector(cstore.vector_to_blob(v))  # as float16, like the stored ones
                        for v in emb.encode([text for _, text in pending]))
        rows = []
        if ids:
            q = emb.encode([prompt])[0]
            sims = np.stack(vecs) @ q
            facts = guard.fingerprint(prompt, cfg.guard_patterns) if cfg.guard else ""
            mine = gate.features(prompt)
            classes = cfg.gate_classes if cfg.gate else ()
            for i in np.argsort(-sims)[:k]:
                e = cstore.get(conn, ids[int(i)])
                if e is None:
                    continue
                sim = round(float(sims[int(i)]), 4)
                facts_match = e.facts == facts
                blocked = gate.conflict(gate.features(e.prompt_text or ""), mine, classes) if classes else None
                rows.append({"id": e.id, "similarity": sim, "scope": e.scope, "model": e.model,
                             "namespace": e.namespace, "facts_match": facts_match, "gate": blocked,
                             "would_hit": facts_match and blocked is None and sim >= cfg.threshold,
                             "hits": e.hits, "prompt": e.prompt_text})
    finally:
        conn.close()
    if json:
        print_json(rows)
        return
    if not rows:
        err("no stored prompts")
    for r in rows:
        note = ("facts differ: never a hit" if not r["facts_match"] else
                f"gate: {r['gate']} differs, never a hit" if r["gate"] else
                f"would hit at {cfg.threshold:g} (same partition)" if r["would_hit"] else
                f"below the threshold {cfg.threshold:g}")
        sys.stdout.write(f"{r['similarity']:.4f}  #{r['id']}  {r['scope']}  {r['model']}  "
                         f"ns={r['namespace'] or '-'}  {note}  {str(r['prompt'])[:80]!r}\n")
