"""Telling other systems that a job changed: signed webhooks (Standard Webhooks) and the
result as a DICOM SR stored to a PACS. An outbox in the database (``deliveries``) makes them
survive crashes; every worker's main process sends what is due (``dispatch.dispatch_once``).
"""

from .dispatch import DispatchReport, dispatch_once
from .outbox import collect_events
from .signing import new_secret, sign
from .targets import InvalidTarget, NotifyPlan, check_webhook_url, plan_notifications

__all__ = [
    "DispatchReport",
    "InvalidTarget",
    "NotifyPlan",
    "check_webhook_url",
    "collect_events",
    "dispatch_once",
    "new_secret",
    "plan_notifications",
    "sign",
]
