"""Small value conversions shared by record normalisation and node shaping."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def as_utc(value: Any) -> datetime | None:
    """A timezone-aware UTC datetime from a datetime or ISO string; naive values are UTC."""
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
    return value.astimezone(UTC)


_NUMBERS = (int, float)  # a tuple: ``int | float`` would build a new union object on every call


def to_number(value: Any) -> float | None:
    """A float from a number or a Decimal string such as ``"0.0001194"``; None when not numeric."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, _NUMBERS):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


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


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
