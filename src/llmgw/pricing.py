"""Model prices and the cost of one usage record, in integer nano-dollars.

Owns the bundled price list (``data/pricing.toml``, USD per million tokens) merged with the
``[pricing]`` overrides from the config, the model lookup (exact, then without a date suffix, then
under the provider's type) and the cost of a ``Usage``.

Invariants:

* Money is an ``int`` of nano-dollars (1e-9 USD). A price of X USD per million tokens is X * 1000
  nano-dollars per token, so a price must have at most 3 decimals; anything finer is rejected with
  a ``ConfigError`` rather than rounded.
* Prices are parsed exactly by ``units.parse_usd`` (a float as written, ``str(0.15)``); no float ever
  takes part in money arithmetic, so summing any number of costs is exact.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from llmgw.errors import ConfigError, UsageError
from llmgw.tomltext import dotted
from llmgw.tomltext import show as _show
from llmgw.units import parse_usd
from llmgw.usage import Usage

PRICE_FIELDS = ("input", "output", "cached_input", "cache_write")

BUNDLED_NAME = "pricing.toml"

# A trailing date or "-latest": -20251001, -2024-08-06, -latest.
_DATE_SUFFIX = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2}|latest)$")


@dataclass(frozen=True, slots=True)
class Price:
    """Integer nano-dollars per token."""

    input: int
    output: int
    cached_input: int
    cache_write: int


def parse_usd_per_mtok(value: object, *, where: str) -> int:
    """A price in USD per million tokens (number or decimal string) → nano-dollars per token.

    ``where`` prefixes the error message (``"llmgw.toml: pricing."x/y".input"``).
    """
    try:
        per_mtok = parse_usd(value)
    except UsageError as e:
        raise ConfigError(f"{where}: {e.message}") from None
    nanos, rest = divmod(per_mtok, 1_000_000)  # X USD per million tokens = X * 1000 nano-dollars per token
    if rest:
        raise ConfigError(f"{where}: {_show(value)} USD per million tokens is not a whole number of nano-dollars "
                          "per token (use at most 3 decimals)")
    return nanos


def _quote_key(key: str) -> str:
    return dotted(key)


def _override_fields(override: object, *, where: str) -> dict[str, object]:
    """The fields set in one override: a dict (raw TOML) or an object with the price attributes."""
    if isinstance(override, Mapping):
        unknown = [k for k in override if k not in PRICE_FIELDS]
        if unknown:
            raise ConfigError(
                f"{where}.{_quote_key(str(unknown[0]))}: unknown key (known: {', '.join(PRICE_FIELDS)})"
            )
        items = {k: override[k] for k in PRICE_FIELDS if k in override}
    elif any(hasattr(override, k) for k in PRICE_FIELDS):
        items = {k: getattr(override, k, None) for k in PRICE_FIELDS}
    else:
        raise ConfigError(f"{where}: expected a table of prices, got {_show(override)}")
    return {k: v for k, v in items.items() if v is not None}


def _parse_entry(fields: Mapping[str, object], *, where: str) -> dict[str, int]:
    return {k: parse_usd_per_mtok(v, where=f"{where}.{k}") for k, v in fields.items()}


def _resolve(fields: Mapping[str, int]) -> Price:
    """Fill the gaps: missing input/output cost 0; cache reads and writes default to the input price."""
    input_ = fields.get("input", 0)
    return Price(
        input=input_,
        output=fields.get("output", 0),
        cached_input=fields.get("cached_input", input_),
        cache_write=fields.get("cache_write", input_),
    )


def _check_key(key: object, *, where: str) -> str:
    if not isinstance(key, str) or "/" not in key or key.startswith("/") or key.endswith("/"):
        raise ConfigError(f'{where}: expected a "provider/model" key, got {_show(key)}')
    return key


def _read_bundled_text() -> tuple[str, str]:
    return BUNDLED_NAME, resources.files("llmgw").joinpath("data").joinpath(BUNDLED_NAME).read_text("utf-8")


@lru_cache(maxsize=1)
def _bundled_fields() -> dict[str, dict[str, int]]:
    name, text = _read_bundled_text()
    return _parse_price_doc(name, text)


def _parse_price_doc(name: str, text: str) -> dict[str, dict[str, int]]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: invalid TOML: {exc}") from None
    out: dict[str, dict[str, int]] = {}
    for key, entry in doc.items():
        where = f"{name}: {_quote_key(key)}"
        _check_key(key, where=where)
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table, got {_show(entry)}")
        out[key] = _parse_entry(_override_fields(entry, where=where), where=where)
    return out


class PriceBook:
    """``provider/model`` → ``Price``; the bundled list with config overrides merged over it."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices: dict[str, Price] = dict(prices)

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, *, bundled: Path | None = None) -> PriceBook:
        """Bundled prices (or the file ``bundled``) with ``overrides`` merged field by field.

        An override is a dict of USD-per-million values (the raw ``[pricing."p/m"]`` table) or an
        object with ``input``/``output``/``cached_input``/``cache_write`` attributes (``None`` =
        keep the bundled value), such as ``config.PriceOverride``.
        """
        if bundled is None:
            fields = {k: dict(v) for k, v in _bundled_fields().items()}
        else:
            try:
                text = bundled.read_text("utf-8")
            except OSError as exc:
                raise ConfigError(f"{bundled}: cannot read: {exc.strerror or exc}") from None
            fields = _parse_price_doc(str(bundled), text)
        for key, override in (overrides or {}).items():
            where = f"pricing.{_quote_key(str(key))}"
            _check_key(key, where=where)
            parsed = _parse_entry(_override_fields(override, where=where), where=where)
            fields.setdefault(key, {}).update(parsed)
        return cls({k: _resolve(v) for k, v in fields.items()})

    def lookup(self, provider: str, model: str, *, provider_type: str | None = None) -> Price | None:
        """Price of ``model`` served by ``provider`` (a provider name or type), or ``None``.

        Tries ``provider/model``, then ``provider/model`` without a trailing date suffix
        (``-20251001``, ``-2024-08-06``) or ``-latest``, then both again under ``provider_type``
        so that a provider named ``openai-eu`` of type ``openai`` finds the OpenAI prices.
        """
        models = [model]
        stripped = _DATE_SUFFIX.sub("", model)
        if stripped != model and stripped:
            models.append(stripped)
        prefixes = [provider]
        if provider_type and provider_type != provider:
            prefixes.append(provider_type)
        for prefix in prefixes:
            for name in models:
                price = self._prices.get(f"{prefix}/{name}")
                if price is not None:
                    return price
        return None

    def __contains__(self, key: object) -> bool:
        return key in self._prices

    def __len__(self) -> int:
        return len(self._prices)

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def items(self) -> list[tuple[str, Price]]:
        return sorted(self._prices.items())


def cost_nanos(price: Price | None, usage: Usage) -> int:
    """Exact cost of ``usage`` in nano-dollars; an unknown price (``None``) costs 0."""
    if price is None:
        return 0
    cached = max(0, usage.cached_tokens)
    written = max(0, usage.cache_write_tokens)
    fresh = max(0, usage.prompt_tokens - cached - written)
    return (
        fresh * price.input
        + cached * price.cached_input
        + written * price.cache_write
        + max(0, usage.completion_tokens) * price.output
    )
