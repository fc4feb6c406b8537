"""The daemon's web console: a page at ``/ui/`` (status, dead letters, mapping playground) over a JSON API
at ``/api/`` (docs/console-api.md), on a listener of its own.

``build_console`` wires it to a running pipeline: ``server.py`` HTTP, auth and headers; ``api.py`` what
each call answers; ``history.py`` the last hour sampled in memory; ``playground.py`` and
``provenance.py`` a record through a mapping, with each field's file and line; ``static/`` the page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from traceexport.config import ConsoleConfig, split_host_port
from traceexport.console.api import ConsoleApi
from traceexport.console.history import History
from traceexport.console.playground import Playground
from traceexport.console.server import ConsoleServer, ConsoleSettings


def build_console(config: ConsoleConfig, pipeline: Any, sink_types: Mapping[str, str], *,
                  ready: Callable[[], str | None] = lambda: None) -> ConsoleServer:
    """The console for ``pipeline``, bound to ``config.listen`` (OSError when it cannot be), not yet serving."""
    host, port = split_host_port(config.listen)
    settings = ConsoleSettings(host=host, port=port, token=config.token.get_secret_value() if config.token else None,
                               max_body_bytes=int(config.max_body_bytes))
    history = History(lambda: pipeline.metrics(with_histograms=True))
    api = ConsoleApi(pipeline, sink_types, history=history, playground=Playground(settings.max_body_bytes),
                     ready=ready)
    return ConsoleServer(settings, api)


__all__ = ["ConsoleServer", "build_console"]
