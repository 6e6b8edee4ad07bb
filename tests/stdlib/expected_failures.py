"""Known outcomes of CPython's asyncio tests on oxloop.

Both tables map a full unittest test id to a reason, for example::

    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_server":
        "create_server(reuse_port=...) not implemented yet",

``EXPECTED_FAILURES``: tests that fail (or error) on oxloop today.  The runner
reports them as expected failures; if one of them passes, it is reported as an
unexpected success (which counts as a failure), so that this list stays
honest: remove the entry when the test passes.

``SKIP``: tests the runner must not run at all on oxloop, because they crash
the interpreter or hang (which would cost a restart of the module, or the
per-test timeout, on every run).  They are reported as skipped, with the
reason.  Prefer ``EXPECTED_FAILURES`` for anything that merely fails.

Both tables apply to ``--loop oxloop`` only (the stand-in loops have their
own, unrecorded failures) and are ignored with ``--ignore-expected-failures``.
Run ``run_stdlib_tests.py -v`` to see the ids and tracebacks of failing tests,
and ``run_stdlib_tests.py --print-expected`` for ready-made entries for the
failing tests not listed yet (review them: a new failure is usually a bug to
fix, not an entry to add).

The entries below were recorded on the default module set, with oxloop's
transports (TCP, UDP, Unix sockets, pipes, SSL, servers) not written yet.
"""

_TCP = "TCP transports are issue #3 (create_connection raises NotImplementedError until then)"
_SERVER = "servers are issue #3 (create_server raises NotImplementedError until then)"
_SSL = "TLS is issue #4 (needs the transports of issue #3 first)"
_UDP = "UDP is issue #4 (create_datagram_endpoint raises NotImplementedError until then)"
_UNIX = "Unix stream transports are issue #3 (create_unix_* raise NotImplementedError until then)"
_PIPES = "pipe transports are issue #4 (connect_*_pipe raise NotImplementedError until then)"
_SELECTOR_INTERNALS = "the test uses selector-loop internals: {}"


EXPECTED_FAILURES: dict[str, str] = {
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_connect_accepted_socket": _TCP,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_connection": _TCP,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_connection_local_addr": _TCP,
    "test.test_asyncio.test_sock_lowlevel.OxloopEventLoopTests.test_create_connection_sock": _TCP,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_server": _SERVER,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_server_addr_in_use": _SERVER,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_server_dual_stack": _SERVER,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_server_reuse_port": _SERVER,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_server_sock": _SERVER,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_server_ssl": _SERVER,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_server_ssl_match_failed": _SERVER,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_server_ssl_verified": _SERVER,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_server_ssl_verify_failed": _SERVER,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_server_close": _SERVER,
    "test.test_asyncio.test_events.TestServer.test_get_loop": _SERVER,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_ssl_connection": _SSL,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_ssl_connect_accepted_socket": _SSL,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_datagram_endpoint": _UDP,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_datagram_endpoint_ipv6": _UDP,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_datagram_endpoint_sock": _UDP,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_ssl_unix_connection": _UNIX,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_unix_connection": _UNIX,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_unix_server": _UNIX,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_unix_server_path_socket_error": _UNIX,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_unix_server_ssl": _UNIX,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_unix_server_ssl_verified": _UNIX,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_unix_server_ssl_verify_failed": _UNIX,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_bidirectional_pty": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_read_pipe": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_read_pty_output": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_unclosed_pipe_transport": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_write_pipe": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_write_pipe_disconnect_on_close": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_write_pty": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_timeout_rounding": _SELECTOR_INTERNALS.format(
        "it reads loop._selector (the selectors.BaseSelector of a selector loop; oxloop's poller is"
        " native) and counts calls of a patched loop._run_once, which oxloop's native run loop"
        " does not make"
    ),
}

SKIP: dict[str, str] = {
}
