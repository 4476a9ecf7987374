"""POST /v1/jobs refusals: each bad input gets a precise problem+json and stores nothing, no
message is enqueued. Body limits are checked both from Content-Length and while a chunked body
streams (through a real uvicorn server: TestClient always sends a Content-Length)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.ingest.builders import dataset_bytes, forge_png_size, sample_dataset

from .conftest import AppFactory, ClientFactory, Keys, Serve
from .helpers import (
    NOTHING_STORED,
    assert_problem,
    enqueued_job_ids,
    file_part,
    multiframe_dicom,
    png,
    stored,
)

MARKER = "SECRET-PATIENT-BYTES-7f3a9c"


@pytest.fixture
def nothing_stored(sm: sessionmaker[Session], broker_url: str) -> Iterator[None]:
    """After the test: no row of any submission table, and no message enqueued."""
    before = enqueued_job_ids(broker_url)
    yield
    assert stored(sm) == NOTHING_STORED
    assert enqueued_job_ids(broker_url) == before


def _dicom_without_pixels() -> bytes:
    ds = sample_dataset("examples_palette.dcm")
    del ds.PixelData
    return dataset_bytes(ds)


BAD_UPLOADS: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("empty", b"", {}, 422, "empty_file"),
    ("text", f"patient notes {MARKER}\n".encode() * 20, {}, 415, "unsupported_media_type"),
    ("pdf", b"%PDF-1.7\n" + MARKER.encode(), {}, 415, "unsupported_media_type"),
    ("png-header-only", png()[:200], {}, 422, "undecodable_image"),
    ("png-truncated", png()[: len(png()) // 2], {}, 422, "undecodable_image"),
    ("png-bomb", forge_png_size(png(), 100_000, 100_000), {}, 422, "too_many_pixels"),
    ("png-50-megapixels", forge_png_size(png(), 10_000, 5_000), {}, 422, "too_many_pixels"),
    ("dicom-no-pixels", _dicom_without_pixels(), {}, 422, "dicom_no_pixel_data"),
    ("dicom-frame-out-of-range", multiframe_dicom(2), {"frame": "2"}, 422, "frame_out_of_range"),
    ("png-frame-1", png(), {"frame": "1"}, 422, "frame_out_of_range"),
    ("external-id-129", png(), {"external_id": "x" * 129}, 422, "invalid_request"),
    ("mode-unknown", png(), {"mode": "fast"}, 422, "invalid_request"),
    ("frame-negative", png(), {"frame": "-1"}, 422, "invalid_request"),
    ("frame-not-a-number", png(), {"frame": "first"}, 422, "invalid_request"),
]


@pytest.mark.usefixtures("nothing_stored")
def test_bad_upload_is_refused(client: TestClient, keys: Keys, sm: sessionmaker[Session],
                               subtests: pytest.Subtests) -> None:
    for name, data, fields, status, code in BAD_UPLOADS:
        with subtests.test(name):
            r = client.post("/v1/jobs", files=file_part(data), data=fields, headers=keys.submitter.headers)
            body = assert_problem(r, status, code)
            assert MARKER not in r.text  # neither the detail nor anything else echoes the upload
            if code == "invalid_request":
                field = next(iter(fields))
                assert field in body["detail"]
                assert [e["loc"][-1] for e in body["errors"]] == [field]
                assert all("input" not in e for e in body["errors"])
            assert stored(sm) == NOTHING_STORED


def test_too_many_pixels_under_a_small_limit(make_client: ClientFactory, keys: Keys,
                                             sm: sessionmaker[Session]) -> None:
    client = make_client(max_pixels=1000)  # png() is 48 x 32 = 1536 pixels
    r = client.post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers)
    assert_problem(r, 422, "too_many_pixels")
    assert stored(sm) == NOTHING_STORED
    ok = make_client(max_pixels=1536).post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers)
    assert ok.status_code == 202  # the limit is inclusive: the control shows the limit, not the image, refused


@pytest.mark.usefixtures("nothing_stored")
def test_missing_file_field(client: TestClient, keys: Keys) -> None:
    r = client.post("/v1/jobs", data={"mode": "hitl"}, headers=keys.submitter.headers)
    body = assert_problem(r, 422, "invalid_request")
    assert "file" in body["detail"]


@pytest.mark.usefixtures("nothing_stored")
def test_not_multipart_at_all(client: TestClient, keys: Keys) -> None:
    r = client.post("/v1/jobs", json={"file": MARKER}, headers=keys.submitter.headers)
    assert_problem(r, 422, "invalid_request")
    assert MARKER not in r.text


def test_a_body_that_does_not_parse_is_a_400_malformed_body(client: TestClient, keys: Keys) -> None:
    r = client.post("/v1/evaluations", content=b'{"name": "\xff\xfe"}',
                    headers={**keys.qa.headers, "Content-Type": "application/json"})
    assert_problem(r, 400, "malformed_body")
    r = client.post("/v1/evaluations", content=b'{"name": ',
                    headers={**keys.qa.headers, "Content-Type": "application/json"})
    assert_problem(r, 422)  # JSON that does not parse: FastAPI's validation answer


@pytest.mark.usefixtures("nothing_stored")
def test_file_sent_as_a_plain_field_is_not_echoed(client: TestClient, keys: Keys) -> None:
    r = client.post("/v1/jobs", data={"file": MARKER * 100}, headers=keys.submitter.headers)
    assert_problem(r, 422, "invalid_request")
    assert MARKER not in r.text


@pytest.mark.usefixtures("nothing_stored")
def test_invalid_field_next_to_a_file_does_not_echo_the_file(client: TestClient, keys: Keys) -> None:
    upload = png() + MARKER.encode()
    r = client.post("/v1/jobs", files=file_part(upload), data={"mode": MARKER}, headers=keys.submitter.headers)
    body = assert_problem(r, 422, "invalid_request")
    assert MARKER not in r.text
    assert body["errors"][0]["loc"] == ["body", "mode"]


@pytest.mark.usefixtures("nothing_stored")
def test_body_over_the_limit_by_content_length(make_client: ClientFactory, keys: Keys) -> None:
    client = make_client(max_body_bytes=8192)
    big = png(width=100, height=100)  # ~30 KB of noise
    assert len(big) > 8192
    r = client.post("/v1/jobs", files=file_part(big), headers=keys.submitter.headers)
    assert r.request.headers["content-length"].isdigit()
    body = assert_problem(r, 413, "body_too_large")
    assert "8192" in body["detail"]


# --- chunked uploads through a real server ---------------------------------------------------


BOUNDARY = "fada-test-boundary-4f1c"


def _chunked_multipart(data: bytes, chunk: int = 1024) -> Iterator[bytes]:
    """A multipart body with one file part, yielded in pieces (so httpx sends it chunked)."""
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"scan.png\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    for start in range(0, len(data), chunk):
        yield data[start:start + chunk]
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _post_chunked(base_url: str, data: bytes, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=20) as http:
        return http.post("/v1/jobs", content=_chunked_multipart(data),
                         headers={**headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def test_chunked_body_over_the_limit_is_refused_while_streaming(make_app: AppFactory, serve: Serve, keys: Keys,
                                                                sm: sessionmaker[Session], broker_url: str) -> None:
    before = enqueued_job_ids(broker_url)
    base_url = serve(make_app(max_body_bytes=8192))
    big = png(width=100, height=100)
    r = _post_chunked(base_url, big, keys.submitter.headers)
    assert "content-length" not in r.request.headers
    assert r.request.headers["transfer-encoding"] == "chunked"
    body = assert_problem(r, 413, "body_too_large")
    assert "8192" in body["detail"]
    assert stored(sm) == NOTHING_STORED
    assert enqueued_job_ids(broker_url) == before


def test_chunked_body_under_the_limit_is_accepted(make_app: AppFactory, serve: Serve, keys: Keys,
                                                  sm: sessionmaker[Session], broker_url: str) -> None:
    """The control for the test above: chunked uploads as such work."""
    base_url = serve(make_app(max_body_bytes=64 * 1024))
    r = _post_chunked(base_url, png(width=100, height=100), keys.submitter.headers)
    assert r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 202, r.text
    assert stored(sm)["jobs"] == 1
    assert r.json()["id"] in enqueued_job_ids(broker_url)


@pytest.mark.usefixtures("nothing_stored")
def test_a_form_body_cut_off_before_its_end_is_a_400_not_a_missing_field(client: TestClient, keys: Keys) -> None:
    head = (b'--zz\r\nContent-Disposition: form-data; name="mode"\r\n\r\nautonomous\r\n'
            b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    whole = head + png() + b"\r\n--zz--\r\n"
    headers = {**keys.submitter.headers, "Content-Type": "multipart/form-data; boundary=zz"}
    for cut in (len(head) + 8, len(head) - 20, len(whole) - 4):  # in the file, in its headers, in the end line
        detail = assert_problem(client.post("/v1/jobs", content=whole[:cut], headers=headers), 400,
                                "malformed_body")["detail"]
        assert "cut off" in detail


def test_a_whole_form_body_with_a_quoted_boundary_and_an_epilogue_is_accepted(client: TestClient,
                                                                               keys: Keys) -> None:
    body = (b'--z z\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + png() + b"\r\n--z z--\r\nan epilogue\r\n")
    r = client.post("/v1/jobs", content=body,
                    headers={**keys.submitter.headers, "Content-Type": 'multipart/form-data; boundary="z z"'})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/x-www-form-urlencoded", "dimension=interpretation&score=1&decision=accept"),
    ("text/plain", '{"dimension": "interpretation", "score": 1, "decision": "accept"}'),
])
def test_a_json_route_sent_another_media_type_says_what_to_send(client: TestClient, keys: Keys, content_type: str,
                                                                 body: str) -> None:
    """curl's -d sends a form by default: "input should be a valid dictionary" left the caller
    guessing; 415 names the header to send."""
    for path in ("/v1/jobs/00000000-0000-4000-8000-000000000000/reviews", "/v1/evaluations"):
        r = client.post(path, content=body, headers={**keys.admin.headers, "Content-Type": content_type})
        problem = assert_problem(r, 415, "unsupported_media_type")
        assert problem["detail"] == f"this route takes a JSON body (Content-Type: application/json), not {content_type}"
    # JSON sent without any Content-Type: told the same (curl -H 'Content-Type:' ...)
    r = client.post("/v1/evaluations", content=b'{"name": "x"}', headers={**keys.admin.headers, "Content-Type": ""})
    assert_problem(r, 415, "unsupported_media_type")
    # a JSON body of the wrong shape is still a 422 naming the field
    r = client.post("/v1/evaluations", json=[1, 2], headers=keys.admin.headers)
    assert_problem(r, 422, "invalid_request")
