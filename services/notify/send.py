"""Sending one delivery: a signed webhook POST, or the job's SR stored to the PACS by STOW-RS.
Returns what happened; never raises for the receiver's behaviour."""

from __future__ import annotations

import functools
import json
import logging
import os
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import certifi
import httpx
from sqlalchemy.orm import Session, sessionmaker

from services.export.dicom_sr import build_sr, content_time, source_instance, sr_bytes
from services.jobs import get_result
from shared.db.models import DeliveryKind
from shared.schemas.results import ResultDocument

from .pacs_context import SourceNotInPacs, source_context
from .sealing import SecretBox, SecretUnavailable
from .signing import webhook_headers
from .targets import InvalidTarget, PinnedTarget, pin_target

log = logging.getLogger(__name__)

ADDRESSES_TRIED = 2  # typically a name's IPv6 and IPv4 address


@dataclass(frozen=True)
class DueDelivery:
    id: str
    job_id: str
    kind: DeliveryKind
    url: str
    payload: dict[str, Any]
    attempts: int  # tries before this one
    secret: str | None  # the job's key's webhook secret as stored (sealed)
    previous_secret: str | None = None  # a rotated secret still in its overlap (sealed), also signing


@dataclass(frozen=True)
class Attempt:
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float
    retry_after: float | None = None  # seconds the receiver asked us to wait


def send(delivery: DueDelivery, client: httpx.Client, sm: sessionmaker[Session], *,
         pacs_authorization: str | None, secrets: SecretBox, allowed_hosts: Sequence[str],
         clock: Callable[[], int]) -> Attempt:
    """``clock`` gives the webhook's timestamp (``dispatch.stamp_clock``: the database's time)."""
    started = time.perf_counter()
    try:
        if delivery.kind is DeliveryKind.webhook:
            response = _post_webhook(delivery, client, secrets, allowed_hosts, sent_at=clock())
        else:
            response = _store_sr(delivery, client, sm, pacs_authorization)
    except _Unsendable as exc:  # its message says why; the class name would only be noise
        return Attempt(False, None, str(exc)[:1000], _ms(started))
    except httpx.HTTPError as exc:
        return Attempt(False, None, f"{type(exc).__name__}: {exc}"[:1000], _ms(started))
    except Exception as exc:  # a surprise is this delivery's failed try, never the whole pass's
        log.exception("delivery %s (%s): unexpected error", delivery.id, delivery.kind.value)
        return Attempt(False, None, f"unexpected {type(exc).__name__}: {exc}"[:1000], _ms(started))
    ok = 200 <= response.status_code < 300
    error = None if ok else _http_error(response, delivery.kind)
    return Attempt(ok, response.status_code, error, _ms(started), _retry_after(response))


def _http_error(response: httpx.Response, kind: DeliveryKind) -> str:
    """A refused try as the deliveries log shows it. A webhook URL may be a caller's own choice,
    and what a server inside the network answers is not for that caller to read there: status
    only. The PACS is the operator's, and its answer says what to fix."""
    status = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
    return status if kind is DeliveryKind.webhook else f"{status}: {response.text[:300]}"


class _Unsendable(Exception):
    """The delivery cannot be built (no secret any more, no result): retrying may help once
    an operator fixes it, so it counts as a failed try."""


def _post_webhook(delivery: DueDelivery, client: httpx.Client, secrets: SecretBox,
                  allowed_hosts: Sequence[str], *, sent_at: int) -> httpx.Response:
    try:
        target = pin_target(delivery.url, allowed_hosts)
    except (InvalidTarget, OSError) as exc:
        raise _Unsendable(f"{type(exc).__name__}: {exc}") from None
    if not delivery.secret:
        raise _Unsendable("the job's API key has no webhook secret (fada keys webhook)")
    try:
        signing = [secrets.open(sealed) for sealed in (delivery.secret, delivery.previous_secret) if sealed]
    except SecretUnavailable as exc:
        raise _Unsendable(str(exc)) from None
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    headers = webhook_headers(signing, delivery.id, sent_at, body)
    return _post_pinned(client, target, body, headers)


def _post_pinned(client: httpx.Client, target: PinnedTarget, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST to the checked addresses only, in order, moving on when one cannot be connected to
    (as a plain connect would over a name's addresses), at most ``ADDRESSES_TRIED`` of them: a
    silent address costs a whole connect timeout, and the try must end within its lease.
    Where an environment proxy applies, to that proxy by name, on the shared client."""
    if target.via_proxy:
        return client.post(target.url, content=body, headers=headers)
    headers = {**headers, "Host": target.host_header()}
    *others, last = target.addresses[:ADDRESSES_TRIED]
    with _direct_client(client.timeout) as direct:
        for address in others:
            try:
                return direct.post(target.url_for(address), content=body, headers=headers,
                                   extensions=target.extensions())
            except httpx.ConnectError:
                continue
        return direct.post(target.url_for(last), content=body, headers=headers, extensions=target.extensions())


def _direct_client(timeout: httpx.Timeout) -> httpx.Client:
    """A client for one pinned send. No environment proxy: the address is chosen already, and
    a proxy would judge NO_PROXY by that address instead of the name. No kept-alive
    connection: the pool keys connections by address, not by TLS server name, so a second
    host on the same address would ride the first one's certificate check. The trust store
    the environment names (SSL_CERT_FILE / SSL_CERT_DIR: a hospital's own CA), else certifi's."""
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False,
                        verify=_trust_store(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")),
                        limits=httpx.Limits(max_keepalive_connections=0))


@functools.cache
def _trust_store(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    return ssl.create_default_context(cafile=certifi.where())


def _store_sr(delivery: DueDelivery, client: httpx.Client, sm: sessionmaker[Session],
              authorization: str | None) -> httpx.Response:
    with sm() as session:
        result = get_result(session, delivery.job_id)
        if result is None:
            raise _Unsendable(f"job {delivery.job_id} has no result")
        source = source_instance(session, delivery.job_id)
        made = content_time(session, delivery.job_id)
        document = ResultDocument.model_validate(result.document)
    try:
        context = source_context(client, delivery.url, source, authorization)
    except SourceNotInPacs as exc:
        raise _Unsendable(str(exc)) from None
    try:
        dataset = sr_bytes(build_sr(document, source, job_id=delivery.job_id, made=made, context=context))
    except (ValueError, TypeError) as exc:  # highdicom refusing a value the PACS holds, say
        raise _Unsendable(f"the SR cannot be built with the PACS's patient and study attributes: {exc}") from None
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dataset
            + f"\r\n--{boundary}--\r\n".encode())
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    if authorization:
        headers["Authorization"] = authorization
    return client.post(delivery.url, content=body, headers=headers)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        # An HTTP date is the receiver's clock: measure it against its own Date header when it
        # sends one, so that our clock's drift does not count
        said = response.headers.get("date")
        reference = parsedate_to_datetime(said).timestamp() if said else time.time()
        return max(0.0, parsedate_to_datetime(value).timestamp() - reference)
    except (TypeError, ValueError):
        return None


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
