"""Read one Celery task message as Dify sends it: which task, and which stored file it points at.

Dify calls ``process_trace_tasks.delay({"file_id": ..., "app_id": ...})``. With Celery's default
message protocol 2 the task name and id travel in the headers and the JSON body is
``[args, kwargs, embed]``; protocol 1 (very old Celery) put everything in a body dict. Both are read.
:func:`plain_json_message` reads the message as kombu's Redis transport stores it, for the usual case (a JSON
body, base64 or not, uncompressed); anything else is left to kombu. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from traceexport import _json
from traceexport.sources.celery.settings import DIFY_FILE_PREFIX

_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")


class BadMessage(Exception):
    """The message is not a task message this source can read; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class TaskRef:
    """One ``process_trace_tasks`` call: the Celery task id and the file it names."""

    task_id: str
    task_name: str
    app_id: str
    file_id: str

    @property
    def storage_key(self) -> str:
        """Where Dify stored the TaskData envelope: ``ops_trace/{app_id}/{file_id}.json``."""
        return f"{DIFY_FILE_PREFIX}{self.app_id}/{self.file_id}.json"

    def describe(self) -> str:
        """``task <id> (ops_trace/<app>/<file>.json)`` for log lines."""
        return f"task {self.task_id} ({self.storage_key})"


def plain_json_message(raw: bytes) -> tuple[dict[str, Any], Any] | None:
    """Headers and decoded body of a message as kombu's Redis transport stores it, when its body is plain JSON.

    That is what Celery sends by default (``application/json``, UTF-8, base64 body encoding, no compression).
    None for anything else (another serializer or encoding, compression, not a kombu message): kombu decodes
    those. The body is read as JSON without kombu's custom types, which a task's plain ids never use.
    """
    try:
        payload = _json.loads(raw)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    headers, properties, body = payload.get("headers") or {}, payload.get("properties"), payload.get("body")
    if not isinstance(headers, dict) or not isinstance(properties, dict) or not isinstance(body, str):
        return None
    if headers.get("compression") or payload.get("content-type") != "application/json":
        return None
    if str(payload.get("content-encoding") or "utf-8").lower() not in ("utf-8", "utf8"):
        return None
    encoding = properties.get("body_encoding")
    try:
        if encoding == "base64":
            return headers, _json.loads(base64.b64decode(body, validate=True))
        if encoding is None:
            return headers, _json.loads(body)
    except (ValueError, binascii.Error):
        return None
    return None


def task_name_of(headers: Mapping[str, Any] | None, body: Any) -> str | None:
    """The task name of a protocol 2 (headers) or protocol 1 (body) message; None if it has none."""
    name = (headers or {}).get("task")
    if name is None and isinstance(body, dict):
        name = body.get("task")
    return name if isinstance(name, str) else None


def parse_task(headers: Mapping[str, Any] | None, body: Any) -> TaskRef:
    """The TaskRef of a decoded Dify ``process_trace_tasks`` message; BadMessage when it is not one."""
    headers = headers or {}
    name = task_name_of(headers, body)
    if name is None:
        raise BadMessage("not a Celery task message (no task name in headers or body)")
    if isinstance(body, dict):  # protocol 1
        task_id, args, kwargs = body.get("id"), body.get("args"), body.get("kwargs")
    elif isinstance(body, list | tuple) and len(body) >= 2:  # protocol 2: [args, kwargs, embed]
        task_id, args, kwargs = headers.get("id"), body[0], body[1]
    else:
        raise BadMessage(f"task {name}: body is neither [args, kwargs, embed] nor a protocol 1 dict")
    file_info = _file_info(args, kwargs)
    if file_info is None:
        raise BadMessage(f"task {name}: expected one argument {{'file_id': ..., 'app_id': ...}}")
    app_id, file_id = file_info.get("app_id"), file_info.get("file_id")
    for label, value in (("app_id", app_id), ("file_id", file_id)):
        if not isinstance(value, str) or not _ID.match(value):
            raise BadMessage(f"task {name}: {label} {value!r} is not a plain id")
    return TaskRef(task_id=str(task_id or "?"), task_name=name, app_id=str(app_id), file_id=str(file_id))


def _file_info(args: Any, kwargs: Any) -> dict[str, Any] | None:
    if isinstance(args, list | tuple) and len(args) == 1 and isinstance(args[0], dict):
        return args[0]
    if isinstance(kwargs, dict) and isinstance(kwargs.get("file_info"), dict):
        return kwargs["file_info"]  # type: ignore[no-any-return]
    return None


__all__ = ["BadMessage", "TaskRef", "parse_task", "plain_json_message", "task_name_of"]
