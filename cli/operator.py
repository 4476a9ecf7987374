"""Who runs a command that changes the service's data, for the audit trail: user@host."""

from __future__ import annotations

import getpass
import os
import socket


def operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no name in /etc/passwd
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"
