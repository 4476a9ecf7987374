"""QA staff open the report page in a browser: the report routes also take the key as the
password of HTTP Basic credentials (a browser cannot send a Bearer header), and their 401
carries a Basic challenge so that the browser asks for it. No other route takes Basic: a
browser sends cached Basic credentials with any request to the origin, cross-site form
posts included."""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from shared.db.models import JobMode
from tests.api.conftest import Keys
from tests.api.helpers import assert_problem, file_part, png

from .helpers import INTERPRETATION, Seeder
from .test_html_page import FLAGS, chromium

REPORT_ROUTES = ["/v1/reports/scores", "/v1/reports/scores?format=csv", "/v1/reports/scores.html?group_by=day"]


def basic(password: str, user: str = "qa-desk") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def challenges(response) -> list[str]:  # type: ignore[no-untyped-def]
    return [value.split(" ", 1)[0].lower() for value in response.headers.get_list("www-authenticate")]


def test_reports_take_the_key_as_a_basic_password(client: TestClient, keys: Keys, seeder: Seeder) -> None:
    jobs = seeder.jobs(2, mode=JobMode.autonomous)
    seeder.reviews(jobs, INTERPRETATION, [1, 2])
    for route in REPORT_ROUTES:
        by_basic = client.get(route, headers=basic(keys.qa.secret))
        assert by_basic.status_code == 200, (route, by_basic.text)
        by_bearer = client.get(route, headers=keys.qa.headers)
        if route == "/v1/reports/scores":  # the same report; generated_at may have ticked a second on
            assert {**by_basic.json(), "generated_at": None} == {**by_bearer.json(), "generated_at": None}
        elif "html" not in route:
            assert by_basic.content == by_bearer.content, route
    assert client.get("/v1/reports/scores", headers=basic(keys.qa.secret, user="")).status_code == 200
    assert client.head("/v1/reports/scores.html", headers=basic(keys.admin.secret)).status_code == 200
    # The role still decides, and a wrong or empty password is no key.
    assert_problem(client.get("/v1/reports/scores", headers=basic(keys.reviewer.secret)), 403, "forbidden")
    for credentials in (basic("fada_not-a-key"), basic(""), {"Authorization": "Basic not-base64!"},
                        {"Authorization": "Basic " + base64.b64encode(keys.qa.secret.encode()).decode()}):
        assert_problem(client.get("/v1/reports/scores", headers=credentials), 401, "unauthorized")


def test_a_report_asks_a_browser_to_sign_in(client: TestClient) -> None:
    for route in REPORT_ROUTES:
        response = client.get(route)
        body = assert_problem(response, 401, "unauthorized")
        assert challenges(response) == ["bearer", "basic"], response.headers
        assert 'realm="fada reports"' in response.headers.get_list("www-authenticate")[1]
        assert "browser" in body["detail"], body


def test_no_other_route_takes_basic_credentials(client: TestClient, keys: Keys, subtests: pytest.Subtests) -> None:
    """Not the API's reads, not any write, not a report by a method that is not a read."""
    job = client.post("/v1/jobs", files=file_part(png()), headers=keys.admin.headers)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    for method, path in (("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{job_id}"), ("POST", "/v1/jobs"),
                         ("POST", f"/v1/jobs/{job_id}/cancel"), ("POST", "/v1/reports/scores"),
                         ("GET", "/dicomweb/studies")):
        with subtests.test(f"{method} {path}"):
            files = file_part(png()) if path == "/v1/jobs" and method == "POST" else None
            response = client.request(method, path, files=files, headers=basic(keys.admin.secret))
            body = assert_problem(response, 401, "unauthorized")
            assert "Basic credentials are taken only by the report pages" in body["detail"], body
            assert challenges(response) == ["bearer"], response.headers
    assert client.get(f"/v1/jobs/{job_id}", headers=keys.admin.headers).json()["status"] == "queued"


def test_a_browser_signs_in_and_follows_the_page_s_form(
        sqlite_app: FastAPI, sqlite_seeder: Seeder, sqlite_keys: Keys, serve: Callable[[FastAPI], str],
        tmp_path: Path) -> None:
    """Headless Chromium with the key in the URL's user info: it meets the 401's Basic
    challenge, answers it, and gets the page; then the URL the page's filter form submits."""
    browser = chromium()
    jobs = sqlite_seeder.jobs(3, mode=JobMode.hitl, label="BPD_PLANE")
    sqlite_seeder.reviews(jobs, INTERPRETATION, [1, 1, 3])
    base = serve(sqlite_app)
    signed_in = base.replace("http://", f"http://qa:{quote(sqlite_keys.qa.secret, safe='')}@")

    def dom(url: str, profile: str) -> str:
        done = subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp_path / profile}", "--dump-dom", url],
                              capture_output=True, text=True, timeout=90, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    page = dom(f"{signed_in}/v1/reports/scores.html", "first")
    assert "<h1" in page and "Unauthorized" not in page, page[:2000]
    form = re.search(r'<form class="filters" method="get" action="([^"]+)"', page)
    assert form and form.group(1) == "scores.html", "the form no longer submits beside the page"
    filtered = dom(f"{signed_in}/v1/reports/{form.group(1)}?group_by=mode&mode=hitl", "second")
    assert re.search(r'<td class="key">hitl</td>', filtered), filtered[:3000]
    # Without credentials a browser is left at its sign-in prompt (headless: an empty page).
    assert "<h1" not in dom(f"{base}/v1/reports/scores.html", "third")
