"""Prometheus metrics on a per-app registry (``prometheus_client``).

Labels stay low-cardinality on histograms (provider, route); customer labels are only on
counters. Every metric is listed in the README's metrics table.

Hot path: ``labels()`` costs a lock and a tuple build per call, so ``observe_request`` keeps the
labelled children in plain dicts and reuses them.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .usage import Usage

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("llmgw_requests", "Requests handled, by route, provider, model and outcome.",
                                ["route", "provider", "model", "status_class", "outcome"], registry=r)
        self.duration = Histogram("llmgw_request_duration_seconds", "Request latency as seen by the client.",
                                  ["route", "provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("llmgw_stream_first_byte_seconds", "Time to the first streamed event.",
                              ["provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("llmgw_requests_in_flight", "Requests being handled now.", registry=r)
        self.attempts = Counter("llmgw_upstream_attempts", "Upstream attempts, retries and fallbacks included.",
                                ["provider"], registry=r)
        self.tokens = Counter("llmgw_tokens", "Tokens by kind (prompt, completion, cached, cache_write).",
                              ["provider", "model", "customer", "kind"], registry=r)
        self.cost = Counter("llmgw_cost_usd", "Cost in US dollars (the ledger holds exact integer nano-dollars).",
                            ["provider", "model", "customer"], registry=r)
        self.unpriced = Counter("llmgw_unpriced_requests", "Requests to models without a known price (cost 0).",
                                ["provider", "model"], registry=r)
        self.writer_queue = Gauge("llmgw_ledger_queue_depth", "Ledger rows waiting for the writer.", registry=r)
        self.commit_seconds = Gauge("llmgw_ledger_last_commit_seconds", "Duration of the last ledger commit.",
                                    registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(self, route: str, provider: str, model: str, status: int, outcome: str, latency: float,
                        attempts: int, ttfb: float | None, customer: str, usage: Usage, cost_nanos: int) -> None:
        child = self._child
        child(self.requests, route, provider, model, f"{status // 100}xx", outcome).inc()
        child(self.duration, route, provider).observe(latency)
        if attempts:
            child(self.attempts, provider).inc(attempts)
        if ttfb is not None:
            child(self.ttfb, provider).observe(ttfb)
        if usage.prompt_tokens or usage.completion_tokens:
            child(self.tokens, provider, model, customer, "prompt").inc(usage.prompt_tokens)
            child(self.tokens, provider, model, customer, "completion").inc(usage.completion_tokens)
            if usage.cached_tokens:
                child(self.tokens, provider, model, customer, "cached").inc(usage.cached_tokens)
            if usage.cache_write_tokens:
                child(self.tokens, provider, model, customer, "cache_write").inc(usage.cache_write_tokens)
        if cost_nanos:
            child(self.cost, provider, model, customer).inc(cost_nanos / 1e9)

    def render(self) -> bytes:
        return generate_latest(self.registry)
