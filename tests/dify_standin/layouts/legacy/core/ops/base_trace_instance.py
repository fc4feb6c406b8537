"""Stand-in of core/ops/base_trace_instance.py."""

from tests.dify_standin.common.builtin import BaseTraceInstance

__all__ = ["BaseTraceInstance"]
