"""``fada``: the command line, a thin layer over services."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.audit import audit as audit_command
from cli.report import report as report_command
from cli.submit import submit as submit_command

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

app = typer.Typer(no_args_is_help=True, add_completion=False, help="FADA Serve: fetal-ultrasound AI as a service.")
model_app = typer.Typer(no_args_is_help=True, help="Model utilities.")
app.add_typer(model_app, name="model")
keys_app = typer.Typer(no_args_is_help=True, help="API keys (stored hashed; a secret is shown once).")
app.add_typer(keys_app, name="keys")
images_app = typer.Typer(no_args_is_help=True, help="Stored images (the retention policy).")
app.add_typer(images_app, name="images")
app.command("audit")(audit_command)
app.command("report")(report_command)
app.command("submit")(submit_command)


def _session() -> Session:
    from shared.db.engine import engine_from_settings, make_sessionmaker
    from shared.settings import Settings

    return make_sessionmaker(engine_from_settings(Settings()))()


@app.command()
def migrate(revision: Annotated[str, typer.Option(help="target revision")] = "head") -> None:
    """Bring the database (FADA_DATABASE_URL) to the latest schema."""
    from shared.db.migrate import upgrade
    from shared.settings import Settings

    settings = Settings()
    upgrade(settings.database_url, revision)
    if settings.bootstrap_admin_key is not None:
        from services.keys import ensure_key

        with _session() as session, session.begin():
            if ensure_key(session, secret=settings.bootstrap_admin_key.get_secret_value(), name="bootstrap-admin",
                          role="admin"):
                typer.echo("created the bootstrap admin key (FADA_BOOTSTRAP_ADMIN_KEY)", err=True)


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
        with _session() as session, session.begin():
            # From the database's clock, which the gateways judge expiry by (not this host's).
            expires_at = db_now(session) + timedelta(days=expires_in_days) if expires_in_days is not None else None
            new = create_key(session, name=name, role=role, max_pending=max_pending, expires_at=expires_at,
                             networks=allow_from or None)
    except InvalidKeyName as exc:  # refused before anything was added; the transaction is rolled back
        raise typer.BadParameter(str(exc), param_hint="--name") from exc
    except InvalidNetwork as exc:
        raise typer.BadParameter(str(exc), param_hint="--allow-from") from exc
    if expires_at is not None:
        typer.echo(f"the key expires at {expires_at.isoformat(timespec='seconds')}", err=True)
    typer.echo(new.secret)


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
        with _session() as session, session.begin():
            changed = set_max_pending(session, key, None if default else max_pending)
            prefix, limit = changed.key_prefix, changed.max_pending
    except UnknownKey as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"key {prefix}: at most {limit if limit is not None else 'FADA_MAX_PENDING_PER_KEY'} jobs queued "
               "or running", err=True)


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

    with _session() as session:
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
    return at.isoformat() if at is not None else "-"


@keys_app.command("webhook")
def keys_webhook(
    key: Annotated[str, typer.Argument(help="key id or prefix")],
    url: Annotated[str | None, typer.Option(help="default URL for this key's job events")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="remove the default URL")] = False,
    rotate_secret: Annotated[bool, typer.Option("--rotate-secret", help="replace the signing secret")] = False,
) -> None:
    """Send this key's job events to a URL, signed (Standard Webhooks). Prints the signing
    secret when it is new: give it to the receiver, it is not shown again."""
    from services.keys import UnknownKey, configure_webhook
    from services.notify import InvalidTarget
    from services.notify.sealing import SecretUnavailable, secret_box
    from shared.settings import Settings

    settings = Settings()
    try:
        with _session() as session, session.begin():
            changed, secret = configure_webhook(session, key, url=url, clear=clear, rotate=rotate_secret,
                                                box=secret_box(settings, create=True),
                                                allowed_hosts=settings.webhook_allowed_hosts)
            target = changed.webhook_url or "(none: only jobs with their own callback_url)"
            prefix = changed.key_prefix
    except (UnknownKey, InvalidTarget, SecretUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"webhook URL of key {prefix}: {target}", err=True)
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
        with _session() as session, session.begin():
            count = seal_all(session, secret_box(Settings(), create=True))
    except SecretUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"sealed {count} webhook secret(s) with the current key")


@images_app.command("purge")
def images_purge(
    older_than_days: Annotated[float | None, typer.Option(
        min=0, help="jobs finished more than this many days ago (default: FADA_IMAGE_RETENTION_DAYS)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only count them")] = False,
) -> None:
    """Delete the pixels of images whose job finished long ago; results, sizes, sha256 and
    DICOM UIDs stay. The workers do this on their own when FADA_IMAGE_RETENTION_DAYS is set."""
    from datetime import timedelta

    from services.jobs import count_purgeable, purge_all
    from shared.db.engine import engine_from_settings, make_sessionmaker
    from shared.settings import Settings

    settings = Settings()
    days = older_than_days if older_than_days is not None else settings.image_retention_days
    if days is None:
        typer.echo("error: give --older-than-days or set FADA_IMAGE_RETENTION_DAYS", err=True)
        raise typer.Exit(2)
    older_than = timedelta(days=days)
    sm = make_sessionmaker(engine_from_settings(settings))
    if dry_run:
        with sm() as session:
            count = count_purgeable(session, older_than=older_than)
        typer.echo(f"{count} image(s) of jobs finished over {days:g} day(s) ago would be purged")
        return
    total = purge_all(sm, older_than=older_than)
    typer.echo(f"purged the pixels of {total} image(s) of jobs finished over {days:g} day(s) ago")


@app.command()
def backup(folder: Annotated[Path, typer.Argument(help="a new or empty folder for this backup")]) -> None:
    """Copy the database (FADA_DATABASE_URL) and the key file that opens its webhook secrets
    into FOLDER, while the service runs: SQLite by its online backup (one moment, checked),
    PostgreSQL by pg_dump --format=custom. backup.json, written last, lists the files and the
    schema revision. README, "Backup and restore", says how to restore."""
    from services.backup import BackupError, make_backup
    from shared.settings import Settings

    try:
        made = make_backup(Settings(), folder)
    except BackupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for name in made.files:
        typer.echo(f"{folder / name}")
    for note in made.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"{made.database} database at revision {made.revision}: backup complete ({folder / 'backup.json'})",
               err=True)


@app.command()
def restore(folder: Annotated[Path, typer.Argument(help="a folder written by fada backup")]) -> None:
    """Restore a backup into FADA_DATABASE_URL, with the service stopped: a SQLite file that does
    not exist yet, or an empty PostgreSQL database (pg_restore). Every file's sha256 is checked
    first; the key file goes into FADA_DATA_DIR; the schema is then migrated to this version."""
    from services.restore import RestoreError, restore_backup
    from shared.settings import Settings

    try:
        done = restore_backup(Settings(), folder)
    except RestoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for note in done.notes:
        typer.echo(f"note: {note}", err=True)
    if done.key_file is not None:
        typer.echo(f"webhook secret key file: {done.key_file}", err=True)
    typer.echo(f"restored the {done.database} database of revision {done.backup_revision}, now at {done.revision}",
               err=True)


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
        with _session() as session, session.begin():
            changed = set_networks(session, key, None if anywhere else allow_from)
            prefix, networks = changed.key_prefix, changed.allowed_networks
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
        with _session() as session, session.begin():
            new = rotate_key(session, key, overlap=timedelta(hours=overlap_hours), lifetime=lifetime)
            previous, until, expires = (new.key.previous_key_prefix, new.key.previous_valid_until,
                                        new.key.expires_at)
    except (UnknownKey, KeyRevoked) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if previous is not None and until is not None:
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
        with _session() as session, session.begin():
            revoked = revoke_key(session, key)
    except UnknownKey as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"revoked {revoked.id}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
) -> None:
    """Gateway plus one worker process. With no configuration: SQLite and a serverless broker
    under ./var, and the tiny local model (built on first start)."""
    from cli.processes import (
        ensure_model,
        exit_cleanly_on_signals,
        run_api,
        start_worker,
        stop_process,
        watch_worker,
    )
    from shared.db.migrate import upgrade
    from shared.settings import Settings

    settings = Settings()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    model_env = ensure_model(settings)
    exit_cleanly_on_signals()
    worker = start_worker(model_env, loglevel=settings.log_level, quiet=settings.log_format == "json")
    stopping, died = watch_worker(worker)
    try:
        run_api(host, port)
    except SystemExit:
        if not died.is_set():
            raise
    finally:
        stopping.set()
        stop_process(worker)
    if died.is_set():  # jobs accepted meanwhile stay queued in the database for the next start
        typer.echo(f"error: the worker process exited (status {worker.returncode}); the gateway stopped with it",
                   err=True)
        raise typer.Exit(1)


@app.command()
def api(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(help="gateway processes")] = 1,
) -> None:
    """The HTTP gateway alone (run `fada migrate` first)."""
    from cli.processes import run_api

    run_api(host, port, workers=workers)


@app.command()
def worker(
    loglevel: Annotated[str | None, typer.Option(help="log level (default FADA_LOG_LEVEL)")] = None,
) -> None:
    """One GPU worker: one model, up to FADA_BATCH_SIZE jobs run together. Run one per GPU."""
    import os

    from cli.processes import worker_argv
    from services.models.loader import ModelNotFound
    from services.runtime import model_source
    from shared.settings import Settings

    settings = Settings()
    try:
        model_source(settings)  # fail here, clearly, rather than in every pool process
    except ModelNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    argv = worker_argv(loglevel=loglevel or settings.log_level, quiet=settings.log_format == "json")
    os.execv(argv[0], argv)


def _quiet_transformers() -> None:
    from services.runtime import quiet_library_logs

    quiet_library_logs()


@model_app.command("build-tiny")
def build_tiny(
    out: Annotated[Path, typer.Option(help="directory to write the model to")],
    seed: Annotated[int, typer.Option(help="random seed (same seed, same model)")] = 0,
) -> None:
    """Build a tiny random qwen3_5 model + LoRA adapter (untrained; for tests and demos)."""
    _quiet_transformers()
    from services.models.tiny import build_tiny_model

    build_tiny_model(out, seed=seed)
    typer.echo(str(out))


@app.command()
def analyze(
    image: Annotated[Path, typer.Argument(help="PNG, JPEG or DICOM file", exists=True, dir_okay=False)],
    model: Annotated[Path | None, typer.Option(help="model directory (fada model build-tiny)")] = None,
    base: Annotated[str | None, typer.Option(help="base model path or hub id")] = None,
    adapter: Annotated[str | None, typer.Option(help="LoRA adapter path or hub id")] = None,
    mode: Annotated[str, typer.Option(help="autonomous or hitl")] = "autonomous",
    profile: Annotated[str | None, typer.Option(help="profile name or JSON file")] = None,
    frame: Annotated[int, typer.Option(help="DICOM frame index (0-based)")] = 0,
) -> None:
    """Run the pipeline on one image and print the result document as JSON."""
    _quiet_transformers()
    from services.ingest import IngestError
    from services.models.loader import ModelNotFound
    from services.runtime import analyze_bytes, load_runtime
    from shared.settings import Settings

    if mode not in ("autonomous", "hitl"):
        raise typer.BadParameter("mode must be autonomous or hitl", param_hint="--mode")
    overrides = {k: v for k, v in {"model_dir": model, "model_base": base, "model_adapter": adapter,
                                   "profile": profile}.items() if v is not None}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    try:
        runtime = load_runtime(settings)
        result = analyze_bytes(runtime, image.read_bytes(), mode=mode, frame=frame)  # type: ignore[arg-type]
    except IngestError as exc:
        typer.echo(f"error ({exc.code}): {exc.detail}", err=True)
        raise typer.Exit(2) from exc
    except ModelNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    sys.stdout.write(result.model_dump_json(indent=2) + "\n")


if __name__ == "__main__":
    app()
