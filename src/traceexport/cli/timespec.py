"""Times on the command line: ISO dates and datetimes, or a span back from now (``30d``, ``12h``, ``90m``).

Dify stores naive UTC times, so every time becomes naive UTC; a time without an offset is taken as UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class TimeSpecError(ValueError):
    """A time the command line cannot read; the message is one line."""


def is_span(text: str) -> bool:
    """Whether ``text`` is a span back from now (``30d``), not a fixed time."""
    return _SPAN.match(text) is not None


def parse_time(text: str, *, now: datetime | None = None, flag: str = "time") -> datetime:
    """``text`` as a naive UTC datetime."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    span = _SPAN.match(text)
    if span:
        try:
            return now - timedelta(seconds=float(span.group(1)) * _UNITS[span.group(2)])
        except (OverflowError, ValueError):  # beyond timedelta's or datetime's range
            raise TimeSpecError(f"{flag} {text!r} reaches back before the year 1: use a shorter span "
                                "or an ISO date") from None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise TimeSpecError(f"{flag} {text!r} is not a time: use an ISO date or datetime (2026-11-01, "
                            "2026-11-01T08:00:00Z) or a span back from now (30d, 12h, 90m)") from None
    if value.tzinfo is not None:
        try:
            value = value.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before the year 1 in UTC
            raise TimeSpecError(f"{flag} {text!r} is before the year 1 in UTC") from None
    return value


def parse_epoch(text: str, *, now: float | None = None, flag: str = "time") -> float:
    """``text`` (as :func:`parse_time` reads it) as epoch seconds."""
    now_time = None if now is None else datetime.fromtimestamp(now, UTC).replace(tzinfo=None)
    return parse_time(text, now=now_time, flag=flag).replace(tzinfo=UTC).timestamp()
