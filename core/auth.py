"""API keys and owners.

An API key looks like `dq_<prefix>_<secret>`: `prefix` is 8 public hex digits that find the key's row,
`secret` 32 random bytes (urlsafe base64, 256 bits). Only the SHA-256 of the whole key is stored; a
key of that entropy needs no slow password hash (there is nothing to brute-force), and the comparison
is constant-time (`hmac.compare_digest`). A key belongs to one owner, has scopes, and may override the
owner quotas of the settings (core/quotas.py).

Scopes: `read` (list, read, download), `submit` (submit, cancel, upload, schedule) and `admin` (every
owner's jobs, publishing models, any storage key; it implies the other two).
"""

import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum, nonmember
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.tables import DEFAULT_OWNER, ApiKey, Owner, utcnow

KEY_PATTERN = re.compile(r"^dq_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
OWNER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")


class Scope(StrEnum):
    READ = "read"
    SUBMIT = "submit"
    ADMIN = "admin"

    DEFAULT = nonmember(("read", "submit"))


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: an owner, the scopes of the key it sent, and that key's quota overrides."""

    owner: str
    scopes: frozenset[str]
    key_id: uuid.UUID | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    # When the key was last recorded as used (coarse: see api/auth.py).
    last_used_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def has(self, scope: Scope) -> bool:
        return self.is_admin or scope in self.scopes

    def may_see(self, owner: str) -> bool:
        """Whether this principal may read or act on something `owner` owns."""
        return self.is_admin or owner == self.owner


# What a request acts as when auth is off (DIFFQ_AUTH=false): the default owner, with every scope.
ANONYMOUS_ADMIN = Principal(owner=DEFAULT_OWNER, scopes=frozenset(Scope))


class KeyProblem(ValueError):
    """Why a key can't be created, in words for the person who asked."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def ensure_owner(session: Session, name: str) -> Owner:
    """The owner called `name`, created (with a webhook secret) if it does not exist yet."""
    if not OWNER_NAME.match(name):
        raise KeyProblem(
            f"owner name {name!r} is not allowed; use 1-100 letters, digits and . _ @ -, starting with a "
            "letter or digit"
        )
    owner = session.get(Owner, name)
    if owner is None:
        owner = Owner(name=name, webhook_secret=new_webhook_secret())
        session.add(owner)
        session.flush()
    return owner


def create_key(
    session: Session,
    owner: str,
    scopes: list[str] | None = None,
    limits: dict[str, Any] | None = None,
    name: str | None = None,
) -> tuple[ApiKey, str]:
    """A new key for `owner` (created if new); returns the row and the key itself, which is not kept."""
    chosen = list(dict.fromkeys(scopes or Scope.DEFAULT))
    unknown = [scope for scope in chosen if scope not in set(Scope)]
    if unknown:
        raise KeyProblem(f"unknown scope(s) {', '.join(unknown)}; the scopes are {', '.join(Scope)}")
    ensure_owner(session, owner)
    prefix = secrets.token_hex(4)
    while session.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is not None:
        prefix = secrets.token_hex(4)
    key = f"dq_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        prefix=prefix, key_hash=hash_key(key), owner=owner, scopes=chosen, limits=limits or {}, name=name
    )
    session.add(row)
    session.flush()
    return row, key


def authenticate(session: Session, key: str) -> Principal | None:
    """The principal a key acts for; None if it is malformed, unknown or revoked."""
    match = KEY_PATTERN.match(key)
    if match is None:
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == match.group(1)))
    # Compared even when no row matched, so the time taken says nothing about which prefixes exist.
    stored = row.key_hash if row is not None else "0" * 64
    if not hmac.compare_digest(stored, hash_key(key)) or row is None or row.revoked_at is not None:
        return None
    return Principal(
        owner=row.owner,
        scopes=frozenset(row.scopes),
        key_id=row.id,
        limits=dict(row.limits),
        last_used_at=row.last_used_at,
    )


def revoke_key(session: Session, key_id: uuid.UUID | str) -> bool:
    """Revoke a key by id or prefix; False if there is no such key that is still valid."""
    condition = ApiKey.prefix == key_id
    with contextlib.suppress(ValueError):
        condition = condition | (ApiKey.id == uuid.UUID(str(key_id)))
    result = session.execute(
        update(ApiKey).where(condition, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return result.rowcount > 0


def list_keys(session: Session, owner: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if owner is not None:
        query = query.where(ApiKey.owner == owner)
    return list(session.scalars(query))


def webhook_secret(session: Session, owner: str, rotate: bool = False) -> str:
    """The owner's webhook signing secret; a new one when `rotate` (deliveries already queued keep being
    signed with whatever secret the owner has when they are sent)."""
    row = ensure_owner(session, owner)
    if rotate:
        row.webhook_secret = new_webhook_secret()
        session.flush()
    return row.webhook_secret
