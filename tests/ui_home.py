"""A home for the finance page's tests: customers, keys, budgets and ledger rows in December 2026
(and a few outside it), written through the project's own code, plus the daemon's [ui] config."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmgw import paths
from llmgw.governance import budgets, hierarchy, keys
from llmgw.store.db import open_db, transaction
from llmgw.store.ledger import as_tuple, insert_sql, normalise_row

UI_TOKEN = "ui-viewer-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdefghij"
UI_CONFIG = """
[ui]
token_env = "TEST_UI_TOKEN"
currency = "EUR"
rate = "0.92"
"""
UI_ENV = {"TEST_UI_TOKEN": UI_TOKEN, "LLMGW_ADMIN_TOKEN": ADMIN_TOKEN}
#: the daemon's business clock in these tests: 2026-12-20 12:00 UTC
NOW_MS = int(datetime(2026, 12, 20, 12, tzinfo=UTC).timestamp() * 1000)
DAY = 86_400_000
DEC_1 = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)

MODELS = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5", "openai/gpt-4o"]


def define(home: Path) -> dict[str, list[str]]:
    """Customers acme (hard $5/month, warn 50 %), globex ($1/month, over it) and initech (no
    budget), two keys each; returns the key ids by customer."""
    home.mkdir(parents=True, exist_ok=True)
    conn = open_db(paths.db_path(home))
    out: dict[str, list[str]] = {}
    try:
        with transaction(conn):
            for cid, name in (("acme", "Acme Corp"), ("globex", "Globex <Inc>"), ("initech", "Initech")):
                hierarchy.create_customer(conn, cid, name=name)
                out[cid] = [keys.mint(conn, name=f"{cid}-k{k}", customer_id=cid)[1].id for k in range(2)]
            budgets.upsert_budget(conn, "customer", "acme", "month", 5_000_000_000, hard=True, warn_pct=50)
            budgets.upsert_budget(conn, "customer", "globex", "month", 1_000_000_000, hard=False)
    finally:
        conn.close()
    return out


def rows(key_ids: dict[str, list[str]], n: int = 400, seed: int = 3) -> list[dict[str, Any]]:
    """``n`` rows from 2026-11-25 to 2026-12-20 (so some fall before the month), with errors,
    cache hits and savings, and amounts that are not round (a float sum would drift)."""
    rnd = random.Random(seed)
    start = DEC_1 - 6 * DAY
    span = NOW_MS - start
    out = []
    for i in range(n):
        cid = rnd.choice(list(key_ids))
        kid = rnd.choice(key_ids[cid])
        model = rnd.choice(MODELS)
        status = rnd.choice([200] * 8 + [429, 502])
        cache = rnd.choice([None, None, "miss", "hit-exact", "hit-semantic"])
        hit = cache is not None and cache.startswith("hit")
        out.append({
            "request_id": f"req_ui_{seed}_{i:05d}", "ts_ms": start + rnd.randrange(span), "route": "/v1/chat/completions",
            "model": model, "provider": model.split("/")[0], "status": status,
            "outcome": "ok" if status == 200 else "error",
            "error_type": None if status == 200 else ("rate_limit_exceeded" if status == 429 else "upstream_error"),
            "prompt_tokens": rnd.randrange(3000), "completion_tokens": rnd.randrange(500), "cached_tokens": 0,
            "cost_nanos": 0 if hit or status != 200 else rnd.randrange(1, 90_000_001),
            "saved_nanos": rnd.randrange(1, 3_000_001) if hit else 0,
            "latency_ms": 50.0, "key_id": kid, "customer_id": cid, "cache": cache,
        })
    return out


def insert(home: Path, items: list[dict[str, Any]]) -> None:
    conn = open_db(paths.db_path(home))
    try:
        with conn:
            conn.executemany(insert_sql(), [as_tuple(normalise_row(r)) for r in items])
    finally:
        conn.close()


def build(home: Path, n: int = 400) -> list[dict[str, Any]]:
    """Definitions and ``n`` ledger rows in ``home``; returns the rows."""
    items = rows(define(home), n)
    insert(home, items)
    return items
