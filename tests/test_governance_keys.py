"""Customers, teams and virtual keys: through the real ``llmgw`` command line (a subprocess on a real
SQLite file) and through ``KeyTable`` directly for authentication, rotation grace and expiry."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmgw.clock import wall_ms
from llmgw.errors import NotFound, Unauthorized, UsageError
from llmgw.governance import hierarchy
from llmgw.governance.keys import (
    KeyTable,
    get_key,
    hash_secret,
    list_keys,
    mint,
    parse_expires,
    revoke,
    rotate,
    set_status,
    validate_models,
)
from llmgw.store import db as store_db
from llmgw.units import epoch_ms, iso_utc
from test_cli import Cli, assert_error

MODELS = "openai/gpt-4o-mini,anthropic/claude-haiku-4-5-20251001"


def rows(home: Path, sql: str, *args: object) -> list[dict[str, object]]:
    with contextlib.closing(sqlite3.connect(home / "llmgw.db")) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, args)]


def dump(home: Path) -> str:
    with contextlib.closing(sqlite3.connect(home / "llmgw.db")) as conn:
        return "\n".join(conn.iterdump())


def create_key(cli: Cli, *args: str) -> str:
    res = cli("keys", "create", *args)
    assert res.code == 0, res
    assert res.out.count("\n") == 1 and res.out.startswith("sk-llmgw-"), res
    secret = res.out.strip()
    assert secret not in res.err
    return secret


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(home=tmp_path / "home", tmp=tmp_path)


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = store_db.open_db(tmp_path / "llmgw.db")
    try:
        yield c
    finally:
        c.close()


def table(conn: sqlite3.Connection) -> KeyTable:
    t = KeyTable()
    t.load(conn)
    return t


def authenticate(t: KeyTable, secret: str | None, now: float | None = None):
    """``t.authenticate`` at ``now`` (epoch seconds; None: the wall clock)."""
    t.clock = wall_ms if now is None else (lambda: int(now * 1000))
    return t.authenticate(secret)


def auth_code(t: KeyTable, secret: str | None, now: float | None = None) -> str | None:
    try:
        authenticate(t, secret, now)
    except Unauthorized as e:
        assert e.status == 401
        return e.code
    return None


# ---- customers and teams through the CLI ----------------------------------------------------------


def test_customers_create_list_show(cli: Cli) -> None:
    res = cli("customers", "create", "acme_corp", "--name", "Acme Corp")
    assert res.code == 0, res
    assert res.out == ""
    assert "acme_corp" in res.err
    assert cli("customers", "create", "globex").code == 0

    res = cli("customers", "list", "--json")
    assert res.code == 0, res
    listed = json.loads(res.out)
    assert [(c["id"], c["name"], c["teams"], c["keys"]) for c in listed] == [
        ("acme_corp", "Acme Corp", 0, 0), ("globex", None, 0, 0)]

    res = cli("customers", "list")
    assert res.code == 0, res
    assert "acme_corp" in res.out and "Acme Corp" in res.out and "globex" in res.out

    assert cli("teams", "create", "captioning", "--customer", "acme_corp", "--name", "Captions").code == 0
    secret = create_key(cli, "--team", "captioning", "--name", "vk_acme")
    res = cli("customers", "show", "acme_corp", "--json")
    assert res.code == 0, res
    doc = json.loads(res.out)
    assert doc["id"] == "acme_corp" and doc["name"] == "Acme Corp"
    assert [(t["id"], t["name"], t["keys"]) for t in doc["teams"]] == [("captioning", "Captions", 1)]
    assert [(k["name"], k["team_id"], k["status"]) for k in doc["keys"]] == [("vk_acme", "captioning", "active")]
    assert "key_hash" not in doc["keys"][0]
    assert secret not in res.out

    res = cli("customers", "show", "acme_corp")
    assert res.code == 0, res
    assert "captioning" in res.out and "vk_acme" in res.out


def test_customer_errors(cli: Cli) -> None:
    assert cli("customers", "create", "acme_corp").code == 0
    res = cli("customers", "create", "acme_corp", "--name", "Other")
    assert_error(res, 2, "acme_corp", "already exists")
    assert res.out == ""
    for bad in ("Acme", "acme corp", "_acme", "-acme", "acme/corp", "a" * 65, "ünï", ""):
        assert_error(cli("customers", "create", "--", bad), 2, "invalid customer id")
    assert_error(cli("customers", "show", "nope"), 4, "no customer 'nope'")
    assert [c["id"] for c in rows(cli.home, "SELECT id FROM customers")] == ["acme_corp"]
    assert rows(cli.home, "SELECT name FROM customers")[0]["name"] is None


def test_teams_create_and_list(cli: Cli) -> None:
    assert cli("customers", "create", "acme_corp").code == 0
    assert cli("customers", "create", "globex").code == 0
    assert cli("teams", "create", "captioning", "--customer", "acme_corp").code == 0
    assert cli("teams", "create", "search", "--customer", "acme_corp").code == 0
    assert cli("teams", "create", "gx.ml-1", "--customer", "globex").code == 0

    res = cli("teams", "list", "--json")
    assert res.code == 0, res
    assert [(t["id"], t["customer_id"]) for t in json.loads(res.out)] == [
        ("captioning", "acme_corp"), ("search", "acme_corp"), ("gx.ml-1", "globex")]
    res = cli("teams", "list", "--customer", "globex", "--json")
    assert [t["id"] for t in json.loads(res.out)] == ["gx.ml-1"]
    res = cli("teams", "list")
    assert res.code == 0 and "captioning" in res.out, res

    # team ids are unique across customers
    assert_error(cli("teams", "create", "captioning", "--customer", "globex"), 2, "already exists")
    assert_error(cli("teams", "create", "Bad Team", "--customer", "globex"), 2, "invalid team id")
    assert_error(cli("teams", "create", "ops", "--customer", "nope"), 4, "no customer 'nope'")
    assert_error(cli("teams", "list", "--customer", "nope"), 4, "no customer 'nope'")
    res = cli("teams", "create", "ops")  # --customer is required: a click usage error
    assert res.code == 2 and "--customer" in res.err, res
    assert len(rows(cli.home, "SELECT id FROM teams")) == 3


# ---- keys through the CLI -------------------------------------------------------------------------


def test_keys_create_with_every_option(cli: Cli) -> None:
    assert cli("customers", "create", "acme_corp").code == 0
    assert cli("teams", "create", "captioning", "--customer", "acme_corp").code == 0
    secret = create_key(cli, "--customer", "acme_corp", "--team", "captioning", "--name", "vk_acme_corp",
                        "--models", MODELS + ",openai/*", "--budget", "200", "--period", "month",
                        "--rpm", "60", "--tpm", "100000", "--expires", "2999-01-01", "--clamp",
                        "--cache", "semantic")
    (row,) = rows(cli.home, "SELECT * FROM keys")
    assert row["name"] == "vk_acme_corp"
    assert row["customer_id"] == "acme_corp" and row["team_id"] == "captioning"
    assert json.loads(str(row["models"])) == [*MODELS.split(","), "openai/*"]
    assert (row["rpm"], row["tpm"], row["clamp"], row["cache_mode"]) == (60, 100000, 1, "semantic")
    assert row["expires_at"] == "2999-01-01T00:00:00Z"
    assert row["status"] == "active" and row["revoked_at"] is None and row["prev_key_hash"] is None
    assert row["key_hash"] == hash_secret(secret)
    assert row["display"] == "sk-llmgw-…" + secret[-4:]

    (budget,) = rows(cli.home, "SELECT * FROM budgets")
    assert str(budget["id"]).startswith("bud_")
    assert (budget["scope"], budget["scope_id"], budget["period"]) == ("key", row["id"], "month")
    assert budget["limit_nanos"] == 200_000_000_000
    assert (budget["hard"], budget["warn_pct"], budget["grace_nanos"]) == (1, 80, 0)
    assert budget["created_at"] == budget["updated_at"]
    datetime.fromisoformat(str(budget["created_at"]))

    # the secret is nowhere at rest
    assert secret not in dump(cli.home)
    for f in cli.home.iterdir():
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f


def test_keys_create_defaults_and_budget_precision(cli: Cli) -> None:
    secret = create_key(cli)
    (row,) = rows(cli.home, "SELECT * FROM keys")
    assert (row["customer_id"], row["team_id"], row["models"], row["rpm"], row["tpm"], row["clamp"],
            row["cache_mode"], row["expires_at"]) == (None, None, None, None, None, 0, None, None)
    assert rows(cli.home, "SELECT * FROM budgets") == []
    assert secret not in dump(cli.home)

    create_key(cli, "--name", "cents", "--budget", "12.345678901")  # default period: month
    create_key(cli, "--name", "daily", "--budget", "0.1", "--period", "day")
    budgets = {b["scope_id"]: b for b in rows(cli.home, "SELECT * FROM budgets")}
    ids = {k["name"]: k["id"] for k in rows(cli.home, "SELECT id, name FROM keys")}
    assert budgets[ids["cents"]]["limit_nanos"] == 12_345_678_901
    assert budgets[ids["cents"]]["period"] == "month"
    assert budgets[ids["daily"]]["limit_nanos"] == 100_000_000  # 0.1 exactly: no float on the way
    assert budgets[ids["daily"]]["period"] == "day"


@pytest.mark.parametrize("args, fragment", [
    (("--budget", "-5"), '--budget: must not be negative, got "-5"'),
    (("--budget", "abc"), "--budget: expected an amount in USD"),
    (("--budget", "0.0000000001"), "nano-dollar"),
    (("--budget", "nan"), "--budget: expected a finite amount in USD"),
    (("--budget", "10", "--period", "year"), "--period: expected one of day, week, month, total, got 'year'"),
    (("--period", "day"), "--period: applies to a budget: give a budget too"),
    (("--rpm", "0"), "--rpm: must be a positive integer"),
    (("--tpm", "-1"), "--tpm: must be a positive integer"),
    (("--cache", "fuzzy"), "--cache: expected one of off, exact, semantic"),
    (("--expires", "2020-01-01"), "--expires: 2020-01-01T00:00:00Z is in the past"),
    (("--expires", "next tuesday"), "--expires: expected YYYY-MM-DD"),
    (("--models", ""), "--models: empty model name"),
    (("--models", "openai/gpt-4o,,x"), "empty model name"),
    (("--models", "openai/"), "--models: invalid model"),
    (("--models", "open ai/gpt"), "invalid model"),
    (("--name", " "), "--name: must not be empty"),
])
def test_keys_create_bad_input_writes_nothing(cli: Cli, args: tuple[str, ...], fragment: str) -> None:
    res = cli("keys", "create", "--name", "k", *args) if "--name" not in args else cli("keys", "create", *args)
    assert_error(res, 2, fragment)
    assert res.out == ""
    if (cli.home / "llmgw.db").exists():  # an amount is checked before the database is even opened
        assert rows(cli.home, "SELECT id FROM keys") == []
        assert rows(cli.home, "SELECT id FROM budgets") == []


def test_keys_team_implies_customer(cli: Cli) -> None:
    assert cli("customers", "create", "acme_corp").code == 0
    assert cli("customers", "create", "globex").code == 0
    assert cli("teams", "create", "captioning", "--customer", "acme_corp").code == 0

    create_key(cli, "--team", "captioning", "--name", "inferred")
    create_key(cli, "--team", "captioning", "--customer", "acme_corp", "--name", "agreeing")
    res = cli("keys", "create", "--team", "captioning", "--customer", "globex", "--name", "contradicting",
              "--budget", "5")
    assert_error(res, 2, "belongs to customer 'acme_corp'", "globex")
    assert res.out == ""

    assert_error(cli("keys", "create", "--customer", "nope"), 4, "no customer 'nope'")
    assert_error(cli("keys", "create", "--team", "nope"), 4, "no team 'nope'")

    keys = rows(cli.home, "SELECT name, customer_id, team_id FROM keys ORDER BY rowid")
    assert keys == [{"name": "inferred", "customer_id": "acme_corp", "team_id": "captioning"},
                    {"name": "agreeing", "customer_id": "acme_corp", "team_id": "captioning"}]
    assert rows(cli.home, "SELECT id FROM budgets") == []


def test_keys_list_and_show(cli: Cli) -> None:
    assert cli("customers", "create", "acme_corp").code == 0
    assert cli("customers", "create", "globex").code == 0
    assert cli("teams", "create", "captioning", "--customer", "acme_corp").code == 0
    a = create_key(cli, "--customer", "acme_corp", "--name", "a", "--models", "openai/*", "--rpm", "10")
    b = create_key(cli, "--team", "captioning", "--name", "b", "--clamp")
    g = create_key(cli, "--customer", "globex", "--name", "g")

    res = cli("keys", "list", "--json")
    assert res.code == 0, res
    listed = json.loads(res.out)
    assert [k["name"] for k in listed] == ["a", "b", "g"]
    for secret in (a, b, g):
        assert secret not in res.out
    assert "key_hash" not in listed[0] and "prev_key_hash" not in listed[0]
    assert listed[0]["models"] == ["openai/*"] and listed[0]["rpm"] == 10 and listed[0]["clamp"] is False
    assert listed[1]["clamp"] is True and listed[1]["team_id"] == "captioning"

    res = cli("keys", "list", "--customer", "acme_corp", "--json")
    assert [k["name"] for k in json.loads(res.out)] == ["a", "b"]
    res = cli("keys", "list", "--team", "captioning", "--json")
    assert [k["name"] for k in json.loads(res.out)] == ["b"]
    assert_error(cli("keys", "list", "--customer", "nope"), 4, "no customer 'nope'")
    res = cli("keys", "list", "--customer", "globex")
    assert res.code == 0 and "sk-llmgw-…" + g[-4:] in res.out and "acme_corp" not in res.out, res

    # show by name and by id, same document
    by_name = cli("keys", "show", "a", "--json")
    assert by_name.code == 0, by_name
    doc = json.loads(by_name.out)
    assert doc == listed[0]
    by_id = cli("keys", "show", doc["id"], "--json")
    assert json.loads(by_id.out) == doc
    res = cli("keys", "show", "a")
    assert res.code == 0 and f"id: {doc['id']}" in res.out and "openai/*" in res.out, res
    assert a not in res.out
    assert_error(cli("keys", "show", "nope"), 4, "no key with id or name 'nope'")


def test_keys_disable_enable_revoke(cli: Cli) -> None:
    create_key(cli, "--name", "k")
    kid = json.loads(cli("keys", "show", "k", "--json").out)["id"]

    def status() -> str:
        return str(json.loads(cli("keys", "show", "k", "--json").out)["status"])

    res = cli("keys", "disable", "k")
    assert res.code == 0 and res.out == "" and "disabled" in res.err, res
    assert status() == "disabled"
    res = cli("keys", "enable", kid)
    assert res.code == 0 and res.out == "" and "enabled" in res.err, res
    assert status() == "active"

    res = cli("keys", "revoke", "k")
    assert res.code == 0 and res.out == "" and "revoked" in res.err, res
    doc = json.loads(cli("keys", "show", "k", "--json").out)
    assert doc["status"] == "revoked" and doc["revoked_at"]
    # final
    assert_error(cli("keys", "enable", "k"), 2, "revoked", "final")
    assert_error(cli("keys", "disable", "k"), 2, "revoked")
    assert_error(cli("keys", "rotate", "k"), 2, "revoked")
    assert status() == "revoked"
    # revoking again is harmless and keeps the first time
    assert cli("keys", "revoke", "k").code == 0
    assert json.loads(cli("keys", "show", "k", "--json").out)["revoked_at"] == doc["revoked_at"]

    for cmd in ("disable", "enable", "revoke", "rotate"):
        assert_error(cli("keys", cmd, "nope"), 4, "no key")


def test_keys_rotate_through_cli(cli: Cli) -> None:
    old = create_key(cli, "--name", "k")
    res = cli("keys", "rotate", "k", "--grace", "3600")
    assert res.code == 0, res
    new = res.out.strip()
    assert res.out == new + "\n" and new.startswith("sk-llmgw-") and new != old
    assert new not in res.err and old not in res.err
    assert "old secret is accepted until" in res.err

    (row,) = rows(cli.home, "SELECT * FROM keys")
    assert row["key_hash"] == hash_secret(new)
    assert row["prev_key_hash"] == hash_secret(old)
    until = datetime.fromisoformat(str(row["prev_valid_until"]))
    assert timedelta(minutes=59) < until - datetime.now(UTC) <= timedelta(hours=1, seconds=1)  # rounded up to the second
    assert row["display"] == "sk-llmgw-…" + new[-4:]
    text = dump(cli.home)
    assert old not in text and new not in text

    with contextlib.closing(store_db.connect(cli.home / "llmgw.db")) as c:
        t = table(c)
    assert t.authenticate(new).name == "k"
    assert t.authenticate(old).name == "k"

    # the default grace is 24 h; a negative grace is refused
    res = cli("keys", "rotate", "k")
    assert res.code == 0, res
    (row,) = rows(cli.home, "SELECT prev_valid_until FROM keys")
    until = datetime.fromisoformat(str(row["prev_valid_until"]))
    assert timedelta(hours=23, minutes=59) < until - datetime.now(UTC) <= timedelta(hours=24, seconds=1)
    assert_error(cli("keys", "rotate", "k", "--grace", "-1"), 2, "--grace: expected a number of seconds >= 0")


def test_new_commands_have_help(cli: Cli) -> None:
    for path in (("customers",), ("customers", "create"), ("teams", "list"), ("keys", "rotate")):
        res = cli(*path, "--help")
        assert res.code == 0 and "Usage:" in res.out, res
    res = cli("keys", "create", "--help")
    for opt in ("--customer", "--team", "--models", "--budget", "--period", "--rpm", "--tpm", "--expires",
                "--clamp", "--cache", "--home"):
        assert opt in res.out, opt


# ---- the core directly: KeyTable, rotation grace, expiry ------------------------------------------


def test_authenticate_codes(conn: sqlite3.Connection) -> None:
    hierarchy.create_customer(conn, "acme")
    secret, info = mint(conn, name="k", customer_id="acme", rpm=5, tpm=500, clamp=True, cache_mode="exact",
                        models=["openai/*", "fast"])
    t = table(conn)
    got = t.authenticate(secret)
    assert got == info
    assert (got.rpm, got.tpm, got.clamp, got.cache_mode) == (5, 500, True, "exact")
    assert got.models == ("openai/*", "fast") and got.customer_id == "acme"
    assert got.allows("openai/gpt-4o-mini") and got.allows("fast") and not got.allows("anthropic/claude")
    assert len(t) == 1

    assert auth_code(t, None) == "missing_api_key"
    assert auth_code(t, "") == "missing_api_key"
    assert auth_code(t, secret + "x") == "invalid_api_key"
    set_status(conn, "k", "disabled")
    assert auth_code(t, secret) is None  # the table is a snapshot until reloaded
    t.load(conn)
    assert auth_code(t, secret) == "key_disabled"
    set_status(conn, "k", "active")
    t.load(conn)
    assert auth_code(t, secret) is None
    revoke(conn, "k")
    t.load(conn)
    assert auth_code(t, secret) == "key_revoked"
    with pytest.raises(UsageError, match="final"):
        set_status(conn, "k", "active")
    with pytest.raises(UsageError):
        set_status(conn, "k", "revoked")  # revocation goes through revoke()


def test_expired_key(conn: sqlite3.Connection) -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    secret, info = mint(conn, expires_at=expires.isoformat())
    assert info.expires_at == iso_utc(epoch_ms(expires))
    t = table(conn)
    assert auth_code(t, secret) is None
    assert auth_code(t, secret, now=expires.timestamp() - 1) is None
    assert auth_code(t, secret, now=expires.timestamp()) == "key_expired"
    assert auth_code(t, secret, now=expires.timestamp() + 86400) == "key_expired"


def test_rotate_grace(conn: sqlite3.Connection) -> None:
    old, info = mint(conn, name="k")
    start = datetime.now(UTC).replace(microsecond=0)
    new, doc = rotate(conn, "k", 60, now_ms=epoch_ms(start))
    assert doc["prev_valid_until"] == iso_utc(epoch_ms(start + timedelta(seconds=60)))
    t = table(conn)
    assert len(t) == 1
    assert t.authenticate(new).id == info.id
    assert authenticate(t, old, start.timestamp() + 59).id == info.id
    assert auth_code(t, old, now=start.timestamp() + 60) == "key_rotated"
    assert auth_code(t, new, now=start.timestamp() + 10**6) is None

    # grace 0: the old secret is refused at once; rotating again drops the older secret entirely
    newer, _ = rotate(conn, info.id, 0)
    t.load(conn)
    assert auth_code(t, newer) is None
    assert auth_code(t, new) == "key_rotated"
    assert auth_code(t, old) == "invalid_api_key"

    # a disabled key refuses its previous secret too, with the status code
    rotate(conn, "k", 3600)
    set_status(conn, "k", "disabled")
    t.load(conn)
    assert auth_code(t, newer) == "key_disabled"


def test_core_validation(conn: sqlite3.Connection) -> None:
    hierarchy.create_customer(conn, "acme")
    hierarchy.create_customer(conn, "globex")
    team = hierarchy.create_team(conn, "cap", customer_id="acme", name="  ")
    assert team == {"id": "cap", "customer_id": "acme", "name": None, "created_at": team["created_at"]}
    with pytest.raises(NotFound):
        hierarchy.create_team(conn, "x", customer_id="nope")
    with pytest.raises(UsageError, match="already exists"):
        hierarchy.create_team(conn, "cap", customer_id="globex")
    with pytest.raises(UsageError, match="belongs to customer 'acme'"):
        mint(conn, team_id="cap", customer_id="globex")
    _, info = mint(conn, team_id="cap")
    assert (info.customer_id, info.team_id) == ("acme", "cap")
    with pytest.raises(NotFound):
        mint(conn, team_id="nope")
    with pytest.raises(NotFound):
        get_key(conn, "nope")

    assert validate_models(None) is None
    assert validate_models(["openai/gpt-4o", " openai/gpt-4o ", "fast", "*",
                            "openrouter/meta-llama/llama-3.1-8b-instruct:free"]) == [
        "openai/gpt-4o", "fast", "*", "openrouter/meta-llama/llama-3.1-8b-instruct:free"]
    for bad in ([], [""], ["a b"], ["/gpt"], ["openai//gpt"], ["a,b"]):
        with pytest.raises(UsageError):
            validate_models(bad)

    assert parse_expires("2999-12-31") == "2999-12-31T00:00:00Z"
    assert parse_expires("2999-12-31T10:00:00Z") == "2999-12-31T10:00:00Z"
    assert parse_expires("2999-12-31T12:00:00+02:00") == "2999-12-31T10:00:00Z"
    assert parse_expires("2999-12-31T10:00") == "2999-12-31T10:00:00Z"  # naive = UTC
    assert parse_expires("2027-01-01", now_ms=epoch_ms(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))) \
        == "2027-01-01T00:00:00Z"
    with pytest.raises(UsageError, match="is in the past"):
        parse_expires("2027-01-01", now_ms=epoch_ms(datetime(2027, 1, 1, tzinfo=UTC)))


def test_mint_is_backwards_compatible(conn: sqlite3.Connection) -> None:
    """The daemon's ``serve --demo`` path: ``replace`` re-issues the secret of a named key."""
    first, info = mint(conn, name="demo", replace=True)
    revoke(conn, "demo")
    second, again = mint(conn, name="demo", replace=True)
    assert again.id == info.id and again.status == "active" and first != second
    t = table(conn)
    assert auth_code(t, first) == "invalid_api_key"
    assert auth_code(t, second) is None
    assert [k["name"] for k in list_keys(conn)] == ["demo"]
    assert get_key(conn, "demo")["revoked_at"] is None


# ---- keys made a moment ago: the table asks the database before a 401 -----------------------------


async def test_unknown_hash_is_looked_up_once_and_remembered(tmp_path: Path) -> None:
    db = tmp_path / "llmgw.db"
    conn = store_db.open_db(db)
    t = KeyTable(db, negative_size=3)
    t.load(conn)
    with conn:  # committed: the table's own connection sees it
        secret, info = mint(conn, name="fresh")  # after the load: the table has not seen it
    assert (await t.resolve(secret)).id == info.id
    assert t.db_lookups == 1
    assert t.authenticate(secret).id == info.id  # now in the table: no more queries
    for _ in range(50):  # the same bad key, over and over: one query
        with pytest.raises(Unauthorized) as e:
            await t.resolve("sk-llmgw-nope")
        assert e.value.code == "invalid_api_key"
    assert t.db_lookups == 2
    for i in range(5):  # distinct bad keys: the negative cache stays bounded
        with pytest.raises(Unauthorized):
            await t.resolve(f"sk-llmgw-bad{i}")
    assert len(t._unknown) == 3 and t.db_lookups == 7
    with conn:
        rotated, _ = rotate(conn, "fresh", 60)
    assert (await t.resolve(rotated)).id == info.id  # a rotated secret is found too
    assert (await t.resolve(secret)).id == info.id  # and the previous one stays valid in its grace
    t.load(conn)
    assert not t._unknown  # a reload forgets the misses
    t.close()
    conn.close()


# ---- transactions: the caller owns them -------------------------------------------------------------


def test_callers_own_transactions(conn: sqlite3.Connection, tmp_path: Path) -> None:
    """Governance functions never commit: two in one transaction, the second failing, leave nothing."""
    from llmgw.errors import Conflict
    from llmgw.governance.budgets import delete_budget, upsert_budget

    def committed(sql: str) -> list[tuple[object, ...]]:  # what another connection (the daemon) sees
        with contextlib.closing(store_db.connect(tmp_path / "llmgw.db", readonly=True)) as other:
            return [tuple(r) for r in other.execute(sql)]

    with pytest.raises(UsageError) as e, store_db.transaction(conn):
        hierarchy.create_customer(conn, "acme")
        mint(conn, name="k", customer_id="acme", budget_nanos=10**9, budget_period="fortnight")
    assert (e.value.param, e.value.message) == (
        "period", "period: expected one of day, week, month, total, got 'fortnight'")
    assert not conn.in_transaction
    assert conn.execute("SELECT id FROM customers").fetchall() == [] and committed("SELECT id FROM customers") == []

    with store_db.transaction(conn):
        hierarchy.create_customer(conn, "acme")
        _, info = mint(conn, name="k", customer_id="acme", budget_nanos=10**9)
        assert committed("SELECT id FROM keys") == []  # not before the caller commits
    assert committed("SELECT id FROM keys") == [(info.id,)]
    assert committed("SELECT scope_id, period FROM budgets") == [(info.id, "month")]  # mint's budget, same transaction

    with pytest.raises(Conflict), store_db.transaction(conn):
        (bid,) = committed("SELECT id FROM budgets")[0]
        delete_budget(conn, str(bid))
        revoke(conn, "k")
        rotate(conn, "k")  # a revoked key cannot be rotated: the delete and the revocation roll back
    assert committed("SELECT status FROM keys") == [("active",)] and len(committed("SELECT id FROM budgets")) == 1

    # a plain `with conn:` owns the transaction just the same
    with pytest.raises(NotFound), conn:
        upsert_budget(conn, "customer", "acme", "day", 5)
        upsert_budget(conn, "team", "nobody", "day", 5)
    assert committed("SELECT period FROM budgets WHERE scope = 'customer'") == []
