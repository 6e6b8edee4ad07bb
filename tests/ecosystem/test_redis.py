"""redis-py's asyncio client (``redis.asyncio``) against a real Redis server, on stock asyncio
and on oxloop.

Every test runs once per loop kind (the ``loop`` fixture) and talks to the server of
``scripts/services.sh`` (or ``OXLOOP_TEST_REDIS_URL``); without a server it is skipped. The
tests cover what redis-py asks of a loop: stream reads and writes of small and large
replies, pipelined bursts, long-lived subscriber connections fed by the server, pools of
connections used by many tasks, and commands that block in the server until another client
acts. Each test uses keys and channels under a prefix of its own, deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest
import redis.asyncio as aioredis
from redis.exceptions import WatchError

import services
from services import redis_client

# A limit for each test's coroutine, well under pytest-timeout's, for a clearer failure.
TEST_TIMEOUT = 20
# How long a test waits for something the server does on its own (a message, a blocked client).
WAIT = 5


def run(loop, coro):
    """Runs ``coro`` to completion on ``loop``, failing with TimeoutError if it hangs."""
    return loop.run_until_complete(asyncio.wait_for(coro, TEST_TIMEOUT))


@contextlib.asynccontextmanager
async def prefixed(url):
    """A fresh key prefix; every key under it is deleted at exit."""
    prefix = services.unique_name("oxl") + ":"
    try:
        yield prefix
    finally:
        async with redis_client(url) as redis:
            keys = [key async for key in redis.scan_iter(match=prefix + "*")]
            if keys:
                await redis.delete(*keys)


async def blocked_clients(redis, name):
    """How many connections named ``name`` are blocked in a BLPOP on the server."""
    clients = await redis.client_list()
    return sum(1 for c in clients if c["name"] == name and c["cmd"] == "blpop")


async def wait_blocked(redis, name, count):
    """Waits until ``count`` connections named ``name`` are blocked in a BLPOP."""
    async with asyncio.timeout(WAIT):
        while await blocked_clients(redis, name) < count:
            await asyncio.sleep(0.02)


def test_get_set_and_binary_values(loop, redis_url):
    """Strings, counters, expiries, multi-key reads and a 1 MiB binary value (every byte value)
    round-trip through the server."""
    blob = os.urandom(1024 * 1024) + bytes(range(256))

    async def main():
        async with prefixed(redis_url) as p, redis_client(redis_url) as redis:
            assert await redis.set(p + "greeting", "héllo")
            assert await redis.set(p + "once", "1", nx=True)
            assert await redis.set(p + "once", "2", nx=True) is None
            await redis.set(p + "blob", blob)
            await redis.set(p + "brief", "x", ex=100)
            counters = [await redis.incrby(p + "counter", n) for n in (1, 10, 100)]
            return {
                "greeting": await redis.get(p + "greeting"),
                "once": await redis.get(p + "once"),
                "blob": await redis.get(p + "blob"),
                "blob_len": await redis.strlen(p + "blob"),
                "ttl": await redis.ttl(p + "brief"),
                "counters": counters,
                "mget": await redis.mget([p + "greeting", p + "missing", p + "counter"]),
                "deleted": await redis.delete(p + "greeting", p + "missing"),
                "exists": await redis.exists(p + "greeting"),
            }

    result = run(loop, main())
    assert result["greeting"] == "héllo".encode()
    assert result["once"] == b"1"
    assert result["blob"] == blob
    assert result["blob_len"] == len(blob)
    assert 0 < result["ttl"] <= 100
    assert result["counters"] == [1, 11, 111]
    assert result["mget"] == ["héllo".encode(), None, b"111"]
    assert result["deleted"] == 1
    assert result["exists"] == 0


def test_pipelines_with_and_without_transaction(loop, redis_url):
    """A MULTI/EXEC pipeline of 300 commands and a plain pipeline of 600 return every result
    in order; a watched key changed by another client makes the transaction fail."""

    async def main():
        async with (
            prefixed(redis_url) as p,
            redis_client(redis_url) as redis,
            redis_client(redis_url) as other,
        ):
            async with redis.pipeline(transaction=True) as pipe:
                for i in range(100):
                    pipe.set(f"{p}k{i}", i).incr(f"{p}k{i}").rpush(p + "list", i)
                transactional = await pipe.execute()
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(300):
                    pipe.get(f"{p}k{i % 100}").lindex(p + "list", i % 100)
                plain = await pipe.execute()
            async with redis.pipeline(transaction=True) as pipe:
                await pipe.watch(p + "k0")
                await other.set(p + "k0", "changed")
                pipe.multi()
                pipe.set(p + "k0", "mine")
                with pytest.raises(WatchError):
                    await pipe.execute()
            return transactional, plain, await redis.get(p + "k0")

    transactional, plain, k0 = run(loop, main())
    assert transactional == [x for i in range(100) for x in (True, i + 1, i + 1)]
    assert plain == [
        x for i in range(300) for x in (str(i % 100 + 1).encode(), str(i % 100).encode())
    ]
    assert k0 == b"changed"


def test_pubsub_channels_and_patterns(loop, redis_url):
    """A subscriber receives, in order, 100 messages another client publishes on its channel,
    messages on channels matching its pattern, and none after unsubscribing."""

    async def next_message(pubsub):
        async with asyncio.timeout(WAIT):
            while True:
                message = await pubsub.get_message(timeout=WAIT)
                if message is not None:
                    return message

    async def main():
        async with (
            prefixed(redis_url) as p,
            redis_client(redis_url) as publisher,
            redis_client(redis_url) as redis,
        ):
            channel, pattern = p + "news", p + "topic.*"
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                subscribed = await next_message(pubsub)
                receivers = [await publisher.publish(channel, f"m{i}") for i in range(100)]
                messages = [await next_message(pubsub) for _ in range(100)]

                await pubsub.psubscribe(pattern)
                psubscribed = await next_message(pubsub)
                await publisher.publish(p + "topic.a", "on a")
                await publisher.publish(p + "other", "unmatched")
                await publisher.publish(p + "topic.b", "on b")
                pattern_messages = [await next_message(pubsub) for _ in range(2)]

                await pubsub.unsubscribe(channel)
                unsubscribed = await next_message(pubsub)
                await pubsub.punsubscribe(pattern)
                punsubscribed = await next_message(pubsub)
                after = [
                    await publisher.publish(channel, "late"),
                    await publisher.publish(p + "topic.c", "late"),
                ]
                leftover = await pubsub.get_message(timeout=0.1)
            return (
                subscribed,
                receivers,
                messages,
                psubscribed,
                pattern_messages,
                unsubscribed,
                punsubscribed,
                after,
                leftover,
                channel,
                pattern,
                p,
            )

    (
        subscribed,
        receivers,
        messages,
        psubscribed,
        pattern_messages,
        unsubscribed,
        punsubscribed,
        after,
        leftover,
        channel,
        pattern,
        p,
    ) = run(loop, main())
    assert (subscribed["type"], subscribed["channel"]) == ("subscribe", channel.encode())
    assert receivers == [1] * 100
    assert [(m["type"], m["channel"], m["data"]) for m in messages] == [
        ("message", channel.encode(), f"m{i}".encode()) for i in range(100)
    ]
    assert (psubscribed["type"], psubscribed["channel"]) == ("psubscribe", pattern.encode())
    assert [(m["type"], m["pattern"], m["channel"], m["data"]) for m in pattern_messages] == [
        ("pmessage", pattern.encode(), (p + "topic.a").encode(), b"on a"),
        ("pmessage", pattern.encode(), (p + "topic.b").encode(), b"on b"),
    ]
    assert (unsubscribed["type"], unsubscribed["channel"]) == ("unsubscribe", channel.encode())
    assert (punsubscribed["type"], punsubscribed["channel"]) == ("punsubscribe", pattern.encode())
    assert after == [0, 0]
    assert leftover is None


def test_connection_pool_under_concurrent_use(loop, redis_url):
    """200 tasks share a pool of 8 connections: every INCR result is distinct and the final
    count is right; 8 tasks then block in BLPOP at once on the pool's 8 connections (the server
    sees them all) until another client pushes the values they get."""
    size = 8

    async def main():
        name = services.unique_name("oxl_pool")
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=size, timeout=WAIT, client_name=name
        )
        try:
            async with prefixed(redis_url) as p, redis_client(redis_url) as other:
                redis = aioredis.Redis(connection_pool=pool)

                async def bump(i):
                    value = await redis.incr(p + "counter")
                    await redis.sadd(p + "seen", i)
                    return value

                values = await asyncio.gather(*(bump(i) for i in range(200)))
                final = int(await redis.get(p + "counter"))
                seen = await redis.scard(p + "seen")
                connections = sum(1 for c in await other.client_list() if c["name"] == name)

                waiters = [
                    asyncio.ensure_future(redis.blpop([f"{p}q{i}"], timeout=10))
                    for i in range(size)
                ]
                await wait_blocked(other, name, size)
                for i in range(size):
                    await other.rpush(f"{p}q{i}", f"v{i}")
                popped = [tuple(x) for x in await asyncio.gather(*waiters)]
                return values, final, seen, connections, popped, p
        finally:
            await pool.aclose()

    values, final, seen, connections, popped, p = run(loop, main())
    assert sorted(values) == list(range(1, 201))
    assert final == 200
    assert seen == 200
    assert 1 <= connections <= size
    assert popped == [(f"{p}q{i}".encode(), f"v{i}".encode()) for i in range(size)]


def test_blpop_released_by_another_client(loop, redis_url):
    """A BLPOP blocked in the server returns the value another client pushes, and a BLPOP with
    a 1 s server-side timeout returns None when nothing comes."""

    async def main():
        name = services.unique_name("oxl_blpop")
        async with (
            prefixed(redis_url) as p,
            redis_client(redis_url, client_name=name) as waiter,
            redis_client(redis_url) as pusher,
        ):
            blocked = asyncio.ensure_future(waiter.blpop([p + "empty", p + "jobs"], timeout=10))
            await wait_blocked(pusher, name, 1)
            pending_while_blocked = not blocked.done()
            await pusher.rpush(p + "jobs", "job-1", "job-2")
            first = tuple(await blocked)
            second = tuple(await waiter.blpop([p + "jobs"], timeout=10))
            nothing = await waiter.blpop([p + "empty"], timeout=1)
            return pending_while_blocked, first, second, nothing, p

    pending_while_blocked, first, second, nothing, p = run(loop, main())
    assert pending_while_blocked
    assert first == ((p + "jobs").encode(), b"job-1")
    assert second == ((p + "jobs").encode(), b"job-2")
    assert nothing is None
