"""Each benchmark script runs (behaviour only: benchmarks measure speed, tests never time anything)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_runs_quick(script: Path, tmp_path: Path):
    before = set(tmp_path.iterdir())
    done = subprocess.run(
        [sys.executable, str(script), "--quick"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(line.endswith("x") for line in done.stdout.splitlines())  # prints ratios
    assert set(tmp_path.iterdir()) == before  # its store and files live in its own temp dir
