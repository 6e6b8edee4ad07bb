"""The parts of the loop whose native implementation is a later milestone.

asyncio's own ``BaseEventLoop`` code does the set-up of connections, servers, endpoints,
pipes and subprocesses (argument checks, name resolution, connecting, binding) and then asks
the loop for a transport through the hooks below. Until the native transports exist, each
hook closes what it was handed (the loop owns it at that point, so nothing leaks) and raises
``NotImplementedError`` naming the milestone: UDP, pipes and subprocesses (issue #4).
This module shrinks as they land.
"""

_UDP_PIPES_SUBPROCESSES = "arrive with oxloop's UDP/pipes/subprocess milestone (issue #4)"


def _not_yet(what, milestone, *owned):
    """Close what the loop was handed, then raise NotImplementedError."""
    for resource in owned:
        if resource is not None:
            resource.close()
    return NotImplementedError(f"{what}: {milestone}")


class PendingOperations:
    """Mixin of ``Loop``: the transport hooks of ``BaseEventLoop`` that are not written yet."""

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        raise _not_yet("UDP transport", f"UDP endpoints {_UDP_PIPES_SUBPROCESSES}", sock)

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        raise _not_yet("read pipe transport", f"pipe transports {_UDP_PIPES_SUBPROCESSES}", pipe)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        raise _not_yet("write pipe transport", f"pipe transports {_UDP_PIPES_SUBPROCESSES}", pipe)

    async def _make_subprocess_transport(self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs):
        raise _not_yet("subprocess transport", f"subprocesses {_UDP_PIPES_SUBPROCESSES}")
