"""The filters of a score report, parsed from what a caller typed.

The time window is half-open over the review's ``created_at``: ``from`` is inclusive, ``to``
is exclusive, so consecutive windows never count a review twice. A date alone means its whole
day in the report's time zone (``tz``, an IANA name such as ``Europe/Paris``; the service's
``FADA_REPORT_TIMEZONE`` when not given, UTC by default): with ``tz=Europe/Paris``,
``from=2026-03-01`` starts at 2026-02-28T23:00Z and ``to=2026-03-31`` ends at
2026-03-31T22:00Z (the last day is included; the clocks moved on 29 March), which is what a
ward in Paris means by "1 to 31 March". ``group_by=day`` counts days in that zone too. A
datetime must carry ``Z`` or an offset (RFC 3339): a naive time is ambiguous, so it is
refused. Empty values mean "no filter" (what an HTML form sends for a field left blank). A
window whose start is not before its end is not an error: it holds no reviews, and the
report carries a warning saying so.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from shared.db.models import JobMode
from shared.timezones import zone_named

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATETIME_START = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
UTC_MIN = datetime.min.replace(tzinfo=UTC)
UTC_MAX = datetime.max.replace(tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")


class GroupBy(enum.StrEnum):
    mode = "mode"
    model = "model"
    label = "label"
    reviewed_label = "reviewed_label"
    reviewer = "reviewer"
    day = "day"


class ReportParameterError(ValueError):
    """A query parameter that cannot be understood; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param, self.message = param, message


@dataclass(frozen=True)
class ReportFilters:
    """What selects the reviews of a report. ``start`` inclusive, ``end`` exclusive, both UTC;
    ``zone`` is where dates and days are read; ``raw_from``/``raw_to``/``raw_tz`` are the values
    as the caller gave them (for forms and links)."""

    start: datetime | None = None
    end: datetime | None = None
    mode: JobMode | None = None
    zone: ZoneInfo = UTC_ZONE
    raw_from: str | None = None
    raw_to: str | None = None
    raw_tz: str | None = None
    warnings: tuple[str, ...] = field(default=())

    def as_json(self) -> dict[str, str | None]:
        return {"from": _iso(self.start), "to": _iso(self.end), "mode": self.mode.value if self.mode else None,
                "tz": self.zone.key}

    def query(self) -> dict[str, str]:
        """The filters as query parameters, as the caller gave them (empty ones left out)."""
        values = {"from": self.raw_from, "to": self.raw_to, "mode": self.mode.value if self.mode else None,
                  "tz": self.raw_tz}
        return {k: v for k, v in values.items() if v}


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value is not None else None


def _to_utc(value: datetime, *, overflow: datetime) -> datetime:
    """``value`` in UTC; an instant outside datetime's range (year 1 or 9999 with an offset)
    becomes ``overflow``, the bound that keeps the window's meaning."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return overflow


def parse_zone(raw: str | None, default: str = "UTC") -> ZoneInfo:
    """An IANA time zone (``Europe/Paris``, ``UTC``); empty means ``default``."""
    try:
        return zone_named((raw or "").strip() or default)
    except ValueError as exc:
        raise ReportParameterError("tz", str(exc)) from exc


def local_midnight(day: date, zone: ZoneInfo, *, overflow: datetime) -> datetime:
    """The first instant of ``day`` in ``zone``, in UTC (``overflow`` outside datetime's range).
    Where midnight falls in a clock change's gap, fold=0 reads it with the offset before the
    change, which is the day's first real instant."""
    return _to_utc(datetime(day.year, day.month, day.day, tzinfo=zone), overflow=overflow)


def parse_bound(param: str, raw: str | None, *, end: bool, zone: ZoneInfo = UTC_ZONE) -> datetime | None:
    """An RFC 3339 date or datetime as a UTC bound (None when empty). A date is read in ``zone``;
    for ``end`` it means the next day's start (exclusive end of that whole day)."""
    if raw is None or not raw.strip():
        return None
    value = raw.strip()
    if _DATE.fullmatch(value):
        try:
            day = date.fromisoformat(value)
        except ValueError as exc:
            raise ReportParameterError(param, f"{value!r} is not a valid date ({exc})") from exc
        if end:
            # The next local midnight, not start + 24 h: a day of a clock change has 23 or 25 hours.
            return UTC_MAX if day == date.max else local_midnight(day + timedelta(days=1), zone, overflow=UTC_MAX)
        return local_midnight(day, zone, overflow=UTC_MIN)
    if not _DATETIME_START.match(value):
        raise ReportParameterError(param, f"{value!r} is not an RFC 3339 date (2026-03-01) or datetime "
                                          "(2026-03-01T08:00:00Z)")
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError as exc:
        hint = " (a '+' in a URL reads as a space: write it as %2B)" if " " in value[11:] else ""
        raise ReportParameterError(param, f"{value!r} is not a valid RFC 3339 datetime{hint}") from exc
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ReportParameterError(param, f"{value!r} has no time zone: add 'Z' (UTC) or an offset such as +01:00")
    offset = parsed.utcoffset() or timedelta(0)
    # Year 1 with a positive offset lies before datetime's range; year 9999 with a negative one after it.
    return _to_utc(parsed, overflow=UTC_MIN if offset > timedelta(0) else UTC_MAX)


def parse_filters(raw_from: str | None = None, raw_to: str | None = None, mode: str | None = None,
                  raw_tz: str | None = None, *, default_tz: str = "UTC") -> ReportFilters:
    zone = parse_zone(raw_tz, default_tz)
    start = parse_bound("from", raw_from, end=False, zone=zone)
    end = parse_bound("to", raw_to, end=True, zone=zone)
    job_mode: JobMode | None = None
    if mode:
        try:
            job_mode = JobMode(mode)
        except ValueError as exc:
            raise ReportParameterError("mode", f"{mode!r} is not one of {', '.join(JobMode)}") from exc
    warnings: list[str] = []
    if start is not None and end is not None and start >= end:
        warnings.append(f"the window is empty: 'from' ({_iso(start)}) is not before 'to' ({_iso(end)}, exclusive)")
    return ReportFilters(start=start, end=end, mode=job_mode, zone=zone, raw_from=(raw_from or "").strip() or None,
                         raw_to=(raw_to or "").strip() or None, raw_tz=(raw_tz or "").strip() or None,
                         warnings=tuple(warnings))


def parse_group_by(value: str | None) -> GroupBy | None:
    if not value:
        return None
    try:
        return GroupBy(value)
    except ValueError as exc:
        raise ReportParameterError("group_by", f"{value!r} is not one of {', '.join(GroupBy)}") from exc
