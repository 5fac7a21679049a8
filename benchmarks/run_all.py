"""Run every benchmark script and print their RESULT lines as one markdown table.

Each script in benchmarks/ (not `_*.py`, not this one) runs as a subprocess of this interpreter, one after
the other: they measure time, and two at once would disturb each other. A script's output is passed
through to stderr as it runs; its last line, `RESULT name=value ...`, becomes one row of the table:

  script | what | ratio(s) | target | date | machine

`what` is the first line of the script's docstring; `ratio(s)` the RESULT line's figures as printed;
`target` the issue-15 targets (`TARGETS` below), each marked met or not; `date` when the script finished;
`machine` the CPU model and cores (/proc/cpuinfo) and the torch and mlflow versions. The table goes to
stdout, so `python benchmarks/run_all.py > figures.md` keeps only the table. A script that fails shows
`failed (exit N)` in its row, and run_all exits 1 after printing the whole table.

The full set takes ~40 min on 2 cores and wants a machine otherwise idle. `--quick` passes `--quick` to
every script (a few minutes in all): a smoke run whose numbers mean nothing, and the table says so.

    python benchmarks/run_all.py [--quick] [--only name[,name]]
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.metadata
import operator
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import _harness as h

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Target:
    """A bound on one figure of a script's RESULT line: `name op bound unit`."""

    name: str
    op: str  # "<=", "<" or ">="
    bound: float
    unit: str = "x"

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.bound:g}{self.unit}"

    def met(self, value: float) -> bool:
        return {"<=": operator.le, "<": operator.lt, ">=": operator.ge}[self.op](value, self.bound)


# Issue 15's targets, by script name. A string where a script is run for its figures but has no target;
# scripts not named here have none either ("-").
TARGETS: dict[str, tuple[Target, ...] | str] = {
    # tracked run / the same loop with a NullTracker
    "tracking_overhead": (Target("sqlite_over_null", "<=", 1.02), Target("http_over_null", "<=", 1.03)),
    # per-epoch tracking cost at epoch ~3000 / at epoch ~10
    "growth": (Target("sqlite_late_over_early", "<=", 1.1), Target("http_late_over_early", "<=", 1.1)),
    # a whole 40-sample 5-epoch run / (`python -c "import torch, mlflow"` + its epoch loop)
    "small_run": (Target("run_over_imports_plus_loop", "<=", 1.5),),
    "vs_lightning": (Target("aqtrack_over_lightning", "<=", 0.8),),
    "loop_efficiency": (Target("bound_over_aqtrack", ">=", 0.95),),
    "variable_length": "none: reports the padded-frame fraction and the epoch ratio",
    "startup": (Target("help_s", "<", 0.3, " s"),),
}


@dataclass(frozen=True)
class Outcome:
    """One script's run: its RESULT figures (None when it failed) and how it ended."""

    script: str
    what: str
    exit_code: int
    result: str | None  # the RESULT line without "RESULT ", as the script printed it
    finished: datetime.datetime

    @property
    def failed(self) -> bool:
        return self.result is None


def scripts() -> dict[str, Path]:
    """{name: path} of every benchmark script, in name order."""
    paths = sorted(HERE.glob("[!_]*.py"))
    return {p.stem: p for p in paths if p.name != Path(__file__).name}


def what(script: Path) -> str:
    """The first line of the script's docstring (read, not imported: no torch needed here)."""
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    return doc.splitlines()[0] if doc else "-"


def run(script: Path, quick: bool) -> Outcome:
    """Run one script to its end; its output goes to stderr as it comes, its last line is kept."""
    print(f"\n=== {script.name}{' --quick' if quick else ''}", file=sys.stderr, flush=True)
    command = [sys.executable, str(script), *(["--quick"] if quick else [])]
    last = ""
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        for line in child.stdout:
            sys.stderr.write(line)  # progress while it runs; stdout keeps only the table
            last = line.strip() or last
    found = h.parse_result(last) is not None and child.returncode == 0
    return Outcome(
        script=script.stem,
        what=what(script),
        exit_code=child.returncode,
        result=last.removeprefix("RESULT ") if found else None,
        finished=datetime.datetime.now(),
    )


def machine() -> str:
    """'<CPU model>, <N> cores; torch X, mlflow Y', from /proc/cpuinfo and the installed packages."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: what the platform module knows
        cpuinfo = ""
    models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    cores = len(re.findall(r"^processor\s*:", cpuinfo, re.MULTILINE)) or os.cpu_count()
    versions = ", ".join(f"{name} {_version(name)}" for name in ("torch", "mlflow"))
    cpu = models[0].strip() if models else platform.processor() or "unknown CPU"
    return f"{cpu}, {cores} cores; {versions}"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def target_cell(script: str, result: str | None) -> str:
    """The script's targets, each with `met` / `**no**` when its figure is in the RESULT line."""
    targets = TARGETS.get(script, "-")
    if isinstance(targets, str):
        return targets
    figures = h.parse_result(f"RESULT {result}") if result else None
    cells = []
    for t in targets:
        value = (figures or {}).get(t.name)
        cells.append(str(t) if value is None else f"{t}: {'met' if t.met(value) else '**no**'}")
    return "; ".join(cells)


def row(outcome: Outcome, host: str, quick: bool) -> str:
    if outcome.result is not None:
        measured = outcome.result
    elif outcome.exit_code != 0:
        measured = f"failed (exit {outcome.exit_code})"
    else:
        measured = "failed (exit 0, no RESULT line last)"
    date = outcome.finished.strftime("%Y-%m-%d %H:%M") + (" (--quick)" if quick else "")
    cells = [f"`{outcome.script}.py`", outcome.what, measured, target_cell(outcome.script, outcome.result)]
    return _row([*cells, date, host])


def unmeasured_rows() -> list[str]:
    """Rows for targets that no script measures yet, so the table shows the gap."""
    have = scripts()
    missing = [name for name in TARGETS if name not in have]
    return [
        _row([f"`{name}.py`", "no such script yet", "not measured", target_cell(name, None), "-", "-"])
        for name in missing
    ]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def table(outcomes: list[Outcome], host: str, quick: bool, unmeasured: list[str]) -> str:
    lines = []
    if quick:
        lines += ["**--quick smoke runs: these numbers mean nothing.**", ""]
    lines += ["| script | what | ratio(s) | target | date | machine |", "|---|---|---|---|---|---|"]
    lines += [row(o, host, quick) for o in outcomes] + unmeasured
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="every script's smoke run (numbers meaningless)")
    p.add_argument("--only", metavar="NAME[,NAME]", help="run only these scripts (names without .py)")
    args = p.parse_args()
    available = scripts()
    chosen = list(available)
    if args.only:
        chosen = [name.strip().removesuffix(".py") for name in args.only.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in available]
        if unknown or not chosen:
            p.error(f"--only: no benchmark {', '.join(unknown) or '(empty)'}; have: {', '.join(available)}")
    outcomes = [run(available[name], args.quick) for name in chosen]
    print(table(outcomes, machine(), args.quick, [] if args.only else unmeasured_rows()))
    failed = [o.script for o in outcomes if o.failed]
    if failed:
        print(f"run_all: {len(failed)} of {len(outcomes)} failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
