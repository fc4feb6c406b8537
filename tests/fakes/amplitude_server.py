"""A contract-checking fake of Amplitude's HTTP V2 and Batch APIs (../shared/contracts/README.md §3 and §6).

``POST /2/httpapi`` and ``POST /batch`` with ``Content-Type: application/json`` and a body
``{"api_key", "events", "options"?}``:

* body of 1 MB or more (20 MB on ``/batch``) or 2000 events or more -> 413 ``Payload too large``;
* bad JSON -> 400 ``Invalid JSON request body``; no ``api_key`` / ``events`` -> 400 with ``missing_field``;
  a key other than the configured one -> 400 ``Invalid API key: ...`` (the key is never echoed);
* per event: ``event_type`` required; ``user_id`` or ``device_id`` of at least ``options.min_id_length``
  (default 5) and not in Amplitude's never-accepted list; ``time``, ``session_id`` and ``event_id`` 64-bit
  integers; ``price``, ``quantity``, ``revenue``, ``location_lat`` / ``_lng`` numbers; ``event_properties``,
  ``user_properties``, ``groups`` and ``group_properties`` objects nested at most 40 deep. Offenders -> 400
  ``Invalid field values on some events`` with ``events_with_missing_fields`` / ``events_with_invalid_fields``
  / ``events_with_invalid_id_lengths`` (field -> event indexes); nothing of that request is stored;
* ``throttle_users`` / ``throttle_devices`` -> 429 listing ``throttled_users`` / ``throttled_events``;
  ``quota_users`` -> 429 with ``exceeded_daily_quota_users``; ``silence_devices`` -> 400 silenced body;
* otherwise 200 with ``events_ingested`` etc.; events are stored once per (device_id or user_id, insert_id).

Run out of process: ``python -m tests.fakes.amplitude_server --port 0 [--api-key K --throttle-user U ...]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from typing import Any

from tests.fakes._server import FakeServer, RecordedRequest, Response, run_main

INVALID_IDS = frozenset({"anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", "",
                         "00000000-0000-0000-0000-000000000000", "{}", "lmy47d", "0", "-1"})
LIMITS = {"/2/httpapi": 1_000_000, "/batch": 20_000_000}
MAX_EVENTS = 2000
INTEGER_FIELDS = ("time", "session_id", "event_id")  # longs: ms since the epoch, the session's start, a counter
NUMBER_FIELDS = ("price", "quantity", "revenue", "location_lat", "location_lng")
OBJECT_FIELDS = ("event_properties", "user_properties", "groups", "group_properties")
MAX_DEPTH = 40  # how deeply those objects may nest


def _valid_id(value: Any, min_len: int) -> tuple[bool, bool]:
    """(usable, too_short) for one user_id / device_id value."""
    if value is None:
        return False, False
    text = str(value)
    if text.lower() in INVALID_IDS:
        return False, False
    if len(text) < min_len:
        return False, True
    return True, False


def event_problems(events: list[Any], min_len: int) -> dict[str, dict[str, list[int]]]:
    """The per-field index maps of a 400 for ``events`` (empty when every event is acceptable)."""
    kinds = ("events_with_missing_fields", "events_with_invalid_fields", "events_with_invalid_id_lengths")
    maps: dict[str, dict[str, list[int]]] = {kind: {} for kind in kinds}

    def add(kind: str, field: str, index: int) -> None:
        maps[kind].setdefault(field, []).append(index)

    for i, event in enumerate(events):
        if not isinstance(event, dict):
            add("events_with_invalid_fields", "event", i)
            continue
        if not event.get("event_type"):
            add("events_with_missing_fields", "event_type", i)
        checks = {f: _valid_id(event.get(f), min_len) for f in ("user_id", "device_id")}
        if not any(ok for ok, _ in checks.values()):
            short = [f for f, (_, too_short) in checks.items() if too_short]
            if short:
                add("events_with_invalid_id_lengths", short[0], i)
            else:
                add("events_with_missing_fields", "user_id", i)
        for field in INTEGER_FIELDS:
            if event.get(field) is not None and not _is_long(event[field]):
                add("events_with_invalid_fields", field, i)
        for field in NUMBER_FIELDS:
            value = event.get(field)
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
                add("events_with_invalid_fields", field, i)
        for field in OBJECT_FIELDS:
            value = event.get(field)
            if value is not None and (not isinstance(value, dict) or _depth(value) > MAX_DEPTH):
                add("events_with_invalid_fields", field, i)
    return {k: v for k, v in maps.items() if v}


def _is_long(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -2**63 <= value < 2**63


def _depth(value: Any) -> int:
    """How deeply objects and lists nest in ``value`` (a scalar: 0)."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


class AmplitudeFake(FakeServer):
    """In-memory Amplitude: ``events`` (deduplicated, arrival order), ``duplicates`` count, ``requests``."""

    def __init__(self, *, api_key: str | None = None, throttle_users: Iterable[str] = (),
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.api_key = api_key
        self.throttle_users: set[str] = set(throttle_users)
        self.throttle_devices: set[str] = set()
        self.quota_users: set[str] = set()
        self.silence_devices: set[str] = set()
        self.events: list[dict[str, Any]] = []
        self.duplicates = 0
        self._seen: set[tuple[str, str]] = set()

    def handle(self, request: RecordedRequest) -> Response:
        path = request.path.split("?", 1)[0]
        if request.method != "POST" or path not in LIMITS:
            return Response(400, {"code": 400, "error": "Invalid request path"})
        if not request.headers.get("content-type", "").startswith("application/json"):
            return Response(400, {"code": 400, "error": "Invalid JSON request body"})
        if len(request.body) >= LIMITS[path]:
            return Response(413, {"code": 413, "error": "Payload too large"})
        try:
            body = request.json()
        except ValueError:
            return Response(400, {"code": 400, "error": "Invalid JSON request body"})
        if not isinstance(body, dict):
            return Response(400, {"code": 400, "error": "Invalid JSON request body"})
        for field in ("api_key", "events"):
            if not body.get(field):
                return Response(400, {"code": 400, "error": "Request missing required field",
                                      "missing_field": field})
        if self.api_key is not None and body["api_key"] != self.api_key:
            return Response(400, {"code": 400, "error": "Invalid API key: the key given is not valid"})
        events = body["events"]
        if not isinstance(events, list):
            return Response(400, {"code": 400, "error": "Invalid event JSON"})
        if len(events) >= MAX_EVENTS:
            return Response(413, {"code": 413, "error": "Payload too large"})
        min_len = int((body.get("options") or {}).get("min_id_length") or 5)
        problems = event_problems(events, min_len)
        if problems:
            return Response(400, {"code": 400, "error": "Invalid field values on some events", **problems})
        return self._silenced(events) or self._throttled(events) or self._ingest(events, len(request.body))

    def _silenced(self, events: list[dict[str, Any]]) -> Response | None:
        hit = [i for i, e in enumerate(events) if e.get("device_id") in self.silence_devices]
        if not hit:
            return None
        return Response(400, {"code": 400, "error": "Events silenced for device_id", "eps_threshold": 100,
                              "exceeded_daily_quota_devices": {}, "silenced_events": hit,
                              "silenced_devices": sorted(self.silence_devices),
                              "throttled_devices": {}, "throttled_events": []})

    def _throttled(self, events: list[dict[str, Any]]) -> Response | None:
        users = self.throttle_users | self.quota_users
        hit = [i for i, e in enumerate(events)
               if e.get("user_id") in users or e.get("device_id") in self.throttle_devices]
        if not hit:
            return None
        body: dict[str, Any] = {
            "code": 429, "error": "Too many requests for some devices and users", "eps_threshold": 30,
            "throttled_users": {u: 31 for u in sorted(self.throttle_users)},
            "throttled_devices": {d: 31 for d in sorted(self.throttle_devices)},
            "throttled_events": hit,
        }
        if self.quota_users:
            body["exceeded_daily_quota_users"] = {u: 500_000 for u in sorted(self.quota_users)}
            body["exceeded_daily_quota_devices"] = {}
        return Response(429, body)

    def _ingest(self, events: list[dict[str, Any]], size: int) -> Response:
        with self._lock:
            for event in events:
                insert_id = event.get("insert_id")
                if insert_id is not None:
                    key = (str(event.get("device_id") or event.get("user_id")), str(insert_id))
                    if key in self._seen:
                        self.duplicates += 1
                        continue
                    self._seen.add(key)
                self.events.append(event)
        return Response(200, {"code": 200, "events_ingested": len(events), "payload_size_bytes": size,
                              "server_upload_time": int(time.time() * 1000)})

    def state(self) -> dict[str, Any]:
        return {"events": self.events, "duplicates": self.duplicates}

    def reset_state(self) -> None:
        self.events.clear()
        self._seen.clear()
        self.duplicates = 0


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", default=None, help="accept only this api_key")
    parser.add_argument("--throttle-user", action="append", default=[], help="answer 429 for this user_id")


def main(argv: list[str] | None = None) -> int:
    """Run the fake until SIGTERM, printing its base URL first."""
    return run_main(lambda a: AmplitudeFake(api_key=a.api_key, throttle_users=a.throttle_user,
                                            host=a.host, port=a.port), argv, _configure)


if __name__ == "__main__":
    raise SystemExit(main())
