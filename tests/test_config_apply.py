"""``llmgw config apply`` and ``llmgw config export`` through the real command line (a subprocess on a
real SQLite file under a temp LLMGW_HOME): creation with the secret shown once, idempotence, exact
change reports, validation that writes nothing, dry runs, export → apply round trips, and secrets that
never reach the export or the database."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from llmgw.governance.keys import hash_secret
from llmgw.store import db as store_db
from test_cli import Cli, assert_error

ACME = """\
[customers.acme_corp]
name = "Acme Corp"
budgets = [{ period = "month", limit = 200, hard = true, warn_at = 80, grace = 10 }]

[teams.captioning]
customer = "acme_corp"
budgets = [{ period = "day", limit = 20 }]

[keys.vk_acme_corp]            # keys are declared by name; secrets are never in the file
customer = "acme_corp"
team = "captioning"
models = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001"]
rpm = 60
tpm = 100000
clamp = false
cache = "semantic"
expires = "2027-01-01"
budgets = [{ period = "month", limit = 50 }]
status = "active"
"""

CREATED = [
    "+ customer acme_corp",
    "+ team captioning",
    "+ key vk_acme_corp: ",  # followed by the secret
    "+ budget customer acme_corp month $200.00 (grace $10.00)",
    "+ budget team captioning day $20.00",
    "+ budget key vk_acme_corp month $50.00",
]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(home=tmp_path / "home", tmp=tmp_path)


def write(cli: Cli, text: str, name: str = "llmgw.toml") -> Path:
    path = cli.tmp / name
    path.write_text(text)
    return path


def rows(home: Path, sql: str, *args: object) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(home / "llmgw.db")) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, args)]


def dump(home: Path) -> str:
    with contextlib.closing(sqlite3.connect(home / "llmgw.db")) as conn:
        return "\n".join(conn.iterdump())


def definitions(home: Path) -> dict[str, Any]:
    """Everything apply defines, without ids, hashes and times: comparable across homes. A key is
    known by its name, an unnamed one by its id (the name it is exported, and recreated, under)."""
    keys = rows(home, "SELECT id, name, customer_id, team_id, status, models, rpm, tpm, clamp, cache_mode,"
                      " expires_at FROM keys WHERE status != 'revoked'")
    for k in keys:
        k["name"] = k["name"] or k["id"]
    keys.sort(key=lambda k: k["name"])
    names = {k.pop("id"): k["name"] for k in keys}
    budgets = rows(home, "SELECT scope, scope_id, period, limit_nanos, hard, warn_pct, grace_nanos FROM budgets")
    for b in budgets:
        if b["scope"] == "key":
            b["scope_id"] = names[b["scope_id"]]
    return {
        "customers": rows(home, "SELECT id, name FROM customers ORDER BY id"),
        "teams": rows(home, "SELECT id, customer_id, name FROM teams ORDER BY id"),
        "keys": keys,
        "budgets": sorted(budgets, key=lambda b: (b["scope"], b["scope_id"], b["period"])),
    }


def apply_ok(cli: Cli, path: Path, *args: str, home: Path | None = None) -> list[str]:
    res = cli("config", "apply", "--config", path, *args, *(("--home", home) if home else ()))
    assert res.code == 0, res
    return res.out.splitlines()


def secret_of(lines: list[str], name: str) -> str:
    prefix = f"+ key {name}: "
    (line,) = [line for line in lines if line.startswith(prefix)]
    secret = line.removeprefix(prefix)
    assert secret.startswith("sk-llmgw-") and len(secret) > 40
    return secret


# ---- apply --------------------------------------------------------------------------------------


def test_apply_creates_everything_and_shows_the_secret_once(cli: Cli) -> None:
    path = write(cli, ACME)
    res = cli("config", "apply", "--config", path)
    assert res.code == 0, res
    lines = res.out.splitlines()
    assert len(lines) == len(CREATED)
    for line, expected in zip(lines, CREATED, strict=True):
        assert line.startswith(expected), res
    secret = secret_of(lines, "vk_acme_corp")
    assert secret not in res.err
    assert "only this once" in res.err

    assert rows(cli.home, "SELECT id, name FROM customers") == [{"id": "acme_corp", "name": "Acme Corp"}]
    assert rows(cli.home, "SELECT id, customer_id, name FROM teams") == [
        {"id": "captioning", "customer_id": "acme_corp", "name": None}]
    (key,) = rows(cli.home, "SELECT * FROM keys")
    assert key["name"] == "vk_acme_corp"
    assert (key["customer_id"], key["team_id"], key["status"]) == ("acme_corp", "captioning", "active")
    assert json.loads(key["models"]) == ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001"]
    assert (key["rpm"], key["tpm"], key["clamp"], key["cache_mode"]) == (60, 100000, 0, "semantic")
    assert key["expires_at"] == "2027-01-01T00:00:00Z"
    assert key["key_hash"] == hash_secret(secret)  # the secret works, and only its hash is stored
    assert secret not in dump(cli.home)
    budgets = {(b["scope"], b["scope_id"], b["period"]): b for b in rows(cli.home, "SELECT * FROM budgets")}
    assert budgets.keys() == {("customer", "acme_corp", "month"), ("team", "captioning", "day"),
                              ("key", key["id"], "month")}
    acme = budgets["customer", "acme_corp", "month"]
    assert (acme["limit_nanos"], acme["hard"], acme["warn_pct"], acme["grace_nanos"]) == (
        200_000_000_000, 1, 80, 10_000_000_000)
    assert budgets["key", key["id"], "month"]["limit_nanos"] == 50_000_000_000

    # the same file again: nothing to do, and the secret is not shown again
    res = cli("config", "apply", "--config", path)
    assert res.code == 0, res
    assert res.out == ""
    assert res.err.strip() == "no changes"
    assert rows(cli.home, "SELECT key_hash FROM keys") == [{"key_hash": hash_secret(secret)}]


def test_config_found_in_home_and_json_output(cli: Cli) -> None:
    cli.home.mkdir()
    (cli.home / "llmgw.toml").write_text(ACME)
    res = cli("config", "apply", "--json")
    assert res.code == 0, res
    out = json.loads(res.out)
    assert out["dry_run"] is False
    kinds = [(c["action"], c["kind"], c["id"]) for c in out["changes"]]
    assert kinds == [("create", "customer", "acme_corp"), ("create", "team", "captioning"),
                     ("create", "key", "vk_acme_corp"), ("create", "budget", "acme_corp"),
                     ("create", "budget", "captioning"), ("create", "budget", "vk_acme_corp")]
    key = out["changes"][2]
    assert key["secret"].startswith("sk-llmgw-")
    assert rows(cli.home, "SELECT key_hash FROM keys")[0]["key_hash"] == hash_secret(key["secret"])
    assert out["changes"][3] == {"action": "create", "kind": "budget", "id": "acme_corp", "scope": "customer",
                                 "period": "month", "limit": "200.00", "hard": True, "warn_at": 80,
                                 "grace": "10.00"}
    res = cli("config", "apply", "--json")
    assert res.code == 0, res
    assert json.loads(res.out) == {"dry_run": False, "changes": []}


def test_only_what_changed_is_reported_and_stored(cli: Cli) -> None:
    path = write(cli, ACME)
    apply_ok(cli, path)
    (before,) = rows(cli.home, "SELECT * FROM keys")
    budget_ids = {r["id"] for r in rows(cli.home, "SELECT id FROM budgets")}

    changed = (ACME.replace("limit = 200,", "limit = 250.5,")
               .replace('models = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001"]',
                        'models = ["openai/gpt-4o-mini", "openai/gpt-4o"]')
               .replace("rpm = 60", "rpm = 30"))
    path.write_text(changed)
    lines = apply_ok(cli, path)
    assert lines == [
        '~ key vk_acme_corp: models ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001"] -> '
        '["openai/gpt-4o-mini", "openai/gpt-4o"]',
        "~ key vk_acme_corp: rpm 60 -> 30",
        "~ budget customer acme_corp month: limit $200.00 -> $250.50",
    ]
    (after,) = rows(cli.home, "SELECT * FROM keys")
    assert json.loads(after["models"]) == ["openai/gpt-4o-mini", "openai/gpt-4o"]
    assert after["rpm"] == 30
    # the secret, id and everything else are untouched; the budget kept its id (daemon counters survive)
    assert {k: v for k, v in after.items() if k not in ("models", "rpm")} == \
        {k: v for k, v in before.items() if k not in ("models", "rpm")}
    assert {r["id"] for r in rows(cli.home, "SELECT id FROM budgets")} == budget_ids
    (acme,) = rows(cli.home, "SELECT * FROM budgets WHERE scope = 'customer'")
    assert (acme["limit_nanos"], acme["grace_nanos"], acme["warn_pct"]) == (250_500_000_000, 10_000_000_000, 80)
    assert apply_ok(cli, path) == []


def test_a_field_left_out_takes_its_default_and_status_disables(cli: Cli) -> None:
    path = write(cli, ACME)
    apply_ok(cli, path)
    path.write_text(ACME.replace("rpm = 60\n", "").replace('cache = "semantic"\n', "")
                    .replace('name = "Acme Corp"\n', 'name = "ACME"\n')
                    .replace('status = "active"', 'status = "disabled"'))
    assert apply_ok(cli, path) == [
        '~ customer acme_corp: name "Acme Corp" -> "ACME"',
        "~ key vk_acme_corp: rpm 60 -> (unlimited)",
        '~ key vk_acme_corp: cache "semantic" -> (default)',
        '~ key vk_acme_corp: status "active" -> "disabled"',
    ]
    (key,) = rows(cli.home, "SELECT rpm, cache_mode, status FROM keys")
    assert key == {"rpm": None, "cache_mode": None, "status": "disabled"}


def test_apply_never_deletes(cli: Cli) -> None:
    path = write(cli, ACME)
    apply_ok(cli, path)
    assert cli("customers", "create", "other_co").code == 0
    assert cli("budget", "set", "--customer", "acme_corp", "--period", "day", "--limit", "5").code == 0
    # a file with only the customer (and not even all its budgets) removes nothing
    path.write_text('[customers.acme_corp]\nname = "Acme Corp"\n')
    res = cli("config", "apply", "--config", path)
    assert res.code == 0, res
    assert res.out == ""
    assert [r["id"] for r in rows(cli.home, "SELECT id FROM customers ORDER BY id")] == ["acme_corp", "other_co"]
    assert len(rows(cli.home, "SELECT * FROM teams")) == 1
    assert len(rows(cli.home, "SELECT * FROM keys")) == 1
    assert len(rows(cli.home, "SELECT * FROM budgets")) == 4


def test_top_level_budgets_on_things_made_with_the_cli(cli: Cli) -> None:
    assert cli("customers", "create", "beta").code == 0
    res = cli("keys", "create", "--customer", "beta")
    assert res.code == 0, res
    (key,) = rows(cli.home, "SELECT id FROM keys")
    path = write(cli, f"""\
[[budgets]]
customer = "beta"
period = "week"
limit = "12.50"
warn_at = 90

[[budgets]]
key = "{key['id']}"
period = "total"
limit = "0.000000001"
hard = false
""")
    assert apply_ok(cli, path) == [
        "+ budget customer beta week $12.50 (warn at 90%)",
        f"+ budget key {key['id']} total $0.000000001 (soft)",
    ]
    assert apply_ok(cli, path) == []
    budgets = rows(cli.home, "SELECT scope, scope_id, limit_nanos, hard, warn_pct FROM budgets ORDER BY scope")
    assert budgets == [{"scope": "customer", "scope_id": "beta", "limit_nanos": 12_500_000_000, "hard": 1,
                        "warn_pct": 90},
                       {"scope": "key", "scope_id": key["id"], "limit_nanos": 1, "hard": 0, "warn_pct": 80}]


# ---- problems: all listed, nothing written ---------------------------------------------------------

BAD = """\
[server]
port = "eighty"

[customers.acme_corp]
budgets = [{ period = "fortnight", limit = 200 }]

[teams.captioning]
customer = "nobody"

[keys.vk_acme_corp]
customer = "acme_corp"
rpm = 60
colour = "blue"
secret = "sk-llmgw-abc"
budgets = [{ period = "month", limit = -5 }, { period = "day", limit = "0.0000000001" }]

[keys.vk_other]
team = "no_such_team"

[[budgets]]
customer = "ghost"
period = "month"
limit = 1
"""


def test_invalid_file_lists_every_problem_and_writes_nothing(cli: Cli) -> None:
    path = write(cli, BAD)
    res = cli("config", "apply", "--config", path)
    assert_error(res, 2, "problems, nothing applied")
    assert res.out == ""
    expected = [
        f'{path}: server.port: expected an integer, got "eighty"',
        f'{path}: customers.acme_corp.budgets[0].period: expected one of "day", "week", "month", "total", '
        'got "fortnight"',
        f'{path}: keys.vk_acme_corp.colour: unknown key',
        f"{path}: keys.vk_acme_corp.secret: secrets are never declared in the file",
        f"{path}: keys.vk_acme_corp.budgets[0].limit: must not be negative, got -5",
        f'{path}: keys.vk_acme_corp.budgets[1].limit: "0.0000000001" is finer than a nano-dollar',
        f'{path}: teams.captioning.customer: no customer "nobody" in the file or the database',
        f'{path}: keys.vk_other.team: no team "no_such_team" in the file or the database',
        f'{path}: budgets[0].customer: no customer "ghost" in the file or the database',
    ]
    for fragment in expected:
        assert fragment in res.err, (fragment, res)
    assert "9 problems" in res.err, res
    assert "sk-llmgw-abc" not in res.err
    for table in ("customers", "teams", "keys", "budgets"):
        assert rows(cli.home, f"SELECT * FROM {table}") == []
    # --dry-run reports the same problems
    res = cli("config", "apply", "--config", path, "--dry-run")
    assert_error(res, 2, "9 problems")


@pytest.mark.parametrize(("text", "fragment"), [
    ('[keys."sk-llmgw-0123456789abcdef"]\n', "looks like a secret"),
    ('[customers."Acme Corp"]\n', "invalid customer id"),
    ('[teams.t]\nname = "T"\n', "teams.t.customer: required"),
    ('[customers.a]\n[keys.k]\ncustomer = "a"\nmodels = []\n', "keys.k.models: empty"),
    ('[customers.a]\n[keys.k]\ncustomer = "a"\nrpm = 0\n', "keys.k.rpm: must be at least 1, got 0"),
    ('[customers.a]\n[keys.k]\ncustomer = "a"\nexpires = "soon"\n', "keys.k.expires: expected YYYY-MM-DD"),
    ('[customers.a]\n[keys.k]\ncustomer = "a"\ncache = "fuzzy"\n', "keys.k.cache: expected one of"),
    ('[customers.a]\n[keys.k]\ncustomer = "a"\nstatus = "paused"\n', "keys.k.status: expected one of"),
    ('[customers.a]\nbudgets = [{ period = "day", limit = 1 }, { period = "day", limit = 2 }]\n',
     "customers.a.budgets[1].period: a day budget is already listed"),
    ('[customers.a]\nbudgets = [{ period = "day", limit = 1, hard = false, grace = 1 }]\n',
     "applies to hard budgets only"),
    ('[customers.a]\nbudgets = [{ period = "day", limit = 1, warn_at = 0 }]\n', "warn_at: must be between 1 and 100, got 0"),
    ('[customers.a]\nbudgets = [{ period = "day" }]\n', "customers.a.budgets[0].limit: required"),
    ('[customers.a]\nbudgets = [{ period = "day", limit = "lots" }]\n', "expected an amount in USD"),
    ('[customers.a]\n[customers.b]\n[teams.t]\ncustomer = "a"\n[keys.k]\ncustomer = "b"\nteam = "t"\n',
     'team t belongs to customer "a", not "b"'),
    ('[budgets]\ncustomer = "a"\n', "expected an array of tables"),
    ('[[budgets]]\ncustomer = "a"\nteam = "t"\nperiod = "day"\nlimit = 1\n', "exactly one of customer, team or key"),
    ('[customers.a]\nbudgets = [{ period = "day", limit = 1 }]\n[[budgets]]\ncustomer = "a"\nperiod = "day"\n'
     'limit = 2\n', "budgets[0].period: the day budget of customer a is also declared at customers.a.budgets[0]"),
    ('[[budgets]]\nkey = "nope"\nperiod = "day"\nlimit = 1\n', 'budgets[0].key: no key named "nope"'),
    ('[customers.a]\n[keys.k]\ncustomer = "a"\nkey_hash = "abc"\n', "keys.k.key_hash: secrets are never declared"),
    ("[customers.a\n", "invalid TOML"),
])
def test_each_problem_is_reported_and_nothing_written(cli: Cli, text: str, fragment: str) -> None:
    path = write(cli, text)
    res = cli("config", "apply", "--config", path)
    assert_error(res, 2, fragment)
    assert res.out == ""
    for table in ("customers", "teams", "keys", "budgets"):
        assert rows(cli.home, f"SELECT * FROM {table}") == []


def test_ownership_is_fixed_and_revocation_final(cli: Cli) -> None:
    path = write(cli, ACME + '\n[customers.beta]\n[teams.beta_team]\ncustomer = "beta"\n')
    apply_ok(cli, path)
    # a team cannot move to another customer, nor a key to another team
    moved = ACME.replace('[teams.captioning]\ncustomer = "acme_corp"', '[teams.captioning]\ncustomer = "beta"')
    path.write_text(moved + '\n[customers.beta]\n')
    assert_error(cli("config", "apply", "--config", path), 2,
                 'teams.captioning.customer: team captioning belongs to customer "acme_corp"')
    path.write_text(ACME.replace('customer = "acme_corp"\nteam = "captioning"', 'team = "beta_team"'))
    assert_error(cli("config", "apply", "--config", path), 2, "a key cannot change owner")

    assert cli("keys", "revoke", "vk_acme_corp").code == 0
    path.write_text(ACME)
    assert_error(cli("config", "apply", "--config", path), 2, "keys.vk_acme_corp.status: key vk_acme_corp was "
                                                              "revoked; revocation is final")
    assert rows(cli.home, "SELECT status FROM keys") == [{"status": "revoked"}]
    path.write_text(ACME.replace('status = "active"', 'status = "revoked"'))
    assert apply_ok(cli, path) == []
    # revoking through the file; a revoked key that does not exist is not created
    path.write_text('[customers.acme_corp]\nname = "Acme Corp"\n[keys.k2]\ncustomer = "acme_corp"\n'
                    '[keys.k3]\nstatus = "revoked"\n')
    lines = apply_ok(cli, path)
    assert lines[0].startswith("+ key k2: sk-llmgw-")
    path.write_text('[keys.k2]\ncustomer = "acme_corp"\nstatus = "revoked"\n')
    assert apply_ok(cli, path) == ['~ key k2: status "active" -> "revoked"']
    (k2,) = rows(cli.home, "SELECT status, revoked_at FROM keys WHERE name = 'k2'")
    assert k2["status"] == "revoked" and k2["revoked_at"]
    assert rows(cli.home, "SELECT * FROM keys WHERE name = 'k3'") == []


def test_expired_keys_are_allowed_with_a_warning(cli: Cli) -> None:
    path = write(cli, '[keys.old]\nexpires = 2020-01-01\n')
    res = cli("config", "apply", "--config", path)
    assert res.code == 0, res
    assert "keys.old.expires: 2020-01-01T00:00:00Z is in the past" in res.err
    res = cli("config", "apply", "--config", path)
    assert (res.code, res.out, res.err.strip()) == (0, "", "no changes")


def test_missing_config_file(cli: Cli) -> None:
    assert_error(cli("config", "apply"), 2, "no config file found")
    assert_error(cli("config", "apply", "--config", cli.tmp / "nope.toml"), 2, "config file not found")


# ---- config validate: one pass, everything serve and apply would refuse --------------------------------

EVERYWHERE = BAD + """
[providers.vllm]
type = "openai"
timeout = -1

[cache]
mode = "fuzzy"
threshold = 2

[webhooks]
url = "ftp://hooks.example"
max_attempts = 0

[admin]
token_env = "UNSET_ADMIN_TOKEN"

[metrics]
tokn = "x"
"""


def problem_lines(text: str, path: Path) -> set[str]:
    return {line for line in text.splitlines() if line.startswith(f"{path}: ")}


def test_validate_lists_every_problem_that_serve_and_apply_refuse(cli: Cli) -> None:
    path = write(cli, EVERYWHERE)
    res = cli("config", "validate", "--config", path)
    assert_error(res, 2, "problem(s)")
    found = problem_lines(res.out, path)
    assert len(found) == len(res.out.splitlines()), res  # stdout: one problem per line, nothing else
    for fragment in ("server.port: expected an integer", "providers.vllm.base_url: required",
                     "providers.vllm.timeout: must be greater than 0", 'cache.mode: expected one of',
                     "cache.threshold: must be at most 1", "webhooks.url: expected an http:// or https:// URL",
                     "webhooks.max_attempts: must be at least 1", 'admin.token_env: environment variable '
                     '"UNSET_ADMIN_TOKEN" is not set', 'metrics.tokn: unknown key',
                     "customers.acme_corp.budgets[0].period", "keys.vk_acme_corp.secret: secrets are never declared",
                     'teams.captioning.customer: no customer "nobody" in the file or the database',
                     'budgets[0].customer: no customer "ghost"'):
        assert any(fragment in line for line in found), (fragment, res.out)
    assert not (cli.home / "llmgw.db").exists()  # validate created no database

    applied = cli("config", "apply", "--config", path)
    assert_error(applied, 2, "nothing applied")
    refused_by_apply = problem_lines(applied.err, path)
    assert len(refused_by_apply) >= 15 and refused_by_apply <= found, refused_by_apply - found
    served = cli("serve", "--config", path, "--port", "0")
    assert_error(served, 2)
    refused_by_serve = problem_lines(served.err.removeprefix("llmgw: error: "), path)
    assert len(refused_by_serve) >= 9 and refused_by_serve <= found, refused_by_serve - found
    assert found == refused_by_apply | refused_by_serve


def test_validate_checks_declarations_against_the_home_database(cli: Cli) -> None:
    """A reference to what exists only in the database: a problem in a new home, fine once it exists;
    the problems only the file can show are found either way."""
    path = write(cli, '[keys.vk]\ncustomer = "made_by_cli"\n[[budgets]]\nkey = "old_key"\nperiod = "day"\n'
                      "limit = 1\n")
    res = cli("config", "validate", "--config", path)
    assert_error(res, 2, "2 problem(s)")
    assert res.out.splitlines() == [
        f'{path}: keys.vk.customer: no customer "made_by_cli" in the file or the database',
        f'{path}: budgets[0].key: no key named "old_key" in the file, and no key with that name or id in the '
        "database"]
    assert cli("customers", "create", "made_by_cli").code == 0
    assert cli("keys", "create", "--name", "old_key").code == 0
    before = dump(cli.home)
    res = cli("config", "validate", "--config", path)
    assert (res.code, res.out) == (0, ""), res
    assert res.err.strip() == f"{path}: ok"
    assert dump(cli.home) == before  # read only
    assert apply_ok(cli, path)[0].startswith("+ key vk: sk-llmgw-")  # what validate passed, apply takes


def test_validate_reports_warnings_but_passes(cli: Cli) -> None:
    path = write(cli, "[keys.old]\nexpires = 2020-01-01\n")
    res = cli("config", "validate", "--config", path)
    assert res.code == 0, res
    assert "keys.old.expires: 2020-01-01T00:00:00Z is in the past" in res.err


# ---- dry run ----------------------------------------------------------------------------------------


def test_dry_run_writes_nothing(cli: Cli) -> None:
    path = write(cli, ACME)
    res = cli("config", "apply", "--config", path, "--dry-run")
    assert res.code == 0, res
    assert res.out.splitlines() == [line.removesuffix(": ") for line in CREATED]
    assert "sk-llmgw-" not in res.out + res.err
    assert "dry run" in res.err
    for table in ("customers", "teams", "keys", "budgets"):
        assert rows(cli.home, f"SELECT * FROM {table}") == []

    apply_ok(cli, path)
    before = dump(cli.home)
    path.write_text(ACME.replace("rpm = 60", "rpm = 61"))
    assert apply_ok(cli, path, "--dry-run") == ["~ key vk_acme_corp: rpm 60 -> 61"]
    assert dump(cli.home) == before


# ---- export ------------------------------------------------------------------------------------------


def test_export_then_apply_reproduces_the_definitions(cli: Cli, tmp_path: Path) -> None:
    secrets: tuple[str, ...] = (secret_of(apply_ok(cli, write(cli, ACME)), "vk_acme_corp"),)
    # things made with the CLI too: an unnamed key, a soft budget with an odd amount, a disabled key
    assert cli("customers", "create", "beta", "--name", "Beta Ltd").code == 0
    res = cli("keys", "create", "--customer", "beta", "--models", "openai/*", "--clamp", "--budget", "0.000123",
              "--period", "total", "--expires", "2031-06-01T12:30:00Z")
    assert res.code == 0, res
    secrets += (res.out.strip(),)
    res = cli("keys", "create", "--name", "vk_off")
    secrets += (res.out.strip(),)
    assert cli("keys", "disable", "vk_off").code == 0
    assert cli("budget", "set", "--team", "captioning", "--period", "week", "--limit", "7.25", "--soft",
               "--warn-at", "50").code == 0
    res = cli("keys", "create", "--name", "gone")
    secrets += (res.out.strip(),)
    assert cli("keys", "revoke", "gone").code == 0

    res = cli("config", "export")
    assert res.code == 0, res
    exported = res.out
    assert "revoked" in res.err
    assert len(secrets) == 4 and all(s.startswith("sk-llmgw-") for s in secrets)
    for secret in secrets:
        assert secret not in exported
    assert "key_hash" not in exported and "sk-llmgw-" not in exported
    assert "gone" not in exported
    path = write(cli, exported, "exported.toml")
    # the export is a valid config file
    assert cli("config", "validate", "--config", path).code == 0
    # on the same home: nothing to change
    res = cli("config", "apply", "--config", path)
    assert (res.code, res.out, res.err.strip()) == (0, "", "no changes")

    # on a fresh home: the same definitions, and each key gets a new secret
    fresh = tmp_path / "fresh"
    lines = apply_ok(cli, path, home=fresh)
    assert sum(line.startswith("+ key ") for line in lines) == 3
    original, copy = definitions(cli.home), definitions(fresh)
    assert len(original["keys"]) == 3 and len(original["budgets"]) == 5
    assert copy == original
    new_secrets = [line.split(": ", 1)[1] for line in lines if line.startswith("+ key ")]
    assert not set(new_secrets) & set(secrets)
    for home in (cli.home, fresh):
        text = dump(home)
        for secret in (*secrets, *new_secrets):
            assert secret not in text
    # and the fresh home exports the same text (the unnamed key now has its old id as name)
    res = cli("config", "export", "--home", fresh)
    assert res.code == 0, res
    assert res.out == exported
    # applying the export to the fresh home changes nothing either
    res = cli("config", "apply", "--config", path, "--home", fresh)
    assert (res.code, res.out) == (0, ""), res


def test_export_of_an_empty_home(cli: Cli) -> None:
    assert_error(cli("config", "export"), 4, "no llmgw home at")  # no home yet: export creates none
    assert not cli.home.exists()
    store_db.open_db(cli.home / "llmgw.db").close()  # a home with a database and no definitions
    res = cli("config", "export")
    assert res.code == 0, res
    assert all(line.startswith("#") or not line for line in res.out.splitlines())
    path = write(cli, res.out)
    res = cli("config", "apply", "--config", path)
    assert (res.code, res.out, res.err.strip()) == (0, "", "no changes")
