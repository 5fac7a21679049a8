"""How fast does the `aqtrack` command start? Wall time of `--help` against a bare interpreter.

Times, as subprocesses alternating in one run (median over pairs):
  python -c pass              the interpreter alone: the floor any Python command pays
  aqtrack --help              the installed console script
  python -m aqtrack --help
  aqtrack train --help        builds every settings flag from the config dataclasses
and prints each one's median wall time (target: `--help` < 0.3 s) and its ratio to `python -c pass`.

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


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def imported(command: list[str]) -> dict[str, int]:
    """{module: cumulative import microseconds} from `python -X importtime <command>`."""
    if command[0] != sys.executable:  # the console script is a Python file: run it under -X importtime
        command = [sys.executable, *command]
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]], check=True, capture_output=True, text=True
    )
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


if __name__ == "__main__":
    main()
