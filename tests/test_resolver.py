"""Name resolution: loop.getaddrinfo must answer exactly as socket.getaddrinfo (same entries,
same order, same errors), and loop.getnameinfo as socket.getnameinfo, in and out of debug mode.

No real host name is ever resolved: only IP literals, None and the empty string, and lookups
that cannot reach a name server (AI_NUMERICHOST / NI_NUMERICHOST), so no DNS query leaves this
machine. (Exhaustive differential testing of oxloop's literal fast path lives in
test_dns_literals.py; this file checks the loop method on both loops.)

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
"""

import asyncio
import itertools
import socket

import pytest

AF_INET, AF_INET6, AF_UNSPEC = socket.AF_INET, socket.AF_INET6, socket.AF_UNSPEC
NUMERIC = socket.AI_NUMERICHOST

# (host, family) pairs socket.getaddrinfo answers without a name server for any flags.
HOSTS = [
    ("127.0.0.1", AF_UNSPEC),
    ("127.0.0.1", AF_INET),
    ("0.0.0.0", AF_INET),
    ("10.1.2.3", AF_UNSPEC),
    (b"127.0.0.1", AF_UNSPEC),
    ("::1", AF_UNSPEC),
    ("::1", AF_INET6),
    ("::ffff:127.0.0.1", AF_INET6),
    (None, AF_UNSPEC),
    (None, AF_INET),
    (None, AF_INET6),
]
PORTS = [0, 80, "443", b"8080", None, 70000]
TYPES = [0, socket.SOCK_STREAM, socket.SOCK_DGRAM]
FLAGS = [0, socket.AI_PASSIVE, NUMERIC, socket.AI_PASSIVE | NUMERIC]

# Queries socket.getaddrinfo rejects (numeric-host lookups only: still no name server).
ERROR_CASES = [
    pytest.param("::1", 80, AF_INET, 0, NUMERIC, id="v6-literal-as-v4"),
    pytest.param("127.0.0.1", 80, AF_INET6, 0, NUMERIC, id="v4-literal-as-v6"),
    pytest.param("not-an-address", 80, AF_UNSPEC, 0, NUMERIC, id="name-with-numeric-flag"),
    pytest.param(None, None, AF_UNSPEC, 0, 0, id="no-host-no-port"),
    pytest.param("127.0.0.1", "no-such-service-name", AF_UNSPEC, 0, 0, id="unknown-service"),
    pytest.param("127.0.0.1", 80, 12345, 0, 0, id="bad-family"),
]


def expected_getaddrinfo(host, port, family, type_, flags):
    """What socket.getaddrinfo returns, or the exception it raises."""
    try:
        return socket.getaddrinfo(host, port, family, type_, 0, flags)
    except Exception as exc:
        return exc


def loop_getaddrinfo(loop, host, port, family, type_, flags):
    try:
        return loop.run_until_complete(
            loop.getaddrinfo(host, port, family=family, type=type_, proto=0, flags=flags)
        )
    except Exception as exc:
        return exc


def differences(actual, expected):
    """Why ``actual`` is not ``expected`` (same exception type and args, or same list with
    the same element types), or None."""
    if isinstance(expected, Exception):
        if type(actual) is not type(expected) or actual.args != expected.args:
            return f"expected {expected!r}, got {actual!r}"
    elif actual != expected or repr(actual) != repr(expected):
        # repr: element types too (AddressFamily / SocketKind members, ints, str addresses).
        return f"expected {expected!r}, got {actual!r}"
    return None


def same_answer(actual, expected):
    problem = differences(actual, expected)
    assert problem is None, problem


@pytest.mark.parametrize("host, family", HOSTS, ids=repr)
def test_getaddrinfo_of_literals_equals_socket_getaddrinfo(loop, host, family):
    mismatches = []
    for port, type_, flags in itertools.product(PORTS, TYPES, FLAGS):
        expected = expected_getaddrinfo(host, port, family, type_, flags)
        problem = differences(loop_getaddrinfo(loop, host, port, family, type_, flags), expected)
        if problem:
            mismatches.append(
                f"getaddrinfo({host!r}, {port!r}, {family}, {type_}, 0, {flags}): {problem}"
            )
    assert mismatches == []


@pytest.mark.parametrize("host, port, family, type_, flags", ERROR_CASES)
def test_getaddrinfo_errors_equal_socket_getaddrinfo_errors(loop, host, port, family, type_, flags):
    expected = expected_getaddrinfo(host, port, family, type_, flags)
    assert isinstance(expected, Exception)
    same_answer(loop_getaddrinfo(loop, host, port, family, type_, flags), expected)


@pytest.mark.parametrize("debug", [False, True])
def test_getaddrinfo_in_and_out_of_debug_mode(loop, debug):
    loop.set_debug(debug)
    for host, port, family in [("127.0.0.1", 80, 0), ("::1", "22", AF_INET6), (None, 0, AF_INET)]:
        expected = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        actual = loop.run_until_complete(
            loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
        )
        assert actual == expected


def test_getaddrinfo_positional_and_keyword_only_arguments(loop):
    with pytest.raises(TypeError):
        loop.run_until_complete(loop.getaddrinfo("127.0.0.1", 80, AF_INET))
    result = loop.run_until_complete(loop.getaddrinfo(host="127.0.0.1", port=80, family=AF_INET))
    assert result == socket.getaddrinfo("127.0.0.1", 80, AF_INET)


def test_concurrent_getaddrinfo_calls(loop):
    async def main():
        return await asyncio.gather(
            *(loop.getaddrinfo("127.0.0.1", port) for port in range(1, 101))
        )

    results = loop.run_until_complete(main())
    assert results == [socket.getaddrinfo("127.0.0.1", port) for port in range(1, 101)]


NUMERIC_NAMEINFO = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV


@pytest.mark.parametrize(
    "sockaddr, flags",
    [
        (("127.0.0.1", 80), NUMERIC_NAMEINFO),
        (("127.0.0.1", 8080), socket.NI_NUMERICHOST),
        (("10.0.0.1", 0), NUMERIC_NAMEINFO),
        (("::1", 443, 0, 0), NUMERIC_NAMEINFO),
        (("::1", 443), NUMERIC_NAMEINFO | socket.NI_DGRAM),
    ],
    ids=repr,
)
def test_getnameinfo_with_numeric_flags_equals_socket_getnameinfo(loop, sockaddr, flags):
    expected = socket.getnameinfo(sockaddr, flags)
    assert loop.run_until_complete(loop.getnameinfo(sockaddr, flags)) == expected


@pytest.mark.parametrize(
    "sockaddr",
    [("127.0.0.1",), "127.0.0.1", ("not-an-address", 80), ("127.0.0.1", "80")],
    ids=repr,
)
def test_getnameinfo_errors_equal_socket_getnameinfo_errors(loop, sockaddr):
    try:
        socket.getnameinfo(sockaddr, NUMERIC_NAMEINFO)
    except Exception as exc:
        expected = exc
    else:
        pytest.fail("socket.getnameinfo accepted it")
    with pytest.raises(type(expected)) as info:
        loop.run_until_complete(loop.getnameinfo(sockaddr, NUMERIC_NAMEINFO))
    assert info.value.args == expected.args
