"""What the routes and middleware share: the app's settings, database sessions, the Celery
app used to enqueue, and the caller of a request."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from celery import Celery
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


@dataclass(frozen=True)
class Caller:
    """The API key behind a request (the secret itself is never kept)."""

    key_id: str
    role: Role
    name: str
