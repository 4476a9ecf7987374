"""How the gateway and the workers write their logs (``FADA_LOG_FORMAT``, ``FADA_LOG_LEVEL``).

``text``: one line per record with its time, level, logger and process, as an operator reads
them in a terminal or ``docker compose logs``. ``json``: one JSON object per line (time,
level, logger, process, message, the request id while a request is handled, and the
traceback), as a site's log collector (Elastic, Loki, Splunk) parses them. Both for our own
loggers, uvicorn's (its access log included) and Celery's, so that one process never writes
two formats.

Without this the gateway's own warnings went to Python's last-resort handler: bare messages,
no time, no level, and nothing below WARNING.
"""

from __future__ import annotations

import logging
import logging.config
from contextvars import ContextVar
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS

LogFormat = Literal["text", "json"]

# The X-Request-ID of the request being handled (set by the gateway's middleware; anyio copies
# it into the worker thread of a sync route), so every line logged for it can carry it.
REQUEST_ID: ContextVar[str | None] = ContextVar("fada_request_id", default=None)

TEXT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
JSON_FIELDS = ["levelname", "name", "process", "message", "request_id"]
JSON_RENAMED = {"levelname": "level", "name": "logger"}
# uvicorn adds a copy of some messages with terminal colour codes: noise in a collector.
JSON_LEFT_OUT = [*RESERVED_ATTRS, "color_message"]


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def log_config(fmt: LogFormat, level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the root logger and uvicorn's, at ``level``."""
    formatter: dict[str, Any] = {"format": TEXT}
    if fmt == "json":
        # "time": ISO 8601 in UTC with microseconds
        formatter = {"()": "pythonjsonlogger.json.JsonFormatter", "fmt": JSON_FIELDS, "timestamp": "time",
                     "rename_fields": JSON_RENAMED, "reserved_attrs": JSON_LEFT_OUT}
    # uvicorn's loggers keep their names but write through the root's one handler.
    uvicorn = {"handlers": [], "level": level, "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"fada": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "fada", "filters": ["request_id"]}},
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {"uvicorn": uvicorn, "uvicorn.error": uvicorn, "uvicorn.access": uvicorn},
    }


def configure_logging(fmt: LogFormat, level: str) -> None:
    """The worker's logging (uvicorn applies ``log_config`` itself in the gateway). Python's
    warnings become records too, so that they get the same format."""
    logging.config.dictConfig(log_config(fmt, level))
    logging.captureWarnings(True)
