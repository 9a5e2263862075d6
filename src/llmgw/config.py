"""Typed settings loaded from ``llmgw.toml`` (``tomllib``); writing back with ``tomli-w``.

Owns the schema of the config file: ``[server]``, ``[log]``, ``[ledger]``, ``[store]``, ``[defaults]``, ``[retry]``,
``[providers.NAME]``, ``[aliases]``, ``[pricing."provider/model"]``, ``[cache]``, ``[webhooks]``,
``[admin]``, ``[metrics]`` and ``[ui]``, with their defaults. The governance sections (``[customers]``,
``[teams]``, ``[keys]``, ``[[budgets]]``) belong to ``llmgw config apply`` (``governance/declare.py``)
and are kept unchecked in ``Config.raw``.

Invariants:

* Every problem is reported as ``file: dotted.key: problem`` (``checks.Checks``); ``validate_file``
  collects them all, ``load`` raises one ``ConfigError`` listing them. Whatever ``llmgw serve`` would
  refuse is refused here, so it never starts with a half-checked file.
* Unknown sections and keys are errors (typo protection).
* The config never holds a secret: providers, tokens and the webhook secret name environment
  variables, read on demand (``resolve_keys``, ``token``, ``resolve_secret``); no ``repr``
  shows header values or URL credentials.
"""

from __future__ import annotations

import difflib
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

from llmgw.checks import Checks
from llmgw.errors import ConfigError
from llmgw.pricing import PRICE_FIELDS, parse_usd_per_mtok
from llmgw.tomltext import dotted as _key
from llmgw.tomltext import show as _show

PROVIDER_TYPES = ("openai", "anthropic", "demo")
CACHE_MODES = ("off", "exact", "semantic")
#: the instruction gate's word classes (``cache/gate.py``; kept here so the config stays light)
GATE_CLASSES = ("negation", "numbers", "languages", "formats", "directions", "polar", "channels", "suffixes",
                "order")
#: the governance sections, read by ``llmgw config apply``: kept raw in ``Config.raw``, not checked here
DECLARED_SECTIONS = ("customers", "teams", "keys", "budgets")
KNOWN_SECTIONS = ("server", "log", "ledger", "store", "cluster", "defaults", "retry", "providers", "aliases", "pricing", "cache", "webhooks",
                  "admin", "metrics", "ui")
#: the admin API's token when ``[admin]`` names no other variable
ADMIN_TOKEN_ENV = "LLMGW_ADMIN_TOKEN"

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


#: the client headers forwarded by default (``[server] forward_headers``)
FORWARD_HEADERS = ("anthropic-beta", "anthropic-version", "openai-beta")
#: never forwarded, whatever the config says: credentials, framing and hop-by-hop headers
NEVER_FORWARDED = frozenset({"authorization", "x-api-key", "api-key", "host", "content-length", "content-type",
                             "content-encoding", "transfer-encoding", "connection", "keep-alive", "cookie",
                             "proxy-authorization", "te", "upgrade", "accept-encoding", "user-agent"})


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 20 * 1024 * 1024
    request_timeout: float = 600.0  # seconds per request overall, every upstream attempt included
    drain_timeout: float = 30.0
    body_timeout: float = 30.0  # seconds a client gets to send a request body (a slow one cannot hold a connection)
    # client request headers passed on to providers (``anthropic-*`` only to Anthropic providers,
    # ``openai-*`` only to OpenAI-format ones, any other listed name to every provider); [] = none
    forward_headers: tuple[str, ...] = FORWARD_HEADERS


@dataclass(frozen=True, slots=True)
class LogConfig:
    bodies: bool = False
    bodies_retain_days: int | None = None  # logged bodies older than this are erased daily (rows stay)


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """``[ledger]``: retention of raw ledger rows (their hourly and daily roll-ups are kept)."""

    retain_days: int | None = None  # None: keep every raw row


@dataclass(frozen=True, slots=True, repr=False)
class StoreConfig:
    """``[store]``: where definitions, the ledger and its roll-ups, events and idempotency records
    live. ``url`` None (the default): the SQLite file under ``LLMGW_HOME``; a ``postgresql://`` URL
    (or one read from the variable ``url_env`` names): that PostgreSQL database. The response cache
    stays in the home's SQLite file either way (per instance)."""

    url: str | None = None  # postgresql://user:password@host:port/dbname (never shown unredacted)
    url_env: str | None = None

    def __repr__(self) -> str:
        url = _redact_url(self.url) if self.url else None
        return f"StoreConfig(url={url!r}, url_env={self.url_env!r})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True, repr=False)
class ClusterConfig:
    """``[cluster]``: several instances share exact budget caps, rate limits and in-flight
    idempotency through Redis (``cluster/``). Off (``redis_url`` None) by default."""

    redis_url: str | None = None  # redis://[:password@]host:port/db (or from redis_url_env)
    lease_ttl: float = 10.0  # seconds a budget slice outlives its instance (SIGKILL: taken back after this)
    sync_interval: float = 0.25  # seconds between an instance's reports of spend to Redis
    timeout: float = 0.5  # seconds a Redis call may take before the shared state counts as unreachable
    prefix: str = "llmgw"  # Redis key prefix (several clusters on one Redis: one prefix each)

    def __repr__(self) -> str:
        url = _redact_url(self.redis_url) if self.redis_url else None
        return (f"ClusterConfig(redis_url={url!r}, lease_ttl={self.lease_ttl}, sync_interval={self.sync_interval}, "
                f"timeout={self.timeout}, prefix={self.prefix!r})")


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
class CacheConfig:
    """``[cache]``: the response cache policy (``cache/semantic.py`` says what each field does)."""

    mode: str = "off"
    threshold: float = 0.95
    ttl: int = 86400
    max_entries: int = 100_000
    scope: str = "customer"
    guard: bool = True
    guard_patterns: tuple[str, ...] = ()
    model: str | None = None
    charge_hits: bool = False
    gate: bool = True
    gate_classes: tuple[str, ...] = GATE_CLASSES
    shadow: bool = False
    verify_sample: float = 0.0
    namespace_thresholds: tuple[tuple[str, float], ...] = ()
    model_thresholds: tuple[tuple[str, float], ...] = ()

    def threshold_for(self, namespace: str, model: str | None) -> float:
        """The configured threshold of a namespace, else of a model, else ``threshold``."""
        for name, value in self.namespace_thresholds:
            if name == namespace:
                return value
        for name, value in self.model_thresholds:
            if name == model:
                return value
        return self.threshold


@dataclass(frozen=True, slots=True)
class UiConfig:
    """``[ui]``: the finance page (``server/ui.py``); on only when this section names ``token_env``.

    ``currency``/``rate``: an optional display currency (ISO 4217 code) and its rate per USD, an
    exact decimal (``"0.92"``); amounts are converted for display only and labelled as converted."""

    token_env: str
    currency: str | None = None
    rate: Decimal | None = None
    session_hours: int = 12


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """``[webhooks]``: where budget events are POSTed; the HMAC key by the name of its variable."""

    url: str
    secret_env: str | None = None
    timeout: float = 5.0
    max_attempts: int = 6

    def resolve_secret(self, environ: Mapping[str, str] | None = None) -> bytes | None:
        """The HMAC key (``None``: unsigned); ``ConfigError`` when ``secret_env`` is not set."""
        value = _env_value(self.secret_env, environ, "webhooks.secret_env")
        return value.encode() if value else None


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
    responses: bool = True  # OpenAI type: the upstream serves /responses itself (else: translated via chat)

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
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    pricing: dict[str, PriceOverride] = field(default_factory=dict)
    cache: CacheConfig = field(default_factory=CacheConfig)
    webhooks: WebhookConfig | None = None
    admin_token_env: str | None = None  # None: $LLMGW_ADMIN_TOKEN if set, else the admin API is off
    metrics_token_env: str | None = None  # None: /metrics is open
    ui: UiConfig | None = None  # None: the finance page is off (/ui answers 404)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole parsed file

    def enabled_providers(self) -> dict[str, ProviderConfig]:
        return {name: p for name, p in self.providers.items() if p.enabled}

    def with_demo(self) -> Config:
        """This config plus the offline demo provider (``serve --demo``), unless it declares one."""
        if "demo" in self.providers:
            return self
        from dataclasses import replace

        demo = ProviderConfig(name="demo", type="demo", base_url="")
        return replace(self, providers={**self.providers, "demo": demo})

    def token(self, section: str, environ: Mapping[str, str] | None = None) -> str | None:
        """The bearer token of ``[admin]``, ``[metrics]`` or ``[ui]`` from the environment (``None``:
        none); ``ConfigError`` when the variable the file names is not set."""
        if section == "ui":
            name = self.ui.token_env if self.ui else None
        else:
            name = self.admin_token_env if section == "admin" else self.metrics_token_env
        if name is None and section == "admin":
            return (os.environ if environ is None else environ).get(ADMIN_TOKEN_ENV, "").strip() or None
        return _env_value(name, environ, f"{self.path or 'llmgw.toml'}: {section}.token_env")


def _env_value(name: str | None, environ: Mapping[str, str] | None, where: str) -> str | None:
    """The stripped value of the variable ``name`` (``None`` when unnamed); ``ConfigError`` naming
    ``where`` when it is not set (``load`` checked it against its own environment)."""
    if name is None:
        return None
    value = (os.environ if environ is None else environ).get(name, "").strip()
    if not value:
        raise ConfigError(f"{where}: environment variable {_show(name)} is not set")
    return value


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
        c = Checks("<no config file>")
        config = _build(c, None, {}, env)
    else:
        p = Path(path)
        c = Checks(str(p))
        doc = _read(c, p)
        if doc is not None:
            config = _build(c, p, doc, env)
    if c.problems or config is None:
        raise ConfigError("\n".join(c.problems))
    return config


def validate_file(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every problem found in ``path`` as ``file: dotted.key: problem`` lines (empty if fine)."""
    env = os.environ if environ is None else environ
    p = Path(path)
    c = Checks(str(p))
    doc = _read(c, p)
    if doc is not None:
        _build(c, p, doc, env)
    return list(c.problems)


def dump(config_dict: Mapping[str, Any]) -> str:
    """TOML text for a config dict (e.g. ``Config.raw`` after an edit), via ``tomli-w``.

    Comments and formatting of the original file are not preserved: a rewrite loses them.
    """
    return tomli_w.dumps(dict(config_dict))


# ---- reading and checking ----------------------------------------------------------------------


def _read(c: Checks, path: Path) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        c.add("", "file not found")
        return None
    except OSError as exc:
        c.add("", f"cannot read: {exc.strerror or exc}")
        return None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        c.add("", "not UTF-8 text")
    except tomllib.TOMLDecodeError as exc:
        c.add("", f"invalid TOML: {exc}")
    return None


def _build(c: Checks, path: Path | None, doc: dict[str, Any], env: Mapping[str, str]) -> Config:
    for name, value in doc.items():
        if name in DECLARED_SECTIONS:
            continue
        if name not in KNOWN_SECTIONS:
            allowed = KNOWN_SECTIONS + DECLARED_SECTIONS
            hint = difflib.get_close_matches(name, allowed, n=1)
            more = f'; did you mean "{hint[0]}"?' if hint else f" (known: {', '.join(allowed)})"
            what = "section" if isinstance(value, dict) else "top-level key"
            c.add((name,), f"unknown {what}{more}", "unknown_field")

    def section(name: str) -> dict[str, Any]:
        if name not in doc:
            return {}
        return c.table(doc[name], name) or {}

    # built in section order so that problems are reported in that order
    server = _server(c, section("server"))
    log = _log(c, section("log"))
    ledger = _ledger(c, section("ledger"))
    store = _store(c, section("store"), env)
    cluster = _cluster(c, section("cluster"), env)
    defaults = _defaults(c, section("defaults"))
    retry = _retry(c, section("retry"))
    providers = _providers(c, doc, env)
    aliases = _aliases(c, section("aliases"), providers)
    pricing = _pricing(c, section("pricing"))
    return Config(
        path=path, server=server, log=log, ledger=ledger, store=store, cluster=cluster, defaults=defaults, retry=retry, providers=providers, aliases=aliases,
        pricing=pricing, cache=_cache(c, section("cache")), webhooks=_webhooks(c, section("webhooks"), env),
        admin_token_env=_token(c, section("admin"), "admin", env),
        metrics_token_env=_token(c, section("metrics"), "metrics", env), ui=_ui(c, section("ui"), env), raw=doc,
    )


def _server(c: Checks, t: dict[str, Any]) -> ServerConfig:
    d = ServerConfig()
    c.unknown(t, ("host", "port", "max_body_bytes", "request_timeout", "drain_timeout", "body_timeout",
                  "forward_headers"), "server")
    forward = c.strings(t, "forward_headers", "server", what="header name", default=list(d.forward_headers))
    for i, name in enumerate(forward):
        if not _HEADER_NAME.match(name):
            c.add(("server", "forward_headers", i), f"{name!r} is not a header name")
        elif name.lower() in NEVER_FORWARDED:
            c.add(("server", "forward_headers", i), f"{name!r} is never forwarded (credentials or framing)")
    return ServerConfig(
        forward_headers=tuple(dict.fromkeys(n.lower() for n in forward)),
        host=c.string(t, "host", "server", default=d.host),
        port=c.integer(t, "port", "server", default=d.port, lo=0, hi=65535),
        max_body_bytes=c.integer(t, "max_body_bytes", "server", default=d.max_body_bytes, lo=1),
        request_timeout=c.number(t, "request_timeout", "server", default=d.request_timeout, positive=True),
        drain_timeout=c.number(t, "drain_timeout", "server", default=d.drain_timeout),
        body_timeout=c.number(t, "body_timeout", "server", default=d.body_timeout, positive=True),
    )


def _log(c: Checks, t: dict[str, Any]) -> LogConfig:
    c.unknown(t, ("bodies", "bodies_retain_days"), "log")
    return LogConfig(bodies=c.boolean(t, "bodies", "log", default=LogConfig().bodies),
                     bodies_retain_days=c.integer(t, "bodies_retain_days", "log", lo=1))


def _ledger(c: Checks, t: dict[str, Any]) -> LedgerConfig:
    c.unknown(t, ("retain_days",), "ledger")
    return LedgerConfig(retain_days=c.integer(t, "retain_days", "ledger", lo=1))


def _store(c: Checks, t: dict[str, Any], env: Mapping[str, str]) -> StoreConfig:
    c.unknown(t, ("url", "url_env"), "store")
    url = c.string(t, "url", "store")
    url_env = c.string(t, "url_env", "store")
    if url is not None and url_env is not None:
        c.add(("store", "url_env"), "give url or url_env, not both")
    elif url_env is not None:
        if not _ENV_NAME.match(url_env):
            c.add(("store", "url_env"), f"{_show(url_env)} is not an environment variable name")
        url = env.get(url_env, "").strip() or None
        if url is None:
            c.add(("store", "url_env"), f"environment variable {_show(url_env)} is not set")
    if url is not None:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (a port that is not a number raises here)
            bad = parts.scheme not in ("postgresql", "postgres") or "://" not in url
        except ValueError:
            bad = True
        if bad:
            c.add(("store", "url_env" if url_env else "url"),
                  f"expected a postgresql:// URL, got {_redact_url(url)!r} (leave [store] out for the SQLite file)")
            url = None
    return StoreConfig(url=url, url_env=url_env)


def load_store(path: str | os.PathLike[str] | None, *, environ: Mapping[str, str] | None = None) -> StoreConfig:
    """Only the ``[store]`` section of ``path`` (``None``: no file, the SQLite default), checked:
    what every CLI command needs to find the store, without the cost (or the complaints) of the
    rest of the file. ``ConfigError`` for a file that cannot be read or a bad ``[store]``."""
    if path is None:
        return StoreConfig()
    env = os.environ if environ is None else environ
    p = Path(path)
    c = Checks(str(p))
    doc = _read(c, p)
    store = StoreConfig()
    if doc is not None and "store" in doc:
        store = _store(c, c.table(doc["store"], "store") or {}, env)
    if c.problems:
        raise ConfigError("\n".join(c.problems))
    return store


def _cluster(c: Checks, t: dict[str, Any], env: Mapping[str, str]) -> ClusterConfig:
    c.unknown(t, ("redis_url", "redis_url_env", "lease_ttl", "sync_interval", "timeout", "prefix"), "cluster")
    d = ClusterConfig()
    url = c.string(t, "redis_url", "cluster")
    url_env = c.string(t, "redis_url_env", "cluster")
    if url is not None and url_env is not None:
        c.add(("cluster", "redis_url_env"), "give redis_url or redis_url_env, not both")
    elif url_env is not None:
        url = env.get(url_env, "").strip() or None
        if url is None:
            c.add(("cluster", "redis_url_env"), f"environment variable {_show(url_env)} is not set")
    if url is not None:
        scheme = urlsplit(url).scheme if "://" in url else ""
        if scheme not in ("redis", "rediss", "unix"):
            c.add(("cluster", "redis_url_env" if url_env else "redis_url"),
                  f"expected a redis://, rediss:// or unix:// URL, got {_redact_url(url)!r}")
    ttl = c.number(t, "lease_ttl", "cluster", default=d.lease_ttl, positive=True, hi=3600.0)
    sync = c.number(t, "sync_interval", "cluster", default=d.sync_interval, positive=True, hi=60.0)
    if ttl is not None and sync is not None and sync * 4 > ttl:
        c.add(("cluster", "sync_interval"), f"must be at most a quarter of lease_ttl ({ttl:g} s): an instance "
                                            "renews its slices every sync")
    prefix = c.string(t, "prefix", "cluster", default=d.prefix)
    if prefix is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", prefix):
        c.add(("cluster", "prefix"), "letters, digits, '_', '.', '-' only (1-64)")
    return ClusterConfig(redis_url=url, lease_ttl=ttl, sync_interval=sync,
                         timeout=c.number(t, "timeout", "cluster", default=d.timeout, positive=True, hi=30.0),
                         prefix=prefix)


def _defaults(c: Checks, t: dict[str, Any]) -> DefaultsConfig:
    c.unknown(t, ("max_tokens", "budget_error_status"), "defaults")
    d = DefaultsConfig()
    status = c.integer(t, "budget_error_status", "defaults", default=d.budget_error_status)
    if status not in (402, 429):
        c.add("defaults.budget_error_status", f"expected 429 or 402, got {status}")
        status = d.budget_error_status
    return DefaultsConfig(max_tokens=c.integer(t, "max_tokens", "defaults", default=d.max_tokens, lo=1),
                          budget_error_status=status)


def _retry(c: Checks, t: dict[str, Any]) -> RetryConfig:
    d = RetryConfig()
    c.unknown(t, ("max_retries", "backoff_base", "backoff_max", "max_retry_after"), "retry")
    return RetryConfig(
        max_retries=c.integer(t, "max_retries", "retry", default=d.max_retries, lo=0),
        backoff_base=c.number(t, "backoff_base", "retry", default=d.backoff_base),
        backoff_max=c.number(t, "backoff_max", "retry", default=d.backoff_max),
        max_retry_after=c.number(t, "max_retry_after", "retry", default=d.max_retry_after),
    )


# ---- providers ---------------------------------------------------------------------------------

_PROVIDER_KEYS = ("type", "base_url", "api_key_env", "keys", "timeout", "models", "headers", "enabled", "responses")


def _providers(c: Checks, doc: dict[str, Any], env: Mapping[str, str]) -> dict[str, ProviderConfig]:
    if "providers" not in doc:
        return {name: _provider(c, name, {}, env) for name in ("openai", "anthropic")}
    table = c.table(doc["providers"], "providers") or {}
    out: dict[str, ProviderConfig] = {}
    for name, entry in table.items():
        if not _PROVIDER_NAME.match(name):
            c.add(("providers", name), "provider names use only a-z, 0-9, _ and -")
            continue
        t = c.table(entry, "providers", name)
        if t is not None:
            out[name] = _provider(c, name, t, env)
    return out


def _provider(c: Checks, name: str, t: dict[str, Any], env: Mapping[str, str]) -> ProviderConfig:
    at = ("providers", name)
    c.unknown(t, _PROVIDER_KEYS, *at)
    known = _WELL_KNOWN.get(name)

    ptype = c.choice(t, "type", PROVIDER_TYPES, *at, default=known[0] if known else "")
    if "type" not in t and not known:
        c.add((*at, "type"), f"required for a provider not named {', '.join(_WELL_KNOWN)}", "missing_field")
    # the well-known defaults apply when the name and the type agree
    defaults = known if known and known[0] == ptype else None

    base_url = ""
    if "base_url" in t:
        base_url = c.parsed(t, "base_url", _base_url, *at, default="")
    elif defaults:
        url_env = defaults[2]
        from_env = env.get(url_env, "").strip() if url_env else ""
        base_url = defaults[3]
        if from_env:
            try:
                base_url = _base_url(from_env)
            except ValueError as e:
                c.add(f"{_key(*at, 'base_url')} (from {url_env})", str(e))
                base_url = ""
    elif ptype in ("openai", "anthropic"):
        c.add((*at, "base_url"), f"required for a provider not named {', '.join(_WELL_KNOWN)}", "missing_field")

    keys: list[ProviderKey] = []
    if "api_key_env" in t and "keys" in t:
        c.add(at, "set api_key_env or keys, not both")
    elif "api_key_env" in t:
        env_name = c.parsed(t, "api_key_env", _env_name, *at)
        keys = [ProviderKey(env_name)] if env_name else []
    elif "keys" in t:
        keys = _keys(c, t["keys"], at)
    elif defaults and defaults[1]:
        keys = [ProviderKey(defaults[1])]

    if "responses" in t and ptype not in ("openai", None, ""):
        c.add((*at, "responses"), f"only for providers of type openai (this one is {ptype})")
    return ProviderConfig(
        name=name,
        type=ptype or "openai",
        base_url=base_url,
        keys=keys,
        timeout=c.number(t, "timeout", *at, default=600.0, positive=True),
        models=c.strings(t, "models", *at, what="model name", default=[]),
        headers=_headers(c, t, at),
        enabled=c.boolean(t, "enabled", *at, default=True),
        responses=c.boolean(t, "responses", *at, default=True),
    )


def _base_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_show(value)}")
    url = value.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"expected an http:// or https:// URL, got {_show(_redact_url(value))}")
    return url


def _env_name(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected the name of an environment variable, got {_show(value)}")
    if not _ENV_NAME.match(value):
        raise ValueError(f"not an environment variable name ([A-Za-z_][A-Za-z0-9_]*): {_show(value)}")
    return value


def _keys(c: Checks, value: object, at: tuple[str, ...]) -> list[ProviderKey]:
    if not isinstance(value, list):
        c.add((*at, "keys"), f'expected an array like [{{env = "A", weight = 1}}], got {_show(value)}')
        return []
    if not value:
        c.add((*at, "keys"), "expected at least one key (omit keys for a provider without a key)")
        return []
    out: list[ProviderKey] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        here: tuple[str | int, ...] = (*at, "keys", i)
        if isinstance(item, str):  # shorthand: keys = ["A", "B"]
            item = {"env": item}
        if not isinstance(item, dict):
            c.add(here, f'expected a table like {{env = "A", weight = 1}}, got {_show(item)}')
            continue
        c.unknown(item, ("env", "weight"), *here)
        env_name = c.parsed(item, "env", _env_name, *here, required=True)
        weight = c.integer(item, "weight", *here, default=1, lo=1)
        if env_name is None:
            continue
        if env_name in seen:
            c.add((*here, "env"), f"{_show(env_name)} is listed twice")
            continue
        seen.add(env_name)
        out.append(ProviderKey(env_name, weight))
    return out


def _headers(c: Checks, t: dict[str, Any], at: tuple[str, ...]) -> dict[str, str]:
    if "headers" not in t:
        return {}
    table = c.table(t["headers"], *at, "headers")
    out: dict[str, str] = {}
    for name, value in (table or {}).items():
        key = (*at, "headers", name)
        if not _HEADER_NAME.match(name):
            c.add(key, "not a valid HTTP header name")
        elif not isinstance(value, str):
            c.add(key, f"expected a string, got {_show(value)}", "invalid_type")
        elif "\r" in value or "\n" in value:
            c.add(key, "header values cannot contain line breaks")
        else:
            out[name] = value
    return out


# ---- aliases and pricing -----------------------------------------------------------------------


def _aliases(c: Checks, t: dict[str, Any], providers: Mapping[str, ProviderConfig]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in t.items():
        at = ("aliases", name)
        if "/" in name or not name.strip():
            c.add(at, 'alias names must not be empty or contain "/"')
            continue
        chain = [value] if isinstance(value, str) else value
        if not isinstance(chain, list) or not chain:
            c.add(at, f'expected "provider/model" or a non-empty array of them, got {_show(value)}')
            continue
        targets: list[str] = []
        for i, target in enumerate(chain):
            here = (*at, i) if isinstance(value, list) else at
            if _check_target(c, here, target, providers):
                targets.append(target)
        out[name] = targets
    return out


def _check_target(c: Checks, key: tuple[str | int, ...], target: object,
                  providers: Mapping[str, ProviderConfig]) -> bool:
    if not isinstance(target, str):
        c.add(key, f'expected "provider/model", got {_show(target)}')
        return False
    provider, sep, model = target.partition("/")
    if not sep or not provider or not model:
        c.add(key, f'expected "provider/model", got {_show(target)}')
        return False
    if provider not in providers:
        c.add(key, f"{_show(target)}: no provider named {_show(provider)} "
                   f"(configured: {', '.join(sorted(providers))})")
        return False
    if not providers[provider].serves(model):
        c.add(key, f"{_show(target)}: provider {_show(provider)} does not list model {_show(model)} "
                   "in its models")
        return False
    return True


def _pricing(c: Checks, t: dict[str, Any]) -> dict[str, PriceOverride]:
    out: dict[str, PriceOverride] = {}
    for name, value in t.items():
        at = ("pricing", name)
        provider, sep, model = name.partition("/")
        if not sep or not provider or not model:
            c.add(at, 'expected a "provider/model" key, e.g. [pricing."openai/gpt-4o-mini"]')
            continue
        table = c.table(value, *at)
        if table is None:
            continue
        c.unknown(table, PRICE_FIELDS, *at)
        fields: dict[str, Decimal] = {}
        for f in PRICE_FIELDS:
            if f not in table:
                continue
            try:
                nanos = parse_usd_per_mtok(table[f], where=_key(*at, f))
            except ConfigError as exc:
                c.add("", exc.message)
                continue
            fields[f] = Decimal(nanos).scaleb(-3)  # exact: USD per million tokens
        out[name] = PriceOverride(**fields)
    return out


# ---- the sections of the daemon's features ---------------------------------------------------------


def _cache(c: Checks, t: dict[str, Any]) -> CacheConfig:
    d = CacheConfig()
    c.unknown(t, tuple(CacheConfig.__dataclass_fields__), "cache")
    patterns = c.strings(t, "guard_patterns", "cache", what="regular expression", default=[])
    return CacheConfig(
        mode=c.choice(t, "mode", CACHE_MODES, "cache", default=d.mode),
        threshold=c.number(t, "threshold", "cache", default=d.threshold, positive=True, hi=1),
        ttl=c.integer(t, "ttl", "cache", default=d.ttl, lo=0),
        max_entries=c.integer(t, "max_entries", "cache", default=d.max_entries, lo=1),
        scope=c.choice(t, "scope", ("customer", "global"), "cache", default=d.scope),
        guard=c.boolean(t, "guard", "cache", default=d.guard),
        guard_patterns=tuple(patterns),
        model=c.string(t, "model", "cache"),
        charge_hits=c.boolean(t, "charge_hits", "cache", default=d.charge_hits),
        gate=c.boolean(t, "gate", "cache", default=d.gate),
        gate_classes=c.parsed(t, "gate_classes", _gate_classes, "cache", default=d.gate_classes),
        shadow=c.boolean(t, "shadow", "cache", default=d.shadow),
        verify_sample=c.number(t, "verify_sample", "cache", hi=1, default=d.verify_sample),
        namespace_thresholds=_thresholds(c, t, "namespace_thresholds"),
        model_thresholds=_thresholds(c, t, "model_thresholds"),
    )


def _gate_classes(value: Any) -> tuple[str, ...]:
    from .cache.gate import check_classes

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected an array of class names ({', '.join(GATE_CLASSES)})")
    return check_classes(value)


def _thresholds(c: Checks, t: dict[str, Any], name: str) -> tuple[tuple[str, float], ...]:
    table = t.get(name)
    if table is None:
        return ()
    if c.table(table, "cache", name) is None:
        return ()
    out: list[tuple[str, float]] = []
    for k in table:
        v = c.number(table, k, "cache", name, positive=True, hi=1)
        if v is not None:
            out.append((str(k), v))
    return tuple(out)


def _webhooks(c: Checks, t: dict[str, Any], env: Mapping[str, str]) -> WebhookConfig | None:
    if not t:
        return None
    c.unknown(t, ("url", "secret_env", "timeout", "max_attempts"), "webhooks")
    url = c.string(t, "url", "webhooks", required=True)
    if url is not None and not url.startswith(("http://", "https://")):
        c.add("webhooks.url", f"expected an http:// or https:// URL, got {_show(_redact_url(url))}")
    return WebhookConfig(url or "", _secret_env(c, t, "secret_env", env, "webhooks"),
                         timeout=c.number(t, "timeout", "webhooks", default=5.0, positive=True),
                         max_attempts=c.integer(t, "max_attempts", "webhooks", default=6, lo=1))


def _token(c: Checks, t: dict[str, Any], section: str, env: Mapping[str, str]) -> str | None:
    """``[admin]`` / ``[metrics]``: ``token_env``, the variable holding the bearer token."""
    c.unknown(t, ("token_env",), section)
    return _secret_env(c, t, "token_env", env, section)


_CURRENCY = re.compile(r"^[A-Z]{3}$")


def _ui(c: Checks, t: dict[str, Any], env: Mapping[str, str]) -> UiConfig | None:
    """``[ui]``: ``token_env`` (required: the page is off without it), ``currency`` and ``rate``
    (together or neither), ``session_hours``."""
    if not t:
        return None
    c.unknown(t, tuple(UiConfig.__dataclass_fields__), "ui")
    if t.get("token_env") is None:
        c.add("ui.token_env", "required: the variable holding the finance page's viewer token", "missing_field")
    var = _secret_env(c, t, "token_env", env, "ui")
    currency = c.string(t, "currency", "ui")
    if currency is not None and not _CURRENCY.match(currency):
        c.add("ui.currency", f'expected a 3-letter ISO 4217 code in capitals such as "EUR", got {_show(currency)}')
        currency = None
    rate = c.parsed(t, "rate", _rate, "ui")
    if ("currency" in t) != ("rate" in t):
        c.add("ui.rate" if "currency" in t else "ui.currency",
              "give currency and rate together (rate: units of the currency per USD)", "missing_field")
    hours = c.integer(t, "session_hours", "ui", default=12, lo=1, hi=24 * 90)
    return UiConfig(var or "", currency, rate, hours)


def _rate(value: object) -> Decimal:
    """A display rate: a decimal string (``"0.92"``), exactly; a float would carry binary noise."""
    if not isinstance(value, str):
        raise ValueError(f'expected a decimal string such as "0.92" (units per USD), got {_show(value)}')
    try:
        rate = Decimal(value.strip())
    except ArithmeticError:
        raise ValueError(f'expected a decimal string such as "0.92", got {_show(value)}') from None
    if not rate.is_finite() or rate <= 0:
        raise ValueError(f"must be a positive number, got {_show(value)}")
    if rate.as_tuple().exponent < -12 or rate > 10**9:  # type: ignore[operator]
        raise ValueError(f"at most 12 decimals and below 1000000000, got {_show(value)}")
    return rate


def _secret_env(c: Checks, t: dict[str, Any], name: str, env: Mapping[str, str], *at: str) -> str | None:
    """A secret by the name of its environment variable, which must then be set."""
    var = c.parsed(t, name, _env_name, *at)
    if var is not None and not env.get(var, "").strip():
        c.add((*at, name), f"environment variable {_show(var)} is not set")
    return var


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
# Seconds one request may take overall: every upstream attempt and fallback, a stream's whole body
# and the wait for its ledger row's commit.
request_timeout = 600.0
# On shutdown, seconds in-flight requests get to finish.
drain_timeout = 30.0
# Client request headers passed on to the provider: anthropic-* ones to Anthropic providers only,
# openai-* ones to OpenAI-format providers only. [] forwards none. Credentials never pass.
forward_headers = ["anthropic-beta", "anthropic-version", "openai-beta"]

[log]
# Log request and response bodies. They can hold personal data: leave off in production.
bodies = false
# Erase logged bodies older than this many whole days (the ledger rows stay).
# bodies_retain_days = 7

[ledger]
# Delete raw ledger rows older than this many whole days; their hourly and daily roll-ups stay,
# so reports do not change. Export first to keep them: llmgw ledger export --until DATE
# retain_days = 400

# PostgreSQL instead of the SQLite file under LLMGW_HOME for definitions and the ledger (pip install
# 'llmgw[postgres]'); the response cache stays in the home. A URL with a password belongs in the
# environment: give url_env, the name of the variable that holds it, instead of url.
# [store]
# url = "postgresql://llmgw@localhost:5432/llmgw"

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
# Without any [providers.*] section llmgw uses openai and anthropic with their defaults.
# Once you write one, list every provider you want. The offline demo provider exists only when
# declared here or with `llmgw serve --demo`.
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
#   responses    (openai type) false for a server without its own /v1/responses: Responses API
#                requests are then translated through chat completions (default true)
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

# The offline demo provider (models demo/echo, demo/lorem, demo/embed):
# [providers.demo]
# type = "demo"

[aliases]
# A model name clients may ask for, mapped to "provider/model" targets tried in order: when one
# fails (after its retries) the next is tried. A single string is a one-element chain.
caption = ["anthropic/claude-haiku-4-5-20251001", "openai/gpt-4o-mini"]
# fast = "openai/gpt-4o-mini"

# ---- finance page ---------------------------------------------------------------------------
# A read-only page at /ui with spend, budgets and savings per customer (off without [ui]).
# token_env names the variable holding its viewer token (the admin token also works).
# [ui]
# token_env = "LLMGW_UI_TOKEN"
# session_hours = 12          # how long a login lasts
# currency = "EUR"            # optional display currency, shown next to USD and labelled converted
# rate = "0.92"               # units of currency per USD, as a decimal string

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
