"""The review form's guard against cross-site requests (CSRF).

A browser signed in with Basic credentials attaches them to every request to the service,
a form posted from another site included. So the one form that writes (a review from the job
page) must prove that it came from a page this service showed to the same key: it carries a
token, an HMAC of the job id and an expiry under the key's own secret. Another site can make
the browser post but cannot read the page, and without the secret cannot make the token.
Browsers also say where a request comes from (``Sec-Fetch-Site``): a cross-site post is
refused before the token is looked at.

Nothing is stored: the secret is in every request's credentials, and the token expires.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

TOKEN_SECONDS = 12 * 3600  # a page left open for a shift still posts
_PURPOSE = "fada-review-form"


def make_token(secret: str, job_id: str, *, now: float | None = None) -> str:
    expires = int(now if now is not None else time.time()) + TOKEN_SECONDS
    return f"{expires}.{_mac(secret, job_id, expires)}"


def token_problem(secret: str, job_id: str, token: str, *, now: float | None = None) -> str | None:
    """Why ``token`` does not prove a page shown to this secret for this job; None when it does."""
    expires_text, _, mac = token.partition(".")
    if not expires_text.isdigit() or not mac:
        return "the form's token is malformed: reload the page"
    expires = int(expires_text)
    if not hmac.compare_digest(mac, _mac(secret, job_id, expires)):
        return "the form's token was not made for this key and job: reload the page"
    if expires < (now if now is not None else time.time()):
        return "the form's token has expired: reload the page"
    return None


def cross_site(headers: Mapping[str, str]) -> bool:
    """Whether the browser says the request comes from another site (Fetch Metadata)."""
    return headers.get("sec-fetch-site", "").lower() in {"cross-site", "same-site"}


def _mac(secret: str, job_id: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"{_PURPOSE}|{job_id}|{expires}".encode(), hashlib.sha256).hexdigest()
