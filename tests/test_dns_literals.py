"""Differential test of the native getaddrinfo fast path against ``socket.getaddrinfo``.

``_core.getaddrinfo_literal`` either declines (returns None) or must return exactly what
``socket.getaddrinfo`` returns for the same arguments on this machine: same entries in the same
order, with the same element types (compared through ``repr`` too). Whenever
``socket.getaddrinfo`` raises, the fast path must have declined: every answer is checked against
``socket.getaddrinfo``, which must not raise.

``socket.getaddrinfo`` is only called where it cannot reach a name server: for queries the fast
path answered (numeric hosts), for hosts that are None, and for queries with AI_NUMERICHOST.
A host the fast path wrongly answered would cost a DNS look-up, and fail the test.
"""

import itertools
import random
import socket
import subprocess
import sys
import textwrap

from oxloop import _core

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
AI_PASSIVE = socket.AI_PASSIVE
AI_CANONNAME = socket.AI_CANONNAME
AI_NUMERICHOST = socket.AI_NUMERICHOST
AI_NUMERICSERV = socket.AI_NUMERICSERV
AI_V4MAPPED = socket.AI_V4MAPPED
AI_ALL = socket.AI_ALL
AI_ADDRCONFIG = socket.AI_ADDRCONFIG


class HostText(str):
    """A str subclass: socket.getaddrinfo accepts it like a str."""


HOSTS = [
    None,
    "",
    # IPv4, in every form inet_aton accepts, and near misses.
    "127.0.0.1",
    "127.1",
    "0x7f.1",
    "0x7f.0.0.1",
    "0X7F.0.0.1",
    "0177.0.0.1",
    "2130706433",
    "1.2.3",
    "1.2.65535",
    "1.16777215",
    "0xffffffff",
    "255.255.255.255",
    "0.0.0.0",
    "0",
    "256.1.1.1",
    "1.2.65536",
    "4294967296",
    "08.1.1.1",
    "0x",
    "1.2.3.4.",
    "1.2.3.4.5",
    "1..2",
    " 1.2.3.4",
    "1.2.3.4 ",
    "1.2.3.4\n",
    "1.2.3.4 junk",
    # IPv6, with and without zones.
    "::1",
    "::",
    "::ffff:1.2.3.4",
    "::ffff:127.0.0.1",
    "::1.2.3.4",
    "1::",
    "1:2:3:4:5:6:7:8",
    "1:2:3:4:5:6:7::",
    "::1:2:3:4:5:6:7",
    "FE80::A",
    "2001:db8::1",
    "1:2:3:4:5:6:1.2.3.4",
    "1:0:0:2:0:0:0:3",
    ":::",
    "1:2:3:4:5:6:7:8:9",
    "00000::1",
    "::ffff:01.2.3.4",
    "[::1]",
    "::1/128",
    "fe80::1%lo",
    "fe80::1%1",
    "fe80::1%01",
    "fe80::1%eth0",
    "fe80::1%nonexistent",
    "fe80::1%",
    "fe80::1%lo%",
    "fe80::1%LO",
    "fe80::1%+1",
    "fe80::1%4294967295",
    "fe80::1%4294967296",
    "ff02::1%lo",
    "ff01::1%1",
    "ff05::1%lo",
    "::1%lo",
    "::1%99",
    "::ffff:1.2.3.4%1",
    "::ffff:254.128.0.1%lo",
    "::ffff:1.2.3.4%lo",
    "1.2.3.4%1",
    # Names and other text the fast path must leave to the C library.
    "localhost",
    "*",
    "127.0.0.1.",
    "\uff11\uff12\uff17.0.0.1",
    "0" * 70 + ".1",
    "fe80::1%" + "0" * 60 + "1",
    HostText("127.0.0.1"),
    # Bytes are passed as they are, without the idna codec's checks.
    b"127.0.0.1",
    b"::1",
    b"fe80::1%lo",
    b"0" * 70 + b".1",
    b"127.0.0.1\x00junk",
    b"\xff",
    # Not a host at all: socket.getaddrinfo raises TypeError.
    2130706433,
    bytearray(b"127.0.0.1"),
]

PORTS = [
    0,
    80,
    65535,
    65536,
    -1,
    2**40,
    2**70,
    "80",
    "  80",
    "+80",
    "80 ",
    "-1",
    "4294967297",
    "",
    "*",
    "http",
    None,
    b"80",
    b"",
    True,
    80.0,
    bytearray(b"80"),
]

FAMILIES = [0, AF_INET, AF_INET6, socket.AF_UNIX]
TYPES = [0, socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_SEQPACKET]
PROTOS = [0, socket.IPPROTO_TCP, socket.IPPROTO_UDP, 132]
FLAG_BITS = [
    AI_PASSIVE,
    AI_CANONNAME,
    AI_NUMERICHOST,
    AI_NUMERICSERV,
    AI_V4MAPPED,
    AI_ALL,
    AI_ADDRCONFIG,
]
ALL_FLAG_COMBINATIONS = [
    sum(bits)
    for count in range(len(FLAG_BITS) + 1)
    for bits in itertools.combinations(FLAG_BITS, count)
]


def libc_answer(args):
    """socket.getaddrinfo(*args), or the exception it raises."""
    try:
        return socket.getaddrinfo(*args)
    except Exception as error:
        return error


def is_safe_for_libc(args):
    """Whether socket.getaddrinfo(*args) cannot send a DNS query (the host is None or it is
    asked to be numeric, so nothing but /etc/services and the kernel is consulted)."""
    host, _port, _family, _type, _proto, flags = args
    return host is None or (isinstance(flags, int) and flags & AI_NUMERICHOST)


class Tally:
    """Counts of the comparisons, and the first mismatches."""

    def __init__(self):
        self.compared = 0
        self.answered = 0
        self.declined_but_libc_answered = []
        self.mismatches = []

    def check(self, args):
        """Compares the fast path with socket.getaddrinfo for one query."""
        self.compared += 1
        fast = _core.getaddrinfo_literal(*args)
        if fast is None:
            if is_safe_for_libc(args):
                expected = libc_answer(args)
                if not isinstance(expected, Exception):
                    self.declined_but_libc_answered.append(args)
            return
        self.answered += 1
        expected = libc_answer(args)
        if isinstance(expected, Exception):
            self.mismatches.append((args, fast, expected))
        elif fast != expected or repr(fast) != repr(expected):
            self.mismatches.append((args, fast, expected))

    def assert_no_mismatch(self, label):
        print(f"{label}: {self.compared} combinations compared, {self.answered} answered natively")
        shown = "\n".join(
            f"{args!r}:\n  fast {fast!r}\n  libc {libc!r}"
            for args, fast, libc in self.mismatches[:10]
        )
        assert not self.mismatches, (
            f"{len(self.mismatches)} wrong answers of {self.answered}:\n{shown}"
        )


def test_common_queries_are_answered_natively():
    assert _core.getaddrinfo_literal(
        "127.0.0.1", 80, AF_INET, socket.SOCK_STREAM
    ) == socket.getaddrinfo("127.0.0.1", 80, AF_INET, socket.SOCK_STREAM)
    must_answer = [
        ("127.0.0.1", 80, AF_INET, socket.SOCK_STREAM, 0, 0),
        ("::1", 443, 0, 0, 0, 0),
        (None, 80, 0, 0, 0, AI_PASSIVE),
        (None, 80, 0, socket.SOCK_STREAM, 0, AI_PASSIVE),
        (None, 8080, AF_INET, socket.SOCK_STREAM, 0, AI_PASSIVE),
        (None, 0, AF_INET6, socket.SOCK_DGRAM, 0, 0),
        ("10.1.2.3", "8080", 0, socket.SOCK_STREAM, 0, 0),
        ("127.1", None, 0, 0, 0, 0),
        ("fe80::1%1", 80, AF_INET6, socket.SOCK_STREAM, 0, 0),
        ("fe80::1%lo", 80, 0, 0, 0, AI_CANONNAME),
        ("::ffff:1.2.3.4", 80, AF_INET, 0, 0, 0),
        ("1.2.3.4", 80, AF_INET6, socket.SOCK_STREAM, 0, AI_V4MAPPED),
        (b"192.0.2.1", b"443", 0, 0, socket.IPPROTO_TCP, AI_NUMERICHOST | AI_NUMERICSERV),
    ]
    tally = Tally()
    for args in must_answer:
        tally.check(args)
    tally.assert_no_mismatch("common queries")
    assert tally.answered == len(must_answer), "the fast path declined a common query"
    by_keyword = _core.getaddrinfo_literal(
        "127.0.0.1", 80, family=AF_INET, type=socket.SOCK_STREAM, proto=6, flags=0
    )
    assert by_keyword == socket.getaddrinfo(
        "127.0.0.1", 80, family=AF_INET, type=socket.SOCK_STREAM, proto=6, flags=0
    )


def test_names_and_odd_arguments_are_declined():
    for args in [
        ("localhost", 80),
        ("*", 80),
        ("127.0.0.1", "http"),
        ("127.0.0.1", 80, 0, 0, 0, AI_ADDRCONFIG),
        ("127.0.0.1", 80, socket.AF_UNIX),
        ("127.0.0.1", 80, "2"),
        ("127.0.0.1", 80, None),
        ("127.0.0.1", 80, 2.0),
        ("127.0.0.1", 80, 0, 1.0),
        ("127.0.0.1", 80, 2**31),
        ("127.0.0.1", 80, 0, 0, 0, 2**40),
        ("127.0.0.1", 80, 0, 0, 0, 0x40),
        ("127.0.0.1", True),
        ("127.0.0.1", "\ud800"),
        ("\ud800", 80),
        ("1..2", 80),
        (None, None),
        (None, 80, 0, 0, 0, AI_CANONNAME),
    ]:
        assert _core.getaddrinfo_literal(*args) is None, args


def test_answers_raise_the_audit_event_of_socket_getaddrinfo():
    # In a child interpreter, as an audit hook cannot be removed once added.
    code = textwrap.dedent(
        """
        import socket, sys
        from oxloop import _core
        events = []
        sys.addaudithook(
            lambda event, args: events.append(args) if event == "socket.getaddrinfo" else None
        )
        query = ("127.0.0.1", 80, socket.AF_INET, socket.SOCK_STREAM, 6)
        assert _core.getaddrinfo_literal(*query) is not None
        socket.getaddrinfo(*query)
        assert _core.getaddrinfo_literal("localhost", 80) is None
        assert len(events) == 2, events
        assert repr(events[0]) == repr(events[1]), events
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_grid_of_hosts_ports_families_types_protocols_and_flags():
    chooser = random.Random(20240521)
    tally = Tally()
    for host, port, family, socktype, proto in itertools.product(
        HOSTS, PORTS, FAMILIES, TYPES, PROTOS
    ):
        flags = chooser.choice(ALL_FLAG_COMBINATIONS)
        tally.check((host, port, family, socktype, proto, flags))
    tally.assert_no_mismatch("grid")
    assert tally.answered > tally.compared // 50


def test_every_flag_combination():
    hosts = [
        None,
        "127.0.0.1",
        "127.1",
        "::1",
        "::ffff:1.2.3.4",
        "fe80::1%lo",
        b"10.0.0.1",
        "localhost",
    ]
    tally = Tally()
    for host, port, family, socktype, flags in itertools.product(
        hosts, [0, 443, None], FAMILIES, TYPES, ALL_FLAG_COMBINATIONS
    ):
        tally.check((host, port, family, socktype, 0, flags))
    tally.assert_no_mismatch("flags")
    assert tally.answered > tally.compared // 10


def test_numeric_hosts_are_never_declined_needlessly():
    """With AI_NUMERICHOST no name service is consulted, so socket.getaddrinfo can be asked
    about random literal-like text. The fast path must agree wherever it answers, and must
    answer wherever socket.getaddrinfo does (numeric ports, no AI_ADDRCONFIG)."""
    chooser = random.Random(7)
    alphabet = "0123456789abcdefABCDEFxX.:%" * 3 + "lo" + "g "
    seeds = [
        "127.0.0.1",
        "::1",
        "::ffff:1.2.3.4",
        "fe80::1%lo",
        "1.2.3",
        "0x7f.1",
        "ff02::1%1",
        "1:2:3:4:5:6:7:8",
    ]
    flag_choices = [0, AI_PASSIVE, AI_CANONNAME, AI_V4MAPPED, AI_V4MAPPED | AI_ALL, AI_NUMERICSERV]
    tally = Tally()
    for round_number in range(30_000):
        if round_number % 2:
            host = "".join(chooser.choice(alphabet) for _ in range(chooser.randrange(1, 20)))
        else:
            seed = chooser.choice(seeds)
            cut = chooser.randrange(len(seed) + 1)
            extra = "".join(chooser.choice(alphabet) for _ in range(chooser.randrange(0, 3)))
            host = seed[:cut] + extra + seed[cut + chooser.randrange(0, 2) :]
        if round_number % 7 == 0:
            host = host.encode()
        args = (
            host,
            chooser.choice([0, 80, 65536, "443", None]),
            chooser.choice([0, AF_INET, AF_INET6]),
            chooser.choice(TYPES),
            chooser.choice([0, 0, 6, 17]),
            chooser.choice(flag_choices) | AI_NUMERICHOST,
        )
        tally.check(args)
    tally.assert_no_mismatch("random numeric hosts")
    assert tally.answered > 2_000
    assert not tally.declined_but_libc_answered, tally.declined_but_libc_answered[:10]
