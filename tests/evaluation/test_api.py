"""POST/GET /v1/evaluations over HTTP, on PostgreSQL and on SQLite: roles, the stored row,
the round trip, the list, and the 422 refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Evaluation
from tests.api.conftest import Keys
from tests.api.helpers import assert_problem, count

from .builders import box_ann, coco, document, mask_ann, rect
from .conftest import JobIn, StoreJob

EVALUATIONS = "/v1/evaluations"


def scored_ground_truth(store_job: StoreJob) -> tuple[dict[str, Any], list[str]]:
    """Two jobs: a box hit at IoU 0.64 (AP50 1, AP75 0), an exact mask, and two view labels."""
    a = store_job(document(boxes=[("head", (0, 0, 100, 64), 0.9)], label="BPD_PLANE"))
    b = store_job(document(masks=[("liver", [rect(0, 0, 20, 20)], None)], label="fl_plane"))
    gt = coco([{"id": a, "width": 200, "height": 200, "view_label": "BPD_PLANE"}, {"id": b, "view_label": "FL_PLANE"}],
              [box_ann(a, "head", [0, 0, 100, 100]), mask_ann(b, "liver", [rect(0, 0, 20, 20)])], ["head", "liver"])
    return gt, [a, b]


def post(client: TestClient, keys: Keys, gt: Any, name: str = "run 1", role: str = "qa") -> Any:
    return client.post(EVALUATIONS, json={"name": name, "ground_truth": gt}, headers=getattr(keys, role).headers)


def test_qa_evaluates_and_gets_it_back(client: TestClient, keys: Keys, store_job: StoreJob,
                                       sm: sessionmaker[Session]) -> None:
    gt, _ = scored_ground_truth(store_job)
    r = post(client, keys, gt)
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"{EVALUATIONS}/{body['id']}"
    assert body["name"] == "run 1"
    assert body["created_at"].endswith(("Z", "+00:00"))
    m = body["metrics"]
    assert {"map50", "map75", "dice", "iou", "classification_accuracy", "classification_accuracy_ci", "n_images",
            "n_gt_boxes", "n_pred_boxes", "per_class", "mask_map50", "mask_map75"} <= m.keys()
    # box mAP is over the images with a bbox (a only): b is a segmentation sample
    assert (m["map50"], m["map75"]) == (pytest.approx(1.0), pytest.approx(0.0))
    assert (m["mask_map50"], m["mask_map75"], m["dice"], m["iou"]) == pytest.approx((1.0, 1.0, 1.0, 1.0))
    assert (m["classification_accuracy"], m["classification_accuracy_ci"]) == (0.5, 1.0)
    assert (m["n_images"], m["n_detection_images"], m["n_segmentation_images"]) == (2, 1, 1)
    assert (m["n_gt_boxes"], m["n_pred_boxes"], m["n_gt_masks"], m["n_pred_masks"]) == (1, 1, 1, 1)
    assert m["per_class"]["head"]["n_gt"] == 1 and m["per_class"]["liver"]["dice"] == 1.0

    got = client.get(f"{EVALUATIONS}/{body['id']}", headers=keys.qa.headers)
    assert got.status_code == 200 and got.json() == body
    assert client.get(f"{EVALUATIONS}/{body['id']}", headers=keys.admin.headers).json() == body

    with sm() as session:
        row = session.get(Evaluation, body["id"])
        assert row is not None
        assert row.ground_truth == gt and row.metrics == m
        assert row.api_key_id == keys.qa.id and row.name == "run 1"


@pytest.mark.parametrize("role", ["submitter", "reviewer"])
def test_other_roles_are_refused(client: TestClient, keys: Keys, store_job: StoreJob, role: str,
                                 sm: sessionmaker[Session]) -> None:
    gt, _ = scored_ground_truth(store_job)
    assert_problem(post(client, keys, gt, role=role), 403, "forbidden")
    assert_problem(client.get(EVALUATIONS, headers=getattr(keys, role).headers), 403, "forbidden")
    assert_problem(client.get(f"{EVALUATIONS}/x", headers=getattr(keys, role).headers), 403, "forbidden")
    assert_problem(client.get(EVALUATIONS), 401, "unauthorized")
    assert count(sm, Evaluation) == 0


def test_admin_may_evaluate(client: TestClient, keys: Keys, store_job: StoreJob) -> None:
    gt, _ = scored_ground_truth(store_job)
    assert post(client, keys, gt, role="admin").status_code == 201


def test_list_newest_first_with_cursor(client: TestClient, keys: Keys, store_job: StoreJob) -> None:
    gt, _ = scored_ground_truth(store_job)
    made = [post(client, keys, gt, name=f"run {i}").json() for i in range(3)]
    first = client.get(EVALUATIONS, params={"limit": 2}, headers=keys.qa.headers).json()
    assert [e["id"] for e in first["items"]] == [made[2]["id"], made[1]["id"]]
    assert first["items"][0] == made[2]
    second = client.get(EVALUATIONS, params={"limit": 2, "cursor": first["next_cursor"]},
                        headers=keys.qa.headers).json()
    assert [e["id"] for e in second["items"]] == [made[0]["id"]] and second["next_cursor"] is None
    assert_problem(client.get(EVALUATIONS, params={"cursor": "garbage"}, headers=keys.qa.headers), 422,
                   "invalid_cursor")
    assert_problem(client.get(EVALUATIONS, params={"limit": 501}, headers=keys.qa.headers), 422)


def test_unknown_evaluation_is_404(client: TestClient, keys: Keys) -> None:
    assert_problem(client.get(f"{EVALUATIONS}/nope", headers=keys.qa.headers), 404, "evaluation_not_found")


def test_no_predictions_gives_zeros(client: TestClient, keys: Keys, store_job: StoreJob) -> None:
    job = store_job(document())
    gt = coco([{"id": job, "view_label": "head"}],
              [box_ann(job, "NT", [0, 0, 50, 50]), mask_ann(job, "head", [rect(0, 0, 30, 30)])], ["NT", "head"])
    r = post(client, keys, gt)
    assert r.status_code == 201, r.text
    m = r.json()["metrics"]
    assert [m[k] for k in ("map50", "map75", "mask_map50", "mask_map75", "dice", "iou", "classification_accuracy",
                           "classification_accuracy_ci")] == [0.0] * 8


def test_unknown_jobs_are_named(client: TestClient, keys: Keys, store_job: StoreJob,
                                sm: sessionmaker[Session]) -> None:
    done = store_job(document(label="head"))
    queued = store_job(None)
    gt = coco([{"id": i, "view_label": "head"} for i in (done, "no-such-job", queued, "nor-this")], [], [])
    body = assert_problem(post(client, keys, gt), 422, "unknown_jobs")
    # a queued job is a job: jobs_not_finished, named here too but not among the unknown ids
    assert body["job_ids"] == ["no-such-job", "nor-this"]
    assert "no such job: no-such-job, nor-this" in body["detail"] and f"{queued} (queued)" in body["detail"]
    assert count(sm, Evaluation) == 0


@pytest.mark.parametrize(("gt", "code"), [
    ({"images": [], "categories": [], "annotations": []}, "empty_ground_truth"),
    ({"images": [{"id": "a"}]}, "empty_ground_truth"),
    ({"images": [{"id": 1, "view_label": "head"}]}, "invalid_ground_truth"),
    ({"annotations": []}, "invalid_ground_truth"),
    ({"images": [{"id": "a"}], "categories": [{"id": 1, "name": "NOT_AB"}],
      "annotations": [{"image_id": "a", "category_id": 1, "bbox": [0, 0, 1, 1]}]}, "unknown_category"),
    ({"images": [{"id": "a"}], "categories": [{"id": 999, "name": "AB"}],
      "annotations": [{"image_id": "a", "category_id": 999, "bbox": [0, 0, 1, 1]}]}, "unknown_category"),
    ({"images": [{"id": "a", "view_label": "nonsense"}]}, "unknown_view_label"),
])
def test_bad_ground_truth_is_422(client: TestClient, keys: Keys, gt: dict[str, Any], code: str) -> None:
    body = assert_problem(post(client, keys, gt), 422, code)
    if code == "invalid_ground_truth":
        assert body["detail"].startswith("the ground truth is not valid COCO: ground_truth.")
        assert body["errors"] and {"loc", "msg"} <= body["errors"][0].keys()


def test_image_size_must_match_the_job(client: TestClient, keys: Keys, store_job: StoreJob) -> None:
    job = store_job(document(width=200, height=200))
    gt = coco([{"id": job, "width": 100, "height": 200}], [box_ann(job, "NT", [0, 0, 5, 5])], ["NT"])
    assert "100x200" in assert_problem(post(client, keys, gt), 422, "image_size_mismatch")["detail"]


@pytest.mark.parametrize("body", [
    {"ground_truth": {}},
    {"name": "", "ground_truth": {}},
    {"name": "x", "ground_truth": []},
    {"name": "x", "ground_truth": {}, "extra": 1},
])
def test_bad_request_body_is_422(client: TestClient, keys: Keys, body: dict[str, Any]) -> None:
    assert_problem(client.post(EVALUATIONS, json=body, headers=keys.qa.headers), 422, "invalid_request")


def test_openapi_documents_where_the_view_label_goes(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert {"/v1/evaluations", "/v1/evaluations/{evaluation_id}"} <= doc["paths"].keys()
    schema = doc["components"]["schemas"]["EvaluationIn"]["properties"]["ground_truth"]
    assert "view_label" in schema["description"]
    post_op = doc["paths"]["/v1/evaluations"]["post"]
    assert "application/problem+json" in post_op["responses"]["422"]["content"]


@pytest.mark.parametrize(("where", "gt_change", "name"), [
    ("ground_truth.images[0].note", lambda gt: gt["images"][0].update(note="a\x00b"), "x"),
    ("ground_truth.info", lambda gt: gt["info"].update({"k\x00": 1}), "x"),
    ("ground_truth.images[0].id", lambda gt: gt["images"][0].update(id="\ud800"), "x"),
    (None, lambda gt: None, "x\x00y"),
])
def test_text_no_database_can_store_is_422_not_500(client: TestClient, keys: Keys, store_job: StoreJob,
                                                   where: str | None, gt_change: Any, name: str) -> None:
    job = store_job(document(label="head"))
    gt = coco([{"id": job, "view_label": "head"}], [], [])
    gt_change(gt)
    r = client.post(EVALUATIONS, content=json.dumps({"name": name, "ground_truth": gt}),
                    headers={**keys.qa.headers, "content-type": "application/json"})
    body = assert_problem(r, 422)
    if where is not None:
        assert body["code"] == "invalid_ground_truth" and body["detail"].startswith(where + ": text may not")


# --- only final results are evaluated --------------------------------------------------------


NOT_FINISHED = {  # job_in state -> the job's status
    "queued": "queued", "failed": "failed", "canceled": "canceled", "awaiting_review": "awaiting_review",
    "resumed_queued": "queued", "resumed_running": "running", "resumed_failed": "failed",
    "canceled_in_review": "canceled",
}


def test_jobs_without_a_final_result_are_refused_naming_them(client: TestClient, keys: Keys, store_job: StoreJob,
                                                             job_in: JobIn, sm: sessionmaker[Session]) -> None:
    done = store_job(document(boxes=[("head", (0, 0, 50, 50), 0.9)], label="BPD_PLANE"))
    jobs = {state: job_in(state) for state in NOT_FINISHED}
    order = [done, *jobs.values()]
    gt = coco([{"id": j, "view_label": "BPD_PLANE"} for j in order],
              [box_ann(j, "head", [0, 0, 50, 50]) for j in order], ["head"])
    body = assert_problem(post(client, keys, gt), 422, "jobs_not_finished")
    assert body["job_ids"] == list(jobs.values())
    assert body["jobs"] == [{"id": jobs[state], "status": status} for state, status in NOT_FINISHED.items()]
    assert body["detail"].startswith("8 ground-truth image(s) are jobs without a final result")
    assert f"{jobs['awaiting_review']} (awaiting_review)" in body["detail"]
    assert f"{jobs['resumed_running']} (running)" in body["detail"]
    assert count(sm, Evaluation) == 0


@pytest.mark.parametrize("state", ["awaiting_review", "resumed_queued", "resumed_failed", "canceled_in_review"])
def test_a_first_stage_result_is_not_scored(client: TestClient, keys: Keys, store_job: StoreJob, job_in: JobIn,
                                            state: str) -> None:
    # The job has a stored (first-stage) result, but its detections have not run: scoring it
    # would count its ground-truth boxes as misses.
    done = store_job(document(boxes=[("head", (0, 0, 50, 50), 0.9)]))
    pending = job_in(state)
    gt = coco([done, pending], [box_ann(done, "head", [0, 0, 50, 50]), box_ann(pending, "head", [0, 0, 50, 50])],
              ["head"])
    body = assert_problem(post(client, keys, gt), 422, "jobs_not_finished")
    assert body["jobs"] == [{"id": pending, "status": NOT_FINISHED[state]}]


def test_unknown_ids_come_first_and_mention_unfinished_jobs(client: TestClient, keys: Keys, job_in: JobIn) -> None:
    review = job_in("awaiting_review")
    gt = coco([{"id": i, "view_label": "head"} for i in (review, "no-such-job")], [], [])
    body = assert_problem(post(client, keys, gt), 422, "unknown_jobs")
    assert body["job_ids"] == ["no-such-job"]
    assert f"besides, 1 job(s) have no final result yet: {review} (awaiting_review)" in body["detail"]


def test_a_job_the_reviewer_rejected_is_scored_as_it_is(client: TestClient, keys: Keys, job_in: JobIn) -> None:
    # succeeded, its later phases skipped ("rejected by the reviewer"): no detections, so its
    # boxes are missed; its first-stage view label counts.
    rejected = job_in("rejected")
    gt = coco([{"id": rejected, "view_label": "BPD_PLANE"}], [box_ann(rejected, "head", [0, 0, 5, 5])], ["head"])
    r = post(client, keys, gt)
    assert r.status_code == 201, r.text
    m = r.json()["metrics"]
    assert (m["map50"], m["n_pred_boxes"], m["classification_accuracy"]) == (0.0, 0, 1.0)


def test_geometry_outside_the_image_is_422_naming_the_annotation(client: TestClient, keys: Keys,
                                                                  store_job: StoreJob,
                                                                  sm: sessionmaker[Session]) -> None:
    job = store_job(document(width=64, height=48))
    gt = coco([job], [box_ann(job, "NT", [0, 0, 5, 5]), box_ann(job, "NT", [164, 148, 50, 50]),
                      mask_ann(job, "head", [[10, 10, 20, 10, 30, 10]])], ["NT", "head"])
    body = assert_problem(post(client, keys, gt), 422, "invalid_ground_truth")
    assert body["errors"] == [
        {"loc": "ground_truth.annotations[1].bbox",
         "msg": f"annotation (id 2) of job {job}: [164, 148, 50, 50] is not inside the 64x48 image"},
        {"loc": "ground_truth.annotations[2].segmentation[0]",
         "msg": f"annotation (id 3) of job {job}: has all its points on one line (it has no area)"},
    ]
    assert count(sm, Evaluation) == 0
