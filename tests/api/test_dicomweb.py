"""STOW-RS (``POST /dicomweb/studies``) through a real uvicorn server, called by the
``dicomweb-client`` library as a PACS bridge would, and by hand for the failure answers."""

from __future__ import annotations

import io
import uuid
import warnings
import zlib
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from prometheus_client.parser import text_string_to_metric_families
from pydicom.data import get_testdata_file
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Image, Job

from .conftest import AppFactory, Keys, Serve
from .helpers import assert_problem

REFERENCED, FAILED = "00081199", "00081198"


def _ultrasound(sop_instance_uid: str | None = None) -> pydicom.Dataset:
    ds = pydicom.dcmread(str(get_testdata_file("examples_palette.dcm")))
    if sop_instance_uid:
        ds.SOPInstanceUID = sop_instance_uid
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    return ds


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _no_pixels() -> pydicom.Dataset:
    ds = _ultrasound(generate_uid())
    del ds.PixelData
    return ds


def _related(*parts: bytes, part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: " + part_type.encode() + b"\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _jobs(sm: sessionmaker[Session]) -> list[Job]:
    with sm() as session:
        return list(session.scalars(select(Job).order_by(Job.created_at)))


def _submitted(base: str) -> float:
    """The gateway's ``fada_jobs_submitted_total``, all modes."""
    families = text_string_to_metric_families(httpx.get(f"{base}/metrics").text)
    return sum(s.value for f in families for s in f.samples if s.name == "fada_jobs_submitted_total")


def test_dicomweb_client_stores_a_study_each_instance_a_job(make_app: AppFactory, serve: Serve, keys: Keys,
                                                            sm: sessionmaker[Session]) -> None:
    app = make_app()
    base = serve(app)
    app.state.ctx.settings.public_url = base  # links in the answer must reach this very server
    client = DICOMwebClient(url=f"{base}/dicomweb", headers=keys.submitter.headers)
    first, second = _ultrasound(generate_uid()), _ultrasound(generate_uid())
    before = _submitted(base)
    answer = client.store_instances(datasets=[first, second])
    assert _submitted(base) - before == 2  # STOW-RS jobs count as submitted, as uploads do
    stored = answer.ReferencedSOPSequence
    assert [item.ReferencedSOPInstanceUID for item in stored] == [first.SOPInstanceUID, second.SOPInstanceUID]
    assert all(item.ReferencedSOPClassUID == first.SOPClassUID for item in stored)
    jobs = _jobs(sm)
    assert sorted(j.external_id or "" for j in jobs) == sorted([first.SOPInstanceUID, second.SOPInstanceUID])
    for item in stored:  # each instance names its job
        r = httpx.get(str(item.RetrieveURL), headers=keys.submitter.headers)
        assert r.status_code == 200 and r.json()["external_id"] == item.ReferencedSOPInstanceUID

    # a PACS pushing the same instance again gets the same job, not a second one
    again = client.store_instances(datasets=[first])
    assert again.ReferencedSOPSequence[0].RetrieveURL == stored[0].RetrieveURL
    assert len(_jobs(sm)) == 2
    assert _submitted(base) - before == 2  # a replay is not a new job


def test_some_failed_is_202_none_stored_is_409(make_app: AppFactory, serve: Serve, keys: Keys,
                                               sm: sessionmaker[Session]) -> None:
    base = serve(make_app())
    url, auth = f"{base}/dicomweb/studies", keys.submitter.headers
    good, bad = _ultrasound(generate_uid()), _no_pixels()
    body, ctype = _related(_bytes(good), _bytes(bad), b"not dicom at all")
    r = httpx.post(url, content=body, headers={**auth, "Content-Type": ctype})
    assert r.status_code == 202 and r.headers["content-type"].startswith("application/dicom+json")
    answer = pydicom.Dataset.from_json(r.json())
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [good.SOPInstanceUID]
    failed = answer.FailedSOPSequence
    assert [i.get("ReferencedSOPInstanceUID") or None for i in failed] == [bad.SOPInstanceUID, None]
    assert [i.FailureReason for i in failed] == [0xC000, 0xC000]
    assert len(_jobs(sm)) == 1

    body, ctype = _related(_bytes(_no_pixels()))
    r = httpx.post(url, content=body, headers={**auth, "Content-Type": ctype})
    assert r.status_code == 409
    assert len(pydicom.Dataset.from_json(r.json()).FailedSOPSequence) == 1
    assert len(_jobs(sm)) == 1


def test_wrong_media_type_and_auth(make_app: AppFactory, serve: Serve, keys: Keys) -> None:
    base = serve(make_app())
    url = f"{base}/dicomweb/studies"
    assert_problem(httpx.post(url, content=b"{}", headers={**keys.submitter.headers,
                                                         "Content-Type": "application/json"}),
                   415, "unsupported_media_type")
    body, ctype = _related(_bytes(_ultrasound(generate_uid())))
    assert httpx.post(url, content=body, headers={"Content-Type": ctype}).status_code == 401
    assert httpx.post(url, content=body, headers={**keys.reviewer.headers, "Content-Type": ctype}).status_code == 403


@pytest.mark.parametrize(("body", "ctype", "status"), [
    (b"--BB\r\nno colon here\r\n\r\nxx\r\n--BB--\r\n", "BB", 400),
    (b"--BBxx", "BB", 400),
    (b"--x\r\n\r\n--x--\r\n", "\u00e9", 415),
])
def test_a_body_that_is_not_the_multipart_it_claims_is_a_problem_not_a_500(
        make_app: AppFactory, serve: Serve, keys: Keys, sm: sessionmaker[Session], body: bytes, ctype: str,
        status: int) -> None:
    base = serve(make_app())
    headers = {**keys.submitter.headers,
               "Content-Type": f'multipart/related; type="application/dicom"; boundary={ctype}'.encode()}
    r = httpx.post(f"{base}/dicomweb/studies", content=body, headers=headers)  # type: ignore[arg-type]
    assert_problem(r, status)
    assert _jobs(sm) == []


def test_damaged_parts_fail_alone_and_a_deflate_bomb_is_never_inflated_whole(
        make_app: AppFactory, serve: Serve, keys: Keys, sm: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts pydicom cannot even probe (truncated inside an element, a corrupt deflate stream)
    get their failure reason in the answer, not a 500 for the whole push; the UIDs come from the
    File Meta group, so a deflated body is only ever inflated by the ingest's bounded check."""
    base = serve(make_app(max_pixels=400_000))  # the bomb inflates past its bound (6 B a pixel + 16 MiB)
    url, auth = f"{base}/dicomweb/studies", keys.submitter.headers
    good = _ultrasound(generate_uid())
    truncated = Path(str(get_testdata_file("MR_small.dcm"))).read_bytes()[:141]
    corrupt = Path(str(get_testdata_file("image_dfl.dcm"))).read_bytes()[:400]
    bomb = _ultrasound(generate_uid())
    bomb.add_new(0x00090010, "LO", "FADA TEST")
    bomb.add_new(0x00091010, "OB", bytes(40_000_000))  # 40 MB of zeros deflate to ~40 KB
    bomb.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    monkeypatch.setattr(zlib, "decompress", _refuse_to_inflate_at_once)  # pydicom's way: one unbounded call
    body, ctype = _related(_bytes(good), truncated, corrupt, _bytes(bomb))
    r = httpx.post(url, content=body, headers={**auth, "Content-Type": ctype}, timeout=60)
    assert r.status_code == 202, r.text
    answer = pydicom.Dataset.from_json(r.json())
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [good.SOPInstanceUID]
    failed = answer.FailedSOPSequence
    assert [i.FailureReason for i in failed] == [0xC000] * 3
    assert failed[2].ReferencedSOPInstanceUID == bomb.SOPInstanceUID
    assert "too_many_pixels" in failed[2][0x0040A160].value
    assert len(_jobs(sm)) == 1


def _refuse_to_inflate_at_once(*_: object, **__: object) -> bytes:
    raise AssertionError("a deflated dataset was inflated in one unbounded call")


def test_header_values_longer_than_their_columns_store_and_answer(make_app: AppFactory, serve: Serve, keys: Keys,
                                                                  sm: sessionmaker[Session]) -> None:
    """A Modality of 17 characters, a model name with a NUL, a Study UID of 65: PostgreSQL
    refused those rows with a 500 after the push's other instances were stored."""
    base = serve(make_app())
    url, auth = f"{base}/dicomweb/studies", keys.submitter.headers
    good, odd = _ultrasound(generate_uid()), _ultrasound(generate_uid())
    odd.Modality, odd.ManufacturerModelName, odd.StudyInstanceUID = "US-WITH-A-LONG-CODE", "a\x00b", "1." * 32 + "12"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        body, ctype = _related(_bytes(good), _bytes(odd))
    r = httpx.post(url, content=body, headers={**auth, "Content-Type": ctype})
    assert r.status_code == 200, r.text
    assert sorted(j.external_id or "" for j in _jobs(sm)) == sorted([good.SOPInstanceUID, odd.SOPInstanceUID])
    with sm() as session:
        kept = session.scalars(select(Image).where(Image.dicom_sop_instance_uid == odd.SOPInstanceUID)).one()
        assert (kept.dicom_modality, kept.dicom_manufacturer_model, kept.dicom_study_instance_uid) == (
            "US-WITH-A-LONG-C", "ab", None)


def test_a_part_whose_file_meta_lacks_its_uids_is_still_stored(make_app: AppFactory, serve: Serve, keys: Keys,
                                                              sm: sessionmaker[Session]) -> None:
    """Some writers leave MediaStorageSOPInstanceUID out of the File Meta group: the dataset's
    own SOP Instance UID is read instead (the part is not deflated, so nothing is inflated)."""
    base = serve(make_app())
    ds = _ultrasound(generate_uid())
    del ds.file_meta.MediaStorageSOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    body, ctype = _related(buf.getvalue())
    r = httpx.post(f"{base}/dicomweb/studies", content=body, headers={**keys.submitter.headers, "Content-Type": ctype})
    assert r.status_code == 200, r.text
    assert [j.external_id for j in _jobs(sm)] == [ds.SOPInstanceUID]


def test_a_cine_is_analysed_at_its_representative_frame(make_app: AppFactory, serve: Serve, keys: Keys,
                                                        sm: sessionmaker[Session]) -> None:
    """A PACS pushes whole instances and cannot ask for a frame: the job reads the frame the cine
    names (Representative Frame Number, 1-based), or its first when it names none."""
    base = serve(make_app())
    named = pydicom.dcmread(str(get_testdata_file("examples_ybr_color.dcm")))  # a 30-frame ultrasound cine
    named.SOPInstanceUID = named.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    named.RepresentativeFrameNumber = 12
    unnamed = pydicom.dcmread(str(get_testdata_file("examples_ybr_color.dcm")))
    unnamed.SOPInstanceUID = unnamed.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    assert "RepresentativeFrameNumber" not in unnamed
    body, ctype = _related(_bytes(named), _bytes(unnamed))
    r = httpx.post(f"{base}/dicomweb/studies", content=body, headers={**keys.submitter.headers, "Content-Type": ctype})
    assert r.status_code == 200, r.text
    with sm() as session:
        frames = {job.external_id: (image.frame, image.frame_count) for job, image in
                  session.execute(select(Job, Image).join(Image, Image.id == Job.image_id))}
    assert frames == {named.SOPInstanceUID: (11, 30), unnamed.SOPInstanceUID: (0, 30)}
