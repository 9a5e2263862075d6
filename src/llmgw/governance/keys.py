"""Virtual keys: minting, hashing at rest, and the daemon's in-memory lookup table.

A secret is ``sk-llmgw-`` + 43 URL-safe random characters (256 bits). Only its SHA-256 is stored
(like Bifrost and LiteLLM: a fast hash is right for high-entropy random secrets) together with a
display form ``sk-llmgw-…abcd``. The clear secret is returned once by ``mint`` and never logged.
The daemon keeps ``KeyTable`` in memory and reloads it when the database changes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ..errors import Unauthorized, UsageError

PREFIX = "sk-llmgw-"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def display(secret: str) -> str:
    return f"{PREFIX}…{secret[-4:]}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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

    @classmethod
    def from_row(cls, row: sqlite3.Row | dict[str, Any]) -> KeyInfo:
        models = orjson.loads(row["models"]) if row["models"] else []
        return cls(row["id"], row["name"], row["key_hash"], row["status"], row["customer_id"], row["team_id"],
                   tuple(models), row["expires_at"])


def mint(conn: sqlite3.Connection, *, name: str | None = None, customer_id: str | None = None,
         team_id: str | None = None, models: list[str] | None = None, expires_at: str | None = None,
         replace: bool = False) -> tuple[str, KeyInfo]:
    """Create a key (or, with ``replace``, give the key of that name a new secret); returns the secret."""
    secret = new_secret()
    h = hash_secret(secret)
    with conn:
        existing = conn.execute("SELECT id FROM keys WHERE name = ?", (name,)).fetchone() if name else None
        if existing is not None and not replace:
            raise UsageError(f"a key named {name!r} already exists")
        if existing is not None:
            kid = existing["id"]
            conn.execute("UPDATE keys SET key_hash = ?, display = ?, status = 'active' WHERE id = ?",
                         (h, display(secret), kid))
        else:
            kid = "key_" + uuid.uuid4().hex[:16]
            conn.execute(
                "INSERT INTO keys (id, name, key_hash, display, customer_id, team_id, status, models, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?)",
                (kid, name, h, display(secret), customer_id, team_id,
                 orjson.dumps(models).decode() if models else None, now_iso(), expires_at))
        row = conn.execute("SELECT * FROM keys WHERE id = ?", (kid,)).fetchone()
    return secret, KeyInfo.from_row(row)


def list_keys(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT id, name, display, status, customer_id, team_id, models, created_at, expires_at"
                        " FROM keys ORDER BY created_at, rowid").fetchall()
    out = []
    for r in rows:
        d = dict(r)
        d["models"] = orjson.loads(d["models"]) if d["models"] else []
        out.append(d)
    return out


class KeyTable:
    """Hash → KeyInfo, swapped whole on reload (readers never see a half-built table)."""

    def __init__(self) -> None:
        self._by_hash: dict[str, KeyInfo] = {}

    def load(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute("SELECT * FROM keys").fetchall()
        self._by_hash = {r["key_hash"]: KeyInfo.from_row(r) for r in rows}

    def __len__(self) -> int:
        return len(self._by_hash)

    def authenticate(self, secret: str | None) -> KeyInfo:
        if not secret:
            raise Unauthorized("no API key: send Authorization: Bearer <key> or x-api-key", code="missing_api_key")
        h = hash_secret(secret)
        info = self._by_hash.get(h)
        if info is None or not hmac.compare_digest(info.key_hash, h):
            raise Unauthorized("invalid API key", code="invalid_api_key")
        if info.status != "active":
            raise Unauthorized(f"API key is {info.status}", code=f"key_{info.status}")
        if info.expires_at and info.expires_at <= now_iso():
            raise Unauthorized(f"API key expired at {info.expires_at}", code="key_expired")
        return info
