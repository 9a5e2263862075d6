from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from llmgw import config
from llmgw.config import Config, ProviderKey, load, validate_file
from llmgw.errors import ConfigError


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(text: str) -> Path:
    """Write ./llmgw.toml (tests run in tmp_path) so messages read ``llmgw.toml: ...``."""
    path = Path("llmgw.toml")
    path.write_text(text, encoding="utf-8")
    return path


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    return validate_file(write(text), environ=environ or {})


# ---- defaults ---------------------------------------------------------------------------------


def test_no_file_gives_every_default() -> None:
    cfg = load(None, environ={})
    assert isinstance(cfg, Config)
    assert cfg.path is None
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 8080)
    assert cfg.server.max_body_bytes == 20971520
    assert cfg.server.request_timeout == 600.0 and cfg.server.drain_timeout == 30.0
    assert cfg.log.bodies is False
    assert cfg.defaults.max_tokens == 4096
    assert (cfg.retry.max_retries, cfg.retry.backoff_base, cfg.retry.backoff_max) == (2, 0.5, 8.0)
    assert cfg.retry.max_retry_after == 30.0
    assert list(cfg.providers) == ["openai", "anthropic"]  # the demo only when asked for
    openai, anthropic, demo = cfg.providers["openai"], cfg.providers["anthropic"], cfg.with_demo().providers["demo"]
    assert (openai.type, openai.base_url, openai.keys) == (
        "openai", "https://api.openai.com/v1", [ProviderKey("OPENAI_API_KEY", 1)])
    assert (anthropic.type, anthropic.base_url, anthropic.keys) == (
        "anthropic", "https://api.anthropic.com", [ProviderKey("ANTHROPIC_API_KEY", 1)])
    assert (demo.type, demo.keys, demo.enabled) == ("demo", [], True)
    assert openai.timeout == 600.0 and openai.models == [] and openai.headers == {}
    assert cfg.aliases == {} and cfg.pricing == {} and cfg.raw == {}


def test_base_url_from_environment_trailing_slash_stripped() -> None:
    cfg = load(None, environ={"OPENAI_BASE_URL": "http://localhost:9999/v1/",
                              "ANTHROPIC_BASE_URL": "http://localhost:9998/"})
    assert cfg.providers["openai"].base_url == "http://localhost:9999/v1"
    assert cfg.providers["anthropic"].base_url == "http://localhost:9998"


def test_empty_file_is_all_defaults(in_tmp: Path) -> None:
    cfg = load(write(""), environ={})
    assert cfg.path == Path("llmgw.toml")
    assert list(cfg.providers) == ["openai", "anthropic"]


# ---- the starter file -------------------------------------------------------------------------


def test_starter_toml_loads_without_error(in_tmp: Path) -> None:
    path = write(config.STARTER_TOML)
    assert validate_file(path, environ={}) == []
    cfg = load(path, environ={})
    assert cfg.aliases["caption"] == ["anthropic/claude-haiku-4-5-20251001", "openai/gpt-4o-mini"]
    assert set(cfg.providers) == {"openai", "anthropic"}
    assert cfg.providers["openai"].keys == [ProviderKey("OPENAI_API_KEY")]
    assert cfg.providers["anthropic"].keys == [ProviderKey("ANTHROPIC_API_KEY")]
    # the values it shows are the defaults
    assert cfg.server == load(None, environ={}).server
    assert cfg.retry == load(None, environ={}).retry


def test_starter_toml_documents_every_section() -> None:
    text = config.STARTER_TOML
    for section in ("[server]", "[log]", "[defaults]", "[retry]", "[providers.openai]",
                    "[providers.anthropic]", "# [providers.vllm]", "[aliases]", '# [pricing."openai/'):
        assert section in text


def test_starter_toml_commented_examples_are_valid(in_tmp: Path) -> None:
    setting = re.compile(r'^# (\[.*\]|[A-Za-z_"][^=]* = .*)$')
    lines = [line[2:] if setting.match(line) else line for line in config.STARTER_TOML.splitlines()]
    uncommented = "\n".join(lines)
    assert "\n[providers.vllm]\n" in uncommented and '\n[pricing."openai/gpt-4o-mini"]\n' in uncommented
    cfg = load(write(uncommented), environ={"LLMGW_UI_TOKEN": "t"})
    assert cfg.ui == config.UiConfig("LLMGW_UI_TOKEN", "EUR", Decimal("0.92"), 12)
    assert cfg.providers["vllm"].base_url == "http://localhost:8000/v1"
    assert cfg.providers["demo"].type == "demo"
    assert cfg.aliases["fast"] == ["openai/gpt-4o-mini"]
    assert cfg.pricing["openai/gpt-4o-mini"].cached_input == Decimal("0.075")
    assert cfg.store.url == "postgresql://llmgw@localhost:5432/llmgw"


# ---- sections, unknown keys, raw sections ---------------------------------------------------


def test_full_file(in_tmp: Path) -> None:
    cfg = load(write("""
[server]
host = "0.0.0.0"
port = 9000
max_body_bytes = 1024
request_timeout = 30
drain_timeout = 0
[log]
bodies = true
[defaults]
max_tokens = 1000
[retry]
max_retries = 0
backoff_base = 0
backoff_max = 1.5
max_retry_after = 5
[providers.openai]
keys = [{env = "OA_1", weight = 3}, {env = "OA_2"}]
headers = {"OpenAI-Organization" = "org-123"}
[providers.vllm]
type = "openai"
base_url = "http://localhost:8000/v1/"
models = ["meta-llama/Llama-3.1-8B-Instruct"]
timeout = 120
[aliases]
fast = "openai/gpt-4o-mini"
llama = ["vllm/meta-llama/Llama-3.1-8B-Instruct", "openai/gpt-4o-mini"]
[pricing."openai/gpt-4o-mini"]
input = 0.2
[pricing."vllm/meta-llama/Llama-3.1-8B-Instruct"]
input = "0"
output = 0.001
"""), environ={})
    assert (cfg.server.host, cfg.server.port, cfg.server.max_body_bytes) == ("0.0.0.0", 9000, 1024)
    assert cfg.server.request_timeout == 30.0 and isinstance(cfg.server.request_timeout, float)
    assert cfg.log.bodies is True and cfg.defaults.max_tokens == 1000
    assert cfg.retry.max_retries == 0 and cfg.retry.backoff_base == 0.0
    assert list(cfg.providers) == ["openai", "vllm"]  # no anthropic: providers were listed
    assert cfg.providers["openai"].keys == [ProviderKey("OA_1", 3), ProviderKey("OA_2", 1)]
    assert cfg.providers["openai"].base_url == "https://api.openai.com/v1"
    assert cfg.providers["openai"].headers == {"OpenAI-Organization": "org-123"}
    vllm = cfg.providers["vllm"]
    assert (vllm.type, vllm.base_url, vllm.keys, vllm.timeout) == ("openai", "http://localhost:8000/v1", [], 120.0)
    assert cfg.aliases == {"fast": ["openai/gpt-4o-mini"],
                           "llama": ["vllm/meta-llama/Llama-3.1-8B-Instruct", "openai/gpt-4o-mini"]}
    assert cfg.pricing["openai/gpt-4o-mini"].input == Decimal("0.2")
    assert cfg.pricing["openai/gpt-4o-mini"].output is None
    assert cfg.pricing["vllm/meta-llama/Llama-3.1-8B-Instruct"].output == Decimal("0.001")


def test_declared_sections_are_kept_raw(in_tmp: Path) -> None:
    """[customers], [teams], [keys], [[budgets]] are config apply's (governance/declare.py)."""
    cfg = load(write('[[budgets]]\ncustomer = "a"\n[customers.a]\nname = 3\n[teams]\n[keys]\n'), environ={})
    assert cfg.raw["budgets"] == [{"customer": "a"}] and cfg.raw["customers"] == {"a": {"name": 3}}


def test_feature_sections_are_typed(in_tmp: Path) -> None:
    cfg = load(write("""
[cache]
mode = "semantic"
threshold = 0.9
guard_patterns = ['sku-[0-9]+']
[webhooks]
url = "https://hooks.example/llmgw"
secret_env = "HOOK_SECRET"
[admin]
token_env = "ADMIN_T"
[metrics]
token_env = "METRICS_T"
"""), environ={"HOOK_SECRET": "s3cret-value", "ADMIN_T": " a ", "METRICS_T": "m"})
    assert (cfg.cache.mode, cfg.cache.threshold, cfg.cache.guard_patterns) == ("semantic", 0.9, ("sku-[0-9]+",))
    assert cfg.webhooks == config.WebhookConfig("https://hooks.example/llmgw", "HOOK_SECRET")
    assert cfg.webhooks.resolve_secret({"HOOK_SECRET": "s3cret-value"}) == b"s3cret-value"
    assert (cfg.admin_token_env, cfg.metrics_token_env) == ("ADMIN_T", "METRICS_T")
    assert "s3cret-value" not in repr(cfg)  # secrets by the names of their variables, read on demand
    assert (cfg.token("admin", {"ADMIN_T": " a "}), cfg.token("metrics", {"METRICS_T": "m"})) == ("a", "m")
    with pytest.raises(ConfigError, match='llmgw.toml: metrics.token_env: environment variable "METRICS_T" is not'):
        cfg.token("metrics", {})  # the daemon's environment lacks what load saw: refuse, never open up
    with pytest.raises(ConfigError, match="webhooks.secret_env: environment variable"):
        cfg.webhooks.resolve_secret({})
    defaults = load(None, environ={})
    assert defaults.cache == config.CacheConfig() and defaults.webhooks is None
    assert defaults.token("metrics", {}) is None and defaults.token("admin", {}) is None
    assert defaults.token("admin", {"LLMGW_ADMIN_TOKEN": " zzz "}) == "zzz"
    assert defaults.token("admin", {"LLMGW_ADMIN_TOKEN": " "}) is None


def test_feature_sections_report_every_problem(in_tmp: Path) -> None:
    found = problems("""
[cache]
mode = "fuzzy"
threshold = 2
ttl = -1
mdoe = "exact"
[webhooks]
url = 3
secret_env = "UNSET_SECRET"
max_attempts = 0
[admin]
tokn = "X"
token_env = "not a name"
[metrics]
token_env = "UNSET_TOKEN"
""")
    assert found == [
        'llmgw.toml: cache.mdoe: unknown key; did you mean "mode"?',
        'llmgw.toml: cache.mode: expected one of "off", "exact", "semantic", got "fuzzy"',
        "llmgw.toml: cache.threshold: must be at most 1, got 2",
        "llmgw.toml: cache.ttl: must be at least 0, got -1",
        "llmgw.toml: webhooks.url: expected a string, got 3",
        'llmgw.toml: webhooks.secret_env: environment variable "UNSET_SECRET" is not set',
        "llmgw.toml: webhooks.max_attempts: must be at least 1, got 0",
        'llmgw.toml: admin.tokn: unknown key; did you mean "token_env"?',
        'llmgw.toml: admin.token_env: not an environment variable name ([A-Za-z_][A-Za-z0-9_]*): "not a name"',
        'llmgw.toml: metrics.token_env: environment variable "UNSET_TOKEN" is not set',
    ]
    assert problems('admin = "secret"\n[metrics]\ntoken_env = 5\n') == [
        'llmgw.toml: admin: expected a table, got "secret"',
        "llmgw.toml: metrics.token_env: expected the name of an environment variable, got 5",
    ]


def test_unknown_section_and_keys_are_errors(in_tmp: Path) -> None:
    found = problems("""
port = 1
[servers]
[server]
prot = 80
[log]
body = true
[retry]
whatever = 1
[providers.openai]
api_key = "sk-oops"
""")
    assert 'llmgw.toml: port: unknown top-level key; did you mean "server"?' not in found  # no bogus hint
    assert any(p.startswith("llmgw.toml: port: unknown top-level key") for p in found)
    assert 'llmgw.toml: servers: unknown section; did you mean "server"?' in found
    assert 'llmgw.toml: server.prot: unknown key; did you mean "port"?' in found
    assert 'llmgw.toml: log.body: unknown key; did you mean "bodies"?' in found
    assert any(p.startswith("llmgw.toml: retry.whatever: unknown key") for p in found)
    assert any(p.startswith("llmgw.toml: providers.openai.api_key: unknown key") for p in found)
    assert len(found) == 6


def test_load_raises_config_error_with_every_problem(in_tmp: Path) -> None:
    path = write('[server]\nhost = 1\nport = "80"\n')
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(info.value).splitlines() == [
        "llmgw.toml: server.host: expected a string, got 1",
        'llmgw.toml: server.port: expected an integer, got "80"',
    ]
    assert info.value.exit_code == 2


def test_missing_and_invalid_files(in_tmp: Path) -> None:
    assert validate_file(Path("nope.toml")) == ["nope.toml: file not found"]
    with pytest.raises(ConfigError, match="nope.toml: file not found"):
        load(Path("nope.toml"))
    found = problems("[server\nport = 1\n")
    assert len(found) == 1 and found[0].startswith("llmgw.toml: invalid TOML: ")


def test_section_must_be_a_table(in_tmp: Path) -> None:
    assert problems("server = 3\n") == ["llmgw.toml: server: expected a table, got 3"]


# ---- types and ranges -------------------------------------------------------------------------


def test_the_documented_example_message(in_tmp: Path) -> None:
    assert problems('[providers.openai]\ntimeout = "abc"\n') == [
        'llmgw.toml: providers.openai.timeout: expected a number, got "abc"'
    ]


@pytest.mark.parametrize(("toml", "message"), [
    ("[server]\nport = true", "server.port: expected an integer, got true"),
    ("[server]\nport = 65536", "server.port: must be between 0 and 65535, got 65536"),
    ("[server]\nport = -1", "server.port: must be between 0 and 65535, got -1"),
    ("[server]\nport = 80.0", "server.port: expected an integer, got 80.0"),
    ("[server]\nmax_body_bytes = 0", "server.max_body_bytes: must be at least 1, got 0"),
    ("[server]\nrequest_timeout = 0", "server.request_timeout: must be greater than 0, got 0"),
    ("[server]\nrequest_timeout = nan", "server.request_timeout: expected a finite number, got nan"),
    ("[server]\nrequest_timeout = true", "server.request_timeout: expected a number, got true"),
    ("[server]\ndrain_timeout = -1.5", "server.drain_timeout: must not be negative, got -1.5"),
    ('[server]\nhost = ""', "server.host: must not be empty"),
    ('[log]\nbodies = "yes"', 'log.bodies: expected true or false, got "yes"'),
    ("[log]\nbodies = 1", "log.bodies: expected true or false, got 1"),
    ("[defaults]\nmax_tokens = 0", "defaults.max_tokens: must be at least 1, got 0"),
    ("[retry]\nmax_retries = -1", "retry.max_retries: must be at least 0, got -1"),
    ("[retry]\nbackoff_max = [1]", "retry.backoff_max: expected a number, got an array"),
    ("[providers.openai]\ntimeout = 0", "providers.openai.timeout: must be greater than 0, got 0"),
    ("[providers.openai]\nenabled = 0", "providers.openai.enabled: expected true or false, got 0"),
])
def test_type_and_range_errors(in_tmp: Path, toml: str, message: str) -> None:
    assert problems(toml) == [f"llmgw.toml: {message}"]


# ---- providers -------------------------------------------------------------------------------


def test_demo_is_present_only_when_declared_or_asked_for(in_tmp: Path) -> None:
    cfg = load(write("[providers.anthropic]\n"), environ={})
    assert list(cfg.providers) == ["anthropic"]
    assert list(cfg.with_demo().providers) == ["anthropic", "demo"]  # serve --demo
    cfg = load(write("[providers.demo]\nenabled = false\n"), environ={})
    assert cfg.providers["demo"].enabled is False
    assert cfg.enabled_providers() == {}
    assert cfg.with_demo().enabled_providers() == {}  # a disabled demo stays disabled
    cfg = load(write("[providers]\n"), environ={})
    assert list(cfg.providers) == []


def test_other_names_need_type_and_base_url(in_tmp: Path) -> None:
    assert problems("[providers.vllm]\n") == [
        "llmgw.toml: providers.vllm.type: required for a provider not named openai, anthropic, demo",
    ]
    assert problems('[providers.vllm]\ntype = "openai"\n') == [
        "llmgw.toml: providers.vllm.base_url: required for a provider not named openai, anthropic, demo",
    ]
    assert problems('[providers.x]\ntype = "gemini"\nbase_url = "https://x"\n') == [
        'llmgw.toml: providers.x.type: expected one of "openai", "anthropic", "demo", got "gemini"',
    ]
    # a second provider of a known type gets no defaults for key or URL
    cfg = load(write('[providers.openai-eu]\ntype = "openai"\nbase_url = "https://eu.example/v1"\n'), environ={})
    assert cfg.providers["openai-eu"].keys == []
    # a renamed demo provider needs no URL
    assert problems('[providers.fake]\ntype = "demo"\n') == []


def test_provider_name_and_url_checks(in_tmp: Path) -> None:
    assert problems('[providers.OpenAI]\n') == [
        'llmgw.toml: providers.OpenAI: provider names use only a-z, 0-9, _ and -'
    ]
    assert problems('[providers.openai]\nbase_url = "api.openai.com"\n') == [
        'llmgw.toml: providers.openai.base_url: expected an http:// or https:// URL, got "api.openai.com"'
    ]
    found = problems('[providers.openai]\n', environ={"OPENAI_BASE_URL": "ftp://x"})
    assert found == ['llmgw.toml: providers.openai.base_url (from OPENAI_BASE_URL): '
                     'expected an http:// or https:// URL, got "ftp://x"']


def test_key_checks(in_tmp: Path) -> None:
    assert problems('[providers.openai]\napi_key_env = "1BAD-NAME"\n') == [
        'llmgw.toml: providers.openai.api_key_env: not an environment variable name '
        '([A-Za-z_][A-Za-z0-9_]*): "1BAD-NAME"'
    ]
    assert problems('[providers.openai]\napi_key_env = "A"\nkeys = [{env = "B"}]\n') == [
        "llmgw.toml: providers.openai: set api_key_env or keys, not both"
    ]
    assert problems('[providers.openai]\nkeys = [{env = "A", weight = 0}, {env = "B", weight = true}]\n') == [
        "llmgw.toml: providers.openai.keys[0].weight: must be at least 1, got 0",
        "llmgw.toml: providers.openai.keys[1].weight: expected an integer, got true",
    ]
    assert problems('[providers.openai]\nkeys = [{env = "A", wieght = 2}, {weight = 2}, 3, {env = "A"}]\n') == [
        'llmgw.toml: providers.openai.keys[0].wieght: unknown key; did you mean "weight"?',
        "llmgw.toml: providers.openai.keys[1].env: required",
        "llmgw.toml: providers.openai.keys[2]: expected a table like {env = \"A\", weight = 1}, got 3",
        'llmgw.toml: providers.openai.keys[3].env: "A" is listed twice',
    ]
    assert problems('[providers.openai]\nkeys = []\n') == [
        "llmgw.toml: providers.openai.keys: expected at least one key (omit keys for a provider without a key)"
    ]
    cfg = load(write('[providers.openai]\nkeys = ["A", "B"]\n'), environ={})
    assert cfg.providers["openai"].keys == [ProviderKey("A"), ProviderKey("B")]


def test_models_and_headers_checks(in_tmp: Path) -> None:
    assert problems('[providers.openai]\nmodels = ["gpt-4o", 3]\nheaders = {"X-A" = 1, "bad name" = "v"}\n') == [
        "llmgw.toml: providers.openai.models[1]: expected a model name, got 3",
        'llmgw.toml: providers.openai.headers.X-A: expected a string, got 1',
        'llmgw.toml: providers.openai.headers."bad name": not a valid HTTP header name',
    ]


def test_resolve_keys_reads_only_set_variables() -> None:
    cfg = load(None, environ={})
    assert cfg.providers["openai"].resolve_keys({"OPENAI_API_KEY": "sk-secret"}) == [("sk-secret", 1)]
    assert cfg.providers["openai"].resolve_keys({"OPENAI_API_KEY": ""}) == []
    assert cfg.with_demo().providers["demo"].resolve_keys({"OPENAI_API_KEY": "sk-secret"}) == []


def test_resolve_keys_with_weights(in_tmp: Path) -> None:
    cfg = load(write('[providers.openai]\nkeys = [{env = "A", weight = 3}, {env = "B"}, {env = "C"}]\n'),
               environ={})
    assert cfg.providers["openai"].resolve_keys({"A": "sk-a", "C": "sk-c"}) == [("sk-a", 3), ("sk-c", 1)]


def test_no_secret_in_repr(in_tmp: Path) -> None:
    cfg = load(write("""
[providers.openai]
base_url = "https://user:hunter2@proxy.example/v1"
headers = {"Authorization" = "Bearer sk-header-secret"}
"""), environ={"OPENAI_API_KEY": "sk-env-secret"})
    provider = cfg.providers["openai"]
    assert provider.resolve_keys({"OPENAI_API_KEY": "sk-env-secret"}) == [("sk-env-secret", 1)]
    for text in (repr(cfg), str(cfg), repr(provider), str(provider), repr(provider.keys)):
        assert "sk-header-secret" not in text
        assert "hunter2" not in text
        assert "sk-env-secret" not in text
    assert "Authorization" in repr(provider)  # header names are fine
    assert "OPENAI_API_KEY" in repr(provider)  # env names are fine


# ---- aliases and pricing ----------------------------------------------------------------------


def test_alias_checks(in_tmp: Path) -> None:
    found = problems("""
[providers.openai]
models = ["gpt-4o"]
[aliases]
"a/b" = "openai/gpt-4o"
empty = []
bad = ["openai/gpt-4o", "nope/model", "no-slash", 7, "openai/gpt-5"]
""")
    assert found == [
        'llmgw.toml: aliases."a/b": alias names must not be empty or contain "/"',
        'llmgw.toml: aliases.empty: expected "provider/model" or a non-empty array of them, got an array',
        'llmgw.toml: aliases.bad[1]: "nope/model": no provider named "nope" (configured: openai)',
        'llmgw.toml: aliases.bad[2]: expected "provider/model", got "no-slash"',
        'llmgw.toml: aliases.bad[3]: expected "provider/model", got 7',
        'llmgw.toml: aliases.bad[4]: "openai/gpt-5": provider "openai" does not list model "gpt-5" in its models',
    ]
    assert problems('[aliases]\nx = "anthropic/claude-haiku-4-5"\n') == []


def test_pricing_override_checks(in_tmp: Path) -> None:
    found = problems("""
[pricing."openai/gpt-4o-mini"]
input = 0.0001
output = "abc"
cached = 1
[pricing.gpt-4o]
input = 1
[pricing."openai/x"]
input = -1
output = true
""")
    assert found == [
        'llmgw.toml: pricing."openai/gpt-4o-mini".cached: unknown key; did you mean "cached_input"?',
        'llmgw.toml: pricing."openai/gpt-4o-mini".input: 0.0001 USD per million tokens is not a whole '
        "number of nano-dollars per token (use at most 3 decimals)",
        'llmgw.toml: pricing."openai/gpt-4o-mini".output: expected an amount in USD such as 150 or 12.50, '
        'got "abc"',
        'llmgw.toml: pricing.gpt-4o: expected a "provider/model" key, e.g. [pricing."openai/gpt-4o-mini"]',
        'llmgw.toml: pricing."openai/x".input: must not be negative, got -1',
        'llmgw.toml: pricing."openai/x".output: expected an amount in USD such as 150 or 12.50, got true',
    ]


def test_validate_collects_problems_from_every_section(in_tmp: Path) -> None:
    found = problems("""
[server]
port = 70000
[providers.openai]
timeout = -1
[aliases]
x = "ghost/model"
[pricing."openai/gpt-4o"]
input = 0.00001
""")
    assert [p.split(": ")[1] for p in found] == [
        "server.port", "providers.openai.timeout", "aliases.x", 'pricing."openai/gpt-4o".input',
    ]


# ---- dump -------------------------------------------------------------------------------------


def test_dump_round_trips_raw(in_tmp: Path) -> None:
    cfg = load(write(config.STARTER_TOML), environ={})
    raw = dict(cfg.raw)
    raw["server"] = {**raw["server"], "port": 9999}
    text = config.dump(raw)
    assert "#" not in text  # comments are not preserved
    again = load(write(text), environ={})
    assert again.server.port == 9999
    assert again.aliases == cfg.aliases and again.providers == cfg.providers
    assert "not preserved" in (config.dump.__doc__ or "")


def test_retention_settings(in_tmp: Path) -> None:
    cfg = load(write("[ledger]\nretain_days = 90\n[log]\nbodies = true\nbodies_retain_days = 7\n"), environ={})
    assert (cfg.ledger.retain_days, cfg.log.bodies, cfg.log.bodies_retain_days) == (90, True, 7)
    defaults = load(None, environ={})
    assert (defaults.ledger.retain_days, defaults.log.bodies_retain_days) == (None, None)  # keep everything
    assert config.validate_file(write("[ledger]\nretain_days = 0\nkeep = 1\n[log]\nbodies_retain_days = 'x'\n"),
                                environ={}) == [
        "llmgw.toml: log.bodies_retain_days: expected an integer, got \"x\"",
        "llmgw.toml: ledger.keep: unknown key (known: retain_days)",
        "llmgw.toml: ledger.retain_days: must be at least 1, got 0",
    ]


def test_ui_section(in_tmp: Path) -> None:
    assert load(write(""), environ={}).ui is None  # off unless configured
    cfg = load(write('[ui]\ntoken_env = "UI_T"\nsession_hours = 2\n'), environ={"UI_T": " v "})
    assert cfg.ui == config.UiConfig("UI_T", None, None, 2) and cfg.token("ui", {"UI_T": " v "}) == "v"
    with pytest.raises(ConfigError, match='llmgw.toml: ui.token_env: environment variable "UI_T" is not set'):
        cfg.token("ui", {})
    assert load(write('[ui]\ntoken_env = "UI_T"\ncurrency = "JPY"\nrate = "151.25"\n'),
                environ={"UI_T": "v"}).ui.rate == Decimal("151.25")
    assert problems('[ui]\ncurrency = "eur"\nrate = 0.92\nsession_hours = 0\ncolour = 1\n') == [
        'llmgw.toml: ui.colour: unknown key (known: token_env, currency, rate, session_hours)',
        "llmgw.toml: ui.token_env: required: the variable holding the finance page's viewer token",
        'llmgw.toml: ui.currency: expected a 3-letter ISO 4217 code in capitals such as "EUR", got "eur"',
        'llmgw.toml: ui.rate: expected a decimal string such as "0.92" (units per USD), got 0.92',
        "llmgw.toml: ui.session_hours: must be between 1 and 2160, got 0",
    ]
    assert problems('[ui]\ntoken_env = "UI_T"\nrate = "-1"\n', {"UI_T": "v"}) == [
        'llmgw.toml: ui.rate: must be a positive number, got "-1"',
        "llmgw.toml: ui.currency: give currency and rate together (rate: units of the currency per USD)"]
    assert problems('[ui]\ntoken_env = "UI_T"\ncurrency = "EUR"\nrate = "abc"\n', {"UI_T": "v"}) == [
        'llmgw.toml: ui.rate: expected a decimal string such as "0.92", got "abc"']
    assert problems('[ui]\ntoken_env = "UNSET"\n') == [
        'llmgw.toml: ui.token_env: environment variable "UNSET" is not set']


def test_cluster_section(in_tmp: Path) -> None:
    assert load(write("")).cluster.redis_url is None  # one instance by default
    c = load(write('[cluster]\nredis_url_env = "R"\nlease_ttl = 4\nsync_interval = 1\nprefix = "prod-eu"\n'),
             environ={"R": "redis://:hunter2hunter2@redis.internal:6379/0"}).cluster
    assert (c.redis_url, c.lease_ttl, c.sync_interval, c.timeout, c.prefix) == (
        "redis://:hunter2hunter2@redis.internal:6379/0", 4.0, 1.0, 0.5, "prod-eu")
    assert "hunter2" not in repr(c)  # the password never reaches a log line
    found = problems('[cluster]\nredis_url = "http://:pw-secret-value@r:1/0"\nredis_url_env = "R"\nsync_interval = 3\n'
                     'prefix = "a b"\nttl = 1\n', {"R": "redis://r"})
    assert not any("pw-secret-value" in p for p in found), found
    assert any("cluster.redis_url_env: give redis_url or redis_url_env, not both" in p for p in found), found
    assert any("cluster.sync_interval: must be at most a quarter of lease_ttl" in p for p in found), found
    assert any("cluster.prefix: letters, digits" in p for p in found), found
    assert any("cluster.ttl: unknown key" in p for p in found), found
    assert problems('[cluster]\nredis_url = "redis.internal:6379"\n') == [
        "llmgw.toml: cluster.redis_url: expected a redis://, rediss:// or unix:// URL, got 'redis.internal:6379'"]
    assert problems('[cluster]\nredis_url_env = "UNSET_R"\n') == [
        'llmgw.toml: cluster.redis_url_env: environment variable "UNSET_R" is not set']
