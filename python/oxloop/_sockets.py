"""Low-level socket operations of ``Loop``: ``sock_recv``, ``sock_sendall`` and friends.

Each operation first tries the call directly; only when the socket would block does it watch
the fd (natively, with ``_add_reader``/``_add_writer``) and retry when the fd is ready. When
the operation finishes, fails or is cancelled, the watch is removed — unless another operation
has replaced it in the meantime (the replaced watch is cancelled, which is how we know).
"""

import socket

try:
    import ssl
except ImportError:  # pragma: no cover - Python built without ssl
    ssl = None

_WOULD_BLOCK = (BlockingIOError, InterruptedError)


def _operation(sock, method):
    """``sock.<method>`` looked up now (as asyncio does on each retry), or ``method`` itself
    when it is a callable."""
    return getattr(sock, method) if isinstance(method, str) else method


def _check_socket(sock):
    """Reject what the loop cannot drive: SSL sockets and blocking sockets."""
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")
    if sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")


class SocketOperations:
    """Mixin of ``Loop``: the ``sock_*`` coroutines."""

    def _watch(self, sock, for_writing, method, *args):
        """Watch ``sock`` until ``sock.<method>(*args)`` (or ``method(*args)``) stops raising
        BlockingIOError; return the future of its result and the watch's handle.

        The method is looked up on the socket each time the fd is ready (as asyncio does). The
        watch calls a static method with its arguments (no closure), so a socket waiting idle
        costs little memory. The caller removes the watch with ``_unwatch`` when the wait
        ends, however it ends.
        """
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        add = self._add_writer if for_writing else self._add_reader
        future = self.create_future()
        return future, add(fd, self._retry_sock_operation, future, sock, method, *args)

    def _unwatch(self, fd, for_writing, handle):
        """Remove a watch made by ``_watch`` unless another operation replaced it meanwhile
        (the replaced watch is cancelled, which is how we know)."""
        if not handle.cancelled():
            (self._remove_writer if for_writing else self._remove_reader)(fd)

    async def _when_ready(self, sock, for_writing, method, *args):
        """Wait until ``sock.<method>(*args)`` stops raising BlockingIOError; return its result."""
        fd = sock.fileno()
        future, handle = self._watch(sock, for_writing, method, *args)
        try:
            return await future
        finally:
            self._unwatch(fd, for_writing, handle)
            future = None  # an exception's traceback holds this frame: no cycle through it

    @staticmethod
    def _retry_sock_operation(future, sock, method, *args):
        """The fd is ready: retry the operation, and settle ``future`` unless it would block."""
        if future.done():
            return
        try:
            result = _operation(sock, method)(*args)
        except _WOULD_BLOCK:
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            # The exception's traceback holds this frame: the future must not stay in it.
            future = None

    async def _try_then_wait(self, sock, for_writing, method, *args):
        """Call ``sock.<method>(*args)`` (or ``method(*args)``) now; if it would block, wait for
        the fd and retry."""
        _check_socket(sock)
        try:
            return _operation(sock, method)(*args)
        except _WOULD_BLOCK:
            pass
        return await self._when_ready(sock, for_writing, method, *args)

    async def sock_recv(self, sock, n):
        """Receive up to ``n`` bytes from ``sock``."""
        _check_socket(sock)
        try:
            return sock.recv(n)
        except _WOULD_BLOCK:
            pass
        # Waited for here rather than through _when_ready: one coroutine frame less per idle
        # connection, which is what a server on sock_recv mostly has.
        fd = sock.fileno()
        future, handle = self._watch(sock, False, "recv", n)
        try:
            return await future
        finally:
            self._unwatch(fd, False, handle)
            future = None  # as in _when_ready

    async def sock_recv_into(self, sock, buf):
        """Receive into ``buf``; return the number of bytes received."""
        return await self._try_then_wait(sock, False, "recv_into", buf)

    async def sock_recvfrom(self, sock, bufsize):
        """Receive a datagram of up to ``bufsize`` bytes; return ``(data, address)``."""
        return await self._try_then_wait(sock, False, "recvfrom", bufsize)

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        """Receive a datagram into ``buf``; return ``(nbytes, address)``."""
        return await self._try_then_wait(sock, False, "recvfrom_into", buf, nbytes or len(buf))

    async def sock_sendall(self, sock, data):
        """Send all of ``data``; return None once it is all handed to the kernel."""
        _check_socket(sock)
        try:
            sent = sock.send(data)
        except _WOULD_BLOCK:
            sent = 0
        if sent == len(data):
            return
        remaining = memoryview(data)[sent:]

        def send_some():
            nonlocal remaining
            sent = sock.send(remaining)
            remaining = remaining[sent:]
            if remaining:
                raise BlockingIOError  # not done: wait for the next writable event
            return

        await self._when_ready(sock, True, send_some)

    async def sock_sendto(self, sock, data, address):
        """Send a datagram to ``address``; return the number of bytes sent."""
        return await self._try_then_wait(sock, True, "sendto", data, address)

    async def sock_connect(self, sock, address):
        """Connect ``sock`` to ``address``, resolving a host name first as asyncio does."""
        _check_socket(sock)
        if sock.family == socket.AF_INET or (socket.has_ipv6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto, loop=self
            )
            address = resolved[0][4]
        try:
            sock.connect(address)
            return
        except _WOULD_BLOCK:
            pass

        def connect_result():
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error != 0:
                raise OSError(error, f"Connect call failed {address}")

        # A connection in progress is real work the loop hears back from: a virtual clock must
        # not jump past a connect timeout meanwhile.
        self._hold_time()
        try:
            await self._when_ready(sock, True, connect_result)
        finally:
            self._release_time()

    async def sock_accept(self, sock):
        """Accept a connection; return ``(conn, address)`` with ``conn`` non-blocking."""

        def accept():
            conn, address = sock.accept()
            conn.setblocking(False)
            return conn, address

        return await self._try_then_wait(sock, False, accept)
