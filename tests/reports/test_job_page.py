"""``GET /v1/reports/jobs/{id}.html``: one job as the sonographer or QA reads it in a browser.

The page carries its own picture (a ``data:`` PNG): the test decodes it and checks it is the
overlay the API serves, byte for byte; the markup holds the interpretation, phases and
reviews, escaped; Chromium renders it with the picture visible."""

from __future__ import annotations

import base64
import io
import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import complete, purge_images
from shared.schemas.results import (
    Classification,
    Detection,
    ImageInfo,
    Mapping,
    ModelInfo,
    PhaseReport,
    ResultDocument,
)
from tests.api.conftest import Keys
from tests.api.helpers import OWNER, assert_problem, category_id, file_part, run_job

from .test_browser_sign_in import basic, challenges
from .test_html_page import chromium, near, screenshot

W, H = 160, 120
HOSTILE = '<script>alert("x")</script>'


def _upload() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (W, H), (40, 40, 40)).save(out, format="PNG")
    return out.getvalue()


def _document() -> ResultDocument:
    return ResultDocument(
        status="succeeded",
        model=ModelInfo(base="b", adapter=None, revision="rev-page", profile="fada-skd", untrained=True),
        image=ImageInfo(width=W, height=H, sha256="0" * 64, format="png", pixel_spacing_mm=(0.2, 0.2)),
        interpretation={"imaging_plane": "transthalamic plane", "normality_assessment": HOSTILE},
        classification=Classification(label="BPD_PLANE"),
        mapping=Mapping(detect_classes=["Brain", "CSP", "LV"], segment_classes=["Brain"], tier="P1"),
        detections=[Detection(id=1, label="CSP", category_id=category_id("CSP"), bbox=(30, 30, 50, 40), score=0.8)],
        phases={"interpret": PhaseReport(status="ok", latency_ms=812.0),
                "detect": PhaseReport(status="ok", latency_ms=95.0, dropped=["item 2 (LV): zero-area box"]),
                "segment": PhaseReport(status="invalid_output", detail="not JSON")},
    )


def _job(client: TestClient, keys: Keys, sm: sessionmaker[Session], *, finish: bool = True) -> str:
    posted = client.post("/v1/jobs", files=file_part(_upload()), data={"external_id": "ACC-77"},
                         headers=keys.submitter.headers)
    job_id: str = posted.json()["id"]
    if finish:
        run_job(sm, job_id)
        with sm.begin() as session:
            assert complete(session, job_id, OWNER, _document())
    return job_id


def _picture(page: str) -> bytes:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(found) == 1, "one inline picture"
    return base64.b64decode(found[0])


def test_the_page_shows_the_job_as_its_api_does(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    job_id = _job(client, keys, sm)
    r = client.get(f"/v1/reports/jobs/{job_id}.html", headers=basic(keys.reviewer.secret))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src" not in r.headers["content-security-policy"] and "img-src data:" in r.headers[
        "content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    page = r.text
    overlay = client.get(f"/v1/jobs/{job_id}/overlay.png", headers=keys.reviewer.headers)
    assert _picture(page) == overlay.content  # the same drawing the API serves
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    for shown in ("ACC-77", "BPD_PLANE", "transthalamic plane", "tier P1", "Untrained model", "rev-page",
                  "item 2 (LV): zero-area box", "invalid_output", "not JSON", "0.2 × 0.2 mm", "Not reviewed yet"):
        assert shown in page, shown


def test_who_may_open_it(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    job_id = _job(client, keys, sm)
    path = f"/v1/reports/jobs/{job_id}.html"
    for key in (keys.qa, keys.reviewer, keys.admin):
        assert client.get(path, headers=basic(key.secret)).status_code == 200
        assert client.get(path, headers=key.headers).status_code == 200
    assert_problem(client.get(path, headers=basic(keys.submitter.secret)), 403, "forbidden")
    unsigned = client.get(path)
    assert_problem(unsigned, 401, "unauthorized")
    assert challenges(unsigned) == ["bearer", "basic"]  # a browser shows its sign-in prompt
    assert_problem(client.get("/v1/reports/jobs/no-such-job.html", headers=keys.qa.headers), 404, "job_not_found")
    assert_problem(client.get(path, params={"tz": "Mars/Olympus"}, headers=keys.qa.headers), 422,
                   "invalid_report_parameter")


def test_a_review_s_annotations_are_one_click_away(client: TestClient, keys: Keys,
                                                     sm: sessionmaker[Session]) -> None:
    job_id = _job(client, keys, sm)
    review = client.post(f"/v1/jobs/{job_id}/reviews", headers=keys.reviewer.headers, json={
        "dimension": "annotation", "score": 2, "decision": "correct", "comment": f"CSP too low {HOSTILE}",
        "corrections": {"annotations": [{"label": "CSP", "bbox": [30, 20, 50, 40]}]}}).json()
    page = client.get(f"/v1/reports/jobs/{job_id}.html", headers=keys.qa.headers).text
    assert f'href="?review={review["id"]}"' in page and "CSP too low &lt;script&gt;" in page
    reviewed = client.get(f"/v1/reports/jobs/{job_id}.html", params={"review": review["id"]}, headers=keys.qa.headers)
    overlay = client.get(f"/v1/jobs/{job_id}/overlay.png", params={"review": review["id"]}, headers=keys.qa.headers)
    assert _picture(reviewed.text) == overlay.content
    assert "shown above" in reviewed.text and 'href="?"' in reviewed.text
    assert_problem(client.get(f"/v1/reports/jobs/{job_id}.html", params={"review": "nope"}, headers=keys.qa.headers),
                   404, "review_not_found")


def test_before_a_result_and_after_retention(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    job_id = _job(client, keys, sm, finish=False)
    page = client.get(f"/v1/reports/jobs/{job_id}.html", headers=keys.qa.headers).text
    assert _picture(page) == client.get(f"/v1/jobs/{job_id}/image", headers=keys.qa.headers).content
    assert "has not answered yet" in page and "queued" in page

    done = _job(client, keys, sm)
    with sm.begin() as session:
        assert purge_images(session, older_than=timedelta(0))
    page = client.get(f"/v1/reports/jobs/{done}.html", headers=keys.qa.headers).text
    assert "data:image/png" not in page and "retention policy" in page and "BPD_PLANE" in page


def test_a_browser_renders_the_page_with_its_picture(client: TestClient, keys: Keys, sm: sessionmaker[Session],
                                                      tmp_path: Path) -> None:
    browser = chromium()
    job_id = _job(client, keys, sm)
    page = tmp_path / "job.html"
    page.write_text(client.get(f"/v1/reports/jobs/{job_id}.html", headers=keys.qa.headers).text, encoding="utf-8")
    shot = np.asarray(screenshot(browser, page, tmp_path / "job.png")).reshape(-1, 3).astype(np.int16)
    # the upload's grey fills a W x H picture at least (the image is shown, not a broken icon)
    assert near(shot, "#282828", tolerance=2).sum() >= 0.6 * W * H
    assert near(shot, "#9b2c2c", tolerance=30).any()  # the untrained model's warning


def test_a_reviewer_goes_from_the_queue_to_each_job_and_back(client: TestClient, keys: Keys,
                                                               sm: sessionmaker[Session]) -> None:
    waiting = []
    for n in range(2):
        job_id = client.post("/v1/jobs", files=file_part(_upload()), data={"mode": "hitl", "external_id": f"H-{n}"},
                             headers=keys.submitter.headers).json()["id"]
        run_job(sm, job_id)
        with sm.begin() as session:
            assert complete(session, job_id, OWNER, _document(), awaiting_review=True)
        waiting.append(job_id)
    autonomous = _job(client, keys, sm)

    first = client.get("/v1/reports/queue.html", params={"limit": 1}, headers=basic(keys.reviewer.secret))
    assert first.status_code == 200 and "script-src" not in first.headers["content-security-policy"]
    links = re.findall(r'href="(jobs/[^"]+)"', first.text)
    assert links == [f"jobs/{waiting[0]}.html"] and "H-0" in first.text and "interpretation" in first.text
    next_page = re.search(r'href="(\?limit=1&amp;cursor=[^"]+)"', first.text)
    assert next_page
    second = client.get(urljoin("/v1/reports/queue.html", next_page.group(1).replace("&amp;", "&")),
                        headers=keys.reviewer.headers)
    assert re.findall(r'href="(jobs/[^"]+)"', second.text) == [f"jobs/{waiting[1]}.html"]
    assert "Next page" not in second.text and autonomous not in first.text + second.text

    job_page = urljoin("/v1/reports/queue.html", links[0])
    assert job_page == f"/v1/reports/jobs/{waiting[0]}.html"
    opened = client.get(job_page, headers=keys.reviewer.headers)
    assert opened.status_code == 200 and "awaiting_review" in opened.text
    back = re.search(r'href="(\.\./queue\.html)"', opened.text)
    assert back and urljoin(job_page, back.group(1)) == "/v1/reports/queue.html"

    assert_problem(client.get("/v1/reports/queue.html", headers=keys.qa.headers), 403, "forbidden")
    assert_problem(client.get("/v1/reports/queue.html", params={"cursor": "garbage"}, headers=keys.reviewer.headers),
                   422, "invalid_cursor")
    # a reviewed interpretation leaves the queue
    client.post(f"/v1/jobs/{waiting[0]}/reviews", headers=keys.reviewer.headers, json={
        "dimension": "interpretation", "score": 1, "decision": "accept", "next_phases": []})
    page = client.get("/v1/reports/queue.html", headers=keys.reviewer.headers).text
    assert re.findall(r'href="(jobs/[^"]+)"', page) == [f"jobs/{waiting[1]}.html"]
