"""``/docs`` (Swagger UI) and ``/redoc`` work on a network without Internet access: the pages
name no outside host, and every script, style and icon they load is served by the gateway."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

EXPECTED_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class _References(HTMLParser):
    """The URLs a page loads: src and href attributes, ReDoc's spec-url."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]


def _references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    # Swagger UI is given the OpenAPI document in its script: url: '/openapi.json'
    return parser.urls + re.findall(r"""\burl:\s*['"]([^'"]+)['"]""", html)


@pytest.mark.parametrize(("page", "script"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
def test_docs_pages_load_nothing_from_outside(client: TestClient, page: str, script: str) -> None:
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", r.text, re.IGNORECASE), r.text  # no outside host
    urls = _references(r.text)
    assert any(u.endswith(script) for u in urls), urls
    assert "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        suffix = url[url.rfind("."):]
        expected = EXPECTED_TYPES.get(suffix, "application/json")
        assert asset.headers["content-type"].split(";")[0] == expected, (url, asset.headers["content-type"])
        assert len(asset.content) > 0


def test_swagger_ui_is_recent_enough_for_openapi_3_1(client: TestClient) -> None:
    """The service's document is OpenAPI 3.1, which Swagger UI renders from version 5 on."""
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    bundle = client.get("/docs/static/swagger-ui-bundle.js").text
    assert "OpenAPI31" in bundle


def test_the_online_validator_is_off(client: TestClient) -> None:
    """Swagger UI would otherwise send the OpenAPI document to validator.swagger.io."""
    assert '"validatorUrl": null' in client.get("/docs").text


def test_docs_assets_need_no_key_and_only_serve_the_bundle(client: TestClient) -> None:
    assert client.get("/docs/static/swagger-ui.css").status_code == 200  # no Authorization header
    assert client.get("/docs/static/../../api/app.py").status_code == 404
    assert client.get("/docs/static/nothing-here.js").status_code == 404
