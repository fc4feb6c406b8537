"""Re-sending the halves of a refused request until the refused items stand alone.

Several backends refuse a whole request for one bad item (Opik 400/409/413/422, an OTLP receiver's 400,
Amplitude's 413). The sink then sends each half of the request on its own, recursively, so the good items
get through and only the bad ones fail. Each sink keeps its own rule for a lone item and for what a
refusal looks like; what they share lives here: the halves and their order, a failure that blocks the
backend (an outage, a throttle) failing the halves not yet sent, and the budget of extra requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from traceexport.sinks.base import ItemFailure

T = TypeVar("T")


class Budget:
    """How many extra requests bisecting may still make within one export call (None: no limit)."""

    def __init__(self, requests: int | None) -> None:
        self.left = requests

    def take(self, count: int = 2) -> bool:
        """Spend ``count`` requests if that many are left; False (nothing spent) otherwise."""
        if self.left is None:
            return True
        if self.left < count:
            return False
        self.left -= count
        return True


def send_halves(items: Sequence[T], send: Callable[[Sequence[T]], ItemFailure | None],
                fail: Callable[[Sequence[T], ItemFailure], None]) -> ItemFailure | None:
    """Send the first half of ``items`` then the second with ``send``.

    ``send`` returns a failure that blocks the backend (the second half then fails the same way, unsent,
    through ``fail``) or None. Returns that blocking failure, else None.
    """
    middle = len(items) // 2
    halves = (items[:middle], items[middle:])
    for position, half in enumerate(halves):
        blocked = send(half)
        if blocked is not None:
            for rest in halves[position + 1:]:
                fail(rest, blocked)
            return blocked
    return None
