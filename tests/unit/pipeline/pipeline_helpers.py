"""Shared helpers for pipeline tests: sample records, a stand-in mapping and a scriptable sink."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from traceexport.errors import RecordError
from traceexport.records import Record, record_from_obj
from traceexport.sinks.base import BatchLimits, ExportResult, ItemFailure, Payload

SAMPLES = Path(__file__).parents[2] / "data" / "samples"


def message_envelope(i: int, app_id: str | None = None) -> dict[str, Any]:
    """A copy of the sample chat message record with its own message id (and optionally app id)."""
    envelope = json.loads((SAMPLES / "05-message-chat.json").read_text())
    envelope = copy.deepcopy(envelope)
    envelope["trace_info"]["message_id"] = f"00000000-0000-4000-8000-{i:012d}"
    if app_id is not None:
        envelope["app_id"] = app_id
    return envelope


def make_records(n: int, start: int = 0, app_id: str | None = None) -> list[Record]:
    """``n`` distinct message records."""
    return [record_from_obj(message_envelope(i, app_id)) for i in range(start, start + n)]


class StandInMapping:
    """One ``event`` payload per record keyed by the record key; records whose key is in ``bad`` fail."""

    fingerprint = None  # never mapped ahead by the accepting process

    def __init__(self, bad: frozenset[str] = frozenset()) -> None:
        self.bad = bad

    def map(self, record: Record) -> list[Payload]:
        if record.key in self.bad:
            raise RecordError("stand-in mapping refuses this record")
        return [Payload("event", {"key": record.key, "enriched": record.data.get("enriched")}, record.key)]


Plan = Callable[[Sequence[Payload], int], ExportResult]


class ScriptedSink:
    """A sink whose outcome per call comes from ``plan(payloads, call_number)``; records every call."""

    def __init__(self, name: str = "test", plan: Plan | None = None, max_items: int = 100,
                 linger: float = 0.0) -> None:
        self.name = name
        self.backend = "test"
        self.limits = BatchLimits(max_items=max_items, linger_seconds=linger)
        self.plan = plan or (lambda payloads, n: ExportResult.success())
        self.calls: list[tuple[float, list[str]]] = []
        self.delivered: list[str] = []
        self._lock = threading.Lock()
        self.shut = False

    def request_bodies(self, payloads: Sequence[Payload], /) -> list[Any]:
        return [p.body for p in payloads]

    def export(self, payloads: Sequence[Payload], /) -> ExportResult:
        with self._lock:
            number = len(self.calls)
            self.calls.append((time.monotonic(), [p.key for p in payloads]))
        result = self.plan(payloads, number)
        with self._lock:
            self.delivered += [p.key for i, p in enumerate(payloads) if i not in result.failures]
        return result

    def shutdown(self, timeout: float = 30.0) -> None:
        self.shut = True


def fail_first(calls: int, failure: ItemFailure) -> Plan:
    """A plan failing every item of the first ``calls`` calls with ``failure``, then succeeding."""
    def plan(payloads: Sequence[Payload], number: int) -> ExportResult:
        if number < calls:
            return ExportResult.all_failed(len(payloads), failure)
        return ExportResult.success()
    return plan


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` with a bound; its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.01)
    return True
