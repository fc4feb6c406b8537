"""Small value conversions shared by record normalisation and node shaping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from math import isfinite
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The times every sink can carry: after the epoch (OTLP wants a positive count of nanoseconds) and no later
# than the last microsecond whose nanoseconds since the epoch fit a signed 64-bit integer (how collectors,
# Go's time and ClickHouse's DateTime64(9) hold them).
LATEST = datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC)
TIME_RANGE = "after 1970-01-01T00:00:00Z and no later than 2262-04-11T23:47:16Z"


def as_utc(value: Any) -> datetime | None:
    """A timezone-aware UTC datetime from a datetime or ISO string; naive values are UTC. A time within
    hours of the calendar's ends that UTC cannot hold becomes that end (out of :func:`in_range` either way)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00
        return (datetime.min if value.year < 2000 else datetime.max).replace(tzinfo=UTC)


def in_range(moment: datetime) -> bool:
    """True for a time every sink can carry (:data:`TIME_RANGE`)."""
    return EPOCH < moment <= LATEST


def shifted(moment: datetime, seconds: float) -> datetime | None:
    """``moment`` plus ``seconds`` (may be negative), or None when that leaves the calendar."""
    try:
        return moment + timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        return None


_NUMBERS = (int, float)  # a tuple: ``int | float`` would build a new union object on every call


def to_number(value: Any) -> float | None:
    """A float from a number or a Decimal string such as ``"0.0001194"``; None when not numeric or not
    finite (NaN, infinities, and numbers too large for a float such as ``1e400``: no sink can carry them)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, _NUMBERS) else float(str(value))
    except (ValueError, OverflowError):
        return None
    return number if isfinite(number) else None


def none_if_blank(value: Any) -> str | None:
    """The value as text, or None when it is null or only whitespace."""
    if value is None:
        return None
    text = str(value)
    return text if text.strip() else None


def short_provider(provider: Any) -> str | None:
    """``langgenius/openai/openai`` -> ``openai``: Dify plugin ids name the provider last."""
    text = none_if_blank(provider)
    if text is None:
        return None
    return text.rsplit("/", 1)[-1]


def epoch_ns(moment: datetime) -> int:
    """Exact integer nanoseconds since the epoch for an aware datetime (no float rounding)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def timing(start: datetime, end: datetime) -> dict[str, Any]:
    """Start and end (end clamped to start) in the forms mappings use: datetimes, ns, ms, duration."""
    end = max(end, start)  # clamp: Dify's timers are not monotonic
    start_ns, end_ns = epoch_ns(start), epoch_ns(end)
    return {
        "start": start,
        "end": end,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "start_ms": start_ns // 1_000_000,
        "duration_ms": round((end_ns - start_ns) / 1_000_000, 3),
    }


def message_pairs(value: Any, default_role: str) -> list[tuple[str, Any]]:
    """Dify's saved prompt list ``[{role, text, files}]`` (or ``[{role, content}]``, or plain text) as
    ``(role, content)`` pairs; non-text content is left as is for the caller to encode."""
    if isinstance(value, str):
        return [(default_role, value)]
    pairs: list[tuple[str, Any]] = []
    for item in value if isinstance(value, list) else ():
        if isinstance(item, dict):
            content = item.get("text") if "text" in item else item.get("content")
            pairs.append((str(item.get("role") or default_role), content))
    return pairs
