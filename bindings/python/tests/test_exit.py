"""The process ends cleanly whatever order it tears Murmur down in.

Each scenario of exit_scenarios.py runs as a child process many times (MURMUR_EXIT_RUNS, 50 by
default; two at a time) and every run must exit with code 0 and print no fatal error. Before
the fix, the two reproductions of the issue aborted (SIGABRT, code 134, `FATAL: exception not
rethrown`) in most runs.
"""

import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from exit_scenarios import SCENARIOS

RUNS = int(os.environ.get("MURMUR_EXIT_RUNS", "50"))
PARALLEL = 2
SCRIPT = Path(__file__).with_name("exit_scenarios.py")


def run_once(scenario):
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run(
            [sys.executable, str(SCRIPT), scenario, d],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=d,
        )
        return p.returncode, p.stderr


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_process_exits_cleanly(scenario):
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(run_once, [scenario] * RUNS))
    bad = [(code, err) for code, err in results if code != 0 or "FATAL" in err or "panicked" in err]
    assert not bad, (
        f"{len(bad)} of {RUNS} runs of {scenario} did not exit cleanly; first: "
        f"exit code {bad[0][0]}, stderr:\n{bad[0][1][-2000:]}"
    )
