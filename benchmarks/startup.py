"""How fast does the `aqtrack` command start? Wall time of `--help` against a bare interpreter.

Times, as subprocesses alternating in one run (median over pairs):
  python -c pass              the interpreter alone: the floor any Python command pays
  aqtrack --help              the installed console script
  python -m aqtrack --help
  aqtrack train --help        builds every settings flag from the config dataclasses
and prints each one's median wall time (target: `--help` < 0.3 s) and its ratio to `python -c pass`.

Then a refused start: `aqtrack train --data bad.csv` (a file with no channel columns), against the
imports it needs (`python -c "import aqtrack.jobs.pipeline, pandas"`): the difference is the time from the
end of the imports to the one-line refusal (target < 2 s), and no store may be created for it.

Then it checks, with `python -X importtime`, that none of torch, mlflow, matplotlib, sklearn or pandas is
imported by any of the three `--help` commands (they must stay lazy), and lists the slowest imports.

    python benchmarks/startup.py [--pairs 11] [--quick]
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _harness as h

HEAVY = ("torch", "mlflow", "matplotlib", "sklearn", "pandas")


def commands() -> dict[str, list[str]]:
    script = shutil.which("aqtrack", path=str(Path(sys.executable).parent))
    if script is None:
        raise SystemExit("no `aqtrack` console script next to this interpreter: pip install -e . first")
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "aqtrack --help": [script, "--help"],
        "python -m aqtrack --help": [sys.executable, "-m", "aqtrack", "--help"],
        "aqtrack train --help": [script, "train", "--help"],
    }


def wall(command: list[str], expect: int = 0) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(command)}: exit {done.returncode}, expected {expect}: {done.stderr}")
    return elapsed


def refusal(script: str) -> float:
    """A bad data file is refused within 2 s after the imports, before any store exists."""
    Path("bad.csv").write_text("sample_id,frame,label\n0,0,0\n0,1,0\n")
    commands = {
        "imports": [sys.executable, "-c", "import aqtrack.jobs.pipeline, pandas"],
        "refused": [script, "train", "--data", "bad.csv"],
    }
    expect = {"imports": 0, "refused": 2}
    runs = {name: (lambda n=name, c=c: wall(c, expect[n])) for name, c in commands.items()}
    rows = h.alternate(runs, 5)
    after = h.median([{"x": r["refused"] - r["imports"]} for r in rows], "x")
    met = "met" if after < 2 else "NOT met"
    print(
        f"\naqtrack train --data bad.csv: refused in {h.median(rows, 'refused') * 1000:.0f} ms, "
        f"{after * 1000:+.0f} ms against importing aqtrack.jobs.pipeline and pandas alone (target < 2 s: "
        f"{met}; below 0: it refuses before it needs them all); store created: {Path('mlflow.db').exists()}"
    )
    heavy = sorted({m.split(".")[0] for m in imported(commands["refused"])} & {"mlflow"})
    print(f"  mlflow imported before the refusal: {'yes' if heavy else 'no'}")
    return after


def imported(command: list[str]) -> dict[str, int]:
    """{module: cumulative import microseconds} from `python -X importtime <command>`."""
    if command[0] != sys.executable:  # the console script is a Python file: run it under -X importtime
        command = [sys.executable, *command]
    done = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True)
    times = {}
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            times[m.group(3)] = int(m.group(1))
    return times


def main() -> None:
    p = h.parser(__doc__, threads=False)
    p.add_argument("--pairs", type=int, default=11)
    args = p.parse_args()
    if args.quick:
        args.pairs = 1
    with h.scratch("startup"):
        cmds = commands()
        for command in cmds.values():  # warm-up: page cache, .pyc files
            wall(command)
        rows = h.alternate({name: (lambda c=c: wall(c)) for name, c in cmds.items()}, args.pairs)

        print(f"\n{args.pairs} alternating rounds of {len(cmds)} commands")
        base = "python -c pass"
        for name in cmds:
            line = f"{name:<26} median {h.median(rows, name) * 1000:6.0f} ms"
            if name != base:
                met = "met" if h.median(rows, name) < 0.3 else "NOT met"
                line += f" (target < 0.3 s: {met}), / python -c pass: {h.median_ratio(rows, name, base):.2f}x"
            print(line)

        print("\nheavy modules imported (python -X importtime):")
        for name, command in cmds.items():
            if name == base:
                continue
            times = imported(command)
            heavy = sorted({m.split(".")[0] for m in times} & set(HEAVY))
            slowest = sorted(((t, m) for m, t in times.items() if "." not in m), reverse=True)[:4]
            top = ", ".join(f"{m} {t / 1000:.0f} ms" for t, m in slowest)
            print(f"  {name:<26} {', '.join(heavy) or 'none'}  (slowest top-level imports: {top})")
        after = refusal(cmds["aqtrack --help"][0])
        h.result(
            help_s=h.median(rows, "aqtrack --help"),
            help_over_pass=h.median_ratio(rows, "aqtrack --help", base),
            refusal_after_imports_s=after,
        )


if __name__ == "__main__":
    main()
