"""One settings object for the whole service, read from ``FADA_*`` environment variables."""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.timezones import zone_named


class Settings(BaseSettings):
    # An empty variable (FADA_MODEL_DIR= in a compose file) means "not set", not "".
    model_config = SettingsConfigDict(env_prefix="FADA_", env_file=None, extra="ignore", env_ignore_empty=True)

    data_dir: Path = Field(Path("./var"), description="where the embedded default keeps its files")

    # The model: either a directory with a fada_model.json manifest (``fada model build-tiny``)
    # or a base (path or hub id) plus an optional adapter (path or hub id).
    model_dir: Path | None = Field(None, description="model directory with a fada_model.json manifest")
    model_base: str | None = Field(None, description="base model: local path or hub id")
    model_adapter: str | None = Field(None, description="LoRA adapter: local path or hub id")
    model_merge: bool = Field(True, description="merge the LoRA adapter into the base weights at load")
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    model_device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    decode_loop: Literal["auto", "dynamic", "static", "graphs"] = Field(
        "auto", description="how decode steps run: graphs (fixed buffers, CUDA graph replays) on CUDA, dynamic "
        "(growing cache) elsewhere; static = fixed buffers without graphs. Same answers either way")
    decode_rows: int = Field(8, ge=1, le=256, description="most answers decoded together in one step (GPU: 16-32 "
                             "on a 24 GB card; each row holds its own KV, see docs/PERFORMANCE.md)")
    warmup: Literal["auto", "on", "off"] = Field(
        "auto", description="one short batch when a worker starts, before its first job: compiles the kernels, "
        "captures the CUDA graphs, sizes the decode buffers for the largest job, and replaces fast "
        "linear-attention kernels that fail on this host by PyTorch's; auto = on CUDA")
    profile: str = Field("fada-skd", description="bundled profile name or path to a profile JSON file")

    max_pixels: int = Field(40_000_000, ge=1,
                            description="largest accepted image frame (width x height of the one frame analysed)")

    # The database that holds the truth (jobs, images, results, reviews, keys, audit).
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite at {data_dir}/fada.db")
    database_echo: bool = Field(False, description="log every SQL statement (debugging only)")

    # The broker only wakes workers up; the database says what is to be done.
    broker_url: str = Field("", description="Celery broker URL; empty means kombu's SQLAlchemy transport over "
                            "SQLite at {data_dir}/broker.db (needs no server)")
    broker_polling_interval: float = Field(0.1, gt=0, description="seconds between polls of the SQLite broker")
    broker_timeout_seconds: float = Field(
        5.0, gt=0, description="longest wait for a network broker to connect or answer; a broker that hangs costs "
        "a submission at most about twice this (the job stays queued in the database for the sweeper)")

    log_format: Literal["text", "json"] = Field(
        "text", description="the gateway's and the workers' log lines: text (time, level, logger, process, "
        "message) or json (one object per line, with the request id, for a log collector)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="the least severe level logged (fada worker --loglevel overrides it for a worker)")

    report_timezone: str = Field("UTC", description="IANA time zone (Europe/Paris) in which QA reports read "
                                 "dates and days when a request names none")

    public_url: str = Field("", description="the gateway's address as callers reach it (absolute links in "
                            "DICOMweb answers); empty means taken from each request's Host header")

    # HTTP gateway limits.
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest accepted request body (413 above)")
    max_batch_files: int = Field(200, ge=1, description="most files in one POST /v1/batches")
    max_pending_per_key: int | None = Field(
        None, ge=1, description="most jobs one API key may have queued or running; a submission past it is "
        "answered 429 with Retry-After (a batch larger than it: 422); unset: no limit")
    pending_retry_after_seconds: int = Field(
        10, ge=1, le=3600, description="the Retry-After of a submission refused for FADA_MAX_PENDING_PER_KEY: about "
        "how long the GPUs take to finish a few jobs")

    # Auth: keys are created with `fada keys create`; this optional secret lets an automated
    # deployment (docker compose) have an admin key without an interactive step.
    bootstrap_admin_key: SecretStr | None = Field(
        None, description="if set, `fada migrate` makes sure an admin key with this secret exists")

    # Jobs, leases and the sweeper (recovery of lost messages and dead workers).
    job_max_attempts: int = Field(3, ge=1, description="attempts before a job fails with max_attempts")
    lease_seconds: float = Field(60.0, gt=0, description="a running job's lease; renewed every third of it")
    sweep_interval_seconds: float = Field(10.0, gt=0, description="how often each worker runs the sweeper")
    queued_grace_seconds: float = Field(300.0, gt=0, description="a queued job untouched this long is re-enqueued")
    hard_time_limit_seconds: float = Field(3600.0, gt=0, description="a running attempt older than this fails")
    image_retention_days: float | None = Field(
        None, gt=0, description="delete a job's image pixels this many days after the job finished (results, "
                                "sizes, sha256 and DICOM UIDs stay); unset: keep them")
    # Days-long deadlines need no 10-second clock: a retention pass every few minutes.
    retention_interval_seconds: float = Field(300.0, gt=0, description="how often each worker runs the "
                                              "retention pass, when FADA_IMAGE_RETENTION_DAYS is set")
    worker_heartbeat_seconds: float = Field(10.0, gt=0, description="worker heartbeat period (readiness)")
    batch_size: int = Field(1, ge=1, le=64, description="jobs a worker claims and runs together (GPU: 8 or more; "
                            "see docs/PERFORMANCE.md)")
    batch_linger_seconds: float = Field(0.0, ge=0, le=5, description="how long a woken worker waits for more ready "
                                        "jobs to fill a batch")

    # Notifications (webhooks, SR push to a PACS): sent by every worker's main process.
    notify_interval_seconds: float = Field(1.0, gt=0, description="how often workers look for events to send")
    notify_max_attempts: int = Field(8, ge=1, description="tries per delivery before it is marked failed")
    notify_retry_base_seconds: float = Field(
        5.0, gt=0, description="first retry delay; each later one is 4 times longer (capped, with jitter)")
    notify_retry_max_seconds: float = Field(3600.0, gt=0, description="longest delay between two tries")
    notify_timeout_seconds: float = Field(10.0, gt=0, description="per-try HTTP timeout")
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list, description='hosts webhooks may go to (JSON list; ".example.org" allows its '
        "subdomains); empty allows any. Set it wherever callers choose their own callback URLs")
    secrets_key: SecretStr | None = Field(
        None, description="Fernet keys sealing webhook signing secrets in the database, comma-separated, the "
        "newest first (`fada keys secrets-key` makes one); unset: a key file under data_dir, made on first "
        "use. Every process (gateway, workers, CLI) needs the same keys")
    pacs_stow_url: str = Field("", description="STOW-RS URL of a PACS (…/dicom-web/studies) that receives every "
                               "DICOM job's result as an SR; empty: none")
    pacs_authorization: SecretStr | None = Field(None, description="Authorization header value for the PACS")

    @field_validator("secrets_key")
    @classmethod
    def _fernet_keys(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked here so a mistyped key stops the process at start, not each delivery later.
        for part in (value.get_secret_value().split(",") if value else []):
            try:
                ok = len(base64.urlsafe_b64decode(part.strip().encode())) == 32
            except (binascii.Error, ValueError):
                ok = False
            if not ok:
                raise ValueError("each key must be 32 url-safe base64-encoded bytes "
                                 "(`fada keys secrets-key` makes one)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_capitals(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("report_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        # Checked here so a mistyped zone stops the gateway at start, not every report later.
        zone_named(value)
        return value

    @model_validator(mode="after")
    def _defaults_under_data_dir(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir}/fada.db"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.data_dir}/broker.db"
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
