"""Shared fixtures of the behaviour suite: every behaviour is written once and runs on stock
asyncio *and* on oxloop (in the style of uvloop's test-suite).

Fixtures
--------
``loop_kind``          "asyncio" or "oxloop" (parametrized: each test using it runs twice).
``leak_check``         the test's ``LoopGuard`` for that kind: at teardown it closes the loops
                       it made and fails the test if anything leaked (fds, threads, tasks,
                       signal handlers, unexpected exception-handler calls...).
``loop_factory``       ``loop_factory(kind=None)`` makes fresh, guarded loops.
``loop``               one fresh loop from ``loop_factory``.
``oxloop_leak_check``  a guard for tests not parametrized by loop kind (oxloop-only features).
``oxloop_loop``        an oxloop loop under that guard.
``restore_policy``     restores asyncio's event loop policy after the test.
``pair``               a connected pair of non-blocking Unix sockets.
``kind``               "tcp" or "unix" (parametrized): the stream socket a network test runs
                       over.
``sock_dir``           a short directory for Unix socket paths.
``tls_ca``, ``server_cert``, ``server_context``, ``client_context``: certificates generated at
                       test time (a CA and a server certificate for "localhost" and
                       "127.0.0.1", once per session) and SSL contexts made from them.

Marks
-----
``@pytest.mark.oxloop_xfail(reason=...)``  the oxloop case of a parametrized test is a known
oxloop bug: it becomes ``xfail(strict=True)`` (the asyncio case must still pass, and the
oxloop case starts failing the suite as soon as the bug is fixed, so the mark gets removed).

The helpers tests import are in the ``helpers`` package (tests/helpers/), never here.

Every test gets a pytest-timeout limit (``DEFAULT_TIMEOUT`` unless it sets its own), so a hang
fails one test instead of stalling CI.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import tempfile
from pathlib import Path

import pytest
import trustme

from helpers.loops import LOOP_FACTORIES, LoopGuard
from helpers.net import KINDS
from helpers.tls import SERVER_NAMES, make_client_context, make_server_context

DEFAULT_TIMEOUT = 30

# Files of this directory owned by others: not given a default timeout here.
_NOT_OURS = {"test_dns_literals.py"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "oxloop_xfail(reason): the oxloop case of this test is a known oxloop bug (strict xfail)",
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).name in _NOT_OURS:
            continue
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))
        marker = item.get_closest_marker("oxloop_xfail")
        callspec = getattr(item, "callspec", None)
        if (
            marker is not None
            and callspec is not None
            and callspec.params.get("loop_kind") == "oxloop"
        ):
            reason = marker.kwargs.get("reason") or (
                marker.args[0] if marker.args else "oxloop bug"
            )
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))


# --------------------------------------------------------------------------------------------
# Loops
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=sorted(LOOP_FACTORIES))
def loop_kind(request) -> str:
    """The kind of loop under test: "asyncio" or "oxloop"."""
    return request.param


@pytest.fixture
def leak_check(loop_kind):
    """The ``LoopGuard`` of the test: for tests whose loops are made elsewhere (``oxloop.run``,
    ``asyncio.Runner``...), it still checks that no fd, thread or process state leaked."""
    guard = LoopGuard(loop_kind)
    yield guard
    guard.finish()


@pytest.fixture
def loop_factory(leak_check):
    """``loop_factory(kind=None)`` makes a fresh loop of ``loop_kind`` (or of ``kind``); the
    loops are closed and leak-checked at teardown."""
    return leak_check.new_loop


@pytest.fixture
def loop(loop_factory):
    """A fresh loop of each kind."""
    return loop_factory()


@pytest.fixture
def oxloop_leak_check():
    """A ``LoopGuard`` making oxloop loops, for tests that are not parametrized by loop kind."""
    guard = LoopGuard("oxloop")
    yield guard
    guard.finish()


@pytest.fixture
def oxloop_loop(oxloop_leak_check):
    """An oxloop loop, for oxloop-only features (same leak checks as ``loop``)."""
    return oxloop_leak_check.new_loop()


@pytest.fixture
def restore_policy():
    """Restores asyncio's event loop policy (and the current loop) after the test."""
    before = asyncio.events._event_loop_policy
    yield
    asyncio.set_event_loop_policy(before)


# --------------------------------------------------------------------------------------------
# Sockets
# --------------------------------------------------------------------------------------------


@pytest.fixture
def pair():
    """A connected pair of non-blocking Unix sockets, closed afterwards."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture(params=KINDS)
def kind(request):
    """The stream socket a test runs over: "tcp" (127.0.0.1) or "unix" (a path in ``sock_dir``);
    every test taking ``kind`` runs over both."""
    return request.param


@pytest.fixture
def sock_dir():
    """A short directory for Unix socket paths (pytest's tmp_path can exceed their 107 bytes)."""
    path = tempfile.mkdtemp(prefix="oxl-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# TLS (certificates generated at test time: generating them is the slow part, done once per
# session; the contexts are made for each test, so that a test may change its own)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """A certificate authority made for this test session."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(tls_ca) -> trustme.LeafCert:
    """A server certificate from ``tls_ca`` for "localhost" and "127.0.0.1"."""
    return tls_ca.issue_cert(*SERVER_NAMES)


@pytest.fixture
def server_context(server_cert) -> ssl.SSLContext:
    """A server-side context presenting ``server_cert``."""
    return make_server_context(server_cert)


@pytest.fixture
def client_context(tls_ca) -> ssl.SSLContext:
    """A client-side context trusting only ``tls_ca``, with hostname checks on (connect with
    ``server_hostname`` "localhost" or "127.0.0.1")."""
    return make_client_context(tls_ca)
