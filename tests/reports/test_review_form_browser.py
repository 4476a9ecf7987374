"""A sonographer in a real browser: Chromium (Debian's, driven by Playwright) signs in at the
Basic prompt with the key as password, opens the reviewer's queue, follows the link to the job,
ticks a score and a decision, types a comment and presses the button; the browser follows the
303 back to the page, which now offers to amend. What only a browser decides is checked so:
that it sends a same-origin form with the credentials, that the page's CSP lets the form go
(form-action 'self'), that the relative action and redirect resolve.

Then the attack the form token exists for: a page on another origin, open in the same
signed-in browser, posts a review form to the service. The browser attaches the credentials;
the service refuses it (the browser says cross-site, and the page could not read a token)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from fastapi import FastAPI
from playwright.sync_api import HttpCredentials, sync_playwright
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import complete
from shared.db.models import Review
from tests.api.conftest import Keys
from tests.api.helpers import OWNER, count, file_part, run_job

from .test_html_page import chromium
from .test_job_page import _document, _upload


def test_a_sonographer_reviews_a_job_in_the_browser(sqlite_app: FastAPI, sqlite_sm: sessionmaker[Session],
                                                     sqlite_keys: Keys, serve: Callable[[FastAPI], str]) -> None:
    browser_path = chromium()
    base = serve(sqlite_app)
    posted = httpx.post(f"{base}/v1/jobs", files=file_part(_upload()), data={"mode": "hitl", "external_id": "H-9"},
                        headers=sqlite_keys.submitter.headers)
    job_id = posted.json()["id"]
    # an untrained model's text: long runs without a space, which must wrap, not widen the page
    document = _document()
    document.interpretation = {**(document.interpretation or {}), "anatomical_structures": "Babdomen" * 300,
                               "fetal_orientation": "cephalic\nspine posterior"}  # a browser sends it as CRLF
    run_job(sqlite_sm, job_id)
    with sqlite_sm.begin() as session:
        assert complete(session, job_id, OWNER, document, awaiting_review=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            # the answer to the Basic prompt
            signed_in: HttpCredentials = {"username": "sono-1", "password": sqlite_keys.reviewer.secret}
            context = browser.new_context(http_credentials=signed_in)
            page = context.new_page()
            page.goto(f"{base}/v1/reports/queue.html")
            page.click("text=H-9")  # the queue's link to the job page
            assert page.url == f"{base}/v1/reports/jobs/{job_id}.html"
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
            page.check('input[name="score"][value="1"]')
            page.check('input[name="decision"][value="accept"]')
            page.check('input[name="next_phases"][value="detect"]')
            page.fill('textarea[name="comment"]', "clear transthalamic plane")
            with page.expect_navigation():
                page.click("text=Save the interpretation review")
            assert page.url == f"{base}/v1/reports/jobs/{job_id}.html"  # the 303, followed
            assert page.locator("text=clear transthalamic plane").count() >= 1  # in the reviews table
            review = httpx.get(f"{base}/v1/jobs/{job_id}/reviews", headers=sqlite_keys.qa.headers).json()["items"]
            assert [(r["score"], r["decision"], r["next_phases"], r["reviewer"]["key_id"]) for r in review] == [
                (1, "accept", ["detect"], sqlite_keys.reviewer.id)]
            assert review[0]["corrections"] is None  # the text boxes went back as shown: nothing corrected
            assert httpx.get(f"{base}/v1/jobs/{job_id}", headers=sqlite_keys.qa.headers).json()["status"] == "queued"

            # another site, open in the same signed-in browser, posts a form of its own
            attacker = context.new_page()
            attacker.set_content(
                f'<form method="post" action="{base}/v1/reports/jobs/{job_id}/reviews">'
                '<input name="token" value="1999999999.guess"><input name="dimension" value="interpretation">'
                '<input name="score" value="3"><input name="decision" value="reject"><button>go</button></form>')
            with attacker.expect_navigation():
                attacker.click("button")
            assert "cross_site_form" in attacker.content()
        finally:
            browser.close()
    assert count(sqlite_sm, Review) == 1
