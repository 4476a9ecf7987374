"""API keys: create, list, rotate, revoke, authenticate. Only the SHA-256 of a secret is stored."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from services.networks import address_allowed, parse_networks
from services.notify.sealing import SecretBox
from services.notify.signing import new_secret
from services.notify.targets import check_webhook_url
from shared.db.clock import db_clock, db_now
from shared.db.models import ApiKey, Role
from shared.text import code_points, unprintable

SECRET_PREFIX = "fada_"
PREFIX_CHARS = 12  # shown in listings, enough to tell keys apart, useless to an attacker
NAME_MAX = 128  # the column's length


class UnknownKey(LookupError):
    """No key with that id or prefix."""


class AddressNotAllowed(PermissionError):
    """A live key presented from outside its networks (``allowed_networks``)."""

    def __init__(self, key: ApiKey, address: str | None) -> None:
        super().__init__(f"this API key may not be used from {address or 'an unknown address'}: it is limited to "
                         "its networks (ask the service's administrators)")
        self.key_id = key.id


class KeyRevoked(ValueError):
    """A revoked key cannot be rotated: it stays refused (create a new key instead)."""


class InvalidKeyName(ValueError):
    """A key's name is empty, blank, too long or holds control characters."""


def check_name(name: str) -> str:
    """The name, if it can name a key: not empty or only whitespace, at most 128 characters, and
    no control characters (a tab or a newline would also break ``fada keys list``'s rows)."""
    if not name.strip():
        raise InvalidKeyName("a key's name must not be empty or only whitespace")
    if len(name) > NAME_MAX:
        raise InvalidKeyName(f"a key's name is at most {NAME_MAX} characters, not {len(name)}")
    bad = unprintable(name)
    if bad:
        raise InvalidKeyName(f"a key's name must not contain control characters ({code_points(bad)})")
    return name


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    secret: str  # shown once, never stored


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(session: Session, *, name: str, role: Role | str, max_pending: int | None = None,
               expires_at: datetime | None = None, networks: Sequence[str] | None = None) -> NewKey:
    """A new key; :class:`InvalidKeyName` (nothing added) for a name :func:`check_name` refuses,
    :class:`InvalidNetwork` for a network that is not one. ``networks``: see :func:`set_networks`."""
    check_name(name)
    allowed = parse_networks(networks) if networks is not None else None
    secret, prefix, hashed = _mint()
    key = ApiKey(name=name, role=Role(role), key_prefix=prefix, key_hash=hashed,
                 max_pending=_checked_limit(max_pending), expires_at=expires_at, allowed_networks=allowed)
    session.add(key)
    session.flush()
    return NewKey(key=key, secret=secret)


def _mint() -> tuple[str, str, str]:
    """A new secret, its prefix (for listings) and the hash stored in its place."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    return secret, secret[:PREFIX_CHARS], hash_secret(secret)


def list_keys(session: Session, *, include_revoked: bool = True) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))


def set_max_pending(session: Session, id_or_prefix: str, max_pending: int | None) -> ApiKey:
    """The key's own limit of jobs queued or running; None: the service-wide one
    (FADA_MAX_PENDING_PER_KEY). Jobs already queued stay; new ones wait below the limit."""
    key = find_key(session, id_or_prefix)
    key.max_pending = _checked_limit(max_pending)
    session.flush()
    return key


def _checked_limit(max_pending: int | None) -> int | None:
    if max_pending is not None and max_pending < 1:
        raise ValueError(f"a key's pending-job limit is at least 1, not {max_pending}")
    return max_pending


def find_key(session: Session, id_or_prefix: str) -> ApiKey:
    """The key with this id or prefix; a rotated key's previous prefix names it too."""
    matches = list(session.scalars(select(ApiKey).where(
        (ApiKey.id == id_or_prefix) | (ApiKey.key_prefix == id_or_prefix)
        | (ApiKey.previous_key_prefix == id_or_prefix))))
    if len(matches) != 1:
        raise UnknownKey(f"no single key with id or prefix {id_or_prefix!r} ({len(matches)} found)")
    return matches[0]


def revoke_key(session: Session, id_or_prefix: str) -> ApiKey:
    key = find_key(session, id_or_prefix)
    if key.revoked_at is None:
        key.revoked_at = db_now(session)
    return key


def rotate_key(session: Session, id_or_prefix: str, *, overlap: timedelta,
               lifetime: timedelta | None = None) -> NewKey:
    """A new secret for the key, which keeps its id and so its jobs, idempotency keys, limit,
    webhook and audit trail: a PACS bridge's renewal, not a new caller. The current secret
    becomes the previous one and keeps working for ``overlap`` (never past the key's old expiry:
    an expired secret is not revived; one rotated earlier stops now). The key then expires
    ``lifetime`` from now; None: after as long as it lived before (since its creation or last
    rotation), or never if it had no expiry. :class:`KeyRevoked` for a revoked key."""
    if overlap < timedelta(0):
        raise ValueError(f"the overlap must not be negative, not {overlap}")
    if lifetime is not None and lifetime <= timedelta(0):
        raise ValueError(f"a key's lifetime must be positive, not {lifetime}")
    key = find_key(session, id_or_prefix)
    if key.revoked_at is not None:
        raise KeyRevoked(f"key {key.key_prefix} was revoked at {key.revoked_at.isoformat()}: create a new key")
    now = db_now(session)  # the clock the gateways judge expiry by
    if lifetime is None and key.expires_at is not None:
        lifetime = key.expires_at - (key.rotated_at or key.created_at)
    previous_until = now + overlap if key.expires_at is None else min(now + overlap, key.expires_at)
    # Kept even with no overlap (previous_valid_until <= now refuses it): the key is still
    # found by its previous prefix, and the bootstrap's secret is still known as used.
    key.previous_key_prefix, key.previous_key_hash = key.key_prefix, key.key_hash
    key.previous_valid_until = max(previous_until, now)
    key.previous_last_used_at = None
    secret, key.key_prefix, key.key_hash = _mint()
    key.expires_at = now + lifetime if lifetime is not None else None
    key.rotated_at = now
    session.flush()
    return NewKey(key=key, secret=secret)


def set_networks(session: Session, id_or_prefix: str, networks: Sequence[str] | None) -> ApiKey:
    """Limit the key to these networks (CIDR or single addresses; :class:`InvalidNetwork` for
    one that is not), or with None let it be used from anywhere again. From the next request."""
    key = find_key(session, id_or_prefix)
    key.allowed_networks = parse_networks(networks) if networks is not None else None
    session.flush()
    return key


def configure_webhook(session: Session, id_or_prefix: str, *, url: str | None, box: SecretBox, clear: bool = False,
                      rotate: bool = False, overlap: timedelta = timedelta(0),
                      allowed_hosts: Sequence[str] = ()) -> tuple[ApiKey, str | None]:
    """Set (or with ``clear`` remove) the key's default webhook URL; make sure it has a signing
    secret (a new one with ``rotate``), stored sealed by ``box``. Returns the key and the secret
    when it is new (shown once to the administrator, who hands it to the receiver). Jobs keep
    the URL they were submitted with; deliveries are signed with the key's secret as it is when
    sent. A rotated secret also signs for ``overlap`` (each webhook then has both signatures),
    so the receiver can switch to the new one without refusing an event."""
    key = find_key(session, id_or_prefix)
    if clear:
        key.webhook_url = None
    elif url is not None:
        key.webhook_url = check_webhook_url(url, allowed_hosts)
    fresh = None
    if rotate or (not key.webhook_secret and not clear):
        if key.webhook_secret and overlap > timedelta(0):
            key.previous_webhook_secret = key.webhook_secret
            key.previous_webhook_secret_until = db_now(session) + overlap
        elif rotate:
            key.previous_webhook_secret = key.previous_webhook_secret_until = None
        fresh = new_secret()
        key.webhook_secret = box.seal(fresh)
    return key, fresh


LAST_USED_RESOLUTION = timedelta(minutes=1)


def authenticate(session: Session, secret: str, *, client: str | None) -> ApiKey | None:
    """The live key for a secret presented by a client at address ``client``, or None
    (unknown, revoked or expired); :class:`AddressNotAllowed` from outside the key's networks
    (which then does not count as a use).
    ``last_used_at`` (and for a rotated key's previous secret ``previous_last_used_at``) is
    written at most once a minute, so a busy key does not cost a write per request."""
    # Expiry by the database's clock, read in the same statement: every gateway agrees on it.
    # A rotated key's previous secret counts until its own end (``rotate_key``).
    hashed = hash_secret(secret)
    row = session.execute(select(ApiKey, db_clock(session).label("now"))
                          .where(or_(ApiKey.key_hash == hashed, ApiKey.previous_key_hash == hashed))).first()
    if row is None:
        return None
    key, now = row[0], row[1].astimezone(UTC)
    if key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
        return None
    previous = key.key_hash != hashed
    if previous and (key.previous_valid_until is None or key.previous_valid_until <= now):
        return None
    if not address_allowed(key.allowed_networks, client):
        raise AddressNotAllowed(key, client)
    used: dict[str, datetime] = {}
    if _stale(key.last_used_at, now):
        used["last_used_at"] = now
    if previous and _stale(key.previous_last_used_at, now):  # has the caller switched to the new one yet?
        used["previous_last_used_at"] = now
    if used:
        session.execute(update(ApiKey).where(ApiKey.id == key.id).values(**used))
    return key


def _stale(last_used: datetime | None, now: datetime) -> bool:
    return last_used is None or now - last_used > LAST_USED_RESOLUTION


def ensure_key(session: Session, *, secret: str, name: str, role: Role | str) -> ApiKey | None:
    """The deployment's bootstrap key: made once, the key if it was made now. None when a key
    of this name or with this secret exists in any state (live, revoked, rotated): a bootstrap
    secret that leaked and was rotated away or revoked must not come back at the next deploy,
    which still has it in its environment."""
    check_name(name)
    hashed = hash_secret(secret)
    if session.scalars(select(ApiKey.id).where(
            or_(ApiKey.key_hash == hashed, ApiKey.previous_key_hash == hashed, ApiKey.name == name))).first():
        return None
    key = ApiKey(name=name, role=Role(role), key_prefix=secret[:PREFIX_CHARS], key_hash=hashed)
    session.add(key)
    session.flush()
    return key


def allows(role: Role | str, *required: Role | str) -> bool:
    """Admin may do everything; any other role only what it is named for."""
    return Role(role) == Role.admin or Role(role) in {Role(r) for r in required}
