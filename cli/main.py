"""``fada``: the command line, a thin layer over services."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.audit import audit as audit_command
from cli.database import open_session
from cli.keys import keys_app
from cli.operator import operator, record_change
from cli.report import report as report_command
from cli.submit import submit as submit_command

app = typer.Typer(no_args_is_help=True, add_completion=False, help="FADA Serve: fetal-ultrasound AI as a service.")
model_app = typer.Typer(no_args_is_help=True, help="Model utilities.")
app.add_typer(model_app, name="model")
app.add_typer(keys_app, name="keys")
images_app = typer.Typer(no_args_is_help=True, help="Stored images (the retention policy).")
app.add_typer(images_app, name="images")
app.command("audit")(audit_command)
app.command("report")(report_command)
app.command("submit")(submit_command)


@app.command()
def migrate(revision: Annotated[str, typer.Option(help="target revision")] = "head") -> None:
    """Bring the database (FADA_DATABASE_URL) to the latest schema."""
    from shared.db.migrate import upgrade
    from shared.settings import Settings

    settings = Settings()
    upgrade(settings.database_url, revision)
    if settings.bootstrap_admin_key is not None:
        from services.keys import ensure_key
        with open_session() as session, session.begin():
            made = ensure_key(session, secret=settings.bootstrap_admin_key.get_secret_value(), name="bootstrap-admin",
                              role="admin")
            if made is not None:
                record_change(session, "fada migrate", made, created="bootstrap admin key")
                typer.echo("created the bootstrap admin key (FADA_BOOTSTRAP_ADMIN_KEY)", err=True)


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
    total = purge_all(sm, older_than=older_than, by=operator())
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
