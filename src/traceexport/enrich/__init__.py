"""Workflow node spans from Dify's PostgreSQL: the enricher factory (settings in :mod:`.settings`).

The enricher itself lives in :mod:`traceexport.enrich.postgres` (it needs the ``postgres`` extra) and is
imported only when built, so a config can be checked without psycopg installed.

Usage (the pipeline calls the hook in a sink worker, before mapping)::

    enricher = build_enricher(config.enrich)     # or a dict: {"database_url": ..., "max_wait": "60s"}
    delay = enricher(record)                      # None: mapped now; else try again in `delay` seconds
    enricher.metrics()                            # {"nodes_missing": 0, "retries_scheduled": 3, ...}
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from traceexport.enrich.settings import ENV_DATABASE_URL, EnrichSettings, enrich_settings

if TYPE_CHECKING:
    from traceexport.enrich.postgres import PostgresEnricher


def build_enricher(
    settings: EnrichSettings | Mapping[str, Any] | Any = None,
    *,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> PostgresEnricher:
    """The pipeline's ``prepare`` hook from the ``enrich`` config section (or the whole config).

    Raises ConfigError when no database URL is configured or psycopg is not installed.
    """
    resolved = enrich_settings(settings, os.environ if environ is None else environ)
    from traceexport.enrich.postgres import PostgresEnricher  # needs psycopg: imported on demand

    return PostgresEnricher(resolved, clock=clock, now=now)


__all__ = ["ENV_DATABASE_URL", "EnrichSettings", "build_enricher", "enrich_settings"]
