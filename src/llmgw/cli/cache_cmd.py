"""``llmgw cache``: the response cache's commands (``ablate`` chooses a semantic threshold from data)."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import HomeOpt, err

if TYPE_CHECKING:
    from ..cache.ablate import PairReport, ReplayReport

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
    since: Annotated[str | None, typer.Option(
        "--since", help="With --from-log: start (inclusive), ISO-8601 date or date-time, UTC unless an offset is given.")] = None,
    until: Annotated[str | None, typer.Option(
        "--until", help="With --from-log: end (exclusive), ISO-8601 date or date-time.")] = None,
    thresholds: Annotated[str, typer.Option(
        "--thresholds", help="Cosine thresholds: a list (0.9,0.95) or start:stop:step, both ends inclusive.")]
    = "0.80:0.99:0.01",
    variants: Annotated[str, typer.Option(
        "--variants", help="Comma-separated: guard (facts must match too), no-guard (similarity only).")]
    = "guard,no-guard",
    target_error: Annotated[float, typer.Option(
        "--target-error", help="Recommend the lowest threshold whose 95 % Wilson upper bound of the error "
                               "(false-hit rate; with --from-log wrong hits per request) stays below this.")] = 0.01,
    examples: Annotated[int, typer.Option(
        "--examples", help="Show this many colliding pairs (wrong hits) at the recommended threshold.", min=0)] = 0,
    model: Annotated[str | None, typer.Option(
        "--model", help="A model2vec model directory or hub id. Default: the bundled model.")] = None,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed for the negatives of a GPTCache mock file (origin i paired with another item's similar).")]
    = 0,
    fmt: Annotated[Format, typer.Option("--format", help="table (with a chart) for people; json or csv for machines.")]
    = Format.table,
    home: HomeOpt = None,
) -> None:
    """Measure hit rate against false hits per semantic threshold, with and without the field guard.

    --pairs: hit rate on positives (recall), false-hit rate on negatives, precision, F1 and ROC AUC.
    --from-log: the vCache replay protocol (empty cache, requests in time order, insert on miss); a hit
    is wrong when the cached answer's normalised text differs from the answer really given.
    """
    from ..cache import ablate as ab
    from ..errors import UsageError

    if (pairs is None) == (not from_log):
        raise UsageError("give exactly one of --pairs FILE or --from-log")
    if (since or until) and not from_log:
        raise UsageError("--since/--until only apply to --from-log")
    if not 0 < target_error < 1:
        raise UsageError(f"bad --target-error {target_error}: expected a fraction between 0 and 1, e.g. 0.01")
    ts = ab.parse_thresholds(thresholds)
    vs = ab.parse_variants(variants)

    if pairs is not None:
        items = ab.load_pairs(pairs, seed=seed)
        n_pos = sum(p.label for p in items)
        err(f"{pairs}: {len(items)} pairs ({n_pos} positive, {len(items) - n_pos} negative)")
        embedder = _embedder(model)
        sims = ab.pair_similarities(items, embedder)
        rep = ab.pair_metrics(items, sims, ts, vs, target_error=target_error)
        if fmt is Format.json:
            _json([r.as_dict() for r in rep.rows])
        elif fmt is Format.csv:
            sys.stdout.write(ab.to_csv([r.as_dict() for r in rep.rows]))
        else:
            _print_pairs(rep, examples)
        return

    from ..units import parse_time
    from .common import open_readonly, resolve_home

    since_ms = parse_time(since, "--since") if since else None
    until_ms = parse_time(until, "--until") if until else None
    from ..store import ledger

    conn = open_readonly(resolve_home(home))
    try:
        rows = ledger.rows(conn, since_ms=since_ms, until_ms=until_ms)
    finally:
        conn.close()
    reqs, skipped = ab.requests_from_rows(rows)
    err(f"ledger: {len(rows)} rows, {len(reqs)} replayable, {skipped} skipped "
        "(no bodies, errors, cache hits or no user text)")
    if not reqs:
        raise UsageError("no replayable requests in the ledger window: log bodies with [log] bodies = true")
    embedder = _embedder(model)
    rrep = ab.replay(reqs, embedder, ts, vs, target_error=target_error, keep_examples=examples, skipped=skipped)
    if fmt is Format.json:
        _json([r.as_dict() for r in rrep.rows])
    elif fmt is Format.csv:
        sys.stdout.write(ab.to_csv([r.as_dict() for r in rrep.rows]))
    else:
        _print_replay(rrep, examples)


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


def _print_replay(rep: ReplayReport, examples: int) -> None:
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
    for v in variants:
        rec = rep.recommended.get(v)
        console.print(f"[bold]{v}[/]: recommended threshold (wrong hits per request, 95% upper bound < "
                      f"{rep.target_error:g}): {'none in range' if rec is None else f'{rec:.3f}'}", highlight=False)
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


@app.command("stats")
def stats(home: HomeOpt = None, json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Entries, hits, money saved and size of the response cache (by namespace)."""
    from ..cache import store as cstore
    from ..clock import now_ms
    from .common import open_existing_db, print_json, resolve_home

    conn = open_existing_db(resolve_home(home))
    try:
        data = cstore.stats(conn, now_ms())
    finally:
        conn.close()
    if json:
        print_json(data)
        return
    for k, v in data.items():
        if k != "namespaces":
            sys.stdout.write(f"{k}: {v}\n")
    for ns in data.get("namespaces") or []:
        sys.stdout.write(f"namespace {ns}\n")


@app.command("clear")
def clear(
    home: HomeOpt = None,
    namespace: Annotated[str | None, typer.Option("--namespace", help="Only this namespace.")] = None,
) -> None:
    """Delete cache entries (all, or one namespace). The vector index drops them at the daemon's next
    start; until then a running daemon ignores ids that are no longer in the database."""
    from ..cache import store as cstore
    from .common import open_existing_db, resolve_home

    conn = open_existing_db(resolve_home(home))
    try:
        n = cstore.clear(conn, namespace)
    finally:
        conn.close()
    sys.stdout.write(f"{n}\n")
    err(f"removed {n} cache entr{'y' if n == 1 else 'ies'}" + (f" in namespace {namespace!r}" if namespace else ""))


@app.command("inspect")
def inspect(
    prompt: Annotated[str, typer.Argument(help="The prompt text to look up.")],
    home: HomeOpt = None,
    k: Annotated[int, typer.Option("--k", help="How many neighbours to show.", min=1, max=100)] = 5,
    model: Annotated[str | None, typer.Option("--model", help="A model2vec model (default: the bundled one).")] = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the stored prompts nearest to PROMPT: similarity, partition, and whether the field guard
    would allow a hit (the facts must match exactly)."""
    from .. import paths
    from ..cache import guard
    from ..cache import store as cstore
    from ..cache.index import VectorIndex
    from .common import open_existing_db, print_json, resolve_home

    h = resolve_home(home)
    conn = open_existing_db(h)
    try:
        emb = _embedder(model)
        index = VectorIndex(paths.cache_index_path(h), emb.dim, expected_count=cstore.vector_count(conn),
                            entries=lambda: cstore.iter_vectors(conn))
        near = index.search(emb.encode([prompt])[0], k)
        facts = guard.fingerprint(prompt)
        rows = []
        for entry_id, sim in near:
            e = cstore.get(conn, entry_id)
            if e is None:
                continue
            rows.append({"id": e.id, "similarity": round(sim, 4), "scope": e.scope, "model": e.model,
                         "namespace": e.namespace, "facts_match": e.facts in ("", facts), "hits": e.hits,
                         "prompt": e.prompt_text})
    finally:
        conn.close()
    if json:
        print_json(rows)
        return
    if not rows:
        err("no stored prompts")
    for r in rows:
        guard_note = "facts match" if r["facts_match"] else "facts differ: never a hit"
        sys.stdout.write(f"{r['similarity']:.4f}  #{r['id']}  {r['scope']}  {r['model']}  "
                         f"ns={r['namespace'] or '-'}  {guard_note}  {str(r['prompt'])[:80]!r}\n")
