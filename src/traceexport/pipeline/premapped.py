"""A record's payloads, mapped by the process that accepted it, for a delivery process to send as they are.

While a delivery process lags behind ingest, the accepting process stores something beside each envelope
so that delivery does less. The compact normalised form (:mod:`traceexport.records.compact`) spares it the
parse; this form spares it the mapping too: the payloads of every mapping the record is routed through,
each under its mapping's fingerprint, plus the record's end time. It is about half the compact form's
size, and reading it is a quarter of the work of reading that form and mapping it.

It is written only for a record no enricher will change (a delivery process's enricher runs before
mapping), and read only by a mapping with the same fingerprint (the same configuration); a record whose
mapping fails, and any reader this form does not serve (another version, another mapping), falls back
to the envelope, which stays the source of truth. The form says whether the writer had an enricher (that
passed the record over): a reader with an enricher uses only such a form, since one mapped where no
enricher ran lacks what its enricher adds (a backlog written before ``enrich`` was configured, or a
command without it handing records to a daemon with it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json, to_json

from traceexport import __version__
from traceexport.pipeline.settings import Mapping
from traceexport.records import Record
from traceexport.sinks.base import Payload

FORMAT = f"traceexport-premapped/1/{__version__}"
_PREFIX = to_json({"format": FORMAT})[:-1]  # every form starts so: it is the first key written


@dataclass(frozen=True, slots=True)
class Premapped:
    """A stored record's payloads for one mapping, and its end time in Dify (epoch seconds) if it has one."""

    payloads: list[Payload]
    end: float | None


def end_seconds(data: dict[str, object]) -> float | None:
    """The record's end time in Dify (epoch seconds) from its ``derived`` facts, if it has one."""
    derived = data.get("derived")
    end_ns = derived.get("end_ns") if isinstance(derived, dict) else None
    return end_ns / 1e9 if isinstance(end_ns, int) else None


def premapped_bytes(record: Record, mappings: Iterable[Mapping], *, enricher: bool = False) -> bytes | None:
    """The record mapped by each of ``mappings``, as stored; None when one cannot map it (or has no
    fingerprint): the delivery process then maps it itself and reports what went wrong. ``enricher``: this
    process has an enricher, and it would not change the record."""
    mapped: dict[str, list[list[Any]]] = {}
    for mapping in mappings:
        if mapping.fingerprint is None:
            return None
        if mapping.fingerprint in mapped:
            continue
        try:
            payloads = mapping.map(record)
        except Exception:  # RecordError, or a mapping bug: the delivery process dead-letters it with the reason
            return None
        mapped[mapping.fingerprint] = [[p.kind, p.key, p.body] for p in payloads]
    try:
        return to_json({"format": FORMAT, "end": end_seconds(record.data), "enricher": enricher, "mapped": mapped},
                       inf_nan_mode="constants")
    except ValueError:  # a value JSON cannot carry as it is: left to the delivery process
        return None


def is_premapped(blob: bytes | None) -> bool:
    """Whether a stored form is this one (of this version)."""
    return blob is not None and blob.startswith(_PREFIX)


def read_premapped(blob: bytes, fingerprint: str | None, *, enricher: bool = False) -> Premapped | None:
    """The payloads ``blob`` holds for the mapping with ``fingerprint``, or None if it holds none usable
    (for a reader with an ``enricher``, none mapped where no enricher ran)."""
    if fingerprint is None or not is_premapped(blob):
        return None
    try:
        stored = from_json(blob, cache_strings="keys")
        if enricher and stored.get("enricher") is not True:
            return None
        found = stored["mapped"].get(fingerprint)
        if found is None:
            return None
        end = stored["end"]
        return Premapped([Payload(kind, body, key) for kind, key, body in found],
                         float(end) if end is not None else None)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
