"""Name resolution for ``Loop``: ``getaddrinfo`` with a native fast path for address literals.

An address literal ("127.0.0.1", "::1", None with AI_PASSIVE...) is answered natively, with
exactly what ``socket.getaddrinfo`` would return, without a trip to the thread pool; anything
the native code cannot answer identically goes to libc in the executor, as asyncio does.
"""

from . import _core


class ResolverOperations:
    """Mixin of ``Loop``: ``getaddrinfo``."""

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        """Resolve ``host``/``port`` like ``socket.getaddrinfo``, without blocking the loop."""
        if not self._debug:
            answer = _core.getaddrinfo_literal(host, port, family, type, proto, flags)
            if answer is not None:
                return answer
        return await super().getaddrinfo(
            host, port, family=family, type=type, proto=proto, flags=flags
        )
