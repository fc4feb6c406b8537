"""Dify trace records: tolerant parsing of every input form, normalised once."""

from traceexport.records.parse import (
    Record,
    RecordHead,
    head_from_obj,
    head_from_trace_info,
    infer_type,
    iter_json_values,
    parse_records,
    record_from_obj,
    record_from_trace_info,
)
from traceexport.records.stream import stream_records
from traceexport.records.types import COMMUNITY_TYPES, RECORD_TYPES, canonical_type, dify_class_name

__all__ = [
    "COMMUNITY_TYPES",
    "RECORD_TYPES",
    "Record",
    "RecordHead",
    "canonical_type",
    "dify_class_name",
    "head_from_obj",
    "head_from_trace_info",
    "infer_type",
    "iter_json_values",
    "parse_records",
    "record_from_obj",
    "record_from_trace_info",
    "stream_records",
]
