"""Entry points: oxloop.run (against asyncio.run), asyncio.Runner with a loop factory,
oxloop.install() and EventLoopPolicy (against asyncio's default policy), and
``python -m oxloop script.py args`` (against ``python script.py args``) in a child process.

Where a test is parametrized by ``loop_kind``, the asyncio case uses asyncio's own entry point
and is the expectation.
"""

import asyncio
import contextvars
import sys
import textwrap
import threading

import pytest

import oxloop
from helpers.loops import LOOP_FACTORIES, LOOP_TYPES
from helpers.processes import run_python

RUN = {"asyncio": asyncio.run, "oxloop": oxloop.run}
POLICIES = {"asyncio": asyncio.DefaultEventLoopPolicy, "oxloop": oxloop.EventLoopPolicy}


# --------------------------------------------------------------------------------------------
# run()
# --------------------------------------------------------------------------------------------


def test_run_returns_the_value_on_a_loop_of_its_kind(loop_kind, leak_check):
    seen = []

    async def main(x):
        loop = asyncio.get_running_loop()
        seen.append(loop)
        await asyncio.sleep(0.001)
        return x * 2

    assert RUN[loop_kind](main(21)) == 42
    (loop,) = seen
    assert isinstance(loop, LOOP_TYPES[loop_kind])
    assert loop.is_closed()
    assert asyncio._get_running_loop() is None


def test_run_propagates_the_exception(loop_kind, leak_check):
    async def main():
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        RUN[loop_kind](main())


@pytest.mark.parametrize("debug", [True, False])
def test_run_debug_argument(loop_kind, debug, leak_check):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert RUN[loop_kind](main(), debug=debug) is debug


def test_run_cancels_leftover_tasks_and_closes_async_generators(loop_kind, leak_check):
    events = []

    async def leftover():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("task cancelled")
            raise

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append("agen closed")

    generators = []

    async def main():
        asyncio.ensure_future(leftover())  # noqa: RUF006 (left for the runner to cancel)
        g = agen()
        generators.append(g)
        await g.__anext__()
        await asyncio.sleep(0)
        return "done"

    assert RUN[loop_kind](main()) == "done"
    assert sorted(events) == ["agen closed", "task cancelled"]


def test_run_shuts_the_default_executor_down(loop_kind, leak_check):
    threads = []

    async def main():
        threads.append(
            await asyncio.get_running_loop().run_in_executor(None, threading.current_thread)
        )

    RUN[loop_kind](main())
    assert not threads[0].is_alive()


def test_run_from_a_running_loop_raises(loop, loop_kind):
    async def inner():
        pass

    async def main():
        coro = inner()
        try:
            with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
                RUN[loop_kind](coro)
        finally:
            coro.close()

    loop.run_until_complete(main())


def test_run_rejects_non_coroutines(loop_kind, leak_check):
    with pytest.raises(ValueError, match="a coroutine was expected"):
        RUN[loop_kind](asyncio.sleep)


# --------------------------------------------------------------------------------------------
# asyncio.Runner
# --------------------------------------------------------------------------------------------


def test_runner_with_loop_factory(loop_kind, leak_check):
    async def get_loop():
        return asyncio.get_running_loop()

    with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_kind]) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, LOOP_TYPES[loop_kind])
        assert runner.run(get_loop()) is loop
        assert runner.run(get_loop()) is loop  # one loop for every run
    assert loop.is_closed()


def test_runner_keeps_its_context_between_runs(loop_kind, leak_check):
    var = contextvars.ContextVar("var", default=0)

    async def increment():
        var.set(var.get() + 1)
        return var.get()

    with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_kind]) as runner:
        assert [runner.run(increment()) for _ in range(3)] == [1, 2, 3]
    assert var.get() == 0


# --------------------------------------------------------------------------------------------
# install() and the policy
# --------------------------------------------------------------------------------------------


def test_install_makes_asyncio_run_use_oxloop(oxloop_leak_check, restore_policy):
    oxloop.install()
    assert isinstance(asyncio.get_event_loop_policy(), oxloop.EventLoopPolicy)

    async def main():
        return type(asyncio.get_running_loop())

    assert asyncio.run(main()) is oxloop.Loop
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, oxloop.Loop)
    finally:
        loop.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_policy_get_event_loop_in_the_main_thread(loop_kind, leak_check):
    policy = POLICIES[loop_kind]()
    loop = policy.get_event_loop()
    try:
        assert isinstance(loop, LOOP_TYPES[loop_kind])
        assert policy.get_event_loop() is loop  # the same loop every time
    finally:
        policy.set_event_loop(None)
        loop.close()


def test_policy_new_event_loop_and_set_event_loop(loop_kind, leak_check):
    policy = POLICIES[loop_kind]()
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, LOOP_TYPES[loop_kind])
        policy.set_event_loop(loop)
        assert policy.get_event_loop() is loop
        policy.set_event_loop(None)
    finally:
        loop.close()


def test_policy_get_event_loop_in_another_thread_raises(loop_kind, leak_check):
    policy = POLICIES[loop_kind]()
    errors = []

    def get():
        try:
            policy.get_event_loop()
        except RuntimeError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=get, name="not-main")
    thread.start()
    thread.join()
    assert errors == ["There is no current event loop in thread 'not-main'."]


# --------------------------------------------------------------------------------------------
# python -m oxloop
# --------------------------------------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import helper_module  # next to the script: the script's directory is on sys.path

    async def main():
        loop = asyncio.get_running_loop()
        return f"{type(loop).__module__}.{type(loop).__name__}"

    print("name", __name__)
    print("argv", sys.argv[1:])
    print("argv0", sys.argv[0])
    print("loop", asyncio.run(main()))
    print("helper", helper_module.VALUE)
    """
)

EXPECTED_LOOP = {
    "asyncio": "asyncio.unix_events._UnixSelectorEventLoop",
    "oxloop": "oxloop._loop.Loop",
}
LAUNCHER = {"asyncio": [], "oxloop": ["-m", "oxloop"]}


def test_script_runs_with_its_arguments(loop_kind, tmp_path, leak_check):
    """``python -m oxloop script.py args`` behaves as ``python script.py args``, on oxloop."""
    (tmp_path / "helper_module.py").write_text("VALUE = 'helped'\n")
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    result = run_python(
        [*LAUNCHER[loop_kind], str(script), "first", "--second", "3", "-m", "--help"], cwd="/"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "name __main__",
        "argv ['first', '--second', '3', '-m', '--help']",
        f"argv0 {script}",
        f"loop {EXPECTED_LOOP[loop_kind]}",
        "helper helped",
    ]


def test_script_exception_exits_with_a_traceback(loop_kind, tmp_path, leak_check):
    script = tmp_path / "failing.py"
    script.write_text("raise LookupError('script failed')\n")
    result = run_python([*LAUNCHER[loop_kind], str(script)])
    assert result.returncode == 1
    assert "Traceback (most recent call last):" in result.stderr
    assert result.stderr.rstrip().endswith("LookupError: script failed")


def test_script_exit_code_is_kept(loop_kind, tmp_path, leak_check):
    script = tmp_path / "exits.py"
    script.write_text("import sys\nsys.exit(7)\n")
    assert run_python([*LAUNCHER[loop_kind], str(script)]).returncode == 7


def test_python_m_oxloop_runs_a_module(tmp_path, oxloop_leak_check):
    (tmp_path / "mod_under_test.py").write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            async def main():
                return type(asyncio.get_running_loop()).__name__
            print(__name__, sys.argv[1:], asyncio.run(main()))
            """
        )
    )
    result = run_python(["-m", "oxloop", "-m", "mod_under_test", "x", "-y", "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "__main__ ['x', '-y', '--help'] Loop"


def test_python_m_oxloop_usage():
    result = run_python(["-m", "oxloop"])
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python -m oxloop")
    for option in ("-h", "--help"):
        result = run_python(["-m", "oxloop", option])
        assert result.returncode == 0
        assert result.stdout.startswith("usage: python -m oxloop")
        assert "-h, --help" in result.stdout
        assert "-m module" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--foo", "app.py"], "unknown option --foo"),
        (["-z", "app.py"], "Unknown option: -z"),
        (["-m"], "Argument expected for the -m option"),
    ],
)
def test_command_line_mistakes_get_a_usage_message_and_status_2(
    loop_kind, args, message, tmp_path, leak_check
):
    """As ``python`` reports them: the mistake, then the usage, no traceback."""
    (tmp_path / "app.py").write_text("print('ran')\n")
    result = run_python([*LAUNCHER[loop_kind], *args], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == message
    assert lines[1].startswith("usage: ")
    assert "Traceback" not in result.stderr


def test_a_script_that_cannot_be_opened_is_reported_without_a_traceback(
    loop_kind, tmp_path, leak_check
):
    """``python missing.py``: "<program>: can't open file '<absolute path>': [Errno 2] ...",
    exit status 2."""
    result = run_python([*LAUNCHER[loop_kind], "missing.py", "arg"], cwd=tmp_path)
    assert result.returncode == 2
    expected = f": can't open file '{tmp_path / 'missing.py'}': [Errno 2] No such file or directory"
    assert result.stderr.endswith(expected + "\n"), result.stderr
    assert result.stderr.count("\n") == 1


def test_child_interpreter_is_this_one():
    # The subprocess tests above run oxloop from this virtualenv.
    result = run_python(["-c", "import sys, oxloop; print(sys.prefix)"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == sys.prefix
