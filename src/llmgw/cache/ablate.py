"""Threshold ablation for the semantic cache: choose a cosine threshold from data, not by feel.

Two sources of evidence:

* **Labelled pairs** (``load_pairs`` + ``pair_metrics``): each pair ``(a, b, label)`` says whether a
  cached answer for ``a`` is right for ``b``. A pair *hits* at threshold ``t`` when cosine(a, b) >= t
  and, for the ``guard`` variant, their guard facts are equal too. Positives that hit are the hit rate
  (recall); negatives that hit are false hits. ROC AUC is over the raw similarity (the ``guard``
  variant scores a fact mismatch below every similarity).
* **The ledger** (``replay_log``): logged requests with bodies, replayed in time order into an empty
  simulated cache (insert on miss, the vCache protocol), once per threshold and variant. A hit is
  *wrong* when the cached answer's normalised text differs from the answer the request really got.

Formats accepted by ``load_pairs``: TSV ``a \\t b \\t label`` with an optional leading id column and an
optional header line (PAWS as is); JSONL ``{"a": .., "b": .., "label": 0|1}``; and the GPTCache mock
file (a JSON list of ``{"origin", "similar"}``): ``origin_i``/``similar_i`` are the positives, and
each origin is also paired with the ``similar`` of one other item, chosen by a seeded random
derangement, as a negative (so n_neg == n_pos).

Pure logic, numpy only (lazy); the CLI lives in ``llmgw.cli.cache_cmd``. Errors are ``UsageError``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmgw.cache import gate
from llmgw.cache.guard import ExtraPatterns, fingerprint
from llmgw.errors import UsageError

if TYPE_CHECKING:
    from llmgw.cache.embedder import Embedder

VARIANTS = ("config", "guard", "no-guard")
Z95 = 1.959963984540054


# ---- policies: what decides a hit besides the similarity -----------------------------------------


@dataclass(frozen=True)
class Policy:
    """The structure checks of the running configuration (``[cache] guard``, ``guard_patterns``,
    ``gate``/``gate_classes``), as the daemon applies them."""

    guard: bool = True
    patterns: tuple[str, ...] = ()
    gate_classes: tuple[str, ...] = gate.CLASSES

    @classmethod
    def of(cls, config: Any) -> Policy:
        return cls(bool(config.guard), tuple(config.guard_patterns),
                   tuple(config.gate_classes) if config.gate else ())


def variant_policy(variant: str, running: Policy) -> Policy:
    """``config``: the running configuration; ``config-CLASS``: the same without one gate class;
    ``guard``: the field guard only (no gate); ``no-guard``: similarity only."""
    if variant == "config":
        return running
    if variant.startswith("config-"):
        cls = variant[len("config-"):]
        return Policy(running.guard, running.patterns, tuple(c for c in running.gate_classes if c != cls))
    if variant == "guard":
        return Policy(True, running.patterns, ())
    return Policy(False, (), ())


class Judge:
    """Memoised guard fingerprints and gate features: ``blocks(policy, a, b)`` says what stops a
    hit between cached ``a`` and query ``b`` (``"guard"``, a gate class) or ``None``."""

    def __init__(self) -> None:
        self._fp: dict[tuple[str, tuple[str, ...]], str] = {}
        self._feat: dict[str, gate.Features] = {}

    def fingerprint(self, text: str, patterns: tuple[str, ...]) -> str:
        k = (text, patterns)
        got = self._fp.get(k)
        if got is None:
            got = self._fp[k] = fingerprint(text, patterns)
        return got

    def features(self, text: str) -> gate.Features:
        got = self._feat.get(text)
        if got is None:
            got = self._feat[text] = gate.features(text)
        return got

    def blocks(self, policy: Policy, a: str, b: str) -> str | None:
        if policy.guard and self.fingerprint(a, policy.patterns) != self.fingerprint(b, policy.patterns):
            return "guard"
        if policy.gate_classes:
            return gate.conflict(self.features(a), self.features(b), policy.gate_classes)
        return None


# ---- thresholds ----------------------------------------------------------------------------------


def parse_thresholds(spec: str) -> list[float]:
    """``0.9,0.95`` (a list) or ``0.8:0.99:0.005`` (start:stop:step, both ends inclusive). Sorted,
    de-duplicated, each in [0, 1]. Raises ``UsageError``."""
    s = spec.strip()
    bad = UsageError(f"bad --thresholds {spec!r}: expected a list like 0.9,0.95 or a range like 0.8:0.99:0.005")
    try:
        if ":" in s:
            parts = [float(p) for p in s.split(":")]
            if len(parts) != 3:
                raise bad
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise UsageError(f"bad --thresholds {spec!r}: the step must be > 0 and start <= stop")
            n = int(math.floor((stop - start) / step + 1e-9))
            if n > 100_000:
                raise UsageError(f"bad --thresholds {spec!r}: more than 100000 thresholds")
            values = [round(start + i * step, 10) for i in range(n + 1)]
        else:
            values = [float(p) for p in s.split(",") if p.strip()]
    except ValueError:
        raise bad from None
    if not values:
        raise bad
    for v in values:
        if not (0.0 <= v <= 1.0) or math.isnan(v):
            raise UsageError(f"bad --thresholds {spec!r}: {v} is outside [0, 1]")
    return sorted(set(values))


def parse_variants(spec: str) -> list[str]:
    out: list[str] = []
    for v in (p.strip() for p in spec.split(",")):
        if not v:
            continue
        if v not in VARIANTS and not (v.startswith("config-") and v[len("config-"):] in gate.CLASSES):
            raise UsageError(f"bad --variants {spec!r}: {v!r} is not one of {', '.join(VARIANTS)} "
                             f"or config-CLASS (CLASS one of {', '.join(gate.CLASSES)})")
        if v not in out:
            out.append(v)
    if not out:
        raise UsageError(f"bad --variants {spec!r}: name at least one of {', '.join(VARIANTS)}")
    return out


# ---- statistics ----------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (``(0, 1)`` when ``n == 0``)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """ROC AUC = P(score of a random positive > that of a random negative), ties counting one half
    (Mann-Whitney U with average ranks). ``None`` when a class is empty."""
    pairs = sorted(zip(scores, labels, strict=True), key=lambda x: x[0])
    n_pos = sum(1 for _, y in pairs if y)
    n_neg = len(pairs) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j) / 2 + 1  # 1-based ranks i+1 .. j+1
        rank_sum += avg_rank * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# ---- labelled pairs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    label: int


_LABELS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "true": 1, "false": 0}


def _label(raw: object, where: str) -> int:
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int | float) and raw in (0, 1):
        return int(raw)
    if isinstance(raw, str) and raw.strip().lower() in _LABELS:
        return _LABELS[raw.strip().lower()]
    raise UsageError(f"{where}: label must be 0 or 1, got {raw!r}")


def load_pairs(path: Path, *, seed: int = 0) -> list[Pair]:
    """Read a pairs file (TSV, JSONL or the GPTCache mock JSON; see the module docstring)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        pairs = _load_mock(path, text, seed)
    elif stripped.startswith("{"):
        pairs = _load_jsonl(path, text)
    else:
        pairs = _load_tsv(path, text)
    if not pairs:
        raise UsageError(f"{path}: no pairs found")
    return pairs


def _load_mock(path: Path, text: str, seed: int) -> list[Pair]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON: {exc}") from None
    items: list[tuple[str, str]] = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and isinstance(item.get("origin"), str) and isinstance(item.get("similar"), str):
            items.append((item["origin"], item["similar"]))
        elif isinstance(item, dict) and {"a", "b", "label"} <= item.keys():
            raise UsageError(f"{path}: a JSON list of a/b/label objects: write it as JSONL, one object per line")
        else:
            raise UsageError(f"{path}: item {i}: expected an object with string fields origin and similar")
    if len(items) < 2:
        return [Pair(o, s, 1) for o, s in items]
    rng = random.Random(seed)
    perm = list(range(len(items)))
    while True:  # a derangement: no origin is paired with its own similar
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            break
    out = [Pair(o, s, 1) for o, s in items]
    out += [Pair(items[i][0], items[p][1], 0) for i, p in enumerate(perm)]
    return out


def _load_jsonl(path: Path, text: str) -> list[Pair]:
    out: list[Pair] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not valid JSON: {exc.msg}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("a"), str) or not isinstance(obj.get("b"), str) \
                or "label" not in obj:
            raise UsageError(f"{where}: expected an object {{\"a\": str, \"b\": str, \"label\": 0|1}}")
        out.append(Pair(obj["a"], obj["b"], _label(obj["label"], where)))
    return out


def _load_tsv(path: Path, text: str) -> list[Pair]:
    out: list[Pair] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        where = f"{path}:{n}"
        if len(cols) == 3:
            a, b, raw = cols
        elif len(cols) == 4:
            _, a, b, raw = cols
        else:
            raise UsageError(f"{where}: expected text_a<TAB>text_b<TAB>label (optionally after an id column), "
                             f"got {len(cols)} tab-separated column(s)")
        if not out and raw.strip().lower() not in _LABELS:
            continue  # a header line
        out.append(Pair(a, b, _label(raw, where)))
    return out


@dataclass
class PairRow:
    threshold: float
    variant: str
    hit_rate: float
    false_hit_rate: float
    precision: float | None
    recall: float
    f1: float
    n_pos: int
    n_neg: int
    tp: int = 0
    fp: int = 0
    fhr_high: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "variant": self.variant, "hit_rate": self.hit_rate,
                "false_hit_rate": self.false_hit_rate, "precision": self.precision, "recall": self.recall,
                "f1": self.f1, "n_pos": self.n_pos, "n_neg": self.n_neg}


@dataclass
class PairReport:
    thresholds: list[float]
    variants: list[str]
    rows: list[PairRow]
    auc: dict[str, float | None]
    similarities: list[float]
    allowed: dict[str, list[bool]]
    pairs: list[Pair]
    target_error: float
    recommended: dict[str, float | None] = field(default_factory=dict)

    def collisions(self, variant: str, threshold: float, limit: int) -> list[tuple[float, Pair]]:
        """Negative pairs that hit at ``threshold`` under ``variant``, most similar first."""
        found = [(s, p) for s, ok, p in zip(self.similarities, self.allowed[variant], self.pairs, strict=True)
                 if not p.label and s >= threshold and ok]
        found.sort(key=lambda x: -x[0])
        return found[:limit]

    def summary(self) -> dict[str, Any]:
        n_pos = sum(p.label for p in self.pairs)
        return {"pairs": len(self.pairs), "n_pos": n_pos, "n_neg": len(self.pairs) - n_pos,
                "target_error": self.target_error, "recommended": self.recommended, "auc": self.auc,
                "clean_negatives_needed": negatives_needed(self.target_error)}


def negatives_needed(target_error: float) -> int:
    """How many clean negatives (none of them a false hit) it takes for the Wilson 95 % upper bound
    of the false-hit rate to fall below ``target_error``."""
    n = 1
    while wilson(0, n)[1] >= target_error:
        n = n * 2 if wilson(0, n * 2)[1] >= target_error else n + 1
        if n > 10_000_000:
            break
    return n


def pair_similarities(pairs: Sequence[Pair], embedder: Embedder) -> list[float]:
    """Cosine similarity of each pair (every distinct text is embedded once)."""
    import numpy as np

    texts = sorted({p.a for p in pairs} | {p.b for p in pairs})
    index = {t: i for i, t in enumerate(texts)}
    vecs = embedder.encode(texts)
    ia = np.fromiter((index[p.a] for p in pairs), dtype=np.int64, count=len(pairs))
    ib = np.fromiter((index[p.b] for p in pairs), dtype=np.int64, count=len(pairs))
    sims = np.einsum("ij,ij->i", vecs[ia], vecs[ib]).astype(np.float64)
    # float32 rounding can put the cosine of identical texts at 1.0000001 or 0.9999999
    return [float(x) for x in np.round(sims, 6)]


def pair_metrics(
    pairs: Sequence[Pair],
    similarities: Sequence[float],
    thresholds: Sequence[float],
    variants: Sequence[str] = VARIANTS,
    *,
    target_error: float = 0.01,
    extra_patterns: ExtraPatterns = (),
    policy: Policy | None = None,
) -> PairReport:
    """Metrics per threshold and variant; ``recommended[variant]`` is the lowest threshold whose
    false-hit-rate Wilson upper bound is below ``target_error`` (``None`` if no threshold qualifies).
    ``policy`` is the running configuration (default: guard with ``extra_patterns``, full gate)."""
    running = policy or Policy(True, tuple(extra_patterns) if not isinstance(extra_patterns, dict)
                               else tuple(extra_patterns.values()))
    judge = Judge()
    labels = [p.label for p in pairs]
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    rows: list[PairRow] = []
    auc: dict[str, float | None] = {}
    recommended: dict[str, float | None] = {}
    allowed: dict[str, list[bool]] = {}
    for variant in variants:
        pol = variant_policy(variant, running)
        ok = allowed[variant] = [judge.blocks(pol, p.a, p.b) is None for p in pairs]
        scores = [s if k else -2.0 for s, k in zip(similarities, ok, strict=True)]
        auc[variant] = roc_auc(scores, labels)
        recommended[variant] = None
        for t in thresholds:
            tp = sum(1 for s, y in zip(scores, labels, strict=True) if y and s >= t)
            fp = sum(1 for s, y in zip(scores, labels, strict=True) if not y and s >= t)
            recall = tp / n_pos if n_pos else 0.0
            fhr = fp / n_neg if n_neg else 0.0
            precision = tp / (tp + fp) if tp + fp else None
            f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
            high = wilson(fp, n_neg)[1]
            rows.append(PairRow(t, variant, recall, fhr, precision, recall, f1, n_pos, n_neg, tp, fp, high))
            if recommended[variant] is None and n_neg and high < target_error:
                recommended[variant] = t
    return PairReport(list(thresholds), list(variants), rows, auc, list(similarities), allowed, list(pairs),
                      target_error, recommended)


# ---- retrieval: the GPTCache protocol ------------------------------------------------------------


@dataclass
class RetrievalRow:
    threshold: float
    variant: str
    queries: int
    right: int
    wrong: int
    miss: int

    def as_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "variant": self.variant, "queries": self.queries,
                "right": self.right, "wrong": self.wrong, "miss": self.miss,
                "wrong_rate": self.wrong / self.queries if self.queries else 0.0,
                "wrong_rate_ci95": list(wilson(self.wrong, self.queries))}


@dataclass
class RetrievalReport:
    rows: list[RetrievalRow]
    entries: int
    queries: int
    target_error: float
    recommended: dict[str, float | None]
    examples: dict[str, list[tuple[float, str, str]]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"entries": self.entries, "queries": self.queries, "target_error": self.target_error,
                "recommended": self.recommended, "clean_negatives_needed": negatives_needed(self.target_error)}


def retrieval(
    pairs: Sequence[Pair],
    embedder: Embedder,
    thresholds: Sequence[float],
    variants: Sequence[str] = VARIANTS,
    *,
    target_error: float = 0.01,
    policy: Policy | None = None,
    keep_examples: int = 0,
) -> RetrievalReport:
    """Cache every distinct ``a``, query every distinct ``b`` against the whole cache (GPTCache's
    protocol): the best entry the variant allows answers when its cosine >= threshold. The answer is
    *right* when that entry and the query form a positive pair (or are the same text), *wrong*
    otherwise; no entry at the threshold is a *miss*. ``recommended[variant]``: the lowest threshold
    whose wrong-answer rate (Wilson 95 % upper bound) is below ``target_error``."""
    import numpy as np

    running = policy or Policy()
    judge = Judge()
    entries = list(dict.fromkeys(p.a for p in pairs))
    queries = list(dict.fromkeys(p.b for p in pairs))
    positive = {(p.a, p.b) for p in pairs if p.label}
    ev = embedder.encode(entries)
    qv = embedder.encode(queries)
    rows: list[RetrievalRow] = []
    recommended: dict[str, float | None] = {}
    examples: dict[str, list[tuple[float, str, str]]] = {}
    lowest = min(thresholds) if thresholds else 0.0
    best: dict[str, list[tuple[float, int] | None]] = {v: [] for v in variants}
    for start in range(0, len(queries), 512):
        sims = np.round(qv[start:start + 512] @ ev.T, 6)
        for off in range(sims.shape[0]):
            qi = start + off
            row = sims[off]
            order = np.argsort(-row)
            for variant in variants:
                pol = variant_policy(variant, running)
                found: tuple[float, int] | None = None
                for ei in order:
                    sim = float(row[ei])
                    if sim < lowest:
                        break
                    if judge.blocks(pol, entries[int(ei)], queries[qi]) is None:
                        found = (sim, int(ei))
                        break
                best[variant].append(found)
    for variant in variants:
        recommended[variant] = None
        examples[variant] = []
        for t in thresholds:
            right = wrong = 0
            for qi, found in enumerate(best[variant]):
                if found is None or found[0] < t:
                    continue
                a = entries[found[1]]
                if a == queries[qi] or (a, queries[qi]) in positive:
                    right += 1
                else:
                    wrong += 1
            rows.append(RetrievalRow(t, variant, len(queries), right, wrong, len(queries) - right - wrong))
            if recommended[variant] is None and queries and wilson(wrong, len(queries))[1] < target_error:
                recommended[variant] = t
        rec = recommended[variant]
        t_ex: float = rec if rec is not None else (thresholds[0] if thresholds else 0.0)
        if keep_examples:
            bad = [(f[0], entries[f[1]], queries[qi]) for qi, f in enumerate(best[variant])
                   if f is not None and f[0] >= t_ex and entries[f[1]] != queries[qi]
                   and (entries[f[1]], queries[qi]) not in positive]
            examples[variant] = sorted(bad, key=lambda x: -x[0])[:keep_examples]
    return RetrievalReport(rows, len(entries), len(queries), target_error, recommended, examples)


# ---- ledger replay -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggedRequest:
    request_id: str
    ts_ms: int
    scope: str  # customer, model and a hash of everything but the embedded text
    text: str  # the last user message
    answer: str  # normalised answer text
    cost_nanos: int


_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_WS = re.compile(r"\s+")


def normalise_answer(text: str) -> str:
    """Lower-case, strip punctuation, collapse whitespace."""
    return _WS.sub(" ", _PUNCT.sub("", text.lower())).strip()


def _content_text(content: object) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "\n".join(str(p) for p in parts) if parts else None
    return None


def last_user_text(body: dict[str, Any]) -> tuple[str | None, int | None]:
    """The text of the last ``user`` message and its index (OpenAI chat and Anthropic messages)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for i in range(len(messages) - 1, -1, -1):
            m = messages[i]
            if isinstance(m, dict) and m.get("role") == "user":
                return _content_text(m.get("content")), i
        return None, None
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt, None
    return None, None


def answer_text(response_body: str) -> str:
    """The assistant's text: from an OpenAI chat / Anthropic messages JSON body, else the body itself
    (a streamed answer is logged as plain text). Tool calls count as text (their JSON)."""
    try:
        obj = json.loads(response_body)
    except (json.JSONDecodeError, ValueError):
        return response_body
    if not isinstance(obj, dict):
        return response_body
    if isinstance(obj.get("choices"), list):
        out: list[str] = []
        for ch in obj["choices"]:
            if not isinstance(ch, dict):
                continue
            msg = ch.get("message") if isinstance(ch.get("message"), dict) else {}
            text = _content_text(msg.get("content")) if msg else ch.get("text")
            if isinstance(text, str):
                out.append(text)
            if msg and msg.get("tool_calls"):
                out.append(json.dumps(msg["tool_calls"], sort_keys=True))
        return "\n".join(out)
    if isinstance(obj.get("content"), list):
        out = []
        for block in obj["content"]:
            if isinstance(block, dict) and block.get("type") == "text":
                out.append(str(block.get("text", "")))
            elif isinstance(block, dict) and block.get("type") == "tool_use":
                out.append(json.dumps({"name": block.get("name"), "input": block.get("input")}, sort_keys=True))
        return "\n".join(out)
    return response_body


_UNSCOPED = frozenset({"stream", "stream_options", "user", "metadata"})


def logged_request(row: dict[str, Any]) -> LoggedRequest | None:
    """A replayable request from a ledger row, or ``None`` (no bodies, an error, a cache hit, no user
    text, or a body that is not a JSON object)."""
    if not row.get("request_body") or row.get("response_body") is None:
        return None
    if int(row.get("status") or 0) >= 400 or row.get("error_type"):
        return None
    if str(row.get("cache") or "").startswith("hit"):
        return None  # answered from the real cache: not an answer the model really gave
    try:
        body = json.loads(row["request_body"])
    except (json.JSONDecodeError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    text, idx = last_user_text(body)
    if text is None:
        return None
    rest = {k: v for k, v in body.items() if k not in _UNSCOPED}
    if idx is not None:
        msgs = list(rest["messages"])
        msgs[idx] = {"role": "user", "content": "\x00embedded"}
        rest["messages"] = msgs
    elif "prompt" in rest:
        rest["prompt"] = "\x00embedded"
    rest.pop("model", None)
    context = hashlib.blake2b(json.dumps(rest, sort_keys=True, default=str).encode(), digest_size=12).hexdigest()
    scope = json.dumps([row.get("customer_id"), row.get("model") or body.get("model"), context])
    return LoggedRequest(str(row["request_id"]), int(row["ts_ms"]), scope, text,
                         normalise_answer(answer_text(str(row["response_body"]))), int(row.get("cost_nanos") or 0))


@dataclass
class ReplayRow:
    threshold: float
    variant: str
    requests: int
    hits: int
    wrong_hits: int
    saved_nanos: int
    examples: list[tuple[float, LoggedRequest, LoggedRequest]] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def wrong_per_request(self) -> float:
        return self.wrong_hits / self.requests if self.requests else 0.0

    @property
    def wrong_per_hit(self) -> float | None:
        return self.wrong_hits / self.hits if self.hits else None

    def as_dict(self) -> dict[str, Any]:
        wr = wilson(self.wrong_hits, self.requests)
        wh = wilson(self.wrong_hits, self.hits)
        hr = wilson(self.hits, self.requests)
        return {"threshold": self.threshold, "variant": self.variant, "requests": self.requests,
                "hits": self.hits, "wrong_hits": self.wrong_hits,
                "hit_rate": self.hit_rate, "hit_rate_ci95": list(hr),
                "wrong_per_request": self.wrong_per_request, "wrong_per_request_ci95": list(wr),
                "wrong_per_hit": self.wrong_per_hit, "wrong_per_hit_ci95": list(wh) if self.hits else None,
                "saved_nanos": self.saved_nanos}


@dataclass
class ReplayReport:
    rows: list[ReplayRow]
    requests: int
    skipped: int
    target_error: float
    recommended: dict[str, float | None]


def replay(
    requests: Sequence[LoggedRequest],
    embedder: Embedder,
    thresholds: Sequence[float],
    variants: Sequence[str] = VARIANTS,
    *,
    target_error: float = 0.01,
    extra_patterns: ExtraPatterns = (),
    keep_examples: int = 0,
    skipped: int = 0,
    policy: Policy | None = None,
) -> ReplayReport:
    """Replay ``requests`` (in the given order) into an empty simulated cache per threshold and variant.

    A request looks up the entries of its scope (with the guard: only those whose facts equal its
    own); the most similar entry hits when its cosine >= threshold; otherwise the request is inserted.
    """
    import numpy as np

    running = policy or Policy(True, tuple(extra_patterns) if not isinstance(extra_patterns, dict)
                               else tuple(extra_patterns.values()))
    judge = Judge()
    vecs = embedder.encode([r.text for r in requests]) if requests else None
    rows: list[ReplayRow] = []
    recommended: dict[str, float | None] = {}
    for variant in variants:
        pol = variant_policy(variant, running)
        recommended[variant] = None
        for t in thresholds:
            part: dict[Any, list[int]] = {}
            row = ReplayRow(t, variant, len(requests), 0, 0, 0)
            for i, r in enumerate(requests):
                key: Any = (r.scope, judge.fingerprint(r.text, pol.patterns)) if pol.guard else r.scope
                entries = part.setdefault(key, [])
                hit = None
                if entries and vecs is not None:
                    sims = np.round(vecs[entries] @ vecs[i], 6)
                    for j in np.argsort(-sims):
                        best = float(sims[j])
                        if best < t:
                            break
                        if not pol.gate_classes or gate.conflict(judge.features(requests[entries[j]].text),
                                                                 judge.features(r.text), pol.gate_classes) is None:
                            hit = (best, entries[int(j)])
                            break
                if hit is None:
                    entries.append(i)
                    continue
                row.hits += 1
                row.saved_nanos += r.cost_nanos
                cached = requests[hit[1]]
                if cached.answer != r.answer:
                    row.wrong_hits += 1
                    if len(row.examples) < keep_examples:
                        row.examples.append((hit[0], cached, r))
            rows.append(row)
            if recommended[variant] is None and requests and \
                    wilson(row.wrong_hits, row.requests)[1] < target_error:
                recommended[variant] = t
    return ReplayReport(rows, len(requests), skipped, target_error, recommended)


def requests_from_rows(rows: Iterable[dict[str, Any]]) -> tuple[list[LoggedRequest], int]:
    """Replayable requests in time order (ts_ms, then ledger order) and the number of rows skipped."""
    out: list[tuple[int, int, LoggedRequest]] = []
    skipped = 0
    for n, row in enumerate(rows):
        req = logged_request(row)
        if req is None:
            skipped += 1
        else:
            out.append((req.ts_ms, n, req))
    out.sort(key=lambda x: (x[0], x[1]))
    return [r for _, _, r in out], skipped


# ---- rendering helpers (plain text; the CLI adds rich) -------------------------------------------


def chart_lines(points: Sequence[tuple[float, float, float]], width: int = 40) -> list[str]:
    """A unicode bar chart: one line per threshold with hit rate (█) and false-hit rate (▒) bars."""
    lines = [f"{'thr':>6}  {'hit rate':<{width + 7}}  false-hit rate"]
    for t, hit, false in points:
        hb = "█" * round(hit * width)
        fb = "▒" * round(false * width)
        lines.append(f"{t:>6.3f}  {hb:<{width}} {hit * 100:5.1f}%  {fb} {false * 100:.2f}%")
    return lines


def to_csv(records: Sequence[dict[str, Any]]) -> str:
    import csv
    import io

    if not records:
        return ""
    buf = io.StringIO()
    flat = [{k: (";".join(f"{x:.6g}" for x in v) if isinstance(v, list) else v) for k, v in r.items()}
            for r in records]
    w = csv.DictWriter(buf, fieldnames=list(flat[0]), lineterminator="\n")
    w.writeheader()
    for r in flat:
        w.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()
