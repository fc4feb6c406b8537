"""Deterministic ids: the same record always yields the same trace, span, UUIDv7 and insert ids.

* OTLP trace id: the 32 hex digits of a Dify UUID (the scheme Dify Enterprise uses), else SHA-256.
* OTLP span id: 16 hex digits of SHA-256 over a stable source id plus a role.
* Opik UUIDv7: 48-bit millisecond timestamp from one fixed instant per trace, version 7, the RFC 4122
  variant, and the remaining 74 bits from the source UUID (or its SHA-256), so every record of one
  message lands in one Opik trace.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from functools import lru_cache

# Ids repeat within a record and its neighbours (a message's spans, its tool and retrieval records), not
# across a day: a small cache keeps the hits, where 65,536 entries per cache held ~20 MB each.
_CACHED = 4096


@lru_cache(maxsize=_CACHED)
def _uuid_bytes(seed: str) -> bytes:
    """The 16 bytes of ``seed`` if it is a UUID, else the first 16 bytes of its SHA-256."""
    try:
        return uuid.UUID(seed).bytes
    except ValueError:
        return hashlib.sha256(seed.encode("utf-8")).digest()[:16]


def trace_id_hex(seed: str) -> str:
    """32 lowercase hex digits: the UUID itself when ``seed`` is one, else a SHA-256 prefix."""
    value = _uuid_bytes(seed).hex()
    return value if value != "0" * 32 else "0" * 31 + "1"


@lru_cache(maxsize=_CACHED)
def span_id_hex(seed: str, role: str = "") -> str:
    """16 lowercase hex digits from SHA-256 of ``seed:role`` (never all zeros)."""
    value = hashlib.sha256(f"{seed}:{role}".encode()).hexdigest()[:16]
    return value if value != "0" * 16 else "0" * 15 + "1"


def uuid7_from(seed: str, moment: datetime | int | float, role: str = "") -> str:
    """A UUIDv7 string: timestamp from ``moment`` (datetime or epoch ms), the rest from ``seed``/``role``."""
    if isinstance(moment, datetime):
        millis = int(moment.timestamp() * 1000)
    else:
        millis = int(moment)
    return _uuid7(seed if not role else f"{seed}:{role}", millis)


@lru_cache(maxsize=_CACHED)
def _uuid7(seed: str, millis: int) -> str:
    tail = bytearray(_uuid_bytes(seed))
    tail[0:6] = (millis & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")
    tail[6] = 0x70 | (tail[6] & 0x0F)  # version 7
    tail[8] = 0x80 | (tail[8] & 0x3F)  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(tail)))


def stable_hash(value: str, length: int = 32) -> str:
    """A hex SHA-256 prefix of ``value``: for insert ids and pseudonymised user ids."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:length]
