"""Imported from ``traceexport_dify_hook.pth`` at interpreter start-up: install the hook when asked to.

Only ``TRACEEXPORT_DIFY_HOOK=1`` (or true/yes/on) does anything: then the registry is patched the
moment Dify imports it (in the API process and in the Celery worker alike). Otherwise importing this
module is a no-op. It never raises: a broken hook must not stop Python from starting.
"""

from __future__ import annotations

import os

ENV_FLAG = "TRACEEXPORT_DIFY_HOOK"
PTH_NAME = "traceexport_dify_hook.pth"
# The start-up file's one line (the wheel ships it as traceexport_dify_hook.pth; a test keeps the two equal).
PTH_LINE = ('import os; os.environ.get("TRACEEXPORT_DIFY_HOOK", "").strip().lower() in ("1", "true", "yes", "on") '
            'and __import__("traceexport.dify.autoload")')


def enabled(env: dict[str, str] | None = None) -> bool:
    """True when the environment asks for the hook."""
    value = (os.environ if env is None else env).get(ENV_FLAG, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def autoload() -> bool:
    """Install the hook (deferred until Dify imports its registry) when enabled; never raises."""
    if not enabled():
        return False
    try:
        from traceexport.dify.registry import install

        return install(defer=True)
    except Exception:  # start-up must go on without the hook
        return False


autoload()
