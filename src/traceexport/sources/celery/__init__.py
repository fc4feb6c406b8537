"""Dify's Celery ``ops_trace`` queue as a source: zero changes to Dify's code.

Dify's API stores each trace record as ``ops_trace/{app_id}/{file_id}.json`` in its storage and
enqueues the Celery task ``tasks.ops_trace_task.process_trace_tasks`` on queue ``ops_trace``. With
``ops_trace`` removed from Dify's worker queues, :class:`CelerySource` consumes those messages
instead: it reads the file, hands the record to the pipeline, acknowledges, and deletes the file.
"""

from traceexport.sources.celery.broker_url import mask_url
from traceexport.sources.celery.consumer import CelerySource
from traceexport.sources.celery.message import BadMessage, TaskRef, parse_task
from traceexport.sources.celery.processor import Stats, TraceFileProcessor, parse_file
from traceexport.sources.celery.settings import (
    DIFY_PREFIX_ENV,
    DIFY_QUEUE,
    DIFY_TASK_NAME,
    CelerySourceSettings,
    dify_global_keyprefix,
)

__all__ = [
    "DIFY_PREFIX_ENV",
    "DIFY_QUEUE",
    "DIFY_TASK_NAME",
    "BadMessage",
    "CelerySource",
    "CelerySourceSettings",
    "Stats",
    "TaskRef",
    "TraceFileProcessor",
    "dify_global_keyprefix",
    "mask_url",
    "parse_file",
    "parse_task",
]
