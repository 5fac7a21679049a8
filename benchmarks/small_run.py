"""What does a small run cost beyond its imports and its epochs? A whole run against its floor.

A 40-sample, 5-epoch run: `python -m aqtrack train --n-train 40 --n-val 20 --n-test 20 --rounds 1
--epochs-per-round 5` (the embedded synthetic data: 40 training, 20 validation and 20 test recordings;
the default model; the finishing stage as by default, SVM included), on a sqlite store that already
exists (a warm-up run makes it, and says what a first run on a new store costs). Alternating, once per
pair:
  run       that command in a fresh process: its whole wall time
  imports   `python -c "import torch, mlflow"` in a fresh process: what any tracked PyTorch script pays
  loop      the same 5 epochs in this process (`training.loop.fit` with a `NullTracker`: train,
            evaluate, write the checkpoint files), on a trainer built as the run builds it, after a
            warm-up fit
  parts     the same command in a fresh process again, its stages timed from the inside: the process
            starting and ending, imports, store, data, trainer, the tracked loop, and the finishing
            stage per part (model export, test split, figures, SVM)

and prints run / (imports + loop), the median of the per-pair ratios (target <= 1.5: `TARGETS` in
run_all.py), the medians of the three, and the medians of the parts: what the fixed cost is made of.
A part's time includes the imports it is the first to need (torch.export in the model, matplotlib in
the figures, skops in the SVM).

`--lean` runs it with `--no-svm --no-log-model`: the finishing stage without the SVM and the model
export (the test split and figures stay), `lean=1` in the RESULT line.

    python benchmarks/small_run.py [--pairs 5] [--lean] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _harness as h

SETTINGS = {"n_train": 40, "n_val": 20, "n_test": 20, "rounds": 1, "epochs_per_round": 5}
START, IMPORTS, EXIT = "process: start", "imports: aqtrack.jobs.pipeline", "process: exit"
FINISH = "finishing stage (all)"
# The stages timed inside the `parts` process: (label, module, attribute). The "finish: " ones are parts
# of FINISH; the others do not overlap. What none covers is "rest" (argument parsing, the run's first
# records, the legacy report, closing the run).
PARTS = (
    ("store: connect", "aqtrack.tracking.store", "connect"),
    ("data: load", "aqtrack.jobs.pipeline", "load_configured"),
    ("trainer: build (model, optimizer)", "aqtrack.jobs.pipeline", "build_trainer"),
    ("run: create", "aqtrack.jobs.pipeline", "_open_run"),
    ("run: datasets", "aqtrack.tracking.exports", "log_datasets"),
    ("loop, tracked (fit)", "aqtrack.jobs.pipeline", "fit"),
    (FINISH, "aqtrack.jobs.pipeline", "_finish"),
    ("finish: best checkpoint", "aqtrack.jobs.finish", "find_best"),
    ("finish: model (export + log)", "aqtrack.jobs.finish", "_log_network"),
    ("finish: test split", "aqtrack.jobs.finish", "_log_test"),
    ("finish: figures", "aqtrack.jobs.finish", "_log_figures"),
    ("finish: SVM (fit + log)", "aqtrack.jobs.finish", "SvmStage.fit_and_log"),
    ("run: results note", "aqtrack.jobs.pipeline", "_describe_results"),
)
LABELS = [START, IMPORTS, *(label for label, _, _ in PARTS), EXIT]
# The parts kept in the RESULT line, in seconds.
KEPT = {
    IMPORTS: "pipeline_imports_s",
    "store: connect": "connect_s",
    "trainer: build (model, optimizer)": "trainer_s",
    "run: datasets": "datasets_s",
    FINISH: "finish_s",
    "finish: model (export + log)": "model_s",
    "finish: test split": "test_s",
    "finish: figures": "figures_s",
    "finish: SVM (fit + log)": "svm_s",
    EXIT: "exit_s",
}


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument(
        "--lean",
        action="store_true",
        help="the run with --no-svm --no-log-model (the rest of the stage stays)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)  # the `parts` process: the file its times go to
    args, rest = p.parse_known_args()
    if args.child:
        child(Path(args.child), rest)
    settings = dict(SETTINGS) | (h.LEAN if args.lean else {})
    if args.quick:
        args.pairs, settings["epochs_per_round"] = 1, 2
    h.set_threads(args.threads)
    with h.scratch("small"):
        measure(settings, args.pairs)


def flags(settings: dict) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=os.environ)
    return time.perf_counter() - start


def measure(settings: dict, pairs: int) -> None:
    train = ["train", *flags(settings), "-q"]
    first = wall([sys.executable, "-m", "aqtrack", *train])  # warm-up: makes the store, the .pyc files
    print(f"first run, on a new store: {first:.2f} s", flush=True)
    parts: list[dict[str, float]] = []
    variants = {
        "run": lambda: wall([sys.executable, "-m", "aqtrack", *train]),
        "imports": lambda: wall([sys.executable, "-c", "import torch, mlflow"]),
        "loop": in_process_loop(settings),
        "parts": lambda: timed_run(train, parts),
    }
    rows = h.alternate(variants, pairs)
    for row in rows:
        row["floor"] = row["imports"] + row["loop"]
    report(settings, rows, parts, pairs)


def in_process_loop(settings: dict):
    """A callable that builds the run's trainer afresh and returns the seconds `fit` takes (NullTracker,
    checkpoint files written as the run writes them)."""
    import torch

    from aqtrack.config import Config
    from aqtrack.data.dataset import load_configured
    from aqtrack.training.checkpoint import TrainState
    from aqtrack.training.loop import NullTracker, build_trainer, fit

    cfg = Config.from_dict(settings)
    data = load_configured(cfg.data)

    def loop() -> float:
        trainer = build_trainer(cfg, data, torch.device("cpu"))
        state = TrainState(config=cfg.to_dict(), model_spec=trainer.spec.to_dict())
        with tempfile.TemporaryDirectory(dir=".") as tmp:
            start = time.perf_counter()
            fit(trainer, state, NullTracker(), Path(tmp) / "checkpoints")
            return time.perf_counter() - start

    loop()  # warm-up: first-call imports (sklearn's scores), allocations
    return loop


def timed_run(train: list[str], parts: list[dict[str, float]]) -> float:
    """`aqtrack train` in a `--child` process; appends its parts' seconds to `parts`, returns its wall."""
    with tempfile.NamedTemporaryFile(suffix=".json", dir=".", delete=False) as f:
        out = Path(f.name)
    try:
        launched, start = time.time(), time.perf_counter()
        command = [sys.executable, __file__, "--child", str(out), *train]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=os.environ)
        seconds, ended = time.perf_counter() - start, time.time()
        timed = json.loads(out.read_text())
    finally:
        out.unlink()
    # Wall-clock stamps of this machine: from launching it to its first line, from its `main()`
    # returning to its end.
    timed[START], timed[EXIT] = timed.pop("started_at") - launched, ended - timed.pop("returned_at")
    covered = sum(v for label, v in timed.items() if not label.startswith("finish: "))
    parts.append(timed | {"wall": seconds, "rest": seconds - covered})
    return seconds


def report(settings: dict, rows: list[dict[str, float]], parts: list[dict[str, float]], pairs: int) -> None:
    epochs = settings["rounds"] * settings["epochs_per_round"]
    print(f"\n{settings['n_train']} training samples, {epochs} epochs, {pairs} pairs (medians):")
    for name, label in (
        ("run", "whole run (python -m aqtrack train)"),
        ("imports", 'python -c "import torch, mlflow"'),
        ("loop", "loop in this process (fit, NullTracker)"),
        ("parts", "the run again, its parts timed"),
    ):
        print(f"  {label:<44} {h.median(rows, name):7.2f} s")
    fixed = h.median([{"x": r["run"] - r["floor"]} for r in rows], "x")
    print(f"  {'fixed cost: run - imports - loop':<44} {fixed:7.2f} s")
    ratio = h.median_ratio(rows, "run", "floor")
    met = "met" if ratio <= 1.5 else "NOT met"
    spread = h.ratio_range(rows, "run", "floor")
    print(f"run / (imports + loop) (pairs {spread}; target <= 1.5: {met}): {ratio:.3f}x")

    print("\nthe parts (medians; a part includes the imports it is the first to need):")
    for label in [*LABELS, "rest", "wall"]:
        indent = "    " if label.startswith("finish: ") else "  "
        print(f"{indent}{label:<{46 - len(indent)}} {h.median(parts, label):7.2f} s")
    h.result(
        run_over_imports_plus_loop=ratio,
        lean=int(h.LEAN.items() <= settings.items()),
        run_s=h.median(rows, "run"),
        imports_s=h.median(rows, "imports"),
        loop_s=h.median(rows, "loop"),
        fixed_s=fixed,
        **{name: h.median(parts, label) for label, name in KEPT.items()},
    )


def child(out: Path, argv: list[str]) -> None:
    """The `parts` process: `aqtrack train ...` as the program runs it, each of PARTS timed; writes
    {label: seconds} and two wall-clock stamps to `out`, then exits as the program does."""
    started_at = time.time()
    spent = h.Spent()
    start = time.perf_counter()
    from aqtrack import cli
    from aqtrack.jobs import pipeline  # noqa: F401  # what `aqtrack train` imports first

    spent.add(IMPORTS, time.perf_counter() - start)
    for label, module, path in PARTS:
        owner = importlib.import_module(module)
        *inner, attribute = path.split(".")
        for name in inner:  # a method: patched on its class
            owner = getattr(owner, name)
        setattr(owner, attribute, spent.wrap(label, getattr(owner, attribute)))
    sys.argv = ["aqtrack", *argv]
    code = cli.main()  # without argv: as the console script and `python -m aqtrack` call it
    timed = {label: spent.seconds.get(label, 0.0) for label in LABELS if label not in (START, EXIT)}
    out.write_text(json.dumps(timed | {"started_at": started_at, "returned_at": time.time()}))
    sys.exit(code)


if __name__ == "__main__":
    main()
