"""Which API key a request presents, and how a 401 asks for one.

API clients send ``Authorization: Bearer <key>``. A browser cannot, so the report pages also
take HTTP Basic (any user name, the key as the password): the browser asks for it once, on
the 401's Basic challenge, and sends it again for the page's filter form and its CSV link.
Only safe reads under ``/v1/reports/`` take it: a browser attaches cached Basic credentials to
any request to the origin, a cross-site form POST included, so a route that changes
something must never accept them. The one exception is the job page's review form
(``POST /v1/reports/jobs/{id}/reviews``), which proves with a token where it came from
(``api.form_tokens``).
"""

from __future__ import annotations

import base64
import binascii
import re

BROWSER_PREFIX = "/v1/reports/"
_SAFE_METHODS = frozenset({"GET", "HEAD"})
BEARER_CHALLENGE = 'Bearer realm="fada"'
BASIC_CHALLENGE = 'Basic realm="fada reports", charset="UTF-8"'


# The review form the job page posts; its route checks the form's token before anything else.
REVIEW_FORM_PATH = re.compile(r"/v1/reports/jobs/[^/]+/reviews")


def takes_basic(method: str, path: str) -> bool:
    """Whether this request may present its key as HTTP Basic (a browser reading a report or
    posting the job page's review form)."""
    if method == "POST":
        return REVIEW_FORM_PATH.fullmatch(path) is not None
    return method in _SAFE_METHODS and path.startswith(BROWSER_PREFIX)


def presented_key(authorization: str | None, *, basic: bool) -> str | None:
    """The key in an ``Authorization`` header: Bearer, or (where ``basic``) the password of
    Basic credentials; None when there is none."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() != "basic" or not basic:
        return None
    try:
        user_and_password = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, colon, password = user_and_password.partition(":")
    return password.strip() or None if colon else None


def missing_key_detail(authorization: str | None, *, basic: bool) -> str:
    """What a 401 without a usable key says."""
    if not basic and (authorization or "").strip().lower().startswith("basic"):
        return (f"Basic credentials are taken only by the report pages (GET {BROWSER_PREFIX}...); "
                "send 'Authorization: Bearer <key>'")
    if basic:
        return "missing API key: send 'Authorization: Bearer <key>', or from a browser sign in with the key as password"
    return "missing API key: send 'Authorization: Bearer <key>'"


def challenges(*, basic: bool) -> list[str]:
    """The ``WWW-Authenticate`` values of a 401: Basic too where a browser may sign in, so that
    it shows its sign-in prompt."""
    return [BEARER_CHALLENGE, BASIC_CHALLENGE] if basic else [BEARER_CHALLENGE]
