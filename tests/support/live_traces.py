"""Trace records as Dify sends them live: the sample chat message, ending now, with its own message id.

End-to-end latency is measured from a record's own end time, so tests and benchmarks that look at it
need records that ended a moment ago (the stored samples ended long before).
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "05-message-chat.json"


@cache
def _template() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SAMPLE.read_text(encoding="utf-8"))
    return data


def live_envelope(number: int, *, ended: datetime | None = None, run: str = "0000") -> dict[str, Any]:
    """The sample chat message as a TaskData envelope that ended at ``ended`` (default now), 1.5 s long,
    with a message id made of ``run`` and ``number``."""
    end = ended or datetime.now(UTC)
    start = end - timedelta(seconds=1.5)
    envelope = copy.deepcopy(_template())
    info = envelope["trace_info"]
    info["message_id"] = f"30000000-{run[:4]:0>4}-4000-8000-{number:012d}"
    info["start_time"], info["end_time"] = _naive(start), _naive(end)
    if isinstance(info.get("message_data"), dict):
        info["message_data"]["created_at"] = _naive(start)
    return envelope


def live_envelopes(count: int, first: int = 0, *, run: str = "0000") -> list[dict[str, Any]]:
    """``count`` envelopes ending now, numbered from ``first``."""
    now = datetime.now(UTC)
    return [live_envelope(n, ended=now, run=run) for n in range(first, first + count)]


@cache
def _text_template() -> str:
    envelope = live_envelope(0, ended=datetime(2001, 1, 1, 0, 0, 10, tzinfo=UTC), run="@@@@")
    text = json.dumps(envelope, separators=(",", ":"))
    for moment, token in ((envelope["trace_info"]["start_time"], "@START@"),
                          (envelope["trace_info"]["end_time"], "@END@")):
        text = text.replace(moment, token)
    return text.replace(envelope["trace_info"]["message_id"], "@ID@")


def live_body(count: int, first: int = 0, *, run: str = "0000") -> bytes:
    """:func:`live_envelopes` as a JSON array, made by text substitution (cheap enough to send thousands a
    second from one thread)."""
    end = datetime.now(UTC)
    start, stop = _naive(end - timedelta(seconds=1.5)), _naive(end)
    template = _text_template().replace("@START@", start).replace("@END@", stop)
    return ("[" + ",".join(template.replace("@ID@", f"30000000-{run[:4]:0>4}-4000-8000-{n:012d}")
                           for n in range(first, first + count)) + "]").encode()


def _naive(moment: datetime) -> str:
    """As Dify writes it: ISO 8601 in UTC without an offset."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat()
