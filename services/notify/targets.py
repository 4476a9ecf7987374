"""Which URLs the service may call: http(s) only, and, when ``webhook_allowed_hosts`` is set,
only those hosts, since a callback URL chosen by a caller makes the service send requests
from inside the hospital network."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey
from shared.settings import Settings


class InvalidTarget(ValueError):
    """A webhook URL the service refuses to call."""


def check_webhook_url(url: str, allowed_hosts: Sequence[str]) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidTarget(f"webhook URL must be an absolute http(s) URL, got {url!r}")
    if parts.username or parts.password:
        raise InvalidTarget("webhook URL must not carry credentials: receivers check the signature instead")
    host = parts.hostname.lower()
    if allowed_hosts and not any(_host_matches(host, allowed.lower()) for allowed in allowed_hosts):
        raise InvalidTarget(f"webhook host {host!r} is not in the allowed hosts")
    return url


def _host_matches(host: str, allowed: str) -> bool:
    return host.endswith(allowed) if allowed.startswith(".") else host == allowed


@dataclass(frozen=True)
class NotifyPlan:
    webhook_url: str | None
    pacs_push: bool


def plan_notifications(session: Session, api_key_id: str, callback_url: str | None, settings: Settings) -> NotifyPlan:
    """What a new job of this key will announce: webhook events to the job's own callback URL,
    else to the key's; and, when a PACS is configured, its result as an SR. Raises
    ``InvalidTarget`` for a callback the service will not call or cannot sign for."""
    url, secret = session.execute(
        select(ApiKey.webhook_url, ApiKey.webhook_secret).where(ApiKey.id == api_key_id)).one()
    if callback_url is not None:
        check_webhook_url(callback_url, settings.webhook_allowed_hosts)
        if not secret:
            raise InvalidTarget("this API key has no webhook secret to sign callbacks with; an administrator "
                                "creates one with `fada keys webhook KEY`")
        url = callback_url
    return NotifyPlan(webhook_url=url, pacs_push=bool(settings.pacs_stow_url))
