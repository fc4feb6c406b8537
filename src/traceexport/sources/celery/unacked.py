"""Take, acknowledge, requeue and restore messages on a Redis list the way kombu's Redis transport does, in batches.

kombu (what Celery and Dify's worker use) keeps a message "in flight" from when a consumer takes it until it
is acknowledged: the message (``[payload, exchange, routing_key]`` as JSON) sits in the hash ``unacked`` under its
delivery tag, and the tag in the sorted set ``unacked_index`` scored with the time it was taken. Acknowledging
removes both. Any consumer sharing those keys puts a message back on its queue once it has been in flight
longer than ``visibility_timeout`` (the consumer died), under the lock ``unacked_mutex``.

This module keeps exactly that layout, with two differences from kombu's consumer:

* **take is one atomic step** (a Lua script: pop from the queue and record in ``unacked``), for up to ``limit``
  messages at once. kombu pops with ``BRPOP`` and records the message in a second round trip, so a consumer
  killed in between loses the message; here a message is always either on the queue or in ``unacked``;
* acknowledging, requeueing and restoring take many tags per round trip. Requeue and restore put a message
  back only while it is still recorded in ``unacked``, atomically, so two consumers can never both put it back.

An empty queue is polled (the caller waits between empty takes); a script cannot block like ``BRPOP``.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# KEYS: the queue's lists in kombu's consuming order, then the unacked hash and its index.
# ARGV: most messages to take, the time to score them with, a prefix for tags made up here.
# Returns tag, message, tag, message, ... A message without a usable delivery tag (not kombu's, or a tag already
# in flight) gets a made-up one, so it is still tracked and can be restored.
_TAKE = """
local limit, now, spare = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local hash, index = KEYS[#KEYS - 1], KEYS[#KEYS]
local out, count = {}, 0
for i = 1, #KEYS - 2 do
  while count < limit do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    count = count + 1
    local ok, msg = pcall(cjson.decode, item)
    local tag, ex, rk = nil, '', ''
    if ok and type(msg) == 'table' and type(msg.properties) == 'table' then
      local p = msg.properties
      if type(p.delivery_tag) == 'string' and p.delivery_tag ~= '' then tag = p.delivery_tag end
      if type(p.delivery_info) == 'table' then
        if type(p.delivery_info.exchange) == 'string' then ex = p.delivery_info.exchange end
        if type(p.delivery_info.routing_key) == 'string' then rk = p.delivery_info.routing_key end
      end
    end
    if tag == nil or redis.call('HEXISTS', hash, tag) == 1 then tag = spare .. count end
    local entry
    if ok and type(msg) == 'table' then
      entry = '[' .. item .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']'
    else
      entry = cjson.encode({item, ex, rk})
    end
    redis.call('ZADD', index, now, tag)
    redis.call('HSET', hash, tag, entry)
    out[#out + 1] = tag
    out[#out + 1] = item
  end
end
return out
"""

# KEYS: the unacked hash, its index. ARGV: "L" (back of the line) or "R" (front), the latest time taken that
# qualifies, then tag, list, message, ... Puts a message back only if it is still in flight (in the hash) and was
# taken no later than that time (not taken afresh meanwhile); returns how many were put back.
_PUT_BACK = """
local hash, index = KEYS[1], KEYS[2]
local push, latest = (ARGV[1] == 'L') and 'LPUSH' or 'RPUSH', tonumber(ARGV[2])
local n = 0
for i = 3, #ARGV, 3 do
  local score = tonumber(redis.call('ZSCORE', index, ARGV[i]))
  if score == nil or score <= latest then
    if redis.call('HDEL', hash, ARGV[i]) == 1 then
      redis.call(push, ARGV[i + 1], ARGV[i + 2])
      n = n + 1
    end
    redis.call('ZREM', index, ARGV[i])
  end
end
return n
"""

# KEYS: the unacked hash, its index, the list to move the message to. ARGV: its tag, the message to push there.
# Acknowledges and pushes in one step, and pushes only if the message was still in flight: a move whose reply was
# lost (the broker restarted, failed over) leaves nothing to move again, so the message is never pushed twice.
_MOVE = """
local moved = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if moved == 1 then redis.call('LPUSH', KEYS[3], ARGV[2]) end
return moved
"""

MIN_PRIORITY, MAX_PRIORITY = 0, 9  # kombu's virtual transport clamps message priorities to these


@dataclass(frozen=True, slots=True)
class Taken:
    """One message taken off the queue: its delivery tag (its key in ``unacked``) and its JSON text."""

    tag: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class UnackedKeys:
    """Where a queue and its in-flight bookkeeping live in Redis (key prefix included) and kombu's settings."""

    queue: str
    unacked: str
    index: str
    mutex: str
    mutex_expire: int
    visibility_timeout: float
    priority_steps: tuple[int, ...]
    sep: str

    def queue_lists(self) -> list[str]:
        """The queue's lists in the order kombu's ``BRPOP`` names them (one per priority step)."""
        return [self.list_for(step) for step in self.priority_steps]

    def list_for(self, priority: int) -> str:
        """The list a message of ``priority`` goes to (kombu's ``_q_for_pri``)."""
        steps = sorted(self.priority_steps)
        step = max((s for s in steps if s <= priority), default=steps[0])
        return f"{self.queue}{self.sep}{step}" if step else self.queue


class UnackedQueue:
    """Batched, kombu-compatible take / ack / requeue / restore on one queue, through a plain redis-py client."""

    def __init__(self, client: Any, keys: UnackedKeys) -> None:
        self.client = client
        self.keys = keys
        self._take = client.register_script(_TAKE)
        self._put_back = client.register_script(_PUT_BACK)
        self._move = client.register_script(_MOVE)

    def take(self, limit: int) -> list[Taken]:
        """Up to ``limit`` messages, moved atomically from the queue into ``unacked``; [] when it is empty."""
        spare = f"traceexport-{uuid.uuid4()}-"
        keys = [*self.keys.queue_lists(), self.keys.unacked, self.keys.index]
        flat = self._take(keys=keys, args=[limit, repr(time.time()), spare])
        return [Taken(_text(flat[i]), bytes(flat[i + 1])) for i in range(0, len(flat), 2)]

    def ack(self, messages: Sequence[Taken]) -> None:
        """Forget ``messages``: done with, never to be handed out again (one transaction)."""
        tags = [m.tag for m in messages]
        if tags:
            pipe = self.client.pipeline(transaction=True)
            pipe.zrem(self.keys.index, *tags)
            pipe.hdel(self.keys.unacked, *tags)
            pipe.execute()

    def move(self, message: Taken, key: str, text: bytes) -> bool:
        """Acknowledge ``message`` and push ``text`` (its new form) onto the list ``key``, in one atomic step, only
        while ``message`` is still in flight; False when it was not (already moved, acknowledged or put back)."""
        return bool(self._move(keys=[self.keys.unacked, self.keys.index, key], args=[message.tag, text]))

    def requeue(self, messages: Sequence[Taken]) -> None:
        """Put ``messages`` back at the end of the queue, marked redelivered (kombu's ``requeue``)."""
        self._restore([(m.tag, m.raw) for m in messages], leftmost=True, latest=time.time() + 1e9)

    def restore_expired(self, limit: int = 1000) -> int:
        """Put back every message in flight for longer than the visibility timeout (its consumer is gone).

        Like kombu's ``restore_visible``: under ``unacked_mutex`` (skipped while another consumer holds it), to
        the front of the queue, marked redelivered. Returns how many were put back.
        """
        ceiling = time.time() - self.keys.visibility_timeout
        if not self.client.zrangebyscore(self.keys.index, "-inf", ceiling, start=0, num=1):
            return 0
        lock = self.client.lock(self.keys.mutex, timeout=self.keys.mutex_expire)
        if not lock.acquire(blocking=False):
            return 0
        restored = 0
        try:
            while True:
                tags = [_text(t) for t in self.client.zrangebyscore(self.keys.index, "-inf", ceiling, start=0,
                                                                    num=limit)]
                if not tags:
                    return restored
                entries = self.client.hmget(self.keys.unacked, tags)
                restored += self._restore([(t, _message_of(e)) for t, e in zip(tags, entries, strict=True)],
                                          leftmost=False, latest=ceiling)
                if len(tags) < limit:
                    return restored
        finally:
            with contextlib.suppress(Exception):  # the lock expired meanwhile: nothing to release
                lock.release()

    def _restore(self, messages: Sequence[tuple[str, bytes | None]], *, leftmost: bool, latest: float) -> int:
        args: list[Any] = ["L" if leftmost else "R", repr(latest)]
        for tag, raw in messages:
            if raw is None:  # no entry (already acknowledged or restored): only the index entry goes
                args += [tag, self.keys.queue, b""]
                continue
            text, priority = _redelivered(raw)
            args += [tag, self.keys.list_for(priority), text]
        if len(args) == 2:
            return 0
        return int(self._put_back(keys=[self.keys.unacked, self.keys.index], args=args))


def _message_of(entry: bytes | None) -> bytes | None:
    """The message text of an ``unacked`` entry ``[payload, exchange, routing_key]``."""
    if entry is None:
        return None
    try:  # surrogateescape: a queue entry that was not UTF-8 was kept byte for byte (cjson does not check)
        payload = json.loads(entry.decode("utf-8", "surrogateescape"))[0]
    except (ValueError, IndexError, KeyError, TypeError):
        return entry  # not kombu's layout: put it back as it is
    if isinstance(payload, str):  # a message that was not JSON, kept as text
        return payload.encode("utf-8", "surrogateescape")
    return json.dumps(payload).encode("utf-8")


def _redelivered(raw: bytes) -> tuple[bytes, int]:
    """The message marked redelivered as kombu marks it, and its priority; unchanged when it is not kombu's."""
    try:
        payload = json.loads(raw)
        properties = payload["properties"]
    except (ValueError, KeyError, TypeError):
        return raw, 0
    try:
        payload["headers"]["redelivered"] = True
        properties["delivery_info"]["redelivered"] = True
    except (KeyError, TypeError):
        pass
    try:
        priority = max(min(int(properties["priority"]), MAX_PRIORITY), MIN_PRIORITY)
    except (KeyError, TypeError, ValueError):
        priority = 0
    return json.dumps(payload).encode("utf-8"), priority


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


__all__ = ["Taken", "UnackedKeys", "UnackedQueue"]
