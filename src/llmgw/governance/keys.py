"""Virtual keys: minting, hashing at rest, lifecycle (disable, enable, revoke, rotate) and the
daemon's in-memory lookup table.

A secret is ``sk-llmgw-`` + 43 URL-safe random characters (256 bits). Only its SHA-256 is stored
(like Bifrost and LiteLLM: a fast hash is right for high-entropy random secrets) together with a
display form ``sk-llmgw-…abcd``. The clear secret is returned once by ``mint`` / ``rotate`` and never
logged or stored.

Invariants:
- A key belongs to a customer, optionally through a team; with a team, the key's customer is the
  team's customer. Both must exist when the key is made.
- Status is ``active``, ``disabled`` or ``revoked``. Revocation is final: a revoked key is never
  enabled or rotated again.
- Rotation keeps exactly one previous secret (``prev_key_hash``), accepted until
  ``prev_valid_until``; after that it is answered with 401 ``key_rotated``. Rotating again drops the
  older previous secret at once.
- Times are ISO-8601 UTC strings (``2027-01-01T00:00:00Z``, ``units.iso_utc``); the table compares
  epoch seconds.
- Every function runs in the caller's transaction and never commits; a refused option is a
  ``UsageError`` naming its field (``param="period"``), raised before anything is written.
- ``KeyTable`` is swapped whole on reload (readers never see a half-built table) and compares hashes in
  constant time.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import re
import secrets
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from .. import clock, units
from ..clock import Clock, wall_ms
from ..config import CACHE_MODES
from ..errors import Conflict, NotFound, Unauthorized, UsageError
from ..store import db as store_db
from ..store.conn import Target
from ..units import PERIODS, iso_utc
from .budgets import upsert_budget
from .hierarchy import get_customer, get_team

PREFIX = "sk-llmgw-"
STATUSES = ("active", "disabled", "revoked")
DEFAULT_GRACE_SECONDS = 24 * 3600

# one path segment of a model name or glob: "gpt-4o-mini", "claude-haiku-4-5-20251001", "llama-3.1:free", "*"
_MODEL_SEGMENT = re.compile(r"[A-Za-z0-9_.:@+~*?\[\]!-]+")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def display(secret: str) -> str:
    return f"{PREFIX}…{secret[-4:]}"


def _epoch(iso: str | None) -> float | None:
    """ISO-8601 → epoch seconds; an unreadable time counts as long past (fail closed)."""
    if not iso:
        return None
    try:
        return units.parse_time(iso) / 1000
    except UsageError:
        return 0.0


def _col(row: sqlite3.Row | dict[str, Any], name: str) -> Any:
    """A column that older rows (or hand-made dicts) may lack: ``None`` then."""
    try:
        return row[name]
    except (IndexError, KeyError):
        return None


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    name: str | None
    key_hash: str
    status: str
    customer_id: str | None
    team_id: str | None
    models: tuple[str, ...]
    expires_at: str | None
    rpm: int | None = None
    tpm: int | None = None
    clamp: bool = False
    cache_mode: str | None = None
    cache_threshold: float | None = None  # the semantic threshold of this key's requests (None: the config's)

    @classmethod
    def from_row(cls, row: sqlite3.Row | dict[str, Any]) -> KeyInfo:
        models = orjson.loads(row["models"]) if row["models"] else []
        return cls(row["id"], row["name"], row["key_hash"], row["status"], row["customer_id"], row["team_id"],
                   tuple(models), row["expires_at"], _col(row, "rpm"), _col(row, "tpm"), bool(_col(row, "clamp")),
                   _col(row, "cache_mode"), _col(row, "cache_threshold"))

    def allows(self, model: str) -> bool:
        """Whether this key may use ``model`` (no allow-list: every model)."""
        return not self.models or any(fnmatch.fnmatchcase(model, m) for m in self.models)


# ---- validation of key options --------------------------------------------------------------------


def parse_expires(value: str | None, *, now_ms: int | None = None) -> str | None:
    """``YYYY-MM-DD`` (midnight UTC that day) or an ISO datetime (naive = UTC) → ISO UTC; must be future."""
    if value is None:
        return None
    ms = units.parse_time(value, "expires")
    if ms <= (clock.now_ms() if now_ms is None else now_ms):
        raise UsageError(f"expires: {iso_utc(ms)} is in the past", param="expires")
    return iso_utc(ms)


def validate_models(models: list[str] | tuple[str, ...] | None) -> list[str] | None:
    """An allow-list of model names and globs (``openai/gpt-4o-mini``, ``openai/*``, ``fast``).

    ``None`` means every model; an empty list is refused (it would allow nothing). Duplicates are dropped.
    """
    if models is None:
        return None
    out: list[str] = []
    for raw in models:
        m = raw.strip() if isinstance(raw, str) else raw
        if not m:
            raise _bad("models", "empty model name (give names separated by commas, e.g. "
                                 "openai/gpt-4o-mini,anthropic/*)")
        if not isinstance(m, str) or not all(_MODEL_SEGMENT.fullmatch(seg) for seg in m.split("/")):
            raise _bad("models", f"invalid model {raw!r}: expected provider/model, a glob such as openai/*, "
                                 "or an alias name")
        if m not in out:
            out.append(m)
    if not out:
        raise _bad("models", "empty: leave it out to allow every model")
    return out


def _bad(param: str, problem: str) -> UsageError:
    return UsageError(f"{param}: {problem}", param=param)


def _positive_int(name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise _bad(name, f"must be a positive integer, got {value!r}")
    return value


def _choice(name: str, value: str | None, options: tuple[str, ...]) -> str | None:
    if value is not None and value not in options:
        raise _bad(name, f"expected one of {', '.join(options)}, got {value!r}")
    return value


def _resolve_owner(conn: sqlite3.Connection, customer_id: str | None,
                   team_id: str | None) -> tuple[str | None, str | None]:
    if team_id is not None:
        team = get_team(conn, team_id, param="team")
        if customer_id is not None and customer_id != team["customer_id"]:
            raise _bad("team", f"team {team_id!r} belongs to customer {team['customer_id']!r}, not {customer_id!r}")
        return team["customer_id"], team_id
    if customer_id is not None:
        get_customer(conn, customer_id, param="customer")
    return customer_id, None


# ---- minting and lookup ---------------------------------------------------------------------------


def mint(conn: sqlite3.Connection, *, name: str | None = None, customer_id: str | None = None,
         team_id: str | None = None, models: list[str] | None = None, expires_at: str | None = None,
         replace: bool = False, rpm: int | None = None, tpm: int | None = None, clamp: bool = False,
         cache_mode: str | None = None, budget_nanos: int | None = None,
         budget_period: str | None = None, cache_threshold: float | None = None) -> tuple[str, KeyInfo]:
    """Create a key (or, with ``replace``, give the key of that name a new secret); returns the secret.

    Everything is checked before anything is written; the key and its optional hard budget
    (``budget_nanos`` per ``budget_period``, default month) are written in the caller's transaction.
    ``replace`` keeps the existing key's options and only issues a new secret (the demo key).
    """
    if name is not None and not name.strip():
        raise _bad("name", "must not be empty")
    models = validate_models(models)
    expires = parse_expires(expires_at)
    rpm = _positive_int("rpm", rpm)
    tpm = _positive_int("tpm", tpm)
    cache_mode = _choice("cache", cache_mode, CACHE_MODES)
    if cache_threshold is not None and (isinstance(cache_threshold, bool) or not isinstance(cache_threshold, int | float)
                                        or not 0 < cache_threshold <= 1):
        raise _bad("cache-threshold", f"expected a cosine similarity in (0, 1], got {cache_threshold!r}")
    if budget_period is not None and budget_nanos is None:
        raise _bad("period", "applies to a budget: give a budget too")
    if budget_nanos is not None:
        budget_period = _choice("period", budget_period or "month", PERIODS)
        if isinstance(budget_nanos, bool) or not isinstance(budget_nanos, int) or budget_nanos < 0:
            raise _bad("budget", f"expected a non-negative amount, got {budget_nanos!r}")
    secret = new_secret()
    h = hash_secret(secret)
    existing = conn.execute("SELECT id FROM keys WHERE name = ?", (name,)).fetchone() if name else None
    if existing is not None and not replace:
        raise Conflict(f"name: a key named {name!r} already exists", param="name", code="already_exists")
    if existing is not None:
        kid = existing["id"]
        conn.execute("UPDATE keys SET key_hash = ?, display = ?, status = 'active', revoked_at = NULL,"
                     " prev_key_hash = NULL, prev_valid_until = NULL WHERE id = ?", (h, display(secret), kid))
    else:
        customer_id, team_id = _resolve_owner(conn, customer_id, team_id)
        kid = "key_" + uuid.uuid4().hex[:16]
        conn.execute(
            "INSERT INTO keys (id, name, key_hash, display, customer_id, team_id, status, models, created_at,"
            " expires_at, rpm, tpm, clamp, cache_mode, cache_threshold)"
            " VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ?, ?)",
            (kid, name, h, display(secret), customer_id, team_id,
             orjson.dumps(models).decode() if models else None, iso_utc(clock.now_ms()), expires, rpm, tpm, int(clamp),
             cache_mode, None if cache_threshold is None else float(cache_threshold)))
        if budget_nanos is not None and budget_period is not None:
            upsert_budget(conn, "key", kid, budget_period, budget_nanos)
    row = conn.execute("SELECT * FROM keys WHERE id = ?", (kid,)).fetchone()
    return secret, KeyInfo.from_row(row)


_PUBLIC = ("id, name, display, status, customer_id, team_id, models, created_at, expires_at, rpm, tpm, clamp,"
           " cache_mode, cache_threshold, revoked_at, prev_valid_until")


def _public(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["models"] = orjson.loads(d["models"]) if d["models"] else []
    d["clamp"] = bool(d["clamp"])
    return d


def list_keys(conn: sqlite3.Connection, *, customer_id: str | None = None,
              team_id: str | None = None) -> list[dict[str, Any]]:
    """Keys in creation order (public fields only), optionally those of one customer or team."""
    where, args = [], []
    if customer_id is not None:
        where.append("customer_id = ?")
        args.append(customer_id)
    if team_id is not None:
        where.append("team_id = ?")
        args.append(team_id)
    sql = f"SELECT {_PUBLIC} FROM keys" + (" WHERE " + " AND ".join(where) if where else "")
    return [_public(r) for r in conn.execute(sql + " ORDER BY created_at, rowid", args)]


def _row(conn: sqlite3.Connection, ref: str) -> sqlite3.Row:
    row = conn.execute(f"SELECT {_PUBLIC} FROM keys WHERE id = ?", (ref,)).fetchone()
    if row is None:
        row = conn.execute(f"SELECT {_PUBLIC} FROM keys WHERE name = ?", (ref,)).fetchone()
    if row is None:
        raise NotFound(f"no key with id or name {ref!r}")
    return row


def get_key(conn: sqlite3.Connection, ref: str) -> dict[str, Any]:
    """One key by id (``key_…``) or name, public fields only (never a hash)."""
    return _public(_row(conn, ref))


# ---- lifecycle ------------------------------------------------------------------------------------


def set_status(conn: sqlite3.Connection, ref: str, status: str) -> dict[str, Any]:
    """Disable or (re-)enable a key. A revoked key stays revoked (``Conflict``)."""
    if status not in ("active", "disabled"):
        raise _bad("status", f"expected active or disabled (use revoke to revoke), got {status!r}")
    row = _row(conn, ref)
    if row["status"] == "revoked":
        raise Conflict(f"key {row['id']} was revoked at {row['revoked_at']}; revocation is final", code="key_revoked")
    conn.execute("UPDATE keys SET status = ? WHERE id = ?", (status, row["id"]))
    return get_key(conn, row["id"])


def revoke(conn: sqlite3.Connection, ref: str) -> dict[str, Any]:
    """Revoke a key for good (idempotent: revoking again keeps the first ``revoked_at``)."""
    row = _row(conn, ref)
    if row["status"] != "revoked":
        conn.execute("UPDATE keys SET status = 'revoked', revoked_at = ? WHERE id = ?", (iso_utc(clock.now_ms()), row["id"]))
    return get_key(conn, row["id"])


def rotate(conn: sqlite3.Connection, ref: str, grace_seconds: int = DEFAULT_GRACE_SECONDS, *,
           now_ms: int | None = None) -> tuple[str, dict[str, Any]]:
    """Give a key a new secret; the current one stays valid for ``grace_seconds`` (0: invalid at once).

    Returns the new secret (shown once) and the key's public fields.
    """
    if isinstance(grace_seconds, bool) or not isinstance(grace_seconds, int) or grace_seconds < 0:
        raise _bad("grace", f"expected a number of seconds >= 0, got {grace_seconds!r}")
    secret = new_secret()
    # stored to the second: round up, so the old secret stays valid for at least grace_seconds
    end = (clock.now_ms() if now_ms is None else now_ms) + grace_seconds * 1000
    until = iso_utc(end + (-end % 1000 if grace_seconds else 0))
    row = _row(conn, ref)
    if row["status"] == "revoked":
        raise Conflict(f"key {row['id']} was revoked at {row['revoked_at']}; a revoked key cannot be rotated",
                       code="key_revoked")
    conn.execute("UPDATE keys SET prev_key_hash = key_hash, prev_valid_until = ?, key_hash = ?, display = ?"
                 " WHERE id = ?", (until, hash_secret(secret), display(secret), row["id"]))
    return secret, get_key(conn, row["id"])


# ---- the daemon's table ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    info: KeyInfo
    key_hash: str  # the hash this entry was indexed under (current or previous)
    expires: float | None  # the key's expiry, epoch seconds
    prev_until: float | None  # set for a previous (rotated) secret: accepted until then


class UnknownKey(Unauthorized):
    """No key in the daemon's table has this hash (it may have been made a moment ago)."""


NEGATIVE_CACHE_SIZE = 10_000


class KeyTable:
    """Hash → key, swapped whole on reload (readers never see a half-built table).

    Current and previous (rotated) secrets are both indexed; a previous secret past its grace
    period is kept in the table so that it is answered with ``key_rotated`` rather than as unknown.

    A hash the table does not know is looked up in the database (``lookup``) before it is refused,
    so a key made a moment ago by the CLI or the admin API works on its very next request. Those
    lookups run one at a time in a worker thread on a connection of their own, and up to
    ``negative_size`` hashes found nowhere are remembered until the next reload, so a flood
    of bad keys costs at most one indexed point query per distinct key and never more than one
    query at a time.
    """

    def __init__(self, db_path: Target | None = None, clock: Clock = wall_ms,
                 negative_size: int = NEGATIVE_CACHE_SIZE) -> None:
        self._by_hash: dict[str, _Entry] = {}
        self.db_lookups = 0  # queries made for hashes the table did not know
        self._negative_size = negative_size
        self._count = 0
        self._db_path = db_path
        self.clock = clock
        self._conn: sqlite3.Connection | None = None
        self._unknown: dict[str, None] = {}  # insertion-ordered: the oldest is dropped first
        self._lookup_lock = asyncio.Lock()

    def load(self, conn: sqlite3.Connection) -> None:
        table: dict[str, _Entry] = {}
        rows = conn.execute("SELECT * FROM keys").fetchall()
        for r in rows:
            for e in _entries(r):
                if e.prev_until is None or e.key_hash not in table:  # a current secret wins
                    table[e.key_hash] = e
        self._by_hash = table
        self._count = len(rows)
        self._unknown = {}

    def __len__(self) -> int:
        return self._count

    def authenticate(self, secret: str | None) -> KeyInfo:
        """The key for ``secret`` from the table, or ``Unauthorized`` with a distinct code
        (``UnknownKey`` when the table has no such hash: see ``lookup``)."""
        if not secret:
            raise Unauthorized("no API key: send Authorization: Bearer <key> or x-api-key", code="missing_api_key")
        h = hash_secret(secret)
        entry = self._by_hash.get(h)
        if entry is None or not hmac.compare_digest(entry.key_hash, h):
            raise UnknownKey("invalid API key", code="invalid_api_key")
        return self._check(entry)

    async def resolve(self, secret: str | None) -> KeyInfo:
        """``authenticate``, and for a secret the table does not know, ``lookup``."""
        try:
            return self.authenticate(secret)
        except UnknownKey:
            return await self.lookup(secret or "")

    async def lookup(self, secret: str) -> KeyInfo:
        """``authenticate`` for a secret the table did not know: read it from the database (off the
        loop), add it to the table, or refuse it as unknown (and remember that)."""
        h = hash_secret(secret)
        if self._db_path is None or h in self._unknown:
            raise UnknownKey("invalid API key", code="invalid_api_key")
        async with self._lookup_lock:
            if h not in self._by_hash and h not in self._unknown:
                self.db_lookups += 1
                rows = await asyncio.to_thread(self._query, h)
                for r in rows:
                    for e in _entries(r):
                        if e.key_hash == h:  # a reload meanwhile has the newer word: keep its entry
                            self._by_hash.setdefault(h, e)
                if h not in self._by_hash:
                    if len(self._unknown) >= self._negative_size:
                        del self._unknown[next(iter(self._unknown))]
                    self._unknown[h] = None
        return self.authenticate(secret)

    def _query(self, h: str) -> list[sqlite3.Row]:
        if self._conn is None:
            assert self._db_path is not None
            self._conn = store_db.connect(self._db_path, readonly=True)
        return self._conn.execute("SELECT * FROM keys WHERE key_hash = ? OR prev_key_hash = ?", (h, h)).fetchall()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _check(self, entry: _Entry) -> KeyInfo:
        info = entry.info
        if info.status != "active":
            raise Unauthorized(f"API key is {info.status}", code=f"key_{info.status}")
        if entry.expires is not None or entry.prev_until is not None:
            t = self.clock() / 1000
            if entry.prev_until is not None and t >= entry.prev_until:
                raise Unauthorized("API key was rotated: use the new secret", code="key_rotated")
            if entry.expires is not None and t >= entry.expires:
                raise Unauthorized(f"API key expired at {info.expires_at}", code="key_expired")
        return info


def _entries(row: sqlite3.Row) -> list[_Entry]:
    """The table entries of one key row: its current secret, and its previous one after a rotation."""
    info = KeyInfo.from_row(row)
    expires = _epoch(row["expires_at"])
    out = [_Entry(info, row["key_hash"], expires, None)]
    prev = _col(row, "prev_key_hash")
    if prev:
        until = _epoch(_col(row, "prev_valid_until"))
        out.append(_Entry(info, prev, expires, until if until is not None else 0.0))
    return out
