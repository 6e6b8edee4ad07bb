"""The methods oxloop's loop borrows from asyncio's selector loop classes (see "Borrowed
selector-loop methods" in docs/architecture.md) run on a loop that is not an instance of
those classes: on the running Python, every attribute they use on ``self`` must exist on an
oxloop loop, and none may call ``super()`` without arguments.

oxloop only: it checks oxloop's loop against the running version's asyncio source.
"""

import inspect
import re
from asyncio import selector_events, unix_events

import pytest

import oxloop

# The classes whose methods oxloop's loop takes as plain functions.
LENDERS = (selector_events.BaseSelectorEventLoop, unix_events._UnixSelectorEventLoop)


def borrowed_methods():
    """(name, function) of every attribute of ``oxloop.Loop`` that is a function defined in
    one of ``LENDERS`` (and not inherited from them: oxloop's loop derives from neither)."""
    lender_names = {cls.__name__ for cls in LENDERS}
    found = []
    for name in dir(oxloop.Loop):
        function = inspect.getattr_static(oxloop.Loop, name)
        qualname = getattr(function, "__qualname__", "")
        if inspect.isfunction(function) and qualname.split(".")[0] in lender_names:
            found.append((name, function))
    return found


BORROWED = borrowed_methods()


def test_the_loop_borrows_the_documented_methods():
    assert sorted(name for name, _ in BORROWED) == [
        "_accept_connection2",
        "_sock_add_cancellation_callback",
        "_sock_sendfile_native",
        "_sock_sendfile_native_impl",
        "_sock_sendfile_update_filepos",
        "_start_serving",
        "create_unix_connection",
        "create_unix_server",
    ]
    assert not any(issubclass(oxloop.Loop, cls) for cls in LENDERS)


@pytest.mark.parametrize("name, function", BORROWED, ids=[name for name, _ in BORROWED])
def test_a_borrowed_method_finds_its_state_on_the_loop(oxloop_leak_check, name, function):
    source = inspect.getsource(function)
    assert not re.search(r"\bsuper\(\)", source), f"{name} calls super() without arguments"
    loop = oxloop_leak_check.new_loop()
    used = sorted(set(re.findall(r"\bself\.(\w+)", source)))
    assert [attribute for attribute in used if not hasattr(loop, attribute)] == []
