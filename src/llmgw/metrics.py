"""Prometheus metrics, exposed with ``prometheus_client`` on a per-app registry.

Hot path: the request path only bumps plain dicts and ints on the event loop thread (no locks,
no ``labels()`` lookups); a custom collector turns them into metric families when ``/metrics`` is
scraped, on the same thread. Labels stay low-cardinality on histograms (route, provider);
customer labels are only on counters. Every metric is listed in the README's metrics table.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .usage import Usage

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _Histogram:
    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, v)] += 1
        self.sum += v
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        acc = 0
        for bound, c in zip(LATENCY_BUCKETS, self.counts, strict=False):
            acc += c
            out.append((repr(bound), acc))
        out.append(("+Inf", self.count))
        return out


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None,
                 budgets: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        """``gauges``: extra gauges read at scrape time, name -> (help text, function);
        ``budgets``: the in-memory budget states (``BudgetBook.status`` dicts) at scrape time."""
        self.budgets = budgets
        self.in_flight = 0
        self.requests: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.duration: defaultdict[tuple[str, ...], _Histogram] = defaultdict(_Histogram)
        self.ttfb: defaultdict[tuple[str, ...], _Histogram] = defaultdict(_Histogram)
        self.attempts: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.tokens: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.cost_nanos: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.unpriced: defaultdict[tuple[str, ...], int] = defaultdict(int)
        self.gauges = dict(gauges or {})
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # a Collector: anything with collect()

    # ---- hot path --------------------------------------------------------------------------
    def observe_request(self, route: str, provider: str, model: str, status: int, outcome: str, latency: float,
                        attempts: int, ttfb: float | None, customer: str, usage: Usage, cost_nanos: int) -> None:
        self.requests[(route, provider, model, f"{status // 100}xx", outcome)] += 1
        self.duration[(route, provider)].observe(latency)
        if attempts:
            self.attempts[(provider,)] += attempts
        if ttfb is not None:
            self.ttfb[(provider,)].observe(ttfb)
        if usage.prompt_tokens or usage.completion_tokens:
            t = self.tokens
            t[(provider, model, customer, "prompt")] += usage.prompt_tokens
            t[(provider, model, customer, "completion")] += usage.completion_tokens
            if usage.cached_tokens:
                t[(provider, model, customer, "cached")] += usage.cached_tokens
            if usage.cache_write_tokens:
                t[(provider, model, customer, "cache_write")] += usage.cache_write_tokens
        if cost_nanos:
            self.cost_nanos[(provider, model, customer)] += cost_nanos

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

        yield counter("llmgw_requests", "Requests handled, by route, provider, model and outcome.",
                      ["route", "provider", "model", "status_class", "outcome"], self.requests)
        yield histogram("llmgw_request_duration_seconds", "Request latency as seen by the client.",
                        ["route", "provider"], self.duration)
        yield histogram("llmgw_stream_first_byte_seconds", "Time to the first streamed event.",
                        ["provider"], self.ttfb)
        yield GaugeMetricFamily("llmgw_requests_in_flight", "Requests being handled now.", value=self.in_flight)
        yield counter("llmgw_upstream_attempts", "Upstream attempts, retries and fallbacks included.",
                      ["provider"], self.attempts)
        yield counter("llmgw_tokens", "Tokens by kind (prompt, completion, cached, cache_write).",
                      ["provider", "model", "customer", "kind"], self.tokens)
        yield counter("llmgw_cost_usd", "Cost in US dollars (the ledger holds exact integer nano-dollars).",
                      ["provider", "model", "customer"], self.cost_nanos, scale=1e-9)
        yield counter("llmgw_unpriced_requests", "Requests to models without a known price (cost 0).",
                      ["provider", "model"], self.unpriced)
        for name, (doc, fn) in self.gauges.items():
            yield GaugeMetricFamily(name, doc, value=fn())
        if self.budgets is not None:
            labels = ["budget", "scope", "scope_id", "period"]
            limit = GaugeMetricFamily("llmgw_budget_limit_usd", "Budget limit in US dollars.", labels=labels)
            spend = GaugeMetricFamily("llmgw_budget_spend_usd",
                                      "Spend in the budget's current window (the daemon's live counter).",
                                      labels=labels)
            util = GaugeMetricFamily("llmgw_budget_utilisation_ratio", "Spend divided by limit.", labels=labels)
            for st in self.budgets():
                lv = [st["id"], st["scope"], st["scope_id"], st["period"]]
                limit.add_metric(lv, st["limit_nanos"] / 1e9)
                spend.add_metric(lv, st["spent_nanos"] / 1e9)
                util.add_metric(lv, st["spent_nanos"] / st["limit_nanos"] if st["limit_nanos"] else 0.0)
            yield limit
            yield spend
            yield util

    def render(self) -> bytes:
        return generate_latest(self.registry)

