"""Which URLs the service may call. A callback URL chosen by a caller makes the service send
requests from inside the hospital network, so: http(s) only, no credentials in the URL; never
the service's own host or the link-local range (cloud metadata lives there) unless the host is
named in ``webhook_allowed_hosts``; and, when that list is set, only its hosts. Private ranges
are allowed: hospital receivers live there."""

from __future__ import annotations

import ipaddress
import socket
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey
from shared.settings import Settings


class InvalidTarget(ValueError):
    """A webhook URL the service refuses to call."""


def check_webhook_url(url: str, allowed_hosts: Sequence[str]) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise InvalidTarget(f"webhook URL must be an absolute http(s) URL, got {url!r}")
    if parts.username or parts.password:
        raise InvalidTarget("webhook URL must not carry credentials: receivers check the signature instead")
    try:
        httpx.URL(url)  # a host with no IDNA form, say: refused now rather than failing every try
    except httpx.InvalidURL as exc:
        raise InvalidTarget(f"webhook URL cannot be sent to: {exc}") from None
    host = parts.hostname.lower()
    listed = _listed(host, allowed_hosts)
    if allowed_hosts and not listed:
        raise InvalidTarget(f"webhook host {host!r} is not in the allowed hosts")
    if not listed:
        literal = _ip(host)
        if host == "localhost" or host.endswith(".localhost"):
            raise InvalidTarget(_unlisted(host, "the service's own host"))
        if literal is not None and (why := _forbidden(literal)):
            raise InvalidTarget(_unlisted(host, why))
    return url


@dataclass(frozen=True)
class PinnedTarget:
    """A webhook URL and the addresses its host resolved to when they were checked, in the
    resolver's order (the order a plain connect would try them). The request goes only to
    those, so a DNS server that answers differently a moment later (DNS rebinding) cannot send
    it elsewhere; the Host header and, for https, the TLS server name (SNI and certificate
    check) stay the URL's host."""

    url: str
    addresses: tuple[str, ...]
    # An HTTP(S)_PROXY from the environment applies to the URL (NO_PROXY does not exempt its
    # host): the request goes to the proxy by name, as before pinning, and the proxy connects.
    via_proxy: bool = False

    def url_for(self, address: str) -> str:
        return str(httpx.URL(self.url).copy_with(host=address))  # an IPv6 address in brackets

    def host_header(self) -> str:
        """host[:port] as it goes on the wire: ASCII, a non-ASCII name in its IDNA form."""
        return httpx.URL(self.url).netloc.decode("ascii")

    def extensions(self) -> dict[str, str]:
        url = httpx.URL(self.url)
        return {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}


def pin_target(url: str, allowed_hosts: Sequence[str]) -> PinnedTarget:
    """At send time: resolve the URL's host once and check every address it resolves to now
    the way submission checked the URL (a name may point at the service's own host; the list
    may have changed since). Raises ``InvalidTarget``, or ``OSError`` when the name does not
    resolve. A host in the allowed list is pinned unchecked: the list is the operator's word."""
    check_webhook_url(url, allowed_hosts)
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    wire_host = httpx.URL(url).raw_host.decode("ascii")  # what DNS knows a non-ASCII name by
    answers = socket.getaddrinfo(wire_host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    # an IPv6 zone id cannot travel in an httpx URL; link-local is refused unless listed anyway
    addresses = list(dict.fromkeys(str(a[4][0]).split("%")[0] for a in answers
                                   if a[0] in (socket.AF_INET, socket.AF_INET6)))
    if not addresses:
        raise OSError(f"{host} has no IPv4 or IPv6 address")
    if not _listed(host, allowed_hosts):
        for address in addresses:
            ip = _ip(address)
            if ip is not None and (why := _forbidden(ip)):
                raise InvalidTarget(_unlisted(f"{host} ({ip})", why))
    return PinnedTarget(url=url, addresses=tuple(addresses), via_proxy=_proxied(parts.scheme, host))


def _proxied(scheme: str, host: str) -> bool:
    """Whether httpx (trust_env, the default) sends a request for this host through a proxy
    from the environment: the variables it reads, through the same stdlib functions."""
    proxies = urllib.request.getproxies()
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(host)


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_unspecified:
        return "the service's own host"
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if ip.is_multicast or ip.is_reserved:
        return "a multicast or reserved address"
    return None


def _unlisted(host: str, why: str) -> str:
    return f"webhook host {host} is {why}; list it in FADA_WEBHOOK_ALLOWED_HOSTS to allow it"


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%")[0])  # an IPv6 zone id is not part of the address
    except ValueError:
        pass
    try:  # the other IPv4 spellings resolvers take as addresses: 127.1, 2130706433, 0x7f.1
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _listed(host: str, allowed_hosts: Sequence[str]) -> bool:
    return any(host.endswith(a) if a.startswith(".") else host == a for a in map(str.lower, allowed_hosts))


@dataclass(frozen=True)
class NotifyPlan:
    webhook_url: str | None
    pacs_push: bool


def plan_notifications(session: Session, api_key_id: str, callback_url: str | None, settings: Settings) -> NotifyPlan:
    """What a new job of this key will announce: webhook events to the job's own callback URL,
    else to the key's; and, when a PACS is configured, its result as an SR. Raises
    ``InvalidTarget`` for a callback the service will not call or cannot sign for."""
    url, secret = session.execute(
        select(ApiKey.webhook_url, ApiKey.webhook_secret).where(ApiKey.id == api_key_id)).one()
    if callback_url is not None:
        check_webhook_url(callback_url, settings.webhook_allowed_hosts)
        if not secret:
            raise InvalidTarget("this API key has no webhook secret to sign callbacks with; an administrator "
                                "creates one with `fada keys webhook KEY`")
        url = callback_url
    return NotifyPlan(webhook_url=url, pacs_push=bool(settings.pacs_stow_url))
