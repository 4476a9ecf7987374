"""The job page's review form: a sonographer scores a job from the browser, signed in with the
key as a Basic password, as the page's form posts it (application/x-www-form-urlencoded, every
field sent, blank ones empty). The form must prove it came from a page this service showed to
the same key (``api.form_tokens``): a browser sends Basic credentials with a cross-site post
too, so without the token any site could score jobs in the reviewer's name."""

from __future__ import annotations

import html
import re
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.form_tokens import TOKEN_SECONDS, make_token
from services.jobs import complete
from shared.db.models import AuditEvent, Review
from shared.schemas.results import PhaseReport
from tests.api.conftest import Keys
from tests.api.helpers import (
    OWNER,
    PROFILE,
    assert_problem,
    audit_events,
    count,
    enqueued_job_ids,
    file_part,
    run_job,
)

from .test_browser_sign_in import basic
from .test_job_page import _document, _upload


def _job(client: TestClient, keys: Keys, sm: sessionmaker[Session], *, mode: str = "autonomous") -> str:
    job_id: str = client.post("/v1/jobs", files=file_part(_upload()), data={"mode": mode},
                              headers=keys.submitter.headers).json()["id"]
    document = _document()
    if mode == "hitl":  # the first stage: interpret and classify, the later phases not run yet
        document = document.model_copy(update={"status": "awaiting_review", "detections": [], "phases": {
            "interpret": PhaseReport(status="ok"), "classify": PhaseReport(status="ok"),
            **{p: PhaseReport(status="skipped") for p in ("detect", "segment", "keypoints")}}})
    run_job(sm, job_id)
    with sm.begin() as session:
        assert complete(session, job_id, OWNER, document, awaiting_review=mode == "hitl")
    return job_id


def _forms(page: str) -> dict[str, dict[str, Any]]:
    """The page's review forms by dimension: action, hidden values, and the named inputs."""
    found: dict[str, dict[str, Any]] = {}
    for action, body in re.findall(r'<form class="review" method="post" action="([^"]+)">(.*?)</form>', page, re.S):
        hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', body))
        names = set(re.findall(r'name="([^"]+)"', body))
        checked = dict(re.findall(r'name="([^"]+)" value="([^"]*)" required checked', body))
        found[hidden["dimension"]] = {"action": html.unescape(action), "hidden": hidden, "names": names,
                                      "checked": checked, "body": body}
    return found


def _shown_texts(form: dict[str, Any]) -> dict[str, str]:
    """The interpretation boxes of a form: field name -> the text shown."""
    names = re.findall(r'name="field" value="([^"]+)"', form["body"])
    texts = [html.unescape(t) for t in re.findall(r'<textarea name="text"[^>]*>(.*?)</textarea>', form["body"], re.S)]
    return dict(zip(names, texts, strict=True))


def _fill(form: dict[str, Any], **values: str | list[str]) -> dict[str, str | list[str]]:
    """What a browser posts: every field of the form, the blank ones empty, the text boxes as shown."""
    sent: dict[str, str | list[str]] = {name: "" for name in form["names"] - {"next_phases", "score", "decision",
                                                                             "field", "text"}}
    sent.update(form["hidden"])
    shown = _shown_texts(form)
    if shown:
        sent.update(field=list(shown), text=list(shown.values()))
    sent.update(values)
    return sent


def _post(client: TestClient, job_id: str, form: dict[str, Any], headers: dict[str, str],
          **values: str | list[str]) -> Any:
    path = f"/v1/reports/jobs/{job_id}.html"
    target = path.rsplit("/", 1)[0] + "/" + form["action"]  # the form's relative action, resolved
    return client.post(target, data=_fill(form, **values), headers=headers, follow_redirects=False)


def test_a_reviewer_scores_and_amends_from_the_page(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    job_id = _job(client, keys, sm)
    signed_in = basic(keys.reviewer.secret)
    forms = _forms(client.get(f"/v1/reports/jobs/{job_id}.html", headers=signed_in).text)
    assert set(forms) == {"interpretation", "annotation"}
    assert "next_phases" not in forms["interpretation"]["names"]  # an autonomous job has no choice of phases

    saved = _post(client, job_id, forms["interpretation"], signed_in, score="2", decision="correct", label="FL_PLANE")
    assert saved.status_code == 303, saved.text
    assert saved.headers["location"] == f"../{job_id}.html"
    [review] = client.get(f"/v1/jobs/{job_id}/reviews", headers=keys.qa.headers).json()["items"]
    assert (review["dimension"], review["score"], review["decision"], review["revision"]) == (
        "interpretation", 2, "correct", 1)
    assert review["corrections"]["label"] == "FL_PLANE" and review["comment"] is None  # blank = left out
    assert review["corrections"]["interpretation"] is None  # the text boxes came back as shown
    assert review["reviewer"]["key_id"] == keys.reviewer.id

    page = client.get(f"/v1/reports/jobs/{job_id}.html", headers=signed_in).text
    assert "BPD_PLANE → FL_PLANE (reviewer)" in page  # the view label as the model gave it, and as reviewed
    again = _forms(page)["interpretation"]
    assert again["checked"] == {"score": "2", "decision": "correct"} and "version 2" in again["body"]
    assert '<option value="FL_PLANE" selected>' in again["body"]
    amended = _post(client, job_id, again, signed_in, score="1", decision="accept", comment="fine after all")
    assert amended.status_code == 303, amended.text
    [review] = client.get(f"/v1/jobs/{job_id}/reviews", headers=keys.qa.headers).json()["items"]
    assert (review["score"], review["decision"], review["revision"], review["comment"]) == (
        1, "accept", 2, "fine after all")
    assert [v["score"] for v in review["history"]] == [2]

    annotation = _post(client, job_id, forms["annotation"], keys.reviewer.headers, score="3", decision="reject")
    assert annotation.status_code == 303  # a Bearer key works too
    events = [e for e in audit_events(sm) if e.action == "POST /v1/reports/jobs/{job_id}/reviews"]
    assert [(e.outcome, e.job_id, (e.detail or {}).get("via")) for e in events] == [("ok", job_id, "job page")] * 3


def test_a_hitl_job_s_phases_are_chosen_from_the_page(client: TestClient, keys: Keys, sm: sessionmaker[Session],
                                                      broker_url: str) -> None:
    resumed, finished = _job(client, keys, sm, mode="hitl"), _job(client, keys, sm, mode="hitl")
    signed_in = basic(keys.reviewer.secret)
    forms = _forms(client.get(f"/v1/reports/jobs/{resumed}.html", headers=signed_in).text)
    assert set(forms) == {"interpretation"}  # the annotations come after the choice
    assert {"next_phases", "group", "choose_phases"} <= forms["interpretation"]["names"]
    chosen = _post(client, resumed, forms["interpretation"], signed_in, score="1", decision="accept",
                   next_phases=["detect", "segment"])
    assert chosen.status_code == 303, chosen.text
    assert client.get(f"/v1/jobs/{resumed}", headers=keys.qa.headers).json()["status"] == "queued"
    assert enqueued_job_ids(broker_url).count(resumed) == 2  # the submission's message, and the resumption's

    forms = _forms(client.get(f"/v1/reports/jobs/{finished}.html", headers=signed_in).text)
    none_ticked = _post(client, finished, forms["interpretation"], signed_in, score="3", decision="reject")
    assert none_ticked.status_code == 303, none_ticked.text
    job = client.get(f"/v1/jobs/{finished}", headers=keys.qa.headers).json()
    assert (job["status"], job["review_state"]) == ("succeeded", "reviewed")
    # finished without later phases: its interpretation review can be amended, there are no annotations to score
    after = _forms(client.get(f"/v1/reports/jobs/{finished}.html", headers=signed_in).text)
    assert set(after) == {"interpretation"} and "next_phases" not in after["interpretation"]["names"]


def test_a_refused_review_comes_back_as_the_page_with_the_reason(client: TestClient, keys: Keys,
                                                                   sm: sessionmaker[Session]) -> None:
    job_id = _job(client, keys, sm, mode="hitl")
    signed_in = basic(keys.reviewer.secret)
    form = _forms(client.get(f"/v1/reports/jobs/{job_id}.html", headers=signed_in).text)["interpretation"]
    early = _post(client, job_id, {**form, "hidden": {**form["hidden"], "dimension": "annotation"}}, signed_in,
                  score="1", decision="accept")
    assert early.status_code == 409 and early.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in early.text and "annotations can be reviewed once" in early.text
    bad_group = _post(client, job_id, form, signed_in, score="1", decision="accept", next_phases=["detect"],
                      group="no-such-group")
    assert bad_group.status_code == 422 and "no-such-group" in html.unescape(bad_group.text)
    assert count(sm, Review) == 0
    assert client.get(f"/v1/jobs/{job_id}", headers=keys.qa.headers).json()["status"] == "awaiting_review"


@pytest.mark.parametrize("forgery", ["no token", "other job", "other key", "expired", "garbled", "cross-site"])
def test_a_form_not_made_by_this_service_for_this_key_and_job_is_refused(
        forgery: str, client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    job_id, other_job = _job(client, keys, sm), _job(client, keys, sm)
    form = _forms(client.get(f"/v1/reports/jobs/{job_id}.html", headers=basic(keys.reviewer.secret)).text)[
        "interpretation"]
    headers = basic(keys.reviewer.secret)
    token = {"no token": "", "other job": make_token(keys.reviewer.secret, other_job),
             "other key": make_token(keys.admin.secret, job_id),
             "expired": make_token(keys.reviewer.secret, job_id, now=time.time() - TOKEN_SECONDS - 1),
             "garbled": "12.34", "cross-site": form["hidden"]["token"]}[forgery]
    if forgery == "cross-site":
        headers = {**headers, "Sec-Fetch-Site": "cross-site"}
    answer = _post(client, job_id, form, headers, token=token, score="1", decision="accept")
    expected = {"no token": (422, "invalid_request"), "cross-site": (403, "cross_site_form")}.get(
        forgery, (403, "invalid_form_token"))
    assert_problem(answer, *expected)
    assert count(sm, Review) == 0


def test_only_reviewers_get_and_post_the_forms(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    job_id = _job(client, keys, sm)
    assert _forms(client.get(f"/v1/reports/jobs/{job_id}.html", headers=basic(keys.qa.secret)).text) == {}
    reviewer_form = _forms(client.get(f"/v1/reports/jobs/{job_id}.html", headers=basic(keys.reviewer.secret)).text)
    qa_token = make_token(keys.qa.secret, job_id)
    refused = _post(client, job_id, reviewer_form["interpretation"], basic(keys.qa.secret), token=qa_token,
                    score="1", decision="accept")
    assert_problem(refused, 403, "forbidden")
    unsigned = client.post(f"/v1/reports/jobs/{job_id}/reviews", data={"token": qa_token})
    assert_problem(unsigned, 401, "unauthorized")
    # Basic is taken for this one form path only: not for the JSON review route beside it
    assert_problem(client.post(f"/v1/jobs/{job_id}/reviews", headers=basic(keys.reviewer.secret), json={
        "dimension": "interpretation", "score": 1, "decision": "accept"}), 401, "unauthorized")
    assert count(sm, Review) == 0 and all(isinstance(e, AuditEvent) for e in audit_events(sm))


def test_the_interpretation_text_is_corrected_in_place(client: TestClient, keys: Keys,
                                                         sm: sessionmaker[Session]) -> None:
    job_id = _job(client, keys, sm)
    signed_in = basic(keys.reviewer.secret)
    form = _forms(client.get(f"/v1/reports/jobs/{job_id}.html", headers=signed_in).text)["interpretation"]
    shown = _shown_texts(form)
    assert list(shown) == list(PROFILE.interpretation_fields)  # every field, in the profile's order
    assert shown["imaging_plane"] == "transthalamic plane" and shown["gestational_age"] == ""
    # as a browser sends it: every box, the unchanged ones as shown, line breaks as CRLF
    edited = {**shown, "imaging_plane": "transventricular plane\r\nfalx visible", "image_quality": "  "}
    answer = _post(client, job_id, form, signed_in, score="2", decision="correct",
                   field=list(edited), text=list(edited.values()))
    assert answer.status_code == 303, answer.text
    [review] = client.get(f"/v1/jobs/{job_id}/reviews", headers=keys.qa.headers).json()["items"]
    assert review["corrections"]["interpretation"] == {"imaging_plane": "transventricular plane\nfalx visible"}
    assert review["corrections"]["label"] is None

    again = _forms(client.get(f"/v1/reports/jobs/{job_id}.html", headers=signed_in).text)["interpretation"]
    assert "<details open>" in again["body"] and "transventricular plane\nfalx visible" in again["body"]
    # sent back unchanged (the correction as shown), then reverted to the model's text: nothing corrected
    reverted = {**edited, "imaging_plane": "transthalamic plane"}
    _post(client, job_id, again, signed_in, score="1", decision="accept", field=list(reverted),
          text=list(reverted.values()))
    [review] = client.get(f"/v1/jobs/{job_id}/reviews", headers=keys.qa.headers).json()["items"]
    assert review["corrections"] is None and review["revision"] == 2
    lopsided = _post(client, job_id, again, signed_in, score="1", decision="accept", field=["imaging_plane"],
                     text=["a", "b"])
    assert_problem(lopsided, 422, "invalid_request")


def test_text_postgresql_cannot_store_is_refused_on_the_page(client: TestClient, keys: Keys,
                                                              sm: sessionmaker[Session]) -> None:
    job_id = _job(client, keys, sm)
    signed_in = basic(keys.reviewer.secret)
    form = _forms(client.get(f"/v1/reports/jobs/{job_id}.html", headers=signed_in).text)["interpretation"]
    shown = _shown_texts(form)
    # PostgreSQL text cannot hold U+0000: refused at the edge (422), as the JSON review route does
    for values in ({"label": "FL\x00PLANE"}, {"comment": "a\x00b"}, {"group": "a\x00b"},
                   {"field": list(shown), "text": ["a\x00b", *list(shown.values())[1:]]}):
        answer = _post(client, job_id, form, signed_in, score="2", decision="correct", **values)
        assert answer.status_code == 422, answer.text
    assert count(sm, Review) == 0
