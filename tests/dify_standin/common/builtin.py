"""Stand-in base trace instance and built-in providers that record what they were given."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar


class BaseTraceInstance(ABC):
    @abstractmethod
    def __init__(self, trace_config: Any) -> None:
        self.trace_config = trace_config

    @abstractmethod
    def trace(self, trace_info: Any) -> None: ...


class LangFuseDataTrace(BaseTraceInstance):
    received: ClassVar[list[Any]] = []
    fail: ClassVar[bool] = False

    def __init__(self, trace_config: Any) -> None:
        self.trace_config = trace_config

    def trace(self, trace_info: Any) -> None:
        if LangFuseDataTrace.fail:
            raise RuntimeError("langfuse stand-in failure")
        LangFuseDataTrace.received.append(trace_info)

    def api_check(self) -> bool:
        return True

    def get_project_key(self) -> str:
        return "pk"


class LangSmithDataTrace(LangFuseDataTrace):
    received: ClassVar[list[Any]] = []
