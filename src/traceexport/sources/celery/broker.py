"""One consumer thread's connection to Dify's broker, and where the queue and its bookkeeping live in Redis.

kombu opens the connection, so every broker URL and transport option kombu's Redis transport takes keeps working
(``redis://``, ``rediss://``, ``sentinel://`` with ``master_name``, socket options, ``global_keyprefix``); its
channel publishes the foreign tasks set aside. Taking and acknowledging go through :class:`UnackedQueue` on a plain
redis-py client sharing the channel's connection pool, with the key names the channel resolved (key prefix
included), so the bookkeeping is the very one kombu would keep.
"""

from __future__ import annotations

import contextlib
from typing import Any

from traceexport.sources.celery.settings import CelerySourceSettings
from traceexport.sources.celery.unacked import UnackedKeys, UnackedQueue


class BrokerSession:
    """A kombu connection and channel, and the batched queue on the same Redis; ``close()`` releases them."""

    def __init__(self, kombu: Any, settings: CelerySourceSettings) -> None:
        import redis

        self.connection = kombu.Connection(
            settings.broker_url.get_secret_value(), transport_options=settings.kombu_transport_options()
        )
        try:
            self.connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
            self.channel = self.connection.channel()
            self.client = redis.Redis(connection_pool=self.channel.pool)
            self.keys = keys_of(self.channel, settings.queue)
            self.queue = UnackedQueue(self.client, self.keys)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the connection (the messages in flight stay recorded in Redis)."""
        with contextlib.suppress(Exception):  # closing a broken connection: nothing more to do
            self.connection.release()


def connection_errors(kombu: Any, settings: CelerySourceSettings) -> tuple[type[BaseException], ...]:
    """The exceptions that mean the broker is unreachable (retried with backoff), as kombu's transport lists them."""
    connection = kombu.Connection(settings.broker_url.get_secret_value(),
                                  transport_options=settings.kombu_transport_options())
    try:
        return (*connection.connection_errors, *connection.recoverable_connection_errors, OSError)
    finally:
        connection.release()


def keys_of(channel: Any, queue: str) -> UnackedKeys:
    """The Redis keys of ``queue`` and of the in-flight bookkeeping, as kombu's Redis ``channel`` names them."""
    prefix = channel.global_keyprefix or ""
    return UnackedKeys(
        queue=prefix + queue,
        unacked=prefix + channel.unacked_key,
        index=prefix + channel.unacked_index_key,
        mutex=prefix + channel.unacked_mutex_key,
        mutex_expire=int(channel.unacked_mutex_expire),
        visibility_timeout=float(channel.visibility_timeout),
        priority_steps=tuple(int(step) for step in channel.priority_steps),
        sep=str(channel.sep),
    )


__all__ = ["BrokerSession", "connection_errors", "keys_of"]
