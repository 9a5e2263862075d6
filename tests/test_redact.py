"""The secret registry (``llmgw.redact``): which configured values count as secrets and how they are
masked in text, bytes, log records and the metrics scrape. Through the daemon: tests/test_upstream_errors.py."""

from __future__ import annotations

import logging

import httpx

from llmgw import config as cfgmod
from llmgw import redact
from llmgw.metrics import Metrics


def test_masks_every_occurrence_longest_first_in_text_and_bytes():
    r = redact.Redactor()
    r.add(["sk-abcdefgh", "sk-abcdefgh-longer", None, "", "short"])  # "short": under MIN_LENGTH, ignored
    assert r.text("a sk-abcdefgh-longer b sk-abcdefgh c short") == "a [redacted] b [redacted] c short"
    assert r.bytes(b'{"m": "Bearer sk-abcdefgh"}') == b'{"m": "Bearer [redacted]"}'
    assert redact.Redactor().text("sk-abcdefgh") == "sk-abcdefgh"  # nothing registered: unchanged


def test_secrets_of_a_config(tmp_path):
    path = tmp_path / "llmgw.toml"
    path.write_text("""
[providers.one]
type = "openai"
base_url = "https://user:p%40ssw0rd-long@llm.example/v1"
api_key_env = "ONE_KEY"
headers = { "X-Custom-Auth" = "Bearer hdr-token-123456", "X-Org" = "org-visible-name" }

[webhooks]
url = "https://hooks.example/x"
secret_env = "HOOK_SECRET"

[admin]
token_env = "ADMIN_TOK"

[metrics]
token_env = "METRICS_TOK"
""")
    env = {"ONE_KEY": "sk-one-0123456789", "HOOK_SECRET": "whsec-0123456789", "ADMIN_TOK": "admin-0123456789",
           "METRICS_TOK": "metrics-0123456789"}
    found = set(redact.secrets_of(cfgmod.load(path, environ=env), env))
    assert {"sk-one-0123456789", "whsec-0123456789", "admin-0123456789", "metrics-0123456789",
            "Bearer hdr-token-123456", "hdr-token-123456", "p@ssw0rd-long"} <= found
    assert "org-visible-name" not in found  # a header whose name says nothing of a secret


def test_log_records_are_redacted_when_made(caplog):
    redact.SECRETS.add(["sk-logged-0123456789"])
    redact.install_logging()
    caplog.set_level(logging.INFO)
    logging.getLogger("llmgw.x").info("calling with key %s", "sk-logged-0123456789")
    try:
        raise ValueError("sk-logged-0123456789 was refused")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request")
    assert "sk-logged-0123456789" not in caplog.text
    assert "calling with key [redacted]" in caplog.text and "ValueError: [redacted] was refused" in caplog.text


def test_the_metrics_scrape_is_redacted():
    redact.SECRETS.add(["sk-metric-0123456789"])
    m = Metrics()
    m.unpriced[("openai", "sk-metric-0123456789")] += 1
    assert b"sk-metric-0123456789" not in m.render() and b"[redacted]" in m.render()


def test_daemon_registers_its_secrets_and_scrapes_are_clean(daemon_factory):
    d = daemon_factory("[metrics]\ntoken_env = \"MT\"\n", {"MT": "metrics-token-0123456789"})
    r = httpx.get(d.url + "/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"})
    assert r.status_code == 200
    assert "metrics-token-0123456789" in redact.SECRETS._secrets


def test_uncaught_tracebacks_are_redacted(tmp_path):
    import os
    import subprocess
    import sys

    code = """
import threading
from llmgw import redact
redact.SECRETS.add(["sk-uncaught-0123456789"])
redact.install_logging()
def boom():
    raise RuntimeError("thread saw sk-uncaught-0123456789")
t = threading.Thread(target=boom, name="worker")
t.start(); t.join()
raise RuntimeError("main saw sk-uncaught-0123456789")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.returncode == 1
    assert "sk-uncaught-0123456789" not in p.stderr
    assert "RuntimeError: thread saw [redacted]" in p.stderr and "RuntimeError: main saw [redacted]" in p.stderr
    assert "Exception in thread worker" in p.stderr
