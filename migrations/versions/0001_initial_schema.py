"""Initial schema.

Api keys, batches, images, jobs, results, idempotency keys, audit events, reviews (with their
history) and evaluations.

Revision ID: 0001
Revises:
Create Date: 2026-11-28

Written for PostgreSQL and SQLite alike, with plain SQLAlchemy types (not shared.db.types) so
that this file means the same thing forever. Names of constraints and indexes follow
shared.db.models.NAMING_CONVENTION.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id(name: str = "id", *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(length=36), nullable=nullable)


def _ts(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _json(name: str, *, nullable: bool = True) -> sa.Column:
    json_type = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
    return sa.Column(name, json_type, nullable=nullable)


def _enum(name: str, constraint: str, values: Sequence[str]) -> sa.Column:
    """VARCHAR(32) + CHECK constraint ck_<table>_<constraint> (no native enum type)."""
    enum_type = sa.Enum(*values, name=constraint, native_enum=False, create_constraint=True, length=32)
    return sa.Column(name, enum_type, nullable=False)


JOB_MODES = ("autonomous", "hitl")
DECISIONS = ("accept", "correct", "reject")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        _id(),
        sa.Column("name", sa.String(length=128), nullable=False),
        _enum("role", "role", ("submitter", "reviewer", "qa", "admin")),
        sa.Column("key_prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
        _ts("last_used_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_key_hash"), "api_keys", ["key_hash"], unique=True)

    op.create_table(
        "images",
        _id(),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        _enum("format", "image_format", ("png", "jpeg", "dicom")),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("frame", sa.Integer(), server_default="0", nullable=False),
        sa.Column("pixel_spacing_row_mm", sa.Float(), nullable=True),
        sa.Column("pixel_spacing_col_mm", sa.Float(), nullable=True),
        sa.Column("dicom_sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("dicom_study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("dicom_series_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("original_size_bytes", sa.BigInteger(), nullable=False),
        _ts("created_at"),
        sa.CheckConstraint("frame >= 0", name=op.f("ck_images_frame_not_negative")),
        sa.CheckConstraint("width > 0 AND height > 0", name=op.f("ck_images_positive_size")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
    )
    op.create_index(op.f("ix_images_sha256"), "images", ["sha256"])

    op.create_table(
        "audit_events",
        _id(),
        _ts("at"),
        _id("api_key_id", nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        _id("job_id", nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        _json("detail"),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name=op.f("fk_audit_events_api_key_id_api_keys")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(op.f("ix_audit_events_api_key_id"), "audit_events", ["api_key_id"])
    op.create_index(op.f("ix_audit_events_at"), "audit_events", ["at"])
    op.create_index(op.f("ix_audit_events_job_id"), "audit_events", ["job_id"])

    op.create_table(
        "batches",
        _id(),
        _ts("created_at"),
        _id("api_key_id"),
        sa.Column("external_id", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name=op.f("fk_batches_api_key_id_api_keys")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index(op.f("ix_batches_api_key_id"), "batches", ["api_key_id"])

    op.create_table(
        "evaluations",
        _id(),
        sa.Column("name", sa.String(length=255), nullable=False),
        _ts("created_at"),
        _id("api_key_id"),
        _json("ground_truth", nullable=False),
        _json("metrics"),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name=op.f("fk_evaluations_api_key_id_api_keys")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    op.create_index(op.f("ix_evaluations_api_key_id"), "evaluations", ["api_key_id"])

    op.create_table(
        "jobs",
        _id(),
        _enum(
            "status",
            "job_status",
            ("queued", "running", "awaiting_review", "succeeded", "failed", "canceled"),
        ),
        _enum("mode", "job_mode", JOB_MODES),
        _enum("review_state", "review_state", ("not_required", "pending", "reviewed")),
        sa.Column("external_id", sa.String(length=128), nullable=True),
        _id("batch_id", nullable=True),
        _id("image_id"),
        _id("api_key_id"),
        _ts("created_at"),
        _ts("updated_at"),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False),
        sa.Column("lease_owner", sa.String(length=255), nullable=True),
        _ts("lease_expires_at", nullable=True),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        sa.Column("model_revision", sa.String(length=128), nullable=True),
        _json("hitl_state"),
        _json("hitl_choice"),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_jobs_attempts_not_negative")),
        sa.CheckConstraint("max_attempts >= 1", name=op.f("ck_jobs_max_attempts_positive")),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name=op.f("fk_jobs_api_key_id_api_keys")),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_jobs_batch_id_batches")),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_jobs_image_id_images")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    for column in (
        "api_key_id",
        "batch_id",
        "created_at",
        "external_id",
        "image_id",
        "lease_expires_at",
        "mode",
        "model_revision",
        "review_state",
    ):
        op.create_index(op.f(f"ix_jobs_{column}"), "jobs", [column])
    op.create_index("ix_jobs_status_created_at", "jobs", ["status", "created_at"])

    op.create_table(
        "idempotency_keys",
        _id(),
        _id("api_key_id"),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        _id("job_id", nullable=True),
        _id("batch_id", nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=False),
        _ts("created_at"),
        sa.CheckConstraint("job_id IS NULL OR batch_id IS NULL", name=op.f("ck_idempotency_keys_one_target")),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name=op.f("fk_idempotency_keys_api_key_id_api_keys")),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_idempotency_keys_batch_id_batches"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_idempotency_keys_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("api_key_id", "key", name=op.f("uq_idempotency_keys_api_key_id_key")),
    )
    op.create_index(op.f("ix_idempotency_keys_batch_id"), "idempotency_keys", ["batch_id"])
    op.create_index(op.f("ix_idempotency_keys_job_id"), "idempotency_keys", ["job_id"])

    op.create_table(
        "results",
        _id(),
        _id("job_id"),
        _json("document", nullable=False),
        sa.Column("model_base", sa.String(length=512), nullable=False),
        sa.Column("model_adapter", sa.String(length=512), nullable=True),
        sa.Column("model_revision", sa.String(length=128), nullable=False),
        sa.Column("profile", sa.String(length=128), nullable=False),
        sa.Column("untrained", sa.Boolean(), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_results_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
        sa.UniqueConstraint("job_id", name=op.f("uq_results_job_id")),
    )
    op.create_index(op.f("ix_results_model_revision"), "results", ["model_revision"])

    op.create_table(
        "reviews",
        _id(),
        _id("job_id"),
        _id("reviewer_key_id"),
        _enum("dimension", "review_dimension", ("interpretation", "annotation")),
        sa.Column("score", sa.Integer(), nullable=False),
        _enum("decision", "review_decision", DECISIONS),
        sa.Column("comment", sa.Text(), nullable=True),
        _json("corrections"),
        _json("next_phases"),
        sa.Column("group_name", sa.String(length=128), nullable=True),
        _enum("job_mode", "job_mode", JOB_MODES),
        sa.Column("model_revision", sa.String(length=128), nullable=True),
        sa.Column("revision", sa.Integer(), server_default="1", nullable=False),
        _ts("created_at"),
        _ts("amended_at", nullable=True),
        sa.CheckConstraint("revision >= 1", name=op.f("ck_reviews_revision_positive")),
        sa.CheckConstraint("score >= 0 AND score <= 3", name=op.f("ck_reviews_score_range")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_reviews_job_id_jobs")),
        sa.ForeignKeyConstraint(["reviewer_key_id"], ["api_keys.id"], name=op.f("fk_reviews_reviewer_key_id_api_keys")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
        sa.UniqueConstraint(
            "job_id", "reviewer_key_id", "dimension", name=op.f("uq_reviews_job_id_reviewer_key_id_dimension")
        ),
    )
    for column in ("created_at", "job_id", "model_revision", "reviewer_key_id"):
        op.create_index(op.f(f"ix_reviews_{column}"), "reviews", [column])

    op.create_table(
        "review_revisions",
        _id(),
        _id("review_id"),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        _enum("decision", "review_decision", DECISIONS),
        sa.Column("comment", sa.Text(), nullable=True),
        _json("corrections"),
        _json("next_phases"),
        sa.Column("group_name", sa.String(length=128), nullable=True),
        _ts("created_at"),
        _ts("superseded_at"),
        sa.CheckConstraint("score >= 0 AND score <= 3", name=op.f("ck_review_revisions_score_range")),
        sa.ForeignKeyConstraint(
            ["review_id"], ["reviews.id"], name=op.f("fk_review_revisions_review_id_reviews"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_revisions")),
        sa.UniqueConstraint("review_id", "revision", name=op.f("uq_review_revisions_review_id_revision")),
    )


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes and constraints with it.
    for table in (
        "review_revisions",
        "reviews",
        "results",
        "idempotency_keys",
        "jobs",
        "evaluations",
        "batches",
        "audit_events",
        "images",
        "api_keys",
    ):
        op.drop_table(table)
