"""A record's compact, already-normalised form, for handing it to another process without re-parsing.

Parsing an envelope (JSON, validation, normalisation) is the largest single cost of delivering a
record. The process that accepted a record has already paid it, so it can store ``compact_bytes`` next
to the envelope; the delivery process turns that back into the same Record with one JSON read
(``record_from_compact``), about half the work. The envelope stays the source of truth: the form
carries the traceexport version that wrote it, and anything else (another version, a damaged value)
returns None, so the caller parses the envelope as before.

JSON keeps everything in ``data`` but datetimes, which come back as ISO text; they live at the paths
in ``_TIME_KEYS`` / ``_DERIVED_TIME_KEYS`` / ``_NODE_TIME_KEYS`` and are restored there. A test maps
every golden case both ways and compares the payloads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic_core import from_json, to_json

from traceexport import __version__
from traceexport.records.parse import Record

FORMAT = f"traceexport-compact/1/{__version__}"
_TIME_KEYS = ("start_time", "end_time")
_DERIVED_TIME_KEYS = ("start", "end", "anchor_time")
_NODE_TIME_KEYS = ("start", "end")


def compact_bytes(record: Record) -> bytes:
    """The record's normalised form as JSON bytes (NaN and infinities kept as JSON constants)."""
    return to_json({"format": FORMAT, "type": record.type, "app_id": record.app_id, "data": record.data},
                   fallback=str, inf_nan_mode="constants")


def record_from_compact(blob: bytes, envelope_text: str) -> Record | None:
    """The Record ``blob`` describes (its envelope is ``envelope_text``), or None if it cannot be used."""
    try:
        obj = from_json(blob, cache_strings="keys")  # keys repeat, values rarely do
        if obj.get("format") != FORMAT:
            return None
        data: dict[str, Any] = obj["data"]
        _restore_times(data, _TIME_KEYS)
        derived = data["derived"]
        _restore_times(derived, _DERIVED_TIME_KEYS)
        for node in derived.get("nodes") or ():
            _restore_times(node, _NODE_TIME_KEYS)
        return Record(obj["type"], obj["app_id"], data, raw=envelope_text)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _restore_times(container: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        value = container.get(key)
        if isinstance(value, str):
            container[key] = datetime.fromisoformat(value)
