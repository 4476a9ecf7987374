"""``GET /v1/jobs/{id}/image`` and ``/overlay.png``: the pixels the model read, and the same
with the model's (or a reviewer's) annotations drawn where their COCO coordinates say.

The image is black and the shapes' places are known, so each assertion reads one pixel: a
box's edge has its class's colour and its inside stays black, a mask tints the anatomy under
it, a visible keypoint is a filled dot and a hidden one a ring."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from services.export.overlay import FOOTER_WARNING, MASK_ALPHA, colours_of
from services.jobs import complete, purge_images
from shared.schemas.results import (
    Detection,
    ImageInfo,
    Keypoints,
    ModelInfo,
    PhaseReport,
    ResultDocument,
    Segmentation,
)

from .conftest import Keys
from .helpers import OWNER, PROFILE, HTTPResponse, assert_problem, audit_events, category_id, file_part, png, run_job

W, H = 320, 200
CLASSES = PROFILE.classes


def _black_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (W, H)).save(out, format="PNG")
    return out.getvalue()


def _document(*, untrained: bool = True) -> ResultDocument:
    return ResultDocument(
        status="succeeded",
        model=ModelInfo(base="b", adapter=None, revision="rev-9", profile="fada-skd", untrained=untrained),
        image=ImageInfo(width=W, height=H, sha256="0" * 64, format="png"),
        detections=[Detection(id=1, label="head", category_id=category_id("head"), bbox=(40, 60, 100, 80),
                              score=0.9)],
        segmentations=[Segmentation(id=1, label="Brain", category_id=category_id("Brain"), bbox=(200, 100, 80, 80),
                                    segmentation=[[200, 100, 280, 100, 280, 180, 200, 180]], area=6400.0)],
        keypoints=[Keypoints(id=1, label="CRL_KP", category_id=category_id("CRL_KP"), bbox=(150, 150, 30, 30),
                             keypoints=[150, 150, 2, 180, 180, 1, 170, 20, 0], num_keypoints=2)],
        phases={"detect": PhaseReport(status="ok")},
    )


def _finished_job(client: TestClient, keys: Keys, sm: sessionmaker[Session], *, untrained: bool = True) -> str:
    job_id: str = client.post("/v1/jobs", files=file_part(_black_png()), headers=keys.submitter.headers).json()["id"]
    run_job(sm, job_id)
    with sm.begin() as session:
        assert complete(session, job_id, OWNER, _document(untrained=untrained))
    return job_id


def _picture(r: HTTPResponse) -> np.ndarray:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["cache-control"] == "no-store"  # a patient's pixels: no cache keeps them
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


def _reddish(pixels: np.ndarray) -> int:
    """How many pixels are of the footer's warning red (text is anti-aliased: its hue, not its value)."""
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    red, green, blue = FOOTER_WARNING
    return int(((r > 120) & (r - g > (red - green) // 2) & (r - b > (red - blue) // 2)).sum())


def test_the_image_is_the_stored_pixels_for_those_who_may_see_the_job(client: TestClient, keys: Keys) -> None:
    upload = png(seed=3, width=64, height=40)
    job_id = client.post("/v1/jobs", files=file_part(upload), headers=keys.submitter.headers).json()["id"]
    # queued, no result yet: the image is there all the same (a reviewer may look before the model)
    for key in (keys.submitter, keys.reviewer, keys.qa, keys.admin):
        served = _picture(client.get(f"/v1/jobs/{job_id}/image", headers=key.headers))
        assert np.array_equal(served, np.asarray(Image.open(io.BytesIO(upload)).convert("RGB")))
    assert_problem(client.get(f"/v1/jobs/{job_id}/image", headers=keys.other_submitter.headers), 404, "job_not_found")
    assert_problem(client.get("/v1/jobs/00000000-0000-0000-0000-000000000000/image", headers=keys.qa.headers),
                   404, "job_not_found")
    assert client.get(f"/v1/jobs/{job_id}/image").status_code == 401


def test_the_overlay_draws_each_shape_where_its_coordinates_say(client: TestClient, keys: Keys,
                                                                sm: sessionmaker[Session]) -> None:
    job_id = client.post("/v1/jobs", files=file_part(_black_png()), headers=keys.submitter.headers).json()["id"]
    assert_problem(client.get(f"/v1/jobs/{job_id}/overlay.png", headers=keys.qa.headers), 409, "result_not_ready")
    run_job(sm, job_id)
    with sm.begin() as session:
        assert complete(session, job_id, OWNER, _document())

    picture = _picture(client.get(f"/v1/jobs/{job_id}/overlay.png", headers=keys.reviewer.headers))
    assert picture.shape[1] == W and picture.shape[0] > H  # the image's own grid, a footer below
    colours = colours_of(("head", "Brain", "CRL_KP"), CLASSES)
    head, brain, crl = (np.array(colours[label]) for label in ("head", "Brain", "CRL_KP"))
    assert len(set(colours.values())) == 3
    # the box: its left edge coloured (below its label tab), its inside untouched
    assert np.array_equal(picture[100, 40], head)
    assert np.array_equal(picture[100, 90], [0, 0, 0])
    # the mask: its outline coloured, its inside tinted, neither black nor opaque
    assert np.array_equal(picture[140, 280], brain)
    tint = picture[150, 240].astype(int)
    assert np.allclose(tint, brain * MASK_ALPHA / 255, atol=2) and tint.any()
    # keypoints: visible = filled dot, hidden = ring (centre black), not labelled = nothing
    assert np.array_equal(picture[150, 150], crl)
    assert np.array_equal(picture[180, 180], [0, 0, 0]) and (picture[175:186, 175:186] == crl).all(axis=2).any()
    assert not (picture[15:26, 165:176] == crl).all(axis=2).any()
    # the footer names an untrained model in red
    assert _reddish(picture[H:]) > 50


def test_a_trained_model_s_overlay_has_no_warning(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    job_id = _finished_job(client, keys, sm, untrained=False)
    picture = _picture(client.get(f"/v1/jobs/{job_id}/overlay.png", headers=keys.qa.headers))
    assert _reddish(picture[H:]) == 0
    assert (picture[H:] != 20).any()  # but the footer still has its lines


def test_a_reviewer_s_corrected_annotations_are_drawn_instead_of_the_model_s(
        client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    job_id = _finished_job(client, keys, sm)
    corrected = {"dimension": "annotation", "score": 2, "decision": "correct",
                 "corrections": {"annotations": [{"label": "head", "bbox": [150, 30, 60, 50]}]}}
    review = client.post(f"/v1/jobs/{job_id}/reviews", json=corrected, headers=keys.reviewer.headers)
    assert review.status_code == 201, review.text
    interpretation = client.post(f"/v1/jobs/{job_id}/reviews", headers=keys.reviewer.headers, json={
        "dimension": "interpretation", "score": 1, "decision": "accept"}).json()

    picture = _picture(client.get(f"/v1/jobs/{job_id}/overlay.png", params={"review": review.json()["id"]},
                                  headers=keys.qa.headers))
    head = np.array(colours_of(["head"], CLASSES)["head"])
    assert np.array_equal(picture[60, 150], head)  # the reviewer's box
    assert np.array_equal(picture[100, 40], [0, 0, 0])  # not the model's box, mask or keypoints
    assert np.array_equal(picture[150, 240], [0, 0, 0]) and np.array_equal(picture[150, 150], [0, 0, 0])

    assert_problem(client.get(f"/v1/jobs/{job_id}/overlay.png", params={"review": interpretation["id"]},
                              headers=keys.qa.headers), 409, "no_corrections")
    assert_problem(client.get(f"/v1/jobs/{job_id}/overlay.png", params={"review": "no-such-review"},
                              headers=keys.qa.headers), 404, "review_not_found")
    other = _finished_job(client, keys, sm)  # a review id is only good for its own job
    assert_problem(client.get(f"/v1/jobs/{other}/overlay.png", params={"review": review.json()["id"]},
                              headers=keys.qa.headers), 404, "review_not_found")


def test_an_image_deleted_by_retention_is_gone_but_its_result_stays(
        client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    job_id = _finished_job(client, keys, sm)
    with sm.begin() as session:
        assert purge_images(session, older_than=timedelta(0)) != []
    for path in ("image", "overlay.png"):
        body = assert_problem(client.get(f"/v1/jobs/{job_id}/{path}", headers=keys.qa.headers), 410, "image_purged")
        assert body["purged_at"] and "retention" in body["detail"]
    assert client.get(f"/v1/jobs/{job_id}/result", headers=keys.qa.headers).status_code == 200


def test_looking_at_a_patient_s_image_is_on_the_audit_trail(client: TestClient, keys: Keys,
                                                            sm: sessionmaker[Session]) -> None:
    job_id = _finished_job(client, keys, sm)
    assert client.get(f"/v1/jobs/{job_id}/image", headers=keys.reviewer.headers).status_code == 200
    assert client.get(f"/v1/jobs/{job_id}/overlay.png", headers=keys.qa.headers).status_code == 200
    seen = [(e.action, e.api_key_id, e.job_id, e.outcome) for e in audit_events(sm)]
    assert ("GET /v1/jobs/{job_id}/image", keys.reviewer.id, job_id, "ok") in seen
    assert ("GET /v1/jobs/{job_id}/overlay.png", keys.qa.id, job_id, "ok") in seen
