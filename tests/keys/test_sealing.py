"""Webhook signing secrets sealed at rest: keys from FADA_SECRETS_KEY or a key file, rotation,
secrets stored before sealing, and `fada keys seal-secrets` on real PostgreSQL and SQLite."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError
from sqlalchemy import select, text
from typer.testing import CliRunner

from cli.main import app
from services.keys import configure_webhook, create_key
from services.notify.sealing import KEY_FILE, SEALED, SecretUnavailable, new_key, seal_all, secret_box
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import upgrade
from shared.db.models import ApiKey
from shared.settings import Settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_key_from_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FADA_SECRETS_KEY", raising=False)


def _settings(tmp_path: Path, key: str | None = None) -> Settings:
    return Settings(data_dir=tmp_path, secrets_key=key)


def test_a_sealed_secret_opens_and_does_not_show() -> None:
    box = secret_box(_settings(Path("/nonexistent"), new_key()))
    stored = box.seal("whsec_abc123")
    assert stored.startswith(SEALED) and "abc123" not in stored and len(stored) <= 512
    assert box.open(stored) == "whsec_abc123"
    assert box.seal("whsec_abc123") != stored  # a fresh nonce each time


def test_the_key_file_is_made_once_private_and_kept(tmp_path: Path) -> None:
    assert secret_box(_settings(tmp_path)).keys == ()  # reading makes no key
    assert not (tmp_path / KEY_FILE).exists()
    sealed = secret_box(_settings(tmp_path), create=True).seal("whsec_x")
    key_file = tmp_path / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first = key_file.read_text()
    assert secret_box(_settings(tmp_path), create=True).open(sealed) == "whsec_x"
    assert key_file.read_text() == first, "an existing key is never replaced"
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE], "no draft left behind"


def test_a_process_without_the_key_says_so(tmp_path: Path) -> None:
    sealed = secret_box(_settings(tmp_path / "a"), create=True).seal("whsec_x")
    with pytest.raises(SecretUnavailable, match=r"no key.*FADA_SECRETS_KEY"):
        secret_box(_settings(tmp_path / "b")).open(sealed)
    with pytest.raises(SecretUnavailable, match="sealed with a key that is not in FADA_SECRETS_KEY"):
        secret_box(_settings(tmp_path / "b", new_key())).open(sealed)
    # stored before sealing existed: read as it is, with or without keys
    assert secret_box(_settings(tmp_path / "b")).open("whsec_plain") == "whsec_plain"


def test_a_mistyped_key_stops_the_settings() -> None:
    for bad in ["not-a-key", new_key() + ",short", Fernet.generate_key().decode()[:-4]]:
        with pytest.raises(ValidationError, match="32 url-safe base64"):
            Settings(secrets_key=bad)
    Settings(secrets_key=f" {new_key()} , {new_key()} ")


def test_a_damaged_key_file_is_named(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("garbage\n")
    with pytest.raises(SecretUnavailable, match=f"{KEY_FILE}: each key must be"):
        secret_box(_settings(tmp_path))


def test_rotation_and_secrets_from_before_sealing(database_url: str, tmp_path: Path) -> None:
    upgrade(database_url)
    sessions = make_sessionmaker(make_engine(database_url))
    old, new = new_key(), new_key()
    with sessions.begin() as session:
        legacy = create_key(session, name="ris", role="submitter").key
        legacy.webhook_secret = "whsec_stored_before_sealing"
        sealed_key = create_key(session, name="pacs", role="submitter").key
        _, first = configure_webhook(session, sealed_key.id, url=None, box=secret_box(_settings(tmp_path, old)))
        _, sealed = configure_webhook(session, sealed_key.id, url=None, rotate=True, overlap=timedelta(hours=1),
                                      box=secret_box(_settings(tmp_path, old)))  # first: the overlap's
    assert first is not None and sealed is not None

    # the new key first, the old one still there: everything opens, `seal-secrets` moves it all over
    result = runner.invoke(app, ["keys", "seal-secrets"], env={
        "FADA_DATABASE_URL": database_url, "FADA_DATA_DIR": str(tmp_path), "FADA_SECRETS_KEY": f"{new},{old}"})
    assert result.exit_code == 0, result.output
    assert "sealed 2 webhook secret(s)" in result.output
    with sessions() as session:
        stored = {name: value for name, value in session.execute(select(ApiKey.name, ApiKey.webhook_secret))}
        previous = session.scalar(select(ApiKey.previous_webhook_secret).where(ApiKey.name == "pacs"))
        dump = " ".join(str(v) for row in session.execute(text("SELECT * FROM api_keys")) for v in row)
    assert "whsec_stored_before_sealing" not in dump and sealed not in dump and first not in dump
    only_new = secret_box(_settings(tmp_path, new))
    assert only_new.open(stored["ris"] or "") == "whsec_stored_before_sealing"
    assert only_new.open(stored["pacs"] or "") == sealed
    assert only_new.open(previous or "") == first  # the overlap's secret moved over too
    with pytest.raises(SecretUnavailable):  # the old key may now be dropped: it opens nothing
        secret_box(_settings(tmp_path, old)).open(stored["pacs"] or "")

    # without the old key, a secret sealed with it cannot be moved: the command says so, changes nothing
    with sessions.begin() as session:
        session.execute(text("UPDATE api_keys SET webhook_secret = :s WHERE name = 'pacs'"),
                        {"s": secret_box(_settings(tmp_path, old)).seal(sealed)})
    refused = runner.invoke(app, ["keys", "seal-secrets"], env={
        "FADA_DATABASE_URL": database_url, "FADA_DATA_DIR": str(tmp_path), "FADA_SECRETS_KEY": new})
    assert refused.exit_code == 2 and "not in FADA_SECRETS_KEY" in refused.output
    with sessions() as session:
        assert session.scalar(select(ApiKey.webhook_secret).where(ApiKey.name == "ris")) == stored["ris"]


def test_the_cli_makes_a_key() -> None:
    result = runner.invoke(app, ["keys", "secrets-key"])
    assert result.exit_code == 0
    Settings(secrets_key=result.stdout.strip())
    assert result.stdout.strip() != runner.invoke(app, ["keys", "secrets-key"]).stdout.strip()


def test_seal_all_counts_only_keys_with_secrets(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    with sessions.begin() as session:
        create_key(session, name="no-hooks", role="qa")
        assert seal_all(session, secret_box(_settings(tmp_path), create=True)) == 0
