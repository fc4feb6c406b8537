"""Routes for the hook: the sinks of a config file, of ``TRACEEXPORT_TO``, or the single forward sink.

Every sink is wrapped so its HTTP calls run with OpenTelemetry instrumentation suppressed: Dify
instruments httpx/requests when its own OTel export is on, and the hook must not trace its own exports.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager

from traceexport.dify.config import HookSettings
from traceexport.dify.counters import RATE_LOG
from traceexport.pipeline import PipelineSettings, RetryPolicy, Route
from traceexport.records import Record
from traceexport.sinks import create_sink
from traceexport.sinks.base import Payload, WrappedSink

# Tests (and embedders) may replace how routes are built; None means the built-in wiring below.
RouteFactory = Callable[[HookSettings, Mapping[str, str]], list[Route]]
ROUTE_FACTORY: RouteFactory | None = None

# Forward mode's one hop, to the deployment's own sidecar: a record waits for it however long it is down (the
# spool's size bounds the wait) instead of going to a dead letter after 20 tries, about half an hour, inside
# Dify's container. At most a minute between tries, so a sidecar back up gets the backlog within a minute.
SIDECAR_RETRY = RetryPolicy(max_attempts=2**62, max_age=math.inf, max_backoff=60.0)


class EnvelopeMapping:
    """The identity mapping of the forward sink: a record becomes its TaskData envelope."""

    backend = "forward"
    fingerprint = None  # nothing to spare a delivery process: the envelope is the payload

    def map(self, record: Record, /) -> list[Payload]:
        """One ``envelope`` payload carrying the record as Dify wrote it."""
        return [Payload(kind="envelope", body=record.envelope, key=record.key)]


@contextlib.contextmanager
def suppressed_instrumentation() -> Iterator[None]:
    """Run the block with OpenTelemetry instrumentation (including HTTP client spans) switched off."""
    try:
        from opentelemetry.instrumentation.utils import suppress_http_instrumentation, suppress_instrumentation
    except ImportError:  # opentelemetry-instrumentation absent: set the context keys through the API
        token = _attach_suppression()
        try:
            yield
        finally:
            _detach(token)
        return
    with suppress_instrumentation(), suppress_http_instrumentation():
        yield


def _attach_suppression() -> object | None:
    try:
        from opentelemetry import context
    except ImportError:
        return None
    ctx = context.get_current()
    for name in ("_SUPPRESS_INSTRUMENTATION_KEY", "_SUPPRESS_HTTP_INSTRUMENTATION_KEY"):
        key = getattr(context, name, None)
        if key is not None:
            ctx = context.set_value(key, True, ctx)
    return context.attach(ctx)


def _detach(token: object | None) -> None:
    if token is None:
        return
    from opentelemetry import context

    context.detach(token)  # type: ignore[arg-type]


class QuietSink(WrappedSink):
    """A sink whose exports run with OpenTelemetry instrumentation suppressed; otherwise the same sink."""

    def around(self) -> AbstractContextManager[object]:
        """The export is invisible to Dify's instrumentation."""
        return suppressed_instrumentation()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Shut the wrapped sink down, invisibly too."""
        with suppressed_instrumentation():
            super().shutdown(timeout)


def build_plan(settings: HookSettings, env: Mapping[str, str]) -> tuple[list[Route], PipelineSettings]:
    """Routes and pipeline settings for ``settings``; raises ConfigError when a sink or the config is invalid."""
    if ROUTE_FACTORY is not None:
        routes, pipeline_settings = ROUTE_FACTORY(settings, env), PipelineSettings()
    elif settings.mode == "forward":
        options = {"url": settings.endpoint, "token": settings.token}
        routes = [Route(create_sink("forward", "forward", options, env), EnvelopeMapping())]
        # The sidecar it forwards to keeps the delivery ledger the audit reads; one here would cost Dify's
        # process a hash per record for hand-overs nobody audits.
        pipeline_settings = PipelineSettings(ledger_retention=0, retry=SIDECAR_RETRY)
    else:
        routes, pipeline_settings = _configured_routes(settings, env)
    quiet = [Route(QuietSink(r.sink), r.mapping, r.record_types, r.app_ids, r.sample) for r in routes]
    return quiet, pipeline_settings


def _configured_routes(settings: HookSettings, env: Mapping[str, str]) -> tuple[list[Route], PipelineSettings]:
    """The sinks of the config file and/or ``sinks`` list, resolved exactly as ``traceexport serve`` does."""
    from traceexport.config import build_routes
    from traceexport.config.resolve import Overrides, resolve_config

    if settings.stored_config_file:  # saved by an earlier traceexport: the server's settings apply instead
        RATE_LOG("dify.hook.config_file_ignored", logging.WARNING, config_file=settings.stored_config_file,
                 hint="a config file is set on the server only: TRACEEXPORT_CONFIG")
    flags = Overrides(config=settings.config_file, to=",".join(settings.sinks) or None)
    config = resolve_config(flags, env)
    retry = RetryPolicy(max_attempts=config.retry.max_attempts, max_age=config.retry.max_age,
                        initial_backoff=config.retry.initial_backoff, max_backoff=config.retry.max_backoff)
    pipeline_settings = PipelineSettings(max_bytes=int(config.spool.max_bytes), on_full=config.spool.on_full,
                                         retry=retry, ledger_retention=config.ledger.retention)
    return build_routes(config, env), pipeline_settings


__all__ = ["ROUTE_FACTORY", "SIDECAR_RETRY", "EnvelopeMapping", "QuietSink", "build_plan", "suppressed_instrumentation"]
