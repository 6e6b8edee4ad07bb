"""oxloop refuses, at import, an interpreter it cannot run on: a free-threaded CPython build
(its native core relies on the GIL). oxloop-only: stock asyncio has no such requirement."""

import pytest

from oxloop._interpreter import check_supported


def test_a_free_threaded_build_is_refused_with_a_clear_message():
    config = {"Py_GIL_DISABLED": 1}
    with pytest.raises(
        ImportError, match=r"^oxloop does not support free-threaded CPython builds yet"
    ):
        check_supported(config.get)


@pytest.mark.parametrize("value", [0, None])
def test_a_build_with_the_gil_is_accepted(value):
    config = {"Py_GIL_DISABLED": value}
    assert check_supported(config.get) is None  # no ImportError


def test_this_interpreter_is_accepted():
    assert check_supported() is None  # no ImportError
