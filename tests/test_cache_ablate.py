"""``llmgw cache ablate``: threshold parsing, metrics math on hand-computed examples, the guard variant,
pair file formats, ledger replay with known bodies, output shapes, and bad input (exit 2). Exact
expectations use a stub embedder; the CLI runs (subprocess) use the real bundled model."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmgw import paths
from llmgw.cache import ablate as ab
from llmgw.errors import UsageError
from llmgw.store.db import open_db
from llmgw.store.ledger import as_tuple, insert_sql, normalise_row

KEYS = ["threshold", "variant", "hit_rate", "false_hit_rate", "precision", "recall", "f1", "n_pos", "n_neg"]


def llmgw(*args: Any, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMGW_")}
    if home is not None:
        env["LLMGW_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "llmgw", "cache", "ablate", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=120)


class StubEmbedder:
    """Texts with the same ``group`` (the part before ``|`` in a lookup table) get the same vector."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    @property
    def dim(self) -> int:
        return len(next(iter(self.table.values())))

    def encode(self, texts: list[str]) -> Any:
        v = np.array([self.table[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


# ---- thresholds and statistics -------------------------------------------------------------------


def test_parse_thresholds() -> None:
    assert ab.parse_thresholds("0.95,0.9") == [0.9, 0.95]
    r = ab.parse_thresholds("0.8:0.99:0.005")
    assert len(r) == 39 and r[0] == 0.8 and r[-1] == 0.99 and r[1] == 0.805
    d = ab.parse_thresholds("0.80:0.99:0.01")  # the CLI's default
    assert len(d) == 20 and d[0] == 0.8 and d[-1] == 0.99 and d[9] == 0.89
    for bad in ("abc", "0.9:0.8:0.1", "0.8:0.9", "1.5", "0.8:0.9:0", ""):
        with pytest.raises(UsageError):
            ab.parse_thresholds(bad)
    assert ab.parse_variants("no-guard,guard") == ["no-guard", "guard"]
    with pytest.raises(UsageError):
        ab.parse_variants("guardd")


def test_wilson_and_auc_hand_computed() -> None:
    lo, hi = ab.wilson(0, 100)
    assert lo == 0.0 and math.isclose(hi, ab.Z95**2 / (100 + ab.Z95**2), rel_tol=1e-12)
    lo, hi = ab.wilson(5, 10)
    assert math.isclose(lo + hi, 1.0) and 0.23 < lo < 0.24
    # positives 0.9, 0.7; negatives 0.8, 0.6: 3 of the 4 (pos, neg) pairs are ordered right
    assert ab.roc_auc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == 0.75
    assert ab.roc_auc([0.5, 0.5], [1, 0]) == 0.5  # a tie counts one half
    assert ab.roc_auc([0.1, 0.2], [1, 1]) is None


def test_pair_metrics_hand_computed() -> None:
    pairs = [ab.Pair(f"a{i}", f"b{i}", y) for i, y in enumerate([1, 1, 1, 0, 0])]
    sims = [0.95, 0.90, 0.85, 0.92, 0.50]
    rep = ab.pair_metrics(pairs, sims, [0.9, 0.96], ["no-guard"], target_error=0.99)
    r90, r96 = rep.rows
    assert (r90.tp, r90.fp, r90.n_pos, r90.n_neg) == (2, 1, 3, 2)
    assert math.isclose(r90.precision or 0, 2 / 3) and math.isclose(r90.recall, 2 / 3)
    assert math.isclose(r90.f1, 2 / 3) and r90.false_hit_rate == 0.5 and r90.hit_rate == r90.recall
    assert r96.precision is None and r96.recall == 0 and r96.f1 == 0
    assert math.isclose(rep.auc["no-guard"] or 0, 4 / 6)  # (0.95>both, 0.90>0.50, 0.85>0.50) of 6
    assert ab.wilson(1, 2)[1] < 0.99 and rep.recommended["no-guard"] == 0.9


def test_guard_variant_blocks_a_field_flip_negative() -> None:
    a = "Write a short caption for this product photo.\nbrand: null\nsku: 10482"
    b = "Write a short caption for this product photo.\nbrand: Nike\nsku: 10482"
    c = "Please write a short caption for this product photo.\nbrand: Nike\nsku: 10482"
    pairs = [ab.Pair(a, b, 0), ab.Pair(b, c, 1)]
    rep = ab.pair_metrics(pairs, [0.99, 0.98], [0.95], ["guard", "no-guard"])
    by = {r.variant: r for r in rep.rows}
    assert (by["guard"].tp, by["guard"].fp) == (1, 0)
    assert (by["no-guard"].tp, by["no-guard"].fp) == (1, 1)
    assert rep.collisions("no-guard", 0.95, 5) == [(0.99, pairs[0])]
    assert rep.collisions("guard", 0.95, 5) == []
    assert rep.auc == {"guard": 1.0, "no-guard": 0.0}


# ---- pair files ----------------------------------------------------------------------------------


def test_load_tsv_jsonl_and_mock(tmp_path: Path) -> None:
    tsv = tmp_path / "p.tsv"
    tsv.write_text("id\tsentence1\tsentence2\tlabel\n1\tA b\tB a\t1\n2\tC\tD\t0\n")
    assert ab.load_pairs(tsv) == [ab.Pair("A b", "B a", 1), ab.Pair("C", "D", 0)]
    tsv3 = tmp_path / "p3.tsv"
    tsv3.write_text("x\ty\t0\n")
    assert ab.load_pairs(tsv3) == [ab.Pair("x", "y", 0)]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"a": "x", "b": "y", "label": 1}\n\n{"a": "p", "b": "q", "label": 0}\n')
    assert ab.load_pairs(jl) == [ab.Pair("x", "y", 1), ab.Pair("p", "q", 0)]
    mock = tmp_path / "mock.json"
    mock.write_text(json.dumps([{"origin": f"o{i}", "similar": f"s{i}"} for i in range(5)]))
    got = ab.load_pairs(mock, seed=3)
    assert got[:5] == [ab.Pair(f"o{i}", f"s{i}", 1) for i in range(5)]
    negs = got[5:]
    assert [p.a for p in negs] == [f"o{i}" for i in range(5)] and all(p.label == 0 for p in negs)
    assert sorted(p.b for p in negs) == [f"s{i}" for i in range(5)]
    assert all(p.b != f"s{i}" for i, p in enumerate(negs))  # a derangement
    assert ab.load_pairs(mock, seed=3) == got


@pytest.mark.parametrize(("content", "message"), [
    ("a\tb\t1\nc\td\tmaybe\n", "label must be 0 or 1"),
    ("only one column\n", "tab-separated column"),
    ('{"a": "x", "b": "y"}\n', "expected an object"),
    ('{"a": "x", "b": \n', "not valid JSON"),
    ('[{"foo": 1}]', "origin and similar"),
    ("\n\n", "no pairs found"),
])
def test_bad_pair_files(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "bad.txt"
    f.write_text(content)
    with pytest.raises(UsageError, match=message):
        ab.load_pairs(f)
    proc = llmgw("--pairs", f)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""


def test_cli_usage_errors(tmp_path: Path) -> None:
    for args, message in [((), "exactly one of --pairs"), (("--pairs", tmp_path / "missing.tsv"), "no such file"),
                          (("--from-log", "--pairs", "x"), "exactly one of --pairs"),
                          (("--from-log", "--home", tmp_path / "none"), "no llmgw home at"),
                          (("--pairs", "x.tsv", "--thresholds", "2"), "outside [0, 1]"),
                          (("--pairs", "x.tsv", "--target-error", "5"), "--target-error")]:
        proc = llmgw(*args)
        assert proc.returncode in (2, 4), (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
    assert llmgw("--from-log", "--home", tmp_path / "none").returncode == 4


# ---- the CLI with the real bundled model ---------------------------------------------------------


def test_cli_pairs_with_bundled_model_json_csv_table(tmp_path: Path) -> None:
    f = tmp_path / "pairs.tsv"
    f.write_text(
        "text_a\ttext_b\tlabel\n"
        "What is the capital of France?\tWhat is the capital of France?\t1\n"
        "How do I reset my password?\tHow can I reset my password?\t1\n"
        "Write a short caption.\\nbrand: null\tWrite a short caption.\\nbrand: Nike\t0\n"
        "Caption for SKU 10482 please\tCaption for SKU 10483 please\t0\n"
        "The weather is nice today\tQuantum chromodynamics lecture notes\t0\n"
    )
    proc = llmgw("--pairs", f, "--format", "json", "--thresholds", "0.9,0.95", "--variants", "guard,no-guard")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    data = out["rows"]
    # the JSON carries the recommendation, the AUC and the counts with the rows
    assert set(out["recommended"]) == {"guard", "no-guard"} and set(out["auc"]) == {"guard", "no-guard"}
    assert (out["n_pos"], out["n_neg"], out["pairs"]) == (2, 3, 5)
    assert out["clean_negatives_needed"] == ab.negatives_needed(0.01)
    assert len(data) == 4 and all(list(r) == KEYS for r in data)
    assert [(r["threshold"], r["variant"]) for r in data] == [(0.9, "guard"), (0.95, "guard"),
                                                              (0.9, "no-guard"), (0.95, "no-guard")]
    assert all(r["n_pos"] == 2 and r["n_neg"] == 3 for r in data)
    guard = [r for r in data if r["variant"] == "guard"]
    assert all(r["false_hit_rate"] == 0.0 for r in guard)  # the two field flips are blocked, the rest is far
    assert all(r["hit_rate"] >= 0.5 for r in data)  # the identical pair always hits
    assert "5 pairs (2 positive, 3 negative)" in proc.stderr

    proc = llmgw("--pairs", f, "--format", "csv", "--thresholds", "0.9", "--variants", "guard")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == 1 and list(rows[0]) == [*KEYS, "recommended"] and rows[0]["variant"] == "guard"

    proc = llmgw("--pairs", f, "--examples", "2", "--variants", "no-guard")
    assert proc.returncode == 0, proc.stderr
    assert "ROC AUC" in proc.stdout and "recommended threshold" in proc.stdout and "█" in proc.stdout
    assert "colliding negative pairs" in proc.stdout


# ---- ledger replay -------------------------------------------------------------------------------


def chat(text: str, system: str | None = None) -> str:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "assistant", "content": "earlier"}, {"role": "user", "content": [{"type": "text", "text": text}]}]
    return json.dumps({"model": "openai/gpt-4o-mini", "messages": msgs, "stream": False})


def completion(text: str) -> str:
    return json.dumps({"id": "x", "object": "chat.completion",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})


def ledger_rows() -> list[dict[str, Any]]:
    base = 1_790_000_000_000
    spec: list[tuple[str | None, str | None, str | None, int, int, dict[str, Any]]] = [
        # customer, request text, response body, cost, status, extra
        ("acme", "What is the capital of France?", completion("Paris."), 100, 200, {}),
        ("acme", "What is the capital of France?", "paris", 200, 200, {"stream": 1}),  # streamed: plain text
        ("acme", "Caption for SKU 10482", completion("A red trainer."), 300, 200, {}),
        ("acme", "Caption for SKU 10483", completion("A blue boot."), 400, 200, {}),
        ("globex", "What is the capital of France?", completion("Paris"), 500, 200, {}),  # other customer
        ("acme", "What is the capital of France?", completion("error"), 600, 500, {"error_type": "upstream"}),
        ("acme", None, None, 700, 200, {}),  # no bodies logged
        ("acme", "What is the capital of France?", completion("Paris."), 0, 200, {"cache": "hit-exact"}),
    ]
    out = []
    for i, (cust, text, resp, cost, status, extra) in enumerate(spec):
        out.append({"request_id": f"req_{i}", "ts_ms": base + i * 1000, "route": "/v1/chat/completions",
                    "model": "openai/gpt-4o-mini", "status": status, "outcome": "ok" if status < 400 else "error",
                    "customer_id": cust, "cost_nanos": cost,
                    "request_body": chat(text) if text else None, "response_body": resp, **extra})
    return out


def test_replay_with_stub_embedder_exact() -> None:
    reqs, skipped = ab.requests_from_rows(ledger_rows())
    assert skipped == 3 and [r.request_id for r in reqs] == [f"req_{i}" for i in range(5)]
    assert reqs[0].answer == reqs[1].answer == "paris"
    table = {"What is the capital of France?": [1.0, 0.0], "Caption for SKU 10482": [0.0, 1.0],
             "Caption for SKU 10483": [0.1, 1.0]}  # cosine(10482, 10483) = 0.995
    rep = ab.replay(reqs, StubEmbedder(table), [0.99, 0.999], ["guard", "no-guard"], keep_examples=3)
    got = {(r.threshold, r.variant): (r.requests, r.hits, r.wrong_hits, r.saved_nanos) for r in rep.rows}
    assert got == {(0.99, "guard"): (5, 1, 0, 200), (0.999, "guard"): (5, 1, 0, 200),
                   (0.99, "no-guard"): (5, 2, 1, 600), (0.999, "no-guard"): (5, 1, 0, 200)}
    wrong = next(r for r in rep.rows if r.variant == "no-guard" and r.threshold == 0.99)
    assert [(c.request_id, q.request_id) for _, c, q in wrong.examples] == [("req_2", "req_3")]
    d = wrong.as_dict()
    assert d["wrong_per_request"] == 0.2 and d["wrong_per_hit"] == 0.5 and d["hit_rate"] == 0.4
    assert d["wrong_per_request_ci95"] == list(ab.wilson(1, 5))
    # upper bound of 0/5 is ~0.43: nothing qualifies under 1 %; under 50 % the lowest threshold does
    assert rep.recommended == {"guard": None, "no-guard": None}
    rep2 = ab.replay(reqs, StubEmbedder(table), [0.99, 0.999], ["guard", "no-guard"], target_error=0.5)
    assert rep2.recommended == {"guard": 0.99, "no-guard": 0.999}


def test_replay_scope_includes_the_system_prompt() -> None:
    rows = ledger_rows()[:2]
    rows[1]["request_body"] = chat("What is the capital of France?", system="Answer in French.")
    reqs, _ = ab.requests_from_rows(rows)
    rep = ab.replay(reqs, StubEmbedder({"What is the capital of France?": [1.0]}), [0.5], ["no-guard"])
    assert rep.rows[0].hits == 0


def test_answer_text_shapes() -> None:
    assert ab.answer_text(completion("Hi")) == "Hi"
    assert ab.answer_text(json.dumps({"type": "message", "content": [{"type": "text", "text": "Yo"}]})) == "Yo"
    assert ab.answer_text("42") == "42" and ab.answer_text("plain, streamed text") == "plain, streamed text"
    assert ab.normalise_answer("  Paris,\n  FRANCE! ") == "paris france"


def test_cli_from_log(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    conn = open_db(paths.db_path(home))
    try:
        with conn:
            conn.executemany(insert_sql(), [as_tuple(normalise_row(r)) for r in ledger_rows()])
    finally:
        conn.close()
    proc = llmgw("--from-log", "--format", "json", "--thresholds", "0.95", "--variants", "guard,no-guard", home=home)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    data = out["rows"]
    assert out["censored"] == 0 and out["refusal"] is None and set(out["recommended"]) == {"guard", "no-guard"}
    assert [(r["variant"], r["requests"]) for r in data] == [("guard", 5), ("no-guard", 5)]
    guard = data[0]
    assert (guard["hits"], guard["wrong_hits"], guard["saved_nanos"]) == (1, 0, 200)
    assert "8 rows, 5 replayable, 3 skipped" in proc.stderr
    proc = llmgw("--from-log", "--since", "2026-09-21T14:13:22Z", "--thresholds", "0.95", "--examples", "1",
                 home=home)
    assert proc.returncode == 0, proc.stderr
    assert "semantic cache replay (3 requests" in proc.stdout and "recommended threshold" in proc.stdout
    proc = llmgw("--from-log", "--since", "2030-01-01", home=home)
    assert proc.returncode == 2 and "no replayable requests" in proc.stderr
    proc = llmgw("--from-log", "--since", "yesterday", home=home)
    assert proc.returncode == 2 and "--since: expected YYYY-MM-DD" in proc.stderr


def test_from_log_refuses_to_recommend_from_censored_traffic(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    rows = ledger_rows()
    rows.append({**rows[0], "request_id": "req_sem", "ts_ms": rows[-1]["ts_ms"] + 1000, "cache": "hit-semantic",
                 "cache_similarity": 0.97, "cost_nanos": 0})
    conn = open_db(paths.db_path(home))
    try:
        with conn:
            conn.executemany(insert_sql(), [as_tuple(normalise_row(r)) for r in rows])
    finally:
        conn.close()
    proc = llmgw("--from-log", "--format", "json", "--thresholds", "0.9,0.95", home=home)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["censored"] == 1 and "answered by the semantic cache" in out["refusal"]
    assert all(v is None for v in out["recommended"].values())
    proc = llmgw("--from-log", "--thresholds", "0.9,0.95", home=home)
    assert "no recommendation: 1 of 9 requests" in proc.stdout and "shadow = true" in proc.stdout


def test_retrieval_counts_right_wrong_and_miss() -> None:
    table = {"q1": [1, 0, 0], "q1'": [0.99, 0.14, 0], "q2": [0, 1, 0], "q2'": [0.2, 0.98, 0], "far": [0, 0, 1],
             "x": [0.97, 0.243, 0]}
    pairs = [ab.Pair("q1", "q1'", 1), ab.Pair("q2", "q2'", 1), ab.Pair("far", "x", 1)]
    rep = ab.retrieval(pairs, StubEmbedder(table), [0.5, 0.99], ["no-guard"])
    by = {r.threshold: r for r in rep.rows}
    # at 0.5: q1' -> q1 right, q2' -> q2 right, x -> q1 wrong (its own entry "far" is orthogonal)
    assert (by[0.5].right, by[0.5].wrong, by[0.5].miss) == (2, 1, 0)
    assert (by[0.99].right, by[0.99].wrong, by[0.99].miss) == (1, 0, 2)
    assert rep.recommended["no-guard"] is None  # 3 queries can never show a 1 % bound
    assert rep.summary()["clean_negatives_needed"] == ab.negatives_needed(0.01) > 300


def test_cli_retrieval(tmp_path: Path) -> None:
    data = [{"a": "What is the capital of France?", "b": "Tell me the capital city of France.", "label": 1},
            {"a": "How do I reset my password?", "b": "How can I reset my password?", "label": 1},
            {"a": "Write a product caption for the linen shirt.",
             "b": "Write a product caption for the linen shirt in French.", "label": 0}]
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(d) + "\n" for d in data))
    proc = llmgw("--pairs", f, "--retrieval", "--format", "json", "--thresholds", "0.8", home=tmp_path / "h")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    by = {r["variant"]: r for r in out["rows"]}
    assert by["config"]["queries"] == 3 and by["config"]["wrong"] == 0  # the gate stops the language flip
    assert by["no-guard"]["wrong"] >= 1
    assert "recommended" in out
