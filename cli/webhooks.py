"""Verifying (and signing) webhooks the Standard Webhooks way (https://www.standardwebhooks.com/).

For receivers of FADA Serve notifications: a few lines in any web framework check that a call
really comes from the service holding the shared secret, that its body was not altered, and
that it is recent (an old, captured call replayed later is refused)::

    from cli.webhooks import WebhookVerificationError, verify_webhook

    try:
        event = verify_webhook(SECRET, request.headers, raw_body)
    except WebhookVerificationError as exc:
        return 400, str(exc)

The scheme: three headers, ``webhook-id`` (the message id, the same on every retry of one
message: dedupe on it), ``webhook-timestamp`` (unix seconds) and ``webhook-signature`` (a
space-separated list of ``v1,<base64 HMAC-SHA256>``; any one valid signature is enough, so a
sender can sign with an old and a new secret while the secret is rotated). The signed content is
``f"{id}.{timestamp}.{body}"`` with the body's exact bytes; the HMAC key is the base64-decoded
secret after its ``whsec_`` prefix.

Standard library only, on purpose: a receiver can copy this one file without installing the
client (or httpx). The server signs with its own module (``services/notify/signing.py``; the
server never imports ``cli``); the known-answer vector of the specification keeps the two in step.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["SECRET_PREFIX", "WebhookVerificationError", "new_webhook_secret", "sign_webhook", "verify_webhook"]

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = 300  # seconds either side of the receiver's clock, as the specification advises
# Bounds on what is parsed from headers an attacker controls (a real sender sends one or two signatures).
_MAX_SIGNATURES = 32
_MAX_TIMESTAMP_DIGITS = 12


class WebhookVerificationError(Exception):
    """The call is not a valid webhook of this secret; the message says which check failed
    (safe to return to the caller: it names the check, never the expected signature)."""


def _key(secret: str) -> bytes:
    """The HMAC key: the base64 after the ``whsec_`` prefix (the prefix is optional, and missing
    ``=`` padding is tolerated, as the reference libraries do). A malformed secret is a
    configuration error of the receiver, not a bad message: ``ValueError``."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the webhook secret is not {SECRET_PREFIX} followed by base64") from exc
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def _signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    content = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return hmac.new(key, content, hashlib.sha256).digest()


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (``v1,<base64>``) of one message: for senders, and for
    tests of receivers."""
    digest = _signature(_key(secret), msg_id, str(int(timestamp)), bytes(body))
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def new_webhook_secret() -> str:
    """A fresh secret: ``whsec_`` + base64 of 24 random bytes (192 bits)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names lowercased (HTTP names are case-insensitive; frameworks differ in how they
    spell them). The same header twice with different values is refused: which one was signed
    would be a guess."""
    folded: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in folded and folded[lower] != value:
            raise WebhookVerificationError(f"header {lower} appears twice with different values")
        folded[lower] = value
    return folded


def _candidates(header: str) -> list[bytes]:
    """The v1 signatures of a ``webhook-signature`` header, decoded. Entries of other versions
    (e.g. ``v1a``, asymmetric) are skipped, not refused: a sender may add them; entries that do
    not parse are skipped too, since another entry may still match."""
    entries = header.split()
    if len(entries) > _MAX_SIGNATURES:
        raise WebhookVerificationError(f"webhook-signature has {len(entries)} entries; at most {_MAX_SIGNATURES} "
                                       "are checked")
    found: list[bytes] = []
    for entry in entries:
        version, comma, encoded = entry.partition(",")
        if not comma or version != SIGNATURE_VERSION:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes, *, tolerance: int = DEFAULT_TOLERANCE,
                   now: float | None = None) -> dict[str, Any]:
    """Check one received webhook and return its JSON body.

    ``headers``: the request's headers (any mapping; names in any case). ``body``: the raw body
    bytes exactly as received; a re-serialised JSON body would not match the signature. The
    timestamp must lie within ``tolerance`` seconds of ``now`` (default: the clock), which bounds
    how long a captured call can be replayed; dedupe on ``webhook-id`` to refuse replays within
    that window too.

    Raises :class:`WebhookVerificationError` naming the failed check: a missing header, a
    timestamp that does not parse or is too old / too far in the future, no valid ``v1``
    signature, a body that is not a JSON object. A malformed ``secret`` raises ``ValueError``.
    """
    if isinstance(body, str):
        raise TypeError("pass the raw body bytes exactly as received, not text: the signature covers the bytes")
    key = _key(secret)
    folded = _headers(headers)
    missing = [name for name in ("webhook-id", "webhook-timestamp", "webhook-signature") if not folded.get(name)]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    msg_id, raw_timestamp, signature_header = (folded["webhook-id"], folded["webhook-timestamp"],
                                               folded["webhook-signature"])

    stamp = raw_timestamp.strip()
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > _MAX_TIMESTAMP_DIGITS:
        raise WebhookVerificationError(f"webhook-timestamp {raw_timestamp[:40]!r} is not unix seconds")
    sent = int(stamp)
    clock = time.time() if now is None else now
    if sent < clock - tolerance:
        raise WebhookVerificationError(f"webhook-timestamp is too old: {clock - sent:.0f} s ago, "
                                       f"the tolerance is {tolerance} s")
    if sent > clock + tolerance:
        raise WebhookVerificationError(f"webhook-timestamp is in the future: {sent - clock:.0f} s ahead, "
                                       f"the tolerance is {tolerance} s")

    candidates = _candidates(signature_header)
    if not candidates:
        raise WebhookVerificationError(f"webhook-signature holds no {SIGNATURE_VERSION},<base64> signature")
    expected = _signature(key, msg_id, stamp, bytes(body))
    # Every candidate is compared (no early exit), each in constant time.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise WebhookVerificationError("no signature matches: the body, id or timestamp were altered, or the "
                                       "secret differs")

    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WebhookVerificationError(f"the signed body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise WebhookVerificationError(f"the signed body is JSON but not an object: {type(payload).__name__}")
    return payload
