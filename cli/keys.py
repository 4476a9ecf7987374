"""``fada keys``: API keys (create, list, limit, networks, rotate, revoke, webhook). Each change
is also written to the audit trail, with the operating-system user and host that ran it: key
management needs database access, not a key, and must still be accountable."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from cli.database import open_session
from cli.operator import record_change

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from shared.db.models import ApiKey

keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored hashed; a secret is shown once).")


def _audit(session: Session, command: str, key: ApiKey, **detail: object) -> None:
    record_change(session, f"fada keys {command}", key, **detail)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="submitter, reviewer, qa or admin")],
    name: Annotated[str, typer.Option(help="who or what uses the key")],
    max_pending: Annotated[int | None, typer.Option(
        min=1, show_default=False,
        help="most jobs this key may have queued or running (default: FADA_MAX_PENDING_PER_KEY)")] = None,
    expires_in_days: Annotated[float | None, typer.Option(
        min=0.001, max=36500, show_default=False,
        help="refuse the key this many days from now, as if revoked (default: never)")] = None,
    allow_from: Annotated[list[str] | None, typer.Option(
        show_default=False, help="a network (CIDR) or address the key may be used from; repeat for more "
        "(default: anywhere)")] = None,
) -> None:
    """Create a key and print its secret, alone, on stdout (only its hash is stored)."""
    from datetime import timedelta

    from services.keys import InvalidKeyName, create_key
    from services.networks import InvalidNetwork
    from shared.db.clock import db_now
    from shared.db.models import Role

    if role not in Role.__members__:
        raise typer.BadParameter(f"role must be one of {', '.join(Role.__members__)}", param_hint="--role")
    try:
        with open_session() as session, session.begin():
            # From the database's clock, which the gateways judge expiry by (not this host's).
            expires_at = db_now(session) + timedelta(days=expires_in_days) if expires_in_days is not None else None
            new = create_key(session, name=name, role=role, max_pending=max_pending, expires_at=expires_at,
                             networks=allow_from or None)
            _audit(session, "create", new.key, role=role, expires_at=_iso(expires_at), max_pending=max_pending,
                   networks=new.key.allowed_networks)
    except InvalidKeyName as exc:  # refused before anything was added; the transaction is rolled back
        raise typer.BadParameter(str(exc), param_hint="--name") from exc
    except InvalidNetwork as exc:
        raise typer.BadParameter(str(exc), param_hint="--allow-from") from exc
    if expires_at is not None:
        typer.echo(f"the key expires at {expires_at.isoformat(timespec='seconds')}", err=True)
    typer.echo(new.secret)


KEYS_LIST_COLUMNS = ("id", "prefix", "role", "name", "created", "revoked", "expires", "max_pending", "networks",
                     "last_used", "rotated", "previous_prefix", "previous_until", "previous_last_used")


@keys_app.command("list")
def keys_list() -> None:
    """List keys, tab-separated, after a header row naming the columns: id, prefix, role, name,
    created, revoked, expires, max_pending (the key's own pending-job limit; "-": none, or the
    service-wide limit), networks (where it may be used from, comma-separated; "-": anywhere),
    last_used (to the minute), rotated, and while a rotated key's previous
    secret still works its prefix, end and last use ("-" otherwise: has the caller switched?)."""
    from services.keys import list_keys
    from shared.db.clock import db_now

    with open_session() as session:
        keys = list_keys(session)
        now = db_now(session)
        typer.echo("\t".join(KEYS_LIST_COLUMNS))
        for key in keys:
            limit = "-" if key.max_pending is None else str(key.max_pending)
            previous = ("-", "-", "-")
            if key.previous_valid_until is not None and key.previous_valid_until > now:
                previous = (key.previous_key_prefix or "-", key.previous_valid_until.isoformat(),
                            _when(key.previous_last_used_at))
            row = (key.id, key.key_prefix, key.role, key.name, key.created_at.isoformat(), _when(key.revoked_at),
                   _when(key.expires_at), limit, ",".join(key.allowed_networks or ["-"]), _when(key.last_used_at),
                   _when(key.rotated_at), *previous)
            typer.echo("\t".join(row))


def _when(at: datetime | None) -> str:
    return _iso(at) or "-"


@keys_app.command("limit")
def keys_limit(
    key: Annotated[str, typer.Argument(help="key id or prefix")],
    max_pending: Annotated[int | None, typer.Option(
        min=1, show_default=False, help="most jobs this key may have queued or running")] = None,
    default: Annotated[bool, typer.Option(
        "--default", help="use the service-wide FADA_MAX_PENDING_PER_KEY again")] = False,
) -> None:
    """Set a key's own limit of jobs queued or running: a batch script lower, a PACS bridge
    higher than the service-wide FADA_MAX_PENDING_PER_KEY."""
    from services.keys import UnknownKey, set_max_pending

    if (max_pending is None) == (not default):
        raise typer.BadParameter("give --max-pending N or --default, not both or neither")
    try:
        with open_session() as session, session.begin():
            changed = set_max_pending(session, key, None if default else max_pending)
            prefix, limit = changed.key_prefix, changed.max_pending
            _audit(session, "limit", changed, max_pending=limit)
    except UnknownKey as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"key {prefix}: at most {limit if limit is not None else 'FADA_MAX_PENDING_PER_KEY'} jobs queued "
               "or running", err=True)


@keys_app.command("networks")
def keys_networks(
    key: Annotated[str, typer.Argument(help="key id or prefix")],
    allow_from: Annotated[list[str] | None, typer.Option(
        show_default=False, help="a network (CIDR) or address the key may be used from; repeat for more")] = None,
    anywhere: Annotated[bool, typer.Option("--anywhere", help="lift the limit: any address")] = False,
) -> None:
    """Limit where a key may be used from: requests from elsewhere get 403 address_not_allowed
    (audited). The address is the client's as the gateway sees it: behind a reverse proxy, set
    FORWARDED_ALLOW_IPS to the proxy's address, or every request comes from the proxy."""
    from services.keys import UnknownKey, set_networks
    from services.networks import InvalidNetwork

    if bool(allow_from) == anywhere:
        raise typer.BadParameter("give --allow-from CIDR (repeatable) or --anywhere, not both or neither")
    try:
        with open_session() as session, session.begin():
            changed = set_networks(session, key, None if anywhere else allow_from)
            prefix, networks = changed.key_prefix, changed.allowed_networks
            _audit(session, "networks", changed, networks=networks)
    except InvalidNetwork as exc:
        raise typer.BadParameter(str(exc), param_hint="--allow-from") from exc
    except UnknownKey as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"key {prefix}: usable from {', '.join(networks) if networks else 'anywhere'}", err=True)


@keys_app.command("rotate")
def keys_rotate(
    key: Annotated[str, typer.Argument(help="key id or prefix")],
    overlap_hours: Annotated[float, typer.Option(
        min=0, max=24 * 90, help="hours the current secret keeps working beside the new one (0: it stops now)")] = 24,
    expires_in_days: Annotated[float | None, typer.Option(
        min=0.001, max=36500, show_default=False,
        help="the new secret's expiry, this many days from now (default: as long as the key lived before; "
        "never if it had no expiry)")] = None,
) -> None:
    """Give a key a new secret and print it, alone, on stdout. The key stays the same key: its
    jobs, idempotency keys, limit, webhook and audit trail carry on. The current secret keeps
    working for --overlap-hours, for the caller to switch without a gap."""
    from datetime import timedelta

    from services.keys import KeyRevoked, UnknownKey, rotate_key

    lifetime = timedelta(days=expires_in_days) if expires_in_days is not None else None
    try:
        with open_session() as session, session.begin():
            new = rotate_key(session, key, overlap=timedelta(hours=overlap_hours), lifetime=lifetime)
            previous, until, expires = (new.key.previous_key_prefix, new.key.previous_valid_until,
                                        new.key.expires_at)
            overlapping = until is not None and new.key.rotated_at is not None and until > new.key.rotated_at
            _audit(session, "rotate", new.key, previous_prefix=previous, previous_until=_iso(until),
                   expires_at=_iso(expires))
    except (UnknownKey, KeyRevoked) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if overlapping and until is not None:
        typer.echo(f"the previous secret ({previous}...) works until {until.isoformat(timespec='seconds')}", err=True)
    else:
        typer.echo("the previous secret no longer works", err=True)
    if expires is not None:
        typer.echo(f"the key expires at {expires.isoformat(timespec='seconds')}", err=True)
    typer.echo(new.secret)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="key id or prefix")]) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    from services.keys import UnknownKey, revoke_key

    try:
        with open_session() as session, session.begin():
            revoked = revoke_key(session, key)
            _audit(session, "revoke", revoked)
    except UnknownKey as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"revoked {revoked.id}")


@keys_app.command("webhook")
def keys_webhook(
    key: Annotated[str, typer.Argument(help="key id or prefix")],
    url: Annotated[str | None, typer.Option(help="default URL for this key's job events")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the default URL")] = False,
    rotate_secret: Annotated[bool, typer.Option("--rotate-secret", help="replace the signing secret")] = False,
    overlap_hours: Annotated[float, typer.Option(
        min=0, max=24 * 90, help="with --rotate-secret: hours the old secret also signs each webhook "
        "(0: it stops now)")] = 24,
) -> None:
    """Send this key's job events to a URL, signed (Standard Webhooks). Prints the signing
    secret when it is new: give it to the receiver, it is not shown again. A rotated secret
    keeps signing beside the new one for --overlap-hours, so the receiver can switch to the
    new secret without refusing an event."""
    from datetime import timedelta

    from services.keys import UnknownKey, configure_webhook
    from services.notify import InvalidTarget
    from services.notify.sealing import SecretUnavailable, secret_box
    from shared.settings import Settings

    settings = Settings()
    try:
        with open_session() as session, session.begin():
            changed, secret = configure_webhook(session, key, url=url, clear=clear, rotate=rotate_secret,
                                                overlap=timedelta(hours=overlap_hours),
                                                box=secret_box(settings, create=True),
                                                allowed_hosts=settings.webhook_allowed_hosts)
            target = changed.webhook_url or "(none: only jobs with their own callback_url)"
            prefix = changed.key_prefix
            old_until = changed.previous_webhook_secret_until if rotate_secret else None
            _audit(session, "webhook", changed, url=changed.webhook_url, new_secret=secret is not None,
                   previous_secret_until=_iso(old_until))
    except (UnknownKey, InvalidTarget, SecretUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"webhook URL of key {prefix}: {target}", err=True)
    if old_until is not None:
        typer.echo(f"the previous signing secret also signs until {old_until.isoformat(timespec='seconds')}",
                   err=True)
    if secret:
        typer.echo(secret)


@keys_app.command("secrets-key")
def keys_secrets_key() -> None:
    """Print a new key for FADA_SECRETS_KEY (it seals webhook signing secrets in the database)."""
    from services.notify.sealing import new_key

    typer.echo(new_key())


@keys_app.command("seal-secrets")
def keys_seal_secrets() -> None:
    """Seal every stored webhook secret with the first key of FADA_SECRETS_KEY (or the key
    file): those stored before sealing existed, and those sealed with a key being retired."""
    from services.notify.sealing import SecretUnavailable, seal_all, secret_box
    from shared.settings import Settings

    try:
        with open_session() as session, session.begin():
            count = seal_all(session, secret_box(Settings(), create=True))
    except SecretUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"sealed {count} webhook secret(s) with the current key")
