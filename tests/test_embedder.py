"""The bundled embedding model (offline, deterministic, plausible similarities, the known
field-blindness)."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import llmgw
from llmgw.cache.embedder import (
    BUNDLED_DIM,
    BUNDLED_MODEL,
    Embedder,
    Model2VecEmbedder,
)
from llmgw.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
BUNDLED_DIR = Path(llmgw.__file__).parent / "data" / "embeddings" / BUNDLED_MODEL

PARAPHRASES = [
    ("How do I reset my password?", "What are the steps to change my password?"),
    ("Write a short caption for a red running shoe.", "Give me a brief caption for a red running trainer."),
    ("What is the capital of France?", "Which city is the capital of France?"),
]
UNRELATED = [
    ("How do I reset my password?", "The weather in Lisbon is sunny today."),
    ("Write a short caption for a red running shoe.", "Explain the tax rules for capital gains."),
    ("What is the capital of France?", "Sort this list of integers in Python."),
]


@pytest.fixture(scope="module")
def model() -> Iterator[Model2VecEmbedder]:
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    try:
        emb = Model2VecEmbedder()
    finally:
        mp.undo()
    yield emb
    emb.close()


def cos(e: Embedder, a: str, b: str) -> float:
    va, vb = e.encode([a, b])
    return float(va @ vb)


def test_bundled_model_is_shipped_with_licence_and_notice() -> None:
    d = BUNDLED_DIR
    assert d.name == BUNDLED_MODEL
    for name in ("model.safetensors", "tokenizer.json", "config.json", "LICENSE", "NOTICE", "README.md"):
        assert (d / name).is_file(), name
    assert "Apache License" in (d / "LICENSE").read_text()
    assert "sentence-transformers/all-MiniLM-L6-v2" in (d / "NOTICE").read_text()
    assert "license: apache-2.0" in (d / "README.md").read_text()
    assert sum(p.stat().st_size for p in d.iterdir()) < 15_000_000


def test_bundled_model_loads_offline_with_expected_dim(model: Model2VecEmbedder) -> None:
    assert isinstance(model, Embedder)
    assert model.dim == BUNDLED_DIM
    out = model.encode(["hello world", "a caption for a shoe"])
    assert out.shape == (2, BUNDLED_DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert model.encode([]).shape == (0, BUNDLED_DIM)


def test_deterministic_across_calls_and_batches(model: Model2VecEmbedder) -> None:
    texts = ["brand: Nike, colour: red", "What is the capital of France?"]
    a = model.encode(texts)
    b = model.encode(texts)
    c = np.vstack([model.encode([t]) for t in texts])
    assert np.array_equal(a, b)
    np.testing.assert_allclose(a, c, atol=1e-6)


def test_single_encode_runs_many_times(model: Model2VecEmbedder) -> None:
    """Smoke, not a timing assert: single-text encodes (the cache's hot path) work in a loop."""
    prompt = "Write a product caption. brand: Nike, sku: 10482, colour: red, size: 42"
    t0 = time.perf_counter()
    for _ in range(200):
        v = model.encode([prompt])
    elapsed = time.perf_counter() - t0
    assert v.shape == (1, BUNDLED_DIM)
    print(f"single encode: {elapsed / 200 * 1e6:.0f} us")


def test_paraphrases_score_higher_than_unrelated(model: Model2VecEmbedder) -> None:
    para = [cos(model, a, b) for a, b in PARAPHRASES]
    unrel = [cos(model, a, b) for a, b in UNRELATED]
    for (a, _), p in zip(PARAPHRASES, para, strict=True):
        for (ua, _), u in zip(UNRELATED, unrel, strict=True):
            if a == ua:
                assert p > u + 0.2, (a, p, u)
    assert min(para) > max(unrel)


def test_known_weakness_field_flip_scores_as_near_duplicate(model: Model2VecEmbedder) -> None:
    """Documents why the field guard exists: a mean of token vectors barely moves when one field
    changes, so ``brand: null`` vs ``brand: Nike`` clears any sensible threshold."""
    prompt = ("Write a short, friendly e-commerce caption for the product in this photo. Product metadata: "
              "category: running shoes, colour: white/grey, material: mesh upper, sole: rubber, "
              "size range: 36-46, brand: {}. Keep it under 30 words and mention the colour.")
    assert cos(model, prompt.format("null"), prompt.format("Nike")) >= 0.95
    sku = ("Write a short caption for the product photo. Product: white running trainer with mesh upper "
           "and rubber sole, sku: {}. Mention the colour.")
    assert cos(model, sku.format("10482"), sku.format("10483")) >= 0.95
    # ... and word order is invisible
    assert cos(model, "dog bites man", "man bites dog") > 0.999


def test_missing_local_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such directory"):
        Model2VecEmbedder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a model2vec model"):
        Model2VecEmbedder(tmp_path / "empty")


def test_hub_id_offline_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="network"):
        Model2VecEmbedder("minishlab/potion-base-8M")


def test_local_directory_loads(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(BUNDLED_DIR, tmp_path / "m")
    emb = Model2VecEmbedder(tmp_path / "m")
    assert emb.dim == BUNDLED_DIM


def test_wheel_ships_the_model(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources (so no build/ lands in the checkout) and look inside."""
    import shutil

    src = tmp_path / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(out)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(out.glob("llmgw-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    prefix = f"llmgw/data/embeddings/{BUNDLED_MODEL}/"
    for name in ("model.safetensors", "tokenizer.json", "config.json", "LICENSE", "NOTICE", "README.md",
                 "modules.json"):
        assert prefix + name in names, name


def _fuzz_texts() -> list[str]:
    import random

    r = random.Random(7)
    alphabet = "ab Z9_-.,!?\t\n\r\"'{}[]()<>@#$%^&*+=|\\/~`;:UNKPADuNk"
    texts = ["".join(r.choice(alphabet) for _ in range(r.randrange(0, 80))) for _ in range(2000)]
    texts += ["[UNK] here", "x[PAD]y", "[unk]", "[Unk] [pad]", "a" * 150 + " short", "word " * 700,
              "Write a caption. brand: Nike, sku: 10482, colour: red, size: 42",
              '{"brand": null, "price": "$19.99"} don\'t re-use it_now', "tab\tnew\nline\rcr", "",
              "héllo wörld", "日本語", "ctrl\x00\x0b\x0c\x7fchars", "emoji 🙂 ok"]
    return texts


def test_word_cache_tokens_equal_the_tokenizer(model: Model2VecEmbedder) -> None:
    """The ASCII fast path's token ids are exactly the tokenizer's (before unknown-token removal);
    texts it does not handle (non-ASCII, control characters, added tokens) return None."""
    tok = model._model.tokenizer
    assert model._words is not None  # the bundled model is BERT uncased
    handled = 0
    for text in _fuzz_texts():
        got = model._word_ids(text)
        if got is None:
            continue
        handled += 1
        assert got == tok.encode(text, add_special_tokens=False).ids, repr(text)
    assert handled > 1500
    assert model._word_ids("héllo") is None and model._word_ids("a\x00b") is None
    assert model._word_ids("x [UNK] y") is None


def test_single_text_fast_path_matches_the_library(model: Model2VecEmbedder) -> None:
    """One text (the cache's hot path) skips StaticModel.encode, and the bundled model loads without
    model2vec (``_PlainModel``); the vector is still the library's."""
    from model2vec import StaticModel

    import llmgw

    library = StaticModel.from_pretrained(Path(llmgw.__file__).parent / "data" / "embeddings" / BUNDLED_MODEL,
                                          normalize=True, force_download=False)
    plain = Model2VecEmbedder()
    for text in _fuzz_texts()[::10] + ["word " * 700, "a" * 5000, "é" * 3000 + " prix: 12 €"]:
        fast = plain.encode([text])
        lib = library.encode([text], show_progress_bar=False, use_multiprocessing=False)
        lib = lib / max(float(np.linalg.norm(lib)), 1e-30)
        assert fast.shape == (1, BUNDLED_DIM) and fast.dtype == np.float32 and fast.flags.c_contiguous
        np.testing.assert_allclose(fast[0], lib[0], atol=1e-6, err_msg=repr(text))


def test_the_bundled_model_embeds_one_text_without_importing_model2vec() -> None:
    """The daemon's cache process only embeds one text at a time: it never pays for model2vec's
    imports (huggingface_hub, httpx, trio: ~40 MB); a batch still goes through the library."""
    import subprocess
    import sys

    code = ("import sys; from llmgw.cache.embedder import Model2VecEmbedder; e = Model2VecEmbedder(); "
            "v = e.encode(['brand: Nike; a red running shoe']); "
            "print(v.shape, 'model2vec' in sys.modules, 'huggingface_hub' in sys.modules); "
            "e.encode(['a', 'b']); print('model2vec' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [f"(1, {BUNDLED_DIM}) False False", "True"], out.stdout
