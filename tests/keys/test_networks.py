"""Keys limited to networks (``fada keys create --allow-from``, ``fada keys networks``): what
counts as inside, the normal form stored, a refusal that does not count as a use, and the
command line's clear refusals. On PostgreSQL and SQLite."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from services.keys import AddressNotAllowed, authenticate, create_key, set_networks
from services.networks import InvalidNetwork, address_allowed, parse_networks
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.models import ApiKey

from .helpers import cli as _cli


def test_networks_are_stored_in_their_normal_form() -> None:
    assert parse_networks(["10.20.0.7/24", " 192.168.1.5 ", "10.20.0.0/24", "2001:db8::1/64"]) == [
        "10.20.0.0/24", "192.168.1.5/32", "2001:db8::/64"]
    for bad in (["10.20.0.0/33"], ["pacs.hospital.org"], [""], []):
        with pytest.raises(InvalidNetwork):
            parse_networks(bad)


@pytest.mark.parametrize(("address", "allowed"), [
    ("10.20.0.7", True), ("10.20.1.7", False), ("::ffff:10.20.0.9", True),  # IPv4 seen through IPv6
    ("2001:db8::5", True), ("2001:db9::5", False), ("testclient", False), ("", False), (None, False),
])
def test_an_address_is_inside_a_network_or_not(address: str | None, allowed: bool) -> None:
    networks = ["10.20.0.0/24", "2001:db8::/64"]
    assert address_allowed(networks, address) is allowed
    assert address_allowed(None, address), "no networks: anywhere"



def _listed(url: str) -> dict[str, str]:
    header, row = (line.split("\t") for line in _cli(url, "keys", "list").stdout.splitlines())
    return dict(zip(header, row, strict=True))


def test_a_key_limited_to_networks_through_the_cli(database_url: str) -> None:
    _cli(database_url, "migrate")
    secret = _cli(database_url, "keys", "create", "--role", "submitter", "--name", "pacs-bridge", "--allow-from",
                  "10.20.0.0/24", "--allow-from", "10.99.0.4").stdout.strip()
    assert _listed(database_url)["networks"] == "10.20.0.0/24,10.99.0.4/32"
    sessions = make_sessionmaker(make_engine(database_url))
    with sessions.begin() as session:
        assert authenticate(session, secret, client="10.99.0.4") is not None
    with sessions.begin() as session:
        session.execute(update(ApiKey).values(last_used_at=None))
    with sessions.begin() as session, pytest.raises(AddressNotAllowed, match=r"10\.30\.0\.1"):
        authenticate(session, secret, client="10.30.0.1")
    with sessions() as session:
        assert session.scalars(select(ApiKey.last_used_at)).one() is None, "a refused request is no use"

    changed = _cli(database_url, "keys", "networks", secret[:12], "--anywhere")
    assert "usable from anywhere" in changed.stderr and _listed(database_url)["networks"] == "-"
    with sessions.begin() as session:
        assert authenticate(session, secret, client="10.30.0.1") is not None

    for args in (["--allow-from", "not-a-network"], [], ["--allow-from", "10.0.0.0/8", "--anywhere"]):
        _cli(database_url, "keys", "networks", secret[:12], *args, exit_code=2)
    _cli(database_url, "keys", "networks", "fada_nothing", "--anywhere", exit_code=2)
    refused = _cli(database_url, "keys", "create", "--role", "qa", "--name", "x", "--allow-from", "10.0.0.0/99",
                   exit_code=2)
    assert "not an IP network" in refused.output
    with sessions() as session:
        assert session.scalars(select(ApiKey.name)).all() == ["pacs-bridge"], "nothing stored for a bad network"
        assert session.scalars(select(ApiKey.allowed_networks)).one() is None


def test_the_key_service_refuses_a_bad_network_and_keeps_the_old_limit(database_url: str) -> None:
    _cli(database_url, "migrate")
    sessions = make_sessionmaker(make_engine(database_url))
    with sessions.begin() as session:
        key_id = create_key(session, name="bridge", role="submitter", networks=["10.20.0.0/24"]).key.id
    with sessions() as session, pytest.raises(InvalidNetwork):
        set_networks(session, key_id, ["10.20.0.0/24", "bogus"])
    with sessions() as session:
        assert session.scalars(select(ApiKey.allowed_networks)).one() == ["10.20.0.0/24"]
