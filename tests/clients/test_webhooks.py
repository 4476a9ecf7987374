"""cli/webhooks.py: Standard Webhooks verification for receivers (known-answer vector of the
specification, tampering, wrong secret, timestamps, several signatures, headers) and
interoperability with the reference library ``standardwebhooks`` as an independent oracle."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks  # a dev dependency: missing, the suite fails rather than skips

from cli import client
from cli.webhooks import (
    WebhookVerificationError,
    new_webhook_secret,
    sign_webhook,
    verify_webhook,
)

# The known-answer vector of the Standard Webhooks specification (and its reference libraries).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def _headers(signature: str = SIGNATURE, msg_id: str = MSG_ID, timestamp: int | str = TIMESTAMP) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


def _refused(match: str, headers: dict[str, str], body: bytes = BODY, secret: str = SECRET,
             now: float = TIMESTAMP, **kwargs: int) -> WebhookVerificationError:
    with pytest.raises(WebhookVerificationError, match=match) as info:
        verify_webhook(secret, headers, body, now=now, **kwargs)
    return info.value


def test_the_specification_s_known_answer_vector() -> None:
    assert sign_webhook(SECRET, MSG_ID, TIMESTAMP, BODY) == SIGNATURE
    assert verify_webhook(SECRET, _headers(), BODY, now=TIMESTAMP) == {"test": 2432232314}


def test_a_tampered_body_id_or_timestamp_is_refused() -> None:
    _refused("no signature matches", _headers(), b'{"test": 2432232315}')
    _refused("no signature matches", _headers(), BODY + b" ")  # the bytes are signed, not the JSON value
    _refused("no signature matches", _headers(msg_id=MSG_ID + "x"))
    _refused("no signature matches", _headers(timestamp=TIMESTAMP + 1))


def test_a_wrong_secret_is_refused_and_a_malformed_one_is_a_configuration_error() -> None:
    other = new_webhook_secret()
    _refused("no signature matches", _headers(), secret=other)
    with pytest.raises(ValueError, match="not whsec_ followed by base64"):
        verify_webhook("whsec_not base64!", _headers(), BODY, now=TIMESTAMP)
    with pytest.raises(ValueError, match="empty"):
        verify_webhook("whsec_", _headers(), BODY, now=TIMESTAMP)
    # The prefix is optional and unpadded base64 is accepted, as in the reference libraries.
    assert verify_webhook(SECRET.removeprefix("whsec_"), _headers(), BODY, now=TIMESTAMP) == {"test": 2432232314}


@pytest.mark.parametrize(("offset", "match"), [(-301, "too old"), (301, "in the future")])
def test_a_timestamp_outside_the_tolerance_is_refused(offset: int, match: str) -> None:
    # The signature is valid: only the clock refuses it.
    error = _refused(match, _headers(), now=TIMESTAMP - offset)
    assert "301 s" in str(error) and "300 s" in str(error)
    assert verify_webhook(SECRET, _headers(), BODY, now=TIMESTAMP - offset, tolerance=301) == {"test": 2432232314}
    assert verify_webhook(SECRET, _headers(), BODY, now=TIMESTAMP + 300) == {"test": 2432232314}  # edge: inside


def test_the_default_clock_is_now() -> None:
    _refused("too old", _headers(), now=time.time())  # the vector is from 2021
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(SECRET, _headers(), BODY)
    fresh = int(time.time())
    headers = _headers(sign_webhook(SECRET, MSG_ID, fresh, BODY), timestamp=fresh)
    assert verify_webhook(SECRET, headers, BODY) == {"test": 2432232314}


@pytest.mark.parametrize("value", ["", "soon", "1614265330.5", "-1614265330", "1" * 13, "１６１４２６５３３０"])
def test_a_timestamp_that_is_not_unix_seconds_is_refused(value: str) -> None:
    match = "missing header" if not value else "not unix seconds"
    _refused(match, _headers(timestamp=value))


def test_any_one_valid_signature_among_several_is_enough() -> None:
    rotated = sign_webhook(new_webhook_secret(), MSG_ID, TIMESTAMP, BODY)
    for header in (f"{rotated} {SIGNATURE}", f"{SIGNATURE} {rotated}", f"v1a,{SIGNATURE[3:]} {rotated}  {SIGNATURE}",
                   f"garbage v1,!!notbase64!! {SIGNATURE}"):
        assert verify_webhook(SECRET, _headers(header), BODY, now=TIMESTAMP) == {"test": 2432232314}, header
    _refused("no signature matches", _headers(rotated + " " + rotated))
    # A valid signature under another version label is not a v1 signature.
    _refused("holds no v1", _headers("v2," + SIGNATURE[3:]))
    _refused("holds no v1", _headers("v1a," + SIGNATURE[3:] + " nonsense"))
    _refused("at most 32", _headers(" ".join([rotated] * 32 + [SIGNATURE])))


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_header_is_named(missing: str) -> None:
    headers = _headers()
    del headers[missing]
    error = _refused("missing header", headers)
    assert missing in str(error)
    headers = _headers()
    headers[missing] = ""
    assert missing in str(_refused("missing header", headers))


def test_header_names_are_case_insensitive() -> None:
    for spelled in (str.upper, str.title, lambda name: name):
        headers = {spelled(name): value for name, value in _headers().items()}
        assert verify_webhook(SECRET, headers, BODY, now=TIMESTAMP) == {"test": 2432232314}
    mixed = {"Webhook-Id": MSG_ID, "WEBHOOK-TIMESTAMP": str(TIMESTAMP), "webhook-Signature": SIGNATURE}
    assert verify_webhook(SECRET, mixed, BODY, now=TIMESTAMP) == {"test": 2432232314}
    # The same header twice, differently spelled and with different values, is ambiguous.
    _refused("appears twice", {**_headers(), "Webhook-Id": "msg_other"})


def test_the_body_must_be_signed_json_bytes() -> None:
    for body, match in ((b"not json", "not JSON"), (b"\xff\xfe", "not JSON"), (b"[1, 2]", "not an object")):
        headers = _headers(sign_webhook(SECRET, MSG_ID, TIMESTAMP, body))
        _refused(match, headers, body)
    with pytest.raises(TypeError, match="raw body bytes"):
        verify_webhook(SECRET, _headers(), BODY.decode(), now=TIMESTAMP)  # type: ignore[arg-type]
    # A non-ASCII body is signed as its UTF-8 bytes.
    body = json.dumps({"note": "fœtus"}, ensure_ascii=False).encode()
    assert verify_webhook(SECRET, _headers(sign_webhook(SECRET, MSG_ID, TIMESTAMP, body)), body,
                          now=TIMESTAMP) == {"note": "fœtus"}


def test_new_secrets_are_whsec_and_24_random_bytes() -> None:
    made = {new_webhook_secret() for _ in range(20)}
    assert len(made) == 20
    for secret in made:
        assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 24


def test_the_client_s_public_surface_exports_the_helper() -> None:
    assert client.verify_webhook is verify_webhook
    assert client.WebhookVerificationError is WebhookVerificationError
    assert {"verify_webhook", "WebhookVerificationError"} <= set(client.__all__)


def test_the_module_needs_only_the_standard_library() -> None:
    """Receivers copy or import it without the client's dependencies: importing it loads no
    third-party module (checked in a fresh interpreter)."""
    code = ("import sys; before = set(sys.modules); import cli.webhooks; "
            "print('\\n'.join(sorted(set(sys.modules) - before)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    stdlib = sys.stdlib_module_names
    third_party = [name for name in loaded if name.split(".")[0] not in stdlib and name.split(".")[0] != "cli"]
    assert "cli.webhooks" in loaded and third_party == []


def test_interoperates_with_the_reference_library() -> None:
    """``standardwebhooks`` (the specification's Python library) as an independent oracle:
    it verifies what this module signs, and this module verifies what it signs."""
    secret = new_webhook_secret()
    reference = standardwebhooks.Webhook(secret)
    now = int(time.time())
    body = json.dumps({"type": "job.succeeded", "data": {"id": "0b7c", "note": "fœtus"}}, ensure_ascii=False).encode()
    ours = _headers(sign_webhook(secret, "msg_1", now, body), msg_id="msg_1", timestamp=now)
    assert reference.verify(body, ours) == json.loads(body)
    theirs = reference.sign("msg_2", datetime.fromtimestamp(now, UTC), body.decode())
    assert theirs == sign_webhook(secret, "msg_2", now, body)
    assert verify_webhook(secret, _headers(theirs, msg_id="msg_2", timestamp=now), body) == json.loads(body)
    # Both refuse the same tampering.
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        reference.verify(body + b" ", ours)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, ours, body + b" ")
