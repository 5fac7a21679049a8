"""Each benchmark script runs (behaviour only: benchmarks measure speed, tests never time anything)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# benchmarks/_*.py are shared helpers, not scripts.
BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("[!_]*.py"))
TIMEOUT_S = 300  # a generous bound per --quick run (several start an mlflow server), not a measurement


def test_every_benchmark_is_found():
    names = {p.name for p in BENCHMARKS}
    assert {"tracking_overhead.py", "loop_efficiency.py", "vs_lightning.py", "resume_latency.py"} <= names
    assert {"startup.py", "growth.py", "epoch_cost.py"} <= names


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_runs_quick(script: Path, tmp_path: Path):
    before = set(tmp_path.iterdir())
    done = subprocess.run(
        [sys.executable, str(script), "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(line.endswith("x") for line in done.stdout.splitlines())  # prints ratios
    assert set(tmp_path.iterdir()) == before  # its store and files live in its own temp dir


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_explains_itself(script: Path):
    """`--help` shows the docstring (what it measures) and offers --quick."""
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--quick" in done.stdout
    assert len(done.stdout.splitlines()) > 5
