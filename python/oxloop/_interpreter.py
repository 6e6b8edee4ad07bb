"""The interpreter oxloop runs on: checked once, before the extension is imported."""

import sysconfig


def check_supported(config_var=sysconfig.get_config_var):
    """Raise ImportError on an interpreter oxloop cannot run on: a free-threaded build
    (``Py_GIL_DISABLED``). The native core relies on the GIL to guard its state."""
    if config_var("Py_GIL_DISABLED"):
        raise ImportError(
            "oxloop does not support free-threaded CPython builds yet: its native core relies "
            "on the GIL (use a standard build of CPython 3.11 or newer)"
        )
