"""A query parameter or form field a /v1 route does not take is a 422 problem naming it, not
silently ignored: a misspelt filter would answer with everything, a misspelt ``mode`` would run
the job autonomous, and either would look right."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Job

from .conftest import Keys
from .helpers import NOTHING_STORED, FormPart, assert_problem, enqueued_job_ids, file_part, png, stored


@pytest.mark.parametrize(("path", "params", "unknown", "takes"), [
    ("/v1/jobs", {"stauts": "failed"}, ["stauts"], "batch_id, cursor, external_id, limit, mode, review_state, status"),
    ("/v1/reports/scores", {"group-by": "label", "format": "csv"}, ["group-by"],
     "format, from, group_by, mode, to, tz"),
    ("/v1/reviews/queue", {"limit": "5", "page": "2", "offset": "10"}, ["offset", "page"], "cursor, limit"),
    ("/v1/jobs/00000000-0000-0000-0000-000000000000", {"fields": "status"}, ["fields"], "none"),
])
def test_an_unknown_query_parameter_is_a_422_naming_it(client: TestClient, keys: Keys, path: str,
                                                       params: dict[str, str], unknown: list[str], takes: str) -> None:
    body = assert_problem(client.get(path, params=params, headers=keys.admin.headers), 422, "unknown_query_parameter")
    assert body["unknown"] == unknown
    assert body["detail"] == f"unknown query parameter(s) {', '.join(unknown)}; this route takes: {takes}"


def test_known_parameters_still_work(client: TestClient, keys: Keys) -> None:
    r = client.get("/v1/jobs", params={"status": "failed", "limit": 3}, headers=keys.qa.headers)
    assert r.status_code == 200, r.text
    r = client.get("/v1/reports/scores", params={"group_by": "label", "format": "csv"}, headers=keys.qa.headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text


def test_a_form_field_sent_in_the_query_submits_nothing(client: TestClient, keys: Keys,
                                                        sm: sessionmaker[Session], broker_url: str) -> None:
    """``mode`` is a form field of POST /v1/jobs: in the query it would have been dropped and
    the job run autonomous when the caller asked for a human in the loop."""
    before = enqueued_job_ids(broker_url)
    r = client.post("/v1/jobs", params={"mode": "hitl"}, files=file_part(png()), headers=keys.submitter.headers)
    body = assert_problem(r, 422, "unknown_query_parameter")
    assert body["unknown"] == ["mode"] and body["detail"].endswith("this route takes: none")
    assert stored(sm) == NOTHING_STORED and enqueued_job_ids(broker_url) == before


@pytest.mark.parametrize(("path", "files"), [
    ("/v1/jobs", [("file", ("a.png", png(1), "image/png"))]),
    ("/v1/batches", [("file", ("a.png", png(1), "image/png")), ("file", ("b.png", png(2), "image/png"))]),
])
def test_an_unknown_form_field_submits_nothing(client: TestClient, keys: Keys, sm: sessionmaker[Session],
                                               broker_url: str, path: str, files: list[FormPart]) -> None:
    before = enqueued_job_ids(broker_url)
    r = client.post(path, files=files, data={"mdoe": "hitl", "external_id": "ACC-1"}, headers=keys.submitter.headers)
    body = assert_problem(r, 422, "unknown_form_field")
    assert body["unknown"] == ["mdoe"]
    assert body["detail"] == ("unknown form field(s) mdoe; this route takes: callback_url, external_id, file, frame, "
                              "mode")
    assert stored(sm) == NOTHING_STORED and enqueued_job_ids(broker_url) == before
    # the same request with the field spelt right is taken, as a HITL job
    r = client.post(path, files=files, data={"mode": "hitl", "external_id": "ACC-1"}, headers=keys.submitter.headers)
    assert r.status_code == 202, r.text
    jobs = r.json()["jobs"] if path == "/v1/batches" else [r.json()]
    assert {(j["mode"], j["external_id"]) for j in jobs} == {("hitl", "ACC-1")}


def test_a_single_valued_field_sent_twice_submits_nothing(client: TestClient, keys: Keys, sm: sessionmaker[Session],
                                                          broker_url: str) -> None:
    """Two ``file`` parts to POST /v1/jobs, or two ``mode`` values: the last one used to win,
    the first image dropped unseen. A batch's ``file`` is a list and repeats by design."""
    before = enqueued_job_ids(broker_url)
    two_files = [("file", ("a.png", png(1), "image/png")), ("file", ("b.png", png(2), "image/png"))]
    body = assert_problem(client.post("/v1/jobs", files=two_files, headers=keys.submitter.headers), 422,
                          "repeated_form_field")
    assert body["repeated"] == ["file"]
    modes: list[FormPart] = [("file", ("a.png", png(1), "image/png")), ("mode", (None, "hitl")),
                             ("mode", (None, "autonomous"))]
    body = assert_problem(client.post("/v1/jobs", files=modes, headers=keys.submitter.headers), 422,
                          "repeated_form_field")
    assert body["repeated"] == ["mode"] and "more than once" in body["detail"]
    assert stored(sm) == NOTHING_STORED and enqueued_job_ids(broker_url) == before
    body = assert_problem(client.get("/v1/jobs?status=queued&status=failed", headers=keys.qa.headers), 422,
                          "repeated_query_parameter")
    assert body["repeated"] == ["status"]
    assert client.post("/v1/batches", files=two_files, headers=keys.submitter.headers).status_code == 202


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches"])
def test_a_form_field_sent_empty_submits_nothing(client: TestClient, keys: Keys, sm: sessionmaker[Session],
                                                 broker_url: str, path: str) -> None:
    """``-F mode=$MODE`` with MODE unset sends ``mode=``, which FastAPI reads as "not sent": the
    job ran autonomous when the script meant a human in the loop. Leaving the field out still
    takes the default."""
    before = enqueued_job_ids(broker_url)
    for empty in ({"mode": ""}, {"frame": "", "external_id": "ACC-1"}, {"external_id": "", "mode": "hitl"}):
        body = assert_problem(client.post(path, files=file_part(png()), data=empty, headers=keys.submitter.headers),
                              422, "empty_form_field")
        assert body["empty"] == [name for name, value in sorted(empty.items()) if value == ""]
        assert "leave a field out to take its default" in body["detail"]
    assert stored(sm) == NOTHING_STORED and enqueued_job_ids(broker_url) == before
    r = client.post(path, files=file_part(png()), data={"external_id": "ACC-1"}, headers=keys.submitter.headers)
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("external_id", ["ACC\n0001", "ACC\t1", "ACC\r", "\x1b[31mACC", "ACC\x7f", "ACC\x00",
                                         "ACC\x85", "ACC\x9b", "AB\u202eC", "A\u200bB", "A\u2028B", "\ufeffACC"])
def test_an_external_id_with_a_control_character_is_refused(client: TestClient, keys: Keys,
                                                            sm: sessionmaker[Session], external_id: str) -> None:
    """It would break the CSV reports, the logs and the SR's text downstream; a format character
    (a right-to-left override, a zero-width space) makes one reference look like another."""
    r = client.post("/v1/jobs", files=file_part(png()), data={"external_id": external_id},
                    headers=keys.submitter.headers)
    assert_problem(r, 422, "invalid_request")
    assert stored(sm) == NOTHING_STORED
    ok = "ACC-0001 ÄÖ 胎儿 ^2.25.1"  # printable text of any script passes
    assert client.post("/v1/jobs", files=file_part(png()), data={"external_id": ok},
                       headers=keys.submitter.headers).status_code == 202
    assert [j["external_id"] for j in client.get("/v1/jobs", params={"external_id": ok},
                                                  headers=keys.qa.headers).json()["items"]] == [ok]


def test_the_external_id_filter_still_finds_what_was_stored_before_the_check(client: TestClient, keys: Keys,
                                                                             sm: sessionmaker[Session]) -> None:
    """Jobs stored before external_id refused control characters keep theirs: the list filter
    must still find them (only a NUL, which PostgreSQL cannot hold, is refused there)."""
    r = client.post("/v1/jobs", files=file_part(png()), data={"external_id": "ACC-0001"},
                    headers=keys.submitter.headers)
    with sm.begin() as session:  # as an older release stored it
        session.execute(update(Job).where(Job.id == r.json()["id"]).values(external_id="ACC\t0001"))
    listed = client.get("/v1/jobs", params={"external_id": "ACC\t0001"}, headers=keys.qa.headers)
    assert [j["id"] for j in listed.json()["items"]] == [r.json()["id"]]
    assert_problem(client.get("/v1/jobs", params={"external_id": "ACC\x00"}, headers=keys.qa.headers), 422,
                   "invalid_request")


def test_an_external_id_that_is_not_utf8_is_refused(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    """Starlette reads form text that is not UTF-8 as Latin-1: the accession b"ACC\x80\x81" (a
    Windows-1252 tool's bytes, say) would be stored as other text. Bytes 0x80-0x9F become C1
    control characters there, which the field refuses."""
    body = (b'--b0undary\r\nContent-Disposition: form-data; name="external_id"\r\n\r\nACC\x80\x81\r\n'
            b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + png() + b"\r\n--b0undary--\r\n")
    r = client.post("/v1/jobs", content=body,
                    headers={**keys.submitter.headers, "Content-Type": "multipart/form-data; boundary=b0undary"})
    assert_problem(r, 422, "invalid_request")
    assert stored(sm) == NOTHING_STORED


def test_the_key_is_checked_first_and_health_routes_are_left_alone(client: TestClient) -> None:
    assert_problem(client.get("/v1/jobs", params={"stauts": "x"}), 401, "unauthorized")
    assert client.get("/healthz", params={"probe": "lb"}).status_code == 200


def test_the_openapi_document_says_forms_take_no_other_fields(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for path in ("/v1/jobs", "/v1/batches"):
        ref = document["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
        schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert schema["additionalProperties"] is False and "mode" in schema["properties"]
