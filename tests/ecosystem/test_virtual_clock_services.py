"""Libraries and real servers under a virtual clock (issue #17): an aiohttp server and client
with keep-alive, asyncpg queries and a pool on the real PostgreSQL, redis-py pipelines,
pub/sub and a blocking command on the real Redis.

Each piece of work runs inside ``asyncio.wait_for(..., timeout)`` while a background task
sleeps hour after hour of virtual time: if the loop jumped while a reply from the server was
outstanding, the jump would reach the ``wait_for`` deadline first and the work would fail with
a spurious ``TimeoutError``. Timeouts that must fire are checked to fire at their virtual
deadline. After the work, each test checks that time does jump again (an hour of
``asyncio.sleep`` completes while the connections stay open and idle; were it held, the
pytest-timeout limit would fail the test). No test asserts on wall-clock speed: the
assertions are about virtual time (``loop.time()``), which moves only by the jump rule (see
``oxloop.VirtualClock``): a request to another process (PostgreSQL, Redis) holds time until
its reply, and virtual time then runs with real time; a connection whose both ends are in the
loop (aiohttp's server and client) never holds it.

The loops are oxloop loops on a ``VirtualClock``, made under the ``oxloop_leak_check`` guard
of tests/conftest.py (closed at the end, nothing leaked). The PostgreSQL and Redis tests are
skipped without their server (``scripts/services.sh start``).
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import asyncpg
import pytest
from aiohttp import web

import services
from helpers.virtual_time import (
    Stopwatch,
    assert_time_jumps,
    new_virtual_loop,
    sleeping_hours,
)
from services import redis_client
from web_helpers import aiohttp_server, connection_trace

# How far past its deadline a timeout may fire while virtual time runs with real time (a
# request awaits its reply): the real time the loop takes to run the timer and the
# cancellation.
LATE_SLACK = 0.25
# A short timeout for work answered at once (it only fails if virtual time jumps).
SHORT = 2


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def vloop(oxloop_leak_check):
    """An oxloop loop on a fresh ``VirtualClock``, leak-checked."""
    return new_virtual_loop(oxloop_leak_check)


# --------------------------------------------------------------------------------------------
# aiohttp: server and client in the loop (their connection never holds time)
# --------------------------------------------------------------------------------------------

# The server's keep-alive timeout (virtual seconds): an idle connection is closed after it.
SERVER_KEEPALIVE = 75


def test_aiohttp_keep_alive_requests_in_virtual_time(vloop):
    """Requests on one kept-alive connection while another task sleeps hours: quick answers
    arrive inside a ``wait_for`` of 10 ms without any time passing (the connection is in the
    loop: it neither holds time nor lets it jump); a handler's ``asyncio.sleep(30)`` is a jump
    of exactly 30 s inside ``wait_for(..., 60)``; a ``wait_for(..., 10)`` around that handler
    times out at exactly 10 virtual seconds. After an hour of idleness, the server's keep-alive
    timer has closed the connection and the next request opens a new one."""

    async def main():
        peers = []

        async def fast(request):
            peers.append(request.transport.get_extra_info("peername"))
            return web.Response(text=f"fast {len(peers)}")

        slow_done = []

        async def slow(request):
            peers.append(request.transport.get_extra_info("peername"))
            await asyncio.sleep(30)
            slow_done.append(asyncio.get_running_loop().time())
            return web.Response(text=f"slow {len(peers)}")

        trace, created, reused = connection_trace()

        app = web.Application()
        app.router.add_get("/fast", fast)
        app.router.add_get("/slow", slow)
        session = aiohttp.ClientSession(trace_configs=[trace])
        async with (
            aiohttp_server(app, keepalive_timeout=SERVER_KEEPALIVE) as url,
            session,
            sleeping_hours() as sleeper,
        ):

            async def get(path):
                async with session.get(f"{url}{path}") as resp:
                    assert resp.status == 200
                    return await resp.text()

            watch = Stopwatch()
            assert await asyncio.wait_for(get("/fast"), 5) == "fast 1"
            assert watch.elapsed < 5

            # Quick answers on the kept-alive connection: no time passes at all.
            for n in range(2, 7):
                watch.restart()
                assert await asyncio.wait_for(get("/fast"), 0.01) == f"fast {n}"
                assert watch.elapsed <= 1e-6

            # A handler sleeping 30 virtual seconds: a jump to its deadline, not to the
            # client's (nor to the hour of the background task).
            for n in range(7, 10):
                watch.restart()
                assert await asyncio.wait_for(get("/slow"), 60) == f"slow {n}"
                assert watch.elapsed == pytest.approx(30, abs=1e-6)

            assert len(created) == 1
            assert len(reused) == 8
            assert len(set(peers)) == 1
            assert sleeper.hours == 0

            # The idle connection does not hold time; the server's keep-alive timer closes it
            # at its virtual deadline, and the next request connects anew.
            await assert_time_jumps(sleeper)
            watch.restart()
            assert await asyncio.wait_for(get("/fast"), 0.01) == "fast 10"
            assert watch.elapsed <= 1e-3
            assert len(created) == 2
            assert len(set(peers)) == 2

            # A client timeout shorter than the handler's sleep fires at its virtual deadline.
            watch.restart()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(get("/slow"), 10)
            assert watch.elapsed == pytest.approx(10, abs=1e-6)
            assert sleeper.hours == 1
            # The handler (not cancelled by the client's going away) ends its sleep at its own
            # virtual deadline.
            while len(slow_done) < 4:
                await asyncio.sleep(1)
            assert slow_done[-1] - watch.start == pytest.approx(30, abs=1e-6)

    vloop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# asyncpg: requests to another process (they hold time until answered)
# --------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def pg_connection(dsn, **kwargs):
    """An asyncpg connection (made inside a short ``wait_for``), closed at exit."""
    conn = await asyncio.wait_for(asyncpg.connect(dsn, **kwargs), SHORT)
    try:
        yield conn
    finally:
        await conn.close()


def test_asyncpg_queries_and_pool_in_virtual_time(vloop, postgres_dsn):
    """Queries on a connection (one by one, in a transaction, a prepared statement) and 200
    concurrent queries through a pool of 4, each inside ``wait_for(..., 2)`` while another task
    sleeps hours: every reply arrives before any jump. With the connections idle, hours pass
    (the pool's inactivity timers close its connections meanwhile, at their virtual
    deadlines) and the connection and pool still answer."""

    async def main():
        async with (
            pg_connection(postgres_dsn) as conn,
            asyncpg.create_pool(postgres_dsn, min_size=4, max_size=4) as pool,
            sleeping_hours() as sleeper,
        ):
            for i in range(100):
                assert await asyncio.wait_for(conn.fetchval("SELECT $1::int + 1", i), SHORT) == (
                    i + 1
                )

            async def in_transaction():
                async with conn.transaction():
                    await conn.execute("CREATE TEMP TABLE vc_items (n int)")
                    await conn.executemany(
                        "INSERT INTO vc_items VALUES ($1)", [(n,) for n in range(500)]
                    )
                    return await conn.fetchval("SELECT sum(n) FROM vc_items")

            assert await asyncio.wait_for(in_transaction(), SHORT) == sum(range(500))
            stmt = await asyncio.wait_for(conn.prepare("SELECT $1::int * $2::int"), SHORT)
            assert await asyncio.wait_for(stmt.fetchval(6, 7), SHORT) == 42

            async def through_pool(count):
                return await asyncio.gather(
                    *(pool.fetchval("SELECT $1::int * 2", i) for i in range(count))
                )

            assert await asyncio.wait_for(through_pool(200), SHORT) == [i * 2 for i in range(200)]
            assert sleeper.hours == 0

            await assert_time_jumps(sleeper)
            assert await asyncio.wait_for(conn.fetchval("SELECT 'still here'"), SHORT) == (
                "still here"
            )
            assert await asyncio.wait_for(through_pool(40), SHORT) == [i * 2 for i in range(40)]

    vloop.run_until_complete(main())


def test_asyncpg_slow_reply_is_not_cut_short(vloop, postgres_dsn):
    """``pg_sleep(0.3)`` inside ``wait_for(..., 5)`` while another task sleeps hours: the query
    awaiting its reply holds time, which runs with real time until the reply (no jump to the
    deadline, no standstill)."""

    async def main():
        async with pg_connection(postgres_dsn) as conn, sleeping_hours() as sleeper:
            watch = Stopwatch()
            assert await asyncio.wait_for(conn.fetchval("SELECT pg_sleep(0.3)"), 5) is None
            assert 0.25 <= watch.elapsed < 5
            assert sleeper.hours == 0
            await assert_time_jumps(sleeper)

    vloop.run_until_complete(main())


def test_asyncpg_timeout_fires_at_its_virtual_deadline(vloop, postgres_dsn):
    """``pg_sleep(2)`` inside ``wait_for(..., 0.5)`` times out 0.5 virtual seconds after it
    began (time ran with real time while the query held it); asyncpg cancels the query in
    the server and the connection answers the next query."""

    async def main():
        async with pg_connection(postgres_dsn) as conn, sleeping_hours() as sleeper:
            watch = Stopwatch()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.execute("SELECT pg_sleep(2)"), 0.5)
            assert 0.5 - 1e-9 <= watch.elapsed <= 0.5 + LATE_SLACK
            assert await asyncio.wait_for(conn.fetchval("SELECT $1::int + 1", 41), SHORT) == 42
            assert not conn.is_in_transaction()
            assert sleeper.hours == 0
            await assert_time_jumps(sleeper)

    vloop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# redis-py: requests to another process (they hold time until answered)
# --------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def key_prefix(redis):
    """A fresh key prefix; the keys under it are deleted at exit."""
    prefix = services.unique_name("oxl_vc") + ":"
    try:
        yield prefix
    finally:
        keys = [key async for key in redis.scan_iter(match=prefix + "*")]
        if keys:
            await redis.delete(*keys)


def test_redis_pipelines_in_virtual_time(vloop, redis_url):
    """A MULTI/EXEC pipeline of 300 commands and a plain one of 400, each inside
    ``wait_for(..., 2)`` while another task sleeps hours: every reply arrives before any jump,
    in order. With the connection idle, hours pass; then a pipeline works again."""

    async def main():
        async with (
            redis_client(redis_url) as redis,
            key_prefix(redis) as p,
            sleeping_hours() as sleeper,
        ):

            async def transactional():
                async with redis.pipeline(transaction=True) as pipe:
                    for i in range(100):
                        pipe.set(f"{p}k{i}", i).incr(f"{p}k{i}").rpush(p + "list", i)
                    return await pipe.execute()

            async def plain():
                async with redis.pipeline(transaction=False) as pipe:
                    for i in range(200):
                        pipe.get(f"{p}k{i % 100}").lindex(p + "list", i % 100)
                    return await pipe.execute()

            results = await asyncio.wait_for(transactional(), SHORT)
            assert results[0::3] == [True] * 100
            assert results[1::3] == [i + 1 for i in range(100)]
            assert results[2::3] == list(range(1, 101))
            results = await asyncio.wait_for(plain(), SHORT)
            assert results[0::2] == [str(i % 100 + 1).encode() for i in range(200)]
            assert results[1::2] == [str(i % 100).encode() for i in range(200)]
            assert sleeper.hours == 0

            await assert_time_jumps(sleeper)
            results = await asyncio.wait_for(plain(), SHORT)
            assert results[:2] == [b"1", b"0"]

    vloop.run_until_complete(main())


def test_redis_pubsub_in_virtual_time(vloop, redis_url):
    """A subscriber receives, in order, 50 messages another client of the loop publishes, all
    inside ``wait_for(..., 2)`` while another task sleeps hours; after hours of idleness the
    subscription still delivers."""

    async def main():
        async with (
            redis_client(redis_url) as redis,
            redis_client(redis_url) as publisher,
            sleeping_hours() as sleeper,
        ):
            channel = services.unique_name("oxl_vc_chan")
            async with redis.pubsub() as pubsub:
                await asyncio.wait_for(pubsub.subscribe(channel), SHORT)
                subscribed = await asyncio.wait_for(pubsub.get_message(timeout=1), SHORT)
                assert (subscribed["type"], subscribed["channel"]) == (
                    "subscribe",
                    channel.encode(),
                )

                async def receive(count):
                    got = []
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            got.append(message["data"])
                            if len(got) == count:
                                return got
                    raise AssertionError(f"the subscription ended after {got!r}")

                async def exchange(count, tag):
                    receiving = asyncio.ensure_future(receive(count))
                    try:
                        receivers = [
                            await publisher.publish(channel, f"{tag}{i}") for i in range(count)
                        ]
                        return receivers, await receiving
                    finally:
                        receiving.cancel()

                receivers, got = await asyncio.wait_for(exchange(50, "m"), SHORT)
                assert receivers == [1] * 50
                assert got == [f"m{i}".encode() for i in range(50)]
                assert sleeper.hours == 0

                await assert_time_jumps(sleeper)
                receivers, got = await asyncio.wait_for(exchange(3, "late"), SHORT)
                assert receivers == [1] * 3
                assert got == [b"late0", b"late1", b"late2"]
                await asyncio.wait_for(pubsub.unsubscribe(channel), SHORT)

    vloop.run_until_complete(main())


def test_redis_blpop_server_timeout_is_not_cut_short(vloop, redis_url):
    """``BLPOP`` with a server-side timeout of 1 s inside ``wait_for(..., 5)``, while another
    task sleeps hours: the command awaiting its reply holds time, which runs with real time
    until the server answers None (no jump to the client's deadline)."""

    async def main():
        async with (
            redis_client(redis_url) as redis,
            key_prefix(redis) as p,
            sleeping_hours() as sleeper,
        ):
            watch = Stopwatch()
            assert await asyncio.wait_for(redis.blpop([p + "empty"], timeout=1), 5) is None
            assert 0.9 <= watch.elapsed < 5
            assert sleeper.hours == 0
            await assert_time_jumps(sleeper)

    vloop.run_until_complete(main())


def test_redis_timeout_fires_at_its_virtual_deadline(vloop, redis_url):
    """A ``BLPOP`` blocking 2 s in the server inside ``wait_for(..., 0.3)`` times out 0.3
    virtual seconds after it began (time ran with real time while it awaited its reply); the
    client then answers the next command."""

    async def main():
        async with (
            redis_client(redis_url) as redis,
            key_prefix(redis) as p,
            sleeping_hours() as sleeper,
        ):
            watch = Stopwatch()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(redis.blpop([p + "empty"], timeout=2), 0.3)
            assert 0.3 - 1e-9 <= watch.elapsed <= 0.3 + LATE_SLACK
            assert await asyncio.wait_for(redis.ping(), SHORT) is True
            assert sleeper.hours == 0
            await assert_time_jumps(sleeper)

    vloop.run_until_complete(main())
