"""Two workers claiming the same job at once, on separate connections: exactly one wins."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from services.jobs import ClaimedJob, claim, get_job


def test_two_threads_claim_one_job(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    """On PostgreSQL the conditional UPDATE decides; SQLite serialises the two writers."""
    for _ in range(5):
        job_id = submit()
        barrier = threading.Barrier(2)
        results: dict[str, ClaimedJob | None] = {}

        def worker(
            owner: str,
            job_id: str = job_id,
            barrier: threading.Barrier = barrier,
            results: dict[str, ClaimedJob | None] = results,
        ) -> None:
            barrier.wait()
            with sm.begin() as s:
                results[owner] = claim(s, job_id, owner=owner, lease_seconds=60)

        threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        winners = [o for o, r in results.items() if r is not None]
        assert len(results) == 2 and len(winners) == 1
        with sm() as s:
            job = get_job(s, job_id)
            assert job is not None and job.attempts == 1 and job.lease_owner == winners[0]
