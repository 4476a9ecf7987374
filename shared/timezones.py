"""Time zones by IANA name, as the settings and the QA reports' ``tz`` take them."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone_named(name: str) -> ZoneInfo:
    """The zone called ``name`` (``Europe/Paris``, ``UTC``); ValueError, saying so, when the
    host's zone database has none by that name (or the name is no key, e.g. ``../x``)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"{name!r} is not an IANA time zone (Europe/Paris, America/New_York, UTC)") from exc
