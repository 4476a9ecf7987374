"""A PACS bridge's key rotated while it works: through the gateway, the new secret sees the
jobs submitted with the old one, a retry with the same Idempotency-Key under the new secret
gets the original job (not a duplicate), both secrets count as one key in the pending-job limit
and the audit trail (which notes the secret each request presented, and still finds the key by
its old prefix), and the old secret is refused once the overlap is over."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from services.keys import rotate_key, set_max_pending
from shared.db.models import ApiKey
from shared.db.types import utcnow

from .conftest import Keys
from .helpers import assert_problem, file_part, png


def test_a_rotated_key_keeps_its_jobs_retries_audit_and_limit(client: TestClient, keys: Keys,
                                                             sm: sessionmaker[Session]) -> None:
    old = keys.submitter.headers
    with sm.begin() as session:
        set_max_pending(session, keys.submitter.id, 2)
        session.execute(update(ApiKey).where(ApiKey.id == keys.submitter.id)
                        .values(expires_at=utcnow() + timedelta(days=3)))
    first = client.post("/v1/jobs", files=file_part(png(1)), headers={**old, "Idempotency-Key": "acc-1"})
    assert first.status_code == 202, first.text

    with sm.begin() as session:
        new_secret = rotate_key(session, keys.submitter.id, overlap=timedelta(hours=1),
                                lifetime=timedelta(days=90)).secret
    new = {"Authorization": f"Bearer {new_secret}"}

    assert client.get(f"/v1/jobs/{first.json()['id']}", headers=new).status_code == 200
    assert [job["id"] for job in client.get("/v1/jobs", headers=new).json()["items"]] == [first.json()["id"]]
    again = client.post("/v1/jobs", files=file_part(png(1)), headers={**new, "Idempotency-Key": "acc-1"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"], "the original job, no duplicate"
    # One key, one limit: a second job under the old secret fills it, a third under the new one waits.
    assert client.post("/v1/jobs", files=file_part(png(2)), headers=old).status_code == 202
    assert_problem(client.post("/v1/jobs", files=file_part(png(3)), headers=new), 429)

    # The audit trail: one key throughout; which secret each request presented, oldest first.
    events = client.get("/v1/audit", params={"action": "POST /v1/jobs", "key": keys.submitter.secret[:12]},
                        headers=keys.admin.headers).json()["items"][::-1]
    assert {event["api_key"]["id"] for event in events} == {keys.submitter.id}
    assert {event["api_key"]["prefix"] for event in events} == {new_secret[:12]}  # the key as it is now
    assert [event["detail"]["presented_prefix"] for event in events] == [
        keys.submitter.secret[:12], new_secret[:12], keys.submitter.secret[:12], new_secret[:12]]

    left = {s.labels["name"]: (s.labels["key_prefix"], s.value)
            for family in text_string_to_metric_families(client.get("/metrics").text) for s in family.samples
            if s.name == "fada_api_key_expires_in_seconds"}
    assert left["submitter"][0] == new_secret[:12] and left["submitter"][1] > 89 * 86400  # renewed: no alert

    with sm.begin() as session:  # the hour is over
        session.execute(update(ApiKey).where(ApiKey.id == keys.submitter.id)
                        .values(previous_valid_until=utcnow() - timedelta(seconds=1)))
    assert_problem(client.get("/v1/jobs", headers=old), 401, "unauthorized")
    assert client.get("/v1/jobs", headers=new).status_code == 200
