"""Which Dify app a TraceInfo handed to the provider belongs to.

Dify's worker task knows it: it runs ``process_trace_tasks({"file_id": ..., "app_id": ...})`` and writes the
same ``app_id`` into the TaskData file. The TraceInfo itself names it only for some types (conversation
naming carries none), so the running Celery task's argument is read first, then the record's own fields.
"""

from __future__ import annotations

import sys
from typing import Any

DIFY_TASK = "tasks.ops_trace_task.process_trace_tasks"


def app_id_of(trace_info: Any) -> str | None:
    """The app id: the running Dify trace task's, else ``metadata.app_id``, else its message's ``app_id``."""
    from_task = _task_app_id()
    if from_task:
        return from_task
    metadata = getattr(trace_info, "metadata", None)
    if isinstance(metadata, dict) and isinstance(metadata.get("app_id"), str) and metadata["app_id"]:
        return str(metadata["app_id"])
    message = getattr(trace_info, "message_data", None)
    value = message.get("app_id") if isinstance(message, dict) else getattr(message, "app_id", None)
    return str(value) if value else None


def _task_app_id() -> str | None:
    """``file_info["app_id"]`` of Dify's trace task running in this thread, if Celery is loaded and one runs."""
    if "celery" not in sys.modules:  # never import Celery into a process that does not use it
        return None
    try:
        from celery import current_task

        request = current_task.request if current_task is not None and current_task.name == DIFY_TASK else None
        args = getattr(request, "args", None) or ()
        file_info = args[0] if args else None
        value = file_info.get("app_id") if isinstance(file_info, dict) else None
    except Exception:  # an unexpected Celery shape: fall back to the record's own fields
        return None
    return value if isinstance(value, str) and value else None


__all__ = ["app_id_of"]
