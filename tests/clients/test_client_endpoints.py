"""The client's methods for cancel, listing, reviews and the score report, against the real
app served by uvicorn (no worker: results are stored with ``succeed_job`` as a worker would),
through the blocking client and, for the same flows, the async one."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import timedelta
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from cli.client import (
    ApiError,
    AsyncFadaClient,
    Conflict,
    FadaClient,
    Forbidden,
    Gone,
    InvalidRequest,
    NotFound,
)
from services.jobs import purge_images
from tests.api.conftest import Keys
from tests.api.helpers import png, succeed_job, ultrasound_dicom


def _problem(error: ApiError, status: int, code: str) -> dict[str, Any]:
    """The typed error carries the service's problem document (RFC 9457) whole."""
    assert error.status == status and error.code == code
    assert error.problem["status"] == status and error.problem["code"] == code
    assert {"type", "title", "detail"} <= error.problem.keys() and error.detail == error.problem["detail"]
    return error.problem


# --- cancel --------------------------------------------------------------------------------------


def test_cancel_a_queued_job_then_a_second_cancel_and_a_finished_job_are_conflicts(
        url: str, keys: Keys, sm: sessionmaker[Session]) -> None:
    with FadaClient(url, keys.submitter.secret) as fada:
        queued = fada.submit(png(seed=1))
        canceled = fada.cancel(queued["id"])
        assert canceled["id"] == queued["id"] and canceled["status"] == "canceled"
        assert fada.get_job(queued["id"])["status"] == "canceled"
        with pytest.raises(Conflict) as again:
            fada.cancel(queued["id"])
        assert _problem(again.value, 409, "invalid_transition")["current_status"] == "canceled"

        finished = fada.submit(png(seed=2))
        succeed_job(sm, finished["id"])
        with pytest.raises(Conflict) as done:
            fada.cancel(finished["id"])
        problem = _problem(done.value, 409, "invalid_transition")
        assert problem["current_status"] == "succeeded" and "succeeded" in done.value.detail
        assert fada.get_job(finished["id"])["status"] == "succeeded"  # the refusal changed nothing

        with pytest.raises(NotFound) as missing:
            fada.cancel("00000000-0000-0000-0000-000000000000")
        _problem(missing.value, 404, "job_not_found")
    with FadaClient(url, keys.other_submitter.secret) as other, pytest.raises(NotFound):
        other.cancel(finished["id"])  # another submitter's job is not even confirmed to exist


# --- list_jobs -----------------------------------------------------------------------------------


def test_list_jobs_filters_and_pages_with_the_cursor(url: str, keys: Keys, sm: sessionmaker[Session]) -> None:
    with FadaClient(url, keys.submitter.secret) as fada:
        autonomous = [fada.submit(png(seed=10 + i), external_id=f"ACC-{i}") for i in range(3)]
        hitl = [fada.submit(png(seed=20 + i), mode="hitl") for i in range(2)]
        batch = fada.submit_batch([png(seed=30), png(seed=31)])
        succeed_job(sm, autonomous[0]["id"])
        fada.cancel(autonomous[1]["id"])
        every = {j["id"] for j in autonomous + hitl + batch["jobs"]}

        def ids(**filters: Any) -> set[str]:
            page = fada.list_jobs(limit=500, **filters)
            assert page["next_cursor"] is None
            return {j["id"] for j in page["items"]}

        assert ids() == every
        assert ids(status="succeeded") == {autonomous[0]["id"]}
        assert ids(status="canceled") == {autonomous[1]["id"]}
        assert ids(mode="hitl") == {j["id"] for j in hitl}
        assert ids(external_id="ACC-2") == {autonomous[2]["id"]}
        assert ids(review_state="pending") == {j["id"] for j in hitl}
        assert ids(batch_id=batch["id"]) == {j["id"] for j in batch["jobs"]}
        assert ids(mode="autonomous", status="queued") == {autonomous[2]["id"]} | {j["id"] for j in batch["jobs"]}

        whole = fada.list_jobs(limit=500)["items"]
        stamps = [j["created_at"] for j in whole]
        assert stamps == sorted(stamps, reverse=True)  # newest first
        pages: list[list[str]] = []
        cursor: str | None = None
        while True:
            page = fada.list_jobs(limit=2, cursor=cursor)
            pages.append([j["id"] for j in page["items"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [len(p) for p in pages] == [2, 2, 2, 1]
        assert [i for p in pages for i in p] == [j["id"] for j in whole]  # same order, nothing twice or lost
        hitl_page = fada.list_jobs(mode="hitl", limit=1)
        assert hitl_page["next_cursor"] is not None  # the cursor keeps the filter's pages
        rest = fada.list_jobs(mode="hitl", limit=1, cursor=hitl_page["next_cursor"])
        assert {hitl_page["items"][0]["id"], rest["items"][0]["id"]} == {j["id"] for j in hitl}

        with pytest.raises(InvalidRequest) as bad:
            fada.list_jobs(cursor="not-a-cursor")
        _problem(bad.value, 422, "invalid_cursor")
    with FadaClient(url, keys.other_submitter.secret) as other:
        assert other.list_jobs()["items"] == []  # submitters list their own jobs only
    with FadaClient(url, keys.reviewer.secret) as reviewer:
        assert {j["id"] for j in reviewer.list_jobs(limit=500)["items"]} == every


# --- reviews -------------------------------------------------------------------------------------


def test_review_amend_and_list_reviews(url: str, keys: Keys, sm: sessionmaker[Session]) -> None:
    with FadaClient(url, keys.submitter.secret) as fada:
        job = fada.submit(png(seed=40))
        queued = fada.submit(png(seed=41))
    succeed_job(sm, job["id"])
    with FadaClient(url, keys.reviewer.secret) as reviewer:
        first = reviewer.review(job["id"], dimension="interpretation", score=1, decision="accept")
        assert first["job_id"] == job["id"] and first["dimension"] == "interpretation"
        assert (first["score"], first["decision"], first["revision"]) == (1, "accept", 1)
        assert first["reviewer"] == {"key_id": keys.reviewer.id, "name": "reviewer"}
        assert first["job_mode"] == "autonomous" and first["comment"] is None and first["history"] == []

        with pytest.raises(Conflict) as twice:
            reviewer.review(job["id"], dimension="interpretation", score=2, decision="accept")
        _problem(twice.value, 409, "review_exists")

        amended = reviewer.amend_review(job["id"], dimension="interpretation", score=2, decision="correct",
                                        comment="the view is a near-sagittal head")
        assert (amended["id"], amended["score"], amended["decision"], amended["revision"]) == (
            first["id"], 2, "correct", 2)
        assert amended["comment"] == "the view is a near-sagittal head" and amended["amended_at"] is not None
        assert [(v["revision"], v["score"], v["decision"]) for v in amended["history"]] == [(1, 1, "accept")]

        annotation = reviewer.review(job["id"], dimension="annotation", score=3, decision="reject",
                                     comment="boxes off the structures")
        listed = reviewer.reviews(job["id"])
        assert [(r["id"], r["dimension"], r["score"]) for r in listed] == [
            (first["id"], "interpretation", 2), (annotation["id"], "annotation", 3)]
        assert len(listed[0]["history"]) == 1 and listed[1]["history"] == []

        with pytest.raises(NotFound):
            reviewer.amend_review(queued["id"], dimension="annotation", score=1, decision="accept")
        with pytest.raises(Conflict) as early:
            reviewer.review(queued["id"], dimension="interpretation", score=1, decision="accept")
        assert _problem(early.value, 409, "not_reviewable")["current_status"] == "queued"
        with pytest.raises(InvalidRequest) as bad:
            reviewer.review(job["id"], dimension="interpretation", score=7, decision="accept")
        assert bad.value.status == 422
    with FadaClient(url, keys.submitter.secret) as fada, pytest.raises(Forbidden):
        fada.review(job["id"], dimension="annotation", score=1, decision="accept")
    with FadaClient(url, keys.qa.secret) as qa:  # QA reads the reviews, may not write them
        assert [r["id"] for r in qa.reviews(job["id"])] == [first["id"], annotation["id"]]
        with pytest.raises(Forbidden):
            qa.amend_review(job["id"], dimension="annotation", score=1, decision="accept")


# --- score report ---------------------------------------------------------------------------------


def _reviewed_job(url: str, keys: Keys, sm: sessionmaker[Session], seed: int, scores: tuple[int, int]) -> str:
    with FadaClient(url, keys.submitter.secret) as fada:
        job_id = str(fada.submit(png(seed=seed))["id"])
    succeed_job(sm, job_id)
    with FadaClient(url, keys.reviewer.secret) as reviewer:
        for dimension, score in zip(("interpretation", "annotation"), scores, strict=True):
            reviewer.review(job_id, dimension=dimension, score=score, decision="accept" if score == 1 else "correct")
    return job_id


def test_score_report_json_csv_and_filters(url: str, keys: Keys, sm: sessionmaker[Session]) -> None:
    _reviewed_job(url, keys, sm, 50, (1, 2))
    _reviewed_job(url, keys, sm, 51, (1, 3))
    with FadaClient(url, keys.qa.secret) as qa:
        report = qa.score_report()
        total = report["total"]
        assert total["cases"] == 2 and report["reviews"] == 4
        assert total["interpretation"] == {"n": 2, "mean": 1.0, "perfect_rate": 1.0,
                                           "distribution": {"0": 0, "1": 2, "2": 0, "3": 0}}
        assert total["annotation"]["mean"] == 2.5 and total["annotation"]["perfect_rate"] == 0.0
        assert total["overall_mean"] == 1.75

        by_mode = qa.score_report(group_by="mode")
        assert by_mode["group_by"] == "mode" and [g["key"] for g in by_mode["groups"]] == ["autonomous"]
        assert qa.score_report(mode="hitl")["total"]["cases"] == 0
        assert qa.score_report(to="2000-01-01")["reviews"] == 0  # the date filters reach the service
        assert qa.score_report(from_="2000-01-01")["filters"]["from"].startswith("2000-01-01")
        in_paris = qa.score_report(from_="2000-01-01", tz="Europe/Paris")["filters"]  # so does the zone
        assert (in_paris["from"], in_paris["tz"]) == ("1999-12-31T23:00:00Z", "Europe/Paris")

        text = qa.score_report(format="csv")
        assert isinstance(text, str)
        (row,) = list(csv.DictReader(io.StringIO(text)))
        assert int(row["cases"]) == 2 and float(row["overall_mean"]) == 1.75
        assert float(row["annotation_mean"]) == 2.5

        with pytest.raises(InvalidRequest) as bad:
            qa.score_report(from_="yesterday")
        _problem(bad.value, 422, "invalid_report_parameter")
    with FadaClient(url, keys.reviewer.secret) as reviewer, pytest.raises(Forbidden):
        reviewer.score_report()


# --- the same flows through the async client -------------------------------------------------------


def test_async_cancel_list_reviews_and_report(url: str, keys: Keys, sm: sessionmaker[Session]) -> None:
    async def scenario() -> None:
        async with AsyncFadaClient(url, keys.submitter.secret) as fada:
            queued = await fada.submit(png(seed=60), external_id="ASYNC-1")
            done = await fada.submit(png(seed=61))
            assert (await fada.cancel(queued["id"]))["status"] == "canceled"
            succeed_job(sm, done["id"])
            with pytest.raises(Conflict) as refused:
                await fada.cancel(done["id"])
            assert _problem(refused.value, 409, "invalid_transition")["current_status"] == "succeeded"
            first = await fada.list_jobs(limit=1)
            second = await fada.list_jobs(limit=1, cursor=first["next_cursor"])
            assert second["next_cursor"] is None
            assert {first["items"][0]["id"], second["items"][0]["id"]} == {queued["id"], done["id"]}
            assert [j["id"] for j in (await fada.list_jobs(external_id="ASYNC-1"))["items"]] == [queued["id"]]
        async with AsyncFadaClient(url, keys.reviewer.secret) as reviewer:
            review = await reviewer.review(done["id"], dimension="annotation", score=3, decision="reject")
            with pytest.raises(Conflict):
                await reviewer.review(done["id"], dimension="annotation", score=2, decision="correct")
            amended = await reviewer.amend_review(done["id"], dimension="annotation", score=2, decision="correct")
            assert (amended["id"], amended["revision"], amended["score"]) == (review["id"], 2, 2)
            listed = await reviewer.reviews(done["id"])
            assert [(r["dimension"], r["score"], len(r["history"])) for r in listed] == [("annotation", 2, 1)]
        async with AsyncFadaClient(url, keys.qa.secret) as qa:
            report = await qa.score_report()
            assert report["total"]["annotation"]["distribution"] == {"0": 0, "1": 0, "2": 1, "3": 0}
            assert report["total"]["interpretation"]["n"] == 0 and report["total"]["overall_mean"] is None
            csv_text = await qa.score_report(format="csv", group_by="mode")
            assert csv_text.splitlines()[1].startswith("autonomous,")

    asyncio.run(scenario())


# --- pictures and the SR ------------------------------------------------------------------------


def test_image_overlay_and_structured_report_as_bytes(url: str, keys: Keys, sm: sessionmaker[Session]) -> None:
    upload = png(seed=70, width=64, height=48)
    with FadaClient(url, keys.submitter.secret) as fada:
        job = fada.submit(upload)
        dicom_job = fada.submit(ultrasound_dicom())
        with pytest.raises(Conflict) as early:
            fada.overlay(job["id"])
        _problem(early.value, 409, "result_not_ready")
        succeed_job(sm, job["id"])
        succeed_job(sm, dicom_job["id"])
        served, sent = (Image.open(io.BytesIO(data)).convert("RGB") for data in (fada.image(job["id"]), upload))
        assert np.array_equal(np.asarray(served), np.asarray(sent))
        drawn = Image.open(io.BytesIO(fada.overlay(job["id"])))
        assert drawn.width == 64 and drawn.height > 48  # the footer below the image
        assert pydicom.dcmread(io.BytesIO(fada.structured_report(dicom_job["id"]))).Modality == "SR"
        with pytest.raises(Conflict) as not_dicom:
            fada.structured_report(job["id"])
        _problem(not_dicom.value, 409, "not_dicom")
        with pytest.raises(NotFound) as no_review:
            fada.overlay(job["id"], review="no-such-review")
        _problem(no_review.value, 404, "review_not_found")
    with sm.begin() as session:
        assert purge_images(session, older_than=timedelta(0))

    async def after_retention() -> None:
        async with AsyncFadaClient(url, keys.qa.secret) as qa:
            with pytest.raises(Gone) as gone:
                await qa.image(job["id"])
            assert _problem(gone.value, 410, "image_purged")["purged_at"]
            with pytest.raises(Gone):
                await qa.overlay(job["id"])
            assert (await qa.structured_report(dicom_job["id"]))[128:132] == b"DICM"  # results stay

    asyncio.run(after_retention())
