"""Declarative governance: customers, teams, keys and budgets written in ``llmgw.toml``.

Owns the ``[customers.*]``, ``[teams.*]``, ``[keys.*]`` and ``[[budgets]]`` sections: parsing and
validating them (``parse_file``), the difference from the database and applying it (``apply``), and
writing the database back out in the same shape (``export``). No front end: ``llmgw config apply`` /
``llmgw config export`` print what these return.

The shape::

    [customers.acme_corp]                 # the customer id: a-z 0-9 _ . -, at most 64 characters
    name = "Acme Corp"                    # optional display name
    budgets = [{ period = "month", limit = 200, hard = true, warn_at = 80, grace = 10 }]

    [teams.captioning]                    # team ids are unique across customers
    customer = "acme_corp"                # required
    name = "Captioning"                   # optional
    budgets = [{ period = "day", limit = 20 }]

    [keys.vk_acme_corp]                   # keys are declared by name; secrets are never in the file
    customer = "acme_corp"                # may be left out when a team is given (the team's customer)
    team = "captioning"                   # optional
    models = ["openai/gpt-4o-mini", "anthropic/*"]  # exact names, aliases, globs; absent: every model
    rpm = 60                              # requests per minute; absent: unlimited
    tpm = 100000                          # tokens per minute; absent: unlimited
    clamp = false                         # lower max_tokens to what the budget can pay instead of rejecting
    cache = "semantic"                    # off | exact | semantic; absent: the config's default
    expires = "2027-01-01"                # YYYY-MM-DD (00:00 UTC), an ISO datetime or a TOML date; absent: never
    status = "active"                     # active | disabled | revoked (final)
    budgets = [{ period = "month", limit = 50 }]

    [[budgets]]                           # a budget on a customer, team or key not declared in the file
    key = "vk_made_by_cli"                # exactly one of customer, team, key (a key's name or id)
    period = "week"
    limit = "12.50"

A budget is ``{ period, limit, hard, warn_at, grace }``: ``period`` is day, week (ISO), month or total
(UTC calendar windows); ``limit`` and ``grace`` are USD, as TOML numbers or strings (``"12.50"``,
``"$12.50"``); ``hard`` defaults to true, ``warn_at`` (percent, 1-100) to 80, ``grace`` to 0.

Invariants:

* Money is exact: the file is read with ``parse_float=Decimal`` and amounts become integer
  nano-dollars; an amount finer than a nano-dollar is refused, never rounded.
* The whole file is checked before anything is written (the other sections with
  ``config.validate_file``); every problem is one ``file: dotted.key: problem`` line and any problem
  means nothing is applied.
* A declared customer, team or key is what its entry says: a field left out takes its default
  (``rpm`` absent = unlimited), so deleting a line and applying unsets it. Budgets are upserted on
  (scope, scope id, period) and keep their id, so a running daemon keeps its spend counters.
* ``apply`` never deletes: customers, teams, keys and budgets missing from the file are left alone,
  and the ledger is never touched. Ownership is fixed: a team never changes customer, a key never
  changes customer or team. Revocation is final.
* ``apply`` runs in one ``BEGIN IMMEDIATE`` transaction: all of it or none of it. A new key's secret
  exists only in the returned change (shown once by the CLI); the database holds its hash.
* ``export`` writes no secret and no hash; applying an export to the same database changes nothing,
  and applying it to an empty one recreates the definitions (keys get new secrets). Revoked keys are
  not exported.
"""

from __future__ import annotations

import re
import sqlite3
import tomllib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError, UsageError
from .budgets import PERIODS, usd, usd_plain
from .hierarchy import SLUG_MAX, SLUG_RE
from .keys import CACHE_MODES, PREFIX, STATUSES, display, hash_secret, new_secret, validate_models

CUSTOMER_FIELDS = ("name", "budgets")
TEAM_FIELDS = ("customer", "name", "budgets")
KEY_FIELDS = ("customer", "team", "models", "rpm", "tpm", "clamp", "cache", "expires", "status", "budgets")
BUDGET_FIELDS = ("period", "limit", "hard", "warn_at", "grace")
SCOPE_FIELDS = ("customer", "team", "key")
_SECRET_FIELDS = ("secret", "key", "key_hash", "hash", "api_key", "display", "prev_key_hash")
_MAX_NANOS = 2**63 - 1
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# ---- declarations ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BudgetDecl:
    scope: str  # customer | team | key
    ref: str  # customer id, team id, key name (or a key id in [[budgets]])
    period: str
    limit_nanos: int
    hard: bool = True
    warn_pct: int = 80
    grace_nanos: int = 0
    where: tuple[str | int, ...] = ()  # the entry's key path, for problems


@dataclass(frozen=True, slots=True)
class CustomerDecl:
    id: str
    name: str | None
    budgets: tuple[BudgetDecl, ...] = ()


@dataclass(frozen=True, slots=True)
class TeamDecl:
    id: str
    customer: str
    name: str | None
    budgets: tuple[BudgetDecl, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyDecl:
    name: str
    customer: str | None
    team: str | None
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    clamp: bool
    cache: str | None
    expires: str | None  # ISO-8601 UTC, as keys.py stores it
    status: str
    budgets: tuple[BudgetDecl, ...] = ()


@dataclass(slots=True)
class Declarations:
    file: str
    customers: dict[str, CustomerDecl] = field(default_factory=dict)
    teams: dict[str, TeamDecl] = field(default_factory=dict)
    keys: dict[str, KeyDecl] = field(default_factory=dict)
    budgets: list[BudgetDecl] = field(default_factory=list)  # the top-level [[budgets]]
    broken: set[tuple[str, str]] = field(default_factory=set)  # (kind, id) of entries dropped for problems


# ---- reading and checking -------------------------------------------------------------------------


def _show(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _dotted(*parts: str | int) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE_KEY.match(part) else _show(part)
            out = f"{out}.{text}" if out else text
    return out


class _Problems:
    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: list[str] = []

    def add(self, where: str, problem: str) -> None:
        self.lines.append(f"{self.file}: {where}: {problem}" if where else f"{self.file}: {problem}")

    def unknown(self, table: Mapping[str, Any], allowed: tuple[str, ...], *at: str | int) -> None:
        import difflib

        for name in table:
            if name in allowed:
                continue
            if name in _SECRET_FIELDS:
                self.add(_dotted(*at, name), "secrets are never declared in the file: a new key's secret "
                                             "is printed once by llmgw config apply")
                continue
            hint = difflib.get_close_matches(name, allowed, n=1)
            more = f'; did you mean "{hint[0]}"?' if hint else f" (known: {', '.join(allowed)})"
            self.add(_dotted(*at, name), f"unknown key{more}")


def parse_usd(value: object) -> int:
    """USD as a TOML integer, ``Decimal`` (a TOML float read exactly) or string → nano-dollars.

    ``ValueError`` with the reason when it is not a non-negative amount of whole nano-dollars.
    """
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str | float):
        raise ValueError(f"expected an amount in USD such as 200 or \"12.50\", got {_show(value)}")
    text = str(value).strip().removeprefix("$").replace("_", "") if isinstance(value, str) else str(value)
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"expected an amount in USD such as 200 or \"12.50\", got {_show(value)}") from None
    if not amount.is_finite():
        raise ValueError(f"expected a finite amount, got {_show(value)}")
    if amount < 0:
        raise ValueError(f"must not be negative, got {_show(value)}")
    nanos = amount.scaleb(9)
    if nanos != nanos.to_integral_value():
        raise ValueError(f"{_show(value)} is finer than a nano-dollar (at most 9 decimals)")
    if nanos > _MAX_NANOS:
        raise ValueError(f"{_show(value)} is too large")
    return int(nanos)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="seconds")


def parse_expiry(value: object) -> str:
    """``YYYY-MM-DD`` (00:00 UTC), an ISO datetime (naive = UTC) or a TOML date/datetime → ISO UTC."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, str):
        text = value.strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                dt = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            else:
                dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"expected YYYY-MM-DD or an ISO datetime such as \"2027-01-01T12:00:00Z\", "
                             f"got {_show(value)}") from None
    else:
        raise ValueError(f"expected a date such as \"2027-01-01\", got {_show(value)}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return _iso(dt)


def _same_time(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return datetime.fromisoformat(a) == datetime.fromisoformat(b)
    except ValueError:
        return a == b


def _slug(p: _Problems, kind: str, value: object, where: str) -> str | None:
    if not isinstance(value, str):
        p.add(where, f"expected a {kind} id, got {_show(value)}")
        return None
    if not SLUG_RE.fullmatch(value) or len(value) > SLUG_MAX:
        p.add(where, f"invalid {kind} id {_show(value)}: use lowercase letters, digits, '_', '.' and '-', "
                     f"starting with a letter or digit, at most {SLUG_MAX} characters")
        return None
    return value


def _name(p: _Problems, t: Mapping[str, Any], *at: str) -> str | None:
    if "name" not in t:
        return None
    value = t["name"]
    if not isinstance(value, str):
        p.add(_dotted(*at, "name"), f"expected a string, got {_show(value)}")
        return None
    return value.strip() or None


def _budget(p: _Problems, item: object, scope: str, ref: str, *at: str | int,
            fields: tuple[str, ...] = BUDGET_FIELDS) -> BudgetDecl | None:
    where = _dotted(*at)
    if not isinstance(item, dict):
        p.add(where, f'expected a table like {{ period = "month", limit = 200 }}, got {_show(item)}')
        return None
    before = len(p.lines)
    p.unknown(item, fields, *at)
    period = item.get("period")
    if "period" not in item:
        p.add(_dotted(*at, "period"), f"required ({', '.join(PERIODS)})")
    elif period not in PERIODS:
        p.add(_dotted(*at, "period"), f"expected one of {', '.join(map(_show, PERIODS))}, got {_show(period)}")
    limit = 0
    if "limit" not in item:
        p.add(_dotted(*at, "limit"), "required (USD per period)")
    else:
        try:
            limit = parse_usd(item["limit"])
        except ValueError as exc:
            p.add(_dotted(*at, "limit"), str(exc))
    hard = item.get("hard", True)
    if not isinstance(hard, bool):
        p.add(_dotted(*at, "hard"), f"expected true or false, got {_show(hard)}")
        hard = True
    warn = item.get("warn_at", 80)
    if isinstance(warn, bool) or not isinstance(warn, int) or not 1 <= warn <= 100:
        p.add(_dotted(*at, "warn_at"), f"expected a percent from 1 to 100, got {_show(warn)}")
        warn = 80
    grace = 0
    if "grace" in item:
        try:
            grace = parse_usd(item["grace"])
        except ValueError as exc:
            p.add(_dotted(*at, "grace"), str(exc))
        if grace and not hard:
            p.add(_dotted(*at, "grace"), "applies to hard budgets only (hard = false here)")
    if len(p.lines) > before:
        return None
    return BudgetDecl(scope, ref, str(period), limit, hard, warn, grace, at)


def _budgets(p: _Problems, t: Mapping[str, Any], scope: str, ref: str, *at: str) -> tuple[BudgetDecl, ...]:
    if "budgets" not in t:
        return ()
    value = t["budgets"]
    if not isinstance(value, list):
        p.add(_dotted(*at, "budgets"), f'expected an array like [{{ period = "month", limit = 200 }}], '
                                       f"got {_show(value)}")
        return ()
    out: list[BudgetDecl] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        b = _budget(p, item, scope, ref, *at, "budgets", i)
        if b is None:
            continue
        if b.period in seen:
            p.add(_dotted(*at, "budgets", i, "period"), f"a {b.period} budget is already listed for {scope} {ref}")
            continue
        seen.add(b.period)
        out.append(b)
    return tuple(out)


def _opt_int(p: _Problems, t: Mapping[str, Any], name: str, *at: str) -> int | None:
    if name not in t:
        return None
    value = t[name]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        p.add(_dotted(*at, name), f"expected a positive integer (leave it out for no limit), got {_show(value)}")
        return None
    return value


def _models(p: _Problems, t: Mapping[str, Any], *at: str) -> list[str] | None:
    if "models" not in t:
        return None
    value = t["models"]
    if not isinstance(value, list):
        p.add(_dotted(*at, "models"), f"expected an array of model names, got {_show(value)}")
        return None
    if not value:
        p.add(_dotted(*at, "models"), "empty: it would allow no model (leave it out to allow every model)")
        return None
    out: list[str] = []
    for i, item in enumerate(value):
        where = _dotted(*at, "models", i)
        if not isinstance(item, str):
            p.add(where, f"expected a model name, got {_show(item)}")
            continue
        try:
            validate_models([item])
        except UsageError:
            p.add(where, f"invalid model {_show(item)}: expected provider/model, a glob such as openai/*, "
                         "or an alias name")
            continue
        if item in out:
            p.add(where, f"{_show(item)} is listed twice")
            continue
        out.append(item)
    return out


def _key_name(p: _Problems, name: str) -> bool:
    where = _dotted("keys", name)
    if not name.strip() or name != name.strip() or _CONTROL.search(name):
        p.add(where, "a key name must not be empty, have surrounding spaces or control characters")
        return False
    if name.startswith(PREFIX):
        p.add(where, f"looks like a secret ({PREFIX}…): keys are declared by name, secrets never go in "
                     "the file (revoke or rotate this key if it was shared)")
        return False
    return True


def _key(p: _Problems, name: str, t: Mapping[str, Any]) -> KeyDecl:
    at = ("keys", name)
    p.unknown(t, KEY_FIELDS, *at)
    customer = _slug(p, "customer", t["customer"], _dotted(*at, "customer")) if "customer" in t else None
    team = _slug(p, "team", t["team"], _dotted(*at, "team")) if "team" in t else None
    clamp = t.get("clamp", False)
    if not isinstance(clamp, bool):
        p.add(_dotted(*at, "clamp"), f"expected true or false, got {_show(clamp)}")
        clamp = False
    cache = t.get("cache")
    if cache is not None and cache not in CACHE_MODES:
        p.add(_dotted(*at, "cache"), f"expected one of {', '.join(map(_show, CACHE_MODES))}, got {_show(cache)}")
        cache = None
    expires = None
    if "expires" in t:
        try:
            expires = parse_expiry(t["expires"])
        except ValueError as exc:
            p.add(_dotted(*at, "expires"), str(exc))
    status = t.get("status", "active")
    if status not in STATUSES:
        p.add(_dotted(*at, "status"), f"expected one of {', '.join(map(_show, STATUSES))}, got {_show(status)}")
        status = "active"
    return KeyDecl(name=name, customer=customer, team=team, models=_models(p, t, *at),
                   rpm=_opt_int(p, t, "rpm", *at), tpm=_opt_int(p, t, "tpm", *at), clamp=clamp, cache=cache,
                   expires=expires, status=status, budgets=_budgets(p, t, "key", name, *at))


def _entry(p: _Problems, decl: Declarations, kind: str, ident: str, entry: object, id_ok: bool) -> bool:
    """Whether ``[kind.ident]`` can be read: a valid id and a table; else it is marked broken."""
    if id_ok and not isinstance(entry, dict):
        p.add(_dotted(kind + "s", ident), f"expected a table, got {_show(entry)}")
    if id_ok and isinstance(entry, dict):
        return True
    decl.broken.add((kind, ident))
    return False


def parse_doc(doc: Mapping[str, Any], file: str) -> tuple[Declarations, list[str]]:
    """The governance sections of a parsed file (other sections are ignored) and their problems."""
    p = _Problems(file)
    decl = Declarations(file)

    def section(name: str) -> dict[str, Any]:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            p.add(name, f"expected a table of [{name}.ID] entries, got {_show(value)}")
            return {}
        return value

    for cid, entry in section("customers").items():
        id_ok = _slug(p, "customer", cid, _dotted("customers", cid)) is not None
        if not _entry(p, decl, "customer", cid, entry, id_ok):
            continue
        p.unknown(entry, CUSTOMER_FIELDS, "customers", cid)
        decl.customers[cid] = CustomerDecl(cid, _name(p, entry, "customers", cid),
                                           _budgets(p, entry, "customer", cid, "customers", cid))
    for tid, entry in section("teams").items():
        id_ok = _slug(p, "team", tid, _dotted("teams", tid)) is not None
        if not _entry(p, decl, "team", tid, entry, id_ok):
            continue
        p.unknown(entry, TEAM_FIELDS, "teams", tid)
        customer = None
        if "customer" not in entry:
            p.add(_dotted("teams", tid, "customer"), "required: the customer this team belongs to")
        else:
            customer = _slug(p, "customer", entry["customer"], _dotted("teams", tid, "customer"))
        name = _name(p, entry, "teams", tid)
        budgets = _budgets(p, entry, "team", tid, "teams", tid)
        if customer is not None:
            decl.teams[tid] = TeamDecl(tid, customer, name, budgets)
        else:
            decl.broken.add(("team", tid))
    for kname, entry in section("keys").items():
        if not _entry(p, decl, "key", kname, entry, _key_name(p, kname)):
            continue
        decl.keys[kname] = _key(p, kname, entry)

    if "budgets" in doc:
        value = doc["budgets"]
        if not isinstance(value, list):
            p.add("budgets", "expected an array of tables ([[budgets]] with customer, team or key, period and "
                             "limit); a budget of a declared entry goes in its budgets = [...]")
            value = []
        for i, item in enumerate(value):
            at: tuple[str | int, ...] = ("budgets", i)
            if not isinstance(item, dict):
                p.add(_dotted(*at), f"expected a table, got {_show(item)}")
                continue
            scopes = [s for s in SCOPE_FIELDS if s in item]
            if len(scopes) != 1:
                p.add(_dotted(*at), "give exactly one of customer, team or key")
                continue
            scope = scopes[0]
            ref = item[scope]
            if scope == "key":
                if not isinstance(ref, str) or not ref.strip():
                    p.add(_dotted(*at, "key"), f"expected a key name or id, got {_show(ref)}")
                    continue
            elif _slug(p, scope, ref, _dotted(*at, scope)) is None:
                continue
            b = _budget(p, {k: v for k, v in item.items() if k != scope}, scope, ref, *at)
            if b is not None:
                decl.budgets.append(b)
    return decl, p.lines


def parse_file(path: str | Path, *, environ: Mapping[str, str] | None = None) -> tuple[Declarations, list[str]]:
    """Read ``path`` whole: the governance sections, and every problem in the file (the other sections
    checked by ``config.validate_file``)."""
    from ..config import validate_file

    path = Path(path)
    file = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
        doc = tomllib.loads(text, parse_float=Decimal)
    except FileNotFoundError:
        return Declarations(file), [f"{file}: file not found"]
    except OSError as exc:
        return Declarations(file), [f"{file}: cannot read: {exc.strerror or exc}"]
    except UnicodeDecodeError:
        return Declarations(file), [f"{file}: not UTF-8 text"]
    except tomllib.TOMLDecodeError as exc:
        return Declarations(file), [f"{file}: invalid TOML: {exc}"]
    decl, problems = parse_doc(doc, file)
    return decl, validate_file(path, environ=environ) + problems


# ---- the difference from the database -------------------------------------------------------------


@dataclass(slots=True)
class Change:
    """One line of ``apply``'s report: ``+`` create or ``~`` update of one field."""

    action: str  # create | update
    kind: str  # customer | team | key | budget
    id: str  # customer id, team id, key name; for a budget its scope's
    attr: str | None = None  # the updated field
    old: Any = None
    new: Any = None
    scope: str | None = None  # budgets: customer | team | key
    period: str | None = None  # budgets
    secret: str | None = field(default=None, repr=False)  # a created key's secret, after a real apply
    detail: str = ""  # text shown after the id on a create line
    run: Callable[[sqlite3.Connection], None] | None = field(default=None, repr=False, compare=False)

    def line(self) -> str:
        if self.kind == "budget":
            what = f"budget {self.scope} {self.id} {self.period}"
        else:
            what = f"{self.kind} {self.id}"
        if self.action == "create":
            if self.secret:
                return f"+ {what}: {self.secret}"
            return f"+ {what}{self.detail}"
        return f"~ {what}: {self.attr} {_text(self.attr, self.old)} -> {_text(self.attr, self.new)}"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "kind": self.kind, "id": self.id}
        if self.kind == "budget":
            out.update(scope=self.scope, period=self.period)
        if self.action == "update":
            out.update(field=self.attr, old=_plain(self.attr, self.old), new=_plain(self.attr, self.new))
        elif isinstance(self.new, dict):
            out.update({k: _plain(k, v) for k, v in self.new.items()})
        if self.secret:
            out["secret"] = self.secret
        return out


_MONEY = ("limit", "grace")
_NONE_TEXT = {"models": "(every model)", "rpm": "(unlimited)", "tpm": "(unlimited)", "cache": "(default)",
              "expires": "(never)", "name": "(none)"}


def _text(name: str | None, value: Any) -> str:
    if value is None:
        return _NONE_TEXT.get(name or "", "(none)")
    if name in _MONEY:
        return usd(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_show, value)) + "]"
    return _show(value)


def _plain(name: str | None, value: Any) -> Any:
    return usd_plain(value) if name in _MONEY and isinstance(value, int) else value


@dataclass(slots=True)
class Plan:
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def plan(conn: sqlite3.Connection, decl: Declarations, *, now: datetime | None = None) -> Plan:
    """What applying ``decl`` would change in ``conn``'s database, and what stands in the way."""
    out = Plan()
    p = _Problems(decl.file)
    now = now or datetime.now(UTC)
    ts = _iso(now)
    customers = {r["id"]: dict(r) for r in conn.execute("SELECT id, name FROM customers")}
    teams = {r["id"]: dict(r) for r in conn.execute("SELECT id, customer_id, name FROM teams")}
    key_rows = [dict(r) for r in conn.execute(
        "SELECT id, name, status, customer_id, team_id, models, rpm, tpm, clamp, cache_mode, expires_at"
        " FROM keys")]
    keys_by_name = {r["name"]: r for r in key_rows if r["name"] is not None}
    keys_by_id = {r["id"]: r for r in key_rows}
    budgets = {(r["scope"], r["scope_id"], r["period"]): dict(r) for r in conn.execute("SELECT * FROM budgets")}
    key_ids: dict[str, str | None] = {}  # declared key name → its id (new keys: minted now), None: skipped
    add = out.changes.append

    def customer_known(cid: str) -> bool:  # a broken entry was reported already: known enough
        return cid in decl.customers or cid in customers or ("customer", cid) in decl.broken

    def team_customer(tid: str) -> str | None:
        if tid in decl.teams:
            return decl.teams[tid].customer
        row = teams.get(tid)
        return row["customer_id"] if row else None

    # customers
    for c in decl.customers.values():
        row = customers.get(c.id)
        if row is None:
            add(Change("create", "customer", c.id, new={"name": c.name}, run=_sql(
                "INSERT INTO customers (id, name, created_at) VALUES (?, ?, ?)", c.id, c.name, ts)))
        elif row["name"] != c.name:
            add(Change("update", "customer", c.id, "name", row["name"], c.name, run=_sql(
                "UPDATE customers SET name = ? WHERE id = ?", c.name, c.id)))

    # teams
    for t in decl.teams.values():
        row = teams.get(t.id)
        if not customer_known(t.customer):
            p.add(_dotted("teams", t.id, "customer"), f"no customer {_show(t.customer)} in the file or the database")
        elif row is not None and row["customer_id"] != t.customer:
            p.add(_dotted("teams", t.id, "customer"), f"team {t.id} belongs to customer "
                  f"{_show(row['customer_id'])}: a team cannot move to another customer")
        elif row is None:
            add(Change("create", "team", t.id, new={"customer": t.customer, "name": t.name}, run=_sql(
                "INSERT INTO teams (id, customer_id, name, created_at) VALUES (?, ?, ?, ?)",
                t.id, t.customer, t.name, ts)))
        elif row["name"] != t.name:
            add(Change("update", "team", t.id, "name", row["name"], t.name, run=_sql(
                "UPDATE teams SET name = ? WHERE id = ?", t.name, t.id)))

    # keys
    for k in decl.keys.values():
        at = ("keys", k.name)
        row = keys_by_name.get(k.name)
        if row is None and k.name in keys_by_id and keys_by_id[k.name]["name"] is None:
            row = keys_by_id[k.name]  # an unnamed key, exported under its id
        customer = k.customer
        ok = True
        if k.team is not None and ("team", k.team) in decl.broken:
            ok = False
        elif k.team is not None:
            owner = team_customer(k.team)
            if owner is None:
                p.add(_dotted(*at, "team"), f"no team {_show(k.team)} in the file or the database")
                ok = False
            elif customer is not None and customer != owner:
                p.add(_dotted(*at, "customer"), f"team {k.team} belongs to customer {_show(owner)}, "
                                                f"not {_show(customer)}")
                ok = False
            customer = owner if customer is None else customer
        if k.customer is not None and not customer_known(k.customer):
            p.add(_dotted(*at, "customer"), f"no customer {_show(k.customer)} in the file or the database")
            ok = False
        if row is not None and ok and (row["customer_id"], row["team_id"]) != (customer, k.team):
            p.add(_dotted(*at), f"key {k.name} belongs to customer {_show(row['customer_id'])}, team "
                                f"{_show(row['team_id'])}: a key cannot change owner (declare a new key)")
            ok = False
        if row is not None and row["status"] == "revoked" and k.status != "revoked":
            p.add(_dotted(*at, "status"), f"key {k.name} was revoked; revocation is final (set status = "
                                          "\"revoked\", or declare a key with a new name)")
            ok = False
        if not ok:
            key_ids[k.name] = None
            continue
        if k.expires is not None and (row is None or not _same_time(row["expires_at"], k.expires)) \
                and datetime.fromisoformat(k.expires) <= now:
            out.warnings.append(f"{decl.file}: {_dotted(*at, 'expires')}: {k.expires} is in the past: "
                                "the key is expired")
        if row is None:
            if k.status == "revoked":  # nothing to revoke and nothing worth creating
                key_ids[k.name] = None
                continue
            kid = "key_" + uuid.uuid4().hex[:16]
            key_ids[k.name] = kid
            change = Change("create", "key", k.name, new={"customer": customer, "team": k.team,
                                                          "status": k.status})
            change.run = _create_key(change, kid, k, customer, ts)
            add(change)
            continue
        kid = row["id"]
        key_ids[k.name] = kid
        stored: dict[str, Any] = {"models": orjson.loads(row["models"]) if row["models"] else None, "rpm": row["rpm"],
                  "tpm": row["tpm"], "clamp": bool(row["clamp"]), "cache": row["cache_mode"],
                  "expires": row["expires_at"], "status": row["status"]}
        wanted: dict[str, Any] = {"models": k.models, "rpm": k.rpm, "tpm": k.tpm, "clamp": k.clamp, "cache": k.cache,
                  "expires": k.expires, "status": k.status}
        for name, new in wanted.items():
            old = stored[name]
            if (name == "expires" and _same_time(old, new)) or old == new:
                continue
            add(Change("update", "key", k.name, name, old, new, run=_update_key(kid, name, new, ts)))

    # budgets: each entry's own, then the top-level [[budgets]]
    seen: dict[tuple[str, str, str], str] = {}  # (scope, scope id, period) → where it was declared
    entries = [b for c in decl.customers.values() for b in c.budgets]
    entries += [b for t in decl.teams.values() for b in t.budgets]
    entries += [b for k in decl.keys.values() for b in k.budgets]
    for b in entries + decl.budgets:
        scope_id: str | None = b.ref
        if (b.scope, b.ref) in decl.broken:
            continue
        if b.scope == "customer" and not customer_known(b.ref):
            p.add(_dotted(*b.where, "customer"), f"no customer {_show(b.ref)} in the file or the database")
            continue
        if b.scope == "team" and team_customer(b.ref) is None:
            p.add(_dotted(*b.where, "team"), f"no team {_show(b.ref)} in the file or the database")
            continue
        if b.scope == "key":
            if b.ref in key_ids:
                scope_id = key_ids[b.ref]
                if scope_id is None:  # the key itself has a problem, or is revoked and absent
                    continue
            elif b.ref in keys_by_name:
                scope_id = keys_by_name[b.ref]["id"]
            elif b.ref in keys_by_id:
                scope_id = b.ref
            else:
                p.add(_dotted(*b.where, "key"), f"no key named {_show(b.ref)} in the file, and no key with that "
                                               "name or id in the database")
                continue
        assert scope_id is not None
        ident = (b.scope, scope_id, b.period)
        if ident in seen:
            p.add(_dotted(*b.where, "period"), f"the {b.period} budget of {b.scope} {b.ref} is also declared at "
                                              f"{seen[ident]}")
            continue
        seen[ident] = _dotted(*b.where)
        _plan_budget(out, b, scope_id, budgets.get(ident), ts)

    out.problems = p.lines
    return out


def _sql(sql: str, *args: Any) -> Callable[[sqlite3.Connection], None]:
    def run(db: sqlite3.Connection) -> None:
        db.execute(sql, args)

    return run


def _create_key(change: Change, kid: str, k: KeyDecl, customer: str | None,
                ts: str) -> Callable[[sqlite3.Connection], None]:
    def run(db: sqlite3.Connection) -> None:
        secret = new_secret()
        db.execute(
            "INSERT INTO keys (id, name, key_hash, display, customer_id, team_id, status, models, created_at,"
            " expires_at, rpm, tpm, clamp, cache_mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kid, k.name, hash_secret(secret), display(secret), customer, k.team, k.status,
             orjson.dumps(k.models).decode() if k.models else None, ts, k.expires, k.rpm, k.tpm, int(k.clamp),
             k.cache))
        change.secret = secret

    return run


_KEY_COLUMNS = {"models": "models", "rpm": "rpm", "tpm": "tpm", "clamp": "clamp", "cache": "cache_mode",
                "expires": "expires_at", "status": "status"}


def _update_key(kid: str, name: str, new: Any, ts: str) -> Callable[[sqlite3.Connection], None]:
    if name == "models":
        value: Any = orjson.dumps(new).decode() if new else None
    elif name == "clamp":
        value = int(new)
    else:
        value = new

    def run(db: sqlite3.Connection) -> None:
        db.execute(f"UPDATE keys SET {_KEY_COLUMNS[name]} = ? WHERE id = ?", (value, kid))
        if name == "status" and new == "revoked":
            db.execute("UPDATE keys SET revoked_at = ? WHERE id = ?", (ts, kid))

    return run


def _plan_budget(out: Plan, b: BudgetDecl, scope_id: str, row: dict[str, Any] | None, ts: str) -> None:
    if row is None:
        extras = [x for x in ("soft" if not b.hard else "", f"warn at {b.warn_pct}%" if b.warn_pct != 80 else "",
                              f"grace {usd(b.grace_nanos)}" if b.grace_nanos else "") if x]
        detail = f" {usd(b.limit_nanos)}" + (f" ({', '.join(extras)})" if extras else "")
        new = {"limit": b.limit_nanos, "hard": b.hard, "warn_at": b.warn_pct, "grace": b.grace_nanos}

        def create(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO budgets (id, scope, scope_id, period, limit_nanos, hard, warn_pct, grace_nanos,"
                       " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       ("bud_" + uuid.uuid4().hex[:16], b.scope, scope_id, b.period, b.limit_nanos, int(b.hard),
                        b.warn_pct, b.grace_nanos, ts, ts))

        out.changes.append(Change("create", "budget", b.ref, new=new, scope=b.scope, period=b.period,
                                  detail=detail, run=create))
        return
    pairs = (("limit", "limit_nanos", int(row["limit_nanos"]), b.limit_nanos),
             ("hard", "hard", bool(row["hard"]), b.hard),
             ("warn_at", "warn_pct", int(row["warn_pct"]), b.warn_pct),
             ("grace", "grace_nanos", int(row["grace_nanos"]), b.grace_nanos))
    for name, column, old, new_value in pairs:
        if old == new_value:
            continue

        def update(db: sqlite3.Connection, column: str = column, value: Any = new_value) -> None:
            db.execute(f"UPDATE budgets SET {column} = ?, updated_at = ? WHERE id = ?",
                       (int(value), ts, row["id"]))

        out.changes.append(Change("update", "budget", b.ref, name, old, new_value, scope=b.scope,
                                  period=b.period, run=update))


def apply(conn: sqlite3.Connection, decl: Declarations, *, dry_run: bool = False,
          problems_before: list[str] | tuple[str, ...] = (), now: datetime | None = None) -> Plan:
    """Plan and (unless ``dry_run``) apply ``decl`` in one ``BEGIN IMMEDIATE`` transaction.

    ``ConfigError`` listing every problem (``problems_before``, e.g. from ``parse_file``, then the
    plan's), with nothing written, when there is any. Created keys' secrets are in their changes'
    ``secret`` after a real apply (and nowhere else).
    """
    if conn.in_transaction:
        conn.commit()
    conn.execute("BEGIN IMMEDIATE")
    result = Plan()
    try:
        result = plan(conn, decl, now=now)
        problems = list(problems_before) + result.problems
        if problems:
            n = len(problems)
            raise ConfigError(f"{decl.file}: {n} problem{'s' if n != 1 else ''}, nothing applied:\n"
                              + "\n".join(problems))
        if dry_run:
            conn.rollback()
            return result
        for change in result.changes:
            if change.run is not None:
                change.run(conn)
        conn.commit()
    except BaseException:
        conn.rollback()
        for change in result.changes:
            change.secret = None  # never hand out a secret that was not stored
        raise
    return result


# ---- export ---------------------------------------------------------------------------------------

EXPORT_HEADER = """\
# Customers, teams, keys and budgets exported by `llmgw config export`.
# Apply with `llmgw config apply --config FILE`: it creates what is missing and updates what differs,
# and never deletes. Secrets are not exported: a key created by apply gets a new secret, printed once.

"""


def _money(nanos: int) -> int | Decimal:
    whole, frac = divmod(nanos, 1_000_000_000)
    return whole if frac == 0 else Decimal(usd_plain(nanos))


def _export_budget(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"period": row["period"], "limit": _money(int(row["limit_nanos"]))}
    if not row["hard"]:
        out["hard"] = False
    if int(row["warn_pct"]) != 80:
        out["warn_at"] = int(row["warn_pct"])
    if int(row["grace_nanos"]):
        out["grace"] = _money(int(row["grace_nanos"]))
    return out


def _expiry_text(iso: str) -> str:
    try:
        dt = datetime.fromisoformat(iso).astimezone(UTC)
    except ValueError:
        return iso
    return dt.date().isoformat() if dt.time() == time(0) else dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def export_doc(conn: sqlite3.Connection) -> tuple[dict[str, Any], list[str]]:
    """The definitions in ``conn`` as a TOML-ready dict, and notes on what was left out."""
    notes: list[str] = []
    order = {p: i for i, p in enumerate(PERIODS)}
    by_scope: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in conn.execute("SELECT * FROM budgets"):
        by_scope.setdefault((r["scope"], r["scope_id"]), []).append(dict(r))
    used: set[tuple[str, str]] = set()

    def budgets_of(scope: str, sid: str) -> list[dict[str, Any]]:
        used.add((scope, sid))
        rows = sorted(by_scope.get((scope, sid), []), key=lambda r: order.get(r["period"], 9))
        return [_export_budget(r) for r in rows]

    customers: dict[str, Any] = {}
    for r in conn.execute("SELECT id, name FROM customers ORDER BY created_at, rowid"):
        entry: dict[str, Any] = {"name": r["name"]} if r["name"] else {}
        if b := budgets_of("customer", r["id"]):
            entry["budgets"] = b
        customers[r["id"]] = entry
    teams: dict[str, Any] = {}
    for r in conn.execute("SELECT id, customer_id, name FROM teams ORDER BY created_at, rowid"):
        entry = {"customer": r["customer_id"]}
        if r["name"]:
            entry["name"] = r["name"]
        if b := budgets_of("team", r["id"]):
            entry["budgets"] = b
        teams[r["id"]] = entry
    keys: dict[str, Any] = {}
    revoked: set[str] = set()
    for r in conn.execute("SELECT id, name, status, customer_id, team_id, models, rpm, tpm, clamp, cache_mode,"
                          " expires_at FROM keys ORDER BY created_at, rowid"):
        if r["status"] == "revoked":
            revoked.add(r["id"])
            continue
        entry = {}
        for name, value in (("customer", r["customer_id"]), ("team", r["team_id"]),
                            ("models", orjson.loads(r["models"]) if r["models"] else None),
                            ("rpm", r["rpm"]), ("tpm", r["tpm"]), ("clamp", bool(r["clamp"]) or None),
                            ("cache", r["cache_mode"]),
                            ("expires", _expiry_text(r["expires_at"]) if r["expires_at"] else None),
                            ("status", r["status"] if r["status"] != "active" else None)):
            if value is not None:
                entry[name] = value
        if b := budgets_of("key", r["id"]):
            entry["budgets"] = b
        keys[r["name"] if r["name"] is not None else r["id"]] = entry
    if revoked:
        n = len(revoked)
        notes.append(f"left out {n} revoked key{'s' if n != 1 else ''} and {'their' if n != 1 else 'its'} budgets")
    orphans = sum(len(v) for k, v in by_scope.items() if k not in used and k[1] not in revoked)
    if orphans:
        notes.append(f"left out {orphans} budget{'s' if orphans != 1 else ''} of customers, teams or keys that "
                     "no longer exist")
    doc: dict[str, Any] = {}
    for name, value in (("customers", customers), ("teams", teams), ("keys", keys)):
        if value:
            doc[name] = value
    return doc, notes


def export(conn: sqlite3.Connection) -> tuple[str, list[str]]:
    """TOML text of every customer, team, key (no secret, no hash) and budget; and notes."""
    from ..config import dump

    if conn.in_transaction:
        conn.commit()
    conn.execute("BEGIN")  # one snapshot for every SELECT
    try:
        doc, notes = export_doc(conn)
    finally:
        conn.rollback()
    return EXPORT_HEADER + dump(doc), notes
