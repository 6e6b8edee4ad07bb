"""The interpreter exits promptly, and cleanly, once a program's loops are done with.

Each test runs a session in a child Python process and times its exit: once the session says
it is over, the process must end within ``EXIT_LIMIT`` seconds with exit status 0, as it does
on stock asyncio. If it hangs, its ``faulthandler`` watchdog prints every thread's stack to
its stderr (shown by the failing assertion) and ends it.

The sessions:

* many loops, like a long test run's: each spawns children, handles a signal, serves and
  connects over a Unix socket and uses the default executor; some are closed by
  ``asyncio.Runner``, some by ``loop.close()`` alone, some never (still open, with a child
  running, when the interpreter shuts down: a failed test's traceback, which pytest keeps in
  ``sys.last_traceback``, keeps its loop alive until then), and one is left waiting in a
  daemon thread;
* a loop left running callbacks in a daemon thread (on CPython before 3.14 such a thread,
  taking the GIL back during shutdown, is ended by `pthread_exit` inside the callback).

Every test runs on stock asyncio and on oxloop (see tests/conftest.py).
"""

import subprocess
import textwrap

from helpers.processes import PYTHON, child_env

#: Seconds the child may take to exit after its session (a bound, not a speed measure).
EXIT_LIMIT = 10

#: The start of every session: ``new_loop`` makes loops of the kind named by the first
#: argument; ``session_over()`` says so and arms the watchdog.
PRELUDE = """
import asyncio, faulthandler, sys
import oxloop

new_loop = {"asyncio": asyncio.new_event_loop, "oxloop": oxloop.new_event_loop}[sys.argv[1]]

def session_over():
    print("session over", flush=True)
    faulthandler.dump_traceback_later(float(sys.argv[2]), exit=True)
"""

MANY_LOOPS = '''
import os, signal, threading
from asyncio.subprocess import DEVNULL, PIPE

sock_dir = sys.argv[3]

async def echo(reader, writer):
    writer.write(await reader.read(100))
    await writer.drain()
    writer.close()

async def work(name):
    loop = asyncio.get_running_loop()
    finished = await asyncio.create_subprocess_exec("true")
    assert await finished.wait() == 0
    # Still running when the loop closes: cat ends when its stdin does, with this process.
    await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=DEVNULL, stderr=DEVNULL)
    signalled = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, signalled.set_result, None)
    os.kill(os.getpid(), signal.SIGUSR1)
    await signalled
    path = os.path.join(sock_dir, name)
    server = await asyncio.start_unix_server(echo, path)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"ping")
    assert await reader.read() == b"ping"
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    assert await loop.run_in_executor(None, sum, range(10)) == 45

def failed_test(name, previous_failure):
    """A test failing with its loop open and a child running."""
    new_loop().run_until_complete(work(name))
    raise AssertionError(name) from previous_failure

failure = None
for i in range(8):
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(work(f"runner{i}"))
    loop = new_loop()
    loop.run_until_complete(work(f"closed{i}"))
    loop.close()  # the default executor's idle workers are not joined
    try:
        failed_test(f"failed{i}", failure)
    except AssertionError as exc:
        failure = exc
# What pytest does with a failure; the chain of failures keeps every failed test's loop.
sys.last_type, sys.last_value, sys.last_traceback = type(failure), failure, failure.__traceback__
del failure

threading.Thread(target=new_loop().run_forever, daemon=True).start()
session_over()
'''

BUSY_DAEMON_LOOP = """
import threading, time

loop = new_loop()

def blocking_callback():
    time.sleep(0.0005)  # releases the GIL, as a callback doing blocking I/O does
    loop.call_soon(blocking_callback)

loop.call_soon(blocking_callback)
threading.Thread(target=loop.run_forever, daemon=True).start()
time.sleep(0.05)
session_over()
"""


def exit_after(session: str, loop_kind: str, *args: str) -> tuple[int, str]:
    """Run ``session`` in a child interpreter on loops of ``loop_kind``; return its exit
    status once it has exited (at most ``EXIT_LIMIT`` seconds after its session) and its
    stderr."""
    source = textwrap.dedent(PRELUDE) + textwrap.dedent(session)
    command = [PYTHON, "-c", source, loop_kind, str(EXIT_LIMIT), *args]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(), text=True
    ) as child:
        try:
            assert child.stdout.readline() == "session over\n"
            returncode = child.wait(timeout=EXIT_LIMIT + 5)
        finally:
            child.kill()
            stderr = child.communicate()[1]
    return returncode, stderr


def exit_failure(returncode: int, stderr: str) -> str:
    """What went wrong with a child's exit, for an assertion message."""
    return (
        f"exit status {returncode} (1 if the watchdog ended a hang, -6 on an abort); "
        f"stderr:\n{stderr}"
    )


def test_the_process_exits_promptly_after_a_session_of_many_loops(loop_kind, sock_dir, leak_check):
    returncode, stderr = exit_after(MANY_LOOPS, loop_kind, sock_dir)
    assert returncode == 0, exit_failure(returncode, stderr)


def test_a_loop_running_callbacks_in_a_daemon_thread_does_not_spoil_the_exit(loop_kind, leak_check):
    returncode, stderr = exit_after(BUSY_DAEMON_LOOP, loop_kind)
    assert returncode == 0, exit_failure(returncode, stderr)
