"""Declarative governance: customers, teams, keys and budgets written in ``llmgw.toml``.

Owns the ``[customers.*]``, ``[teams.*]``, ``[keys.*]`` and ``[[budgets]]`` sections as written:
reading and checking them (``parse_file``, ``parse_doc``) into ``Declarations``, and the problem
lines (``Problems``). Comparing them with the database, applying and exporting is
``declare_apply.py``'s. No front end: ``llmgw config apply`` reads the file through ``parse_file``.

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
  (``rpm`` absent = unlimited), so deleting a line and applying unsets it. (How that is applied, and
  what ``apply`` never does, is in ``declare_apply.py``.)
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..tomltext import dotted, show
from ..units import PERIODS, iso_utc, parse_time, parse_usd
from .budgets import SCOPES
from .hierarchy import SLUG_MAX, SLUG_RE
from .keys import CACHE_MODES, PREFIX, STATUSES, validate_models

CUSTOMER_FIELDS = ("name", "budgets")
TEAM_FIELDS = ("customer", "name", "budgets")
KEY_FIELDS = ("customer", "team", "models", "rpm", "tpm", "clamp", "cache", "expires", "status", "budgets")
BUDGET_FIELDS = ("period", "limit", "hard", "warn_at", "grace")
SCOPE_FIELDS = SCOPES  # a [[budgets]] entry names one of these
_SECRET_FIELDS = ("secret", "key", "key_hash", "hash", "api_key", "display", "prev_key_hash")
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


class Problems:
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
                self.add(dotted(*at, name), "secrets are never declared in the file: a new key's secret "
                                            "is printed once by llmgw config apply")
                continue
            hint = difflib.get_close_matches(name, allowed, n=1)
            more = f'; did you mean "{hint[0]}"?' if hint else f" (known: {', '.join(allowed)})"
            self.add(dotted(*at, name), f"unknown key{more}")


def _slug(p: Problems, kind: str, value: object, where: str) -> str | None:
    if not isinstance(value, str):
        p.add(where, f"expected a {kind} id, got {show(value)}")
        return None
    if not SLUG_RE.fullmatch(value) or len(value) > SLUG_MAX:
        p.add(where, f"invalid {kind} id {show(value)}: use lowercase letters, digits, '_', '.' and '-', "
                     f"starting with a letter or digit, at most {SLUG_MAX} characters")
        return None
    return value


def _name(p: Problems, t: Mapping[str, Any], *at: str) -> str | None:
    if "name" not in t:
        return None
    value = t["name"]
    if not isinstance(value, str):
        p.add(dotted(*at, "name"), f"expected a string, got {show(value)}")
        return None
    return value.strip() or None


def _budget(p: Problems, item: object, scope: str, ref: str, *at: str | int,
            fields: tuple[str, ...] = BUDGET_FIELDS) -> BudgetDecl | None:
    where = dotted(*at)
    if not isinstance(item, dict):
        p.add(where, f'expected a table like {{ period = "month", limit = 200 }}, got {show(item)}')
        return None
    before = len(p.lines)
    p.unknown(item, fields, *at)
    period = item.get("period")
    if "period" not in item:
        p.add(dotted(*at, "period"), f"required ({', '.join(PERIODS)})")
    elif period not in PERIODS:
        p.add(dotted(*at, "period"), f"expected one of {', '.join(map(show, PERIODS))}, got {show(period)}")
    limit = 0
    if "limit" not in item:
        p.add(dotted(*at, "limit"), "required (USD per period)")
    else:
        try:
            limit = parse_usd(item["limit"])
        except UsageError as exc:
            p.add(dotted(*at, "limit"), str(exc))
    hard = item.get("hard", True)
    if not isinstance(hard, bool):
        p.add(dotted(*at, "hard"), f"expected true or false, got {show(hard)}")
        hard = True
    warn = item.get("warn_at", 80)
    if isinstance(warn, bool) or not isinstance(warn, int) or not 1 <= warn <= 100:
        p.add(dotted(*at, "warn_at"), f"expected a percent from 1 to 100, got {show(warn)}")
        warn = 80
    grace = 0
    if "grace" in item:
        try:
            grace = parse_usd(item["grace"])
        except UsageError as exc:
            p.add(dotted(*at, "grace"), str(exc))
        if grace and not hard:
            p.add(dotted(*at, "grace"), "applies to hard budgets only (hard = false here)")
    if len(p.lines) > before:
        return None
    return BudgetDecl(scope, ref, str(period), limit, hard, warn, grace, at)


def _budgets(p: Problems, t: Mapping[str, Any], scope: str, ref: str, *at: str) -> tuple[BudgetDecl, ...]:
    if "budgets" not in t:
        return ()
    value = t["budgets"]
    if not isinstance(value, list):
        p.add(dotted(*at, "budgets"), f'expected an array like [{{ period = "month", limit = 200 }}], '
                                      f"got {show(value)}")
        return ()
    out: list[BudgetDecl] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        b = _budget(p, item, scope, ref, *at, "budgets", i)
        if b is None:
            continue
        if b.period in seen:
            p.add(dotted(*at, "budgets", i, "period"), f"a {b.period} budget is already listed for {scope} {ref}")
            continue
        seen.add(b.period)
        out.append(b)
    return tuple(out)


def _opt_int(p: Problems, t: Mapping[str, Any], name: str, *at: str) -> int | None:
    if name not in t:
        return None
    value = t[name]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        p.add(dotted(*at, name), f"expected a positive integer (leave it out for no limit), got {show(value)}")
        return None
    return value


def _models(p: Problems, t: Mapping[str, Any], *at: str) -> list[str] | None:
    if "models" not in t:
        return None
    value = t["models"]
    if not isinstance(value, list):
        p.add(dotted(*at, "models"), f"expected an array of model names, got {show(value)}")
        return None
    if not value:
        p.add(dotted(*at, "models"), "empty: it would allow no model (leave it out to allow every model)")
        return None
    out: list[str] = []
    for i, item in enumerate(value):
        where = dotted(*at, "models", i)
        if not isinstance(item, str):
            p.add(where, f"expected a model name, got {show(item)}")
            continue
        try:
            validate_models([item])
        except UsageError:
            p.add(where, f"invalid model {show(item)}: expected provider/model, a glob such as openai/*, "
                         "or an alias name")
            continue
        if item in out:
            p.add(where, f"{show(item)} is listed twice")
            continue
        out.append(item)
    return out


def _key_name(p: Problems, name: str) -> bool:
    where = dotted("keys", name)
    if not name.strip() or name != name.strip() or _CONTROL.search(name):
        p.add(where, "a key name must not be empty, have surrounding spaces or control characters")
        return False
    if name.startswith(PREFIX):
        p.add(where, f"looks like a secret ({PREFIX}…): keys are declared by name, secrets never go in "
                     "the file (revoke or rotate this key if it was shared)")
        return False
    return True


def _key(p: Problems, name: str, t: Mapping[str, Any]) -> KeyDecl:
    at = ("keys", name)
    p.unknown(t, KEY_FIELDS, *at)
    customer = _slug(p, "customer", t["customer"], dotted(*at, "customer")) if "customer" in t else None
    team = _slug(p, "team", t["team"], dotted(*at, "team")) if "team" in t else None
    clamp = t.get("clamp", False)
    if not isinstance(clamp, bool):
        p.add(dotted(*at, "clamp"), f"expected true or false, got {show(clamp)}")
        clamp = False
    cache = t.get("cache")
    if cache is not None and cache not in CACHE_MODES:
        p.add(dotted(*at, "cache"), f"expected one of {', '.join(map(show, CACHE_MODES))}, got {show(cache)}")
        cache = None
    expires = None
    if "expires" in t:
        try:
            expires = iso_utc(parse_time(t["expires"]))
        except UsageError as exc:
            p.add(dotted(*at, "expires"), str(exc))
    status = t.get("status", "active")
    if status not in STATUSES:
        p.add(dotted(*at, "status"), f"expected one of {', '.join(map(show, STATUSES))}, got {show(status)}")
        status = "active"
    return KeyDecl(name=name, customer=customer, team=team, models=_models(p, t, *at),
                   rpm=_opt_int(p, t, "rpm", *at), tpm=_opt_int(p, t, "tpm", *at), clamp=clamp, cache=cache,
                   expires=expires, status=status, budgets=_budgets(p, t, "key", name, *at))


def _entry(p: Problems, decl: Declarations, kind: str, ident: str, entry: object, id_ok: bool) -> bool:
    """Whether ``[kind.ident]`` can be read: a valid id and a table; else it is marked broken."""
    if id_ok and not isinstance(entry, dict):
        p.add(dotted(kind + "s", ident), f"expected a table, got {show(entry)}")
    if id_ok and isinstance(entry, dict):
        return True
    decl.broken.add((kind, ident))
    return False


def parse_doc(doc: Mapping[str, Any], file: str) -> tuple[Declarations, list[str]]:
    """The governance sections of a parsed file (other sections are ignored) and their problems."""
    p = Problems(file)
    decl = Declarations(file)

    def section(name: str) -> dict[str, Any]:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            p.add(name, f"expected a table of [{name}.ID] entries, got {show(value)}")
            return {}
        return value

    for cid, entry in section("customers").items():
        id_ok = _slug(p, "customer", cid, dotted("customers", cid)) is not None
        if not _entry(p, decl, "customer", cid, entry, id_ok):
            continue
        p.unknown(entry, CUSTOMER_FIELDS, "customers", cid)
        decl.customers[cid] = CustomerDecl(cid, _name(p, entry, "customers", cid),
                                           _budgets(p, entry, "customer", cid, "customers", cid))
    for tid, entry in section("teams").items():
        id_ok = _slug(p, "team", tid, dotted("teams", tid)) is not None
        if not _entry(p, decl, "team", tid, entry, id_ok):
            continue
        p.unknown(entry, TEAM_FIELDS, "teams", tid)
        customer = None
        if "customer" not in entry:
            p.add(dotted("teams", tid, "customer"), "required: the customer this team belongs to")
        else:
            customer = _slug(p, "customer", entry["customer"], dotted("teams", tid, "customer"))
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
                p.add(dotted(*at), f"expected a table, got {show(item)}")
                continue
            scopes = [s for s in SCOPE_FIELDS if s in item]
            if len(scopes) != 1:
                p.add(dotted(*at), "give exactly one of customer, team or key")
                continue
            scope = scopes[0]
            ref = item[scope]
            if scope == "key":
                if not isinstance(ref, str) or not ref.strip():
                    p.add(dotted(*at, "key"), f"expected a key name or id, got {show(ref)}")
                    continue
            elif _slug(p, scope, ref, dotted(*at, scope)) is None:
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
