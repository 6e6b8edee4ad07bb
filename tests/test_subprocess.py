"""Subprocesses: loop.subprocess_exec, loop.subprocess_shell and asyncio's
create_subprocess_exec / create_subprocess_shell.

Covered: communicate() (exact bytes both ways, several MiB, a child that does not read its
stdin), wait() and returncode (exit codes, deaths by signal, concurrent and repeated waits),
kill/terminate/send_signal (and ProcessLookupError once the process was waited for); the stdio
options (PIPE, DEVNULL, STDOUT, an fd, a file object, inherited); pass_fds, cwd, env,
start_new_session, executable; the argument errors of subprocess_exec/subprocess_shell; a
program that does not exist or cannot be run; the subprocess transport (get_pid,
get_returncode, get_pipe_transport, get_extra_info('subprocess'), close() killing a running
child and reaping it) and the order of the SubprocessProtocol callbacks; line-by-line
conversations over the pipes; many children at once; cancelled waits.

Children are ``python -c`` snippets (PYTHON, with ``child_env()``: unbuffered output).
Stock asyncio runs with its default policy and child watcher (ThreadedChildWatcher on 3.11).

Runs on stock asyncio and on oxloop (see conftest.py); asyncio's behaviour is the expectation.
"""

import asyncio
import contextlib
import errno
import hashlib
import os
import signal
import sys
import warnings

import pytest

from helpers.net import MiB, poll_rounds
from helpers.processes import PYTHON, child_env

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/fd")

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL
STDOUT = asyncio.subprocess.STDOUT

# Children.
CAT = "import shutil, sys; shutil.copyfileobj(sys.stdin.buffer, sys.stdout.buffer)"
READ_STDIN = "import sys; sys.stdin.buffer.read()"  # runs until its stdin is closed
SLEEP = "import time; time.sleep(60)"
UPPER_LINES = """
import sys
while line := sys.stdin.readline():
    print(line.strip().upper())
"""

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


async def spawn(code, *args, **kwargs):
    """``create_subprocess_exec(PYTHON, "-c", code, *args)`` with the child environment."""
    kwargs.setdefault("env", child_env())
    return await asyncio.create_subprocess_exec(PYTHON, "-c", code, *args, **kwargs)


@contextlib.asynccontextmanager
async def running(proc):
    """Yield ``proc``; at exit, kill it if it is still running and wait for it."""
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


class ProcessRecorder(asyncio.SubprocessProtocol):
    """A SubprocessProtocol recording every call the transport makes."""

    def __init__(self, loop):
        self.loop = loop
        self.transport = None
        self.events = []
        self.data = {1: bytearray(), 2: bytearray()}
        self.returncode_at_exit = "not called"
        self.made = loop.create_future()
        self.exited = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.events.append("made")
        self.transport = transport
        self.made.set_result(transport)

    def pipe_data_received(self, fd, data):
        self.events.append(("data", fd))
        assert type(data) is bytes
        self.data[fd] += data

    def pipe_connection_lost(self, fd, exc):
        self.events.append(("pipe lost", fd, exc))

    def process_exited(self):
        self.events.append("exited")
        self.returncode_at_exit = self.transport.get_returncode()
        self.exited.set_result(None)

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.lost.set_result(exc)

    def pipe_losses(self):
        return [event[1:] for event in self.events if event[0] == "pipe lost"]


async def exec_recorded(loop, code, **kwargs):
    """``loop.subprocess_exec`` of ``python -c code`` with a ProcessRecorder."""
    kwargs.setdefault("env", child_env())
    return await loop.subprocess_exec(lambda: ProcessRecorder(loop), PYTHON, "-c", code, **kwargs)


def sha(data):
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# communicate, wait, returncode, signals
# --------------------------------------------------------------------------------------------


def test_communicate_with_stdin_stdout_and_stderr(loop):
    code = """
import sys
data = sys.stdin.buffer.read()
sys.stdout.buffer.write(data[::-1])
sys.stderr.buffer.write(b"read %d bytes" % len(data))
"""

    async def main():
        proc = await spawn(code, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        assert proc.pid > 0
        out, err = await proc.communicate(b"\x00\xffhello\r\n")
        assert out == b"\n\rolleh\xff\x00"
        assert err == b"read 9 bytes"
        assert proc.returncode == 0
        assert await proc.wait() == 0

    loop.run_until_complete(main())


def test_communicate_several_mib_through_a_cat_like_child(loop):
    data = os.urandom(8 * MiB)

    async def main():
        proc = await spawn(CAT, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate(data)
        assert len(out) == len(data)
        assert sha(out) == sha(data)
        assert err == b""
        assert proc.returncode == 0

    loop.run_until_complete(main())


def test_communicate_with_a_child_that_does_not_read_its_stdin(loop):
    # communicate() ignores the BrokenPipeError of stdin.
    async def main():
        proc = await spawn("print('done')", stdin=PIPE, stdout=PIPE)
        assert await proc.communicate(b"x" * (8 * MiB)) == (b"done\n", None)
        assert proc.returncode == 0

    loop.run_until_complete(main())


def test_exit_code_and_repeated_waits(loop):
    async def main():
        proc = await spawn("import sys; sys.exit(3)")
        assert await asyncio.gather(proc.wait(), proc.wait()) == [3, 3]
        assert proc.returncode == 3
        assert await proc.wait() == 3
        assert (proc.stdin, proc.stdout, proc.stderr) == (None, None, None)  # all inherited

    loop.run_until_complete(main())


def test_returncode_is_none_until_the_child_exits(loop):
    async def main():
        proc = await spawn(READ_STDIN, stdin=PIPE)
        async with running(proc):
            assert proc.returncode is None
            await poll_rounds(loop, 3)
            assert proc.returncode is None
            proc.stdin.close()
            assert await proc.wait() == 0
            assert proc.returncode == 0

    loop.run_until_complete(main())


@pytest.mark.parametrize(
    "how, signum",
    [("kill", signal.SIGKILL), ("terminate", signal.SIGTERM), ("send_signal", signal.SIGUSR1)],
)
def test_child_killed_by_a_signal(loop, how, signum):
    async def main():
        proc = await spawn(READ_STDIN, stdin=PIPE)
        async with running(proc):
            if how == "send_signal":
                proc.send_signal(signum)
            else:
                getattr(proc, how)()
            assert await proc.wait() == -signum
            assert proc.returncode == -signum

    loop.run_until_complete(main())


def test_signalling_a_waited_child_raises_process_lookup_error(loop):
    async def main():
        proc = await spawn("pass")
        assert await proc.wait() == 0
        with pytest.raises(ProcessLookupError):
            proc.kill()
        with pytest.raises(ProcessLookupError):
            proc.terminate()
        with pytest.raises(ProcessLookupError):
            proc.send_signal(signal.SIGUSR1)
        assert proc.returncode == 0

    loop.run_until_complete(main())


def test_create_subprocess_shell(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "echo out; echo err >&2; exit 4", stdout=PIPE, stderr=PIPE
        )
        assert await proc.communicate() == (b"out\n", b"err\n")
        assert proc.returncode == 4

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# stdin, stdout, stderr
# --------------------------------------------------------------------------------------------


def test_devnull_stdio(loop):
    code = "import sys; sys.stderr.write(repr(sys.stdin.read())); print('lost')"

    async def main():
        proc = await spawn(code, stdin=DEVNULL, stdout=DEVNULL, stderr=PIPE)
        assert proc.stdin is None and proc.stdout is None
        assert await proc.communicate() == (None, b"''")
        assert proc.returncode == 0

    loop.run_until_complete(main())


def test_stderr_to_stdout_shares_one_pipe(loop):
    code = "import sys; print('1'); print('2', file=sys.stderr); print('3')"

    async def main():
        transport, protocol = await exec_recorded(loop, code, stdin=DEVNULL, stderr=STDOUT)
        assert transport.get_pipe_transport(0) is None
        assert isinstance(transport.get_pipe_transport(1), asyncio.ReadTransport)
        assert transport.get_pipe_transport(2) is None
        assert await protocol.lost is None
        assert protocol.data == {1: bytearray(b"1\n2\n3\n"), 2: bytearray()}
        assert sorted(protocol.pipe_losses()) == [(1, None)]
        transport.close()

    loop.run_until_complete(main())


def test_stdout_to_an_fd(loop):
    r, w = os.pipe()
    with open(r, "rb") as read_end, open(w, "wb") as write_end:

        async def main():
            proc = await spawn("print('to the fd')", stdout=write_end.fileno())
            assert proc.stdout is None
            assert await proc.wait() == 0

        loop.run_until_complete(main())
        write_end.close()  # the child's copy is gone too: the reader sees the end
        assert read_end.read() == b"to the fd\n"


def test_stdin_and_stdout_from_file_objects(loop, tmp_path):
    (tmp_path / "in").write_bytes(b"from a file")
    code = "import sys; sys.stdout.write(sys.stdin.read().upper())"

    async def main():
        with open(tmp_path / "in", "rb") as stdin, open(tmp_path / "out", "wb") as stdout:
            proc = await spawn(code, stdin=stdin, stdout=stdout)
            assert (proc.stdin, proc.stdout) == (None, None)
            assert await proc.wait() == 0

    loop.run_until_complete(main())
    assert (tmp_path / "out").read_bytes() == b"FROM A FILE"


def test_inherited_stdio(loop):
    async def main():
        proc = await spawn("pass", stdin=None, stdout=None, stderr=None)
        assert (proc.stdin, proc.stdout, proc.stderr) == (None, None, None)
        assert await proc.wait() == 0

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Popen options
# --------------------------------------------------------------------------------------------


@linux_only
@pytest.mark.parametrize("passed", [True, False], ids=["pass_fds", "not-passed"])
def test_pass_fds(loop, passed):
    code = """
import os, sys
fd = int(sys.argv[1])
try:
    print(os.readlink("/proc/self/fd/%d" % fd))
    os.write(fd, b"through the passed fd")
except OSError:
    print("closed")
"""
    r, w = os.pipe()
    with open(r, "rb") as read_end, open(w, "wb") as write_end:
        pipe_name = os.readlink(f"/proc/self/fd/{w}")

        async def main():
            kwargs = {"pass_fds": (w,)} if passed else {}
            proc = await spawn(code, str(w), stdout=PIPE, **kwargs)
            out, _ = await proc.communicate()
            assert proc.returncode == 0
            return out.decode().strip()

        seen = loop.run_until_complete(main())
        write_end.close()
        if passed:
            assert seen == pipe_name
            assert read_end.read() == b"through the passed fd"
        else:
            assert seen != pipe_name  # "closed", or an fd of the child's own
            assert read_end.read() == b""


def test_cwd(loop, tmp_path):
    async def main():
        proc = await spawn("import os; print(os.getcwd())", stdout=PIPE, cwd=tmp_path)
        out, _ = await proc.communicate()
        assert out.decode().strip() == os.path.realpath(tmp_path)

    loop.run_until_complete(main())


def test_env(loop):
    env = {**child_env(), "OXLOOP_PROBE": "probe value"}
    env.pop("HOME", None)
    code = "import os; print(os.environ['OXLOOP_PROBE'], 'HOME' in os.environ)"

    async def main():
        proc = await spawn(code, stdout=PIPE, env=env)
        out, _ = await proc.communicate()
        assert out == b"probe value False\n"

    loop.run_until_complete(main())


def test_start_new_session(loop):
    code = "import os; print(os.getpid(), os.getsid(0))"

    async def main():
        proc = await spawn(code, stdout=PIPE, start_new_session=True)
        out, _ = await proc.communicate()
        pid, sid = map(int, out.split())
        assert pid == proc.pid
        assert sid == proc.pid  # the child leads a session of its own
        assert sid != os.getsid(0)

    loop.run_until_complete(main())


def test_executable_runs_another_program_under_the_given_name(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            "my-shell", "-c", 'echo "$0"', executable="/bin/sh", stdout=PIPE
        )
        assert await proc.communicate() == (b"my-shell\n", None)
        assert proc.returncode == 0

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Argument errors, programs that cannot run
# --------------------------------------------------------------------------------------------

COMMON_ERRORS = [
    ({"universal_newlines": True}, "universal_newlines must be False"),
    ({"bufsize": 1}, "bufsize must be 0"),
    ({"bufsize": -1}, "bufsize must be 0"),
    ({"text": True}, "text must be False"),
    ({"encoding": "utf-8"}, "encoding must be None"),
    ({"errors": "strict"}, "errors must be None"),
]


@pytest.mark.parametrize(
    "kwargs, message", [*COMMON_ERRORS, ({"shell": True}, "shell must be False")]
)
def test_subprocess_exec_argument_errors(loop, kwargs, message):
    made = []

    async def main():
        with pytest.raises(ValueError) as info:
            await loop.subprocess_exec(lambda: made.append(1), PYTHON, "-c", "pass", **kwargs)
        assert str(info.value) == message
        assert made == []  # checked before the protocol is made

    loop.run_until_complete(main())


@pytest.mark.parametrize(
    "cmd, kwargs, message",
    [("true", kwargs, message) for kwargs, message in COMMON_ERRORS]
    + [
        (["true"], {}, "cmd must be a string"),
        (("true",), {}, "cmd must be a string"),
        ("true", {"shell": False}, "shell must be True"),
    ],
)
def test_subprocess_shell_argument_errors(loop, cmd, kwargs, message):
    made = []

    async def main():
        with pytest.raises(ValueError) as info:
            await loop.subprocess_shell(lambda: made.append(1), cmd, **kwargs)
        assert str(info.value) == message
        assert made == []

    loop.run_until_complete(main())


def test_create_subprocess_functions_pass_the_checks_on(loop):
    async def main():
        with pytest.raises(ValueError, match=r"^shell must be False$"):
            await asyncio.create_subprocess_exec(PYTHON, "-c", "pass", shell=True)
        with pytest.raises(ValueError, match=r"^shell must be True$"):
            await asyncio.create_subprocess_shell("true", shell=False)
        with pytest.raises(ValueError, match=r"^text must be False$"):
            await asyncio.create_subprocess_exec(PYTHON, "-c", "pass", text=True)

    loop.run_until_complete(main())


def test_a_program_that_does_not_exist(loop, tmp_path):
    async def main():
        with pytest.raises(FileNotFoundError) as info:
            await asyncio.create_subprocess_exec(
                str(tmp_path / "missing"), stdin=PIPE, stdout=PIPE, stderr=PIPE
            )
        assert info.value.errno == errno.ENOENT

    loop.run_until_complete(main())  # and no pipe fd left open (leak check)


def test_a_program_that_is_not_executable(loop, tmp_path):
    path = tmp_path / "not-executable"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o644)

    async def main():
        with pytest.raises(PermissionError) as info:
            await asyncio.create_subprocess_exec(str(path), stdout=PIPE)
        assert info.value.errno == errno.EACCES

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# The subprocess transport and protocol
# --------------------------------------------------------------------------------------------


def test_subprocess_transport_accessors(loop):
    async def main():
        transport, protocol = await exec_recorded(loop, READ_STDIN, stderr=DEVNULL)
        assert protocol.events == ["made"]  # connection_made has run
        assert protocol.made.result() is transport
        assert isinstance(transport, asyncio.SubprocessTransport)
        assert transport.get_protocol() is protocol
        pid = transport.get_pid()
        assert isinstance(pid, int) and pid > 0
        assert transport.get_extra_info("subprocess").pid == pid
        assert transport.get_returncode() is None
        assert not transport.is_closing()
        stdin, stdout = transport.get_pipe_transport(0), transport.get_pipe_transport(1)
        assert isinstance(stdin, asyncio.WriteTransport)
        assert isinstance(stdout, asyncio.ReadTransport)
        assert transport.get_pipe_transport(2) is None  # DEVNULL
        assert transport.get_pipe_transport(3) is None
        stdin.close()  # the child reads its end of file and exits
        assert await protocol.lost is None
        assert transport.get_returncode() == 0
        assert transport.get_pid() == pid
        transport.close()

    loop.run_until_complete(main())


def test_subprocess_protocol_callback_order(loop):
    # asyncio guarantees: connection_made first; each pipe's data before its
    # pipe_connection_lost; process_exited once, with the return code already set;
    # connection_lost(None) last, after process_exited and every pipe_connection_lost, without
    # close() being called. (process_exited may come before or after the pipes' ends.)
    code = "import sys; sys.stdout.write('out' * 1000); sys.stderr.write('err')"

    async def main():
        transport, protocol = await exec_recorded(loop, code)
        assert await protocol.lost is None
        events = protocol.events
        assert events[0] == "made"
        assert events[-1] == ("lost", None)
        assert events.count("exited") == 1
        assert protocol.returncode_at_exit == 0
        assert sorted(protocol.pipe_losses()) == [(0, None), (1, None), (2, None)]
        for fd in (1, 2):
            lost_at = events.index(("pipe lost", fd, None))
            assert ("data", fd) not in events[lost_at:]
        assert protocol.data == {1: bytearray(b"out" * 1000), 2: bytearray(b"err")}
        await poll_rounds(loop)
        assert [e for e in events if e[0] == "lost"] == [("lost", None)]
        transport.close()

    loop.run_until_complete(main())


def test_stdin_broken_pipe_reaches_pipe_connection_lost(loop):
    # The child exits after one line while most of the input is still buffered: the stdin
    # pipe ends with a BrokenPipeError (not reported to the exception handler).
    async def main():
        transport, protocol = await exec_recorded(loop, "import sys; sys.stdin.buffer.readline()")
        transport.get_pipe_transport(0).write(b"line\n" + b"x" * (4 * MiB))
        assert await protocol.lost is None
        losses = dict(protocol.pipe_losses())
        assert isinstance(losses[0], BrokenPipeError)
        assert losses[1] is None and losses[2] is None
        assert transport.get_returncode() == 0
        transport.close()

    loop.run_until_complete(main())


def test_close_kills_a_running_child_and_reaps_it(loop):
    async def main():
        transport, protocol = await exec_recorded(loop, SLEEP)
        pid = transport.get_pid()
        transport.close()
        assert transport.is_closing()
        assert transport.get_returncode() is None  # not known yet
        transport.close()
        assert await protocol.lost is None
        assert transport.get_returncode() == -signal.SIGKILL
        assert protocol.returncode_at_exit == -signal.SIGKILL
        assert sorted(protocol.pipe_losses()) == [(0, None), (1, None), (2, None)]
        with pytest.raises(ChildProcessError):  # no zombie left
            os.waitpid(pid, os.WNOHANG)

    loop.run_until_complete(main())  # and no pipe fd left open (leak check)


def test_subprocess_shell_through_the_loop(loop):
    async def main():
        transport, protocol = await loop.subprocess_shell(
            lambda: ProcessRecorder(loop), 'read line; echo "got $line"; exit 2'
        )
        stdin = transport.get_pipe_transport(0)
        stdin.write(b"it\n")
        stdin.close()
        assert await protocol.lost is None
        assert protocol.data[1] == b"got it\n"
        assert transport.get_returncode() == 2
        transport.close()

    loop.run_until_complete(main())


# --------------------------------------------------------------------------------------------
# Streams, many children, cancellation
# --------------------------------------------------------------------------------------------


def test_line_by_line_conversation(loop):
    async def main():
        proc = await spawn(UPPER_LINES, stdin=PIPE, stdout=PIPE)
        async with running(proc):
            for word in (b"one", b"two", b"three"):
                proc.stdin.write(word + b"\n")
                await proc.stdin.drain()
                assert await proc.stdout.readline() == word.upper() + b"\n"
            proc.stdin.close()
            assert await proc.stdout.read() == b""
            assert await proc.wait() == 0

    loop.run_until_complete(main())


def test_all_output_of_a_child_exiting_right_after_writing_is_read(loop):
    code = "import os, sys; sys.stdout.buffer.write(b'0123456789abcdef' * 131072); os._exit(0)"

    async def main():
        proc = await spawn(code, stdout=PIPE)
        out = await proc.stdout.read()
        assert len(out) == 2 * MiB
        assert out == b"0123456789abcdef" * 131072
        assert await proc.wait() == 0

    loop.run_until_complete(main())


@pytest.mark.timeout(60)
def test_many_children_at_once(loop):
    async def one():
        proc = await spawn("pass")
        return await proc.wait()

    async def main():
        assert await asyncio.gather(*(one() for _ in range(50))) == [0] * 50

    loop.run_until_complete(main())


@pytest.mark.parametrize("waiting", ["wait", "communicate"])
def test_cancelled_wait_then_kill(loop, waiting):
    async def main():
        proc = await spawn(SLEEP, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        async with running(proc):
            call = proc.wait() if waiting == "wait" else proc.communicate(b"input")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(call, 0.2)
            assert proc.returncode is None
            proc.kill()
            assert await proc.wait() == -signal.SIGKILL
        # The loop keeps working, children included.
        other = await spawn("print('still fine')", stdout=PIPE)
        assert await other.communicate() == (b"still fine\n", None)

    loop.run_until_complete(main())


@pytest.mark.skipif(
    sys.version_info >= (3, 14), reason="child watchers were removed in Python 3.14"
)
def test_a_child_watcher_the_application_installed_is_used(loop):
    """A child watcher installed with asyncio.set_child_watcher (deprecated from 3.12) is
    handed every child, and reports its exit, as asyncio's loop does up to 3.13."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)

        class Recording(asyncio.ThreadedChildWatcher):
            """asyncio's threaded watcher, recording the children it is given."""

            def __init__(self):
                super().__init__()
                self.pids = []

            def add_child_handler(self, pid, callback, *args):
                self.pids.append(pid)
                super().add_child_handler(pid, callback, *args)

        watcher = Recording()
        asyncio.set_child_watcher(watcher)

    async def main():
        process = await asyncio.create_subprocess_exec(
            PYTHON, "-c", "raise SystemExit(3)", env=child_env()
        )
        return process.pid, await process.wait()

    try:
        pid, returncode = loop.run_until_complete(main())
        assert (watcher.pids, returncode) == ([pid], 3)
    finally:
        for thread in list(watcher._threads.values()):
            thread.join()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(None)
