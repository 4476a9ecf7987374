"""Reports are for QA: qa and admin keys read them; submitter and reviewer keys get 403, a
missing or unknown key 401 (every route, every format)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import Keys
from tests.api.helpers import assert_problem

ROUTES = ["/v1/reports/scores", "/v1/reports/scores?format=csv", "/v1/reports/scores.html?group_by=day"]


def test_only_qa_and_admin_read_reports(client: TestClient, keys: Keys) -> None:
    for route in ROUTES:
        for key in (keys.qa, keys.admin):
            response = client.get(route, headers=key.headers)
            assert response.status_code == 200, (route, key.role, response.text)
        for key in (keys.submitter, keys.reviewer):
            body = assert_problem(client.get(route, headers=key.headers), 403, "forbidden")
            assert "qa" in body["detail"], body
        assert_problem(client.get(route), 401, "unauthorized")
        assert_problem(client.get(route, headers={"Authorization": "Bearer fada_nope"}), 401, "unauthorized")


def test_the_page_is_html_and_self_contained(client: TestClient, keys: Keys) -> None:
    response = client.get("/v1/reports/scores.html", headers=keys.qa.headers)
    assert response.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page = response.text.lower()
    for outside in ("<script", "<link", "@import", "src=", "url(", "http://", "https://"):
        assert outside not in page.replace('xmlns="http://www.w3.org/2000/svg"', ""), outside
