"""Stand-in of core/ops/entities/trace_entity.py: the same models in every layout."""

from tests.dify_standin.common.entities import *  # noqa: F403
