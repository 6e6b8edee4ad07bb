"""The loop benchmark harnesses run and report what they measured (benchmarks/loop_bench.py,
benchmarks/process_bench.py, benchmarks/virtual_clock_bench.py), in their ``--quick`` sizes.

Nothing here looks at a speed: the point is that the harnesses quoted in docs/performance.md
keep working, measure every workload on every loop asked for, and say in their reports how
they measured (the garbage collector on, or off with ``--no-gc``). uvloop and rloop are not
test dependencies, so the runs ask for stock asyncio and oxloop only (and looptime where it is
installed).
"""

import ast
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from helpers.processes import PYTHON, child_env

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
LOOPS = "asyncio,oxloop"


def defined_workloads() -> set[str]:
    """The names of the functions ``benchmarks/workloads.py`` registers with ``@workload``."""
    tree = ast.parse((BENCHMARKS / "workloads.py").read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(
            isinstance(d, ast.Call) and getattr(d.func, "id", None) == "workload"
            for d in node.decorator_list
        )
    }


def run_harness(script: str, json_path: Path, *options: str) -> tuple[str, dict]:
    """Runs ``benchmarks/<script> --quick`` on LOOPS; returns its Markdown report and JSON."""
    args = [PYTHON, str(BENCHMARKS / script), "--quick", "--loops", LOOPS, "--json", str(json_path)]
    args += options
    done = subprocess.run(args, env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout, json.loads(json_path.read_text())


@pytest.mark.parametrize("collector", [True, False], ids=["gc-on", "no-gc"])
def test_loop_bench_measures_every_workload_on_every_loop(tmp_path, collector):
    options = () if collector else ("--no-gc",)
    report, results = run_harness("loop_bench.py", tmp_path / "loop.json", *options)

    assert results["garbage_collector"] is collector
    expected_mode = "garbage collector on" if collector else "garbage collector off"
    assert expected_mode in report
    assert set(results["loops"]) == {"asyncio", "oxloop"}
    assert {workload["name"] for workload in results["workloads"]} == defined_workloads()
    assert "call_soon_chain" in defined_workloads()  # the parse finds them
    for workload in results["workloads"]:
        assert workload["errors"] == {}, workload["name"]
        for loop in ("asyncio", "oxloop"):
            samples = workload["loops"][loop]["samples_seconds"]
            assert len(samples) == results["rounds"], workload["name"]
            assert all(seconds > 0 for seconds in samples), workload["name"]
        assert f"| {workload['name']} |" in report


def test_process_bench_spawns_on_every_loop(tmp_path):
    report, results = run_harness("process_bench.py", tmp_path / "process.json")

    assert results["garbage_collector"] is True
    assert "## Subprocess benchmarks" in report
    for workload in results["workloads"]:
        assert workload["errors"] == {}, workload["name"]
        assert set(workload["loops"]) == {"asyncio", "oxloop"}, workload["name"]


def test_virtual_clock_bench_checks_and_reports_every_mode(tmp_path):
    modes = ["oxloop-virtual", "oxloop-real", "asyncio-real"]
    if importlib.util.find_spec("looptime") is not None:
        modes.insert(1, "looptime")
    json_path = tmp_path / "virtual.json"
    args = [PYTHON, str(BENCHMARKS / "virtual_clock_bench.py"), "--quick", "--rounds", "1"]
    args += ["--tasks", "20", "--sleeps", "5", "--real-scale", "1e-6", "--json", str(json_path)]
    args += ["--modes", ",".join(modes)]
    done = subprocess.run(args, env=child_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    report, results = done.stdout, json.loads(json_path.read_text())

    assert "## Virtual clock benchmark" in report
    assert "100 timer firings" in report
    assert results["firings"] == 100
    assert list(results["modes"]) == modes
    for name, mode in results["modes"].items():
        assert mode["error"] is None, name
        assert len(mode["samples_seconds"]) == 1, name
        assert mode["events_per_second"] > 0, name
        assert f"| {name} |" in report
        # The child checked the firings and the clock; the spans it reports say the same.
        expected_span = 8 * 3600 if mode["virtual"] else 8 * 3600 * 1e-6
        (span,) = mode["loop_spans_seconds"]
        if mode["virtual"]:
            assert span == pytest.approx(expected_span, abs=0.01), name
        else:
            assert span >= expected_span - 1e-3, name
    assert results["modes"]["oxloop-real"]["target_speedup"] is not None
