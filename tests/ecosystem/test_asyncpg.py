"""asyncpg against a real PostgreSQL server, on stock asyncio and on oxloop.

Every test runs once per loop kind (the ``loop`` fixture) and talks to the server of
``scripts/services.sh`` (or ``OXLOOP_TEST_PG_DSN``); without a server it is skipped. The
tests cover what asyncpg asks of a loop: its protocol on a TCP (or Unix) transport with large
reads and writes, many connections at once, callbacks from the server (notifications), and
cancellation (a timed-out query is cancelled through a second connection). Each test works in
temporary tables or in a schema of its own, dropped at the end, so runs never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import io
import json
import os
import random

import asyncpg
import pytest

import services

# A limit for each test's coroutine, well under pytest-timeout's, for a clearer failure.
TEST_TIMEOUT = 20


def run(loop, coro):
    """Runs ``coro`` to completion on ``loop``, failing with TimeoutError if it hangs."""
    return loop.run_until_complete(asyncio.wait_for(coro, TEST_TIMEOUT))


@contextlib.asynccontextmanager
async def connection(dsn, **kwargs):
    """An asyncpg connection, closed at exit."""
    conn = await asyncpg.connect(dsn, **kwargs)
    try:
        yield conn
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def own_schema(conn):
    """A fresh schema (its name), dropped with its contents at exit."""
    name = services.unique_name("oxl_pg")
    await conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        await conn.execute(f"DROP SCHEMA {name} CASCADE")


def test_parameters_and_types_round_trip(loop, postgres_dsn):
    """Parameters of several types reach the server intact (it computes on them) and come
    back as the same Python values: int, text, a 1 MiB bytea, timestamps, arrays, jsonb."""
    blob = os.urandom(1024 * 1024)
    aware = datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.UTC)
    naive = datetime.datetime(1999, 12, 31, 12, 0, 0)
    document = {"name": "oxloop", "tags": ["rust", "asyncio"], "nested": {"n": 3, "ok": True}}

    async def main():
        async with connection(postgres_dsn) as conn:
            await conn.set_type_codec(
                "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )
            row = await conn.fetchrow(
                """SELECT $1::int8 + 1 AS next, $2::text AS text, length($2::text) AS text_len,
                          $3::bytea AS blob, md5($3::bytea) AS blob_md5,
                          length($3::bytea) AS blob_len,
                          $4::timestamptz AS aware, $4::timestamptz + interval '2 seconds' AS later,
                          $5::timestamp AS naive,
                          $6::int4[] AS numbers, array_length($6::int4[], 1) AS numbers_len,
                          $7::text[] AS words,
                          $8::jsonb AS document, $8::jsonb -> 'nested' ->> 'n' AS nested_n""",
                2**40,
                "ünïcode text",
                blob,
                aware,
                naive,
                [1, 2, 3, -4],
                ["a", None, "c"],
                document,
            )
            return dict(row)

    row = run(loop, main())
    assert row["next"] == 2**40 + 1
    assert row["text"] == "ünïcode text"
    assert row["text_len"] == len("ünïcode text")
    assert row["blob"] == blob
    assert row["blob_md5"] == hashlib.md5(blob).hexdigest()
    assert row["blob_len"] == len(blob)
    assert row["aware"] == aware
    assert row["later"] == aware + datetime.timedelta(seconds=2)
    assert row["naive"] == naive
    assert row["numbers"] == [1, 2, 3, -4]
    assert row["numbers_len"] == 4
    assert row["words"] == ["a", None, "c"]
    assert row["document"] == document
    assert row["nested_n"] == "3"


def test_executemany_thousands_of_rows(loop, postgres_dsn):
    """``executemany`` inserts 5000 rows; the server counts and sums all of them."""
    rows = [(i, f"row {i}", i * 0.5) for i in range(5000)]

    async def main():
        async with connection(postgres_dsn) as conn:
            await conn.execute(
                "CREATE TEMP TABLE items (id int PRIMARY KEY, label text, weight float8)"
            )
            await conn.executemany("INSERT INTO items VALUES ($1, $2, $3)", rows)
            return await conn.fetchrow(
                "SELECT count(*) AS n, sum(id) AS ids, sum(weight) AS weight,"
                " count(DISTINCT label) AS labels FROM items"
            )

    result = run(loop, main())
    assert result["n"] == 5000
    assert result["ids"] == sum(range(5000))
    assert result["weight"] == sum(i * 0.5 for i in range(5000))
    assert result["labels"] == 5000


def test_pool_runs_queries_concurrently(loop, postgres_dsn):
    """A pool of 4 connections has 4 queries in flight at once (the server sees all four
    waiting on the same lock, from 4 distinct backends), then serves 200 concurrent queries
    with correct results."""
    size = 4
    # A key of this test only (below 2**31: pg_locks shows it whole in objid).
    lock_key = random.randrange(1, 2**31)

    async def waiting_backends(conn):
        return await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objid = $1",
            lock_key,
        )

    async def main():
        async with (
            connection(postgres_dsn) as holder,
            asyncpg.create_pool(postgres_dsn, min_size=size, max_size=size) as pool,
        ):
            # While `holder` has the lock exclusively, each pool query blocks in the server.
            await holder.execute("SELECT pg_advisory_lock($1)", lock_key)
            blocked = [
                asyncio.ensure_future(
                    pool.fetchval(
                        "SELECT pg_backend_pid() "
                        "FROM (SELECT pg_advisory_xact_lock_shared($1)) AS l",
                        lock_key,
                    )
                )
                for _ in range(size)
            ]
            for _ in range(200):
                if await waiting_backends(holder) == size:
                    break
                await asyncio.sleep(0.05)
            all_waiting = await waiting_backends(holder)
            await holder.execute("SELECT pg_advisory_unlock($1)", lock_key)
            pids = await asyncio.gather(*blocked)
            squares = await asyncio.gather(
                *(pool.fetchval("SELECT $1::int * $1::int", i) for i in range(200))
            )
            return all_waiting, pids, squares

    all_waiting, pids, squares = run(loop, main())
    assert all_waiting == size
    assert len(set(pids)) == size
    assert squares == [i * i for i in range(200)]


def test_copy_records_in_and_query_out(loop, postgres_dsn, tmp_path):
    """``copy_records_to_table`` loads 10000 records; ``copy_from_query`` writes them back as
    CSV into a BytesIO and ``copy_from_table`` into a file, both byte for byte as expected."""
    records = [(i, f"name {i}", bytes([i % 256]) * 3) for i in range(10000)]
    expected_csv = "".join(f"{i},name {i}\n" for i in range(10000)).encode()
    out_file = tmp_path / "copy.csv"

    async def main():
        async with connection(postgres_dsn) as conn, own_schema(conn) as schema:
            await conn.execute(f"CREATE TABLE {schema}.things (id int, name text, raw bytea)")
            status = await conn.copy_records_to_table(
                "things", schema_name=schema, records=records, columns=["id", "name", "raw"]
            )
            in_table = await conn.fetchrow(
                f"SELECT count(*) AS n, sum(length(raw)) AS raw_bytes, max(name) AS last_name"
                f" FROM {schema}.things"
            )
            buffer = io.BytesIO()
            await conn.copy_from_query(
                f"SELECT id, name FROM {schema}.things WHERE id < $1 ORDER BY id",
                10000,
                output=buffer,
                format="csv",
            )
            await conn.copy_from_table(
                "things",
                schema_name=schema,
                columns=["id", "name"],
                output=str(out_file),
                format="csv",
            )
            return status, in_table, buffer.getvalue()

    status, in_table, copied = run(loop, main())
    assert status == "COPY 10000"
    assert in_table["n"] == 10000
    assert in_table["raw_bytes"] == 30000
    assert in_table["last_name"] == "name 9999"
    assert copied == expected_csv
    assert sorted(out_file.read_bytes().splitlines()) == sorted(expected_csv.splitlines())


def test_listen_notify_delivers_payloads_in_order(loop, postgres_dsn):
    """A listener receives, in order, the 100 payloads another connection sends on its
    channel, and nothing after removing its listener."""
    channel = services.unique_name("oxl_chan")
    payloads = [f"message {i} " + "x" * i for i in range(100)]

    async def main():
        received = asyncio.Queue()

        def on_notify(conn, pid, chan, payload):
            received.put_nowait((chan, payload))

        async with connection(postgres_dsn) as listener, connection(postgres_dsn) as sender:
            await listener.add_listener(channel, on_notify)
            for payload in payloads:
                await sender.execute("SELECT pg_notify($1, $2)", channel, payload)
            got = [await received.get() for _ in payloads]
            await listener.remove_listener(channel, on_notify)
            await sender.execute("SELECT pg_notify($1, 'after removal')", channel)
            # A round trip on the listener's connection: a notification sent before it would
            # have been read by now.
            await listener.fetchval("SELECT 1")
            return got, received.qsize()

    got, left = run(loop, main())
    assert got == [(channel, payload) for payload in payloads]
    assert left == 0


def test_timeout_cancels_query_and_connection_stays_usable(loop, postgres_dsn):
    """``pg_sleep(10)`` with ``timeout=0.2`` raises TimeoutError, the server cancels the
    query (it no longer runs), and the same connection answers the next queries."""

    async def main():
        async with connection(postgres_dsn) as conn, connection(postgres_dsn) as observer:
            pid = conn.get_server_pid()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT pg_sleep(10)", timeout=0.2)
            after = await conn.fetchval("SELECT $1::int + 1", 41)
            still_sleeping = await observer.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'"
                " AND state = 'active'",
                pid,
            )
            in_transaction = conn.is_in_transaction()
            return after, still_sleeping, in_transaction

    after, still_sleeping, in_transaction = run(loop, main())
    assert after == 42
    assert still_sleeping == 0
    assert not in_transaction


def test_transactions_commit_and_roll_back(loop, postgres_dsn):
    """A transaction that raises is rolled back, one that ends is committed, and a failed
    savepoint (nested transaction) undoes only its own rows."""

    class Abort(Exception):
        pass

    async def main():
        async with connection(postgres_dsn) as conn:
            await conn.execute("CREATE TEMP TABLE ledger (entry text)")
            with pytest.raises(Abort):
                async with conn.transaction():
                    await conn.execute("INSERT INTO ledger VALUES ('rolled back')")
                    raise Abort
            async with conn.transaction():
                await conn.execute("INSERT INTO ledger VALUES ('outer')")
                with pytest.raises(asyncpg.UniqueViolationError):
                    async with conn.transaction():
                        await conn.execute("INSERT INTO ledger VALUES ('inner')")
                        await conn.execute("CREATE TEMP TABLE dup (x int PRIMARY KEY)")
                        await conn.execute("INSERT INTO dup VALUES (1), (1)")
                await conn.execute("INSERT INTO ledger VALUES ('after savepoint')")
            entries = await conn.fetch("SELECT entry FROM ledger ORDER BY entry")
            return [r["entry"] for r in entries], conn.is_in_transaction()

    entries, in_transaction = run(loop, main())
    assert entries == ["after savepoint", "outer"]
    assert not in_transaction


def test_prepared_statements_and_cursors(loop, postgres_dsn):
    """A prepared statement runs with different parameters and describes itself; a cursor
    streams 5000 rows with a small prefetch, and a manual cursor fetches and skips."""

    async def main():
        async with connection(postgres_dsn) as conn:
            stmt = await conn.prepare(
                "SELECT n, n * $2::int AS scaled FROM generate_series(1, $1::int) AS n"
            )
            parameters = [t.name for t in stmt.get_parameters()]
            columns = [a.name for a in stmt.get_attributes()]
            small = [tuple(r) for r in await stmt.fetch(3, 10)]
            big_sum = sum(r["scaled"] for r in await stmt.fetch(1000, 2))
            async with conn.transaction():
                streamed = [
                    r["n"]
                    async for r in conn.cursor("SELECT generate_series(1, 5000) AS n", prefetch=64)
                ]
                cursor = await conn.cursor("SELECT generate_series(1, 100) AS n")
                first = [r["n"] for r in await cursor.fetch(5)]
                skipped = await cursor.forward(10)
                following = await cursor.fetchrow()
            return parameters, columns, small, big_sum, streamed, first, skipped, following["n"]

    parameters, columns, small, big_sum, streamed, first, skipped, following = run(loop, main())
    assert parameters == ["int4", "int4"]
    assert columns == ["n", "scaled"]
    assert small == [(1, 10), (2, 20), (3, 30)]
    assert big_sum == 2 * sum(range(1, 1001))
    assert streamed == list(range(1, 5001))
    assert first == [1, 2, 3, 4, 5]
    assert skipped == 10
    assert following == 16


def test_connect_over_unix_socket(loop, postgres_dsn):
    """asyncpg connects through the server's Unix socket (a Unix transport of the loop) and
    gets a large result back over it."""
    if not services.PG_SOCKET_DIR.is_dir():
        pytest.skip(
            f"no PostgreSQL socket directory {services.PG_SOCKET_DIR} "
            "(scripts/services.sh's server only)"
        )

    async def main():
        _, port = services.address(postgres_dsn, 5432)
        async with connection(postgres_dsn, host=str(services.PG_SOCKET_DIR), port=port) as conn:
            address = await conn.fetchval("SELECT inet_client_addr()")
            text = await conn.fetchval("SELECT repeat('ox', 500000)")
            return address, text

    address, text = run(loop, main())
    assert address is None  # a Unix-socket client has no address
    assert text == "ox" * 500000
