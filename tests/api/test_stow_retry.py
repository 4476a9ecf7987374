"""STOW-RS keys each instance by its SOP Instance UID, so a PACS cannot pick a new
Idempotency-Key to retry: pushing an instance whose job failed or was canceled again makes a
new job; pushing one whose job is queued, running or done answers with that job."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import cancel, fail
from shared.db.models import Job, JobStatus

from .conftest import Keys
from .helpers import OWNER, run_job, succeed_job


def _instance(uid: str, *, note: str = "") -> bytes:
    ds = pydicom.dcmread(str(get_testdata_file("examples_palette.dcm")))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(uid)
    if note:
        ds.ImageComments = note  # other content, same instance UID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _push(client: TestClient, keys: Keys, data: bytes) -> tuple[int, pydicom.Dataset]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    r = client.post("/dicomweb/studies", content=body, headers={
        **keys.submitter.headers, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    return r.status_code, pydicom.Dataset.from_json(r.json())


def _job_of(answer: pydicom.Dataset) -> str:
    return str(answer.ReferencedSOPSequence[0].RetrieveURL).rsplit("/", 1)[1]


def _statuses(sm: sessionmaker[Session], uid: str) -> list[JobStatus]:
    with sm() as session:
        return list(session.scalars(select(Job.status).where(Job.external_id == uid).order_by(Job.created_at)))


def _fail(sm: sessionmaker[Session], job_id: str) -> None:
    run_job(sm, job_id)
    with sm.begin() as session:
        assert fail(session, job_id, OWNER, "max_attempts", "the model crashed three times")


def _cancel(sm: sessionmaker[Session], job_id: str) -> None:
    with sm.begin() as session:
        assert cancel(session, job_id)


@pytest.mark.parametrize(("end", "ended"), [(_fail, JobStatus.failed), (_cancel, JobStatus.canceled)],
                         ids=["failed", "canceled"])
def test_pushing_an_instance_whose_job_ended_without_a_result_makes_a_new_job(
        client: TestClient, keys: Keys, sm: sessionmaker[Session], end: Callable[[sessionmaker[Session], str], None],
        ended: JobStatus) -> None:
    uid = generate_uid()
    status, answer = _push(client, keys, _instance(uid))
    assert status == 200
    first = _job_of(answer)
    end(sm, first)

    status, answer = _push(client, keys, _instance(uid))
    assert status == 200
    second = _job_of(answer)
    assert second != first  # a retry, not the old job's error again
    assert _statuses(sm, uid) == [ended, JobStatus.queued]  # the old job keeps its record

    status, answer = _push(client, keys, _instance(uid))  # the new job is queued: a replay
    assert (status, _job_of(answer)) == (200, second)
    assert _statuses(sm, uid) == [ended, JobStatus.queued]


def test_pushing_an_instance_whose_job_succeeded_answers_with_that_job(client: TestClient, keys: Keys,
                                                                      sm: sessionmaker[Session]) -> None:
    uid = generate_uid()
    first = _job_of(_push(client, keys, _instance(uid))[1])
    succeed_job(sm, first)
    status, answer = _push(client, keys, _instance(uid))
    assert (status, _job_of(answer)) == (200, first)
    status, answer = _push(client, keys, _instance(uid, note="edited"))  # same UID, other content
    assert status == 409 and answer.FailedSOPSequence[0].FailureReason == 0xA900
    assert _statuses(sm, uid) == [JobStatus.succeeded]


def test_a_failed_instance_sent_again_with_other_content_is_taken(client: TestClient, keys: Keys,
                                                                  sm: sessionmaker[Session]) -> None:
    """After a failure the sender may well have fixed the object; its new content is analysed."""
    uid = generate_uid()
    first = _job_of(_push(client, keys, _instance(uid))[1])
    _fail(sm, first)
    status, answer = _push(client, keys, _instance(uid, note="re-exported"))
    assert status == 200 and _job_of(answer) != first
    assert _statuses(sm, uid) == [JobStatus.failed, JobStatus.queued]
