"""Each benchmark script runs (behaviour only: benchmarks measure speed, tests never time anything)."""

from __future__ import annotations

import datetime
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
# benchmarks/_*.py are shared helpers, not scripts; run_all.py runs the others and prints their table.
SCRIPTS = sorted(BENCH_DIR.glob("[!_]*.py"))
BENCHMARKS = [p for p in SCRIPTS if p.name != "run_all.py"]
RUN_ALL = BENCH_DIR / "run_all.py"
# A bound against a hang, not a measurement: several --quick runs start an mlflow server and fresh
# processes, and on a shared 2-core machine with other suites running one took over 300 s.
TIMEOUT_S = 900
# `RESULT name=value ...`: lowercase names, plain decimal numbers (no nan or inf).
RESULT_LINE = re.compile(r"RESULT( [a-z][a-z0-9_]*=-?\d+(\.\d+)?)+")


@pytest.fixture
def run_all(monkeypatch: pytest.MonkeyPatch):
    """benchmarks/run_all.py as a module (it imports `_harness` from its own folder)."""
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    return importlib.import_module("run_all")


def test_every_benchmark_is_found():
    names = {p.name for p in BENCHMARKS}
    assert {"tracking_overhead.py", "loop_efficiency.py", "vs_lightning.py", "resume_latency.py"} <= names
    assert {"startup.py", "growth.py", "epoch_cost.py", "cv_cost.py", "small_run.py"} <= names


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_runs_quick_and_ends_with_one_result_line(script: Path, tmp_path: Path, run_all):
    before = set(tmp_path.iterdir())
    done = subprocess.run(
        [sys.executable, str(script), "--quick"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.endswith("x") for line in lines)  # prints ratios for people too
    assert [line for line in lines if line.startswith("RESULT")] == lines[-1:], lines[-5:]
    assert RESULT_LINE.fullmatch(lines[-1]), lines[-1]
    names = [word.partition("=")[0] for word in lines[-1].split()[1:]]
    assert len(names) == len(set(names)), names
    targets = run_all.TARGETS.get(script.stem, ())
    judged = set() if isinstance(targets, str) else {t.name for t in targets}
    assert judged <= set(names), judged - set(names)  # every target run_all judges it by is in the line
    assert set(tmp_path.iterdir()) == before  # its store and files live in its own temp dir


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_explains_itself(script: Path):
    """`--help` shows the docstring (what it measures) and offers --quick."""
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--quick" in done.stdout
    assert len(done.stdout.splitlines()) > 5


def test_run_all_quick_prints_a_table_row_per_script(tmp_path: Path):
    """Two of the cheapest scripts: one with a target, one without."""
    done = subprocess.run(
        [sys.executable, str(RUN_ALL), "--quick", "--only", "variable_length,loop_efficiency.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "mean nothing" in lines[0]
    assert lines[2] == "| script | what | ratio(s) | target | date | machine |"
    rows = [line[2:-2].split(" | ") for line in lines[4:]]
    assert [cells[0] for cells in rows] == ["`variable_length.py`", "`loop_efficiency.py`"]
    assert all(len(cells) == 6 and RESULT_LINE.fullmatch(f"RESULT {cells[2]}") for cells in rows), rows
    assert rows[0][1].startswith("What do variable-length sequences cost an epoch?")  # its docstring
    assert rows[0][2].startswith("padded_fraction=") and rows[0][3].startswith("none")
    assert re.fullmatch(r"bound_over_aqtrack >= 0\.95x: (met|\*\*no\*\*)", rows[1][3])
    assert all(cells[4].endswith("(--quick)") for cells in rows)
    assert all("torch " in cells[5] and "mlflow " in cells[5] for cells in rows)  # the machine
    assert "=== variable_length.py --quick" in done.stderr  # each script's own output, as it ran


def test_run_all_refuses_an_unknown_script(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, str(RUN_ALL), "--only", "startup,nope"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 2 and "--only: no benchmark nope; have: " in done.stderr


def test_a_failed_script_has_its_exit_code_in_its_row_and_run_all_fails(run_all, monkeypatch, capsys):
    def crashed(script: Path, quick: bool):  # what `run` returns for a script that exits 3
        return run_all.Outcome(script.stem, "what it measures", 3, None, datetime.datetime(2026, 11, 30))

    monkeypatch.setattr(run_all, "run", crashed)
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--only", "growth"])
    assert run_all.main() == 1
    out = capsys.readouterr().out
    assert "| `growth.py` | what it measures | failed (exit 3) | sqlite_late_over_early <= 1.1x; " in out
