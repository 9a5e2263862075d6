"""/metrics through the real daemon after real traffic (success, stream, retry, every rejection
reason), checked with prometheus_client's parser and, when a promtool binary is available
(``PROMTOOL`` or PATH; ``scripts/get_promtool.sh`` installs one), with ``promtool check metrics``.
Also: the metrics token, the cache placeholders, the ledger commit histogram, and the deployment
files under contrib/ plus the Dockerfile, checked against the same real scrape where they name
metrics."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import UPSTREAM_ENV, Daemon, start_daemon, upstream_config
from fake_upstream import FakeUpstream
from llmgw import config as cfgmod
from llmgw.errors import ConfigError
from llmgw.governance import hierarchy
from llmgw.governance.budgets import upsert_budget
from llmgw.metrics import Metrics
from llmgw.server.app import create_app
from llmgw.store.writer import CommitTimes

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "contrib" / "grafana" / "llmgw-dashboard.json"
CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "count me"}]
MODEL = "openai/gpt-4o-mini"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample ``name`` whose labels include ``labels`` (KeyError if none, error if several)."""
    want = set(labels.items())
    hits = [v for (n, lv), v in samples.items() if n == name and want <= lv]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0]


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lv), v in samples.items() if n == name and want <= lv)


def promtool() -> str | None:
    """The promtool binary: ``PROMTOOL`` (which must then work: CI sets it), else PATH."""
    env = os.environ.get("PROMTOOL")
    if env:
        assert os.access(env, os.X_OK), f"PROMTOOL={env} is not an executable file"
        return env
    return shutil.which("promtool")


def need_promtool() -> str:
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not found: set PROMTOOL or put it on PATH (scripts/get_promtool.sh installs it)")
    return tool


def _post(d: Daemon, key: str, body: Any, content: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if content is not None:
        return httpx.post(d.openai_base + "/chat/completions", content=content,
                          headers={**headers, "content-type": "application/json"})
    return httpx.post(d.openai_base + "/chat/completions", json=body, headers=headers)


# ---- one daemon, one burst of traffic, one scrape, several tests --------------------------------


@pytest.fixture(scope="module")
def scraped(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    fake.reset()
    d = start_daemon(tmp_path_factory.mktemp("metrics"), upstream_config(fake), UPSTREAM_ENV)
    try:
        conn = d.db()
        try:
            with conn:
                hierarchy.create_customer(conn, "acme")
                hierarchy.create_customer(conn, "broke")
                upsert_budget(conn, "customer", "acme", "month", 100 * 10**9)
                upsert_budget(conn, "customer", "broke", "month", 0)
        finally:
            conn.close()
        acme = d.mint(name="acme-app", customer_id="acme")
        broke = d.mint(name="broke-app", customer_id="broke")
        limited = d.mint(name="limited", models=["demo/*"])
        slow = d.mint(name="slow", rpm=1)
        d.synced()  # the budgets above are live
        base = parse(httpx.get(d.url + "/metrics").text)

        with openai.OpenAI(base_url=d.openai_base, api_key=acme, max_retries=0) as c:
            c.chat.completions.create(model=MODEL, messages=MSG)  # success
            chunks = list(c.chat.completions.create(model=MODEL, messages=MSG, stream=True))  # a stream
            assert chunks
            fake.add_fault(path=CHAT, status=500, times=1)
            c.chat.completions.create(model=MODEL, messages=MSG)  # one retry, then success
        statuses = [
            _post(d, acme, None, content=b"{not json").status_code,  # bad request
            _post(d, acme, {"model": "nowhere/model", "messages": MSG}).status_code,  # unknown model
            _post(d, "sk-not-a-key", {"model": MODEL, "messages": MSG}).status_code,  # auth
            _post(d, limited, {"model": MODEL, "messages": MSG}).status_code,  # model_not_allowed
            _post(d, broke, {"model": MODEL, "messages": MSG}).status_code,  # budget_exceeded
            _post(d, slow, {"model": "demo/echo", "messages": MSG}).status_code,  # allowed (1 rpm)
            _post(d, slow, {"model": "demo/echo", "messages": MSG}).status_code,  # rate_limit_exceeded
        ]
        assert statuses == [400, 404, 401, 403, 429, 200, 429]
        resp = httpx.get(d.url + "/metrics")
        yield {"text": resp.text, "content_type": resp.headers["content-type"], "base": base,
               "ledger": d.ledger(), "url": d.url}
    finally:
        d.stop()
        fake.reset()


def test_scrape_counts_the_traffic(scraped: dict[str, Any]) -> None:
    assert scraped["content_type"].startswith("text/plain")
    s, base = parse(scraped["text"]), scraped["base"]

    def delta(name: str, **labels: str) -> float:
        return total(s, name, **labels) - total(base, name, **labels)

    ok = dict(route="chat", provider="openai", model=MODEL, status_class="2xx", outcome="ok", cache="off")
    assert value(s, "llmgw_requests_total", **ok) == 3  # success, stream, retried
    assert delta("llmgw_requests_total", status_class="4xx") == 6
    assert delta("llmgw_requests_total", status_class="2xx", provider="demo") == 1
    assert {lv for (n, lv) in s if n == "llmgw_requests_total"} >= {frozenset(ok.items())}
    assert all(dict(lv)["cache"] == "off" for (n, lv) in s if n == "llmgw_requests_total")

    assert delta("llmgw_rejections_total", reason="invalid_request") == 2  # bad JSON, unknown model
    for reason in ("auth", "model_not_allowed", "budget_exceeded", "rate_limit_exceeded"):
        assert delta("llmgw_rejections_total", reason=reason) == 1, reason
    assert {dict(lv)["reason"] for (n, lv) in s if n == "llmgw_rejections_total"} == {
        "budget_exceeded", "rate_limit_exceeded", "model_not_allowed", "auth", "invalid_request"}

    assert value(s, "llmgw_upstream_attempts_total", provider="openai") == 4
    assert value(s, "llmgw_upstream_retries_total", provider="openai") == 1
    assert value(s, "llmgw_upstream_retries_total", provider="demo") == 0
    assert value(s, "llmgw_upstream_duration_seconds_count", provider="openai") == 3
    up = value(s, "llmgw_upstream_duration_seconds_sum", provider="openai")
    assert 0 < up < value(s, "llmgw_request_duration_seconds_sum", route="chat", provider="openai")
    assert value(s, "llmgw_upstream_duration_seconds_bucket", provider="openai", le="+Inf") == 3
    assert value(s, "llmgw_stream_first_byte_seconds_count", provider="openai") == 1
    assert value(s, "llmgw_requests_in_flight") == 0

    rows = scraped["ledger"]
    acme_cost = sum(r["cost_nanos"] for r in rows if r["customer_id"] == "acme") / 1e9
    assert acme_cost > 0
    assert total(s, "llmgw_cost_usd_total", customer="acme") == pytest.approx(acme_cost, abs=1e-12)
    assert total(s, "llmgw_tokens_total", customer="acme", kind="completion") == sum(
        r["completion_tokens"] for r in rows if r["customer_id"] == "acme")
    util = value(s, "llmgw_budget_utilisation_ratio", scope="customer", scope_id="acme")
    assert util == pytest.approx(acme_cost / 100, rel=1e-9)
    assert value(s, "llmgw_budget_utilisation_ratio", scope="customer", scope_id="broke") == 0

    # cache placeholders: present, zero, until the cache fills them
    assert value(s, "llmgw_cache_hits_total", type="exact") == 0
    assert value(s, "llmgw_cache_hits_total", type="semantic") == 0
    assert value(s, "llmgw_cache_misses_total") == 0
    assert value(s, "llmgw_cache_lookup_seconds_count") == 0
    assert value(s, "llmgw_cache_entries") == 0
    assert value(s, "llmgw_cache_saved_usd_total") == 0
    for op in ("lookup", "store", "warm"):
        assert value(s, "llmgw_cache_errors_total", op=op) == 0

    commits = value(s, "llmgw_ledger_commit_seconds_count")
    assert 1 <= commits <= len(rows)
    assert value(s, "llmgw_ledger_commit_seconds_bucket", le="+Inf") == commits
    assert value(s, "llmgw_ledger_commit_seconds_sum") > 0
    assert value(s, "llmgw_ledger_queue_depth") >= 0


def test_no_key_or_team_labels_and_no_customer_on_histograms(scraped: dict[str, Any]) -> None:
    for fam in text_string_to_metric_families(scraped["text"]):
        labels = {k for smp in fam.samples for k in smp.labels}
        assert not labels & {"key", "key_id", "team", "team_id"}, fam.name
        if fam.type == "histogram":
            assert labels <= {"route", "provider", "le"}, fam.name


def test_scrape_is_clean_under_promtool(scraped: dict[str, Any], tmp_path: Path) -> None:
    tool = need_promtool()
    r = subprocess.run([tool, "check", "metrics"], input=scraped["text"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, f"promtool check metrics exit {r.returncode}:\n{r.stdout}{r.stderr}"


# ---- the Grafana dashboard: importable, and only metrics a real scrape has ------------------------


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep theirs inside
    return out


def _exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dash) for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        q = var.get("query")
        exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dash = _dashboard()
    assert 36 <= dash["schemaVersion"] <= 41 and dash["uid"] and dash["title"] and dash["id"] is None
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert dash["__inputs"][0]["type"] == "datasource" and dash["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids))
    for p in _panels(dash):
        assert p["type"] in ("row", "timeseries", "stat", "bargauge"), p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}" and t["refId"] and t["expr"].strip()
    titles = " | ".join(p["title"].lower() for p in _panels(dash))
    for topic in ("spend by customer", "budget utilisation", "cache hit rate", "cache savings",
                  "latency percentiles", "errors by type"):
        assert topic in titles


def test_dashboard_queries_use_only_scraped_metrics(scraped: dict[str, Any]) -> None:
    names = {name for name, _ in parse(scraped["text"])}
    used: set[str] = set()
    for expr in _exprs(_dashboard()):
        found = set(re.findall(r"\bllmgw_[a-zA-Z0-9_]+", expr))
        assert found, expr
        assert found <= names, f"{sorted(found - names)} not in a real scrape (expr: {expr})"
        used |= found
    for needed in ("llmgw_cost_usd_total", "llmgw_budget_utilisation_ratio", "llmgw_cache_hits_total",
                   "llmgw_cache_misses_total", "llmgw_cache_saved_usd_total",
                   "llmgw_request_duration_seconds_bucket", "llmgw_rejections_total", "llmgw_requests_total"):
        assert needed in used, needed


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every expression parses (promtool check rules, with Grafana's variables filled in)."""
    tool = need_promtool()
    fill = {"$__rate_interval": "5m", "$__interval": "1m", "$customer": ".*"}
    rules = []
    for i, expr in enumerate(_exprs(_dashboard())):
        if expr.startswith("label_values("):
            expr = expr[len("label_values("):-1].split(",")[0]  # Grafana's function, not PromQL
        for k, v in fill.items():
            expr = expr.replace(k, v)
        assert "$" not in expr, expr
        rules.append({"record": f"llmgw:dashboard_expr_{i}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    r = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- the metrics token ------------------------------------------------------------------------------


def test_metrics_token(daemon_factory: Any, upstream: FakeUpstream) -> None:
    d = daemon_factory(upstream_config(upstream, '[metrics]\ntoken_env = "TEST_METRICS_TOKEN"\n'),
                       {**UPSTREAM_ENV, "TEST_METRICS_TOKEN": "scrape-secret"})
    for headers, code in (({}, "missing_metrics_token"), ({"Authorization": "Bearer nope"}, "invalid_metrics_token"),
                          ({"Authorization": "Basic c2NyYXBlLXNlY3JldA=="}, "missing_metrics_token")):
        r = httpx.get(d.url + "/metrics", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == code
        assert r.headers["www-authenticate"].startswith("Bearer") and r.headers["x-request-id"]
        assert "scrape-secret" not in r.text
    r = httpx.get(d.url + "/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert r.status_code == 200 and "llmgw_requests_in_flight 0.0" in r.text
    assert httpx.get(d.url + "/healthz").status_code == 200  # only /metrics is behind the token


def test_metrics_open_without_token(gw: Daemon) -> None:
    assert httpx.get(gw.url + "/metrics").status_code == 200


@pytest.mark.parametrize(("text", "env", "message"), [
    ('[metrics]\ntokn = "X"\n', {}, "llmgw.toml: metrics.tokn: unknown key"),
    ("[metrics]\ntoken_env = 5\n", {}, "metrics.token_env: expected the name of an environment variable"),
    ('[metrics]\ntoken_env = "not a name"\n', {}, "metrics.token_env: not an environment variable name"),
    ('[metrics]\ntoken_env = "UNSET_METRICS_TOKEN"\n', {},
     'metrics.token_env: environment variable "UNSET_METRICS_TOKEN" is not set'),
    ('[metrics]\ntoken_env = "EMPTY"\n', {"EMPTY": "  "}, 'metrics.token_env: environment variable "EMPTY" is not set'),
    ('metrics = "yes"\n', {}, "llmgw.toml: metrics: expected a table"),
])
def test_metrics_token_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                     env: dict[str, str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    Path("llmgw.toml").write_text(text)
    with pytest.raises(ConfigError) as e:
        cfgmod.load(Path("llmgw.toml"), environ=env)
    assert message in str(e.value)


def test_metrics_token_config_values(tmp_path: Path) -> None:
    path = tmp_path / "llmgw.toml"
    assert cfgmod.load(None, environ={}).token("metrics", {"T": "x"}) is None
    path.write_text("[metrics]\n")
    assert cfgmod.load(path, environ={}).token("metrics", {}) is None
    path.write_text('[metrics]\ntoken_env = "T"\n')
    assert cfgmod.load(path, environ={"T": " tok "}).token("metrics", {"T": " tok "}) == "tok"


def test_bad_metrics_config_stops_the_daemon_before_it_listens(tmp_path: Path) -> None:
    path = tmp_path / "llmgw.toml"
    path.write_text('[metrics]\ntoken_env = "NOT_SET_ANYWHERE"\n')
    with pytest.raises(ConfigError, match=r"llmgw.toml: metrics.token_env: environment variable"):
        cfgmod.load(path, environ={})  # serve never gets as far as the app
    config = cfgmod.load(path, environ={"NOT_SET_ANYWHERE": "t"})
    with pytest.raises(ConfigError, match=r"llmgw.toml: metrics.token_env: environment variable"):
        create_app(config, tmp_path, environ={})  # an app whose environment lacks it refuses too


# ---- units: the cache hook, the writer's commit times ------------------------------------------------


def test_observe_cache_fills_the_placeholders() -> None:
    m = Metrics()
    m.observe_cache("exact", 0.0002, saved_nanos=1_500_000)
    m.observe_cache("semantic", 0.003, saved_nanos=500_000)
    m.observe_cache(None, 0.004)
    m.cache_entries = 42
    s = parse(m.render().decode())
    assert value(s, "llmgw_cache_hits_total", type="exact") == 1
    assert value(s, "llmgw_cache_hits_total", type="semantic") == 1
    assert value(s, "llmgw_cache_misses_total") == 1
    assert value(s, "llmgw_cache_lookup_seconds_count") == 3
    assert value(s, "llmgw_cache_lookup_seconds_bucket", le="0.00025") == 1
    assert value(s, "llmgw_cache_lookup_seconds_bucket", le="0.005") == 3
    assert value(s, "llmgw_cache_entries") == 42
    assert value(s, "llmgw_cache_saved_usd_total") == pytest.approx(0.002)


def test_commit_times_are_consistent_under_a_concurrent_writer() -> None:
    times = CommitTimes()
    m = Metrics(histograms={"llmgw_ledger_commit_seconds": ("Commits.", times.snapshot)})
    n, stop = 20_000, threading.Event()

    def writer() -> None:
        for i in range(n):
            times.record((i % 7) * 0.0003)
        stop.set()

    t = threading.Thread(target=writer)
    t.start()
    while not stop.is_set():  # every scrape is internally consistent: +Inf bucket == count
        s = parse(m.render().decode())
        assert value(s, "llmgw_ledger_commit_seconds_bucket", le="+Inf") == value(
            s, "llmgw_ledger_commit_seconds_count")
    t.join()
    s = parse(m.render().decode())
    assert value(s, "llmgw_ledger_commit_seconds_count") == n
    assert value(s, "llmgw_ledger_commit_seconds_bucket", le="0.0001") == len(range(0, n, 7))


# ---- deployment files -----------------------------------------------------------------------------------


def test_prometheus_example_is_valid(tmp_path: Path) -> None:
    tool = need_promtool()
    text = (ROOT / "contrib" / "prometheus.yml").read_text()
    assert "/metrics" in text and "credentials_file" in text
    token = tmp_path / "token"
    token.write_text("scrape-secret\n")
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(text.replace("/etc/prometheus/llmgw_metrics_token", str(token)))
    r = subprocess.run([tool, "check", "config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _unit() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in (ROOT / "contrib" / "llmgw.service").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            k, _, v = line.partition("=")
            entries.setdefault(k, []).append(v)
    return entries


def test_systemd_unit() -> None:
    u = _unit()
    assert u["User"] == ["llmgw"] and u["Restart"] == ["on-failure"] and u["KillSignal"] == ["SIGTERM"]
    assert "LLMGW_HOME=/var/lib/llmgw" in u["Environment"]
    assert u["EnvironmentFile"] and u["NoNewPrivileges"] == ["yes"] and u["ProtectSystem"] == ["strict"]
    assert shlex.split(u["ExecStart"][0])[1:] == ["serve", "--host", "127.0.0.1", "--port", "8080"]
    stop = u["TimeoutStopSec"][0]
    assert stop.endswith("s") and float(stop[:-1]) > cfgmod.ServerConfig().drain_timeout


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed")
    exe = shutil.which("llmgw") or str(Path(sys.executable).with_name("llmgw"))
    assert os.access(exe, os.X_OK)
    unit = tmp_path / "llmgw.service"  # ExecStart must exist for verify: point it at this llmgw
    unit.write_text((ROOT / "contrib" / "llmgw.service").read_text().replace("/opt/llmgw/bin/llmgw", exe))
    r = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        if buf.strip():
            instr, _, args = buf.strip().partition(" ")
            out.append((instr.upper(), " ".join(args.split())))
        buf = ""
    assert not buf
    return out


def _exec_form(args: str) -> list[str]:
    parsed = json.loads(args)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
    return parsed


def test_dockerfile() -> None:
    ins = _dockerfile()
    by: dict[str, list[str]] = {}
    for k, v in ins:
        by.setdefault(k, []).append(v)
    assert ins[0] == ("FROM", "python:3.11-slim")
    env = " ".join(by["ENV"])
    assert "LLMGW_HOME=/var/lib/llmgw" in env and "LLMGW_CONFIG=/etc/llmgw/llmgw.toml" in env
    assert any("pip install ." in r for r in by["RUN"])
    user = by["USER"][-1].split(":")[0]
    assert user not in ("root", "0") and [k for k, _ in ins].index("USER") > max(
        i for i, (k, _) in enumerate(ins) if k == "RUN")
    assert "/var/lib/llmgw" in _exec_form(by["VOLUME"][0])
    assert by["EXPOSE"] == ["8080"] and by["STOPSIGNAL"] == ["SIGTERM"]
    assert _exec_form(by["ENTRYPOINT"][0]) + _exec_form(by["CMD"][0]) == [
        "llmgw", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert not any(re.search(r"(API_KEY|TOKEN)=", v) for v in by["ENV"])  # no secrets baked in
    # every COPY source exists and the allow-list .dockerignore lets it into the build context
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "*"
    for args in by["COPY"]:
        for src in args.split()[:-1]:
            assert (ROOT / src).exists(), src
            assert f"!{src.rstrip('/')}" in {i.rstrip("/") for i in ignore}, src
    assert "readme" in (ROOT / "pyproject.toml").read_text()  # why README.md is copied


def test_dockerfile_healthcheck_probes_healthz(gw: Daemon) -> None:
    """The HEALTHCHECK command itself, run against a real daemon (and a dead port)."""
    hc = next(v for k, v in _dockerfile() if k == "HEALTHCHECK")
    cmd = _exec_form(hc[hc.index("CMD ") + 4:])
    assert cmd[0] == "python" and "/healthz" in cmd[-1]
    port = gw.url.rsplit(":", 1)[1]
    live = [sys.executable, *cmd[1:-1], cmd[-1].replace("8080", port)]
    assert subprocess.run(live, capture_output=True, timeout=30).returncode == 0
    dead = [sys.executable, *cmd[1:-1], cmd[-1].replace("8080", "9")]
    assert subprocess.run(dead, capture_output=True, timeout=30).returncode != 0


def test_dockerfile_command_is_a_real_cli_invocation() -> None:
    r = subprocess.run([sys.executable, "-m", "llmgw", "serve", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--host" in r.stdout and "--port" in r.stdout
