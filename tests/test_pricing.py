from __future__ import annotations

import tomllib
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest

from llmgw import config
from llmgw.errors import ConfigError
from llmgw.pricing import (
    Price,
    PriceBook,
    cost_nanos,
    parse_usd_per_mtok,
)
from llmgw.units import usd
from llmgw.usage import Usage

OPENAI_MODELS = [
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o3-mini", "o4-mini",
    "gpt-5", "gpt-5-mini", "gpt-5-nano",
    "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
]
ANTHROPIC_MODELS = [
    "claude-opus-4-5", "claude-opus-4-1", "claude-opus-4", "claude-sonnet-4-5", "claude-sonnet-4",
    "claude-3-7-sonnet", "claude-haiku-4-5", "claude-3-5-haiku", "claude-3-haiku",
]


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.load()


# ---- the bundled file -------------------------------------------------------------------------


def test_bundled_file_has_every_listed_model(book: PriceBook) -> None:
    for model in OPENAI_MODELS:
        assert f"openai/{model}" in book, model
    for model in ANTHROPIC_MODELS:
        assert f"anthropic/{model}" in book, model


def test_bundled_file_header_and_value_precision() -> None:
    text = resources.files("llmgw").joinpath("data").joinpath("pricing.toml").read_text("utf-8")
    assert "2026-11" in text.split("[")[0]
    for entry in tomllib.loads(text).values():
        for value in entry.values():
            assert -Decimal(str(value)).as_tuple().exponent <= 3  # at most 3 decimals


def test_anthropic_cache_prices_follow_the_multipliers(book: PriceBook) -> None:
    for model in ANTHROPIC_MODELS:
        if model == "claude-3-haiku":  # Anthropic lists rounded cache prices for Haiku 3
            continue
        price = book.lookup("anthropic", model)
        assert price is not None
        assert price.cached_input * 10 == price.input, model
        assert price.cache_write * 4 == price.input * 5, model


def test_known_prices(book: PriceBook) -> None:
    assert book.lookup("openai", "gpt-4o-mini") == Price(input=150, output=600, cached_input=75, cache_write=150)
    assert book.lookup("anthropic", "claude-haiku-4-5") == Price(
        input=1000, output=5000, cached_input=100, cache_write=1250)
    # embeddings: input only; a missing cached/cache_write price falls back to input
    assert book.lookup("openai", "text-embedding-3-small") == Price(20, 0, 20, 20)


# ---- exact costs ------------------------------------------------------------------------------


def test_cost_gpt_4o_mini_with_cached_tokens(book: PriceBook) -> None:
    usage = Usage.from_openai({"prompt_tokens": 1000, "completion_tokens": 200,
                               "prompt_tokens_details": {"cached_tokens": 400}})
    # 600 fresh * 150 + 400 cached * 75 + 200 out * 600
    assert cost_nanos(book.lookup("openai", "gpt-4o-mini"), usage) == 90_000 + 30_000 + 120_000
    assert usd(240_000) == "$0.00024"


def test_cost_claude_haiku_4_5_with_cache_read_and_write(book: PriceBook) -> None:
    usage = Usage.from_anthropic({"input_tokens": 100, "cache_read_input_tokens": 2000,
                                  "cache_creation_input_tokens": 1000, "output_tokens": 300})
    assert usage.prompt_tokens == 3100
    price = book.lookup("anthropic", "claude-haiku-4-5-20251001")
    # 100 fresh * 1000 + 2000 read * 100 + 1000 written * 1250 + 300 out * 5000
    assert cost_nanos(price, usage) == 100_000 + 200_000 + 1_250_000 + 1_500_000 == 3_050_000
    assert usd(cost_nanos(price, usage)) == "$0.00305"


def test_cost_is_an_int_and_never_negative_on_odd_usage(book: PriceBook) -> None:
    price = book.lookup("openai", "gpt-4o")
    odd = Usage(prompt_tokens=10, cached_tokens=20, completion_tokens=1)  # cached > prompt
    cost = cost_nanos(price, odd)
    assert isinstance(cost, int) and cost == 20 * 1250 + 10_000


def test_unknown_model_costs_zero(book: PriceBook) -> None:
    assert book.lookup("openai", "gpt-99") is None
    assert book.lookup("vllm", "llama") is None
    assert cost_nanos(None, Usage(prompt_tokens=1000, completion_tokens=1000)) == 0


def test_summing_many_costs_stays_exact(book: PriceBook) -> None:
    price = book.lookup("openai", "gpt-4o-mini")
    usage = Usage(prompt_tokens=7, cached_tokens=3, completion_tokens=1)
    one = cost_nanos(price, usage)  # 4*150 + 3*75 + 600 = 1425
    assert one == 1425
    total = sum(cost_nanos(price, usage) for _ in range(100_000))
    assert total == 142_500_000
    assert usd(total) == "$0.1425"
    # mixed models and sizes: the sum equals the exact Decimal computation from the list prices
    usages = [Usage(prompt_tokens=13 + i % 997, cached_tokens=i % 13, completion_tokens=i % 101) for i in range(20_000)]
    models = ["gpt-4o-mini", "gpt-4.1-nano", "gpt-5-nano", "o4-mini"]
    total = sum(cost_nanos(book.lookup("openai", models[i % 4]), u) for i, u in enumerate(usages))
    list_prices = {"gpt-4o-mini": ("0.15", "0.075", "0.60"), "gpt-4.1-nano": ("0.10", "0.025", "0.40"),
           "gpt-5-nano": ("0.05", "0.005", "0.40"), "o4-mini": ("1.10", "0.275", "4.40")}
    expected = Decimal(0)
    for i, u in enumerate(usages):
        inp, cached, out = (Decimal(v) for v in list_prices[models[i % 4]])
        fresh = u.prompt_tokens - u.cached_tokens
        expected += (fresh * inp + u.cached_tokens * cached + u.completion_tokens * out) / 1_000_000
    assert Decimal(total).scaleb(-9) == expected


# ---- lookup -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "model", "key"), [
    ("anthropic", "claude-haiku-4-5-20251001", "anthropic/claude-haiku-4-5"),
    ("anthropic", "claude-3-5-haiku-20241022", "anthropic/claude-3-5-haiku"),
    ("anthropic", "claude-sonnet-4-20250514", "anthropic/claude-sonnet-4"),
    ("anthropic", "claude-3-7-sonnet-latest", "anthropic/claude-3-7-sonnet"),
    ("openai", "gpt-4o-2024-08-06", "openai/gpt-4o"),
    ("openai", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
    ("openai", "o3-mini-2025-01-31", "openai/o3-mini"),
])
def test_date_suffix_lookup(book: PriceBook, provider: str, model: str, key: str) -> None:
    p, _, m = key.partition("/")
    assert book.lookup(provider, model) == book.lookup(p, m) is not None


def test_lookup_exact_wins_over_stripped() -> None:
    book = PriceBook.load({"openai/gpt-4o-2024-05-13": {"input": 5, "output": 15}})
    assert book.lookup("openai", "gpt-4o-2024-05-13") == Price(5000, 15000, 5000, 5000)
    assert book.lookup("openai", "gpt-4o-2024-08-06") == book.lookup("openai", "gpt-4o")


def test_lookup_falls_back_to_provider_type() -> None:
    book = PriceBook.load({"openai-eu/gpt-4o-mini": {"input": 0.165}})
    assert book.lookup("openai-eu", "gpt-4o", provider_type="openai") == book.lookup("openai", "gpt-4o")
    assert book.lookup("openai-eu", "gpt-4o") is None  # no type given: no fallback
    # a provider's own entry wins over the type's
    eu = book.lookup("openai-eu", "gpt-4o-mini-2024-07-18", provider_type="openai")
    assert eu is not None and eu.input == 165 and eu.output == 0
    assert book.lookup("claude-eu", "claude-haiku-4-5-20251001", provider_type="anthropic") is not None


# ---- overrides --------------------------------------------------------------------------------


def test_partial_override_merges_over_bundled() -> None:
    book = PriceBook.load({"openai/gpt-4o-mini": {"input": "0.2"}, "openai/gpt-4o": {"output": 12}})
    assert book.lookup("openai", "gpt-4o-mini") == Price(input=200, output=600, cached_input=75, cache_write=200)
    assert book.lookup("openai", "gpt-4o") == Price(input=2500, output=12000, cached_input=1250, cache_write=2500)
    assert PriceBook.load().lookup("openai", "gpt-4o-mini") == Price(150, 600, 75, 150)  # bundled untouched


def test_override_adds_a_new_model() -> None:
    book = PriceBook.load({"vllm/meta-llama/Llama-3.1-8B-Instruct": {"input": 0, "output": 0.001}})
    assert book.lookup("vllm", "meta-llama/Llama-3.1-8B-Instruct") == Price(0, 1, 0, 0)


def test_overrides_from_config_objects(tmp_path: Path) -> None:
    path = tmp_path / "llmgw.toml"
    path.write_text('[pricing."anthropic/claude-haiku-4-5"]\ncache_write = 2\noutput = 4.5\n')
    cfg = config.load(path, environ={})
    book = PriceBook.load(cfg.pricing)
    assert book.lookup("anthropic", "claude-haiku-4-5") == Price(
        input=1000, output=4500, cached_input=100, cache_write=2000)


@pytest.mark.parametrize("value", [0.0001, "0.1234", "1e-5", Decimal("0.0005")])
def test_non_integer_nano_price_is_rejected(value: object) -> None:
    with pytest.raises(ConfigError, match="not a whole number of nano-dollars per token") as info:
        PriceBook.load({"openai/gpt-4o": {"input": value}})
    assert info.value.message.startswith('pricing."openai/gpt-4o".input: ')


@pytest.mark.parametrize(("value", "problem"), [
    (True, "expected an amount in USD"),
    ("abc", "expected an amount in USD"),
    (float("inf"), "expected a finite amount in USD"),
    (-1, "must not be negative, got -1"),
    ([1], "expected an amount in USD"),
])
def test_bad_prices_rejected(value: object, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        PriceBook.load({"openai/gpt-4o": {"input": value}})


def test_bad_override_shapes_rejected() -> None:
    with pytest.raises(ConfigError, match='pricing."openai/gpt-4o".inptu: unknown key'):
        PriceBook.load({"openai/gpt-4o": {"inptu": 1}})
    with pytest.raises(ConfigError, match='pricing."openai/gpt-4o": expected a table of prices, got 3'):
        PriceBook.load({"openai/gpt-4o": 3})
    with pytest.raises(ConfigError, match='expected a "provider/model" key'):
        PriceBook.load({"gpt-4o": {"input": 1}})


def test_parse_is_exact_for_floats_and_strings() -> None:
    assert parse_usd_per_mtok(0.075, where="x") == 75
    assert parse_usd_per_mtok("0.075", where="x") == 75
    assert parse_usd_per_mtok(18.75, where="x") == 18750
    assert parse_usd_per_mtok(3, where="x") == 3000
    assert parse_usd_per_mtok(" 1_000 ", where="x") == 1_000_000
    assert isinstance(parse_usd_per_mtok(0.1, where="x"), int)


def test_custom_bundled_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text('["x/m"]\ninput = 1\n')
    assert list(PriceBook.load(bundled=path)) == ["x/m"]
    path.write_text('["x/m"]\ninput = 0.0001\n')
    with pytest.raises(ConfigError, match=r'prices.toml: "x/m".input: 0.0001 USD'):
        PriceBook.load(bundled=path)
