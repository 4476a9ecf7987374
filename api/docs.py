"""The API's documentation pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), with their
scripts and styles served by the gateway itself.

FastAPI's own pages load them from a public CDN, so on a hospital network without Internet
access they stay blank. The files come from the ``fastapi-offline`` package (Swagger UI 5, which
reads OpenAPI 3.1, and the ReDoc standalone bundle), mounted under ``/docs/static``; the pages
are FastAPI's, pointed at them (FastAPI's documented way of self-hosting the docs assets).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
STATIC_URL = "/docs/static"
ASSETS = Path(str(files("fastapi_offline") / "static"))

# No call out of the hospital network from the page either: the online validator badge of
# Swagger UI would send the whole OpenAPI document to validator.swagger.io.
SWAGGER_PARAMETERS = {"validatorUrl": None}


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` with local assets (the app is made with ``docs_url=None``
    and ``redoc_url=None``)."""
    app.mount(STATIC_URL, StaticFiles(directory=ASSETS), name="docs-static")
    title = app.title

    def prefix(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), **SWAGGER_PARAMETERS})

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = prefix(request)
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png", with_google_fonts=False)
