"""Route one broker message: Dify's trace task goes to the processor, anything else is set aside.

A message on the ``ops_trace`` queue that is not ``process_trace_tasks`` (another Dify version's task,
or a body this source cannot decode) is not ours to judge: it is moved, unchanged (same body, headers
and properties), to ``other_tasks_queue`` (default ``ops_trace_other``) where a Dify worker started
with ``-Q ops_trace_other`` runs it as usual, then acknowledged here. With ``other_tasks_queue: null``
it is acknowledged and dropped with a warning. A ``process_trace_tasks`` message whose argument is
malformed cannot be run by anyone; it is dropped with a warning.
"""

from __future__ import annotations

import logging
from typing import Any

from traceexport.sources.celery.message import BadMessage, parse_task, task_name_of
from traceexport.sources.celery.processor import Stats, TraceFileProcessor
from traceexport.sources.celery.settings import CelerySourceSettings

log = logging.getLogger("traceexport.sources.celery")

_KEPT_PROPERTIES = ("correlation_id", "reply_to", "priority", "delivery_mode")


class MessageDispatcher:
    """Decodes a kombu message and sends it to the processor or to the other-tasks queue."""

    def __init__(self, settings: CelerySourceSettings, processor: TraceFileProcessor, stats: Stats, kombu: Any) -> None:
        self.settings = settings
        self.processor = processor
        self.stats = stats
        self.kombu = kombu

    def handle(self, message: Any) -> None:
        """One broker message; raises only the broker's own errors (kombu reconnects on those)."""
        try:
            body = message.decode()
        except Exception as exc:
            self.stats.add("bad_message")
            self._set_aside(message, f"cannot be decoded ({type(exc).__name__}, {message.content_type})")
            return
        name = task_name_of(message.headers, body)
        if name != self.settings.task_name:
            self.stats.add("unknown_task")
            self._set_aside(message, f"is task {name!r}, not {self.settings.task_name!r}")
            return
        try:
            ref = parse_task(message.headers, body)
        except BadMessage as exc:
            self.stats.add("bad_message")
            log.warning("message %s: %s; acknowledged and dropped", message_id(message), exc.reason)
            message.ack()
            return
        self.processor.process(ref, message.ack, message.requeue)

    def _set_aside(self, message: Any, why: str) -> None:
        target = self.settings.other_tasks_queue
        where = f"message {message_id(message)} on queue {self.settings.queue!r} {why}"
        if target is None:
            log.warning("%s; acknowledged and dropped (other_tasks_queue is null)", where)
            message.ack()
            return
        properties = {k: message.properties[k] for k in _KEPT_PROPERTIES if message.properties.get(k) is not None}
        producer = self.kombu.Producer(message.channel)
        producer.publish(
            message.body,
            exchange="",
            routing_key=target,
            headers=message.headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            serializer=None,
            declare=[self.kombu.Queue(target, self.kombu.Exchange(target, type="direct"), routing_key=target)],
            **properties,
        )
        message.ack()
        log.warning("%s; moved unchanged to queue %r (run a Dify worker with -Q %s)", where, target, target)


def message_id(message: Any) -> str:
    """The Celery task id of a message, for log lines."""
    headers = message.headers or {}
    return str(headers.get("id") or message.properties.get("correlation_id") or "?")


__all__ = ["MessageDispatcher", "message_id"]
