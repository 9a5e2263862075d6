"""The instruction gate and the guard's fixed holes, on hand-built adversarial pairs.

``tests/data/cache_adversarial.jsonl`` holds pairs that must never share a cached answer (label 0:
list values, sentence ends, multi-line YAML, number order, quoted codes, negation, languages, formats,
channels, number words, antonyms, directions, name suffixes...) and pairs whose differences are
harmless formatting (label 1). The structure checks alone decide these, at any threshold: most of the
negatives embed at cosine 0.95-1.0 with the bundled model, so no threshold separates them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmgw.cache import ablate as ab
from llmgw.cache import gate
from llmgw.cache.guard import fingerprint

PAIRS = [json.loads(line) for line in (Path(__file__).parent / "data" / "cache_adversarial.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("pair", [p for p in PAIRS if not p["label"]], ids=lambda p: p["why"])
def test_must_not_share_is_blocked_by_the_guard_or_the_gate(pair: dict[str, str]) -> None:
    assert ab.Judge().blocks(ab.Policy(), pair["a"], pair["b"]) is not None


@pytest.mark.parametrize("pair", [p for p in PAIRS if p["label"]], ids=lambda p: p["why"])
def test_harmless_formatting_is_not_blocked(pair: dict[str, str]) -> None:
    assert ab.Judge().blocks(ab.Policy(), pair["a"], pair["b"]) is None


def test_each_gate_class_catches_its_own_example_and_can_be_switched_off() -> None:
    examples = {
        "negation": ("a sofa with cushions", "a sofa without cushions"),
        "numbers": ("in three bullet points", "in five bullet points"),
        "languages": ("a caption", "a caption in French"),
        "formats": ("write a caption", "write alt text"),
        "directions": ("turn left here", "turn right here"),
        "polar": ("make it longer", "make it shorter"),
        "channels": ("an Instagram caption", "a LinkedIn caption"),
        "suffixes": ("a caption for the iPhone Pro", "a caption for the iPhone Pro Max"),
        "order": ("move 3 units to warehouse 7", "move 7 units to warehouse 3"),
    }
    assert set(examples) == set(gate.CLASSES)
    for cls, (a, b) in examples.items():
        fa, fb = gate.features(a), gate.features(b)
        assert gate.conflict(fa, fb) == cls, cls
        assert gate.conflict(fa, fb, [c for c in gate.CLASSES if c != cls]) is None, cls


def test_gate_lets_paraphrases_through() -> None:
    pairs = [("Write a short caption for this product.", "Please write a short product caption."),
             ("Don't use emojis.", "Do not use any emojis."),
             ("Make it longer and friendlier.", "Make it longer, and friendlier too."),
             ("Datasets provide access to audio and NLP tasks.", "NLP and audio tasks can be accessed with Datasets.")]
    for a, b in pairs:
        assert gate.conflict(gate.features(a), gate.features(b)) is None, (a, b)


def test_guard_holes_fixed() -> None:
    assert fingerprint("colors: black, white") != fingerprint("colors: black, red")
    assert fingerprint("colors: black, white") == fingerprint("colors: white, black")
    assert fingerprint("description: Lightweight. Waterproof.") != fingerprint("description: Lightweight. Not waterproof.")
    # a value keeps short list items and sentences, longer prose after it is prose again
    assert fingerprint("brand: Nike. Write a short caption for the product photo.") == \
        fingerprint("brand: Nike. Please write a short caption for this product photo!")
    assert fingerprint('code "SaveBig"') != fingerprint('code "SAVEBIG"')
    assert fingerprint("move 3 units to warehouse 7") != fingerprint("move 7 units to warehouse 3")
    # a colon that ends a line of prose is no empty field
    assert fingerprint("It has the following structure:\ndata/train") == fingerprint("Its structure is:\ndata/train")


def test_ablate_variants_include_config_and_per_class() -> None:
    assert ab.parse_variants("config,config-negation,guard") == ["config", "config-negation", "guard"]
    running = ab.Policy()
    assert ab.variant_policy("config-negation", running).gate_classes == tuple(c for c in gate.CLASSES
                                                                               if c != "negation")
    assert ab.variant_policy("guard", running).gate_classes == ()
    assert not ab.variant_policy("no-guard", running).guard
