"""Route a batch of broker messages: Dify's trace tasks go to the processor, anything else is set aside.

A message on the ``ops_trace`` queue that is not ``process_trace_tasks`` (another Dify version's task,
or a body this source cannot decode) is not ours to judge: it is moved, unchanged (same body, headers
and properties, as kombu's producer would publish it), to ``other_tasks_queue`` (default ``ops_trace_other``)
where a Dify worker started with ``-Q ops_trace_other`` runs it as usual. Moving it and acknowledging it here are
one atomic step in Redis (:meth:`UnackedQueue.move`): a broker lost in the middle never leaves it moved but still
in flight, to come back after ``visibility_timeout`` and be moved a second time. With ``other_tasks_queue: null``
it is acknowledged and dropped with a warning. A ``process_trace_tasks`` message whose argument is
malformed cannot be run by anyone; it is dropped with a warning.

A queue entry that is not even a kombu message (not JSON, not an object, a body that is not base64) is never
moved to a worker's queue: kombu raises on it inside the worker's event loop and Celery's worker exits
("Unrecoverable error"). It is kept as it is under ``failed_prefix`` + ``messages/`` in Dify's storage, for a
human, with one warning, then acknowledged; when storage refuses it, it stays in flight and comes back after
``visibility_timeout``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from traceexport.redaction import describe_error
from traceexport.sources.celery.broker import BrokerSession, keys_of
from traceexport.sources.celery.message import BadMessage, TaskRef, parse_task, plain_json_message, task_name_of
from traceexport.sources.celery.processor import Stats, TraceFileProcessor
from traceexport.sources.celery.settings import CelerySourceSettings
from traceexport.sources.celery.unacked import MAX_PRIORITY, MIN_PRIORITY, Taken
from traceexport.sources.storage import StorageError

log = logging.getLogger("traceexport.sources.celery")

MAX_REASON = 160  # characters of kombu's complaint kept in a log line
_KEPT_PROPERTIES = ("correlation_id", "reply_to", "priority", "delivery_mode")


class MessageDispatcher:
    """Decodes taken messages and sends them to the processor or to the other-tasks queue."""

    def __init__(self, settings: CelerySourceSettings, processor: TraceFileProcessor, stats: Stats, kombu: Any) -> None:
        self.settings = settings
        self.processor = processor
        self.stats = stats
        self.kombu = kombu
        self.accept_content = kombu.serialization.prepare_accept_content(["json"])

    def handle(self, taken: Sequence[Taken], broker: BrokerSession) -> None:
        """One batch; raises only the broker's own errors (the consumer reconnects on those)."""
        tasks: list[tuple[TaskRef, Taken]] = []
        for item in taken:
            ref = self._task_of(item, broker)
            if ref is not None:
                tasks.append((ref, item))
        if tasks:
            self.processor.process_batch(tasks, broker.queue.ack, broker.queue.requeue, content=_raw)

    def _task_of(self, item: Taken, broker: BrokerSession) -> TaskRef | None:
        """The TaskRef of a Dify trace task; anything else is set aside or dropped (and acknowledged) here."""
        plain = plain_json_message(item.raw)
        if plain is not None and task_name_of(*plain) == self.settings.task_name:
            try:
                return parse_task(*plain)
            except BadMessage:
                pass  # kombu's decoding below says why, and the message is dropped there
        try:
            message = broker.channel.Message(json.loads(item.raw), channel=broker.channel,
                                             accept=self.accept_content)
        except Exception as exc:
            self.stats.add("bad_message")
            self._set_aside_raw(item, broker, f"is not a kombu message ({_why(exc)})")
            return None
        try:
            body = message.decode()
        except Exception as exc:
            self.stats.add("bad_message")
            self._set_aside(item, message, broker, f"cannot be decoded ({_why(exc)}; {message.content_type})")
            return None
        name = task_name_of(message.headers, body)
        if name != self.settings.task_name:
            self.stats.add("unknown_task")
            self._set_aside(item, message, broker, f"is task {name!r}, not {self.settings.task_name!r}")
            return None
        try:
            return parse_task(message.headers, body)
        except BadMessage as exc:
            self.stats.add("bad_message")
            log.warning("message %s: %s; acknowledged and dropped", message_id(message), exc.reason)
            broker.queue.ack([item])
            return None

    def _set_aside(self, item: Taken, message: Any, broker: BrokerSession, why: str) -> None:
        target = self.settings.other_tasks_queue
        where = f"message {message_id(message)} on queue {self.settings.queue!r} {why}"
        if target is None:
            log.warning("%s; acknowledged and dropped (other_tasks_queue is null)", where)
            broker.queue.ack([item])
            return
        self.kombu.Queue(target, self.kombu.Exchange(target, type="direct"), routing_key=target)(
            broker.channel).declare()
        text, priority = self._republished(message, broker.channel, target)
        if broker.queue.move(item, keys_of(broker.channel, target).list_for(priority), text):
            log.warning("%s; moved unchanged to queue %r (run a Dify worker with -Q %s)", where, target, target)

    def _republished(self, message: Any, channel: Any, target: str) -> tuple[bytes, int]:
        """``message`` as kombu's ``Producer.publish`` to queue ``target`` puts it in Redis (a fresh delivery tag,
        the delivery info naming ``target``), and its priority."""
        properties = {k: message.properties[k] for k in _KEPT_PROPERTIES if message.properties.get(k) is not None}
        priority = properties.pop("priority", 0)
        properties["delivery_mode"] = self.kombu.entity.maybe_delivery_mode(properties.get("delivery_mode"))
        body = message.body
        encoding = message.content_encoding or ("binary" if isinstance(body, bytes) else "utf-8")
        if isinstance(body, str):
            body = body.encode(encoding)
        prepared = channel.prepare_message(body, priority, message.content_type, encoding, message.headers,
                                           properties)
        prepared["body"], body_encoding = channel.encode_body(prepared["body"], channel.body_encoding)
        prepared["properties"].update(body_encoding=body_encoding, delivery_tag=str(uuid.uuid4()))
        prepared["properties"]["delivery_info"].update(exchange="", routing_key=target)
        try:
            level = max(min(int(prepared["properties"]["priority"]), MAX_PRIORITY), MIN_PRIORITY)
        except (TypeError, ValueError):
            level = MIN_PRIORITY
        return json.dumps(prepared).encode("utf-8"), level

    def _set_aside_raw(self, item: Taken, broker: BrokerSession, why: str) -> None:
        """A queue entry that is not even a kombu message: kept in storage as it is, then acknowledged.

        Not moved to ``other_tasks_queue``: no Celery worker can read it, and one that tries exits."""
        where = f"an entry of {len(item.raw)} bytes on queue {self.settings.queue!r} {why}"
        # Named by its content: kept again after a lost acknowledgement, it is the same file, not a second one.
        kept = f"{self.settings.failed_prefix}messages/{hashlib.sha256(item.raw).hexdigest()[:32]}.msg"
        try:
            self.processor.storage.save(kept, item.raw)
        except StorageError as exc:
            log.warning("%s; cannot keep it (%s): left in flight, back on the queue after visibility_timeout",
                        where, exc)
            return
        broker.queue.ack([item])
        log.warning("%s (no Celery worker can run it); kept as %s and acknowledged", where, kept)


def _raw(item: Taken) -> bytes:
    """A taken message as the queue held it."""
    return item.raw


def _why(exc: Exception) -> str:
    """What kombu said about an entry, as one short line that never quotes its bytes."""
    text = f"{type(exc).__name__}: {describe_error(exc)}"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def message_id(message: Any) -> str:
    """The Celery task id of a message, for log lines."""
    headers = message.headers or {}
    return str(headers.get("id") or message.properties.get("correlation_id") or "?")


__all__ = ["MessageDispatcher", "message_id"]
