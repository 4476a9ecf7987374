"""What the routes and middleware share: the app's settings, database sessions, the Celery
app used to enqueue, and the caller of a request."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from celery import Celery
from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from services.pipeline.profile import Profile, load_profile
from shared.db.models import Role
from shared.settings import Settings


@dataclass
class AppContext:
    settings: Settings
    sm: sessionmaker[Session]
    celery: Celery

    @cached_property
    def profile(self) -> Profile:
        return load_profile(self.settings.profile)

    def public_base(self, request: Request) -> str:
        """The gateway's address as callers reach it, for absolute links: FADA_PUBLIC_URL, else
        the request's own (its Host header)."""
        return (self.settings.public_url or str(request.base_url)).rstrip("/")

    def pending_limit(self, caller: Caller) -> int | None:
        """The most jobs this caller's key may have queued or running: its own limit, else
        ``FADA_MAX_PENDING_PER_KEY`` (None: no limit)."""
        return caller.max_pending if caller.max_pending is not None else self.settings.max_pending_per_key


@dataclass(frozen=True)
class Caller:
    """The API key behind a request (the secret itself is never kept)."""

    key_id: str
    role: Role
    name: str
    max_pending: int | None = None  # the key's own limit of jobs queued or running, if it has one
