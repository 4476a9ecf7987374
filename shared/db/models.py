"""ORM models: the tables that hold the service's truth.

Every constraint and index has a name (through ``NAMING_CONVENTION`` or explicitly), so the
Alembic migrations in ``migrations/`` stay stable. Allowed values of status, mode, role and
the like are VARCHAR columns with a named CHECK constraint (no native PostgreSQL enum types),
enforced by PostgreSQL and SQLite alike. ``tests/db`` checks that these models and the
migrated schema match.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.db.types import JSONDocument, UTCDateTime, id_type, new_id, str_enum, utcnow

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


URL_MAX_LENGTH = 2048  # every URL column (webhook, links base, delivery target)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSONDocument}


# --- allowed values -------------------------------------------------------------------------


class Role(enum.StrEnum):
    submitter = "submitter"
    reviewer = "reviewer"
    qa = "qa"
    admin = "admin"


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    awaiting_review = "awaiting_review"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


class JobMode(enum.StrEnum):
    autonomous = "autonomous"
    hitl = "hitl"


class ReviewState(enum.StrEnum):
    not_required = "not_required"
    pending = "pending"
    reviewed = "reviewed"


class ImageFormat(enum.StrEnum):
    png = "png"
    jpeg = "jpeg"
    dicom = "dicom"


class ReviewDimension(enum.StrEnum):
    interpretation = "interpretation"
    annotation = "annotation"


class ReviewDecision(enum.StrEnum):
    accept = "accept"
    correct = "correct"
    reject = "reject"


FINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.canceled})


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=utcnow)


def _pk() -> Mapped[str]:
    return mapped_column(id_type(), primary_key=True, default=new_id)


def _fk(target: str, *, nullable: bool = False, index: bool = False, ondelete: str | None = None) -> Any:
    return mapped_column(id_type(), ForeignKey(target, ondelete=ondelete), nullable=nullable, index=index)


# --- tables ---------------------------------------------------------------------------------


class ApiKey(Base):
    """A caller's key. Only the SHA-256 of the secret is kept; ``key_prefix`` is for listing."""

    __tablename__ = "api_keys"

    id: Mapped[str] = _pk()
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[Role] = mapped_column(str_enum(Role, "role"))
    key_prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None]
    # Past this instant the key is refused like a revoked one (``fada keys create
    # --expires-in-days``): a site's rotation policy, enforced. NULL: no expiry.
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    # ``fada keys rotate``: a new secret for the same key (its jobs, idempotency keys, limits
    # and webhook stay); the previous secret keeps working until ``previous_valid_until``.
    rotated_at: Mapped[datetime | None]
    previous_key_prefix: Mapped[str | None] = mapped_column(String(16))
    previous_key_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    previous_valid_until: Mapped[datetime | None]
    previous_last_used_at: Mapped[datetime | None]  # has the caller switched to the new secret yet?
    # The networks (CIDR strings, ``fada keys networks``) the key may be used from; NULL: anywhere.
    allowed_networks: Mapped[list[str] | None] = mapped_column(JSONDocument)
    # Webhooks (``fada keys webhook``): where this key's job events go by default, and the
    # Standard Webhooks signing secret. The service must sign with the secret, so it cannot be
    # hashed; it is stored sealed (services/notify/sealing.py).
    webhook_url: Mapped[str | None] = mapped_column(String(URL_MAX_LENGTH))
    webhook_secret: Mapped[str | None] = mapped_column(String(512))
    # After ``fada keys webhook --rotate-secret``: the old secret (sealed) also signs until then.
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(512))
    previous_webhook_secret_until: Mapped[datetime | None]
    # Most jobs this key may have queued or running (``fada keys limit``); NULL: the
    # service-wide FADA_MAX_PENDING_PER_KEY.
    max_pending: Mapped[int | None]

    __table_args__ = (CheckConstraint("max_pending >= 1", name="max_pending_positive"),)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = _pk()
    created_at: Mapped[datetime] = _created()
    api_key_id: Mapped[str] = _fk("api_keys.id", index=True)
    external_id: Mapped[str | None] = mapped_column(String(128))

    jobs: Mapped[list[Job]] = relationship(back_populates="batch", order_by="Job.created_at")


class Image(Base):
    """The normalised image (PNG bytes) and what was read from the upload.

    The pixels live in the database so that a worker on another host needs only the
    database and broker URLs. ``data`` is deferred: it is loaded only when read. The retention
    policy (``services.jobs.retention``) deletes it once the job is long finished.
    """

    __tablename__ = "images"
    __table_args__ = (
        CheckConstraint("width > 0 AND height > 0", name="positive_size"),
        CheckConstraint("frame >= 0", name="frame_not_negative"),
    )

    id: Mapped[str] = _pk()
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[ImageFormat] = mapped_column(str_enum(ImageFormat, "image_format"))
    width: Mapped[int]
    height: Mapped[int]
    frame: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Frames in the upload (a DICOM cine has many): an SR must name the frame it annotates
    # whenever the source has more than one. NULL on rows stored before it was recorded.
    frame_count: Mapped[int | None] = mapped_column(Integer)
    pixel_spacing_row_mm: Mapped[float | None] = mapped_column(Float)
    pixel_spacing_col_mm: Mapped[float | None] = mapped_column(Float)
    # DICOM UIDs are at most 64 characters (PS3.5 9.1).
    dicom_sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    dicom_study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    dicom_series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    dicom_sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    dicom_modality: Mapped[str | None] = mapped_column(String(16))
    dicom_manufacturer_model: Mapped[str | None] = mapped_column(String(64))
    # NULL once purged by the retention policy (``purged_at``): the rest of the row stays.
    data: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    original_size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = _created()
    purged_at: Mapped[datetime | None]


class Job(Base):
    """One image through the pipeline. State changes are conditional row updates; the lease
    (``lease_owner``, ``lease_expires_at``) lets a sweeper recover jobs of a dead worker."""

    __tablename__ = "jobs"
    __table_args__ = (
        # Serves filters on status alone too (leftmost column), so status has no index of its own.
        Index("ix_jobs_status_created_at", "status", "created_at"),
        # A key's queued and running jobs are counted at every submission (FADA_MAX_PENDING_PER_KEY);
        # serves filters on the key alone too.
        Index("ix_jobs_api_key_id_status", "api_key_id", "status"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        CheckConstraint("max_attempts >= 1", name="max_attempts_positive"),
    )

    id: Mapped[str] = _pk()
    status: Mapped[JobStatus] = mapped_column(str_enum(JobStatus, "job_status"), default=JobStatus.queued)
    mode: Mapped[JobMode] = mapped_column(str_enum(JobMode, "job_mode"), default=JobMode.autonomous, index=True)
    review_state: Mapped[ReviewState] = mapped_column(
        str_enum(ReviewState, "review_state"), default=ReviewState.not_required, index=True
    )
    external_id: Mapped[str | None] = mapped_column(String(128), index=True)
    batch_id: Mapped[str | None] = _fk("batches.id", nullable=True, index=True)
    image_id: Mapped[str] = _fk("images.id", index=True)
    api_key_id: Mapped[str] = _fk("api_keys.id")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    # indexed for the sweeper's "has any job been claimed lately?" (services.jobs.sweeper)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    finished_at: Mapped[datetime | None]
    # When the job last began to wait: queued (submitted, put back after a failed attempt or a
    # dead worker, resumed after review) or awaiting_review. How long the oldest waits is the
    # metric a stalled queue or an unstaffed review list shows in (services.monitoring).
    waiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(Text)
    model_revision: Mapped[str | None] = mapped_column(String(128), index=True)
    # DICOM BurnedInAnnotation of the upload (YES/NO; None when absent or not DICOM): a YES
    # image may carry identifying text in its pixels, which no header clean-up removes.
    burned_in_annotation: Mapped[str | None] = mapped_column(String(3))
    # HITL: the saved pipeline state (the result document so far) while awaiting review, and
    # the reviewer's choice (next phases, group) that resumes it.
    hitl_state: Mapped[dict[str, Any] | None]
    hitl_choice: Mapped[dict[str, Any] | None]
    # Notifications (services.notify): the webhook URL fixed at submission (the job's own
    # callback, else its key's), whether anything is to be sent for this job (webhook or a
    # PACS push; cleared once its final status is handled, so the dispatcher scans few rows),
    # and the last status that was turned into deliveries.
    webhook_url: Mapped[str | None] = mapped_column(String(URL_MAX_LENGTH))
    # The gateway's address as the submitter reached it (FADA_PUBLIC_URL, else the request's):
    # the base of the absolute links in this job's webhook events. Only kept with a webhook.
    links_base: Mapped[str | None] = mapped_column(String(URL_MAX_LENGTH))
    notify: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false(), index=True)
    # Queued, and its message was refused by the broker (down or hung): the sweeper sends it at
    # its next pass, not a grace period later. Cleared when sent, or when a worker claims the job.
    unpublished: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false(), index=True)
    notified_status: Mapped[str | None] = mapped_column(String(32))

    image: Mapped[Image] = relationship()
    batch: Mapped[Batch | None] = relationship(back_populates="jobs")
    result: Mapped[Result | None] = relationship(back_populates="job", uselist=False)


class Result(Base):
    """The result document of a job (``shared.schemas.results``); one per job, enforced by a
    UNIQUE constraint on ``job_id``."""

    __tablename__ = "results"

    id: Mapped[str] = _pk()
    job_id: Mapped[str] = mapped_column(id_type(), ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    document: Mapped[dict[str, Any]]
    model_base: Mapped[str] = mapped_column(String(512))
    model_adapter: Mapped[str | None] = mapped_column(String(512))
    model_revision: Mapped[str] = mapped_column(String(128), index=True)
    profile: Mapped[str] = mapped_column(String(128))
    untrained: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = _created()

    job: Mapped[Job] = relationship(back_populates="result")


class IdempotencyKey(Base):
    """``Idempotency-Key`` per API key: the same key and fingerprint give the original
    response; the same key with another fingerprint is a 422."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("api_key_id", "key"),
        CheckConstraint("job_id IS NULL OR batch_id IS NULL", name="one_target"),
    )

    id: Mapped[str] = _pk()
    api_key_id: Mapped[str] = _fk("api_keys.id")
    key: Mapped[str] = mapped_column(String(255))
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = _fk("jobs.id", nullable=True, index=True, ondelete="CASCADE")
    batch_id: Mapped[str | None] = _fk("batches.id", nullable=True, index=True, ondelete="CASCADE")
    response_status: Mapped[int]
    created_at: Mapped[datetime] = _created()


class AuditEvent(Base):
    """Who did what, when, with what outcome. ``job_id`` has no foreign key: the trail also
    records requests for jobs that do not exist, and must outlive any purge."""

    __tablename__ = "audit_events"

    id: Mapped[str] = _pk()
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    api_key_id: Mapped[str | None] = _fk("api_keys.id", nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(id_type(), index=True)
    outcome: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any] | None]
    request_id: Mapped[str | None] = mapped_column(String(64))


class Review(Base):
    """The CURRENT review of one job by one reviewer in one dimension (UNIQUE). An amendment
    (PUT) copies the previous version into ``review_revisions`` and bumps ``revision``."""

    __tablename__ = "reviews"
    __table_args__ = (
        UniqueConstraint("job_id", "reviewer_key_id", "dimension"),
        CheckConstraint("score >= 0 AND score <= 3", name="score_range"),
        CheckConstraint("revision >= 1", name="revision_positive"),
    )

    id: Mapped[str] = _pk()
    job_id: Mapped[str] = _fk("jobs.id", index=True)
    reviewer_key_id: Mapped[str] = _fk("api_keys.id", index=True)
    dimension: Mapped[ReviewDimension] = mapped_column(str_enum(ReviewDimension, "review_dimension"))
    score: Mapped[int]
    decision: Mapped[ReviewDecision] = mapped_column(str_enum(ReviewDecision, "review_decision"))
    comment: Mapped[str | None] = mapped_column(Text)
    corrections: Mapped[dict[str, Any] | None]
    next_phases: Mapped[list[str] | None] = mapped_column(JSONDocument)
    # "group" is an SQL keyword; the contract's field "group" maps to this column.
    group_name: Mapped[str | None] = mapped_column(String(128))
    job_mode: Mapped[JobMode] = mapped_column(str_enum(JobMode, "job_mode"))
    model_revision: Mapped[str | None] = mapped_column(String(128), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    amended_at: Mapped[datetime | None]

    history: Mapped[list[ReviewRevision]] = relationship(back_populates="review", order_by="ReviewRevision.revision")


class ReviewRevision(Base):
    """A superseded version of a review, kept when the review is amended."""

    __tablename__ = "review_revisions"
    __table_args__ = (
        UniqueConstraint("review_id", "revision"),
        CheckConstraint("score >= 0 AND score <= 3", name="score_range"),
    )

    id: Mapped[str] = _pk()
    review_id: Mapped[str] = _fk("reviews.id", ondelete="CASCADE")
    revision: Mapped[int]
    score: Mapped[int]
    decision: Mapped[ReviewDecision] = mapped_column(str_enum(ReviewDecision, "review_decision"))
    comment: Mapped[str | None] = mapped_column(Text)
    corrections: Mapped[dict[str, Any] | None]
    next_phases: Mapped[list[str] | None] = mapped_column(JSONDocument)
    group_name: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]  # when this version was written
    superseded_at: Mapped[datetime] = _created()

    review: Mapped[Review] = relationship(back_populates="history")


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[str] = _pk()
    name: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = _created()
    api_key_id: Mapped[str] = _fk("api_keys.id", index=True)
    ground_truth: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any] | None]


class WorkerHeartbeat(Base):
    """A worker process with a loaded model, as last heard from. ``/readyz`` is ready when one
    has beaten recently; rows of stopped workers are removed at shutdown or age out."""

    __tablename__ = "worker_heartbeats"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # the worker's lease owner name
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    queues: Mapped[str] = mapped_column(String(255))
    model_base: Mapped[str] = mapped_column(String(512))
    model_revision: Mapped[str] = mapped_column(String(128))
    untrained: Mapped[bool] = mapped_column(Boolean)
    started_at: Mapped[datetime] = _created()
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class DeliveryKind(enum.StrEnum):
    webhook = "webhook"  # a signed event POSTed to the job's webhook URL
    pacs_sr = "pacs_sr"  # the result as a DICOM SR, stored to the configured PACS (STOW-RS)


class DeliveryStatus(enum.StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"  # attempts exhausted, or a target that can never accept it


class Delivery(Base):
    """One notification of one job event (the outbox): retried with backoff until delivered
    or out of attempts. ``id`` is the Standard Webhooks ``webhook-id``: the same on every
    retry, so a receiver can drop duplicates. A short lease keeps two dispatchers apart."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("job_id", "kind", "event"),
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[str] = _pk()
    job_id: Mapped[str] = _fk("jobs.id", ondelete="CASCADE")
    kind: Mapped[DeliveryKind] = mapped_column(str_enum(DeliveryKind, "delivery_kind"))
    event: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(URL_MAX_LENGTH))
    payload: Mapped[dict[str, Any]]
    status: Mapped[DeliveryStatus] = mapped_column(str_enum(DeliveryStatus, "delivery_status"),
                                                   default=DeliveryStatus.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    delivered_at: Mapped[datetime | None]


class DeliveryAttempt(Base):
    """The delivery log: every try, with what the receiver answered (or why none came)."""

    __tablename__ = "delivery_attempts"

    id: Mapped[str] = _pk()
    delivery_id: Mapped[str] = _fk("deliveries.id", index=True, ondelete="CASCADE")
    attempt: Mapped[int]
    at: Mapped[datetime] = _created()
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)
