"""Webhook signing secrets at rest. The service signs with them, so unlike API keys they cannot
be stored as hashes; they are sealed with Fernet (AES-128-CBC plus HMAC-SHA256, from
``cryptography``) so that a database dump, backup or replica does not hand out the means to
forge the service's callbacks.

Keys: ``FADA_SECRETS_KEY``, one or more Fernet keys separated by commas. The first seals, any of
them opens, so a key is rotated by putting the new one first, running ``fada keys seal-secrets``
and then dropping the old one. Without it, a key file under ``data_dir`` is made on first use:
enough for the single-host embedded default, where the gateway, the worker and the CLI share
that directory. Values without the ``fernet:`` mark were stored before sealing existed and are
read as they are until ``fada keys seal-secrets`` seals them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey
from shared.settings import Settings

SEALED = "fernet:"
KEY_FILE = "secrets.key"


class SecretUnavailable(RuntimeError):
    """A secret cannot be sealed or opened with the keys this process has."""


@dataclass(frozen=True)
class SecretBox:
    keys: tuple[Fernet, ...]
    source: str  # where the keys came from, named in errors

    def seal(self, secret: str) -> str:
        if not self.keys:
            raise SecretUnavailable(f"no key to seal webhook secrets with ({self.source})")
        return SEALED + self.keys[0].encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(SEALED):
            return stored  # stored before sealing existed
        if not self.keys:
            raise SecretUnavailable(f"the webhook secret is sealed but this process has no key ({self.source}); "
                                    "give it the FADA_SECRETS_KEY it was sealed with")
        try:
            return MultiFernet(list(self.keys)).decrypt(stored[len(SEALED):].encode()).decode()
        except InvalidToken:
            raise SecretUnavailable(f"the webhook secret was sealed with a key that is not in {self.source}") from None


def key_file(settings: Settings) -> Path | None:
    """Where the key file that seals webhook secrets is; None when ``FADA_SECRETS_KEY`` is set
    (then no file is used)."""
    if settings.secrets_key is not None and settings.secrets_key.get_secret_value().strip():
        return None
    return Path(settings.data_dir) / KEY_FILE


def secret_box(settings: Settings, *, create: bool = False) -> SecretBox:
    """The keys of ``FADA_SECRETS_KEY``, else of the key file under ``data_dir``, which is made
    when ``create`` is set and there is none yet."""
    path = key_file(settings)
    if path is None:
        assert settings.secrets_key is not None
        return SecretBox(_parse(settings.secrets_key.get_secret_value(), "FADA_SECRETS_KEY"), "FADA_SECRETS_KEY")
    if create and not path.exists():
        _write_new_key(path)
    if not path.exists():
        return SecretBox((), f"no FADA_SECRETS_KEY and no {path}")
    return SecretBox(_parse(path.read_text(), str(path)), str(path))


def new_key() -> str:
    return Fernet.generate_key().decode()


def seal_all(session: Session, box: SecretBox) -> int:
    """Seal every stored webhook secret with the box's first key (plaintext ones from before
    sealing, and ones sealed with an older key), a rotated key's previous one too. Returns how
    many keys' secrets were sealed."""
    keys = list(session.scalars(select(ApiKey).where(ApiKey.webhook_secret.is_not(None))))
    for key in keys:
        assert key.webhook_secret is not None
        key.webhook_secret = box.seal(box.open(key.webhook_secret))
        if key.previous_webhook_secret is not None:
            key.previous_webhook_secret = box.seal(box.open(key.previous_webhook_secret))
    return len(keys)


def _parse(text: str, source: str) -> tuple[Fernet, ...]:
    try:
        keys = tuple(Fernet(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise SecretUnavailable(f"{source}: each key must be 32 url-safe base64-encoded bytes "
                                "(`fada keys secrets-key` makes one)") from None
    if not keys:
        raise SecretUnavailable(f"{source} holds no key")
    return keys


def _write_new_key(path: Path) -> None:
    """Written aside, then linked into place: a process reading at the same moment sees the
    whole key or no file, and of two processes making one at once, the first link wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f"{path.name}.{os.getpid()}.new")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_key() + "\n")
    try:
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()
