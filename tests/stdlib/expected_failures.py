"""Known outcomes of CPython's asyncio tests on oxloop.

Both tables map a full unittest test id to a reason, for example::

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
UDP and pipe transports not written yet (issue #4).
"""

_UDP = "UDP is issue #4 (create_datagram_endpoint raises NotImplementedError until then)"
_PIPES = "pipe transports are issue #4 (connect_*_pipe raise NotImplementedError until then)"
_SELECTOR_INTERNALS = "the test uses selector-loop internals: {}"


EXPECTED_FAILURES: dict[str, str] = {
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_datagram_endpoint": _UDP,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_datagram_endpoint_ipv6": _UDP,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_create_datagram_endpoint_sock": _UDP,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_bidirectional_pty": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_read_pipe": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_read_pty_output": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_unclosed_pipe_transport": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_write_pipe": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_write_pipe_disconnect_on_close": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_write_pty": _PIPES,
    "test.test_asyncio.test_sendfile.OxloopEventLoopTests.test_sendfile_not_supported": _UDP,
    "test.test_asyncio.test_streams.StreamTests.test_read_all_from_pipe_reader": _PIPES,
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_timeout_rounding": _SELECTOR_INTERNALS.format(
        "it reads loop._selector (the selectors.BaseSelector of a selector loop; oxloop's poller is"
        " native) and counts calls of a patched loop._run_once, which oxloop's native run loop"
        " does not make"
    ),
}

SKIP: dict[str, str] = {
}
