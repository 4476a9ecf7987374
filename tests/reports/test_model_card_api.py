"""The model card's HITL table, reproduced end to end through the HTTP API: 49 hitl jobs are
submitted, each pauses for review, a reviewer scores the interpretation (choosing the next
phase), the job finishes, the reviewer scores the annotations, and QA pulls the report.

The worker's two stages are the same service calls the worker makes (claim + complete); the
Celery path itself is covered by tests/worker and tests/reviews/test_end_to_end.py."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.api.conftest import Keys
from tests.api.helpers import file_part, png, succeed_job

INTERPRETATION = [1] * 36 + [2] * 12 + [3] * 1  # MODEL_FACTS.md: HITL raw distribution
ANNOTATION = [1] * 31 + [2] * 14 + [3] * 4


def test_hitl_table_of_the_model_card_through_the_api(client: TestClient, keys: Keys,
                                                     sm: sessionmaker[Session]) -> None:
    reviewer, qa = keys.reviewer.headers, keys.qa.headers
    for interpretation, annotation in zip(INTERPRETATION, ANNOTATION, strict=True):
        r = client.post("/v1/jobs", files=file_part(png()), data={"mode": "hitl"}, headers=keys.submitter.headers)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        succeed_job(sm, job_id, awaiting_review=True)  # worker, first stage: interpret + classify
        r = client.post(f"/v1/jobs/{job_id}/reviews", headers=reviewer, json={
            "dimension": "interpretation", "score": interpretation, "decision": "accept", "next_phases": ["detect"]})
        assert r.status_code == 201, r.text
        assert client.get(f"/v1/jobs/{job_id}", headers=qa).json()["status"] == "queued"  # resumed
        succeed_job(sm, job_id)  # worker, second stage: the chosen phase
        r = client.post(f"/v1/jobs/{job_id}/reviews", headers=reviewer, json={
            "dimension": "annotation", "score": annotation, "decision": "accept" if annotation == 1 else "correct"})
        assert r.status_code == 201, r.text
        assert client.get(f"/v1/jobs/{job_id}", headers=qa).json()["review_state"] == "reviewed"

    assert client.get("/v1/reviews/queue", headers=reviewer).json()["items"] == []
    report = client.get("/v1/reports/scores", params={"mode": "hitl"}, headers=qa)
    assert report.status_code == 200, report.text
    [group] = report.json()["groups"]
    assert group["cases"] == 49
    interp, annot = group["interpretation"], group["annotation"]
    assert (interp["n"], interp["mean"], round(100 * interp["perfect_rate"], 1)) == (49, 1.286, 73.5)
    assert (annot["n"], annot["mean"], round(100 * annot["perfect_rate"], 1)) == (49, 1.449, 63.3)
    assert interp["distribution"] == {"0": 0, "1": 36, "2": 12, "3": 1}
    assert annot["distribution"] == {"0": 0, "1": 31, "2": 14, "3": 4}
    assert group["overall_mean"] == 1.368
    # QA may read the report; the reviewer may not
    assert client.get("/v1/reports/scores", headers=reviewer).status_code == 403
