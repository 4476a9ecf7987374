"""Prometheus metrics: request counts and latencies here, job counts read from the database
at scrape time (the workers run in other processes).

Under ``fada api --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set), every gateway process
writes its counts to files there and a scrape sums them all: whichever process answers, the
counters are the gateway's. Process metrics (CPU, memory) are then left out, as
prometheus_client does in that mode."""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from starlette.types import Scope

REQUESTS = Counter("fada_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("fada_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
JOBS_SUBMITTED = Counter("fada_jobs_submitted_total", "jobs accepted by this gateway process", ["mode"])


# Label values must be few: any other method a client invents is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_request(scope: Scope, status: int, seconds: float) -> None:
    route = getattr(scope.get("route"), "path", None) or "unmatched"  # templates, never raw ids
    method = scope["method"] if scope["method"] in METHODS else "other"
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def render(database: tuple[dict[str, int], int] | None) -> bytes:
    """The process metrics plus the database's figures: job counts per status and the live
    worker count; None when the database did not answer (``fada_database_up`` 0, no counts)."""
    extra = CollectorRegistry(auto_describe=False)

    class _Db:
        def collect(self):  # type: ignore[no-untyped-def]
            yield GaugeMetricFamily("fada_database_up", "1 when the database answered this scrape, else 0",
                                    value=0 if database is None else 1)
            if database is None:
                return
            job_counts, live_workers = database
            jobs = GaugeMetricFamily("fada_jobs", "jobs in the database per status", labels=["status"])
            for status, n in sorted(job_counts.items()):
                jobs.add_metric([status], n)
            yield jobs
            yield GaugeMetricFamily("fada_workers_live", "worker processes with a recent heartbeat",
                                    value=live_workers)

    extra.register(_Db())
    return generate_latest(_gateway_registry()) + generate_latest(extra)


def _gateway_registry() -> CollectorRegistry:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    every_process = CollectorRegistry()
    multiprocess.MultiProcessCollector(every_process)
    return every_process
