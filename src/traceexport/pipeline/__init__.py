"""Durable delivery: spool (SQLite WAL), per-sink batching, retry with backoff, dead letter, fan-out."""

from traceexport.pipeline.pipeline import Pipeline
from traceexport.pipeline.settings import Mapping, PipelineSettings, RetryPolicy, Route
from traceexport.pipeline.spool import Spool, spool_dir_default

__all__ = ["Mapping", "Pipeline", "PipelineSettings", "RetryPolicy", "Route", "Spool", "spool_dir_default"]
