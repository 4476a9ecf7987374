"""`fada migrate` and `fada keys ...` against real PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from typer.testing import CliRunner

from cli.main import app
from services.keys import InvalidKeyName, allows, authenticate, create_key, ensure_key, hash_secret
from services.notify.sealing import secret_box
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import ApiKey, Role
from shared.db.types import utcnow
from shared.settings import Settings

from .helpers import cli as _cli

runner = CliRunner()


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FADA_DATA_DIR", str(tmp_path))  # the webhook secrets' key file goes here
    monkeypatch.delenv("FADA_SECRETS_KEY", raising=False)



def test_keys_lifecycle_through_the_cli(database_url: str) -> None:
    _cli(database_url, "migrate")
    created = _cli(database_url, "keys", "create", "--role", "submitter", "--name", "pacs-bridge")
    secret = created.stdout.strip()
    assert created.stdout == secret + "\n", "the key alone on stdout"
    assert secret.startswith("fada_") and len(secret) > 40

    sessions = make_sessionmaker(make_engine(database_url))
    with sessions() as session:
        stored = session.scalars(select(ApiKey)).one()
        assert stored.key_hash == hash_secret(secret)
        dump = " ".join(str(v) for v in session.execute(text("SELECT * FROM api_keys")).one())
        assert secret not in dump, "only the hash is stored"
    with sessions() as session, session.begin():
        assert authenticate(session, secret, client="127.0.0.1") is not None
        assert authenticate(session, secret + "x", client="127.0.0.1") is None

    header, *rows = _cli(database_url, "keys", "list").stdout.splitlines()
    assert header.split("\t") == ["id", "prefix", "role", "name", "created", "revoked", "expires", "max_pending",
                                  "networks", "last_used", "rotated", "previous_prefix", "previous_until",
                                  "previous_last_used"]
    [row] = [line.split("\t") for line in rows]
    assert len(row) == len(header.split("\t"))
    with sessions() as session:
        used = session.scalars(select(ApiKey.last_used_at)).one()  # by the authentication above
    assert used is not None
    assert row[:4] == [stored.id, stored.key_prefix, "submitter", "pacs-bridge"]
    assert row[5:] == ["-", "-", "-", "-", used.isoformat(), "-", "-", "-", "-"]

    _cli(database_url, "keys", "revoke", stored.key_prefix)
    with sessions() as session, session.begin():
        assert authenticate(session, secret, client="127.0.0.1") is None
    bad = runner.invoke(app, ["keys", "revoke", "nope"], env={"FADA_DATABASE_URL": database_url})
    assert bad.exit_code == 2


def test_a_key_s_webhook_through_the_cli(database_url: str) -> None:
    _cli(database_url, "migrate")
    _cli(database_url, "keys", "create", "--role", "submitter", "--name", "ris")
    sessions = make_sessionmaker(make_engine(database_url))
    with sessions() as session:
        prefix = session.scalars(select(ApiKey.key_prefix)).one()
    first = _cli(database_url, "keys", "webhook", prefix, "--url", "https://ris.hospital.example/fada")
    secret = first.stdout.strip()
    assert secret.startswith("whsec_") and first.stdout == secret + "\n"  # the secret alone on stdout
    again = _cli(database_url, "keys", "webhook", prefix, "--url", "https://ris.hospital.example/v2")
    assert again.stdout == ""  # the secret is kept, and not shown again
    rotation = _cli(database_url, "keys", "webhook", prefix, "--rotate-secret")
    rotated = rotation.stdout.strip()
    assert rotated.startswith("whsec_") and rotated != secret
    assert "previous signing secret also signs until" in rotation.stderr  # 24 hours by default
    _cli(database_url, "keys", "webhook", prefix, "--clear")
    with sessions() as session:
        key = session.scalars(select(ApiKey)).one()
        assert key.webhook_url is None and key.webhook_secret is not None
        assert rotated not in key.webhook_secret, "stored sealed"
        assert secret_box(Settings()).open(key.webhook_secret) == rotated
        assert key.previous_webhook_secret is not None and secret not in key.previous_webhook_secret
        assert secret_box(Settings()).open(key.previous_webhook_secret) == secret
        assert key.previous_webhook_secret_until is not None
        assert timedelta(hours=23.9) < key.previous_webhook_secret_until - utcnow() <= timedelta(hours=24)
    third = _cli(database_url, "keys", "webhook", prefix, "--rotate-secret", "--overlap-hours", "0")
    assert "also signs" not in third.stderr
    with sessions() as session:
        key = session.scalars(select(ApiKey)).one()
        assert key.previous_webhook_secret is None and key.previous_webhook_secret_until is None
    refused = runner.invoke(app, ["keys", "webhook", prefix, "--url", "gopher://x"],
                            env={"FADA_DATABASE_URL": database_url})
    assert refused.exit_code == 2 and "http(s)" in refused.output


def test_unknown_role_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["keys", "create", "--role", "root", "--name", "x"],
                           env={"FADA_DATABASE_URL": f"sqlite:///{tmp_path / 'f.db'}"})
    assert result.exit_code != 0 and "role must be one of" in result.output


def test_keys_list_with_no_keys_prints_the_header_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'f.db'}"
    _cli(url, "migrate")
    assert _cli(url, "keys", "list").stdout == ("id\tprefix\trole\tname\tcreated\trevoked\texpires\tmax_pending"
                                                "\tnetworks\tlast_used\trotated\tprevious_prefix\tprevious_until"
                                                "\tprevious_last_used\n")


BAD_NAMES = ["", "   ", "\t", "pacs\nbridge", "pacs\x00bridge", "pacs\x1b[31mbridge", "tab\there", "x\u2028y",
             "n" * 129]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_blank_or_unprintable_key_name_is_a_usage_error_and_nothing_is_stored(database_url: str,
                                                                                 name: str) -> None:
    _cli(database_url, "migrate")
    refused = runner.invoke(app, ["keys", "create", "--role", "submitter", "--name", name],
                            env={"FADA_DATABASE_URL": database_url})
    assert refused.exit_code == 2, refused.output
    assert refused.stdout == "", "no secret printed"
    assert "Invalid value for --name" in refused.stderr and "a key's name" in refused.stderr, refused.stderr
    with make_sessionmaker(make_engine(database_url))() as session:
        assert session.scalars(select(ApiKey)).all() == []
    # a name with spaces inside, or up to the column's 128 characters, is fine
    for good in ("pacs bridge (ward 3)", "n" * 128):
        _cli(database_url, "keys", "create", "--role", "submitter", "--name", good)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_key_service_refuses_such_names_for_every_caller(database_url: str, name: str) -> None:
    _cli(database_url, "migrate")
    sessions = make_sessionmaker(make_engine(database_url))
    with sessions() as session, session.begin():
        with pytest.raises(InvalidKeyName):
            create_key(session, name=name, role="submitter")
        with pytest.raises(InvalidKeyName):
            ensure_key(session, secret="fada_bootstrap-secret-for-the-test", name=name, role="admin")
    with sessions() as session:
        assert session.scalars(select(ApiKey)).all() == []


def test_roles() -> None:
    assert allows(Role.admin, Role.submitter) and allows("reviewer", "reviewer", "qa")
    assert not allows(Role.submitter, Role.qa)


def test_a_key_s_own_pending_limit_through_the_cli(database_url: str) -> None:
    _cli(database_url, "migrate")
    _cli(database_url, "keys", "create", "--role", "submitter", "--name", "batch-script", "--max-pending", "50")
    _cli(database_url, "keys", "create", "--role", "submitter", "--name", "pacs-bridge")
    sessions = make_sessionmaker(make_engine(database_url))

    def limits() -> dict[str, int | None]:
        with sessions() as session:
            return {k.name: k.max_pending for k in session.scalars(select(ApiKey))}

    assert limits() == {"batch-script": 50, "pacs-bridge": None}
    rows = [line.split("\t") for line in _cli(database_url, "keys", "list").stdout.splitlines()[1:]]
    assert {row[3]: row[7] for row in rows} == {"batch-script": "50", "pacs-bridge": "-"}
    with sessions() as session:
        pacs = session.scalars(select(ApiKey).where(ApiKey.name == "pacs-bridge")).one().key_prefix
        batch = session.scalars(select(ApiKey).where(ApiKey.name == "batch-script")).one().key_prefix
    _cli(database_url, "keys", "limit", pacs, "--max-pending", "500")
    _cli(database_url, "keys", "limit", batch, "--default")
    assert limits() == {"batch-script": None, "pacs-bridge": 500}
    for wrong in (["keys", "limit", pacs], ["keys", "limit", pacs, "--max-pending", "5", "--default"],
                  ["keys", "limit", pacs, "--max-pending", "0"]):
        assert runner.invoke(app, wrong, env={"FADA_DATABASE_URL": database_url}).exit_code == 2
    assert limits() == {"batch-script": None, "pacs-bridge": 500}


def test_a_key_created_to_expire_works_until_then(database_url: str) -> None:
    _cli(database_url, "migrate")
    created = _cli(database_url, "keys", "create", "--role", "qa", "--name", "audit-2026", "--expires-in-days", "30")
    secret = created.stdout.strip()
    assert created.stdout == secret + "\n" and "expires at" in created.stderr
    sessions = make_sessionmaker(make_engine(database_url))
    with sessions() as session:
        key = session.scalars(select(ApiKey)).one()
        assert key.expires_at is not None
        assert timedelta(days=29.99) < key.expires_at - utcnow() <= timedelta(days=30)
    header, row = [line.split("\t") for line in _cli(database_url, "keys", "list").stdout.splitlines()]
    assert header[6] == "expires" and row[6] == key.expires_at.isoformat()
    with sessions() as session, session.begin():
        assert authenticate(session, secret, client="127.0.0.1") is not None
        session.execute(update(ApiKey).values(expires_at=utcnow()))  # the day has come
    with sessions() as session, session.begin():
        assert authenticate(session, secret, client="127.0.0.1") is None
    for days in ("0", "1e7"):  # already expired; past the calendar
        refused = runner.invoke(app, ["keys", "create", "--role", "qa", "--name", "x", "--expires-in-days", days],
                                env={"FADA_DATABASE_URL": database_url})
        assert refused.exit_code == 2, refused.output
