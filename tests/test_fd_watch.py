"""Watching file descriptors: add_reader / add_writer / remove_reader / remove_writer with
int fds and objects with fileno(), invalid arguments, replacing a callback, return values,
level-triggered readiness and error handling.

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
"""

import asyncio
import contextlib
import errno
import gc
import os
import socket
import weakref

import pytest


class FileLike:
    """Not a socket: just an object with fileno()."""

    def __init__(self, fd):
        self._fd = fd

    def fileno(self):
        return self._fd

    def __repr__(self):
        return f"FileLike({self._fd!r})"


class CallbackObject:
    def __call__(self, *args):
        pass


def run_until(loop, predicate, timeout=5.0):
    """Run the loop until predicate() is true (checked after every callback that ran)."""
    future = loop.create_future()

    def check():
        if predicate():
            if not future.done():
                future.set_result(None)
        else:
            loop.call_later(0.001, check)

    loop.call_soon(check)
    safety = loop.call_later(timeout, lambda: future.done() or future.set_exception(TimeoutError()))
    try:
        loop.run_until_complete(future)
    finally:
        safety.cancel()


def run_until_stopped(loop, timeout=5.0):
    """Run the loop until a callback stops it, or for ``timeout`` seconds at most."""
    safety = loop.call_later(timeout, loop.stop)
    try:
        loop.run_forever()
    finally:
        safety.cancel()


def watch_with_a_callback_object(fileobj, *add_methods):
    """Watches ``fileobj`` with a new ``CallbackObject`` through each of ``add_methods``
    (``loop.add_reader``...) and returns only a weak reference to it: the loop holds the rest."""
    callback = CallbackObject()
    for add in add_methods:
        add(fileobj, callback)
    return weakref.ref(callback)


def as_file_object(sock, as_what):
    """``sock`` as the kind of file object named by ``as_what``."""
    return {"int": sock.fileno(), "socket": sock, "fileno object": FileLike(sock.fileno())}[as_what]


def call_watch_method(loop, method, fileobj):
    """``loop.<method>(fileobj)``, with a callback for the add_* methods."""
    args = (fileobj, print) if method.startswith("add") else (fileobj,)
    return getattr(loop, method)(*args)


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_what", ["int", "socket", "fileno object"])
def test_reader_is_called_with_its_arguments_when_data_arrives(loop, pair, as_what):
    a, b = pair
    target = as_file_object(a, as_what)
    received = []

    def on_readable(tag, extra):
        received.append((tag, extra, a.recv(100)))

    assert loop.add_reader(target, on_readable, "tag", 2) is None
    loop.call_soon(b.send, b"hello")
    run_until(loop, lambda: received)
    assert received == [("tag", 2, b"hello")]
    assert loop.remove_reader(target) is True
    assert loop.remove_reader(target) is False


def test_reader_is_not_called_without_data(loop, pair):
    a, _b = pair
    calls = []
    loop.add_reader(a, calls.append, 1)
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert calls == []
    assert loop.remove_reader(a)


def test_reader_is_level_triggered(loop, pair):
    a, b = pair
    calls = []

    def on_readable():
        calls.append(None)  # does not consume the data: called again every iteration
        if len(calls) == 3:
            loop.stop()

    loop.add_reader(a, on_readable)
    b.send(b"x")
    run_until_stopped(loop)
    loop.remove_reader(a)
    assert len(calls) == 3
    assert a.recv(10) == b"x"


def test_reader_sees_end_of_file(loop, pair):
    a, b = pair
    received = []

    def on_readable():
        received.append(a.recv(100))
        loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    b.shutdown(socket.SHUT_WR)
    run_until(loop, lambda: received)
    assert received == [b""]


def test_reader_on_a_pipe(loop):
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        received = []
        loop.add_reader(r, lambda: received.append(os.read(r, 100)))
        loop.call_soon(os.write, w, b"through a pipe")
        run_until(loop, lambda: received)
        assert received == [b"through a pipe"]
        assert loop.remove_reader(r)
    finally:
        os.close(r)
        os.close(w)


def test_adding_a_reader_again_replaces_the_callback_and_releases_the_old_one(loop, pair):
    a, b = pair
    old_ref = watch_with_a_callback_object(a, loop.add_reader)
    calls = []
    loop.add_reader(a, lambda: calls.append(a.recv(10)))
    assert old_ref() is None
    b.send(b"data")
    run_until(loop, lambda: calls)
    assert calls == [b"data"]
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_remove_reader_releases_the_callback(loop, pair):
    a, _ = pair
    ref = watch_with_a_callback_object(a, loop.add_reader)
    assert ref() is not None
    assert loop.remove_reader(a)
    assert ref() is None


def test_remove_reader_by_int_after_adding_by_object(loop, pair):
    a, _ = pair
    loop.add_reader(a, print)
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a) is False


def test_reader_can_remove_itself(loop, pair):
    a, b = pair
    calls = []

    def once():
        calls.append(None)
        assert loop.remove_reader(a) is True

    loop.add_reader(a, once)
    b.send(b"data stays unread")
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert calls == [None]


def test_reader_exception_goes_to_the_handler_and_the_reader_stays(loop, pair):
    a, b = pair
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def failing():
        if len(contexts) >= 1:
            a.recv(100)
            loop.remove_reader(a)
            loop.stop()
        raise ZeroDivisionError("reader")

    loop.add_reader(a, failing)
    b.send(b"x")
    run_until_stopped(loop)
    assert len(contexts) == 2
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert contexts[0]["message"].startswith("Exception in callback ")
    assert "handle" in contexts[0]


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_what", ["int", "socket", "fileno object"])
def test_writer_is_called_when_writable(loop, pair, as_what):
    a, _ = pair
    target = as_file_object(a, as_what)
    calls = []

    def on_writable(arg):
        calls.append(arg)
        loop.remove_writer(target)

    assert loop.add_writer(target, on_writable, "w") is None
    run_until(loop, lambda: calls)
    assert calls == ["w"]
    assert loop.remove_writer(target) is False


def test_writer_is_level_triggered(loop, pair):
    a, _ = pair
    calls = []

    def on_writable():
        calls.append(None)
        if len(calls) == 3:
            loop.remove_writer(a)
            loop.stop()

    loop.add_writer(a, on_writable)
    run_until_stopped(loop)
    assert len(calls) == 3


def test_writer_waits_for_a_full_buffer_to_drain(loop, pair):
    a, b = pair
    try:
        while True:
            a.send(b"x" * 65536)
    except BlockingIOError:
        pass
    calls = []
    loop.add_writer(a, lambda: (calls.append(None), loop.remove_writer(a)))
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert calls == []  # still full

    def drain():
        try:
            while b.recv(1 << 20):
                pass
        except BlockingIOError:
            pass

    loop.add_reader(b, drain)
    run_until(loop, lambda: calls)
    loop.remove_reader(b)
    assert calls == [None]


def test_reader_and_writer_on_the_same_fd_are_independent(loop, pair):
    a, b = pair
    events = []

    def on_writable():
        events.append("w")
        loop.remove_writer(a)

    loop.add_reader(a, lambda: events.append(("r", a.recv(10))))
    loop.add_writer(a, on_writable)
    run_until(loop, lambda: "w" in events)
    assert loop.remove_writer(a) is False
    b.send(b"r")
    run_until(loop, lambda: ("r", b"r") in events)
    assert loop.remove_reader(a) is True
    assert events == ["w", ("r", b"r")]


def test_adding_a_writer_again_replaces_the_callback_and_releases_the_old_one(loop, pair):
    a, _ = pair
    old_ref = watch_with_a_callback_object(a, loop.add_writer)
    calls = []
    loop.add_writer(a, lambda: (calls.append("new"), loop.remove_writer(a)))
    assert old_ref() is None
    run_until(loop, lambda: calls)
    assert calls == ["new"]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

INVALID_OBJECTS = [object(), "not a file", 1.5, None, FileLike("abc")]
INVALID_OBJECT_IDS = ["object", "str", "float", "None", "FileLike"]


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
@pytest.mark.parametrize("obj", INVALID_OBJECTS, ids=INVALID_OBJECT_IDS)
def test_add_rejects_invalid_file_objects(loop, method, obj):
    with pytest.raises(ValueError) as info:
        getattr(loop, method)(obj, print)
    assert str(info.value) == f"Invalid file object: {obj!r}"


@pytest.mark.parametrize("method", ["remove_reader", "remove_writer"])
@pytest.mark.parametrize("obj", INVALID_OBJECTS, ids=INVALID_OBJECT_IDS)
def test_remove_rejects_invalid_file_objects(loop, method, obj):
    with pytest.raises(ValueError) as info:
        getattr(loop, method)(obj)
    assert str(info.value) == f"Invalid file object: {obj!r}"


@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
@pytest.mark.parametrize("fd", [-1, FileLike(-1)], ids=["-1", "fileno()=-1"])
def test_negative_file_descriptor_is_rejected(loop, method, fd):
    with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
        call_watch_method(loop, method, fd)


def test_remove_of_a_never_watched_fd_returns_false(loop, pair):
    a, _ = pair
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(12345) is False


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_on_a_closed_loop_raises(loop, pair, method):
    loop.close()
    with pytest.raises(RuntimeError, match=r"^Event loop is closed$"):
        getattr(loop, method)(pair[0], print)


def test_remove_on_a_closed_loop_returns_false(loop, pair):
    a, _ = pair
    loop.add_reader(a, print)
    loop.add_writer(a, print)
    loop.close()
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(a) is False


def test_close_stops_watching_and_releases_callbacks(loop, pair):
    a, _ = pair
    ref = watch_with_a_callback_object(a, loop.add_reader, loop.add_writer)
    loop.close()
    gc.collect()
    assert ref() is None


def closed_fd():
    """A descriptor number that is not open."""
    sock = socket.socket()
    fd = sock.fileno()
    sock.close()
    return fd


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_of_a_closed_descriptor_raises_and_leaves_no_registration(loop, method):
    fd = closed_fd()
    with pytest.raises(OSError):
        getattr(loop, method)(fd, print)
    assert getattr(loop, method.replace("add", "remove"))(fd) is False


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_of_a_regular_file_raises_permission_error_and_leaves_no_registration(
    loop, method, tmp_path
):
    # epoll cannot watch regular files.
    with open(tmp_path / "file", "wb") as f:
        with pytest.raises(PermissionError):
            getattr(loop, method)(f, print)
        assert getattr(loop, method.replace("add", "remove"))(f) is False


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_of_a_closed_descriptor_raises_oserror_with_ebadf(loop, method):
    with pytest.raises(OSError) as info:
        getattr(loop, method)(closed_fd(), print)
    assert info.value.errno == errno.EBADF
    assert info.value.args == (errno.EBADF, os.strerror(errno.EBADF))


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_of_a_regular_file_raises_permission_error_with_eperm(loop, method, tmp_path):
    with open(tmp_path / "file", "wb") as f:
        with pytest.raises(PermissionError) as info:
            getattr(loop, method)(f, print)
    assert info.value.errno == errno.EPERM
    assert info.value.args == (errno.EPERM, os.strerror(errno.EPERM))


@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
def test_closed_socket_object_is_an_invalid_descriptor(loop, method):
    sock = socket.socket()
    sock.close()
    with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
        call_watch_method(loop, method, sock)


class FilenoRaises:
    def fileno(self):
        raise LookupError("fileno() failed")


@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
def test_other_errors_of_fileno_propagate(loop, method):
    with pytest.raises(LookupError, match="fileno"):
        call_watch_method(loop, method, FilenoRaises())


# --------------------------------------------------------------------------------------------
# Changes made during an iteration
# --------------------------------------------------------------------------------------------


def test_writer_removed_by_the_reader_of_the_same_iteration_does_not_run(loop, pair):
    a, b = pair
    b.send(b"x")  # a is readable and writable: both callbacks are due in the same iteration
    calls = []

    def on_readable():
        calls.append("reader")
        loop.remove_writer(a)
        loop.remove_reader(a)

    def on_writable():
        calls.append("writer")
        loop.remove_writer(a)
        loop.remove_reader(a)

    loop.add_reader(a, on_readable)
    loop.add_writer(a, on_writable)
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert calls in (["reader"], ["writer"])  # whichever ran first cancelled the other


def test_reader_removed_by_an_earlier_callback_of_the_iteration_does_not_run(loop):
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        (a1, b1), (a2, b2) = pairs
        b1.send(b"1")
        b2.send(b"2")
        calls = []

        def make(me, other):
            def callback():
                calls.append(me.fileno())
                loop.remove_reader(me)
                loop.remove_reader(other)

            return callback

        loop.add_reader(a1, make(a1, a2))
        loop.add_reader(a2, make(a2, a1))
        loop.call_later(0.02, loop.stop)
        loop.run_forever()
        assert len(calls) == 1
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_reader_replaced_by_an_earlier_callback_of_the_iteration_runs_the_new_callback_later(
    loop, pair
):
    a, b = pair
    b.send(b"x")
    calls = []

    def new():
        calls.append("new")
        loop.remove_reader(a)
        loop.stop()

    def old():
        calls.append("old")
        loop.add_reader(a, new)

    loop.add_reader(a, old)
    run_until_stopped(loop)
    assert calls == ["old", "new"]


def test_keyboard_interrupt_from_a_reader_propagates_and_the_reader_stays(loop, pair):
    a, b = pair
    b.send(b"x")
    calls = []

    def on_readable():
        calls.append(None)
        if len(calls) == 1:
            raise KeyboardInterrupt
        a.recv(10)
        loop.remove_reader(a)
        loop.stop()

    loop.add_reader(a, on_readable)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    run_until_stopped(loop)
    assert len(calls) == 2


def test_many_ready_descriptors_all_get_their_callback(loop):
    pairs = [socket.socketpair() for _ in range(200)]
    try:
        called = set()

        def on_readable(sock):
            called.add(sock.fileno())
            sock.recv(10)
            loop.remove_reader(sock)
            if len(called) == len(pairs):
                loop.stop()

        for a, b in pairs:
            a.setblocking(False)
            loop.add_reader(a, on_readable, a)
            b.send(b"x")
        run_until_stopped(loop, timeout=10)
        assert called == {a.fileno() for a, _ in pairs}
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# --------------------------------------------------------------------------------------------
# File objects closed while watched
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["reader", "writer"])
def test_remove_finds_a_socket_closed_since_it_was_added(loop, side):
    a, b = socket.socketpair()
    try:
        watched = watch_with_a_callback_object(a, getattr(loop, f"add_{side}"))
        a.close()  # a.fileno() is -1 from now on
        assert getattr(loop, f"remove_{side}")(a) is True
        gc.collect()
        assert watched() is None
        # Gone now: a closed socket that is not registered is an invalid descriptor again.
        with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
            getattr(loop, f"remove_{side}")(a)
    finally:
        b.close()


def test_removing_one_side_of_a_closed_socket_keeps_the_other(oxloop_loop):
    """(Stock asyncio raises ``OSError(EBADF)`` here, from its selector's ``epoll.modify``, and
    drops both sides; see docs/compatibility.md.)"""
    loop = oxloop_loop
    a, b = socket.socketpair()
    try:
        loop.add_reader(a, print)
        loop.add_writer(a, print)
        a.close()
        assert loop.remove_reader(a) is True
        assert loop.remove_reader(a) is False
        assert loop.remove_writer(a) is True
    finally:
        b.close()


def test_a_socket_closed_then_removed_frees_its_number_for_the_next_socket(loop):
    """anyio's ``aclose()``: the socket is closed, then a done-callback removes its reader. The
    next socket, which gets the same descriptor number, is watched as usual."""
    a, b = socket.socketpair()
    loop.add_reader(a, print)
    number = a.fileno()
    a.close()
    b.close()
    loop.call_soon(loop.remove_reader, a)
    run_until_stopped(loop, timeout=0.05)
    c, d = socket.socketpair()
    try:
        received = []
        fds = {c.fileno(), d.fileno()}
        assert number in fds
        reused = c if c.fileno() == number else d
        other = d if reused is c else c
        loop.add_reader(reused, lambda: received.append(reused.recv(10)) or loop.stop())
        other.send(b"hello")
        run_until_stopped(loop)
        assert received == [b"hello"]
        assert loop.remove_reader(reused) is True
    finally:
        c.close()
        d.close()


@contextlib.contextmanager
def the_next_owner_of_a_closed_descriptor(*add_methods):
    """Watches one end of a new socket pair through each of ``add_methods`` and closes the pair
    without removing the watch; yields a weak reference to the watch's callback, the next socket
    given the watched descriptor's number, and that socket's peer (closed afterwards)."""
    a, b = socket.socketpair()
    stale = watch_with_a_callback_object(a, *add_methods)
    number = a.fileno()
    a.close()
    b.close()
    c, d = socket.socketpair()
    try:
        reused, other = (c, d) if c.fileno() == number else (d, c)
        assert reused.fileno() == number
        yield stale, reused, other
    finally:
        c.close()
        d.close()


@pytest.mark.parametrize("side", ["reader", "writer"])
def test_a_descriptor_closed_while_watched_can_be_watched_again_by_its_next_owner(
    oxloop_loop, side
):
    """Never removed: the kernel dropped the old file from epoll when it was closed. The next
    file with the same number is watched for its new callback alone, and the old callbacks are
    released. (Stock asyncio keeps the stale key: the new watch either never fires or raises
    FileNotFoundError; see docs/compatibility.md.)"""
    loop = oxloop_loop
    with the_next_owner_of_a_closed_descriptor(loop.add_reader, loop.add_writer) as (
        stale,
        reused,
        other,
    ):
        calls = []
        if side == "reader":
            other.send(b"x")
        getattr(loop, f"add_{side}")(reused, lambda: calls.append(side) or loop.stop())
        run_until_stopped(loop)
        assert calls == [side]
        gc.collect()
        assert stale() is None
        assert getattr(loop, f"remove_{side}")(reused) is True
        for method in ("remove_reader", "remove_writer"):
            assert getattr(loop, method)(reused) is False


def test_a_transport_can_take_a_descriptor_closed_while_watched(oxloop_loop):
    """A socket closed without removing its reader; a transport made on the next socket with
    the same number works (stock asyncio: see the test above)."""
    loop = oxloop_loop
    with the_next_owner_of_a_closed_descriptor(loop.add_reader) as (stale, reused, other):

        async def main():
            reader, writer = await asyncio.open_connection(sock=reused)
            other.send(b"line\n")
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return line

        assert loop.run_until_complete(main()) == b"line\n"
        gc.collect()
        assert stale() is None
