"""Where an API key may be used from: its networks (CIDR), checked against the address of the
request's client as the gateway resolved it (behind a reverse proxy, the caller's own once
uvicorn's FORWARDED_ALLOW_IPS trusts the proxy; otherwise every request is the proxy's)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class InvalidNetwork(ValueError):
    """Not an IP network or address in CIDR notation."""


def parse_networks(values: Iterable[str]) -> list[str]:
    """The networks in their normal form (``10.20.0.7/24`` is ``10.20.0.0/24``; an address
    alone is its own /32 or /128), duplicates dropped, in the order given. At least one."""
    parsed: list[str] = []
    for value in values:
        try:
            network = str(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise InvalidNetwork(f"{value!r} is not an IP network (e.g. 10.20.0.0/24) or address") from exc
        if network not in parsed:
            parsed.append(network)
    if not parsed:
        raise InvalidNetwork("name at least one network")
    return parsed


def address_allowed(networks: list[str] | None, address: str | None) -> bool:
    """Whether a client at ``address`` may use a key limited to ``networks`` (None: anywhere).
    An address that is not an IP (a Unix socket, a test client) or unknown is outside every
    network; an IPv4 address seen as IPv6 (``::ffff:10.20.0.7``) is the IPv4 one."""
    if networks is None:
        return True
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(network) for network in networks)
