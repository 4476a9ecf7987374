"""A key limited to its networks, through the gateway: from inside it works, from outside the
answer is 403 address_not_allowed (problem+json), nothing is stored, and the audit trail names
the key and the address. Behind a trusted reverse proxy the caller's own address counts."""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.keys import set_networks
from shared.db.models import Job

from .conftest import AppFactory, Keys, Serve
from .helpers import assert_problem, file_part, png


def _jobs(sm: sessionmaker[Session]) -> int:
    with sm() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_a_key_is_refused_outside_its_networks_and_the_refusal_is_audited(make_app: AppFactory, keys: Keys,
                                                                          sm: sessionmaker[Session]) -> None:
    with sm.begin() as session:
        set_networks(session, keys.submitter.id, ["10.20.0.0/24"])
    app = make_app()
    with TestClient(app, client=("10.20.0.7", 40000)) as bridge, TestClient(app, client=("10.30.0.1", 40000)) as ward:
        assert bridge.post("/v1/jobs", files=file_part(png(1)), headers=keys.submitter.headers).status_code == 202
        problem = assert_problem(ward.post("/v1/jobs", files=file_part(png(2)), headers=keys.submitter.headers),
                                 403, "address_not_allowed")
        assert "10.30.0.1" in problem["detail"]
        assert _jobs(sm) == 1, "nothing stored for the refused request"
        assert ward.get("/v1/jobs", headers=keys.reviewer.headers).status_code == 200  # other keys: anywhere

        [event] = ward.get("/v1/audit", params={"outcome": "denied"}, headers=keys.admin.headers).json()["items"]
    assert event["api_key"]["id"] == keys.submitter.id and event["action"] == "POST /v1/jobs"
    assert (event["detail"]["status"], event["detail"]["client"]) == (403, "10.30.0.1")


def test_behind_a_trusted_proxy_the_caller_s_address_counts(make_app: AppFactory, serve: Serve, keys: Keys,
                                                            sm: sessionmaker[Session]) -> None:
    """uvicorn trusts X-Forwarded-For from 127.0.0.1 by default (FORWARDED_ALLOW_IPS), as from
    a reverse proxy on the gateway's host."""
    with sm.begin() as session:
        set_networks(session, keys.submitter.id, ["10.20.0.0/24"])
    with httpx.Client(base_url=serve(make_app())) as proxy:
        inside = proxy.get("/v1/jobs", headers={**keys.submitter.headers, "X-Forwarded-For": "10.20.0.7"})
        outside = proxy.get("/v1/jobs", headers={**keys.submitter.headers, "X-Forwarded-For": "192.0.2.1"})
        direct = proxy.get("/v1/jobs", headers=keys.submitter.headers)  # the proxy's own address: 127.0.0.1
    assert inside.status_code == 200
    assert_problem(outside, 403, "address_not_allowed")
    assert_problem(direct, 403, "address_not_allowed")
