"""Prometheus metrics: request counts and latencies here, job counts read from the database
at scrape time (the workers run in other processes).

Under ``fada api --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set), every gateway process
writes its counts to files there and a scrape sums them all: whichever process answers, the
counters are the gateway's. Process metrics (CPU, memory) are then left out, as
prometheus_client does in that mode."""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from starlette.types import Scope

from services.monitoring import Figures

from .route_templates import route_of

REQUESTS = Counter("fada_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("fada_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
JOBS_SUBMITTED = Counter("fada_jobs_submitted_total", "jobs accepted by this gateway process", ["mode"])


# Label values must be few: any other method a client invents is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_request(scope: Scope, status: int, seconds: float) -> None:
    route = route_of(scope) or "unmatched"  # templates, never raw ids
    method = scope["method"] if scope["method"] in METHODS else "other"
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def render(figures: Figures | None) -> bytes:
    """The process metrics plus the database's figures (``services.monitoring``); None when the
    database did not answer (``fada_database_up`` 0, no figures)."""
    extra = CollectorRegistry(auto_describe=False)

    class _Db:
        def collect(self):  # type: ignore[no-untyped-def]
            yield GaugeMetricFamily("fada_database_up", "1 when the database answered this scrape, else 0",
                                    value=0 if figures is None else 1)
            if figures is not None:
                yield from _families(figures)

    extra.register(_Db())
    return generate_latest(_gateway_registry()) + generate_latest(extra)


def _families(f: Figures) -> Iterator[GaugeMetricFamily]:
    jobs = GaugeMetricFamily("fada_jobs", "jobs in the database per status", labels=["status"])
    for status, n in sorted(f.jobs.items()):
        jobs.add_metric([status], n)
    yield jobs
    oldest = GaugeMetricFamily(
        "fada_jobs_oldest_waiting_seconds",
        "seconds the longest-waiting job in this status has waited: queued, for a worker (since it was "
        "submitted, put back for a retry or resumed after review); awaiting_review, for a sonographer; "
        "0 when none waits", labels=["status"])
    for status, seconds in sorted(f.oldest_waiting_seconds.items()):
        oldest.add_metric([status], seconds)
    yield oldest
    yield GaugeMetricFamily("fada_jobs_unpublished",
                            "queued jobs whose message the broker refused, left for the sweeper to send",
                            value=f.unpublished)
    yield GaugeMetricFamily("fada_workers_live", "worker processes with a recent heartbeat", value=f.workers_live)
    deliveries = GaugeMetricFamily("fada_deliveries", "webhook events and PACS SR pushes still to send (pending) "
                                   "or given up (failed)", labels=["kind", "status"])
    for (kind, status), n in sorted(f.deliveries.items()):
        deliveries.add_metric([kind, status], n)
    yield deliveries
    pending = GaugeMetricFamily("fada_deliveries_oldest_pending_seconds",
                                "seconds since the event of the oldest delivery still to send; 0 when none",
                                labels=["kind"])
    for kind, seconds in sorted(f.oldest_pending_delivery_seconds.items()):
        pending.add_metric([kind], seconds)
    yield pending
    keys = GaugeMetricFamily("fada_api_key_expires_in_seconds",
                             "seconds an unrevoked API key with an expiry still works; negative once it has "
                             "expired (revoking the key removes it)", labels=["key_prefix", "name", "role"])
    for key in f.key_expiry:
        keys.add_metric([key.key_prefix, key.name, key.role], key.expires_in_seconds)
    yield keys


def _gateway_registry() -> CollectorRegistry:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    every_process = CollectorRegistry()
    multiprocess.MultiProcessCollector(every_process)
    return every_process
