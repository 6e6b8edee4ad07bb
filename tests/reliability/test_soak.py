"""A short soak of an HTTP server under load with connection churn (benchmarks/soak.py).

``benchmarks/soak.py`` runs the server on the loop under test in one process and a checking
load generator in another, samples the server's RSS and fd count every interval, and writes
what it saw as JSON. Here it runs for a few seconds per loop kind and server (an aiohttp.web
application and a minimal asyncio.Protocol server), and the test asserts on that JSON: no
request failed, every interval completed requests, connections really churned, the idle
server's fd count came back to where it was, and RSS stayed flat after the warm-up.

The harness's own judgement (what makes ``soak.py`` exit non-zero) is tested on made-up
samples, without running anything.
"""

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from helpers.processes import PYTHON, child_env

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
DURATION = 8  # seconds of load per run
INTERVAL = 1
WARMUP = 2
CONNECTIONS = 32
REQUESTS_PER_CONNECTION = 10
FD_MARGIN = 2  # fds the idle server may gain over the whole run
RSS_GROWTH_LIMIT_MIB = 10  # RSS growth allowed between the first and last sample after warm-up


def load_soak_module():
    """benchmarks/soak.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("soak_harness", SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_soak(loop_kind: str, server: str, json_path: Path) -> dict:
    """Runs soak.py on ``loop_kind`` and returns its JSON report (fails on a non-zero exit)."""
    options = {
        "--loop": loop_kind,
        "--server": server,
        "--duration": DURATION,
        "--interval": INTERVAL,
        "--warmup": WARMUP,
        "--connections": CONNECTIONS,
        "--requests-per-connection": REQUESTS_PER_CONNECTION,
        "--json": json_path,
    }
    args = [PYTHON, str(SOAK)] + [str(word) for option in options.items() for word in option]
    done = subprocess.run(
        args, env=child_env(), capture_output=True, text=True, timeout=DURATION + 40
    )
    assert done.returncode == 0, f"soak.py exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return json.loads(json_path.read_text())


@pytest.mark.timeout(DURATION + 60)
@pytest.mark.parametrize("server", ["aiohttp", "protocol"])
def test_soak_stays_flat(loop_kind, server, tmp_path):
    """Under churning load the server answers every request correctly in every interval, and
    neither its fds nor its RSS grow."""
    report = run_soak(loop_kind, server, tmp_path / "soak.json")
    samples, summary = report["samples"], report["summary"]

    assert report["problems"] == []
    assert summary["errors"] == 0
    assert len(samples) == DURATION // INTERVAL
    assert all(sample["requests"] > 0 for sample in samples), samples
    assert summary["requests"] == summary["client_requests"] >= sum(s["requests"] for s in samples)
    # Connections were closed and reopened: at most REQUESTS_PER_CONNECTION requests each.
    assert summary["connections"] >= summary["requests"] / REQUESTS_PER_CONNECTION
    assert summary["connections"] > CONNECTIONS

    idle_before, idle_after = report["idle_before"]["fds"], report["idle_after"]["fds"]
    assert idle_after <= idle_before + FD_MARGIN, (idle_before, idle_after)
    # Under load: the idle fds plus the connections, some of them still closing on the
    # server's side while their replacements are accepted.
    assert max(s["fds"] for s in samples) <= idle_before + 2 * CONNECTIONS + FD_MARGIN, samples

    assert summary["rss_growth_mib"] < RSS_GROWTH_LIMIT_MIB, samples


def made_up_report(rss=(40.0, 40.0, 40.0), requests=(100, 100, 100), errors=0, idle_fds=(9, 9)):
    """A report as soak.py builds it before judging, with the given per-sample values."""
    samples = [
        {"t": float(i + 1), "requests": n, "rss_mib": r, "fds": 70}
        for i, (r, n) in enumerate(zip(rss, requests, strict=False))
    ]
    total = sum(requests)
    client_errors = ["client 0: boom"] * errors
    return {
        "samples": samples,
        "client": {"requests": total, "errors": errors, "error_samples": client_errors},
        "server": {"requests": total, "connections": total // 10, "errors": 0, "error_samples": []},
        "idle_before": {"fds": idle_fds[0]},
        "idle_after": {"fds": idle_fds[1]},
    }


def test_soak_judgement():
    """soak.py fails a run for errors, stalled intervals, and fd growth, and measures the RSS
    slope per minute; a flat, clean run has no problems."""
    soak = load_soak_module()

    summary, problems = soak.summarize(made_up_report(rss=(40.0, 41.0, 42.0)), warmup=0)
    assert problems == []
    assert summary["rss_growth_mib"] == pytest.approx(2.0)
    assert summary["rss_slope_mib_per_min"] == pytest.approx(60.0)

    assert "error" in soak.summarize(made_up_report(errors=1), warmup=0)[1][0]
    stalled = made_up_report(requests=(100, 0, 100))
    assert "no request completed" in soak.summarize(stalled, warmup=0)[1][0]
    assert "idle fds grew" in soak.summarize(made_up_report(idle_fds=(9, 40)), warmup=0)[1][0]
    # Samples before the warm-up do not count.
    summary, _ = soak.summarize(made_up_report(rss=(10.0, 40.0, 40.0)), warmup=2)
    assert summary["rss_first_mib"] == 40.0
