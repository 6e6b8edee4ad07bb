"""TLS: asyncio's ``SSLProtocol`` with its per-record methods native.

asyncio's ``SSLProtocol`` does TLS in memory on top of a plain transport. Its state machine
(handshake, shutdown, timeouts, error reports) runs a few times per connection and stays
asyncio's own code. ``TLSProtocol`` replaces what runs per record: ``get_buffer`` and
``buffer_updated`` (feeding received bytes to TLS, decrypting every complete record into one
``bytes`` for ``data_received``, sending the records produced) and the application
transport's ``write`` (encrypting and sending at once). They are native method descriptors
(``_core.install_tls_methods``); in any state but plain "wrapped" they use asyncio's own
methods. The protocol attributes they read (``_state``, ``_incoming``, ``_sslobj``, the
flow-control flags and marks...) are native fields of its first base,
``_core.TlsProtocolState``, which asyncio's code sets and reads by their usual names. If
asyncio's ``SSLProtocol`` lacks what they rely on (a Python whose ``sslproto`` is laid out
differently), ``PROTOCOL_CLASS`` is asyncio's own class, unchanged.
"""

from asyncio import sslproto

from . import _core

# What the native methods read or call on asyncio's SSLProtocol.
_REQUIRED = (
    "_do_handshake",
    "_do_flush",
    "_do_shutdown",
    "_do_read",
    "_do_write",
    "_write_appdata",
    "_call_eof_received",
    "_start_shutdown",
    "_control_app_writing",
    "_control_ssl_reading",
    "_fatal_error",
    "_get_app_transport",
    "max_size",
)


class SSLAppTransport(sslproto._SSLProtocolTransport):
    """The transport the application protocol of a TLS connection sees (``write`` native)."""


class TLSProtocol(_core.TlsProtocolState, sslproto.SSLProtocol):
    """asyncio's ``SSLProtocol`` with native per-record methods (see the module note); the
    attributes those methods read are kept in native fields (``_core.TlsProtocolState``)."""

    def _get_app_transport(self):
        if self._app_transport is None:
            if self._app_transport_created:
                raise RuntimeError("Creating _SSLProtocolTransport twice")
            self._app_transport = SSLAppTransport(self._loop, self)
            self._app_transport_created = True
        return self._app_transport

    def _after_incoming(self):
        """What asyncio's ``buffer_updated`` does after feeding TLS, in the states other than
        wrapped (the native ``buffer_updated`` handles that one)."""
        state = self._state
        if state == sslproto.SSLProtocolState.DO_HANDSHAKE:
            self._do_handshake()
        elif state == sslproto.SSLProtocolState.WRAPPED:
            self._do_read()
        elif state == sslproto.SSLProtocolState.FLUSHING:
            self._do_flush()
        elif state == sslproto.SSLProtocolState.SHUTDOWN:
            self._do_shutdown()


if all(hasattr(sslproto.SSLProtocol, name) for name in _REQUIRED) and hasattr(
    sslproto, "SSLAgainErrors"
):
    _core.install_tls_methods(
        TLSProtocol,
        SSLAppTransport,
        sslproto.SSLProtocol,
        sslproto.SSLProtocolState.WRAPPED,
        sslproto.SSLAgainErrors,
    )
    PROTOCOL_CLASS = TLSProtocol
else:
    PROTOCOL_CLASS = sslproto.SSLProtocol
