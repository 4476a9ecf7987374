"""``fada keys rotate``: a key gets a new secret and stays the same key; the previous secret
works for the overlap and not a moment after (by the database's clock), is never revived once
expired, and a revoked key cannot be rotated back to life. On PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from services.keys import KeyRevoked, authenticate, create_key, ensure_key, revoke_key, rotate_key
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import ApiKey
from shared.db.types import utcnow

from .helpers import cli as _cli


def _sessions(url: str) -> sessionmaker[Session]:
    _cli(url, "migrate")
    return make_sessionmaker(make_engine(url))


def _key_of(sessions: sessionmaker[Session], secret: str) -> str | None:
    with sessions.begin() as session:
        key = authenticate(session, secret, client="127.0.0.1")
        return None if key is None else key.id


def test_rotating_through_the_cli_keeps_the_key_and_both_secrets_work_for_the_overlap(database_url: str) -> None:
    sessions = _sessions(database_url)
    old = _cli(database_url, "keys", "create", "--role", "submitter", "--name", "pacs-bridge",
               "--expires-in-days", "30").stdout.strip()
    key_id = _key_of(sessions, old)
    assert key_id is not None
    with sessions.begin() as session:  # 25 days on: 5 left, time to renew
        session.execute(update(ApiKey).values(created_at=utcnow() - timedelta(days=25),
                                              expires_at=utcnow() + timedelta(days=5)))

    rotated = _cli(database_url, "keys", "rotate", old[:12])
    new = rotated.stdout.strip()
    assert rotated.stdout == new + "\n" and new.startswith("fada_") and new != old, "the new secret alone on stdout"
    assert f"previous secret ({old[:12]}...) works until" in rotated.stderr and "expires at" in rotated.stderr
    assert _key_of(sessions, new) == key_id  # the same key
    with sessions() as session:
        key = session.get(ApiKey, key_id)
        assert key is not None and key.rotated_at is not None
        assert key.expires_at is not None and key.previous_valid_until is not None
        # renewed for as long as it lived before (30 days), from the rotation
        assert abs(key.expires_at - key.rotated_at - timedelta(days=30)) < timedelta(seconds=1)
        assert abs(key.previous_valid_until - key.rotated_at - timedelta(hours=24)) < timedelta(seconds=1)
    header, row = (line.split("\t") for line in _cli(database_url, "keys", "list").stdout.splitlines())
    listed = dict(zip(header, row, strict=True))
    assert listed["prefix"] == new[:12] and listed["previous_prefix"] == old[:12]
    assert listed["rotated"] == key.rotated_at.isoformat()
    assert listed["previous_until"] == key.previous_valid_until.isoformat()
    assert listed["previous_last_used"] == "-", "not used since the rotation"
    assert _key_of(sessions, old) == key_id  # one key, two secrets: the bridge has not switched yet
    header, row = (line.split("\t") for line in _cli(database_url, "keys", "list").stdout.splitlines())
    with sessions() as session:
        used = session.get(ApiKey, key_id).previous_last_used_at  # type: ignore[union-attr]
    assert used is not None and dict(zip(header, row, strict=True))["previous_last_used"] == used.isoformat()

    with sessions.begin() as session:  # the overlap is over
        session.execute(update(ApiKey).values(previous_valid_until=utcnow() - timedelta(seconds=1)))
    assert _key_of(sessions, old) is None and _key_of(sessions, new) == key_id
    header, row = (line.split("\t") for line in _cli(database_url, "keys", "list").stdout.splitlines())
    assert dict(zip(header, row, strict=True))["previous_prefix"] == "-"


def test_no_overlap_stops_the_old_secret_at_once_and_a_second_rotation_ends_the_first_secret(
        database_url: str) -> None:
    sessions = _sessions(database_url)
    first = _cli(database_url, "keys", "create", "--role", "qa", "--name", "qa-station").stdout.strip()
    rotated = _cli(database_url, "keys", "rotate", first[:12], "--overlap-hours", "0")
    second = rotated.stdout.strip()
    assert "previous secret no longer works" in rotated.stderr and "expires" not in rotated.stderr  # none before
    assert _key_of(sessions, first) is None and _key_of(sessions, second) is not None

    third = _cli(database_url, "keys", "rotate", second[:12], "--expires-in-days", "7").stdout.strip()
    fourth = _cli(database_url, "keys", "rotate", third[:12]).stdout.strip()
    assert [_key_of(sessions, s) is not None for s in (second, third, fourth)] == [False, True, True]
    with sessions() as session:
        key = session.scalars(select(ApiKey)).one()
        assert key.expires_at is not None and key.rotated_at is not None
        assert abs(key.expires_at - key.rotated_at - timedelta(days=7)) < timedelta(seconds=1)


def test_an_expired_secret_is_not_revived_and_a_revoked_key_is_not_rotated(database_url: str) -> None:
    sessions = _sessions(database_url)
    with sessions.begin() as session:
        expired = create_key(session, name="old-bridge", role="submitter",
                             expires_at=utcnow() + timedelta(days=1))
        revoked = create_key(session, name="gone", role="submitter")
        revoke_key(session, revoked.key.id)
    with sessions.begin() as session:
        session.execute(update(ApiKey).where(ApiKey.id == expired.key.id)
                        .values(expires_at=utcnow() - timedelta(hours=1)))
    assert _key_of(sessions, expired.secret) is None
    with sessions.begin() as session:
        renewed = rotate_key(session, expired.key.id, overlap=timedelta(hours=24), lifetime=timedelta(days=90))
        assert renewed.key.previous_valid_until == renewed.key.rotated_at  # no overlap at all
    assert _key_of(sessions, expired.secret) is None, "the rotation gave the expired secret no overlap"
    assert _key_of(sessions, renewed.secret) == expired.key.id

    refused = _cli(database_url, "keys", "rotate", revoked.key.id, exit_code=2)
    assert "revoked" in refused.output
    with sessions() as session:
        assert session.get(ApiKey, revoked.key.id).key_prefix == revoked.secret[:12]  # type: ignore[union-attr]
        with pytest.raises(KeyRevoked):
            rotate_key(session, revoked.key.id, overlap=timedelta(0))
    _cli(database_url, "keys", "rotate", "fada_nothing", exit_code=2)


def test_a_rotated_bootstrap_secret_does_not_make_a_new_admin_key(database_url: str) -> None:
    """``fada migrate`` with FADA_BOOTSTRAP_ADMIN_KEY still set to a secret since rotated must
    not create a second admin key from it."""
    sessions = _sessions(database_url)
    bootstrap = "fada_bootstrap-" + "x" * 32
    with sessions.begin() as session:
        assert ensure_key(session, secret=bootstrap, name="bootstrap-admin", role="admin")
        [key_id] = session.scalars(select(ApiKey.id)).all()
        rotate_key(session, key_id, overlap=timedelta(hours=1))
    with sessions.begin() as session:
        assert not ensure_key(session, secret=bootstrap, name="bootstrap-admin", role="admin")
        assert session.scalars(select(ApiKey.id)).all() == [key_id]
