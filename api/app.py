"""The gateway's app factory: ``uvicorn --factory api.app:create_app`` (or ``fada api``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from services.queue import make_celery
from shared.db.engine import engine_from_settings, make_sessionmaker
from shared.settings import Settings

from . import problems
from .context import AppContext
from .deps import V1_DEPENDENCIES
from .docs import install_docs
from .middleware import BodyLimitMiddleware, GatewayMiddleware, HeadMiddleware
from .problems import V1_PROBLEMS
from .routes import audit, batches, dicomweb, evaluations, jobs, ops, reports, review_pages, reviews
from .strict_inputs import document_strict_forms

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    ctx = AppContext(settings=settings, sm=make_sessionmaker(engine_from_settings(settings)),
                     celery=make_celery(settings))
    app = FastAPI(
        title="FADA Serve",
        version="1.0.0",
        summary="Fetal-ultrasound AI as a hospital service: submit images, get structured results.",
        description="The HTTP contract v1. Errors are application/problem+json (RFC 9457). "
                    "Every /v1 route needs `Authorization: Bearer <api key>`.",
        docs_url=None,  # /docs and /redoc are served with local assets (install_docs): no CDN
        redoc_url=None,
    )
    app.state.ctx = ctx
    problems.install(app)
    # Every /v1 router: the bearer scheme and the problems any /v1 route can answer, documented.
    for router in (jobs.router, batches.router, reviews.router, reports.router, review_pages.router,
                   evaluations.router, dicomweb.router, audit.router):
        app.include_router(router, dependencies=V1_DEPENDENCIES, responses=V1_PROBLEMS)
    app.include_router(ops.router)
    install_docs(app)
    document_strict_forms(app)
    # Outermost first on the way in: ids, auth and audit, then the body limit, then HEAD as GET.
    app.add_middleware(HeadMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(GatewayMiddleware, ctx=ctx)
    return app
