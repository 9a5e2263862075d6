"""Declarative governance: customers, teams, keys and budgets written in ``llmgw.toml``.

Owns the ``[customers.*]``, ``[teams.*]``, ``[keys.*]`` and ``[[budgets]]`` sections as written:
reading and checking them (``parse_file``, ``parse_doc``, with ``checks.Checks``) into
``Declarations``. Comparing them with the database, applying and exporting is
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

A budget is ``{ period, limit, hard, warn_at, grace, auto_raise, ceiling }``: ``period`` is day, week
(ISO), month or total (UTC calendar windows); ``limit``, ``grace``, ``auto_raise`` and ``ceiling`` are
USD, as TOML numbers or strings (``"12.50"``, ``"$12.50"``); ``hard`` defaults to true, ``warn_at``
(percent, 1-100) to 80, ``grace`` to 0. ``auto_raise = STEP`` with ``ceiling = USD`` (above the limit,
hard budgets only) raises the limit by STEP instead of refusing, up to the ceiling (``budgets``).
``fail_open = true`` (hard budgets, cluster mode) admits on the instance's own view while Redis is
unreachable instead of failing closed.

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

from ..checks import Checks
from ..errors import UsageError
from ..tomltext import show
from ..units import PERIODS, iso_utc, parse_time, parse_usd
from .budgets import SCOPES, check_auto_raise
from .hierarchy import validate_slug
from .keys import CACHE_MODES, PREFIX, STATUSES, validate_models

CUSTOMER_FIELDS = ("name", "budgets")
TEAM_FIELDS = ("customer", "name", "budgets")
KEY_FIELDS = ("customer", "team", "models", "rpm", "tpm", "clamp", "cache", "expires", "status", "budgets")
BUDGET_FIELDS = ("period", "limit", "hard", "warn_at", "grace", "auto_raise", "ceiling", "fail_open")
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
    raise_step_nanos: int = 0  # auto_raise
    ceiling_nanos: int = 0
    fail_open: bool = False  # cluster mode: admit on the instance's view while Redis is unreachable


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


_SECRETS = {f: "secrets are never declared in the file: a new key's secret is printed once by llmgw config apply"
            for f in _SECRET_FIELDS}


def parse_expiry(value: object) -> str:
    """An expiry as written in the file (``YYYY-MM-DD``, ISO-8601, a TOML date) → ISO UTC."""
    return iso_utc(parse_time(value))


def _slug(c: Checks, kind: str, value: object, *at: str | int) -> str | None:
    try:
        return validate_slug(kind, value)
    except UsageError as e:
        c.add(at, e.message)
        return None


def _name(c: Checks, t: Mapping[str, Any], *at: str) -> str | None:
    return (c.string(t, "name", *at, nonempty=False) or "").strip() or None


def _budget(c: Checks, item: object, scope: str, ref: str, *at: str | int,
            fields: tuple[str, ...] = BUDGET_FIELDS) -> BudgetDecl | None:
    if not isinstance(item, dict):
        c.add(at, f'expected a table like {{ period = "month", limit = 200 }}, got {show(item)}')
        return None
    before = len(c.problems)
    c.unknown(item, fields, *at)
    period = c.choice(item, "period", PERIODS, *at, required=True)
    limit = c.parsed(item, "limit", parse_usd, *at, default=0, required=True)
    hard = c.boolean(item, "hard", *at, default=True)
    warn = c.integer(item, "warn_at", *at, default=80, lo=1, hi=100)
    grace = c.parsed(item, "grace", parse_usd, *at, default=0)
    if grace and not hard:
        c.add((*at, "grace"), "applies to hard budgets only (hard = false here)")
    step = c.parsed(item, "auto_raise", parse_usd, *at, default=0)
    ceiling = c.parsed(item, "ceiling", parse_usd, *at, default=0)
    fail_open = c.boolean(item, "fail_open", *at, default=False)
    if fail_open and not hard:
        c.add((*at, "fail_open"), "applies to hard budgets only (a soft one never refuses)")
    if len(c.problems) == before:
        try:
            check_auto_raise(limit, step, ceiling, bool(hard))
        except UsageError as e:
            c.add((*at, e.param or "auto_raise"), e.message.split(": ", 1)[-1])
    if len(c.problems) > before or period is None:
        return None
    return BudgetDecl(scope, ref, period, limit, hard, warn, grace, at, step, ceiling, bool(fail_open))


def _budgets(c: Checks, t: Mapping[str, Any], scope: str, ref: str, *at: str) -> tuple[BudgetDecl, ...]:
    if "budgets" not in t:
        return ()
    value = t["budgets"]
    if not isinstance(value, list):
        c.add((*at, "budgets"), f'expected an array like [{{ period = "month", limit = 200 }}], got {show(value)}')
        return ()
    out: list[BudgetDecl] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        b = _budget(c, item, scope, ref, *at, "budgets", i)
        if b is None:
            continue
        if b.period in seen:
            c.add((*at, "budgets", i, "period"), f"a {b.period} budget is already listed for {scope} {ref}")
            continue
        seen.add(b.period)
        out.append(b)
    return tuple(out)


def _models(c: Checks, t: Mapping[str, Any], *at: str) -> list[str] | None:
    models = c.strings(t, "models", *at, what="model name")
    if models is None:
        return None
    if not models:
        c.add((*at, "models"), "empty: it would allow no model (leave it out to allow every model)")
        return None
    out: list[str] = []
    for i, item in enumerate(models):
        try:
            validate_models([item])
        except UsageError:
            c.add((*at, "models", i), f"invalid model {show(item)}: expected provider/model, a glob such as "
                                      "openai/*, or an alias name")
            continue
        if item in out:
            c.add((*at, "models", i), f"{show(item)} is listed twice")
            continue
        out.append(item)
    return out


def _key_name(c: Checks, name: str) -> bool:
    if not name.strip() or name != name.strip() or _CONTROL.search(name):
        c.add(("keys", name), "a key name must not be empty, have surrounding spaces or control characters")
        return False
    if name.startswith(PREFIX):
        c.add(("keys", name), f"looks like a secret ({PREFIX}…): keys are declared by name, secrets never go in "
                              "the file (revoke or rotate this key if it was shared)")
        return False
    return True


def _key(c: Checks, name: str, t: Mapping[str, Any]) -> KeyDecl:
    at = ("keys", name)
    c.unknown(t, KEY_FIELDS, *at, explain=_SECRETS)
    return KeyDecl(name=name, customer=_slug(c, "customer", t["customer"], *at, "customer") if "customer" in t else None,
                   team=_slug(c, "team", t["team"], *at, "team") if "team" in t else None,
                   models=_models(c, t, *at), rpm=c.integer(t, "rpm", *at, lo=1), tpm=c.integer(t, "tpm", *at, lo=1),
                   clamp=c.boolean(t, "clamp", *at, default=False), cache=c.choice(t, "cache", CACHE_MODES, *at),
                   expires=c.parsed(t, "expires", parse_expiry, *at),
                   status=c.choice(t, "status", STATUSES, *at, default="active"),
                   budgets=_budgets(c, t, "key", name, *at))


def _entry(c: Checks, decl: Declarations, kind: str, ident: str, entry: object, id_ok: bool) -> bool:
    """Whether ``[kind.ident]`` can be read: a valid id and a table; else it is marked broken."""
    if id_ok and not isinstance(entry, dict):
        c.add((kind + "s", ident), f"expected a table, got {show(entry)}")
    if id_ok and isinstance(entry, dict):
        return True
    decl.broken.add((kind, ident))
    return False


def parse_doc(doc: Mapping[str, Any], file: str) -> tuple[Declarations, list[str]]:
    """The governance sections of a parsed file (other sections are ignored) and their problems."""
    c = Checks(file)
    decl = Declarations(file)

    def section(name: str) -> dict[str, Any]:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            c.add(name, f"expected a table of [{name}.ID] entries, got {show(value)}")
            return {}
        return value

    for cid, entry in section("customers").items():
        if not _entry(c, decl, "customer", cid, entry, _slug(c, "customer", cid, "customers", cid) is not None):
            continue
        c.unknown(entry, CUSTOMER_FIELDS, "customers", cid)
        decl.customers[cid] = CustomerDecl(cid, _name(c, entry, "customers", cid),
                                           _budgets(c, entry, "customer", cid, "customers", cid))
    for tid, entry in section("teams").items():
        if not _entry(c, decl, "team", tid, entry, _slug(c, "team", tid, "teams", tid) is not None):
            continue
        c.unknown(entry, TEAM_FIELDS, "teams", tid)
        customer = None
        if "customer" not in entry:
            c.add(("teams", tid, "customer"), "required: the customer this team belongs to", "missing_field")
        else:
            customer = _slug(c, "customer", entry["customer"], "teams", tid, "customer")
        name = _name(c, entry, "teams", tid)
        budgets = _budgets(c, entry, "team", tid, "teams", tid)
        if customer is not None:
            decl.teams[tid] = TeamDecl(tid, customer, name, budgets)
        else:
            decl.broken.add(("team", tid))
    for kname, entry in section("keys").items():
        if _entry(c, decl, "key", kname, entry, _key_name(c, kname)):
            decl.keys[kname] = _key(c, kname, entry)

    value = doc.get("budgets", [])
    if not isinstance(value, list):
        c.add("budgets", "expected an array of tables ([[budgets]] with customer, team or key, period and "
                         "limit); a budget of a declared entry goes in its budgets = [...]")
        value = []
    for i, item in enumerate(value):
        at: tuple[str | int, ...] = ("budgets", i)
        if not isinstance(item, dict):
            c.add(at, f"expected a table, got {show(item)}")
            continue
        scopes = [s for s in SCOPE_FIELDS if s in item]
        if len(scopes) != 1:
            c.add(at, "give exactly one of customer, team or key")
            continue
        scope = scopes[0]
        ref = item[scope]
        if scope == "key":
            if not isinstance(ref, str) or not ref.strip():
                c.add((*at, "key"), f"expected a key name or id, got {show(ref)}")
                continue
        elif _slug(c, scope, ref, *at, scope) is None:
            continue
        b = _budget(c, {k: v for k, v in item.items() if k != scope}, scope, ref, *at)
        if b is not None:
            decl.budgets.append(b)
    return decl, c.problems


def parse_file(path: str | Path, *, environ: Mapping[str, str] | None = None) -> tuple[Declarations, list[str]]:
    """Read ``path`` whole: the governance sections, and every problem in the file (the other sections
    checked by ``config.validate_file``): everything ``serve`` and ``config apply`` refuse that the
    file alone can tell (``declare_apply.plan`` adds what only the database can)."""
    from ..config import validate_file

    problems = validate_file(path, environ=environ)
    file = str(path)
    try:
        doc = tomllib.loads(Path(path).read_bytes().decode("utf-8"), parse_float=Decimal)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):  # reported by validate_file
        return Declarations(file), problems or [f"{file}: cannot read"]
    decl, more = parse_doc(doc, file)
    return decl, problems + more
