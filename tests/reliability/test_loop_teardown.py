"""Tearing a loop down with work left: closing it with pending callbacks and timers, open
transports and servers, a running executor job; the ResourceWarnings of what was never
closed; a forked child running a new loop; and ``asyncio.Runner``'s teardown.

Every test runs on stock asyncio and on oxloop (see tests/conftest.py): asyncio's behaviour,
whatever it is (a RuntimeError, a warning, nothing at all), is the expectation. Objects are
"released" when a weak reference to them dies after ``gc.collect()``; file descriptors are
counted in /proc/self/fd.
"""

import asyncio
import gc
import os
import signal
import threading
import traceback
import warnings
import weakref

import pytest

from helpers.loops import LOOP_FACTORIES, LOOP_TYPES
from reliability_helpers import fd_count


class Token:
    """An argument of a callback: alive as long as something keeps the callback."""


class Lifecycle(asyncio.Protocol):
    """Records connection_made / connection_lost in ``events``."""

    def __init__(self, events):
        self.events = events
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def connection_lost(self, exc):
        self.events.append("lost")


def resource_warnings(caught):
    """The texts of the ResourceWarnings among ``caught`` (``warnings.catch_warnings``)."""
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


async def connection_pair(loop, events):
    """A server and one connection to it, both ends made: returns (server, client transport,
    server-side transport)."""
    server_ends = []

    def server_side():
        protocol = Lifecycle(events)
        server_ends.append(protocol)
        return protocol

    server = await loop.create_server(server_side, "127.0.0.1", 0)
    transport, _ = await loop.create_connection(
        lambda: Lifecycle(events), *server.sockets[0].getsockname()
    )
    while not server_ends or server_ends[0].transport is None:
        await asyncio.sleep(0.001)
    return server, transport, server_ends[0].transport


# --------------------------------------------------------------------------------------------
# Closing with work left
# --------------------------------------------------------------------------------------------


def test_close_drops_pending_callbacks_and_timers_unrun(loop):
    """Callbacks still pending at close never run, and close releases them (their arguments
    die with ``gc``): call_soon / call_later scheduled by a callback that then stopped the
    loop, and, from outside the loop, call_soon, call_later, call_at, call_soon_threadsafe
    from a thread and the done callback of a completed future."""
    ran = []
    tokens = []

    def callback(token):
        ran.append(token)

    def schedule(how):
        token = Token()
        tokens.append(weakref.ref(token))
        how(token)

    def from_inside():
        schedule(lambda token: loop.call_soon(callback, token))
        schedule(lambda token: loop.call_later(0, callback, token))
        schedule(lambda token: loop.call_later(3600, callback, token))
        loop.stop()  # what it scheduled waits for a next iteration that never comes

    loop.call_soon(from_inside)
    loop.run_forever()

    for _ in range(100):
        schedule(lambda token: loop.call_soon(callback, token))
        schedule(lambda token: loop.call_later(3600, callback, token))
        schedule(lambda token: loop.call_at(loop.time() + 3600, callback, token))

    def threadsafe(token):
        loop.call_soon_threadsafe(callback, token)

    thread = threading.Thread(target=schedule, args=(threadsafe,))
    thread.start()
    thread.join()
    future = loop.create_future()
    schedule(lambda token: future.add_done_callback(lambda f: callback(token)))  # noqa: F821 (called at once, before the del)
    future.set_result(None)  # schedules its done callback
    del future

    loop.close()
    gc.collect()
    assert ran == []
    assert len(tokens) == 305
    assert [ref for ref in tokens if ref() is not None] == []


def test_close_with_an_open_connection_and_server(loop_factory):
    """Closing a loop with a server and a connection still open: no connection_lost is ever
    called (nothing runs on a closed loop); ``server.close()`` still works afterwards and
    releases the listening socket; the two transports, when collected, each warn
    "unclosed transport" and release their sockets, so every fd the test made is back."""
    before = fd_count()
    loop = loop_factory()
    events = []
    server, client, server_side = loop.run_until_complete(connection_pair(loop, events))
    assert events == ["made", "made"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop.close()
        open_after_close = fd_count()
        server.close()
        assert not server.is_serving()
        assert fd_count() == open_after_close - 1
        del client, server_side, server
        gc.collect()
    messages = resource_warnings(caught)
    assert len([m for m in messages if m.startswith("unclosed transport")]) == 2, messages
    assert events == ["made", "made"]
    assert fd_count() == before


def test_transport_close_after_loop_close_raises(loop):
    """After ``loop.close()``, closing a transport still open raises asyncio's
    ``RuntimeError('Event loop is closed')`` (its connection_lost cannot be scheduled)."""
    events = []
    server, client, server_side = loop.run_until_complete(connection_pair(loop, events))
    # Not recorded: a recorded ResourceWarning would keep its transport alive.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        loop.close()
        server.close()
        try:
            client.close()
        except RuntimeError as exc:  # not pytest.raises: its traceback would keep the transport
            error = str(exc)
        else:
            error = None
        # The transports' finalizers close their sockets (the server's protocol factory
        # holds the server side).
        del client, server_side, server
        gc.collect()
    assert error == "Event loop is closed"
    assert events == ["made", "made"]


@pytest.mark.timeout(30)
def test_close_with_a_pending_executor_job(loop, caplog):
    """Closing a loop while a ``run_in_executor`` job is still running returns at once (it
    does not wait for the job); the job then finishes in its worker, which exits; the
    awaiting future stays pending, and nothing is logged or raised about it."""
    started, release = threading.Event(), threading.Event()
    worker = []

    def job():
        worker.append(threading.current_thread())
        started.set()
        release.wait(timeout=20)
        return "job result"

    future = loop.run_in_executor(None, job)
    assert started.wait(timeout=10)
    loop.close()  # would hang here if close waited for the job
    assert worker[0].is_alive()
    release.set()
    worker[0].join(timeout=10)
    assert not worker[0].is_alive()
    assert not future.done()
    assert [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []


# --------------------------------------------------------------------------------------------
# ResourceWarnings of what was never closed
# --------------------------------------------------------------------------------------------


def test_unclosed_server_socket_warns_when_collected(loop_factory):
    """A server left open on a loop that is then closed: collecting it warns about its
    unclosed listening socket, and releases it."""
    before = fd_count()
    loop = loop_factory()
    server = loop.run_until_complete(loop.create_server(asyncio.Protocol, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    loop.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del server
        gc.collect()
    messages = resource_warnings(caught)
    assert [m for m in messages if m.startswith("unclosed <socket.socket") and str(port) in m], (
        messages
    )
    assert fd_count() == before


async def hold_nothing(loop):
    return []


async def hold_a_timer(loop):
    return [loop.call_later(3600, print)]


async def hold_a_server(loop):
    return [await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)]


async def hold_a_connection(loop):
    server, client, server_side = await connection_pair(loop, [])
    # Not server.wait_closed(): from Python 3.12 it waits for the connections to close too.
    server.close()
    return [client, server_side]


@pytest.mark.parametrize("hold", [hold_nothing, hold_a_timer, hold_a_server, hold_a_connection])
def test_unclosed_event_loop_warns_when_collected(loop_kind, hold):
    """A loop dropped without ``close()`` (holding nothing, a timer, a server, or a connection
    whose transports are dropped too) is garbage-collected: it warns "unclosed event loop",
    and every fd of the loop and of what it held is released."""
    before = fd_count()
    loop = LOOP_FACTORIES[loop_kind]()
    held = loop.run_until_complete(hold(loop))
    loop_ref = weakref.ref(loop)
    held_refs = [weakref.ref(obj) for obj in held]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del loop, held
            gc.collect()
        messages = resource_warnings(caught)
        del caught  # its warnings keep their sources (the loop) alive
        gc.collect()
        assert loop_ref() is None, "the loop was not collected"
        assert [m for m in messages if m.startswith("unclosed event loop")], messages
        assert fd_count() == before
    finally:
        with warnings.catch_warnings():  # a loop left alive (an oxloop bug): clean up
            warnings.simplefilter("ignore", ResourceWarning)
            for ref in [loop_ref, *held_refs]:
                if ref() is not None:
                    ref().close()
            gc.collect()


# --------------------------------------------------------------------------------------------
# fork()
# --------------------------------------------------------------------------------------------

CHILD_OK, CHILD_WRONG, CHILD_RAISED = 0, 1, 2  # the forked child's exit codes


async def echo_line(reader, writer):
    """A stream server's handler: sends back one line, then closes."""
    writer.write(await reader.readline())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def echo_round(message):
    """Start a line-echo server on 127.0.0.1, send it ``message`` and return the reply."""
    server = await asyncio.start_server(echo_line, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
    writer.write(message)
    reply = await reader.readline()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return reply


def child_main(kind):
    """In the forked child: a NEW loop of ``kind`` runs a timer, a sleep and an echo over TCP;
    returns the exit code."""
    loop = LOOP_FACTORIES[kind]()
    try:
        fired = []

        async def main():
            loop.call_later(0.001, fired.append, "timer")
            await asyncio.sleep(0.01)
            return await echo_round(b"from the child\n"), type(asyncio.get_running_loop())

        reply, loop_type = loop.run_until_complete(main())
        good = fired == ["timer"] and reply == b"from the child\n" and loop_type is type(loop)
        return CHILD_OK if good and isinstance(loop, LOOP_TYPES[kind]) else CHILD_WRONG
    finally:
        loop.close()


def fork_child(kind):
    """Fork a child running ``child_main(kind)``; returns its pid (the child never returns)."""
    pid = os.fork()
    if pid == 0:
        code = CHILD_RAISED
        try:
            code = child_main(kind)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


async def child_exit_code(pid):
    """Wait (polling, 30 s of loop time at most) for child ``pid``; returns its exit code."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        await asyncio.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child did not exit")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["between runs", "inside a running loop"])
def test_forked_child_runs_a_new_loop_while_the_parent_loop_keeps_working(loop, loop_kind, where):
    """``os.fork()`` with the parent's loop (of either kind) open, between two runs or from a
    coroutine it is running: the child creates a new loop of the same kind and runs a timer
    and a TCP echo on it (exit code 0); meanwhile, and afterwards, the parent's loop runs its
    own echoes, and its server made before the fork still serves."""
    server = loop.run_until_complete(asyncio.start_server(echo_line, "127.0.0.1", 0))
    address = server.sockets[0].getsockname()

    async def ask(message):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(message)
        reply = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return reply

    async def parent(pid):
        if pid is None:
            pid = fork_child(loop_kind)
        code, replies = await asyncio.gather(
            child_exit_code(pid), asyncio.gather(*(ask(b"parent %d\n" % i) for i in range(20)))
        )
        return code, replies, await echo_round(b"after\n")

    pid = fork_child(loop_kind) if where == "between runs" else None
    try:
        code, replies, after = loop.run_until_complete(parent(pid))
    finally:
        server.close()
        loop.run_until_complete(server.wait_closed())
    assert code == CHILD_OK
    assert replies == [b"parent %d\n" % i for i in range(20)]
    assert after == b"after\n"


# --------------------------------------------------------------------------------------------
# asyncio.Runner teardown
# --------------------------------------------------------------------------------------------


def test_runner_teardown_cancels_pending_tasks_and_finalizes_async_generators(
    loop_kind, leak_check
):
    """``asyncio.Runner`` (what ``asyncio.run`` uses) with the loop kind as its factory, whose
    main coroutine returns leaving tasks sleeping, an async generator suspended and the
    default executor started: closing the runner cancels the tasks (their cleanup may still
    await), reports the one whose cleanup fails to the exception handler, then finalizes the
    generator (its ``finally`` may await too), joins the executor's threads and closes the
    loop."""
    events = []
    kept = {}

    async def sleeper(name):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0)
            events.append(f"{name} cancelled")
            raise

    async def failing_cleanup():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ValueError("cleanup failed") from None

    async def counter():
        try:
            for i in range(10):
                yield i
        finally:
            await asyncio.sleep(0)
            events.append("generator finalized")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: events.append(context["message"]))
        kept["loop"] = loop
        for name in ("a", "b"):
            asyncio.ensure_future(sleeper(name))  # noqa: RUF006 (left for the runner to cancel)
        asyncio.ensure_future(failing_cleanup())  # noqa: RUF006 (same)
        kept["generator"] = counter()
        assert await kept["generator"].__anext__() == 0
        assert await asyncio.to_thread(sum, [1, 2]) == 3
        await asyncio.sleep(0)  # the tasks start
        return "main result"

    with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_kind]) as runner:
        assert runner.run(main()) == "main result"
        assert isinstance(kept["loop"], LOOP_TYPES[loop_kind])
        assert events == []
    assert sorted(events[:3]) == [
        "a cancelled",
        "b cancelled",
        "unhandled exception during asyncio.run() shutdown",
    ]
    assert events[3:] == ["generator finalized"]
    assert kept["loop"].is_closed()
