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

The entries below were recorded on the default module set.
"""

_SELECTOR_INTERNALS = "the test uses selector-loop internals: {}"


EXPECTED_FAILURES: dict[str, str] = {
    "test.test_asyncio.test_events.OxloopEventLoopTests.test_timeout_rounding": (
        _SELECTOR_INTERNALS.format(
            "it reads loop._selector (the selectors.BaseSelector of a selector loop; oxloop's"
            " poller is native) and counts calls of a patched loop._run_once, which oxloop's"
            " native run loop does not make"
        )
    ),
}

SKIP: dict[str, str] = {}
