"""docs/prometheus-alerts.yml against Prometheus's own checker: the rules parse, and on the
series a real gateway exposes (scraped here, once healthy and once in trouble) exactly the
alerts meant for that trouble fire, once however many gateways are scraped."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from services.keys import create_key, revoke_key
from services.workers import beat, forget
from shared.db.models import Delivery, DeliveryKind, DeliveryStatus, Job
from shared.db.types import utcnow
from tests.fixtures_db import peer_unavailable

from .conftest import Keys
from .helpers import PROVENANCE, file_part, png, succeed_job

RULES = Path(__file__).resolve().parents[2] / "docs" / "prometheus-alerts.yml"
WORKER = "host:7:gpu"
GATEWAYS = ("gateway-1:8000", "gateway-2:8000")


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        peer_unavailable("promtool not found", hint="apt-get install --no-install-recommends prometheus")
    return path


def _alerts() -> dict[str, dict[str, Any]]:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    return {rule["alert"]: rule for rule in rules}


def _database_figures(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The scrape's samples read from the database (the ones the rules judge), by name and labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith(("fada_jobs", "fada_workers", "fada_deliveries", "fada_database"))}


def _series(name: str, labels: tuple[tuple[str, str], ...], instance: str) -> str:
    every = dict(labels, instance=instance, job="fada")
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(every.items())) + "}"


def test_the_alert_rules_pass_promtool_check() -> None:
    done = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in done.stdout


def test_the_alerts_fire_on_what_a_gateway_scrapes_in_trouble(client: TestClient, keys: Keys,
                                                              sm: sessionmaker[Session], tmp_path: Path) -> None:
    promtool = _promtool()
    # Healthy: a live worker, a fresh queued job, nothing to deliver.
    with sm.begin() as session:
        beat(session, WORKER, provenance=PROVENANCE, queues="gpu")
    queued, hitl, done = (client.post("/v1/jobs", files=file_part(png(i)), data={"mode": mode},
                                      headers=keys.submitter.headers).json()["id"]
                          for i, mode in enumerate(("autonomous", "hitl", "autonomous")))
    healthy = _database_figures(client.get("/metrics").text)

    # Trouble: the worker gone, the queued job 20 minutes old and its message refused, a HITL
    # job two days with no reviewer, an SR push two hours pending, a webhook given up.
    succeed_job(sm, hitl, awaiting_review=True)
    succeed_job(sm, done)
    now = utcnow()
    with sm.begin() as session:
        forget(session, WORKER)
        session.execute(update(Job).where(Job.id == queued).values(waiting_since=now - timedelta(minutes=20),
                                                                   unpublished=True))
        session.execute(update(Job).where(Job.id == hitl).values(waiting_since=now - timedelta(days=2)))
        session.add_all([
            Delivery(job_id=done, kind=DeliveryKind.pacs_sr, event="job.succeeded", url="http://pacs.test/studies",
                     payload={}, created_at=now - timedelta(hours=2)),
            Delivery(job_id=done, kind=DeliveryKind.webhook, event="job.succeeded", url="http://ris.test/hook",
                     payload={}, status=DeliveryStatus.failed, attempts=8),
        ])
    trouble = _database_figures(client.get("/metrics").text)
    assert set(trouble) == set(healthy)  # the same series, so each keeps one name through the change

    # Each gateway reports the same database figures: healthy for 30 minutes, then in trouble
    # for 30; then no gateway answers at all.
    input_series = [{"series": _series(name, labels, gateway),
                     "values": f"{healthy[(name, labels)]!r}x29 {trouble[(name, labels)]!r}x30"}
                    for name, labels in sorted(trouble) for gateway in GATEWAYS]
    rules = _alerts()

    def expect(alert: str, **labels: str) -> dict[str, Any]:
        rule = rules[alert]
        annotations = {k: v.replace("{{ $labels.kind }}", labels.get("kind", ""))
                       for k, v in rule["annotations"].items()}
        return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": annotations}

    firing_in_trouble = {
        "FadaNoLiveWorker": [expect("FadaNoLiveWorker")],
        "FadaQueueStalled": [expect("FadaQueueStalled")],
        "FadaJobsUnpublished": [expect("FadaJobsUnpublished")],
        "FadaDeliveriesFailed": [expect("FadaDeliveriesFailed", kind="webhook")],
        "FadaDeliveriesDelayed": [expect("FadaDeliveriesDelayed", kind="pacs_sr")],
        "FadaReviewBacklog": [expect("FadaReviewBacklog")],
    }
    checks: list[dict[str, Any]] = [{"eval_time": "25m", "alertname": alert, "exp_alerts": []} for alert in rules]
    checks += [{"eval_time": "55m", "alertname": alert, "exp_alerts": firing_in_trouble.get(alert, [])}
               for alert in rules]
    # The series end at 60m and go stale 5 minutes later; absent() then holds for its 5 minutes.
    checks.append({"eval_time": "72m", "alertname": "FadaMetricsAbsent", "exp_alerts": [expect("FadaMetricsAbsent")]})
    unit = tmp_path / "alerts_test.yml"
    unit.write_text(yaml.safe_dump({
        "rule_files": [str(RULES)], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "alert_rule_test": checks}],
    }))
    result = subprocess.run([promtool, "test", "rules", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_server_errors_count_the_api_not_a_load_balancers_readiness_polls(client: TestClient, keys: Keys,
                                                                          tmp_path: Path) -> None:
    """FadaServerErrors on request counters of the label sets a gateway really exposes: 503s
    of /readyz (no worker yet, a load balancer polling) do not fire it; 503s of submissions
    (a database outage) do, after its 10 minutes."""
    promtool = _promtool()
    assert client.post("/v1/jobs", files=file_part(png(1)), headers=keys.submitter.headers).status_code == 202
    assert client.get("/readyz").status_code == 503
    counters = {labels for (name, labels) in _request_counters(client.get("/metrics").text)}
    submitted = next(labels for labels in counters if dict(labels) == {"method": "POST", "route": "/v1/jobs",
                                                                      "status": "202"})
    polled = next(labels for labels in counters if dict(labels) == {"method": "GET", "route": "/readyz",
                                                                   "status": "503"})
    refused = tuple(sorted({**dict(submitted), "status": "503"}.items()))
    name = "fada_http_requests_total"
    series = [
        {"series": _series(name, submitted, GATEWAYS[0]), "values": "0+60x59"},  # 60 submissions a minute
        {"series": _series(name, polled, GATEWAYS[0]), "values": "0+30x59"},  # every poll 503, all along
        {"series": _series(name, refused, GATEWAYS[0]), "values": "0x19 0+20x39"},  # 20 a minute from 20m
    ]
    rule = _alerts()["FadaServerErrors"]
    firing = [{"exp_labels": rule["labels"], "exp_annotations": rule["annotations"]}]
    unit = tmp_path / "errors_test.yml"
    unit.write_text(yaml.safe_dump({
        "rule_files": [str(RULES)], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [
            {"eval_time": "19m", "alertname": "FadaServerErrors", "exp_alerts": []},
            {"eval_time": "45m", "alertname": "FadaServerErrors", "exp_alerts": firing},
        ]}],
    }))
    result = subprocess.run([promtool, "test", "rules", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_keys_about_to_expire_or_expired_alert_until_revoked(client: TestClient, keys: Keys,
                                                           sm: sessionmaker[Session], tmp_path: Path) -> None:
    """FadaApiKeyExpiring on the key series a gateway exposes: a PACS bridge's key 10 days from
    its end and one that ran out 3 days ago alert; a key with a month left, a revoked one about
    to expire and the keys with no expiry do not."""
    promtool = _promtool()
    now = utcnow()
    with sm.begin() as session:
        for name, days in (("pacs-bridge", 10), ("batch-script", 30), ("old-bridge", -3), ("retired", 5)):
            made = create_key(session, name=name, role="submitter", expires_at=now + timedelta(days=days))
            if name == "retired":
                revoke_key(session, made.key.id)
    samples = [s for family in text_string_to_metric_families(client.get("/metrics").text) for s in family.samples
               if s.name == "fada_api_key_expires_in_seconds"]
    left = {s.labels["name"]: s.value for s in samples}
    assert set(left) == {"pacs-bridge", "batch-script", "old-bridge"}  # revoked and never-expiring keys: none
    assert abs(left["pacs-bridge"] - 10 * 86400) < 120 and abs(left["old-bridge"] + 3 * 86400) < 120
    assert {s.labels["role"] for s in samples} == {"submitter"}

    series = [{"series": _series(s.name, tuple(sorted(s.labels.items())), gateway), "values": f"{s.value!r}x30"}
              for s in samples for gateway in GATEWAYS]
    rule = _alerts()["FadaApiKeyExpiring"]

    def firing(sample_name: str) -> dict[str, Any]:
        labels = next(s.labels for s in samples if s.labels["name"] == sample_name)
        summary = (rule["annotations"]["summary"].replace("{{ $labels.name }}", labels["name"])
                   .replace("{{ $labels.key_prefix }}", labels["key_prefix"]))
        return {"exp_labels": {**rule["labels"], **labels},
                "exp_annotations": {**rule["annotations"], "summary": summary}}

    unit = tmp_path / "keys_test.yml"
    unit.write_text(yaml.safe_dump({
        "rule_files": [str(RULES)], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [
            {"eval_time": "10m", "alertname": "FadaApiKeyExpiring",
             "exp_alerts": [firing("old-bridge"), firing("pacs-bridge")]},
        ]}],
    }))
    result = subprocess.run([promtool, "test", "rules", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_refused_credentials_alert_on_a_caller_left_on_an_old_secret(client: TestClient, keys: Keys,
                                                                     tmp_path: Path) -> None:
    """FadaCredentialsRefused on the counters a gateway exposes: a bridge refused 10 times a
    minute (its secret's overlap over) fires after 15 minutes; a few refusals an hour do not."""
    promtool = _promtool()
    refused = client.post("/v1/jobs", files=file_part(png(1)), headers={"Authorization": "Bearer fada_old-secret"})
    assert refused.status_code == 401
    # Refused before routing, but labelled with the route it would have reached; the rule does not
    # read the route. The counters are the process's: other tests' refusals may be there too.
    [labels] = [labels for (_, labels) in _request_counters(client.get("/metrics").text)
                if dict(labels) == {"method": "POST", "route": "/v1/jobs", "status": "401"}]
    name = "fada_http_requests_total"
    rule = _alerts()["FadaCredentialsRefused"]
    firing = [{"exp_labels": rule["labels"], "exp_annotations": rule["annotations"]}]
    unit = tmp_path / "refused_test.yml"
    unit.write_text(yaml.safe_dump({
        "rule_files": [str(RULES)], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [
            {"series": _series(name, labels, GATEWAYS[0]), "values": "0x29 0+10x59"},  # from 30m: 10 a minute
            {"series": _series(name, labels, GATEWAYS[1]), "values": "0+0.05x89"},  # 3 an hour, all along
        ], "alert_rule_test": [
            {"eval_time": "29m", "alertname": "FadaCredentialsRefused", "exp_alerts": []},
            {"eval_time": "40m", "alertname": "FadaCredentialsRefused", "exp_alerts": []},  # not yet 15 minutes
            {"eval_time": "60m", "alertname": "FadaCredentialsRefused", "exp_alerts": firing},
        ]}],
    }))
    result = subprocess.run([promtool, "test", "rules", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _request_counters(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(s.name, tuple(sorted(s.labels.items()))) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "fada_http_requests_total"}


def test_every_metric_the_rules_name_is_one_a_gateway_exposes(client: TestClient) -> None:
    """A renamed metric would leave its alert silent for ever; promtool cannot know our names."""
    client.get("/healthz")  # so that the request counter has a sample
    exposed = {family.name for family in text_string_to_metric_families(client.get("/metrics").text)}
    exposed |= {f"{name}_total" for name in exposed}  # the parser drops a counter's _total
    rules = _alerts()
    named = {name for rule in rules.values() for name in re.findall(r"\bfada_[a-z_]+", rule["expr"])}
    assert named - exposed == set()
    assert len(named) >= 7, named
    for alert, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, alert
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], alert
