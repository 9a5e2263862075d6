"""The response cache through the real daemon, with the real bundled embedding model."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from conftest import UPSTREAM_ENV, upstream_config
from llmgw import paths
from llmgw.governance import hierarchy

CHAT = "/v1/chat/completions"
BROKEN = "Describe a blue ceramic teapot for a catalogue. sku: 555; brand: Acme"
PROMPT = ("Write a short product caption. brand: Nike; sku: 10482; colour: red; "
          "category: running shoes; tone: upbeat")


def ask(d, key, text, headers=None, model="openai/gpt-4o-mini", **extra):
    return httpx.post(d.openai_base + "/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})},
                      json={"model": model, "messages": [{"role": "user", "content": text}], **extra})


def calls(upstream):
    return sum(1 for r in upstream.requests if r["path"] == CHAT)


@pytest.fixture
def semantic(daemon_factory, upstream):
    return daemon_factory(upstream_config(upstream, '[cache]\nmode = "semantic"\nthreshold = 0.9\n'), UPSTREAM_ENV)


def test_cache_is_off_by_default(gw, upstream):
    before = calls(upstream)
    ask(gw, gw.key, PROMPT)
    r2 = ask(gw, gw.key, PROMPT)
    assert calls(upstream) - before == 2
    assert "x-llmgw-cache" not in r2.headers
    assert gw.ledger()[-1]["cache"] is None


def test_exact_hit_costs_nothing_and_records_savings(semantic, upstream):
    d = semantic
    before = calls(upstream)
    first = ask(d, d.key, PROMPT)
    second = ask(d, d.key, PROMPT)
    assert first.headers["x-llmgw-cache"] == "miss" and second.headers["x-llmgw-cache"] == "hit-exact"
    assert second.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert calls(upstream) - before == 1
    miss, hit = d.ledger()[-2:]
    assert miss["cache"] == "miss" and miss["cost_nanos"] > 0
    assert hit["cache"] == "hit-exact" and hit["cost_nanos"] == 0 and hit["saved_nanos"] == miss["cost_nanos"]
    assert hit["provider"] is None and hit["attempts"] == 0
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "llmgw", "report", "--format", "json", "--home", str(d.home)],
                       capture_output=True, text=True, timeout=60)
    total = json.loads(r.stdout)["total"]
    assert total["cache_hits"] == 1 and total["saved_nanos"] == miss["cost_nanos"]  # report shows the savings


def test_semantic_hit_on_a_paraphrase_but_never_on_a_field_flip(semantic, upstream):
    d = semantic
    ask(d, d.key, PROMPT)
    before = calls(upstream)
    para = ask(d, d.key, PROMPT.replace("Write a short product caption.", "Please write a short caption for this product."))
    assert para.headers["x-llmgw-cache"] == "hit-semantic"
    assert 0.9 <= float(para.headers["x-llmgw-cache-similarity"]) < 1.0
    assert d.ledger()[-1]["cache_similarity"] >= 0.9
    flip = ask(d, d.key, PROMPT.replace("brand: Nike", "brand: null"))
    sku = ask(d, d.key, PROMPT.replace("10482", "10483"))
    assert flip.headers["x-llmgw-cache"] == "miss" and sku.headers["x-llmgw-cache"] == "miss"
    assert calls(upstream) - before == 2


def test_namespaces_customers_and_cache_control(semantic, upstream):
    d = semantic
    conn = d.db()
    with conn:
        hierarchy.create_customer(conn, "other")
    conn.close()
    other = d.mint(name="other", customer_id="other")
    ask(d, d.key, PROMPT, {"x-llmgw-cache-namespace": "sku-10482"})
    assert ask(d, d.key, PROMPT, {"x-llmgw-cache-namespace": "sku-10482"}).headers["x-llmgw-cache"] == "hit-exact"
    assert ask(d, d.key, PROMPT, {"x-llmgw-cache-namespace": "sku-99"}).headers["x-llmgw-cache"] == "miss"
    assert ask(d, other, PROMPT, {"x-llmgw-cache-namespace": "sku-10482"}).headers["x-llmgw-cache"] == "miss"
    fresh = ask(d, d.key, PROMPT, {"x-llmgw-cache-namespace": "sku-10482", "cache-control": "no-cache"})
    assert fresh.headers["x-llmgw-cache"] == "bypass"
    ask(d, d.key, "never stored " + PROMPT, {"cache-control": "no-store"})
    assert ask(d, d.key, "never stored " + PROMPT).headers["x-llmgw-cache"] == "miss"


def test_per_key_cache_mode(gw, upstream):
    key = gw.mint(name="cached", cache_mode="exact")
    ask(gw, key, PROMPT)
    assert ask(gw, key, PROMPT).headers["x-llmgw-cache"] == "hit-exact"
    assert "x-llmgw-cache" not in ask(gw, gw.key, PROMPT).headers  # the config default is off


def test_streaming_replay_with_the_openai_sdk(semantic, upstream):
    d = semantic
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        first = c.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
        before = calls(upstream)
        chunks = list(c.chat.completions.create(model="openai/gpt-4o-mini", stream=True,
                                                stream_options={"include_usage": True},
                                                messages=[{"role": "user", "content": PROMPT}]))
    assert calls(upstream) == before
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == first.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == first.usage.completion_tokens
    assert d.ledger()[-1]["cache"] == "hit-exact" and d.ledger()[-1]["stream"] == 1


def test_a_streamed_answer_is_stored_once_complete(semantic, upstream):
    d = semantic
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="openai/gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "stream " + PROMPT}])
            if ch.choices)
        before = calls(upstream)
        again = c.chat.completions.create(model="openai/gpt-4o-mini",
                                          messages=[{"role": "user", "content": "stream " + PROMPT}])
    assert calls(upstream) == before and again.choices[0].message.content == streamed
    upstream.add_fault(path=CHAT, disconnect_after=2)
    with openai.OpenAI(base_url=d.openai_base, api_key=d.key, max_retries=0) as c:
        with pytest.raises(openai.APIError):
            list(c.chat.completions.create(model="openai/gpt-4o-mini", stream=True,
                                           messages=[{"role": "user", "content": BROKEN}]))
    assert ask(d, d.key, BROKEN).headers["x-llmgw-cache"] == "miss"  # a broken stream is never stored


def test_errors_are_never_stored(semantic, upstream):
    d = semantic
    upstream.add_fault(path=CHAT, status=400)
    assert ask(d, d.key, "bad " + PROMPT).status_code == 400
    assert ask(d, d.key, "bad " + PROMPT).headers["x-llmgw-cache"] == "miss"


def test_ttl_expiry_with_an_injected_clock(semantic, upstream):
    d = semantic
    d.set_clock(1_800_000_000_000)
    ask(d, d.key, PROMPT, {"x-llmgw-cache-ttl": "60"})
    assert ask(d, d.key, PROMPT).headers["x-llmgw-cache"] == "hit-exact"
    d.set_clock(1_800_000_061_000)
    assert ask(d, d.key, PROMPT).headers["x-llmgw-cache"] == "miss"


def test_lru_eviction(daemon_factory, upstream):
    d = daemon_factory(upstream_config(upstream, '[cache]\nmode = "exact"\nmax_entries = 2\n'), UPSTREAM_ENV)
    for i in range(3):
        ask(d, d.key, f"prompt {i}")
    assert ask(d, d.key, "prompt 2").headers["x-llmgw-cache"] == "hit-exact"
    assert ask(d, d.key, "prompt 0").headers["x-llmgw-cache"] == "miss"  # the least recently used went


def test_restart_persistence_and_index_rebuild(daemon_factory, upstream, tmp_path):
    home = tmp_path / "cachehome"
    cfg = upstream_config(upstream, '[cache]\nmode = "semantic"\nthreshold = 0.9\n')
    d = daemon_factory(cfg, UPSTREAM_ENV, home=home)
    ask(d, d.key, PROMPT)
    d.stop()
    index_file = paths.cache_index_path(home)
    assert index_file.exists()
    index_file.unlink()  # the index is rebuilt from SQLite
    d2 = daemon_factory(cfg, UPSTREAM_ENV, home=home)
    para = ask(d2, d2.key, PROMPT.replace("Write a short product caption.",
                                          "Please write a short caption for this product."))
    assert para.headers["x-llmgw-cache"] == "hit-semantic"
    assert index_file.exists()


def test_bad_cache_headers_are_typed_errors(semantic):
    r = ask(semantic, semantic.key, PROMPT, {"x-llmgw-cache-threshold": "high"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-llmgw-cache-threshold"


def test_cache_cli_stats_inspect_clear(semantic):
    import json
    import subprocess
    import sys

    d = semantic
    ask(d, d.key, PROMPT, {"x-llmgw-cache-namespace": "sku-10482"})
    ask(d, d.key, "Describe a blue ceramic teapot. sku: 555")

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "llmgw", "cache", *args, "--home", str(d.home)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    stats = json.loads(cli("stats", "--json"))
    assert stats["entries"] == 2
    near = json.loads(cli("inspect", PROMPT.replace("brand: Nike", "brand: null"), "--json"))
    top = near[0]
    assert top["namespace"] == "sku-10482" and top["similarity"] > 0.9
    assert top["facts_match"] is False  # close, but the field guard would never serve it
    assert cli("clear", "--namespace", "sku-10482").strip() == "1"
    assert json.loads(cli("stats", "--json"))["entries"] == 1
    assert ask(d, d.key, PROMPT, {"x-llmgw-cache-namespace": "sku-10482"}).headers["x-llmgw-cache"] == "miss"


# ---- a failing cache never fails a request ------------------------------------------------------


def cache_errors(d) -> dict[str, float]:
    """``llmgw_cache_errors_total`` by op, from the daemon's real /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(d.url + "/metrics", timeout=10).text
    return {s.labels["op"]: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == "llmgw_cache_errors_total"}


def cache_error_logs(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llmgw.gateway" and "response cache" in r.getMessage()]


def test_a_model_that_cannot_load_makes_misses_not_errors(daemon_factory, upstream, tmp_path, caplog):
    """[cache] model points at a corrupt model2vec directory: the daemon starts anyway and every request
    goes upstream (200, a miss, nothing stored); one log line, every failure counted."""
    import shutil
    from pathlib import Path

    import llmgw
    from llmgw.cache.embedder import BUNDLED_MODEL

    model = tmp_path / "corrupt-model"
    shutil.copytree(Path(llmgw.__file__).parent / "data" / "embeddings" / BUNDLED_MODEL, model)
    (model / "model.safetensors").write_bytes(b"\x00\xff not safetensors " * 300)
    d = daemon_factory(upstream_config(upstream, f'[cache]\nmode = "semantic"\nmodel = "{model}"\n'), UPSTREAM_ENV)
    before = calls(upstream)
    for _ in range(3):
        r = ask(d, d.key, PROMPT)
        assert r.status_code == 200, r.text
        assert r.headers["x-llmgw-cache"] == "miss" and r.json()["choices"][0]["message"]["content"]
    assert calls(upstream) - before == 3  # nothing was served from (or stored in) the broken cache
    assert cache_errors(d) == {"warm": 1, "lookup": 3, "store": 3, "record": 0}
    logs = cache_error_logs(caplog)
    assert len(logs) == 1 and "cache.model: cannot load" in logs[0] and str(model) in logs[0], logs
    assert [r["status"] for r in d.ledger()] == [200, 200, 200]
    assert [r["cache"] for r in d.ledger()] == ["miss", "miss", "miss"]


def test_a_broken_cache_table_makes_misses_not_errors(daemon_factory, upstream, caplog):
    """The cache's SQLite table goes away under a running daemon (exact mode): lookups and stores
    fail for real, requests still get their upstream answer; one log line for the one error."""
    d = daemon_factory(upstream_config(upstream, '[cache]\nmode = "exact"\n'), UPSTREAM_ENV)
    assert ask(d, d.key, PROMPT).headers["x-llmgw-cache"] == "miss"
    assert ask(d, d.key, PROMPT).headers["x-llmgw-cache"] == "hit-exact"
    conn = d.db()
    try:
        conn.execute("DROP TABLE cache_entries")
        conn.commit()
    finally:
        conn.close()
    before = calls(upstream)
    for _ in range(3):
        r = ask(d, d.key, PROMPT)
        assert r.status_code == 200 and r.headers["x-llmgw-cache"] == "miss", r.text
    assert calls(upstream) - before == 3
    # the last store fails with its commit, up to sidecar.COMMIT_EVERY after its answer went out
    deadline = time.monotonic() + 10
    while (errors := cache_errors(d))["store"] < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    # the hit before the drop counts its touch a few ms later: it may fail too (op "record")
    assert {k: v for k, v in errors.items() if k != "record"} == {"warm": 0, "lookup": 3, "store": 3}
    assert errors["record"] in (0, 1)
    logs = cache_error_logs(caplog)
    assert len(logs) == 1 and "no such table: cache_entries" in logs[0], logs


def cache_process(d) -> int:
    """The pid of the daemon's cache process (a child of this test process, for its home)."""
    import os
    from pathlib import Path

    mine = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and b"llmgw.cache.sidecar" in b" ".join(argv) and \
                str(d.home).encode() in argv:
            mine.append(int(pid))
    assert len(mine) == 1, mine
    return mine[0]


def test_a_killed_cache_process_makes_misses_and_a_new_one_serves_the_stored_entries(semantic, upstream):
    """The cache runs in its own process: SIGKILL it under a running daemon. Requests get their
    upstream answers as misses (never an error), a new process starts after the restart delay,
    and the entries stored before the kill are served again."""
    import os
    import signal
    import time

    d = semantic
    assert ask(d, d.key, PROMPT).headers["x-llmgw-cache"] == "miss"
    assert ask(d, d.key, PROMPT).headers["x-llmgw-cache"] == "hit-exact"  # the store was not awaited, yet found
    first = cache_process(d)
    os.kill(first, signal.SIGKILL)
    before = calls(upstream)
    r = ask(d, d.key, PROMPT)
    assert r.status_code == 200 and r.headers["x-llmgw-cache"] == "miss", r.text
    deadline = time.monotonic() + 60
    while True:  # until the restart delay is over and the new process has loaded the model
        r = ask(d, d.key, PROMPT)
        assert r.status_code == 200, r.text
        if r.headers["x-llmgw-cache"] == "hit-exact":
            break
        assert r.headers["x-llmgw-cache"] == "miss"
        assert time.monotonic() < deadline, "no new cache process served the stored entry"
        time.sleep(0.05)
    assert cache_process(d) != first
    misses = calls(upstream) - before
    assert misses >= 1 and sum(1 for row in d.ledger() if row["cache"] == "miss") == 1 + misses
    assert cache_errors(d)["lookup"] >= 1
    text = httpx.get(d.url + "/metrics", timeout=10).text
    assert "llmgw_cache_process_restarts 1.0" in text


def test_a_streamed_answer_handed_over_as_events_becomes_the_same_entry():
    """``StreamedText``: the cache process builds the entry from the raw SSE events; it is the
    answer the daemon would have built from the parsed text (first choice only, bad events skipped)."""
    import orjson

    from llmgw.cache.replay import StreamedText, completion_from_stream
    from llmgw.providers import sse
    from llmgw.providers.base import StreamState
    from llmgw.usage import Usage

    state = StreamState()
    for piece in ("Light", "weight ", "linen — ", "cool."):
        state.openai_sse.append(sse.openai_event({"choices": [{"index": 0, "delta": {"content": piece}},
                                                              {"index": 1, "delta": {"content": "other"}}]}))
    state.openai_sse.append(b"data: {not json\n\n")
    state.openai_sse.append(sse.openai_event({"choices": [], "usage": {"prompt_tokens": 9}}))
    usage = Usage(prompt_tokens=9, completion_tokens=4, cached_tokens=2, cache_write_tokens=1)
    usage_json = orjson.dumps(usage.to_openai()).decode()
    for inbound in ("openai", "anthropic"):
        got = StreamedText(inbound, "m", b"".join(state.openai_sse), "stop").completion(usage_json)
        want = completion_from_stream(inbound, "m", state.text, "stop", usage)
        assert got is not None and want is not None
        g, w = orjson.loads(got), orjson.loads(want)
        g.pop("created", None), w.pop("created", None)
        assert g == w
    assert state.text == "Lightweight linen — cool."
    assert StreamedText("openai", "m", b"".join(state.openai_sse), "tool_calls").completion(usage_json) is None
