"""Run a callback right after a named module has been imported (a post-import hook).

The autoload runs at interpreter start-up, long before Dify imports its tracing registry, and must not
import Dify itself (that would start Dify's app wiring too early). It registers a callback here instead:
a finder on ``sys.meta_path`` wraps the loader of the named module and calls back once the module's code
has run. A module already imported gets its callback immediately.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

Callback = Callable[[ModuleType], None]


class _CallbackLoader(importlib.abc.Loader):
    """Delegates to the real loader, then runs the callbacks with the freshly executed module."""

    def __init__(self, inner: importlib.abc.Loader, callbacks: list[Callback]) -> None:
        self.inner = inner
        self.callbacks = callbacks

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        module.__loader__ = self.inner  # leave no trace of the hook on the module
        if module.__spec__ is not None:
            module.__spec__.loader = self.inner
        for callback in self.callbacks:
            with contextlib.suppress(Exception):  # a hook must never break the host's import
                callback(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of watched modules so their callbacks run after import."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callback]] = {}
        self._resolving: set[str] = set()

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.callbacks or fullname in self._resolving:
            return None
        # importlib serialises imports of one module; no lock of our own (it would predate gevent's patching)
        callbacks = self.callbacks.pop(fullname, None)
        if not callbacks:
            return None
        self._resolving.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._resolving.discard(fullname)
        if spec is None or spec.loader is None:
            self.callbacks[fullname] = callbacks  # not importable yet: keep waiting
            return None
        spec.loader = _CallbackLoader(spec.loader, callbacks)
        return spec


_finder: PostImportFinder | None = None


def when_imported(module_name: str, callback: Callback) -> None:
    """Call ``callback(module)`` once ``module_name`` is imported (now, if it already is)."""
    global _finder
    module = sys.modules.get(module_name)
    if module is not None:
        callback(module)
        return
    if _finder is None or _finder not in sys.meta_path:
        _finder = PostImportFinder()
        sys.meta_path.insert(0, _finder)
    _finder.callbacks.setdefault(module_name, []).append(callback)


def forget() -> None:
    """Remove the finder and every pending callback (for tests and ``uninstall``)."""
    global _finder
    if _finder is not None:
        _finder.callbacks.clear()
        if _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
    _finder = None


__all__ = ["PostImportFinder", "forget", "when_imported"]
