"""The hit audit through the real daemon: the ledger names the entry of every hit; ``cache hits``,
``delete`` and ``mark-wrong``; shadow mode and sampled verification; thresholds per key, namespace
and model; the instruction gate at the default settings."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from conftest import UPSTREAM_ENV, upstream_config, wait_until

CHAT = "/v1/chat/completions"
PROMPT = ("Write a short product caption. brand: Nike; sku: 10482; colour: red; "
          "category: running shoes; tone: upbeat")
PARA = PROMPT.replace("Write a short product caption.", "Please write a short caption for this product.")


def ask(d: Any, key: str, text: str, headers: dict[str, str] | None = None, **extra: Any) -> httpx.Response:
    return httpx.post(d.openai_base + "/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})},
                      json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra})


def calls(upstream: Any) -> int:
    return sum(1 for r in upstream.requests if r["path"] == CHAT)


def cli(d: Any, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "llmgw", "cache", *args, "--home", str(d.home)],
                       capture_output=True, text=True, timeout=120)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def rows(d: Any, sql: str) -> list[dict[str, Any]]:
    conn = d.db()
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def metric(d: Any, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(d.url + "/metrics", timeout=10).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def semantic_daemon(factory: Any, upstream: Any, extra: str = "") -> Any:
    return factory(upstream_config(upstream, f'[log]\nbodies = true\n[cache]\nmode = "semantic"\nthreshold = 0.9\n{extra}'),
                   UPSTREAM_ENV)


def test_hits_carry_their_entry_and_can_be_listed_marked_wrong_and_learned_from(daemon_factory, upstream):
    d = semantic_daemon(daemon_factory, upstream)
    first = ask(d, d.key, PROMPT)
    hit = ask(d, d.key, PARA)
    assert hit.headers["x-llmgw-cache"] == "hit-semantic"
    entry = rows(d, "SELECT id FROM cache_entries")[0]["id"]
    miss_row, hit_row = d.ledger()[-2:]
    assert miss_row["cache"] == "miss" and miss_row["cache_entry_id"] is None
    assert hit_row["cache_entry_id"] == entry and hit_row["request_id"] == hit.headers["x-request-id"]
    assert first.headers["x-llmgw-cache"] == "miss"

    listed = json.loads(cli(d, "hits", "--since", "1d", "--json").stdout)
    assert [(h["request_id"], h["entry_id"], h["asked"], h["cached"]) for h in listed] == \
        [(hit_row["request_id"], entry, PARA, PROMPT)]
    assert "asked:" in cli(d, "hits", "--sort", "similarity").stdout

    out = cli(d, "mark-wrong", hit_row["request_id"])
    assert out.stdout.strip() == str(entry) and "labelled negative" in out.stderr
    assert rows(d, "SELECT count(*) AS n FROM cache_entries")[0]["n"] == 0
    label = rows(d, "SELECT source, cached_prompt, asked_prompt, label FROM cache_labels")
    assert label == [{"source": "mark-wrong", "cached_prompt": PROMPT, "asked_prompt": PARA, "label": 0}]
    before = calls(upstream)
    assert ask(d, d.key, PARA).headers["x-llmgw-cache"] == "miss"  # the daemon forgot the entry at once
    assert calls(upstream) == before + 1
    # the next ablate knows the pair: the recommendation must lie above its similarity
    r = cli(d, "ablate", "--from-log", "--format", "json", "--thresholds", "0.80:0.99:0.01")
    out_json = json.loads(r.stdout)
    assert out_json["labelled_pairs"] == 1
    sim = hit_row["cache_similarity"]
    assert all(t is None or t > sim for t in out_json["recommended"].values())
    bad = cli(d, "mark-wrong", first.headers["x-request-id"], ok=False)
    assert bad.returncode == 2 and "was not a semantic cache hit" in bad.stderr
    missing = cli(d, "mark-wrong", "req_nope", ok=False)
    assert missing.returncode != 0 and "no request" in missing.stderr


def test_delete_by_id_and_by_prompt(daemon_factory, upstream):
    d = semantic_daemon(daemon_factory, upstream)
    ask(d, d.key, PROMPT)
    ask(d, d.key, "Describe a blue ceramic teapot. sku: 555")
    ids = {r["prompt_text"]: r["id"] for r in rows(d, "SELECT id, prompt_text FROM cache_entries")}
    assert cli(d, "delete", str(ids[PROMPT])).stdout.strip() == "1"
    assert ask(d, d.key, PARA).headers["x-llmgw-cache"] == "miss"
    assert cli(d, "delete", "--prompt", "Describe a blue ceramic teapot. sku: 555").stdout.strip() == "1"
    gone = cli(d, "delete", str(ids[PROMPT]), ok=False)
    assert gone.returncode != 0 and "no cache entry" in gone.stderr
    both = cli(d, "delete", "1", "--prompt", "x", ok=False)
    assert both.returncode == 2 and "exactly one of" in both.stderr


def test_shadow_mode_serves_fresh_answers_and_records_what_would_have_hit(daemon_factory, upstream):
    d = semantic_daemon(daemon_factory, upstream, "shadow = true\n")
    ask(d, d.key, PROMPT)
    before = calls(upstream)
    r = ask(d, d.key, PARA)
    assert r.headers["x-llmgw-cache"] == "miss" and calls(upstream) == before + 1
    assert r.json()["choices"][0]["message"]["content"].startswith("fake reply to: Please")  # the fresh answer
    row = d.ledger()[-1]
    entry = rows(d, "SELECT id FROM cache_entries WHERE prompt_text = '" + PROMPT + "'")[0]["id"]
    assert row["cache"] == "shadow" and row["cache_entry_id"] == entry and row["cache_similarity"] >= 0.9
    assert row["cost_nanos"] > 0 and row["saved_nanos"] == 0
    wait_until(lambda: rows(d, "SELECT count(*) AS n FROM cache_labels")[0]["n"] == 1, what="the shadow verdict")
    assert rows(d, "SELECT source, label FROM cache_labels") == [{"source": "shadow", "label": 0}]
    assert metric(d, "llmgw_cache_shadow_total", verdict="disagree") == 1
    assert [h["kind"] for h in json.loads(cli(d, "hits", "--shadow", "--json").stdout)] == ["shadow"]
    # shadow traffic is uncensored: ablate may recommend from it
    out = json.loads(cli(d, "ablate", "--from-log", "--format", "json", "--thresholds", "0.9").stdout)
    assert out["censored"] == 0 and out["refusal"] is None


def test_verify_sample_reasks_upstream_and_records_the_verdict(daemon_factory, upstream):
    d = semantic_daemon(daemon_factory, upstream, "verify_sample = 1.0\n")
    ask(d, d.key, PROMPT)
    assert ask(d, d.key, PROMPT).headers["x-llmgw-cache"] == "hit-exact"  # exact hits are never re-asked
    before = calls(upstream)
    r = ask(d, d.key, PARA)
    assert r.headers["x-llmgw-cache"] == "hit-semantic"
    wait_until(lambda: rows(d, "SELECT count(*) AS n FROM cache_labels")[0]["n"] == 1, what="the verification")
    assert calls(upstream) == before + 1
    verify = [row for row in d.ledger() if row["cache"] == "verify"]
    assert len(verify) == 1 and verify[0]["cost_nanos"] > 0 and verify[0]["cache_entry_id"] is not None
    assert rows(d, "SELECT source, label, asked_prompt FROM cache_labels") == \
        [{"source": "verify", "label": 0, "asked_prompt": PARA}]
    assert metric(d, "llmgw_cache_verify_total", outcome="disagree") == 1


def test_thresholds_per_key_namespace_and_model(daemon_factory, upstream):
    d = daemon_factory(upstream_config(upstream, '[cache]\nmode = "semantic"\nthreshold = 0.999\n'
                                                 '[cache.namespace_thresholds]\nrelaxed = 0.9\n'), UPSTREAM_ENV)
    ask(d, d.key, PROMPT)
    ask(d, d.key, PROMPT, {"x-llmgw-cache-namespace": "relaxed"})
    assert ask(d, d.key, PARA).headers["x-llmgw-cache"] == "miss"  # the config's 0.999
    assert ask(d, d.key, PARA, {"x-llmgw-cache-namespace": "relaxed"}).headers["x-llmgw-cache"] == "hit-semantic"
    r = subprocess.run([sys.executable, "-m", "llmgw", "keys", "create", "--name", "loose", "--cache-threshold", "0.9",
                        "--home", str(d.home)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    loose = r.stdout.strip()
    d.synced()
    ask(d, loose, PROMPT)
    assert ask(d, loose, PARA).headers["x-llmgw-cache"] == "hit-semantic"  # the key's 0.9
    assert ask(d, loose, PARA.replace("this product", "the product"),
               {"x-llmgw-cache-threshold": "0.9999"}).headers["x-llmgw-cache"] == "miss"  # the header wins
    bad = subprocess.run([sys.executable, "-m", "llmgw", "keys", "create", "--cache-threshold", "1.5",
                          "--home", str(d.home)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cache-threshold" in bad.stderr


def test_model_thresholds_and_bad_config(tmp_path):
    from llmgw import config as cfgmod
    from llmgw.errors import ConfigError

    f = tmp_path / "c.toml"
    f.write_text('[cache]\nthreshold = 0.95\n[cache.model_thresholds]\n"openai/gpt-4o" = 0.9\n')
    c = cfgmod.load(f, environ={}).cache
    assert c.threshold_for("", "openai/gpt-4o") == 0.9 and c.threshold_for("", "x") == 0.95
    for bad, msg in (('[cache]\ngate_classes = ["negation", "nope"]\n', "unknown gate class"),
                     ('[cache]\nverify_sample = 2\n', "verify_sample"),
                     ('[cache.namespace_thresholds]\nx = 0\n', "namespace_thresholds.x")):
        f.write_text(bad)
        with pytest.raises(ConfigError, match=msg):
            cfgmod.load(f, environ={})


def test_the_gate_at_default_settings(daemon_factory, upstream):
    d = daemon_factory(upstream_config(upstream, '[cache]\nmode = "semantic"\n'), UPSTREAM_ENV)
    base = "Write a product caption for the linen shirt, made of soft washed linen in sand beige."
    ask(d, d.key, base)
    for flip in (base + " Answer in French.", base.replace("Write a product caption", "Write alt text"),
                 base.replace("Write a product caption", "Write an Instagram caption"),
                 base.replace("soft washed", "not washed")):
        assert ask(d, d.key, flip).headers["x-llmgw-cache"] == "miss", flip
    assert ask(d, d.key, "Please write a product caption for the linen shirt, made of soft washed linen in sand "
                         "beige.").headers["x-llmgw-cache"] == "hit-semantic"
    assert metric(d, "llmgw_cache_gate_blocked_total") >= 1
    assert metric(d, "llmgw_cache_hit_similarity_count") == 1


def test_stats_window_usd_iso_and_top_namespaces(daemon_factory, upstream):
    d = semantic_daemon(daemon_factory, upstream)
    for ns in ("a", "b", "b"):
        ask(d, d.key, PROMPT + " " + ns * 3, {"x-llmgw-cache-namespace": ns})
    ask(d, d.key, PROMPT)
    ask(d, d.key, PROMPT)  # exact hit
    ask(d, d.key, PARA)  # semantic hit
    data = json.loads(cli(d, "stats", "--json", "--since", "1d", "--top", "1").stdout)
    w = data["window"]
    assert w["lookups"] == 6 and w["by_result"]["hit-exact"] == 2 and w["by_result"]["hit-semantic"] == 1
    assert w["hit_rate"] == {"exact": 2 / 6, "semantic": 1 / 6}
    assert w["saved_usd"] == w["saved_usd"].strip() and float(w["saved_usd"]) > 0
    assert data["oldest"].endswith("Z") and data["namespaces"]["count"] == 3
    assert [n["namespace"] for n in data["namespaces"]["top"]] == [""]  # one entry each: ties by name
    text = cli(d, "stats", "--top", "2").stdout
    assert "semantic hits 16.7%" in text and "namespaces: 3 (top 2 by entries)" in text and "$" in text
    bad = cli(d, "stats", "--since", "yesterday", ok=False)
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_inspect_uses_the_running_configuration(daemon_factory, upstream):
    d = semantic_daemon(daemon_factory, upstream)
    base = "Write a product caption for the linen shirt, made of soft washed linen in sand beige."
    ask(d, d.key, base)
    rows_ = json.loads(cli(d, "inspect", base + " In French.", "--json", "--config", str(d.home / "llmgw.toml")).stdout)
    assert rows_[0]["facts_match"] and rows_[0]["gate"] == "languages" and rows_[0]["would_hit"] is False
    assert "gate: languages differs" in cli(d, "inspect", base + " In French.").stdout
    (d.home / "off.toml").write_text('[cache]\nmode = "semantic"\ngate = false\nthreshold = 0.9\n')
    off = json.loads(cli(d, "inspect", base + " In French.", "--json", "--config", str(d.home / "off.toml")).stdout)
    assert off[0]["gate"] is None and off[0]["would_hit"] is True  # what that configuration would serve
