"""Declarative governance against the database: plan, apply and export what ``declare.py`` reads.

Owns the difference between ``Declarations`` and the database (``plan``: one ``Change`` per line of
``llmgw config apply``'s report, and the problems only the database can show), writing it
(``apply``), and writing the database back out in the file's shape (``export``). No front end:
``llmgw config apply`` / ``llmgw config export`` print what these return.

Invariants:

* Nothing is written when there is any problem, in the file or against the database.
* A declared customer, team or key is what its entry says. Budgets are upserted on
  (scope, scope id, period) by ``budgets.upsert_budget``, as the CLI and the admin API do, and keep
  their id, so a running daemon keeps its spend counters.
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

import sqlite3
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from .. import clock
from ..checks import Checks
from ..errors import ConfigError, UsageError
from ..tomltext import dotted, show
from ..units import DAY_MS, NANOS_PER_USD, PERIODS, iso_utc, parse_time, usd
from .budgets import read_budgets, upsert_budget
from .declare import BudgetDecl, Declarations, KeyDecl
from .keys import display, hash_secret, new_secret

# ---- the difference from the database -------------------------------------------------------------


def _same_time(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return parse_time(a) == parse_time(b)
    except UsageError:
        return a == b


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


_MONEY = ("limit", "grace", "auto_raise", "ceiling")
_NONE_TEXT = {"models": "(every model)", "rpm": "(unlimited)", "tpm": "(unlimited)", "cache": "(default)",
              "expires": "(never)", "name": "(none)"}


def _text(name: str | None, value: Any) -> str:
    if value is None:
        return _NONE_TEXT.get(name or "", "(none)")
    if name in _MONEY:
        return usd(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(show, value)) + "]"
    return show(value)


def _plain(name: str | None, value: Any) -> Any:
    return usd(value, dollar=False) if name in _MONEY and isinstance(value, int) else value


@dataclass(slots=True)
class Plan:
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def plan(conn: sqlite3.Connection, decl: Declarations, *, now_ms: int | None = None) -> Plan:
    """What applying ``decl`` would change in ``conn``'s database, and what stands in the way."""
    out = Plan()
    p = Checks(decl.file)
    now = clock.now_ms() if now_ms is None else now_ms
    ts = iso_utc(now)
    customers = {r["id"]: dict(r) for r in conn.execute("SELECT id, name FROM customers")}
    teams = {r["id"]: dict(r) for r in conn.execute("SELECT id, customer_id, name FROM teams")}
    key_rows = [dict(r) for r in conn.execute(
        "SELECT id, name, status, customer_id, team_id, models, rpm, tpm, clamp, cache_mode, expires_at"
        " FROM keys")]
    keys_by_name = {r["name"]: r for r in key_rows if r["name"] is not None}
    keys_by_id = {r["id"]: r for r in key_rows}
    budgets = {(r["scope"], r["scope_id"], r["period"]): dict(r) for r in read_budgets(conn)}
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
            p.add(dotted("teams", t.id, "customer"), f"no customer {show(t.customer)} in the file or the database")
        elif row is not None and row["customer_id"] != t.customer:
            p.add(dotted("teams", t.id, "customer"), f"team {t.id} belongs to customer "
                  f"{show(row['customer_id'])}: a team cannot move to another customer")
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
                p.add(dotted(*at, "team"), f"no team {show(k.team)} in the file or the database")
                ok = False
            elif customer is not None and customer != owner:
                p.add(dotted(*at, "customer"), f"team {k.team} belongs to customer {show(owner)}, "
                                               f"not {show(customer)}")
                ok = False
            customer = owner if customer is None else customer
        if k.customer is not None and not customer_known(k.customer):
            p.add(dotted(*at, "customer"), f"no customer {show(k.customer)} in the file or the database")
            ok = False
        if row is not None and ok and (row["customer_id"], row["team_id"]) != (customer, k.team):
            p.add(dotted(*at), f"key {k.name} belongs to customer {show(row['customer_id'])}, team "
                               f"{show(row['team_id'])}: a key cannot change owner (declare a new key)")
            ok = False
        if row is not None and row["status"] == "revoked" and k.status != "revoked":
            p.add(dotted(*at, "status"), f"key {k.name} was revoked; revocation is final (set status = "
                                         "\"revoked\", or declare a key with a new name)")
            ok = False
        if not ok:
            key_ids[k.name] = None
            continue
        if k.expires is not None and (row is None or not _same_time(row["expires_at"], k.expires)) \
                and parse_time(k.expires) <= now:
            out.warnings.append(f"{decl.file}: {dotted(*at, 'expires')}: {k.expires} is in the past: "
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
            p.add(dotted(*b.where, "customer"), f"no customer {show(b.ref)} in the file or the database")
            continue
        if b.scope == "team" and team_customer(b.ref) is None:
            p.add(dotted(*b.where, "team"), f"no team {show(b.ref)} in the file or the database")
            continue
        if b.scope == "key":  # not budgets.resolve_scope: keys declared in the file count, names before ids
            if b.ref in key_ids:
                scope_id = key_ids[b.ref]
                if scope_id is None:  # the key itself has a problem, or is revoked and absent
                    continue
            elif b.ref in keys_by_name:
                scope_id = keys_by_name[b.ref]["id"]
            elif b.ref in keys_by_id:
                scope_id = b.ref
            else:
                p.add(dotted(*b.where, "key"), f"no key named {show(b.ref)} in the file, and no key with that "
                                              "name or id in the database")
                continue
        assert scope_id is not None
        ident = (b.scope, scope_id, b.period)
        if ident in seen:
            p.add(dotted(*b.where, "period"), f"the {b.period} budget of {b.scope} {b.ref} is also declared at "
                                             f"{seen[ident]}")
            continue
        seen[ident] = dotted(*b.where)
        _plan_budget(out, b, scope_id, budgets.get(ident))

    out.problems = p.problems
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


def _plan_budget(out: Plan, b: BudgetDecl, scope_id: str, row: dict[str, Any] | None) -> None:
    def run(db: sqlite3.Connection) -> None:  # every field as declared, in apply's transaction
        upsert_budget(db, b.scope, scope_id, b.period, b.limit_nanos, hard=b.hard, warn_pct=b.warn_pct,
                      grace_nanos=b.grace_nanos, raise_step_nanos=b.raise_step_nanos, ceiling_nanos=b.ceiling_nanos,
                      fail_open=b.fail_open)

    if row is None:
        extras = [x for x in ("soft" if not b.hard else "", f"warn at {b.warn_pct}%" if b.warn_pct != 80 else "",
                              f"grace {usd(b.grace_nanos)}" if b.grace_nanos else "",
                              f"auto-raise {usd(b.raise_step_nanos)} up to {usd(b.ceiling_nanos)}"
                              if b.raise_step_nanos else "") if x]
        detail = f" {usd(b.limit_nanos)}" + (f" ({', '.join(extras)})" if extras else "")
        new = {"limit": b.limit_nanos, "hard": b.hard, "warn_at": b.warn_pct, "grace": b.grace_nanos}
        if b.raise_step_nanos:
            new.update(auto_raise=b.raise_step_nanos, ceiling=b.ceiling_nanos)
        if b.fail_open:
            new.update(fail_open=True)
        out.changes.append(Change("create", "budget", b.ref, new=new, scope=b.scope, period=b.period,
                                  detail=detail, run=run))
        return
    pairs = (("limit", int(row["limit_nanos"]), b.limit_nanos), ("hard", bool(row["hard"]), b.hard),
             ("warn_at", int(row["warn_pct"]), b.warn_pct), ("grace", int(row["grace_nanos"]), b.grace_nanos),
             ("auto_raise", int(row.get("raise_step_nanos") or 0), b.raise_step_nanos),
             ("ceiling", int(row.get("ceiling_nanos") or 0), b.ceiling_nanos),
             ("fail_open", bool(row.get("fail_open") or 0), b.fail_open))
    changed = [(name, old, new_value) for name, old, new_value in pairs if old != new_value]
    for i, (name, old, new_value) in enumerate(changed):  # one line each; the first one writes them all
        out.changes.append(Change("update", "budget", b.ref, name, old, new_value, scope=b.scope,
                                  period=b.period, run=run if i == 0 else None))


def apply(conn: sqlite3.Connection, decl: Declarations, *, dry_run: bool = False,
          problems_before: list[str] | tuple[str, ...] = (), now_ms: int | None = None) -> Plan:
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
        result = plan(conn, decl, now_ms=now_ms)
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
    whole, frac = divmod(nanos, NANOS_PER_USD)
    return whole if frac == 0 else Decimal(usd(nanos, dollar=False))


def _export_budget(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"period": row["period"], "limit": _money(int(row["limit_nanos"]))}
    if not row["hard"]:
        out["hard"] = False
    if int(row["warn_pct"]) != 80:
        out["warn_at"] = int(row["warn_pct"])
    if int(row["grace_nanos"]):
        out["grace"] = _money(int(row["grace_nanos"]))
    if int(row["raise_step_nanos"] or 0):
        out["auto_raise"] = _money(int(row["raise_step_nanos"]))
        out["ceiling"] = _money(int(row["ceiling_nanos"]))
    if int(row["fail_open"] or 0):
        out["fail_open"] = True
    return out


def _expiry_text(iso: str) -> str:
    try:
        ms = parse_time(iso)
    except UsageError:
        return iso
    return iso_utc(ms)[:10] if ms % DAY_MS == 0 else iso_utc(ms)


def export_doc(conn: sqlite3.Connection) -> tuple[dict[str, Any], list[str]]:
    """The definitions in ``conn`` as a TOML-ready dict, and notes on what was left out."""
    notes: list[str] = []
    order = {p: i for i, p in enumerate(PERIODS)}
    by_scope: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in read_budgets(conn):
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
