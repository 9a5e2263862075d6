"""Field guard: structured facts must be equal for a semantic cache hit."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest

from llmgw.cache.guard import NULL, ExtraPatterns, extract_facts, fingerprint, fingerprint_facts


def same_facts(a: str, b: str, extra_patterns: ExtraPatterns = ()) -> bool:
    """What the cache compares: a semantic hit needs equal fingerprints."""
    return fingerprint(a, extra_patterns) == fingerprint(b, extra_patterns)


# --- the story --------------------------------------------------------------------------------
def test_brand_null_vs_nike_never_match() -> None:
    a = "Write a short caption for this product photo.\nbrand: null\nsku: 10482"
    b = "Write a short caption for this product photo.\nbrand: Nike\nsku: 10482"
    assert not same_facts(a, b)
    assert fingerprint(a) != fingerprint(b)
    assert ("brand", NULL) in extract_facts(a)
    assert ("brand", "nike") in extract_facts(b)


@pytest.mark.parametrize(
    "empty", ["brand: null", "brand:", 'brand=""', "brand: None", "brand: N/A", "brand = nil"]
)
def test_every_empty_spelling_is_null_and_differs_from_a_value(empty: str) -> None:
    assert (("brand", NULL)) in extract_facts(f"{empty}\nsku: 1")
    assert same_facts(f"{empty}\nsku: 1", "brand: null\nsku: 1")
    assert not same_facts(f"{empty}\nsku: 1", "brand: Nike\nsku: 1")


def test_sku_10482_vs_10483_never_match() -> None:
    assert not same_facts("Caption for SKU 10482", "Caption for SKU 10483")
    assert not same_facts("sku=10482 brand=Nike", "sku=10483 brand=Nike")
    assert not same_facts("Caption SKU-10482 please", "Caption SKU-10483 please")


def test_same_facts_with_paraphrased_prose_match() -> None:
    a = "Write a short, catchy caption for this product.\nbrand: Nike\nsku: 10482"
    b = "Please   produce a catchy caption (short) for the product shown!\n  Brand : nike \nSKU: 10482."
    assert same_facts(a, b)
    assert fingerprint(a) == fingerprint(b)


# --- kinds ------------------------------------------------------------------------------------
def test_json_fields_are_read_by_their_leaf_key() -> None:
    f = extract_facts('Item: {"brand": null, "sku": 10482, "meta": {"tags": ["a", "B"], "w": 1.50}} ok')
    assert {
        ("brand", NULL),
        ("sku", "10482"),
        ("tags", "a, b"),
        ("w", "1.5"),
    } <= f
    assert not same_facts('{"brand": null}', '{"brand": "Nike"}')
    assert same_facts('{"brand":"Nike","sku":10482}', 'x {"sku": 10482,  "brand": "nike"} y')
    # JSON and key: value spell the same fact
    assert same_facts('{"brand": "Nike"}', "brand: Nike")


def test_invalid_json_still_yields_fields() -> None:
    f = extract_facts("{'brand': 'Nike', 'sku': 10482,}")
    assert ("brand", "nike") in f and ("sku", "10482") in f


def test_key_value_pairs_many_per_line_and_across_lines() -> None:
    f = extract_facts("brand: Nike, sku: 10482; color=red | size = 42\nmaterial:leather")
    assert {
        ("brand", "nike"),
        ("sku", "10482"),
        ("color", "red"),
        ("size", "42"),
        ("material", "leather"),
    } <= f
    assert ("brand", "nike") in extract_facts("brand: Nike sku: 10482")
    assert ("sku", "10482") in extract_facts("brand: Nike sku: 10482")


def test_keys_case_insensitive_values_case_folded_and_trimmed() -> None:
    assert same_facts("BRAND:   Nike  ", "brand: nike.")
    assert same_facts('brand="Nike"', "brand = Nike")


def test_numbers_with_and_without_separators() -> None:
    assert same_facts("weighs 10,482 grams", "weighs 10482 grams")
    assert same_facts("costs 10.50", "costs 10.5")
    assert not same_facts("costs 10.5", "costs 10.6")
    assert not same_facts("zip 02134", "zip 2134")  # leading zeros kept
    assert same_facts("costs $10", "costs 10")  # the dollar is the default currency
    assert not same_facts("costs €10", "costs 10")
    assert not same_facts("10% off", "10 off")
    assert ("#num", "-5") in extract_facts("delta -5 today")
    assert same_facts("the total is 42.", "the total is 42")


def test_quoted_strings_all_styles() -> None:
    f = extract_facts("say \"Just Do It\" and 'Air Max' but it's the shoe's name")
    assert ("#quote", "Just Do It") in f and ("#quote", "Air Max") in f
    assert len([k for k, _ in f if k == "#quote"]) == 2  # apostrophes are not quotes
    assert same_facts("title “Air Max”", 'title "Air Max"')
    assert same_facts("title ‘Air Max’", "title «Air Max»")
    assert not same_facts('title "Air Max"', 'title "Air Force"')


def test_identifiers_with_digits() -> None:
    f = extract_facts("Order ORD_99812 item AB12-34 model gpt-4o ver v1.2.3 on 2024-01-05, ip 10.0.0.1")
    for ident in ("ord_99812", "ab12-34", "gpt-4o", "1.2.3", "2024-01-05", "10.0.0.1"):
        assert ("#id", ident) in f
    assert not same_facts("order ORD_99812", "order ORD_99813")
    assert not same_facts("on 2024-01-05", "on 2024-05-01")
    assert same_facts("order ord_99812", "ORDER ORD_99812!")


def test_extra_patterns_by_index_and_name() -> None:
    pats = [r"\bEAN\d{8}\b"]
    assert ("#x:0", "EAN12345678") in extract_facts("code EAN12345678", pats)
    assert not same_facts("code EAN12345678", "code EAN12345679", pats)
    named = {"colour": r"\b(?:red|green|blue)\b"}
    assert ("#x:colour", "red") in extract_facts("a red shoe", named)
    assert not same_facts("a red shoe", "a blue shoe", named)
    assert same_facts("a red shoe", "a blue shoe")  # without the pattern, colours are prose


def test_urls_are_facts_not_key_value_pairs() -> None:
    f = extract_facts("See https://example.com/p?brand=nike&sku=1.")
    assert ("#url", "https://example.com/p?brand=nike&sku=1") in f
    assert not any(k in ("https", "brand", "sku") for k, _ in f)
    assert not same_facts("img https://x.com/a.png", "img https://x.com/b.png")
    assert ("image", "https://x.com/a.png") in extract_facts("image: https://x.com/a.png, size: 3")


def test_times_are_facts_not_key_value_pairs() -> None:
    f = extract_facts("Deliver at 10:30 or 9:05 PM")
    assert ("#time", "10:30") in f and ("#time", "9:05pm") in f
    assert not any(k in ("10", "9") for k, _ in f)
    assert not same_facts("at 10:30", "at 10:31")
    assert ("#num", "10") not in f


def test_unicode_quotes_and_whitespace_insensitive() -> None:
    assert same_facts("name “Nike   Air”\n\n", "name  “Nike Air”")


def test_no_facts_in_plain_prose() -> None:
    assert extract_facts("Write a nice caption for this product photo please.") == frozenset()
    assert same_facts("Describe the shoe.", "Tell me about the trainer!")


def test_fingerprint_is_stable_across_processes() -> None:
    text = 'brand: Nike\nsku: 10482 {"a": [1, null]} "q" ORD_1 10:30'
    code = f"from llmgw.cache.guard import fingerprint; print(fingerprint({text!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == fingerprint(text)
    assert fingerprint_facts(frozenset()) == fingerprint("plain prose")


# --- property-style -----------------------------------------------------------------------------
_BRANDS = [None, "Nike", "Adidas", "Puma", "New Balance", "", "Asics"]
_PROSE = [
    "Write a short caption for this product photo.",
    "Please write a   short caption for the product in the photo!",
    "Caption this product photo briefly",
    "Give me a brief caption for the photo of this product.",
]


def _render(rng: random.Random, brand: str | None, sku: int, colour: str) -> str:
    style = rng.choice(["colon", "equals", "json", "inline"])
    if style == "json":
        facts = json.dumps({"brand": brand, "sku": sku, "colour": colour})
    else:
        b = rng.choice(["null", "", "None", "N/A"]) if brand is None else brand
        if style == "colon":
            facts = f"brand: {b}\nsku: {sku}\ncolour: {colour}"
        elif style == "equals":
            facts = (
                f'brand="{b}" sku={sku} colour={colour}'
                if rng.random() < 0.5
                else f"brand={b} sku={sku} colour={colour}"
            )
        else:
            facts = f"Brand: {b}, SKU: {sku:,}, Colour: {colour}"
    if rng.random() < 0.5:
        facts = facts.upper() if rng.random() < 0.2 else facts
    prose = rng.choice(_PROSE)
    return f"{prose}\n{facts}" if rng.random() < 0.5 else f"{facts}\n\n{prose}"


def test_property_match_iff_field_values_equal() -> None:
    rng = random.Random(20240415)
    seen = {True: 0, False: 0}
    for _ in range(400):
        fa = (rng.choice(_BRANDS), rng.choice([10482, 10483, 99812, 1000]), rng.choice(["red", "blue"]))
        fb = (
            fa
            if rng.random() < 0.5
            else (rng.choice(_BRANDS), rng.choice([10482, 10483, 99812, 1000]), rng.choice(["red", "blue"]))
        )
        norm = lambda f: (None if not f[0] else f[0].casefold(), f[1], f[2])  # noqa: E731
        expected = norm(fa) == norm(fb)
        a, b = _render(rng, *fa), _render(rng, *fb)
        assert same_facts(a, b) is expected, (a, b)
        assert (fingerprint(a) == fingerprint(b)) is expected
        seen[expected] += 1
    assert seen[True] > 100 and seen[False] > 100


def test_fast_enough() -> None:
    text = (
        "Write a short catchy caption for this product photo, mention the material.\n"
        'brand: Nike, sku: 10482, size=42\n{"brand": "Nike", "sku": 10482, "tags": ["running", "men"]}\n'
        'Order ORD_99812 shipped 2024-01-05 at 10:30, see https://example.com/p/10482 "Air Max".'
    )
    extract_facts(text)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        extract_facts(text)
    per = (time.perf_counter() - t0) / n
    assert per < 1e-3  # generous bound for slow CI; measured ~110 us here


def test_the_windowed_token_scan_finds_what_the_plain_scan_finds() -> None:
    """``guard._tokens`` scans only around digits; on random mixes of the pieces the token
    patterns care about (times with am/pm after a space, currency signs before one, ids, lists,
    decimals, newlines) it returns exactly the matches of the plain ``_TOKEN.finditer``."""
    import random

    from llmgw.cache import guard as g

    pieces = ["10:30", "am", "a.m.", "PM", "€", "€5", "£ 12", "-3", "3-4", "v2.1", "1,000", "1,000.50", "12%",
              "20 %", "abc-12", "x1", "1x", "SKU-1234/B", "3.5kg", "move", "3", "units", "warehouse", "7", "\n",
              "the", "brand:", "Nike;", "(", ")", "'12'", '"AB-1"', "12:00:00", "1.5", "5.", ".5", "#12", "@3",
              "2024-01-02", "x_1", "-", "–", "1e5", "٣", "½", "²"]
    rnd = random.Random(7)
    checked = 0
    for _ in range(20_000):
        text = "".join(rnd.choice(pieces) + rnd.choice([" ", "", " ", "\n", "  ", ", ", "\t"])
                       for _ in range(rnd.randint(1, 14)))
        plain = [(m.lastgroup, m.span()) for m in g._TOKEN.finditer(text)]
        assert [(m.lastgroup, m.span()) for m in g._tokens(text)] == plain, repr(text)
        checked += bool(plain)
    assert checked > 15_000  # most texts had tokens to find


def test_the_key_search_and_the_field_lead_decide_what_their_regexes_decide() -> None:
    """``guard._kv_head`` starts its search after the prose before a separator and
    ``guard._field_lead`` replaces an end-anchored regex; on random mixes of keys, separators,
    blanks, bullets, quotes, URLs and times both give exactly what the plain regexes give, from
    every start position."""
    import random

    from llmgw.cache import guard as g

    pieces = ["brand", "Brand", "sku", "in_stock", "a.b-c", '"key"', "'k'", "x" * 70, "y" * 40, '"' + "q" * 64 + '"', "ключ", "_id", "10", "10:30",
              ":", "=", "://", " : ", "=//", "-", "*", "•", ",", ";", "|", "(", "[", "{", "http://a.b/c", "Nike",
              "the product", "@", "#", "/", "?", "&", ".", "é", "\t"]
    rnd = random.Random(11)
    heads = leads = 0
    for _ in range(6_000):
        text = "".join(rnd.choice(pieces) + rnd.choice([" ", "", " ", "\n", "  ", "\t", ": ", "- "])
                       for _ in range(rnd.randint(1, 12)))
        for at in range(len(text) + 1):
            plain = g._KV_HEAD.search(text, at)
            fast = g._kv_head(text, at)
            assert (plain and plain.span(), plain and plain.group(1)) == (fast and fast.span(), fast and fast.group(1)), \
                (text, at)
            heads += plain is not None
            part = text[at:].split("\n")[0]
            assert g._field_lead(part) == (g._FIELD_LEAD.search(part) is not None), repr(part)
            leads += g._field_lead(part)
    assert heads > 20_000 and leads > 5_000  # both sides of each decision were exercised
