"""The closed registry of functions a mapping may call (no user code, no eval).

A function receives the piped value first, then its arguments. Unless it is ``null_aware``, a null
input skips it and the result stays null (so ``$missing | truncate(10)`` is simply absent). Argument
kinds are checked when the mapping compiles: ``table`` arguments must name an entry of the file's
``tables`` section, ``int`` arguments must be integer literals.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from traceexport import _json as fastjson
from traceexport.mapping import ids
from traceexport.records.values import message_pairs

Impl = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Function:
    """One registry entry: implementation, arity, argument kinds and a one-line description."""

    name: str
    impl: Impl
    min_args: int
    max_args: int
    doc: str
    arg_kinds: tuple[str, ...] = ()  # per position: "any", "table", "int", "count" (an int >= 0); missing = "any"
    null_aware: bool = False  # called even when the input is null
    head: bool = False  # may start an expression without a piped value: coalesce($a, $b)


REGISTRY: dict[str, Function] = {}


def _register(name: str, doc: str, min_args: int = 0, max_args: int | None = None, *, arg_kinds: tuple[str, ...] = (),
              null_aware: bool = False, head: bool = False) -> Callable[[Impl], Impl]:
    def wrap(impl: Impl) -> Impl:
        REGISTRY[name] = Function(name, impl, min_args, min_args if max_args is None else max_args, doc,
                                  arg_kinds, null_aware, head)
        return impl

    return wrap


def _dump(value: Any) -> str:
    return fastjson.dumps(value)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


def as_text(value: Any) -> str:
    """``value`` as text the way every text function and template prints it: text as is, ``true``/``false``,
    numbers as digits, times as RFC 3339 UTC, lists and objects as JSON (never Python's ``True`` or ``{'a': None}``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, datetime):
        return _iso(value)
    return _dump(value)


# --- identity --------------------------------------------------------------------------------------
@_register("trace_id", "32-hex OTLP trace id: the Dify UUID's digits, else SHA-256 of the value")
def _trace_id(value: Any) -> str:
    return ids.trace_id_hex(str(value))


@_register("span_id", "16-hex OTLP span id from SHA-256 of the value and a role: span_id('llm')", 0, 1)
def _span_id(value: Any, role: Any = "") -> str:
    return ids.span_id_hex(str(value), str(role))


@_register("uuid7", "UUIDv7 with the timestamp of the argument (a time) and bits from the value: uuid7($t)", 1, 2)
def _uuid7(value: Any, moment: Any, role: Any = "") -> str | None:
    if isinstance(moment, str | datetime):
        moment = _moment(moment)
    if not isinstance(moment, datetime | int | float) or (isinstance(moment, float) and not math.isfinite(moment)):
        return None
    return ids.uuid7_from(str(value), moment, str(role))


@_register("sha256", "hex SHA-256 of the value (for pseudonymising ids); optional length: sha256(16)", 0, 1,
           arg_kinds=("count",))
def _sha256(value: Any, length: int = 64) -> str:
    return hashlib.sha256(str(value).encode("utf-8")).hexdigest()[: int(length)]


@_register("redact", "replace the value by a fixed marker: redact or redact('[hidden]')", 0, 1)
def _redact(value: Any, marker: Any = "[redacted]") -> Any:
    return marker


# --- time ------------------------------------------------------------------------------------------
def _moment(value: Any) -> datetime | None:
    """A time: a datetime, or ISO 8601 text such as a nested ``$message_data.created_at`` (Dify writes those
    without a zone: UTC, as the record's own times; a datetime without one too, whatever the machine's zone)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@_register("iso8601", "RFC 3339 UTC text with microseconds and Z: 2026-03-14T09:21:07.418225Z")
def _iso8601(value: Any) -> str | None:
    moment = _moment(value)
    return _iso(moment) if moment is not None else None


@_register("unix_nano", "integer nanoseconds since the epoch")
def _unix_nano(value: Any) -> int | None:
    moment = value if isinstance(value, datetime) and value.tzinfo is not None else _moment(value)
    if moment is None:
        return None
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


@_register("unix_ms", "integer milliseconds since the epoch")
def _unix_ms(value: Any) -> int | None:
    moment = value if isinstance(value, datetime) and value.tzinfo is not None else _moment(value)
    if moment is None:
        return None
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


@_register("add_seconds", "a time plus N seconds (N may be a path): add_seconds($latency)", 1)
def _add_seconds(value: Any, seconds: Any) -> Any:
    value = _moment(value)
    if value is None or not isinstance(seconds, int | float):
        return None
    try:
        return value + timedelta(seconds=seconds)
    except (OverflowError, ValueError):  # NaN, infinity or a time past the calendar's end: no time
        return None


# --- encoding and text -----------------------------------------------------------------------------
@_register("json", "JSON text of the value (compact, UTF-8); text stays text unless json(true)", 0, 1)
def _json(value: Any, force: Any = False) -> str:
    if isinstance(value, str) and not force:
        return value
    return _dump(value)


@_register("parse_json", "the JSON value a text holds; other values and invalid JSON pass through")
def _parse_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return fastjson.loads(value)
        except ValueError:
            return value
    return value


@_register("str", "the value as text: true/false, numbers as digits, times as RFC 3339, lists and objects as JSON")
def _str(value: Any) -> str:
    return as_text(value)


@_register("truncate", "at most N characters of text (non-text is JSON-encoded first), with … when cut", 1,
           arg_kinds=("count",))
def _truncate(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else _dump(value)
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…" if limit else ""


@_register("lower", "lower-case text")
def _lower(value: Any) -> str:
    return as_text(value).lower()


@_register("upper", "upper-case text")
def _upper(value: Any) -> str:
    return as_text(value).upper()


@_register("prefix", "text with a prefix: prefix('dify.')", 1)
def _prefix(value: Any, text: Any) -> str:
    return f"{as_text(text)}{as_text(value)}"


MAX_MADE_TEXT = 2**25  # characters a function may make from a record's text: far past any sink's request size


def _bounded(size: int, function: str) -> None:
    """Refuse (one record) text a function would grow past MAX_MADE_TEXT: chained replace() calls multiply,
    and a few in one mapping or playground override would allocate gigabytes from one record."""
    if size > MAX_MADE_TEXT:
        raise ValueError(f"{function} would make {size:,} characters (at most {MAX_MADE_TEXT:,})")


@_register("replace", "text with every OLD replaced by NEW: replace('-', '_')", 2)
def _replace(value: Any, old: Any, new: Any) -> str:
    text, old_text, new_text = as_text(value), as_text(old), as_text(new)
    if len(new_text) > len(old_text):
        found = text.count(old_text)  # '' is found between every character and at both ends
        _bounded(len(text) + found * (len(new_text) - len(old_text)), "replace")
    return text.replace(old_text, new_text)


@_register("split", "list of parts of text: split('/'); split('') the characters", 1)
def _split(value: Any, sep: Any) -> list[str]:
    text, separator = as_text(value), as_text(sep)
    return text.split(separator) if separator else list(text)  # split(''): the characters


@_register("join", "text of list items joined by a separator: join(',')", 1)
def _join(value: Any, sep: Any) -> str:
    if not isinstance(value, list):
        return as_text(value)
    separator, parts = as_text(sep), [as_text(v) for v in value]
    _bounded(sum(map(len, parts)) + len(separator) * max(len(parts) - 1, 0), "join")
    return separator.join(parts)


@_register("length", "number of characters of text, items of a list or keys of an object")
def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | list | dict) else len(_dump(value))


# --- numbers ---------------------------------------------------------------------------------------
_MAX_INT_DIGITS = 4000  # past this an integer cannot be printed (Python's limit is 4,300 digits): not a number to send


@_register("int", "the value as an integer (null when not numeric)")
def _int(value: Any) -> int | None:
    if isinstance(value, int):  # exact, whatever its size (through a float 2**63-1 became 2**63)
        return int(value)
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if not isinstance(value, str | Decimal):
        return None
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        return None
    if not number.is_finite() or number.adjusted() > _MAX_INT_DIGITS:
        return None
    return int(number)


@_register("float", "the value as a number (Decimal text such as '0.0001' included)")
def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@_register("round", "a number rounded to N decimals: round(3)", 0, 1, arg_kinds=("int",))
def _round(value: Any, digits: int = 0) -> float | int | None:
    if not isinstance(value, int | float) or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(value, digits) if digits else round(value)


@_register("mul", "a number times a factor: mul(1000)", 1)
def _mul(value: Any, factor: Any) -> float | int | None:
    if isinstance(value, int | float) and isinstance(factor, int | float):
        return value * factor
    return None


# --- logic -----------------------------------------------------------------------------------------
@_register("coalesce", "the first non-null of the value and the arguments: coalesce($a, $b)", 1, 16,
           null_aware=True, head=True)
def _coalesce(value: Any, *alternatives: Any) -> Any:
    if value is not None and value != "":
        return value
    for alternative in alternatives:
        if alternative is not None and alternative != "":
            return alternative
    return None


@_register("default", "the argument when the value is null or empty text: default('unknown')", 1,
           null_aware=True)
def _default(value: Any, fallback: Any) -> Any:
    return fallback if value is None or value == "" else value


@_register("if", "THEN when the value is truthy, else ELSE (or null): if('ERROR', 'DEFAULT')", 1, 2,
           null_aware=True)
def _if(value: Any, then: Any, otherwise: Any = None) -> Any:
    return then if value else otherwise


@_register("when", "the value when the argument is truthy, else null: when($derived.failed)", 1)
def _when(value: Any, condition: Any) -> Any:
    return value if condition else None


@_register("unless", "the value when the argument is falsy (null, false, empty), else null: unless($derived.nodes)", 1)
def _unless(value: Any, condition: Any) -> Any:
    return None if condition else value


@_register("when_equals", "the value when the two arguments are equal, else null: when_equals($currency, 'USD')", 2)
def _when_equals(value: Any, left: Any, right: Any) -> Any:
    return value if left == right else None


@_register("equals", "true when the value equals the argument: equals('error')", 1, null_aware=True)
def _equals(value: Any, other: Any) -> bool:
    return bool(value == other)


@_register("not", "true when the value is falsy", null_aware=True)
def _not(value: Any) -> bool:
    return not value


@_register("nonempty", "the value, or null when it is empty text, an empty list or an empty object")
def _nonempty(value: Any) -> Any:
    return value if value not in ("", [], {}) else None


@_register("lookup", "the entry for the value in a table of the file's 'tables' section; else the fallback", 1,
           2, arg_kinds=("table",))
def _lookup(value: Any, table: dict[Any, Any], fallback: Any = None) -> Any:
    try:
        return table.get(value, fallback)
    except TypeError:  # unhashable value
        return fallback


# --- collections -----------------------------------------------------------------------------------
@_register("get", "the item at a key or index of the value: get('usage')", 1)
def _get(value: Any, key: Any) -> Any:
    if isinstance(value, dict):
        return value.get(key) if _hashable(key) else None
    if isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
        return value[key]
    return None


@_register("where_in", "the objects of a list whose KEY value is a truthy entry of a table: "
           "where_in('kind', llm_kinds)", 2, arg_kinds=("any", "table"))
def _where_in(value: Any, key: Any, table: dict[Any, Any]) -> Any:
    if not isinstance(value, list):
        return None
    if not _hashable(key):
        return []
    return [item for item in value if isinstance(item, dict) and _hashable(item.get(key)) and table.get(item.get(key))]


def _hashable(value: Any) -> bool:
    """True when ``value`` can be a key (a list or object read from a record cannot: no entry has it)."""
    return not isinstance(value, list | dict)


@_register("first", "the first item of a list")
def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else None


@_register("wrap", "an object {KEY: value} unless the value already is an object: wrap('input')", 1)
def _wrap(value: Any, key: Any) -> Any:
    return value if isinstance(value, dict) else {str(key): value}


@_register("list", "a list of the value unless it already is one")
def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@_register("pick", "an object with only the named keys: pick('a', 'b')", 1, 32)
def _pick(value: Any, *keys: Any) -> Any:
    return {k: value[k] for k in keys if k in value} if isinstance(value, dict) else None


@_register("omit", "an object without the named keys: omit('graph')", 1, 32)
def _omit(value: Any, *keys: Any) -> Any:
    return {k: v for k, v in value.items() if k not in keys} if isinstance(value, dict) else value


@_register("compact", "an object without its null values (lists keep their items)")
def _compact(value: Any) -> Any:
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


@_register("unique", "a list without repeated items (lists and objects compared by content), in first-seen order, "
           "nulls and empty text dropped")
def _unique(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    seen: set[Any] = set()
    out: list[Any] = []
    for item in value:
        if item is None or item == "":
            continue
        marker = ("json", _dump(item)) if isinstance(item, dict | list) else item  # lists and objects by content
        if marker not in seen:
            seen.add(marker)
            out.append(item)
    return out


@_register("flatten_indexed", "an object to merge: a list of objects as PREFIX.N.SUBKEY.field keys "
           "(OpenInference style): flatten_indexed('retrieval.documents', 'document')", 1, 2)
def _flatten_indexed(value: Any, prefix: Any, subkey: Any = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(value, list):
        return out
    inner = f".{subkey}" if subkey else ""
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            continue
        for key, field in item.items():
            if field is None:
                continue
            scalar = isinstance(field, str | int | float | bool)
            out[f"{prefix}.{index}{inner}.{key}"] = field if scalar else _dump(field)
    return out


# --- Dify message shapes ---------------------------------------------------------------------------
def _pairs(value: Any, role: Any) -> list[tuple[str, str]]:
    """(role, text) pairs of a Dify prompt list, a [{role, content}] list or plain text."""
    return [(r, c if isinstance(c, str) else _dump(c)) for r, c in message_pairs(value, str(role))]


@_register("chat_messages", "Dify prompt list or text as [{role, content}] (OpenAI style); role for text: "
           "chat_messages('assistant')", 0, 1)
def _chat_messages(value: Any, role: Any = "user") -> list[dict[str, Any]]:
    return [{"role": r, "content": c} for r, c in _pairs(value, role)]


@_register("genai_messages", "Dify prompt list or text as GenAI semconv messages "
           "[{role, parts:[{type: text, content}]}]: genai_messages('assistant')", 0, 1)
def _genai_messages(value: Any, role: Any = "user") -> list[dict[str, Any]]:
    return [{"role": r, "parts": [{"type": "text", "content": c}]} for r, c in _pairs(value, role)]


@_register("oi_messages", "an object to merge: messages as OpenInference PREFIX.N.message.{role,content} keys: "
           "oi_messages('llm.input_messages')", 1, 2)
def _oi_messages(value: Any, prefix: Any, role: Any = "user") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for index, (message_role, content) in enumerate(_pairs(value, role)):
        out[f"{prefix}.{index}.message.role"] = message_role
        out[f"{prefix}.{index}.message.content"] = content
    return out


def function_names() -> list[str]:
    """Every function a mapping may call, sorted."""
    return sorted(REGISTRY)
