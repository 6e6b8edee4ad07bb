"""The type stubs of the extension, ``python/oxloop/_core.pyi``, match the built ``oxloop._core``.

Two checks, which together fail if a stub is missing or wrong:

* ``mypy.stubtest`` compares every name of the stub with the runtime object (presence, kind,
  parameter names, kinds and defaults, ``@final``, ``@disjoint_base``...) and reports public
  runtime names missing from the stub. It does not report *private* runtime names missing
  from the stub (``LoopCore._run_once``, ``Handle._callback``...), hence:
* every underscore name of the runtime module and classes must be defined in the stub too
  (stubtest then checks its signature like any other).

Needs mypy (``requirements/test.txt``). ``tests/stubtest_allowlist.txt`` is passed to
stubtest if it exists; there is none today because nothing needs allowing.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oxloop import _core

REPO = Path(__file__).resolve().parent.parent
STUB = REPO / "python" / "oxloop" / "_core.pyi"
ALLOWLIST = Path(__file__).resolve().parent / "stubtest_allowlist.txt"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _stub_names() -> tuple[set[str], dict[str, set[str]]]:
    """The names the stub defines at module level, and in each class body."""
    tree = ast.parse(STUB.read_text(), filename=str(STUB))
    module_names: set[str] = set()
    class_names: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            module_names.add(node.name)
            names = class_names.setdefault(node.name, set())
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    names.update(t.id for t in item.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            module_names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            module_names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            module_names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return module_names, class_names


@pytest.mark.timeout(300)  # mypy loads typeshed's stdlib stubs first: seconds, not milliseconds
def test_stubtest_passes(tmp_path):
    try:
        import mypy.stubtest  # noqa: F401
    except ImportError:
        pytest.fail("mypy is not installed: pip install -r requirements/test.txt")
    command = [sys.executable, "-m", "mypy.stubtest", "oxloop._core"]
    if ALLOWLIST.exists():
        command += ["--allowlist", str(ALLOWLIST)]
    env = dict(os.environ)
    # The stub of this checkout, whether oxloop is installed editable or as a wheel.
    env["MYPYPATH"] = str(REPO / "python")
    result = subprocess.run(
        command,
        cwd=tmp_path,  # no stray mypy configuration or cache in the repository
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, f"stubtest found problems:\n{result.stdout}{result.stderr}"


def test_stub_declares_every_private_runtime_name():
    module_names, class_names = _stub_names()
    missing = [name for name in vars(_core) if _is_private(name) and name not in module_names]
    for class_name in ("LoopCore", "Handle", "TimerHandle"):
        runtime_class = getattr(_core, class_name)
        stub_class = class_names.get(class_name, set())
        missing += [
            f"{class_name}.{name}"
            for name in vars(runtime_class)
            if _is_private(name) and name not in stub_class
        ]
    assert not missing, f"private names of oxloop._core missing from {STUB.name}: {missing}"
