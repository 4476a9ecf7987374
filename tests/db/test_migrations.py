"""The Alembic migrations build exactly the schema the ORM models describe, on PostgreSQL and
SQLite, and go down and up again cleanly."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect, select, text

from services.ingest import decode_image
from services.jobs import rejected_by_reviewer, submit_job
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import (
    REPO_ROOT,
    current_revision,
    downgrade,
    head_revision,
    schema_diff,
    upgrade,
)
from shared.db.models import ApiKey, Base, Job, JobMode, Role
from shared.db.types import new_id
from tests.api.helpers import png


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _check_constraints(url: str) -> dict[str, set[str]]:
    """CHECK constraint names per table: compare_metadata does not look at CHECKs."""
    engine = make_engine(url)
    try:
        insp = inspect(engine)
        return {t: {str(c["name"]) for c in insp.get_check_constraints(t)} for t in Base.metadata.tables}
    finally:
        engine.dispose()


def _model_check_constraints() -> dict[str, set[str]]:
    from sqlalchemy import CheckConstraint

    return {
        name: {str(c.name) for c in table.constraints if isinstance(c, CheckConstraint)}
        for name, table in Base.metadata.tables.items()
    }


def _round_trip(url: str) -> None:
    assert current_revision(url) is None
    upgrade(url)
    assert current_revision(url) == head_revision()
    assert _tables(url) == set(Base.metadata.tables)

    downgrade(url, "base")
    assert current_revision(url) is None
    assert _tables(url) == set()

    upgrade(url)
    assert current_revision(url) == head_revision()
    assert schema_diff(url) == []
    assert _check_constraints(url) == _model_check_constraints()


def test_postgres_upgrade_downgrade_upgrade_matches_models(postgres_url: str) -> None:
    _round_trip(postgres_url)
    engine = make_engine(postgres_url)
    try:
        types = {c["name"]: type(c["type"]).__name__ for c in inspect(engine).get_columns("results")}
    finally:
        engine.dispose()
    assert types["document"] == "JSONB"
    assert types["created_at"] == "TIMESTAMP"


def test_sqlite_upgrade_downgrade_upgrade_matches_models(sqlite_url: str) -> None:
    _round_trip(sqlite_url)


def test_schema_diff_notices_a_difference(sqlite_url: str) -> None:
    """compare_metadata is not vacuous: a missing index shows up."""
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_jobs_status_created_at"))
    engine.dispose()
    diff = schema_diff(sqlite_url)
    assert [d[0] for d in diff] == ["add_index"]
    assert diff[0][1].name == "ix_jobs_status_created_at"


def test_upgrade_without_url_uses_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'fada.db'}"
    monkeypatch.setenv("FADA_DATABASE_URL", url)
    upgrade()
    assert current_revision(url) == head_revision()


def test_alembic_ini_at_repo_root_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`alembic upgrade head` from the checkout: the URL comes from FADA_DATABASE_URL."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("FADA_DATABASE_URL", url)
    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")
    assert current_revision(url) == head_revision()
    command.downgrade(cfg, "base")
    assert current_revision(url) is None


@pytest.mark.parametrize("backend", ["postgres_url", "sqlite_url"])
def test_sealed_webhook_secrets_survive_upgrade_and_are_dropped_by_a_downgrade(
        backend: str, request: pytest.FixtureRequest) -> None:
    """0005 widens the secret column for sealed values. Going back to 0004 drops the sealed ones
    (they would not fit, and that code cannot open them) and keeps the plaintext ones."""
    url = request.getfixturevalue(backend)
    upgrade(url, "0004")
    engine = make_engine(url)
    insert = text("INSERT INTO api_keys (id, name, role, key_prefix, key_hash, created_at, webhook_secret) "
                  "VALUES (:id, :id, 'submitter', :id, :id, CURRENT_TIMESTAMP, :secret)")
    with engine.begin() as conn:
        conn.execute(insert, {"id": "plain", "secret": "whsec_" + "a" * 32})
    upgrade(url)
    sealed = "fernet:" + "b" * 160
    with engine.begin() as conn:
        conn.execute(insert, {"id": "sealed", "secret": sealed})
    downgrade(url, "0004")
    with engine.connect() as conn:
        kept = {row.id: row.webhook_secret for row in conn.execute(text("SELECT id, webhook_secret FROM api_keys"))}
    engine.dispose()
    assert kept == {"plain": "whsec_" + "a" * 32, "sealed": None}


def _submit_jobs(engine: Engine, count: int, mode: JobMode) -> list[str]:
    """``count`` queued jobs of one new submitter key, made with today's models; their ids."""
    raw = png(seed=1, width=8, height=8)
    with make_sessionmaker(engine).begin() as session:
        key = ApiKey(id=new_id(), name="t", role=Role.submitter, key_prefix="fada_t", key_hash=new_id())
        session.add(key)
        session.flush()
        return [submit_job(session, decoded=decode_image(raw), original_size=len(raw), api_key_id=key.id,
                           mode=mode).id for _ in range(count)]


@pytest.mark.parametrize("backend", ["postgres_url", "sqlite_url"])
def test_failed_hitl_jobs_stop_waiting_for_review_at_0006(backend: str, request: pytest.FixtureRequest) -> None:
    """Before 0006 a failed HITL job kept ``review_state = pending`` for ever; 0006 clears it
    on failed jobs only. The rows are made with today's models, then the schema goes back to
    0005 and the rows are set as the code of then left them."""
    url = request.getfixturevalue(backend)
    upgrade(url)
    engine = make_engine(url)
    ids = dict(zip(("failed", "waiting", "canceled"), _submit_jobs(engine, 3, JobMode.hitl), strict=True))
    downgrade(url, "0005")
    with engine.begin() as conn:  # as the code before 0006 left them
        conn.execute(text("UPDATE jobs SET review_state = 'pending'"))
        conn.execute(text("UPDATE jobs SET status = 'failed' WHERE id = :id"), {"id": ids["failed"]})
        conn.execute(text("UPDATE jobs SET status = 'awaiting_review' WHERE id = :id"), {"id": ids["waiting"]})
        conn.execute(text("UPDATE jobs SET status = 'canceled', review_state = 'not_required' WHERE id = :id"),
                     {"id": ids["canceled"]})
    upgrade(url)
    downgrade(url, "0005")  # keeps the fix: the older code reads it right
    with engine.connect() as conn:
        states = {job_id: state for job_id, state in conn.execute(text("SELECT id, review_state FROM jobs"))}
    engine.dispose()
    assert states == {ids["failed"]: "not_required", ids["waiting"]: "pending", ids["canceled"]: "not_required"}


@pytest.mark.parametrize("backend", ["postgres_url", "sqlite_url"])
def test_a_downgrade_below_0007_stops_while_images_are_purged(backend: str, request: pytest.FixtureRequest) -> None:
    """0006 cannot hold an image without pixels: the downgrade refuses, changing nothing, until
    none is left; then it goes through."""
    url = request.getfixturevalue(backend)
    upgrade(url)
    engine = make_engine(url)
    _submit_jobs(engine, 1, JobMode.autonomous)
    with engine.begin() as conn:
        conn.execute(text("UPDATE images SET data = NULL, purged_at = CURRENT_TIMESTAMP"))
    with pytest.raises(RuntimeError, match="1 image\\(s\\) were purged"):
        downgrade(url, "0006")
    assert current_revision(url) == head_revision()
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM jobs"))
        conn.execute(text("DELETE FROM images"))
    engine.dispose()
    downgrade(url, "0006")
    assert current_revision(url) == "0006"


@pytest.mark.parametrize("backend", ["postgres_url", "sqlite_url"])
def test_hitl_choices_saved_before_0010_get_their_gate_reviews_decision(backend: str,
                                                                       request: pytest.FixtureRequest) -> None:
    """A job rejected at its gate before 0010 has no ``decision`` in ``hitl_choice``: without
    it the rejection is not seen (its SR would be served and pushed). 0010 takes it from the
    review the choice names; a choice without a review, or with its decision already, is left."""
    url = request.getfixturevalue(backend)
    upgrade(url)
    engine = make_engine(url)
    rejected, accepted, no_review = _submit_jobs(engine, 3, JobMode.hitl)
    downgrade(url, "0009")
    with engine.begin() as conn:  # as the code before 0010 left them
        key_id = conn.scalar(text("SELECT api_key_id FROM jobs LIMIT 1"))
        for job_id, review_id, decision in ((rejected, "r-1", "reject"), (accepted, "r-2", "accept")):
            conn.execute(text("INSERT INTO reviews (id, job_id, reviewer_key_id, dimension, score, decision, "
                              "job_mode, revision, created_at) VALUES (:id, :job, :key, 'interpretation', 1, "
                              ":decision, 'hitl', 1, CURRENT_TIMESTAMP)"),
                         {"id": review_id, "job": job_id, "key": key_id, "decision": decision})
            choice = {"next_phases": [] if decision == "reject" else ["detect"], "group": None,
                      "review_id": review_id}
            conn.execute(text("UPDATE jobs SET hitl_choice = :c WHERE id = :id"),
                         {"c": json.dumps(choice), "id": job_id})
        conn.execute(text("UPDATE jobs SET hitl_choice = :c WHERE id = :id"),
                     {"c": json.dumps({"next_phases": ["detect"], "group": "brain"}), "id": no_review})
    upgrade(url)
    with make_sessionmaker(engine)() as session:
        choices = {job.id: job.hitl_choice for job in session.scalars(select(Job))}
    engine.dispose()
    assert choices[rejected] == {"next_phases": [], "group": None, "review_id": "r-1", "decision": "reject"}
    assert choices[accepted] == {"next_phases": ["detect"], "group": None, "review_id": "r-2", "decision": "accept"}
    assert choices[no_review] == {"next_phases": ["detect"], "group": "brain"}
    assert rejected_by_reviewer(choices[rejected]) and not rejected_by_reviewer(choices[accepted])


@pytest.mark.parametrize("backend", ["postgres_url", "sqlite_url"])
def test_jobs_waiting_at_0013_get_their_best_known_waiting_time(backend: str, request: pytest.FixtureRequest) -> None:
    """0013 adds ``waiting_since``: a queued job from its submission, one awaiting review from
    its last change, others none (they do not wait)."""
    url = request.getfixturevalue(backend)
    upgrade(url)
    engine = make_engine(url)
    queued, waiting, done = _submit_jobs(engine, 3, JobMode.hitl)
    downgrade(url, "0012")
    with engine.begin() as conn:  # as the code before 0013 left them
        conn.execute(text("UPDATE jobs SET created_at = :t"), {"t": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)})
        conn.execute(text("UPDATE jobs SET status = 'awaiting_review', updated_at = :t WHERE id = :id"),
                     {"t": datetime(2026, 1, 3, 0, 0, 0, tzinfo=UTC), "id": waiting})
        conn.execute(text("UPDATE jobs SET status = 'succeeded' WHERE id = :id"), {"id": done})
    upgrade(url)
    with make_sessionmaker(engine)() as session:
        since = {job.id: job.waiting_since for job in session.scalars(select(Job))}
    engine.dispose()
    assert since == {queued: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                     waiting: datetime(2026, 1, 3, 0, 0, 0, tzinfo=UTC), done: None}


@pytest.mark.parametrize("backend", ["postgres_url", "sqlite_url"])
def test_a_key_made_before_0014_works_after_them_and_keeps_its_webhook(backend: str,
                                                                       request: pytest.FixtureRequest) -> None:
    """0014-0016 (rotation, networks, webhook overlap) only add columns: a key and its webhook
    secret stored before them authenticate and sign as before, from anywhere, with no overlap."""
    from services.keys import authenticate, hash_secret

    url = request.getfixturevalue(backend)
    upgrade(url, "0013")
    engine = make_engine(url)
    secret = "fada_made-before-rotation-" + "x" * 20
    with engine.begin() as conn:  # as the code at 0013 stored a key
        conn.execute(text("INSERT INTO api_keys (id, name, role, key_prefix, key_hash, created_at, webhook_secret) "
                          "VALUES (:id, 'ris', 'submitter', :prefix, :hash, :at, 'whsec_sealed-elsewhere')"),
                     {"id": new_id(), "prefix": secret[:12], "hash": hash_secret(secret),
                      "at": datetime(2026, 1, 2, tzinfo=UTC)})
    upgrade(url)
    with make_sessionmaker(engine).begin() as session:
        key = authenticate(session, secret, client="192.0.2.9")
        assert key is not None and key.name == "ris" and key.webhook_secret == "whsec_sealed-elsewhere"
        assert (key.allowed_networks, key.previous_key_hash, key.previous_webhook_secret) == (None, None, None)
    engine.dispose()
