"""Every change ``fada keys`` makes is in the audit trail, under the key it changed, with who ran
it (user@host) and what changed, and never a secret; a command that fails records nothing.
On PostgreSQL and SQLite."""

from __future__ import annotations

import getpass
import json
import socket
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cli.main import app
from services.audit_trail import AuditFilters, list_events
from services.keys import authenticate
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import ApiKey, AuditEvent

from .helpers import cli as _cli
from .helpers import runner


def test_each_key_change_is_audited_with_who_ran_it(database_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FADA_DATA_DIR", str(tmp_path))  # the webhook secret's key file
    monkeypatch.delenv("FADA_SECRETS_KEY", raising=False)
    _cli(database_url, "migrate")
    first = _cli(database_url, "keys", "create", "--role", "submitter", "--name", "pacs-bridge",
                 "--expires-in-days", "90", "--allow-from", "10.20.0.0/24").stdout.strip()
    prefix = first[:12]
    _cli(database_url, "keys", "limit", prefix, "--max-pending", "200")
    _cli(database_url, "keys", "networks", prefix, "--allow-from", "10.20.0.0/24", "--allow-from", "10.21.0.9")
    webhook_secret = _cli(database_url, "keys", "webhook", prefix, "--url", "https://ris.example.org/fada"
                          ).stdout.strip()
    second = _cli(database_url, "keys", "rotate", prefix, "--overlap-hours", "2").stdout.strip()
    _cli(database_url, "keys", "revoke", second[:12])
    # Failed commands change nothing and record nothing.
    _cli(database_url, "keys", "rotate", second[:12], exit_code=2)  # revoked
    _cli(database_url, "keys", "networks", second[:12], "--allow-from", "bogus", exit_code=2)
    _cli(database_url, "keys", "limit", "fada_nothing", "--default", exit_code=2)

    sessions = make_sessionmaker(make_engine(database_url))
    with sessions() as session:
        events = [entry.event for entry in list_events(session, AuditFilters(), limit=50).items][::-1]
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 6
    assert [e.action for e in events] == ["fada keys create", "fada keys limit", "fada keys networks",
                                          "fada keys webhook", "fada keys rotate", "fada keys revoke"]
    assert len({e.api_key_id for e in events}) == 1 and events[0].api_key_id is not None
    assert {e.outcome for e in events} == {"ok"}
    assert {e.detail["client"] for e in events if e.detail} == {f"{getpass.getuser()}@{socket.gethostname()}"}
    create, limit, networks, webhook, rotate, _ = (e.detail or {} for e in events)
    assert (create["role"], create["max_pending"], create["networks"]) == ("submitter", None, ["10.20.0.0/24"])
    assert create["expires_at"] is not None
    assert limit["max_pending"] == 200 and networks["networks"] == ["10.20.0.0/24", "10.21.0.9/32"]
    assert (webhook["url"], webhook["new_secret"]) == ("https://ris.example.org/fada", True)
    assert rotate["previous_prefix"] == prefix and rotate["previous_until"] is not None
    # the key's prefix at each change: the first secret's until the rotation
    assert [e.detail["key_prefix"] for e in events if e.detail] == [prefix] * 4 + [second[:12]] * 2
    trail = json.dumps([e.detail for e in events])
    for secret in (first, second, webhook_secret):
        assert secret not in trail


def test_fada_migrate_makes_the_bootstrap_admin_key_once_and_audits_it(database_url: str) -> None:
    bootstrap = "fada_bootstrap-" + "b" * 32
    env = {"FADA_DATABASE_URL": database_url, "FADA_BOOTSTRAP_ADMIN_KEY": bootstrap}
    first = runner.invoke(app, ["migrate"], env=env)
    assert first.exit_code == 0 and "created the bootstrap admin key" in first.output, first.output
    sessions = make_sessionmaker(make_engine(database_url))
    with sessions.begin() as session:
        key = authenticate(session, bootstrap, client="127.0.0.1")
        assert key is not None and key.role == "admin"
    _cli(database_url, "keys", "rotate", bootstrap[:12], "--overlap-hours", "0")
    again = runner.invoke(app, ["migrate"], env=env)  # the variable still set, to a secret rotated away
    assert again.exit_code == 0 and "created" not in again.output, again.output
    with sessions() as session:
        events = [entry.event for entry in list_events(session, AuditFilters(), limit=50).items][::-1]
        assert session.scalars(select(ApiKey.id)).all() == [key.id], "no second admin key"
    assert [(e.action, e.api_key_id) for e in events] == [("fada migrate", key.id), ("fada keys rotate", key.id)]
    assert events[0].detail == {"client": f"{getpass.getuser()}@{socket.gethostname()}",
                                "key_prefix": bootstrap[:12], "created": "bootstrap admin key"}
