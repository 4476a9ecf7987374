"""Image retention: the pixels of jobs finished long ago are deleted, nothing else is; by the
service function, the workers' retention pass and ``fada images purge`` (PostgreSQL and SQLite)."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cli.main import app
from services.jobs import (
    cancel,
    claim,
    complete,
    count_purgeable,
    current_document,
    fail,
    purge_all,
    purge_images,
)
from services.jobs.images import StoredImageError, load_decoded
from services.maintenance import purge_old_images
from shared.db.models import AuditEvent, Image, Job
from shared.db.types import utcnow
from shared.settings import Settings

from .helpers import make_document

MONTH = timedelta(days=30)
runner = CliRunner()


def _finish(sm: sessionmaker[Session], job_id: str, how: str, *, days_ago: float) -> None:
    with sm.begin() as s:
        if how == "canceled":
            assert cancel(s, job_id)
        else:
            assert claim(s, job_id, owner="w", lease_seconds=60) is not None
            if how == "succeeded":
                assert complete(s, job_id, "w", make_document())
            elif how == "failed":
                assert fail(s, job_id, "w", "model_error", "crashed")
            else:  # a HITL first stage: not finished, the second stage will read the image again
                assert complete(s, job_id, "w", make_document(), awaiting_review=True)
        then = utcnow() - timedelta(days=days_ago)
        s.execute(update(Job).where(Job.id == job_id).values(
            created_at=then, finished_at=None if how == "awaiting" else then))


def _jobs(sm: sessionmaker[Session], submit: Callable[..., str]) -> dict[str, str]:
    """A job in each state; the finished ones 40 days ago but one, and the others old too."""
    jobs = {name: submit(mode="hitl" if name == "awaiting" else "autonomous")
            for name in ("succeeded", "failed", "canceled", "recent", "awaiting", "queued")}
    for name in ("succeeded", "failed", "canceled"):
        _finish(sm, jobs[name], name, days_ago=40)
    _finish(sm, jobs["recent"], "succeeded", days_ago=3)
    _finish(sm, jobs["awaiting"], "awaiting", days_ago=40)
    with sm.begin() as s:
        s.execute(update(Job).where(Job.id == jobs["queued"]).values(created_at=utcnow() - timedelta(days=40)))
    return jobs


def _kept(sm: sessionmaker[Session], jobs: dict[str, str]) -> dict[str, bool]:
    """Per job: does its image still hold pixels (and no purge time)?"""
    with sm() as s:
        rows = s.execute(select(Job.id, Image.data.is_not(None), Image.purged_at).join(Image, Image.id == Job.image_id))
        by_id = {job_id: (has_data, purged_at) for job_id, has_data, purged_at in rows}
    for has_data, purged_at in by_id.values():
        assert has_data == (purged_at is None)
    return {name: by_id[job_id][0] for name, job_id in jobs.items()}


def test_only_images_of_jobs_finished_long_ago_lose_their_pixels(sm: sessionmaker[Session],
                                                                  submit: Callable[..., str]) -> None:
    jobs = _jobs(sm, submit)
    with sm() as s:
        assert count_purgeable(s, older_than=MONTH) == 3
    with sm.begin() as s:
        assert len(purge_images(s, older_than=MONTH, limit=2)) == 2  # a batch at a time
    with sm.begin() as s:
        assert len(purge_images(s, older_than=MONTH)) == 1
        assert purge_images(s, older_than=MONTH) == []  # done: a second run changes nothing
    assert _kept(sm, jobs) == {"succeeded": False, "failed": False, "canceled": False,
                               "recent": True, "awaiting": True, "queued": True}
    with sm() as s:
        # the result and the image row's facts stay
        document = current_document(s, jobs["succeeded"])
        assert document is not None and document.status == "succeeded"
        image = s.scalars(select(Image).join(Job, Job.image_id == Image.id).where(Job.id == jobs["succeeded"])).one()
        assert (image.width, image.height, len(image.sha256)) == (8, 6, 64)
        # a worker that somehow met the job again fails it with the reason, not with a crash
        with pytest.raises(StoredImageError, match="deleted by the retention policy"):
            load_decoded(s, image.id)
        assert load_decoded(s, s.get_one(Job, jobs["awaiting"]).image_id).width == 8


def test_the_workers_pass_applies_the_setting(sm: sessionmaker[Session], submit: Callable[..., str], db_url: str,
                                              tmp_path: Path) -> None:
    jobs = _jobs(sm, submit)
    unset = Settings(database_url=db_url, data_dir=tmp_path)
    assert purge_old_images(sm, unset) == 0  # the default keeps every image
    assert purge_old_images(sm, unset.model_copy(update={"image_retention_days": 50})) == 0
    assert purge_old_images(sm, unset.model_copy(update={"image_retention_days": 30})) == 3
    assert _kept(sm, jobs)["recent"] and not _kept(sm, jobs)["succeeded"]


def test_a_pass_takes_every_batch(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    jobs = _jobs(sm, submit)
    assert purge_all(sm, older_than=MONTH, by="host:7:gpu", batch=2) == 3  # 2, then 1: one transaction each
    assert purge_all(sm, older_than=MONTH, by="host:7:gpu", batch=2) == 0
    assert not any(_kept(sm, jobs)[name] for name in ("succeeded", "failed", "canceled"))
    # One audit event per batch that deleted any, naming who ran it; none for a pass with nothing to do.
    assert [(d["client"], d["images"], d["older_than_days"]) for d in _purge_events(sm)] == [
        ("host:7:gpu", 2, 30.0), ("host:7:gpu", 1, 30.0)]


def _purge_events(sm: sessionmaker[Session]) -> list[dict[str, Any]]:
    with sm() as s:
        return [e.detail or {} for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "images purge")
                                                  .order_by(AuditEvent.at, AuditEvent.id))]


def test_the_command(sm: sessionmaker[Session], submit: Callable[..., str], db_url: str, tmp_path: Path) -> None:
    jobs = _jobs(sm, submit)
    env = {"FADA_DATABASE_URL": db_url, "FADA_DATA_DIR": str(tmp_path)}
    refused = runner.invoke(app, ["images", "purge"], env=env)
    assert refused.exit_code == 2 and "FADA_IMAGE_RETENTION_DAYS" in refused.output
    counted = runner.invoke(app, ["images", "purge", "--older-than-days", "30", "--dry-run"], env=env)
    assert counted.exit_code == 0 and "3 image(s) of jobs finished over 30 day(s) ago would be purged" in counted.output
    assert all(_kept(sm, jobs).values())
    done = runner.invoke(app, ["images", "purge"], env={**env, "FADA_IMAGE_RETENTION_DAYS": "2"})
    assert done.exit_code == 0 and "purged the pixels of 4 image(s)" in done.output, done.output
    assert _kept(sm, jobs) == {"succeeded": False, "failed": False, "canceled": False,
                               "recent": False, "awaiting": True, "queued": True}
    [event] = _purge_events(sm)
    assert event["client"] == f"{getpass.getuser()}@{socket.gethostname()}" and event["images"] == 4
