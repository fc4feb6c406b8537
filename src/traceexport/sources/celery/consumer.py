"""The kombu consumer threads bound to Dify's ``ops_trace`` queue, and the CelerySource lifecycle.

Each consumer thread owns one broker connection (kombu connections are not thread-safe) and takes
at most ``prefetch`` messages at a time. Messages are acknowledged by hand, only after the record
is durable (late ack); a consumer that dies keeps its messages unacknowledged and the Redis
transport hands them out again after ``visibility_timeout``. Consumers share nothing, so several
sidecars can consume one queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from traceexport.errors import ConfigError
from traceexport.sinks.http import redact
from traceexport.sources.celery.dispatch import MessageDispatcher
from traceexport.sources.celery.probe import EmptyQueueProbe
from traceexport.sources.celery.processor import Accept, Stats, TraceFileProcessor
from traceexport.sources.celery.settings import CelerySourceSettings
from traceexport.sources.storage import Storage, open_storage

log = logging.getLogger("traceexport.sources.celery")

EMPTY_QUEUE_HINT_AFTER = 120.0  # seconds without any message before looking for the queue under another prefix


def _kombu() -> Any:
    try:
        import kombu
        import kombu.mixins
    except ImportError as exc:
        raise ConfigError(
            ["sources.celery needs celery and redis: install traceexport[celery]"], title="missing dependency"
        ) from exc
    return kombu


class _Stop(Exception):
    """Raised inside kombu's reconnect loop to abandon it when the source is stopping."""


def _consumer_class(kombu: Any) -> type:
    class _Consumer(kombu.mixins.ConsumerMixin):  # type: ignore[misc]
        """One thread's consumer: decode, check the task name, hand over to the processor."""

        def __init__(self, source: CelerySource, name: str) -> None:
            s = source.settings
            self.source = source
            self.name = name
            self.connection = kombu.Connection(
                s.broker_url.get_secret_value(), transport_options=s.kombu_transport_options()
            )
            exchange = kombu.Exchange(s.queue, type="direct")
            self.queue = kombu.Queue(s.queue, exchange, routing_key=s.queue)
            self._lost = False

        def get_consumers(self, consumer_cls: Any, channel: Any) -> list[Any]:
            return [
                consumer_cls(
                    queues=[self.queue],
                    on_message=self.on_message,
                    accept=["json"],
                    prefetch_count=self.source.settings.prefetch,
                    no_ack=False,
                )
            ]

        @contextmanager
        def establish_connection(self) -> Iterator[Any]:
            """Connect, retrying with backoff (1 s doubling to 30 s) that stop() interrupts at once."""
            with self.create_connection() as conn:
                delay = 1.0
                while True:
                    try:
                        conn.ensure_connection(max_retries=0, reraise_as_library_errors=False)
                        break
                    except (*conn.recoverable_connection_errors, *conn.connection_errors, OSError) as exc:
                        self.on_connection_error(exc, delay)
                        if self.source.stopping.wait(delay):
                            raise _Stop() from exc
                        delay = min(delay * 2, 30.0)
                yield conn

        def on_connection_error(self, exc: Exception, interval: float) -> None:
            if self.source.stopping.is_set():
                raise _Stop() from exc
            if not self._lost:
                log.warning(
                    "%s: broker %s unreachable (%s); retrying with backoff",
                    self.name,
                    self.source.settings.masked_broker_url(),
                    redact(str(exc)),
                )
            self._lost = True

        def on_connection_revived(self) -> None:
            if self._lost:
                log.info("%s: broker %s reachable again", self.name, self.source.settings.masked_broker_url())
            self._lost = False

        def on_message(self, message: Any) -> None:
            self.source.handle(message)

    return _Consumer


class CelerySource:
    """Consumes Dify's ``ops_trace`` Celery queue and hands each stored record to ``accept``.

    ``accept`` is the pipeline's ``Pipeline.accept``: durable when it returns, SpoolFullError under
    back-pressure. ``start()`` returns at once; ``stop(timeout)`` finishes the message in hand (or
    puts it back on the queue) and closes the broker connections. If no message at all has arrived
    ``empty_queue_hint_after`` seconds after start (None: never look), the source looks once for the
    queue under another Redis key prefix and logs a hint when it finds it (``probe.py``).
    """

    def __init__(
        self,
        settings: CelerySourceSettings,
        accept: Accept,
        *,
        storage: Storage | None = None,
        empty_queue_hint_after: float | None = EMPTY_QUEUE_HINT_AFTER,
    ) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.stats = Stats()
        self._kombu = _kombu()
        self.storage = storage if storage is not None else open_storage(settings.storage)
        self.processor = TraceFileProcessor(
            self.storage,
            accept,
            failed_prefix=settings.failed_prefix,
            retry_delay=settings.retry_delay,
            stopping=self.stopping,
            stats=self.stats,
        )
        self.dispatcher = MessageDispatcher(settings, self.processor, self.stats, self._kombu)
        self.empty_queue_hint_after = empty_queue_hint_after
        self._threads: list[threading.Thread] = []
        self._consumers: list[Any] = []
        self._probe: EmptyQueueProbe | None = None

    def start(self) -> None:
        """Start ``concurrency`` consumer threads; idempotent."""
        if self._threads:
            return
        self.stopping.clear()
        consumer_cls = _consumer_class(self._kombu)
        for index in range(self.settings.concurrency):
            consumer = consumer_cls(self, f"celery-source-{index}")
            thread = threading.Thread(target=self._run, args=(consumer,), name=consumer.name, daemon=True)
            self._consumers.append(consumer)
            self._threads.append(thread)
            thread.start()
        if self.empty_queue_hint_after is not None:
            self._probe = EmptyQueueProbe(
                self.settings, self.empty_queue_hint_after, self._nothing_arrived, self.stopping
            )
            self._probe.start()
        prefix = self.settings.describe_prefix()
        log.info(
            "consuming queue %r%s on %s (task %s, storage %s, %d consumer(s), prefetch %d)",
            self.settings.queue,
            f" (Redis key {self.settings.queue_key()!r}, {prefix})" if prefix else "",
            self.settings.masked_broker_url(),
            self.settings.task_name,
            self.storage.describe(),
            self.settings.concurrency,
            self.settings.prefetch,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop consuming and wait up to ``timeout`` seconds in all; idempotent."""
        self.stopping.set()
        for consumer in self._consumers:
            consumer.should_stop = True
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        if self._probe is not None:
            self._probe.join(max(deadline - time.monotonic(), 0.0))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning(
                "celery source: %s still busy after %.0f s; messages in hand stay unacked",
                alive,
                timeout,
            )
        self._threads, self._consumers, self._probe = [], [], None

    def _run(self, consumer: Any) -> None:
        """A consumer thread: kombu's reconnecting loop, restarted if anything unexpected escapes it."""
        while not self.stopping.is_set():
            try:
                consumer.run()
            except _Stop:
                return
            except Exception as exc:  # keep consuming whatever went wrong; say what it was
                reason = redact(f"{type(exc).__name__}: {exc}")
                log.error("%s: consumer failed (%s); restarting", consumer.name, reason)
                self.stopping.wait(self.settings.retry_delay or 1.0)

    def handle(self, message: Any) -> None:
        """One broker message (called by the consumer threads)."""
        self.dispatcher.handle(message)

    def _nothing_arrived(self) -> bool:
        """True while no message of any kind has reached this source."""
        return not any(self.stats.snapshot().values())


__all__ = ["CelerySource"]
