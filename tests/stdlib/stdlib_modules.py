"""Which of CPython's ``test.test_asyncio`` modules the stdlib runner runs, and how.

This is plain data, read by both ``run_stdlib_tests.py`` (the driver) and
``stdlib_worker.py`` (which runs one module in a subprocess).  The tests
themselves are always imported from the installed CPython ``test`` package;
nothing here copies test code.

Most modules need no help: they obtain their loops through
``asyncio.new_event_loop()``, the event loop policy, ``asyncio.run``,
``asyncio.Runner`` or ``unittest.IsolatedAsyncioTestCase``, all of which the
worker points at the loop under test.  Some modules instead define concrete
TestCases that hard-code asyncio's own loops (``asyncio.SelectorEventLoop(...)``
for each selector); for those, ``drop_classes`` removes the stdlib's concrete
classes and ``loop_classes`` defines the equivalent class for the loop under
test (the stdlib mixins, with the loop factory method returning a new loop
under test) -- exactly the way the stdlib module defines its own classes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

#: The concrete per-selector classes that several stdlib modules define.  They
#: run asyncio's own SelectorEventLoop (4 times over: epoll, poll, select,
#: kqueue) or the Windows proactor, never the loop under test.
SELECTOR_LOOP_CLASSES = (
    "SelectEventLoopTests",
    "EPollEventLoopTests",
    "PollEventLoopTests",
    "KqueueEventLoopTests",
    "ProactorEventLoopTests",
)


@dataclass(frozen=True)
class LoopTestClass:
    """A TestCase the worker defines inside a stdlib test module.

    The class is named ``<Prefix><suffix>`` where the prefix names the loop
    under test (``OxloopEventLoopTests``, ``UvloopEventLoopTests``, ...), gets
    the stdlib module as its ``__module__`` (so test ids look like
    ``test.test_asyncio.test_events.OxloopEventLoopTests.test_create_server``),
    derives from ``bases`` and overrides each of ``factory_methods`` to return a
    new loop under test.
    """

    suffix: str
    #: Names looked up in the stdlib module's namespace; dotted names are
    #: followed attribute by attribute (``"test_utils.TestCase"``).
    bases: tuple[str, ...]
    #: The method(s) the stdlib fixtures call to create their loop.
    factory_methods: tuple[str, ...] = ("create_event_loop",)
    #: If set, keep only the test methods defined in this class of the module
    #: (used to take just the subprocess tests out of test_events).
    only_tests_of: str | None = None


@dataclass(frozen=True)
class StdlibModule:
    """One entry of the runner's module list."""

    #: Short name used on the command line and in the report.
    name: str
    #: Dotted name of the stdlib module holding the tests.
    module: str
    #: Run by default (without ``--modules``)?
    default: bool = True
    #: Run the module's own TestCases (minus ``drop_classes``)?
    stdlib_tests: bool = True
    #: Names of the module's TestCases not to run (they use asyncio's loops).
    drop_classes: tuple[str, ...] = ()
    #: TestCases to define for the loop under test.
    loop_classes: tuple[LoopTestClass, ...] = ()
    #: Name of a fixture adapter in ``stdlib_worker.ADAPTERS``: a function that
    #: replaces a stdlib fixture building mocked asyncio loops by one building
    #: loops under test (the tests themselves are unchanged).  ``--no-adapters``
    #: turns them off.
    adapter: str | None = None
    #: Wall-clock limit for the whole module in seconds (None: the CLI's).
    timeout: float | None = None
    #: One line for ``--list``: how the module gets its loops.
    note: str = ""
    #: The first Python version whose ``test`` package has the module (on older ones it is
    #: left out of ``default`` and ``all``, and naming it is an error).
    since: tuple[int, int] = (3, 11)

    def available(self) -> bool:
        """Whether the running Python has the module."""
        return sys.version_info >= self.since


def _plain(name: str, note: str, **kwargs) -> StdlibModule:
    return StdlibModule(name=name, module=f"test.test_asyncio.{name}", note=note, **kwargs)


#: Every module the runner knows, in the order they are started (the slowest
#: first, so that parallel workers finish at about the same time).
MODULES: tuple[StdlibModule, ...] = (
    _plain(
        "test_tasks",
        "many tests use test_utils.TestLoop (asyncio's own, mock clock): not counted",
    ),
    StdlibModule(
        name="test_events",
        module="test.test_asyncio.test_events",
        drop_classes=SELECTOR_LOOP_CLASSES,
        loop_classes=(
            LoopTestClass("EventLoopTests", ("EventLoopTestsMixin", "test_utils.TestCase")),
        ),
        note="EventLoopTestsMixin on the loop; Handle/Timer/Policy tests mostly mock-only",
    ),
    StdlibModule(
        name="test_sock_lowlevel",
        module="test.test_asyncio.test_sock_lowlevel",
        drop_classes=SELECTOR_LOOP_CLASSES,
        loop_classes=(
            LoopTestClass("EventLoopTests", ("BaseSockTestsMixin", "test_utils.TestCase")),
        ),
        note="BaseSockTestsMixin on the loop",
    ),
    _plain("test_locks", "IsolatedAsyncioTestCase (asyncio.Runner)"),
    _plain("test_queues", "IsolatedAsyncioTestCase (asyncio.Runner)"),
    _plain("test_taskgroups", "IsolatedAsyncioTestCase (asyncio.Runner)"),
    _plain("test_waitfor", "IsolatedAsyncioTestCase (asyncio.Runner)"),
    _plain("test_timeouts", "IsolatedAsyncioTestCase (asyncio.Runner)"),
    _plain(
        "test_futures",
        "mostly test_utils.TestLoop (asyncio's own, mock clock): not counted",
    ),
    _plain("test_futures2", "IsolatedAsyncioTestCase (asyncio.Runner)"),
    _plain(
        "test_eager_task_factory",
        "asyncio.new_event_loop(), with eager task factories",
        since=(3, 12),
    ),
    _plain("test_staggered", "IsolatedAsyncioTestCase (asyncio.Runner)", since=(3, 13)),
    _plain(
        "test_runners",
        "adapted: BaseTest.new_loop builds the loop instead of a mocked BaseEventLoop",
        adapter="runners",
    ),
    _plain(
        "test_pep492",
        "most tests use a mocked asyncio.BaseEventLoop: not counted",
    ),
    _plain("test_context", "asyncio.run"),
    _plain("test_threads", "IsolatedAsyncioTestCase (asyncio.Runner)"),
    _plain("test_streams", "asyncio.new_event_loop()"),
    StdlibModule(
        name="test_server",
        module="test.test_asyncio.test_server",
        drop_classes=("SelectorStartServerTests", "ProactorStartServerTests"),
        loop_classes=(
            LoopTestClass("StartServerTests", ("SelectorStartServerTests",), ("new_loop",)),
        ),
        note="SelectorStartServerTests with new_loop() returning the loop",
    ),
    StdlibModule(
        name="test_sendfile",
        module="test.test_asyncio.test_sendfile",
        drop_classes=SELECTOR_LOOP_CLASSES,
        loop_classes=(
            LoopTestClass("EventLoopTests", ("SendfileTestsBase", "test_utils.TestCase")),
        ),
        note="SendfileTestsBase on the loop",
    ),
    StdlibModule(
        name="test_buffered_proto",
        module="test.test_asyncio.test_buffered_proto",
        drop_classes=("BufferedProtocolSelectorTests", "BufferedProtocolProactorTests"),
        loop_classes=(
            LoopTestClass(
                "BufferedProtocolTests",
                ("BaseTestBufferedProtocol", "unittest.TestCase"),
                ("new_loop",),
            ),
        ),
        note="BaseTestBufferedProtocol on the loop",
    ),
    _plain("test_ssl", "asyncio.new_event_loop()"),
    StdlibModule(
        name="test_sslproto",
        module="test.test_asyncio.test_sslproto",
        drop_classes=("SelectorStartTLSTests", "ProactorStartTLSTests"),
        loop_classes=(
            LoopTestClass("StartTLSTests", ("BaseStartTLS", "unittest.TestCase"), ("new_loop",)),
        ),
        note="BaseStartTLS on the loop; SslProtoHandshakeTests via new_event_loop()",
    ),
    StdlibModule(
        name="test_events_subprocess",
        module="test.test_asyncio.test_events",
        stdlib_tests=False,
        loop_classes=(
            LoopTestClass(
                "SubprocessTests",
                ("EventLoopTestsMixin", "SubprocessTestsMixin", "test_utils.TestCase"),
                only_tests_of="SubprocessTestsMixin",
            ),
        ),
        note="test_events' SubprocessTestsMixin on the loop",
    ),
    _plain(
        "test_subprocess",
        "policy.new_event_loop(); with 3.11's child watchers set by the tests, "
        "which oxloop honours",
    ),
)

MODULES_BY_NAME: dict[str, StdlibModule] = {m.name: m for m in MODULES}
