"""Prometheus metrics, exposed with ``prometheus_client`` on a per-app registry.

Hot path: the request path only bumps plain dicts and ints on the event loop thread (no locks,
no ``labels()`` lookups); a custom collector turns them into metric families when ``/metrics`` is
scraped, on the same thread. State owned by other threads (the ledger writer's commit times) is
read at scrape time through functions that take their owner's lock, never on the request path.

Invariants:
- Labels stay low-cardinality on histograms (route, provider); customer labels are only on
  counters; no key or team label anywhere.
- A ``model`` label names only a model the configuration knows (an alias, a model a provider
  declares, a priced model: ``Metrics.known_model``), at most ``MODEL_LABELS_MAX`` of them; any
  other name a client sends is counted as ``other``, so clients cannot grow the series.
- Label sets that dashboards rate() over (rejection reasons, cache hit types, cache error
  operations) are exported from the start with value 0, so a series exists before its first event.
- Every metric is listed in the README's metrics table; ``/metrics`` is clean under
  ``promtool check metrics`` (tests/test_metrics.py).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import redact
from .units import NANOS_PER_USD

#: request and upstream latency (seconds): from a cached reply to a long generation
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: sub-millisecond work: cache lookups, ledger commits
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

#: cache lookups: fine enough around 1 ms to check a 1 ms p99 target
CACHE_LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.005, 0.01, 0.025, 0.1, 1.0)
#: cosine similarity of the best semantic candidate, for hits and misses
SIMILARITY_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995, 1.0)
#: what a shadow lookup or a verification re-ask found (``llmgw_cache_shadow_total``/``_verify_total``)
CACHE_VERDICTS = ("agree", "disagree")
CACHE_VERIFY_OUTCOMES = ("agree", "disagree", "failed", "skipped")

REJECTION_REASONS = ("budget_exceeded", "rate_limit_exceeded", "model_not_allowed", "auth", "invalid_request")
CACHE_HIT_TYPES = ("exact", "semantic")
#: what the response cache was doing when it failed (the ``op`` label of ``llmgw_cache_errors_total``)
CACHE_ERROR_OPS = ("lookup", "store", "warm", "record")
#: value of the ``cache`` label of ``llmgw_requests_total`` while no cache is in the request path
CACHE_OFF = "off"
#: distinct values of the ``model`` labels (first come, first labelled); every other model is OTHER_MODEL
MODEL_LABELS_MAX = 500
#: the ``model`` label of a model the configuration does not know, or of one past MODEL_LABELS_MAX
OTHER_MODEL = "other"
#: unknown model names remembered as such (beyond: asked again, a few dict lookups)
_UNKNOWN_REMEMBERED = 10_000

#: a scrape-time histogram source: () -> (bucket upper bounds, per-bucket counts incl. +Inf, sum)
HistogramSource = Callable[[], tuple[Sequence[float], Sequence[int], float]]

class _Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1
        self.sum += v
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        return cumulative(self.bounds, self.counts)


def cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus buckets (``le`` string, cumulative count) from per-bucket counts; the last count
    is the overflow (+Inf) bucket."""
    out: list[tuple[str, float]] = []
    acc = 0
    for bound, c in zip(bounds, counts, strict=False):
        acc += c
        out.append((repr(float(bound)), acc))
    out.append(("+Inf", acc + sum(counts[len(bounds):])))
    return out


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None,
                 budgets: Callable[[], list[dict[str, Any]]] | None = None,
                 histograms: dict[str, tuple[str, HistogramSource]] | None = None) -> None:
        """``gauges``: extra gauges read at scrape time, name -> (help text, function);
        ``budgets``: the in-memory budget states (``BudgetBook.status`` dicts) at scrape time;
        ``histograms``: extra unlabelled histograms read at scrape time, name -> (help, source)."""
        self.budgets = budgets
        self.in_flight = 0
        self.requests: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.duration: defaultdict[tuple[str, ...], _Histogram] = defaultdict(_Histogram)
        self.ttfb: defaultdict[tuple[str, ...], _Histogram] = defaultdict(_Histogram)
        self.upstream: defaultdict[tuple[str, ...], _Histogram] = defaultdict(_Histogram)
        self.attempts: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.retries: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.tokens: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.cost_nanos: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.unpriced: defaultdict[tuple[str, ...], int] = defaultdict(int)
        #: the gateway refused the request itself: reason -> count (every reason present from 0)
        self.rejections: dict[str, int] = dict.fromkeys(REJECTION_REASONS, 0)
        # the response cache (filled by the cache through ``observe_cache``; zeros until then)
        self.cache_hits: dict[str, int] = dict.fromkeys(CACHE_HIT_TYPES, 0)
        self.cache_misses = 0
        self.cache_lookup = _Histogram(CACHE_LOOKUP_BUCKETS)
        #: best semantic similarity per lookup, by result (hit, miss)
        self.cache_similarity = {"hit": _Histogram(SIMILARITY_BUCKETS), "miss": _Histogram(SIMILARITY_BUCKETS)}
        #: semantic candidates above the threshold refused by the instruction gate, by class
        self.cache_gate_blocked: dict[str, int] = {}
        self.cache_shadow: dict[str, int] = dict.fromkeys(CACHE_VERDICTS, 0)
        self.cache_verify: dict[str, int] = dict.fromkeys(CACHE_VERIFY_OUTCOMES, 0)
        self.cache_saved_nanos = 0
        self.cache_entries = 0  # set by the cache whenever its size changes
        #: cache failures the request went on without (``Gateway.cache_failed``): op -> count
        self.cache_errors: dict[str, int] = dict.fromkeys(CACHE_ERROR_OPS, 0)
        self.gauges = dict(gauges or {})
        self.histograms = dict(histograms or {})
        #: whether a model name (as a client wrote it: alias or provider/model) may be a label value;
        #: the gateway sets it from its routes and prices (the default: any name, still capped)
        self.known_model: Callable[[str], bool] = lambda name: True
        self._model_labels: set[str] = set()
        self._unknown_models: set[str] = set()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # a Collector: anything with collect()

    # ---- hot path --------------------------------------------------------------------------
    def model_label(self, name: str) -> str:
        """``name`` as a ``model`` label value: itself if known and within the cap, else OTHER_MODEL."""
        if name in self._model_labels:
            return name
        if not name or name in self._unknown_models:
            return OTHER_MODEL
        if len(self._model_labels) < MODEL_LABELS_MAX and self.known_model(name):
            self._model_labels.add(name)
            return name
        if len(self._unknown_models) < _UNKNOWN_REMEMBERED:
            self._unknown_models.add(name)
        return OTHER_MODEL

    def observe_request(self, row: Mapping[str, Any], upstream_seconds: float = 0.0) -> None:
        """One finished API request, from its ledger row (``Gateway._row``: route, provider, model,
        status, outcome, latency_ms, ttfb_ms, attempts, customer_id, the token counts, cost_nanos and
        cache, None without a cache) and what the row does not hold: ``upstream_seconds``, the time
        spent in upstream attempts (0 of them: never reached a provider) and reading a stream's body."""
        route, provider, model = row["route"], row["provider"] or "", self.model_label(row["model"] or "")
        self.requests[(route, provider, model, f"{row['status'] // 100}xx", row["outcome"],
                       row["cache"] or CACHE_OFF)] += 1
        self.duration[(route, provider)].observe(row["latency_ms"] / 1000)
        attempts = row["attempts"]
        if attempts:
            p = (provider,)
            self.attempts[p] += attempts
            self.retries[p] += attempts - 1  # += 0 still creates the series: rate() sees a 0, not nothing
            self.upstream[p].observe(upstream_seconds)
        if row["ttfb_ms"] is not None:
            self.ttfb[(provider,)].observe(row["ttfb_ms"] / 1000)
        prompt, completion, cost = row["prompt_tokens"], row["completion_tokens"], row["cost_nanos"]
        if not (prompt or completion or cost):
            return
        customer = row["customer_id"] or ""
        if prompt or completion:
            t = self.tokens
            t[(provider, model, customer, "prompt")] += prompt
            t[(provider, model, customer, "completion")] += completion
            if row["cached_tokens"]:
                t[(provider, model, customer, "cached")] += row["cached_tokens"]
            if row["cache_write_tokens"]:
                t[(provider, model, customer, "cache_write")] += row["cache_write_tokens"]
        if cost:
            self.cost_nanos[(provider, model, customer)] += cost

    def observe_cache(self, hit: str | None, lookup_seconds: float, saved_nanos: int = 0, *,
                      similarity: float | None = None, blocked: str | None = None) -> None:
        """One cache lookup, for the cache to call on the event loop: ``hit`` is the hit type
        ("exact" or "semantic") or ``None`` for a miss; ``saved_nanos`` is what the replayed answer
        would have cost upstream (nano-dollars); ``similarity`` the best semantic candidate's cosine
        (None: no semantic search, or an empty partition); ``blocked`` a gate class that refused a
        candidate. Set ``cache_entries`` when the cache's size changes."""
        self.cache_lookup.observe(lookup_seconds)
        if similarity is not None and hit != "exact":
            self.cache_similarity["miss" if hit is None else "hit"].observe(similarity)
        if blocked is not None:
            self.cache_gate_blocked[blocked] = self.cache_gate_blocked.get(blocked, 0) + 1
        if hit is None:
            self.cache_misses += 1
            return
        self.cache_hits[hit] = self.cache_hits.get(hit, 0) + 1
        self.cache_saved_nanos += saved_nanos

    # ---- scrape ----------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        def counter(name: str, doc: str, labels: list[str], data: dict[tuple[str, ...], Any],
                    scale: float = 1.0) -> CounterMetricFamily:
            fam = CounterMetricFamily(name, doc, labels=labels)
            for key, value in data.items():
                fam.add_metric(list(key), value * scale if scale != 1.0 else value)
            return fam

        def histogram(name: str, doc: str, labels: list[str],
                      data: dict[tuple[str, ...], _Histogram]) -> HistogramMetricFamily:
            fam = HistogramMetricFamily(name, doc, labels=labels)
            for key, h in data.items():
                fam.add_metric(list(key), h.buckets(), h.sum)
            return fam

        yield counter("llmgw_requests", "API requests handled, by route, provider, model, status class, "
                      "outcome and cache result.",
                      ["route", "provider", "model", "status_class", "outcome", "cache"], self.requests)
        yield histogram("llmgw_request_duration_seconds", "Request latency as seen by the client.",
                        ["route", "provider"], self.duration)
        yield histogram("llmgw_stream_first_byte_seconds", "Time to the first streamed event.",
                        ["provider"], self.ttfb)
        yield histogram("llmgw_upstream_duration_seconds", "Time per request spent in upstream attempts "
                        "(backoff excluded; a stream's body included).", ["provider"], self.upstream)
        yield GaugeMetricFamily("llmgw_requests_in_flight", "Requests being handled now.", value=self.in_flight)
        yield counter("llmgw_upstream_attempts", "Upstream attempts, retries and fallbacks included.",
                      ["provider"], self.attempts)
        yield counter("llmgw_upstream_retries", "Upstream attempts beyond the first of a request "
                      "(retries and fallbacks).", ["provider"], self.retries)
        rej = CounterMetricFamily("llmgw_rejections", "Requests the gateway refused itself, by reason.",
                                  labels=["reason"])
        for reason, n in self.rejections.items():
            rej.add_metric([reason], n)
        yield rej
        yield counter("llmgw_tokens", "Tokens by kind (prompt, completion, cached, cache_write).",
                      ["provider", "model", "customer", "kind"], self.tokens)
        yield counter("llmgw_cost_usd", "Cost in US dollars (the ledger holds exact integer nano-dollars).",
                      ["provider", "model", "customer"], self.cost_nanos, scale=1 / NANOS_PER_USD)
        yield counter("llmgw_unpriced_requests", "Requests to models without a known price (cost 0).",
                      ["provider", "model"], self.unpriced)
        hits = CounterMetricFamily("llmgw_cache_hits", "Response cache hits, by type (exact, semantic).",
                                   labels=["type"])
        for kind, n in self.cache_hits.items():
            hits.add_metric([kind], n)
        yield hits
        yield CounterMetricFamily("llmgw_cache_misses", "Response cache lookups that found nothing.",
                                  value=self.cache_misses)
        lookup = HistogramMetricFamily("llmgw_cache_lookup_seconds", "Response cache lookup duration.")
        lookup.add_metric([], self.cache_lookup.buckets(), self.cache_lookup.sum)
        yield lookup
        for result, h in self.cache_similarity.items():
            sim = HistogramMetricFamily(f"llmgw_cache_{result}_similarity", "Cosine similarity of the best "
                                        f"semantic candidate of each lookup that was a {result}.")
            sim.add_metric([], h.buckets(), h.sum)
            yield sim
        yield counter("llmgw_cache_gate_blocked", "Semantic candidates above the threshold that the instruction "
                      "gate refused, by word class.", ["class"], {(k,): v for k, v in self.cache_gate_blocked.items()})
        yield counter("llmgw_cache_shadow", "Shadow-mode semantic hits (not served), by whether the fresh "
                      "answer agreed with the cached one.", ["verdict"], {(k,): v for k, v in self.cache_shadow.items()})
        yield counter("llmgw_cache_verify", "Sampled semantic hits re-asked upstream, by outcome (agree, disagree, "
                      "failed, skipped).", ["outcome"], {(k,): v for k, v in self.cache_verify.items()})
        yield GaugeMetricFamily("llmgw_cache_entries", "Entries in the response cache.", value=self.cache_entries)
        errors = CounterMetricFamily("llmgw_cache_errors", "Response cache failures, by operation (lookup, store, "
                                     "warm; record: hit counters, the hit log, labels); the request went upstream "
                                     "without the cache.", labels=["op"])
        for op, n in self.cache_errors.items():
            errors.add_metric([op], n)
        yield errors
        yield CounterMetricFamily("llmgw_cache_saved_usd", "Upstream cost avoided by cache hits, in US dollars.",
                                  value=self.cache_saved_nanos / NANOS_PER_USD)
        for name, (doc, fn) in self.gauges.items():
            yield GaugeMetricFamily(name, doc, value=fn())
        for name, (doc, source) in self.histograms.items():
            bounds, counts, total = source()
            fam = HistogramMetricFamily(name, doc)
            fam.add_metric([], cumulative(bounds, counts), total)
            yield fam
        if self.budgets is not None:
            labels = ["budget", "scope", "scope_id", "period"]
            limit = GaugeMetricFamily("llmgw_budget_limit_usd", "Budget limit in US dollars.", labels=labels)
            spend = GaugeMetricFamily("llmgw_budget_spend_usd",
                                      "Spend in the budget's current window (the daemon's live counter).",
                                      labels=labels)
            util = GaugeMetricFamily("llmgw_budget_utilisation_ratio", "Spend divided by limit.", labels=labels)
            for st in self.budgets():
                lv = [st["id"], st["scope"], st["scope_id"], st["period"]]
                limit.add_metric(lv, st["limit_nanos"] / NANOS_PER_USD)
                spend.add_metric(lv, st["spent_nanos"] / NANOS_PER_USD)
                util.add_metric(lv, st["spent_nanos"] / st["limit_nanos"] if st["limit_nanos"] else 0.0)
            yield limit
            yield spend
            yield util

    def render(self) -> bytes:
        """The scrape, every configured secret redacted (``redact``): labels come from clients."""
        return redact.data(generate_latest(self.registry))
