"""Metric cardinality (issue 13.8): ``model`` labels name only models the configuration knows
(aliases, declared, priced), at most ``MODEL_LABELS_MAX`` of them; any other name is ``other``."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import UPSTREAM_ENV, upstream_config
from llmgw import metrics as metrics_mod
from llmgw.metrics import OTHER_MODEL, Metrics


def model_labels(text: str) -> set[str]:
    return {s.labels["model"] for fam in text_string_to_metric_families(text) for s in fam.samples
            if "model" in s.labels}


def test_unknown_model_names_do_not_add_series(daemon_factory, upstream):
    d = daemon_factory(upstream_config(upstream, '[aliases]\nfast = ["openai/gpt-4o-mini"]\n'), UPSTREAM_ENV)
    h = {"Authorization": f"Bearer {d.key}"}
    msg = [{"role": "user", "content": "x"}]
    with httpx.Client(base_url=d.url, headers=h) as c:
        for model in ("fast", "openai/gpt-4o-mini", "demo/echo"):  # an alias, a priced model, a declared one
            assert c.post("/v1/chat/completions", json={"model": model, "messages": msg}).status_code == 200
        before = len(c.get("/metrics").content)
        for i in range(150):
            # served (the openai provider takes any model) but neither priced nor declared; then unroutable
            assert c.post("/v1/chat/completions", json={"model": f"openai/made-up-{i}", "messages": msg}
                          ).status_code == 200
            assert c.post("/v1/chat/completions", json={"model": f"nowhere-{i}/x", "messages": msg}
                          ).status_code == 404
        scrape = c.get("/metrics").text
    assert model_labels(scrape) == {"fast", "openai/gpt-4o-mini", "demo/echo", OTHER_MODEL}
    assert len(scrape) < before + 3000  # a few "other" series, not 300
    assert "made-up" not in scrape and "nowhere" not in scrape
    other_ok = [s for fam in text_string_to_metric_families(scrape) for s in fam.samples
                if s.name == "llmgw_requests_total" and s.labels["model"] == OTHER_MODEL]
    assert sum(s.value for s in other_ok) == 300
    # the ledger keeps the names the clients sent
    assert {r["model"] for r in d.ledger()} >= {"openai/made-up-0", "nowhere-149/x"}


def test_the_cap_on_known_model_labels(monkeypatch):
    monkeypatch.setattr(metrics_mod, "MODEL_LABELS_MAX", 3)
    m = Metrics()
    m.known_model = lambda name: not name.startswith("x")
    assert [m.model_label(n) for n in ("a", "b", "x1", "a", "c", "d", "b", "")] == \
        ["a", "b", OTHER_MODEL, "a", "c", OTHER_MODEL, "b", OTHER_MODEL]
