"""Admission control (FADA_MAX_PENDING_PER_KEY) through the gateway, on PostgreSQL and SQLite:
a key past its limit of queued and running jobs is answered 429 with Retry-After and nothing
is stored; a batch that could never fit is 422; replays, other keys and jobs awaiting review
are not held back; concurrent submissions never pass the limit; STOW-RS refuses the extra
instances with reason A700 (503 when none was stored)."""

from __future__ import annotations

import threading

import httpx
import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.keys import set_max_pending
from shared.db.models import Job

from .conftest import AppFactory, ClientFactory, Keys, Serve
from .helpers import HTTPResponse, assert_problem, file_part, png, succeed_job
from .test_dicomweb import _bytes, _related, _ultrasound


def _count(sm: sessionmaker[Session]) -> int:
    with sm() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def test_a_key_at_its_limit_waits_and_nothing_is_stored(make_client: ClientFactory, keys: Keys,
                                                       sm: sessionmaker[Session]) -> None:
    client = make_client(max_pending_per_key=2)
    auth = keys.submitter.headers

    def submit(seed: int, **headers: str) -> HTTPResponse:
        return client.post("/v1/jobs", files=file_part(png(seed)), headers={**auth, **headers})

    first = submit(1, **{"Idempotency-Key": "scan-1"})
    assert first.status_code == 202 and submit(2).status_code == 202
    refused = submit(3)
    body = assert_problem(refused, 429, "too_many_pending_jobs")
    assert refused.headers["Retry-After"] == "10"
    assert (body["pending"], body["limit"]) == (2, 2) and "2 jobs queued or running" in body["detail"]
    assert _count(sm) == 2  # the refused image left nothing behind
    # the limit is looked at before the image is decoded: refusing costs no decode
    assert_problem(client.post("/v1/jobs", files=file_part(b"not an image"), headers=auth), 429)
    # a retry of an accepted submission is its answer again, not a refusal
    replay = submit(1, **{"Idempotency-Key": "scan-1"})
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    # another key has its own budget
    other = client.post("/v1/jobs", files=file_part(png(4)), headers=keys.other_submitter.headers)
    assert other.status_code == 202
    # a finished job frees its place; one awaiting review holds none (it waits for a person)
    succeed_job(sm, first.json()["id"])
    hitl = client.post("/v1/jobs", files=file_part(png(5)), data={"mode": "hitl"}, headers=auth)
    assert hitl.status_code == 202
    assert_problem(submit(6), 429, "too_many_pending_jobs")
    succeed_job(sm, hitl.json()["id"], awaiting_review=True)
    assert submit(6).status_code == 202


def test_a_batch_counts_each_image_and_one_larger_than_the_limit_is_422(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session]) -> None:
    client = make_client(max_pending_per_key=2)
    auth = keys.submitter.headers

    def batch(*seeds: int) -> HTTPResponse:
        return client.post("/v1/batches", files=[("file", (f"{s}.png", png(s), "image/png")) for s in seeds],
                           headers=auth)

    never = assert_problem(batch(1, 2, 3), 422, "batch_exceeds_pending_limit")
    assert never["limit"] == 2 and "Retry-After" not in batch(1, 2, 3).headers
    replay = client.post("/v1/batches", files=[("file", ("7.png", png(7), "image/png"))],
                         headers={**auth, "Idempotency-Key": "b-1"})
    assert replay.status_code == 202
    assert_problem(batch(8, 9), 429, "too_many_pending_jobs")  # 1 pending + 2 > 2
    again = client.post("/v1/batches", files=[("file", ("7.png", png(7), "image/png"))],
                        headers={**auth, "Idempotency-Key": "b-1"})
    assert again.status_code == 200 and again.json()["id"] == replay.json()["id"]  # a replay is never held back
    succeed_job(sm, replay.json()["jobs"][0]["id"])
    assert client.post("/v1/jobs", files=file_part(png(4)), headers=auth).status_code == 202
    assert_problem(batch(5, 6), 429, "too_many_pending_jobs")
    assert _count(sm) == 2  # the replayed batch's job and the single one
    assert batch(5).status_code == 202 and _count(sm) == 3


def test_concurrent_submissions_never_pass_the_limit(make_app: AppFactory, serve: Serve, keys: Keys,
                                                     sm: sessionmaker[Session]) -> None:
    base = serve(make_app(max_pending_per_key=3))
    start = threading.Barrier(8)
    answers: list[int] = []

    def one(seed: int) -> None:
        start.wait()
        r = httpx.post(f"{base}/v1/jobs", files=file_part(png(seed)), headers=keys.submitter.headers, timeout=60)
        answers.append(r.status_code)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [202] * 3 + [429] * 5
    assert _count(sm) == 3


def test_stow_refuses_the_instances_past_the_limit_with_reason_a700(make_app: AppFactory, serve: Serve, keys: Keys,
                                                                    sm: sessionmaker[Session]) -> None:
    base = serve(make_app(max_pending_per_key=1))
    url, auth = f"{base}/dicomweb/studies", keys.submitter.headers
    first, second = _ultrasound(generate_uid()), _ultrasound(generate_uid())
    body, ctype = _related(_bytes(first), _bytes(second))
    r = httpx.post(url, content=body, headers={**auth, "Content-Type": ctype})
    assert r.status_code == 202
    answer = pydicom.Dataset.from_json(r.json())
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [first.SOPInstanceUID]
    [failed] = answer.FailedSOPSequence
    assert (failed.ReferencedSOPInstanceUID, failed.FailureReason) == (second.SOPInstanceUID, 0xA700)
    # nothing stored at all, only for the limit: 503, which a PACS retries after Retry-After
    body, ctype = _related(_bytes(second))
    busy = httpx.post(url, content=body, headers={**auth, "Content-Type": ctype})
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "10"
    assert [i.FailureReason for i in pydicom.Dataset.from_json(busy.json()).FailedSOPSequence] == [0xA700]
    assert _count(sm) == 1


def test_a_key_s_own_limit_wins_over_the_service_wide_one(make_client: ClientFactory, keys: Keys,
                                                          sm: sessionmaker[Session]) -> None:
    with sm.begin() as session:
        set_max_pending(session, keys.submitter.id, 1)  # a batch script, held tighter
        set_max_pending(session, keys.other_submitter.id, 3)  # a PACS bridge, given more
    client = make_client(max_pending_per_key=2)

    def submit(key: str, seed: int) -> int:
        headers = {"submitter": keys.submitter.headers, "other": keys.other_submitter.headers}[key]
        return client.post("/v1/jobs", files=file_part(png(seed)), headers=headers).status_code

    assert [submit("submitter", s) for s in (1, 2)] == [202, 429]
    assert [submit("other", s) for s in (3, 4, 5, 6)] == [202, 202, 202, 429]
    with sm.begin() as session:  # back to the service-wide limit
        set_max_pending(session, keys.submitter.id, None)
    assert [submit("submitter", s) for s in (7, 8)] == [202, 429]
    # with no service-wide limit, a key's own limit still holds
    unlimited = make_client()
    assert unlimited.post("/v1/jobs", files=file_part(png(9)), headers=keys.other_submitter.headers).status_code == 429
