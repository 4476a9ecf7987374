"""Who runs a command that changes the service's data (user@host), and the audit event of
such a change: the commands need database access, not a key, and must still be accountable."""

from __future__ import annotations

import getpass
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from shared.db.models import ApiKey


def operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no name in /etc/passwd
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"[:64]


def record_change(session: Session, action: str, key: ApiKey, **detail: object) -> None:
    """The change in the audit trail, in the change's own transaction. ``api_key`` is the key
    acted on (no key acts here); ``client`` is who ran the command, and ``key_prefix`` the key's
    prefix then (a later rotation changes it)."""
    from shared.audit import record_event

    record_event(session, action=action, outcome="ok", api_key_id=key.id,
                 detail={"client": operator(), "key_prefix": key.key_prefix, **detail})
