"""Produce trace tasks exactly the way Dify's API does, for the Celery source's integration tests.

Dify's ``TraceQueueManager.send_to_celery`` (RECORDS.md §1.4) does, per record::

    file_id = uuid4().hex
    storage.save(f"ops_trace/{app_id}/{file_id}.json", task_data.model_dump_json().encode("utf-8"))
    process_trace_tasks.delay({"file_id": file_id, "app_id": app_id})

where ``process_trace_tasks`` is a ``@shared_task(queue="ops_trace", bind=True, ...)`` in module
``tasks.ops_trace_task`` and the Celery app is built as in Dify's ``extensions/ext_celery.py``: Redis
broker, Celery's defaults for everything Dify does not set (message protocol 2, JSON serializer,
UTF-8), ``task_ignore_result=True``. This producer builds the same app and sends through the same
``delay`` call, so the consumer sees byte-for-byte what Dify would enqueue.

``redis_key_prefix`` plays Dify 1.14's ``REDIS_KEY_PREFIX``: ``ext_celery.get_celery_redis_global_keyprefix``
strips it (``redis_names.normalize_redis_key_prefix``) and, when something is left, sets kombu's transport
option ``global_keyprefix`` to ``"<prefix>:"`` for the broker (and the Redis result backend), so every
key, the queue's included, is written as ``<prefix>:<key>``. Written out here on purpose rather than
imported from traceexport, so the tests compare the source with Dify's rule, not with itself.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TASK_NAME = "tasks.ops_trace_task.process_trace_tasks"
QUEUE = "ops_trace"


def dify_celery_app(broker_url: str, redis_key_prefix: str = "") -> Any:
    """A Celery app configured the way Dify's ``ext_celery.init_app`` configures its own."""
    from celery import Celery

    transport_options: dict[str, Any] = {}
    normalized_prefix = redis_key_prefix.strip()  # Dify's normalize_redis_key_prefix
    if normalized_prefix:
        transport_options["global_keyprefix"] = f"{normalized_prefix}:"
    app = Celery("app", broker=broker_url, backend="redis", set_as_current=False)
    app.conf.update(
        result_backend=broker_url,
        broker_transport_options=transport_options,
        result_backend_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
        task_ignore_result=True,
    )

    # Dify uses @shared_task; shared=False only keeps test apps from sharing one registry. The message
    # sent is the same: the name, queue and options below are what routes and labels it.
    @app.task(name=TASK_NAME, queue=QUEUE, bind=True, max_retries=60, default_retry_delay=5, shared=False)
    def process_trace_tasks(self: Any, file_info: dict[str, Any]) -> None:  # pragma: no cover - never run here
        raise RuntimeError("the producer only sends; Dify's worker (or traceexport) consumes")

    return app


class DifyProducer:
    """Stores TaskData files under ``storage_root`` and enqueues ``process_trace_tasks`` like Dify."""

    def __init__(self, broker_url: str, storage_root: Path, redis_key_prefix: str = "") -> None:
        self.storage_root = storage_root
        self.broker_url = broker_url
        self.keyprefix = f"{redis_key_prefix.strip()}:" if redis_key_prefix.strip() else ""
        self.app = dify_celery_app(broker_url, redis_key_prefix)
        self.task = self.app.tasks[TASK_NAME]

    def store(self, envelope: dict[str, Any] | bytes, app_id: str | None = None, file_id: str | None = None) -> str:
        """Write one TaskData file the way Dify does and return its storage key."""
        data = envelope if isinstance(envelope, bytes) else _dify_json(envelope)
        if app_id is None:
            app_id = json.loads(data)["app_id"]
        file_id = file_id or uuid.uuid4().hex
        key = f"ops_trace/{app_id}/{file_id}.json"
        path = self.storage_root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return key

    def enqueue(self, app_id: str, file_id: str) -> str:
        """``process_trace_tasks.delay({"file_id": ..., "app_id": ...})``; returns the Celery task id."""
        result = self.task.delay({"file_id": file_id, "app_id": app_id})
        return str(result.id)

    def send(self, envelope: dict[str, Any] | bytes) -> str:
        """Store the file, then enqueue its task (Dify's order); returns the storage key."""
        key = self.store(envelope)
        _, app_id, name = key.split("/")
        self.enqueue(app_id, name.removesuffix(".json"))
        return key

    def send_many(self, envelopes: Iterable[bytes], chunk: int = 1000) -> list[tuple[str, str]]:
        """Store every file, then enqueue one task per file: a backlog as Dify leaves it, built fast.

        The first message is sent by Celery's own ``delay()``; the others are that message with a fresh task
        id, argument and delivery tag (what ``delay()`` changes from one call to the next), pushed in
        pipelined chunks. Returns ``(storage key, delivery tag)`` per envelope, in queue order.
        """
        import redis

        keys, folders = [], set()
        for data in envelopes:  # store(), with each app's folder made once
            key = f"ops_trace/{json.loads(data)['app_id']}/{uuid.uuid4().hex}.json"
            path = self.storage_root / key
            if path.parent not in folders:
                path.parent.mkdir(parents=True, exist_ok=True)
                folders.add(path.parent)
            path.write_bytes(data)
            keys.append(key)
        if not keys:
            return []
        client = redis.Redis.from_url(self.broker_url)
        queue = self.keyprefix + QUEUE
        try:
            _, app_id, name = keys[0].split("/")
            self.enqueue(app_id, name.removesuffix(".json"))
            template = json.loads(client.lindex(queue, 0))
            sent = [(keys[0], str(template["properties"]["delivery_tag"]))]
            pipe = client.pipeline(transaction=False)
            for key in keys[1:]:
                message, tag = _clone(template, key)
                pipe.lpush(queue, message)
                sent.append((key, tag))
                if len(pipe) >= chunk:
                    pipe.execute()
            pipe.execute()
        finally:
            client.close()
        return sent

    def close(self) -> None:
        """Release the broker connection pool."""
        self.app.close()


def _clone(template: dict[str, Any], key: str) -> tuple[str, str]:
    """``template`` (a message ``delay()`` sent) calling the task for stored file ``key``; with its delivery tag."""
    _, app_id, name = key.split("/")
    _, kwargs, embed = json.loads(base64.b64decode(template["body"]))
    file_info = {"file_id": name.removesuffix(".json"), "app_id": app_id}
    task_id, tag = str(uuid.uuid4()), str(uuid.uuid4())
    headers = dict(template["headers"], id=task_id, root_id=task_id, argsrepr=repr((file_info,)))
    body = json.dumps([[file_info], kwargs, embed]).encode("utf-8")  # kombu's JSON: default separators
    properties = dict(template["properties"], correlation_id=task_id, delivery_tag=tag)
    message = dict(template, body=base64.b64encode(body).decode("ascii"), headers=headers, properties=properties)
    return json.dumps(message), tag


def _dify_json(envelope: dict[str, Any]) -> bytes:
    """pydantic ``model_dump_json`` style: compact separators, raw UTF-8."""
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
