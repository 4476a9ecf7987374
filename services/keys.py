"""API keys: create, list, revoke, authenticate. Only the SHA-256 of a secret is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db.models import ApiKey, Role
from shared.db.types import utcnow

SECRET_PREFIX = "fada_"
PREFIX_CHARS = 12  # shown in listings, enough to tell keys apart, useless to an attacker


class UnknownKey(LookupError):
    """No key with that id or prefix."""


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    secret: str  # shown once, never stored


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, *, name: str, role: Role | str) -> NewKey:
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, role=Role(role), key_prefix=secret[:PREFIX_CHARS], key_hash=hash_secret(secret))
    session.add(key)
    session.flush()
    return NewKey(key=key, secret=secret)


def list_keys(session: Session, *, include_revoked: bool = True) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))


def revoke_key(session: Session, id_or_prefix: str) -> ApiKey:
    matches = list(session.scalars(select(ApiKey).where(
        (ApiKey.id == id_or_prefix) | (ApiKey.key_prefix == id_or_prefix))))
    if len(matches) != 1:
        raise UnknownKey(f"no single key with id or prefix {id_or_prefix!r} ({len(matches)} found)")
    key = matches[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


LAST_USED_RESOLUTION = timedelta(minutes=1)


def authenticate(session: Session, secret: str) -> ApiKey | None:
    """The live key for a presented secret, or None (unknown or revoked). ``last_used_at`` is
    written at most once a minute, so a busy key does not cost a write per request."""
    key = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_secret(secret))).one_or_none()
    if key is None or key.revoked_at is not None:
        return None
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
    return key


def ensure_key(session: Session, *, secret: str, name: str, role: Role | str) -> bool:
    """Make sure a live key with this secret exists (deployment bootstrap); True if created."""
    if session.scalars(select(ApiKey.id).where(ApiKey.key_hash == hash_secret(secret))).first() is not None:
        return False
    session.add(ApiKey(name=name, role=Role(role), key_prefix=secret[:PREFIX_CHARS], key_hash=hash_secret(secret)))
    session.flush()
    return True


def allows(role: Role | str, *required: Role | str) -> bool:
    """Admin may do everything; any other role only what it is named for."""
    return Role(role) == Role.admin or Role(role) in {Role(r) for r in required}
