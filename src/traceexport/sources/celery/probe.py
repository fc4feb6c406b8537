"""The empty-queue hint: when nothing has arrived for a while, look for the queue under another key prefix.

With ``REDIS_KEY_PREFIX`` set, Dify (>= 1.14) writes its Celery queue as ``<prefix>:ops_trace``; a
consumer with another prefix (or none) waits on a key nobody writes and sees an empty queue. Once, after
``after`` seconds without a single message, :func:`find_other_queue_keys` scans the broker's database for
keys ending in the queue name (a bounded ``SCAN``, then ``TYPE`` on the few matches) and the source logs
one warning naming the key that holds messages and the setting that would reach it. Best effort: a
broker URL redis-py cannot open (sentinel, kombu's socket form) or any Redis error only skips the hint.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from traceexport.redaction import redact
from traceexport.sources.celery.settings import CelerySourceSettings

log = logging.getLogger("traceexport.sources.celery")

SCAN_COUNT = 1000  # keys per SCAN call
SCAN_CALLS = 100  # at most this many SCAN calls (about 100k keys): the hint stays cheap on a big Redis
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def find_other_queue_keys(client: Any, queue: str, own_key: str) -> dict[str, int]:
    """Redis lists whose key ends in ``queue``, other than ``own_key``, with their lengths (bounded scan)."""
    pattern = "*" + _GLOB_SPECIAL.sub(r"\\\1", queue)
    found: dict[str, int] = {}
    cursor = 0
    for _ in range(SCAN_CALLS):
        cursor, keys = client.scan(cursor=cursor, match=pattern, count=SCAN_COUNT)
        for raw in keys:
            key = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            if key != own_key and _text(client.type(raw)) == "list":
                found[key] = int(client.llen(raw))
        if not cursor:
            break
    return {key: length for key, length in found.items() if length}


def hint_for(settings: CelerySourceSettings, others: dict[str, int]) -> str | None:
    """The warning for keys that hold the queue under another prefix; None when there are none."""
    if not others:
        return None
    key, length = max(others.items(), key=lambda item: item[1])
    prefix = key[: len(key) - len(settings.queue)]
    if not prefix:
        fix = "it has no key prefix (REDIS_KEY_PREFIX empty, or a Dify without it): clear the key prefix"
    elif prefix.endswith(":") and prefix[:-1].strip() == prefix[:-1] and prefix[:-1]:
        fix = f"its REDIS_KEY_PREFIX is probably {prefix[:-1]!r}: set redis_key_prefix to that"
    else:
        fix = f"set transport_options.global_keyprefix: {prefix!r}"
    return (
        f"no message on queue {settings.queue!r} (Redis key {settings.queue_key()!r}) so far, but Redis key "
        f"{key!r} holds {length} message(s); if that is your Dify's queue, {fix} in sources.celery"
    )


class EmptyQueueProbe:
    """A thread that waits ``after`` seconds, then, if ``idle()`` still holds, logs the hint once."""

    def __init__(self, settings: CelerySourceSettings, after: float, idle: Any, stopping: threading.Event) -> None:
        self.settings = settings
        self.after = after
        self.idle = idle
        self.stopping = stopping
        self.thread = threading.Thread(target=self._run, name="celery-source-probe", daemon=True)

    def start(self) -> None:
        """Start the waiting thread."""
        self.thread.start()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the thread (it stops at once once ``stopping`` is set)."""
        self.thread.join(timeout)

    def _run(self) -> None:
        if self.stopping.wait(self.after) or not self.idle():
            return
        try:
            others = self._scan()
        except Exception as exc:  # best effort: the hint must never disturb the source
            log.debug("empty-queue hint skipped: %s", redact(f"{type(exc).__name__}: {exc}"))
            return
        message = hint_for(self.settings, others)
        if message is not None and not self.stopping.is_set():
            log.warning("%s", message)

    def _scan(self) -> dict[str, int]:
        import redis

        url = self.settings.broker_url.get_secret_value()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return {}
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            return find_other_queue_keys(client, self.settings.queue, self.settings.queue_key())
        finally:
            client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["EmptyQueueProbe", "find_other_queue_keys", "hint_for"]
