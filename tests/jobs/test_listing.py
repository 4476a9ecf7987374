"""Listing jobs: filters, newest first, keyset pagination with an opaque cursor."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import InvalidCursor, cancel, list_jobs
from shared.db.models import Job
from shared.db.types import utcnow


def test_pagination_gives_every_job_once_newest_first(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    ids = [submit() for _ in range(7)]
    base = utcnow()
    with sm.begin() as s:
        # distinct times, plus a tie between two jobs that the id must break
        for i, job_id in enumerate(ids):
            at = base + timedelta(seconds=min(i, 5))
            s.execute(update(Job).where(Job.id == job_id).values(created_at=at))
    expected = sorted(ids, key=lambda j: (min(ids.index(j), 5), j), reverse=True)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    with sm() as s:
        while True:
            page = list_jobs(s, limit=3, cursor=cursor)
            pages += 1
            seen.extend(job.id for job in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    assert pages == 3
    assert seen == expected and len(set(seen)) == 7


def test_filters(sm: sessionmaker[Session], submit: Callable[..., str], api_key_id: str) -> None:
    a = submit(mode="hitl", external_id="X")
    b = submit()
    with sm.begin() as s:
        cancel(s, b)
    with sm() as s:
        assert [j.id for j in list_jobs(s, mode="hitl").items] == [a]
        assert [j.id for j in list_jobs(s, status="canceled").items] == [b]
        assert [j.id for j in list_jobs(s, external_id="X").items] == [a]
        assert [j.id for j in list_jobs(s, review_state="pending").items] == [a]
        assert {j.id for j in list_jobs(s, api_key_id=api_key_id).items} == {a, b}
        assert list_jobs(s, api_key_id="nobody").items == []
        assert list_jobs(s, limit=2).next_cursor is None


@pytest.mark.parametrize("cursor", ["not base64!", "", "e30", "eyJ0IjoieCIsImlkIjoxfQ", "////"])
def test_malformed_cursor_raises(sm: sessionmaker[Session], cursor: str) -> None:
    with sm() as s, pytest.raises(InvalidCursor):
        list_jobs(s, cursor=cursor)
