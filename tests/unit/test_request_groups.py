"""How every sink splits a batch into requests: ``traceexport.sinks.base.request_groups``."""

from __future__ import annotations

from traceexport.sinks.base import request_groups


def test_groups_keep_order_and_stop_at_the_item_or_byte_limit() -> None:
    """Indexes stay in order; a group closes before it would pass max_items or max_bytes (overhead included)."""
    assert request_groups([1, 1, 1, 1, 1], max_items=2, max_bytes=100) == [[0, 1], [2, 3], [4]]
    assert request_groups([4, 4, 4], max_items=10, max_bytes=10, overhead=2) == [[0, 1], [2]]
    assert request_groups([], max_items=2, max_bytes=10) == []


def test_an_item_over_the_byte_limit_gets_a_group_of_its_own() -> None:
    """An item larger than max_bytes is not dropped or merged: it goes alone, and the sink decides."""
    assert request_groups([3, 50, 3], max_items=10, max_bytes=10) == [[0], [1], [2]]
