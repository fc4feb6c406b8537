"""A batch's payloads sent a request's worth at a time, as its records are mapped.

The worker maps a batch's records one after another and adds each record's payloads here; as soon as a
request's worth (``max_items``) is waiting, it goes out, and only its outcome is kept. So a batch holds at
most one request's payloads (plus the one record's being added) however many its records make: a workflow
run with thousands of node spans is sent while the next is mapped, not after the whole batch. The requests
are cut exactly where one list of all the batch's payloads would be. Once a request fails as a whole and may
be retried (the backend is down or throttling), nothing more is sent: the payloads after it fail with the same
reason, unsent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from traceexport.sinks.base import ExportResult, ItemFailure, Payload


class OutgoingRequests:
    """One batch's payloads on their way: ``add`` each record's, ``finish`` for the outcome of them all."""

    def __init__(self, send: Callable[[list[Payload]], ExportResult], max_items: int) -> None:
        """``send`` makes one request of at most ``max_items`` payloads (it never raises)."""
        self._send = send
        self._size = max(max_items, 1)
        self._waiting: list[Payload] = []
        self._done = 0  # payloads sent, or failed unsent: the index in the batch of the first one waiting
        self._down: ItemFailure | None = None
        self.owners: list[int] = []  # each payload's record (an index into the batch), in order
        self.result = ExportResult()  # failures by the payload's index in the batch

    def add(self, owner: int, payloads: Sequence[Payload]) -> None:
        """The payloads of the batch's record ``owner``; sends every request's worth now waiting."""
        self.owners.extend([owner] * len(payloads))
        # record_ref ties each payload to its record, so a sink can keep a record's payloads together.
        self._waiting.extend(p if p.record_ref == owner else Payload(p.kind, p.body, p.key, owner) for p in payloads)
        while len(self._waiting) >= self._size:
            self._request(self._size)

    def finish(self) -> ExportResult:
        """Send what still waits (in requests of at most ``max_items``); the outcome of every payload added."""
        while self._waiting:
            self._request(self._size)
        return self.result

    def _request(self, count: int) -> None:
        chunk, self._waiting = self._waiting[:count], self._waiting[count:]
        if self._down is not None:  # the backend is down or throttling: the rest waits with the same reason
            self.result.merge(ExportResult.all_failed(len(chunk), self._down), self._done)
        else:
            part = self._send(chunk)
            self.result.merge(part, self._done)
            self._down = whole_request_retryable(part, len(chunk))
        self._done += len(chunk)


def whole_request_retryable(result: ExportResult, count: int) -> ItemFailure | None:
    """The failure when every one of a request's ``count`` payloads failed and may be retried, else None."""
    if count == 0 or len(result.failures) < count:
        return None
    failures = list(result.failures.values())
    return None if any(f.permanent for f in failures) else failures[0]
