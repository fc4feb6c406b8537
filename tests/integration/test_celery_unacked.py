"""The batched, kombu-compatible in-flight bookkeeping (``sources/celery/unacked.py``) against a real redis-server.

Messages are produced by Celery as Dify sends them; kombu itself takes and restores messages on the same keys,
to show that the layout is kombu's in both directions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from tests.support.dify_producer import DifyProducer
from tests.support.redis_server import RedisServer, redis_server_binary

from traceexport.sources.celery import CelerySourceSettings
from traceexport.sources.celery.broker import BrokerSession
from traceexport.sources.celery.unacked import Taken, UnackedKeys

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "12-generate-name.json"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A throwaway redis-server; skipped when the binary is absent."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer.start(tmp_path / "redis") as server:
        yield server


def settings(redis: RedisServer, storage: Path, **extra: Any) -> CelerySourceSettings:
    values = {"broker_url": redis.url(1), "storage": {"type": "local", "path": str(storage)}, **extra}
    return CelerySourceSettings.from_config(values, env={})


def fill(redis: RedisServer, storage: Path, count: int, prefix: str = "") -> list[tuple[str, str]]:
    """``count`` of Dify's messages (and files) on ops_trace; their storage keys and delivery tags."""
    producer = DifyProducer(redis.url(1), storage, redis_key_prefix=prefix)
    try:
        return producer.send_many([SAMPLE.read_bytes()] * count)
    finally:
        producer.close()


@pytest.fixture
def session(redis: RedisServer, tmp_path: Path) -> Iterator[BrokerSession]:
    """A broker session of a source with a 1 s visibility timeout."""
    broker = BrokerSession(kombu, settings(redis, tmp_path / "storage", visibility_timeout=1))
    yield broker
    broker.close()


def test_take_moves_a_batch_into_kombus_unacked_layout_and_ack_forgets_it(
    redis: RedisServer, tmp_path: Path, session: BrokerSession
) -> None:
    """take() pops up to ``limit`` messages oldest first and records each as kombu does; ack() removes both entries."""
    sent = fill(redis, tmp_path / "storage", 5)
    client = redis.client(1)
    taken = session.queue.take(3)
    assert [t.tag for t in taken] == [tag for _, tag in sent[:3]]
    assert client.llen("ops_trace") == 2 and client.hlen("traceexport.unacked") == 3
    entry = json.loads(client.hget("traceexport.unacked", taken[0].tag))
    assert entry == [json.loads(taken[0].raw), "", "ops_trace"]  # [payload, exchange, routing_key]
    assert client.zscore("traceexport.unacked_index", taken[0].tag) == pytest.approx(time.time(), abs=60)
    session.queue.ack(taken[:2])
    assert client.hkeys("traceexport.unacked") == [taken[2].tag.encode()]
    assert client.zrange("traceexport.unacked_index", 0, -1) == [taken[2].tag.encode()]


def test_requeue_puts_messages_back_once_marked_redelivered(
    redis: RedisServer, tmp_path: Path, session: BrokerSession
) -> None:
    """requeue() sends messages to the back of the queue marked redelivered; a second requeue does nothing."""
    fill(redis, tmp_path / "storage", 2)
    taken = session.queue.take(1)
    session.queue.requeue(taken)
    session.queue.requeue(taken)  # no longer in flight: not put back twice
    client = redis.client(1)
    assert client.llen("ops_trace") == 2 and client.hlen("traceexport.unacked") == 0
    back = json.loads(client.lindex("ops_trace", 0))  # LPUSH: the far end, taken last
    assert back["properties"]["delivery_tag"] == taken[0].tag
    assert back["headers"]["redelivered"] is True and back["properties"]["delivery_info"]["redelivered"] is True


def test_move_acknowledges_and_pushes_in_one_step_and_only_while_the_message_is_in_flight(
    redis: RedisServer, tmp_path: Path, session: BrokerSession
) -> None:
    """move() forgets the message and pushes its new form in one step; moving it again (a retry after a lost
    reply) or after it went back on the queue pushes nothing."""
    fill(redis, tmp_path / "storage", 2)
    first, second = session.queue.take(2)
    client = redis.client(1)
    assert session.queue.move(first, "elsewhere", b"moved") is True
    assert session.queue.move(first, "elsewhere", b"moved") is False
    session.queue.requeue([second])
    assert session.queue.move(second, "elsewhere", b"moved too") is False
    assert client.lrange("elsewhere", 0, -1) == [b"moved"] and client.llen("ops_trace") == 1
    assert client.hlen("traceexport.unacked") == 0 and client.zcard("traceexport.unacked_index") == 0


def test_restore_puts_back_only_messages_in_flight_past_the_visibility_timeout(
    redis: RedisServer, tmp_path: Path, session: BrokerSession
) -> None:
    """Messages of a consumer gone for longer than visibility_timeout return to the front of the queue."""
    sent = fill(redis, tmp_path / "storage", 3)
    old = session.queue.take(1)
    client = redis.client(1)
    client.zadd("traceexport.unacked_index", {old[0].tag: time.time() - 5})  # taken 5 s ago, never acked
    fresh = session.queue.take(1)
    assert session.queue.restore_expired() == 1
    assert client.hkeys("traceexport.unacked") == [fresh[0].tag.encode()]
    assert [t.tag for t in session.queue.take(1)] == [sent[0][1]]  # RPUSH: the next one taken


def test_messages_kombu_took_are_restored_here_and_the_other_way_round(
    redis: RedisServer, tmp_path: Path, session: BrokerSession
) -> None:
    """kombu's own consumer and restore share the bookkeeping: each side restores what the other left behind."""
    storage = tmp_path / "storage"
    sent = fill(redis, storage, 2)
    client = redis.client(1)
    source = settings(redis, storage, visibility_timeout=1)
    with kombu.Connection(redis.url(1), transport_options=source.kombu_transport_options()) as conn:
        channel = conn.channel()
        channel.qos.restore_at_shutdown = False  # as if this consumer died holding it
        by_kombu = channel.basic_get("ops_trace", no_ack=False)
        assert by_kombu.delivery_tag == sent[0][1] and client.hlen("traceexport.unacked") == 1
        ours = session.queue.take(1)
        client.zadd("traceexport.unacked_index", {by_kombu.delivery_tag: time.time() - 5,
                                                  ours[0].tag: time.time() - 5})
        assert session.queue.restore_expired(limit=1) == 2  # in passes of one
        assert client.llen("ops_trace") == 2 and client.hlen("traceexport.unacked") == 0
        ours = session.queue.take(2)
        client.zadd("traceexport.unacked_index", {t.tag: time.time() - 5 for t in ours})
        channel.qos.restore_visible(num=10)
        assert client.llen("ops_trace") == 2 and client.hlen("traceexport.unacked") == 0
        redelivered = channel.basic_get("ops_trace", no_ack=True)
        assert redelivered.headers["redelivered"] is True


def test_entries_that_are_not_kombu_messages_are_tracked_and_restored_unchanged(
    redis: RedisServer, tmp_path: Path, session: BrokerSession
) -> None:
    """A foreign queue entry, or a delivery tag already in flight, gets a tag of its own and comes back as it was."""
    sent = fill(redis, tmp_path / "storage", 1)
    client = redis.client(1)
    message = client.lindex("ops_trace", 0)
    client.lpush("ops_trace", b"not json \xff", message)  # the same message twice: one tag for two entries
    taken = session.queue.take(10)
    assert len(taken) == 3 and len({t.tag for t in taken}) == 3 and taken[0].tag == sent[0][1]
    assert {t.raw for t in taken} == {message, b"not json \xff"}
    client.zadd("traceexport.unacked_index", {t.tag: time.time() - 5 for t in taken})
    assert session.queue.restore_expired() == 3
    assert b"not json \xff" in client.lrange("ops_trace", 0, -1)


def test_a_dify_key_prefix_applies_to_the_queue_and_the_bookkeeping(redis: RedisServer, tmp_path: Path) -> None:
    """With Dify's REDIS_KEY_PREFIX every key the queue touches carries it, the mutex of a restore included."""
    storage = tmp_path / "storage"
    fill(redis, storage, 2, prefix="dify")
    broker = BrokerSession(kombu, settings(redis, storage, redis_key_prefix="dify", visibility_timeout=1))
    try:
        assert broker.keys.queue == "dify:ops_trace" and broker.keys.mutex == "dify:traceexport.unacked_mutex"
        taken = broker.queue.take(5)
        client = redis.client(1)
        client.zadd("dify:traceexport.unacked_index", {taken[0].tag: time.time() - 5})
        assert broker.queue.restore_expired() == 1
        broker.queue.ack(taken[1:])
    finally:
        broker.close()
    assert sorted(client.keys("*")) == [b"dify:_kombu.binding.ops_trace", b"dify:_kombu.binding_permanent.ops_trace",
                                        b"dify:ops_trace"]


def test_priority_lists_are_taken_in_kombus_order_and_restored_to_their_own() -> None:
    """The queue's priority lists are named as kombu names them, and a message goes back to its own."""
    keys = UnackedKeys(queue="p:q", unacked="u", index="i", mutex="m", mutex_expire=300, visibility_timeout=1,
                       priority_steps=(0, 3, 6, 9), sep="\x06\x16")
    assert keys.queue_lists() == ["p:q", "p:q\x06\x163", "p:q\x06\x166", "p:q\x06\x169"]
    assert [keys.list_for(p) for p in (0, 2, 3, 8, 9)] == ["p:q", "p:q", "p:q\x06\x163", "p:q\x06\x166",
                                                             "p:q\x06\x169"]
    assert Taken("t", b"{}").tag == "t"
