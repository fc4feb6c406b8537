"""Dify's own database as a source: trace records rebuilt from its rows (``backfill``, ``audit``).

``connect`` opens a read-only session, ``schema.inspect`` checks the tables and tells the record layout,
``rebuild`` turns rows into the envelopes Dify's ``TraceTask`` makes, ``reader.DifyReader`` pages through a
window with keyset pagination, and ``checkpoint`` remembers where a backfill stopped.
"""

from traceexport.difydb.connect import connect, masked_url
from traceexport.difydb.reader import NOT_REBUILDABLE, REBUILDABLE, DifyReader, Page, Position, Window
from traceexport.difydb.schema import Schema, inspect

__all__ = ["NOT_REBUILDABLE", "REBUILDABLE", "DifyReader", "Page", "Position", "Schema", "Window", "connect",
           "inspect", "masked_url"]
