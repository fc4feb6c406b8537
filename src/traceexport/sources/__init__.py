"""Inputs of the daemon: ``http`` (ingest endpoint), ``celery`` (Dify's ops_trace queue), ``replay`` (files).

Every source turns its input into :class:`traceexport.records.Record` values and hands them to the
pipeline's ``accept``; a source never maps or sends anything itself.
"""
