"""Fast JSON for the hot paths, on pydantic-core (already a dependency): 2-3x the standard library.

``loads`` accepts bytes or text and raises ``ValueError`` on malformed input; ``dumps`` writes compact
UTF-8 text (no ASCII escaping), datetimes as ISO 8601, NaN/Infinity as null, and anything else it does
not know as ``str(value)``.

Only object keys go through pydantic-core's string cache: a trace record's values are mostly unique (ids,
texts, times), so caching them too only churns the cache; keys repeat in every record (a Dify record
reads 15-20 % faster this way).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic_core import from_json, to_json

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(data: str | bytes | bytearray) -> Any:
    """The JSON value in ``data``; ValueError (with line and column) when it is not valid JSON.

    A ``\\ud83d`` escape with no partner (valid JSON: what Python's ``json.dumps`` writes for a lone
    surrogate) is read as U+FFFD, which UTF-8 can carry. pydantic-core refuses such text, so only text
    it refused is read again, by the standard library.
    """
    try:
        return from_json(data, cache_strings="keys")
    except ValueError:
        value = _with_lone_surrogates(data)
        if value is _REFUSED:
            raise
        return value


_REFUSED = object()


def _with_lone_surrogates(data: str | bytes | bytearray) -> Any:
    """``data`` read by the standard library with each lone surrogate replaced by U+FFFD, or ``_REFUSED``
    when it holds no ``\\u`` escape or is not JSON there either (the fast parser's error stands then)."""
    if "\\u" not in data if isinstance(data, str) else b"\\u" not in data:
        return _REFUSED
    try:
        return _replaced(json.loads(data))
    except (ValueError, RecursionError):
        return _REFUSED


def _replaced(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replaced(key): _replaced(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_replaced(item) for item in value]
    return value


def dumps_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON bytes of ``value``."""
    return to_json(value, fallback=str, inf_nan_mode="null")


def json_form(value: Any) -> Any:
    """``value`` as JSON carries it (read back): a datetime as its ISO 8601 text, a tuple as a list, an object
    JSON has no type for as its ``str()``. Encoders that meet such a value write this, so a payload sent as
    mapped and one stored as JSON and read back (:mod:`traceexport.pipeline.premapped`) go out alike."""
    return from_json(to_json(value, fallback=str, inf_nan_mode="constants"))


def dumps(value: Any) -> str:
    """Compact JSON text of ``value``."""
    return to_json(value, fallback=str, inf_nan_mode="null").decode("utf-8")
