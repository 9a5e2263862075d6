"""Typed settings loaded from ``llmgw.toml`` (``tomllib``); writing back with ``tomli-w``.

Owns the schema of the config file: ``[server]``, ``[log]``, ``[defaults]``, ``[retry]``,
``[providers.NAME]``, ``[aliases]`` and ``[pricing."provider/model"]``, with their defaults.

Invariants:

* Every problem is reported as ``file: dotted.key: problem``; ``validate_file`` collects them all,
  ``load`` raises one ``ConfigError`` listing them.
* Unknown sections and keys are errors (typo protection), except the top-level sections owned by
  later features (``LATER_SECTIONS``), which are kept unvalidated in ``Config.raw``.
* The config never holds a secret: providers name environment variables; ``resolve_keys`` reads
  them on demand, and no ``repr`` shows header values or URL credentials.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import tomli_w

from llmgw.errors import ConfigError
from llmgw.pricing import PRICE_FIELDS, parse_usd_per_mtok
from llmgw.tomltext import dotted as _key
from llmgw.tomltext import show as _show

PROVIDER_TYPES = ("openai", "anthropic", "demo")
#: top-level sections owned by later features: kept raw in ``Config.raw``, not validated here
LATER_SECTIONS = ("customers", "teams", "keys", "budgets", "cache", "metrics", "admin", "webhooks")
KNOWN_SECTIONS = ("server", "log", "defaults", "retry", "providers", "aliases", "pricing")

_PROVIDER_NAME = re.compile(r"^[a-z0-9_-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"

# name → (type, api_key_env, base-url env var, default base_url) for the well-known providers
_WELL_KNOWN: dict[str, tuple[str, str | None, str | None, str]] = {
    "openai": ("openai", "OPENAI_API_KEY", "OPENAI_BASE_URL", OPENAI_DEFAULT_BASE_URL),
    "anthropic": ("anthropic", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", ANTHROPIC_DEFAULT_BASE_URL),
    "demo": ("demo", None, None, ""),
}


# ---- the typed settings -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 20 * 1024 * 1024
    request_timeout: float = 600.0  # seconds per request overall, every upstream attempt included
    drain_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    bodies: bool = False


@dataclass(frozen=True, slots=True)
class DefaultsConfig:
    max_tokens: int = 4096  # supplied when Anthropic needs max_tokens and the client gave none
    budget_error_status: int = 429  # HTTP status of budget_exceeded: 429 (default) or 402


@dataclass(frozen=True, slots=True)
class RetryConfig:
    max_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_retry_after: float = 30.0  # a longer upstream Retry-After is not waited for: fail over


@dataclass(frozen=True, slots=True)
class ProviderKey:
    """An API key by the name of the environment variable that holds it."""

    env: str
    weight: int = 1

    def __repr__(self) -> str:
        return f"ProviderKey(env={self.env!r}, weight={self.weight})"


@dataclass(frozen=True, slots=True, repr=False)
class ProviderConfig:
    name: str
    type: str
    base_url: str
    keys: list[ProviderKey] = field(default_factory=list)
    timeout: float = 600.0  # seconds per attempt
    models: list[str] = field(default_factory=list)  # empty = any model
    headers: dict[str, str] = field(default_factory=dict)
    enabled: bool = True

    def resolve_keys(self, environ: Mapping[str, str] | None = None) -> list[tuple[str, int]]:
        """``(secret, weight)`` for each key whose environment variable is set and non-empty."""
        env = os.environ if environ is None else environ
        out: list[tuple[str, int]] = []
        for key in self.keys:
            secret = env.get(key.env)
            if secret:
                out.append((secret, key.weight))
        return out

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models

    def __repr__(self) -> str:
        # header values and URL credentials may be secrets: never shown
        return (
            f"ProviderConfig(name={self.name!r}, type={self.type!r}, "
            f"base_url={_redact_url(self.base_url)!r}, "
            f"keys={self.keys!r}, timeout={self.timeout!r}, models={self.models!r}, "
            f"headers={sorted(self.headers)!r}, enabled={self.enabled!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """A ``[pricing."provider/model"]`` entry in USD per million tokens; ``None`` = not overridden."""

    input: Decimal | None = None
    output: Decimal | None = None
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    pricing: dict[str, PriceOverride] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole parsed file

    def enabled_providers(self) -> dict[str, ProviderConfig]:
        return {name: p for name, p in self.providers.items() if p.enabled}


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


# ---- public API --------------------------------------------------------------------------------


def load(path: str | os.PathLike[str] | None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate ``path`` (``None``: no file, every default). Raises ``ConfigError``."""
    env = os.environ if environ is None else environ
    config: Config | None = None
    if path is None:
        checker = _Checker("<no config file>")
        config = _build(checker, None, {}, env)
    else:
        p = Path(path)
        checker = _Checker(str(p))
        doc = _read(checker, p)
        if doc is not None:
            config = _build(checker, p, doc, env)
    if checker.problems or config is None:
        raise ConfigError("\n".join(checker.problems))
    return config


def validate_file(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every problem found in ``path`` as ``file: dotted.key: problem`` lines (empty if fine)."""
    env = os.environ if environ is None else environ
    p = Path(path)
    checker = _Checker(str(p))
    doc = _read(checker, p)
    if doc is not None:
        _build(checker, p, doc, env)
    return list(checker.problems)


def dump(config_dict: Mapping[str, Any]) -> str:
    """TOML text for a config dict (e.g. ``Config.raw`` after an edit), via ``tomli-w``.

    Comments and formatting of the original file are not preserved: a rewrite loses them.
    """
    return tomli_w.dumps(dict(config_dict))


# ---- reading and checking ----------------------------------------------------------------------


class _Checker:
    """Collects ``file: key: problem`` lines."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[str] = []

    def err(self, key: str, problem: str) -> None:
        self.problems.append(f"{self.file}: {key}: {problem}" if key else f"{self.file}: {problem}")

    # typed getters: report a problem and return the default when the value is wrong

    def table(self, value: object, key: str) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.err(key, f"expected a table, got {_show(value)}")
        return None

    def unknown_keys(self, table: Mapping[str, Any], allowed: tuple[str, ...], *parts: str | int) -> None:
        for name in table:
            if name not in allowed:
                hint = difflib.get_close_matches(name, allowed, n=1)
                more = f'; did you mean "{hint[0]}"?' if hint else f" (known: {', '.join(allowed)})"
                self.err(_key(*parts, name), f"unknown key{more}")

    def string(self, table: Mapping[str, Any], name: str, default: str, *parts: str | int,
               nonempty: bool = True) -> str:
        if name not in table:
            return default
        value = table[name]
        if not isinstance(value, str):
            self.err(_key(*parts, name), f"expected a string, got {_show(value)}")
            return default
        if nonempty and not value.strip():
            self.err(_key(*parts, name), "must not be empty")
            return default
        return value

    def boolean(self, table: Mapping[str, Any], name: str, default: bool, *parts: str | int) -> bool:
        if name not in table:
            return default
        value = table[name]
        if not isinstance(value, bool):
            self.err(_key(*parts, name), f"expected true or false, got {_show(value)}")
            return default
        return value

    def integer(self, table: Mapping[str, Any], name: str, default: int, *parts: str | int,
                lo: int | None = None, hi: int | None = None) -> int:
        if name not in table:
            return default
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, int):
            self.err(_key(*parts, name), f"expected an integer, got {_show(value)}")
            return default
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                self.err(_key(*parts, name), f"must be at least {lo}, got {value}")
            elif lo is None:
                self.err(_key(*parts, name), f"must be at most {hi}, got {value}")
            else:
                self.err(_key(*parts, name), f"must be between {lo} and {hi}, got {value}")
            return default
        return value

    def number(self, table: Mapping[str, Any], name: str, default: float, *parts: str | int,
               positive: bool = False) -> float:
        """A finite float (integers accepted); ``positive``: > 0, else >= 0."""
        if name not in table:
            return default
        value = table[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.err(_key(*parts, name), f"expected a number, got {_show(value)}")
            return default
        number = float(value)
        if not math.isfinite(number):
            self.err(_key(*parts, name), f"expected a finite number, got {_show(value)}")
            return default
        if positive and number <= 0:
            self.err(_key(*parts, name), f"must be greater than 0, got {_show(value)}")
            return default
        if number < 0:
            self.err(_key(*parts, name), f"must not be negative, got {_show(value)}")
            return default
        return number


def _read(checker: _Checker, path: Path) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        checker.err("", "file not found")
        return None
    except OSError as exc:
        checker.err("", f"cannot read: {exc.strerror or exc}")
        return None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        checker.err("", "not UTF-8 text")
    except tomllib.TOMLDecodeError as exc:
        checker.err("", f"invalid TOML: {exc}")
    return None


def _build(checker: _Checker, path: Path | None, doc: dict[str, Any], env: Mapping[str, str]) -> Config:
    for name, value in doc.items():
        if name in LATER_SECTIONS:
            continue
        if name not in KNOWN_SECTIONS:
            allowed = KNOWN_SECTIONS + LATER_SECTIONS
            hint = difflib.get_close_matches(name, allowed, n=1)
            more = f'; did you mean "{hint[0]}"?' if hint else f" (known: {', '.join(allowed)})"
            what = "section" if isinstance(value, dict) else "top-level key"
            checker.err(_key(name), f"unknown {what}{more}")

    def section(name: str) -> dict[str, Any]:
        if name not in doc:
            return {}
        return checker.table(doc[name], name) or {}

    # built in section order so that problems are reported in that order
    server = _server(checker, section("server"))
    log = _log(checker, section("log"))
    defaults = _defaults(checker, section("defaults"))
    retry = _retry(checker, section("retry"))
    providers = _providers(checker, doc, env)
    return Config(
        path=path,
        server=server,
        log=log,
        defaults=defaults,
        retry=retry,
        providers=providers,
        aliases=_aliases(checker, section("aliases"), providers),
        pricing=_pricing(checker, section("pricing")),
        raw=doc,
    )


def _server(c: _Checker, t: dict[str, Any]) -> ServerConfig:
    d = ServerConfig()
    c.unknown_keys(t, ("host", "port", "max_body_bytes", "request_timeout", "drain_timeout"), "server")
    return ServerConfig(
        host=c.string(t, "host", d.host, "server"),
        port=c.integer(t, "port", d.port, "server", lo=0, hi=65535),
        max_body_bytes=c.integer(t, "max_body_bytes", d.max_body_bytes, "server", lo=1),
        request_timeout=c.number(t, "request_timeout", d.request_timeout, "server", positive=True),
        drain_timeout=c.number(t, "drain_timeout", d.drain_timeout, "server"),
    )


def _log(c: _Checker, t: dict[str, Any]) -> LogConfig:
    c.unknown_keys(t, ("bodies",), "log")
    return LogConfig(bodies=c.boolean(t, "bodies", LogConfig().bodies, "log"))


def _defaults(c: _Checker, t: dict[str, Any]) -> DefaultsConfig:
    c.unknown_keys(t, ("max_tokens", "budget_error_status"), "defaults")
    d = DefaultsConfig()
    status = c.integer(t, "budget_error_status", d.budget_error_status, "defaults")
    if status not in (402, 429):
        c.err("defaults.budget_error_status", f"expected 429 or 402, got {status}")
        status = d.budget_error_status
    return DefaultsConfig(max_tokens=c.integer(t, "max_tokens", d.max_tokens, "defaults", lo=1),
                          budget_error_status=status)


def _retry(c: _Checker, t: dict[str, Any]) -> RetryConfig:
    d = RetryConfig()
    c.unknown_keys(t, ("max_retries", "backoff_base", "backoff_max", "max_retry_after"), "retry")
    return RetryConfig(
        max_retries=c.integer(t, "max_retries", d.max_retries, "retry", lo=0),
        backoff_base=c.number(t, "backoff_base", d.backoff_base, "retry"),
        backoff_max=c.number(t, "backoff_max", d.backoff_max, "retry"),
        max_retry_after=c.number(t, "max_retry_after", d.max_retry_after, "retry"),
    )


# ---- providers ---------------------------------------------------------------------------------

_PROVIDER_KEYS = ("type", "base_url", "api_key_env", "keys", "timeout", "models", "headers", "enabled")


def _providers(c: _Checker, doc: dict[str, Any], env: Mapping[str, str]) -> dict[str, ProviderConfig]:
    if "providers" not in doc:
        return {name: _provider(c, name, {}, env) for name in ("openai", "anthropic", "demo")}
    table = c.table(doc["providers"], "providers") or {}
    out: dict[str, ProviderConfig] = {}
    for name, entry in table.items():
        if not _PROVIDER_NAME.match(name):
            c.err(_key("providers", name), "provider names use only a-z, 0-9, _ and -")
            continue
        t = c.table(entry, _key("providers", name))
        if t is not None:
            out[name] = _provider(c, name, t, env)
    if "demo" not in out:
        out["demo"] = _provider(c, "demo", {}, env)
    return out


def _provider(c: _Checker, name: str, t: dict[str, Any], env: Mapping[str, str]) -> ProviderConfig:
    at = ("providers", name)
    c.unknown_keys(t, _PROVIDER_KEYS, *at)
    known = _WELL_KNOWN.get(name)

    ptype = known[0] if known else ""
    if "type" in t:
        value = t["type"]
        if value in PROVIDER_TYPES:
            ptype = value
        else:
            choices = ", ".join(map(_show, PROVIDER_TYPES))
            c.err(_key(*at, "type"), f"expected one of {choices}, got {_show(value)}")
    elif not known:
        c.err(_key(*at, "type"), f"required for a provider not named {', '.join(_WELL_KNOWN)}")
    # the well-known defaults apply when the name and the type agree
    defaults = known if known and known[0] == ptype else None

    base_url = ""
    if "base_url" in t:
        base_url = _base_url(c, t["base_url"], _key(*at, "base_url"))
    elif defaults:
        url_env = defaults[2]
        from_env = env.get(url_env, "").strip() if url_env else ""
        if from_env and url_env:
            base_url = _base_url(c, from_env, f"{_key(*at, 'base_url')} (from {url_env})")
        else:
            base_url = defaults[3]
    elif ptype in ("openai", "anthropic"):
        c.err(_key(*at, "base_url"), f"required for a provider not named {', '.join(_WELL_KNOWN)}")

    keys: list[ProviderKey] = []
    if "api_key_env" in t and "keys" in t:
        c.err(_key(*at), "set api_key_env or keys, not both")
    elif "api_key_env" in t:
        env_name = _env_name(c, t["api_key_env"], _key(*at, "api_key_env"))
        if env_name:
            keys = [ProviderKey(env_name)]
    elif "keys" in t:
        keys = _keys(c, t["keys"], at)
    elif defaults and defaults[1]:
        keys = [ProviderKey(defaults[1])]

    return ProviderConfig(
        name=name,
        type=ptype or "openai",
        base_url=base_url,
        keys=keys,
        timeout=c.number(t, "timeout", 600.0, *at, positive=True),
        models=_models(c, t, at),
        headers=_headers(c, t, at),
        enabled=c.boolean(t, "enabled", True, *at),
    )


def _base_url(c: _Checker, value: object, key: str) -> str:
    if not isinstance(value, str):
        c.err(key, f"expected a string, got {_show(value)}")
        return ""
    url = value.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        c.err(key, f"expected an http:// or https:// URL, got {_show(_redact_url(value))}")
        return ""
    return url


def _env_name(c: _Checker, value: object, key: str) -> str | None:
    if not isinstance(value, str):
        c.err(key, f"expected the name of an environment variable, got {_show(value)}")
        return None
    if not _ENV_NAME.match(value):
        c.err(key, f"not an environment variable name ([A-Za-z_][A-Za-z0-9_]*): {_show(value)}")
        return None
    return value


def _keys(c: _Checker, value: object, at: tuple[str, ...]) -> list[ProviderKey]:
    if not isinstance(value, list):
        c.err(_key(*at, "keys"), f'expected an array like [{{env = "A", weight = 1}}], got {_show(value)}')
        return []
    if not value:
        c.err(_key(*at, "keys"), "expected at least one key (omit keys for a provider without a key)")
        return []
    out: list[ProviderKey] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        here: tuple[str | int, ...] = (*at, "keys", i)
        if isinstance(item, str):  # shorthand: keys = ["A", "B"]
            item = {"env": item}
        if not isinstance(item, dict):
            c.err(_key(*here), f'expected a table like {{env = "A", weight = 1}}, got {_show(item)}')
            continue
        c.unknown_keys(item, ("env", "weight"), *here)
        if "env" not in item:
            c.err(_key(*here, "env"), "required")
            continue
        env_name = _env_name(c, item["env"], _key(*here, "env"))
        weight = c.integer(item, "weight", 1, *here, lo=1)
        if env_name is None:
            continue
        if env_name in seen:
            c.err(_key(*here, "env"), f"{_show(env_name)} is listed twice")
            continue
        seen.add(env_name)
        out.append(ProviderKey(env_name, weight))
    return out


def _models(c: _Checker, t: dict[str, Any], at: tuple[str, ...]) -> list[str]:
    if "models" not in t:
        return []
    value = t["models"]
    if not isinstance(value, list):
        c.err(_key(*at, "models"), f"expected an array of model names, got {_show(value)}")
        return []
    out: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            c.err(_key(*at, "models", i), f"expected a model name, got {_show(item)}")
        else:
            out.append(item)
    return out


def _headers(c: _Checker, t: dict[str, Any], at: tuple[str, ...]) -> dict[str, str]:
    if "headers" not in t:
        return {}
    table = c.table(t["headers"], _key(*at, "headers"))
    out: dict[str, str] = {}
    for name, value in (table or {}).items():
        key = _key(*at, "headers", name)
        if not _HEADER_NAME.match(name):
            c.err(key, "not a valid HTTP header name")
        elif not isinstance(value, str):
            c.err(key, f"expected a string, got {_show(value)}")
        elif "\r" in value or "\n" in value:
            c.err(key, "header values cannot contain line breaks")
        else:
            out[name] = value
    return out


# ---- aliases and pricing -----------------------------------------------------------------------


def _aliases(c: _Checker, t: dict[str, Any], providers: Mapping[str, ProviderConfig]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in t.items():
        at = ("aliases", name)
        if "/" in name or not name.strip():
            c.err(_key(*at), 'alias names must not be empty or contain "/"')
            continue
        chain = [value] if isinstance(value, str) else value
        if not isinstance(chain, list) or not chain:
            c.err(_key(*at), f'expected "provider/model" or a non-empty array of them, got {_show(value)}')
            continue
        targets: list[str] = []
        for i, target in enumerate(chain):
            here = _key(*at, i) if isinstance(value, list) else _key(*at)
            if _check_target(c, here, target, providers):
                targets.append(target)
        out[name] = targets
    return out


def _check_target(c: _Checker, key: str, target: object, providers: Mapping[str, ProviderConfig]) -> bool:
    if not isinstance(target, str):
        c.err(key, f'expected "provider/model", got {_show(target)}')
        return False
    provider, sep, model = target.partition("/")
    if not sep or not provider or not model:
        c.err(key, f'expected "provider/model", got {_show(target)}')
        return False
    if provider not in providers:
        c.err(key, f"{_show(target)}: no provider named {_show(provider)} "
                   f"(configured: {', '.join(sorted(providers))})")
        return False
    if not providers[provider].serves(model):
        c.err(key, f"{_show(target)}: provider {_show(provider)} does not list model {_show(model)} "
                   "in its models")
        return False
    return True


def _pricing(c: _Checker, t: dict[str, Any]) -> dict[str, PriceOverride]:
    out: dict[str, PriceOverride] = {}
    for name, value in t.items():
        at = ("pricing", name)
        provider, sep, model = name.partition("/")
        if not sep or not provider or not model:
            c.err(_key(*at), 'expected a "provider/model" key, e.g. [pricing."openai/gpt-4o-mini"]')
            continue
        table = c.table(value, _key(*at))
        if table is None:
            continue
        c.unknown_keys(table, PRICE_FIELDS, *at)
        fields: dict[str, Decimal] = {}
        for f in PRICE_FIELDS:
            if f not in table:
                continue
            try:
                nanos = parse_usd_per_mtok(table[f], where=f"{c.file}: {_key(*at, f)}")
            except ConfigError as exc:
                c.problems.append(exc.message)
                continue
            fields[f] = Decimal(nanos).scaleb(-3)  # exact: USD per million tokens
        out[name] = PriceOverride(**fields)
    return out


# ---- the starter file --------------------------------------------------------------------------

STARTER_TOML = """\
# llmgw.toml: configuration of the llmgw gateway.
#
# Every setting is optional; the values shown are the defaults. Check the file with
#     llmgw config validate
# Secrets never go in this file: a provider names the environment variable that holds its key.

[server]
# Where the gateway listens. "0.0.0.0" listens on every interface.
host = "127.0.0.1"
port = 8080
# Largest request body accepted, in bytes (20 MiB); larger requests get HTTP 413.
max_body_bytes = 20971520
# Seconds one request may take overall, every upstream attempt and fallback included.
request_timeout = 600.0
# On shutdown, seconds in-flight requests get to finish.
drain_timeout = 30.0

[log]
# Log request and response bodies. They can hold personal data: leave off in production.
bodies = false

[defaults]
# max_tokens sent upstream when the client gave none: Anthropic requires it, and budgets need it
# to bound a request's cost before it runs.
max_tokens = 4096
# HTTP status of a budget_exceeded error: 429 (default) or 402. Both carry x-should-retry: false.
budget_error_status = 429

[retry]
# Retries against one upstream before moving on to the next target of an alias.
max_retries = 2
# Backoff between retries, in seconds: grows from backoff_base, capped at backoff_max.
backoff_base = 0.5
backoff_max = 8.0
# An upstream Retry-After longer than this (seconds) is not waited for: fail over instead.
max_retry_after = 30.0

# ---- providers ----------------------------------------------------------------------------
# Without any [providers.*] section llmgw uses openai, anthropic and demo with their defaults.
# Once you write one, list every provider you want; demo stays unless disabled.
#
#   type         "openai" (OpenAI or any OpenAI-compatible server), "anthropic", or
#                "demo" (offline, canned answers)
#   base_url     where requests go; openai and anthropic default to the official APIs
#                (or $OPENAI_BASE_URL / $ANTHROPIC_BASE_URL when set)
#   api_key_env  name of the environment variable holding the API key
#   keys         several keys, spread by weight, instead of api_key_env:
#                keys = [{ env = "OPENAI_KEY_A", weight = 3 }, { env = "OPENAI_KEY_B", weight = 1 }]
#   timeout      seconds per upstream attempt
#   models       models this provider serves; empty or absent = any
#   headers      extra HTTP headers sent upstream, e.g. { "OpenAI-Organization" = "org-..." }
#   enabled      false keeps the definition but sends nothing to it
# Provider names use a-z, 0-9, _ and -. Names other than openai, anthropic and demo need an
# explicit type and base_url.

[providers.openai]
type = "openai"
api_key_env = "OPENAI_API_KEY"
# base_url = "https://api.openai.com/v1"
timeout = 600.0

[providers.anthropic]
type = "anthropic"
api_key_env = "ANTHROPIC_API_KEY"
# As in the official Anthropic SDK, the base URL has no /v1: the client appends /v1/messages.
# base_url = "https://api.anthropic.com"
timeout = 600.0

# An OpenAI-compatible server such as vLLM (also llama.cpp, OpenRouter, ...):
# [providers.vllm]
# type = "openai"
# base_url = "http://localhost:8000/v1"
# api_key_env = "VLLM_API_KEY"        # omit if the server needs no key
# models = ["meta-llama/Llama-3.1-8B-Instruct"]
# timeout = 120.0

# The offline demo provider is always present; to remove it:
# [providers.demo]
# enabled = false

[aliases]
# A model name clients may ask for, mapped to "provider/model" targets tried in order: when one
# fails (after its retries) the next is tried. A single string is a one-element chain.
caption = ["anthropic/claude-haiku-4-5-20251001", "openai/gpt-4o-mini"]
# fast = "openai/gpt-4o-mini"

# ---- pricing ------------------------------------------------------------------------------
# llmgw ships list prices for OpenAI and Anthropic models, in USD per million tokens.
# Add or override prices here; a partial override merges over the bundled price. Fields:
# input, output, cached_input (cache reads) and cache_write (Anthropic 5-minute cache writes).
# Prices must come to whole nano-dollars per token: at most 3 decimals.
#
# [pricing."openai/gpt-4o-mini"]
# input = 0.15
# output = 0.60
# cached_input = 0.075
#
# [pricing."vllm/meta-llama/Llama-3.1-8B-Instruct"]
# input = 0
# output = 0
"""
