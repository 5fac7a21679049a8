"""What does cross-validation cost beyond its folds' trainings? Ratios from one run, median over pairs.

Three ways to train the same K folds (synthetic data, grouped 5-fold by subject), alternating:
  cv        aqtrack.cross_validate(folds=K) in this process: imports and store set-up paid once, the
            parent run, K nested fold runs (each a full aqtrack run: per-epoch tracking, checkpoints,
            finishing stage), then the aggregate (out-of-fold predictions, table, figures)
  separate  K `python -m aqtrack train --folds K --fold i` processes, one after the other (the same fold
            runs, not nested, no aggregate): what a hand-rolled loop of CLI calls pays
  jobs      aqtrack.cross_validate(folds=K, jobs=N): N worker processes, each with 1/N of the threads

and prints, as medians of per-pair ratios:
  cv / (K x one fold's training loop)   the issue's figure: K folds' wall time over the time their
                                        epoch loops (fit: train, evaluate, checkpoint, publish) took
  cv / its K fold runs                  what the parent adds (its set-up, the aggregate)
  cv / separate                         one process against K processes
  jobs / cv                             worker processes against one process (on a 2-core machine
                                        shared with others, expect little or nothing)
with the breakdown of the cv variant: epoch loops, the rest of each fold (set-up, finishing stage),
the parent (set-up, aggregate).

    python benchmarks/cv_cost.py [--folds 5] [--epochs 5] [--pairs 5] [--jobs 2] [--threads 1] [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import _harness as h


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5, help="epochs per fold (1 round)")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--jobs", type=int, default=2, help="worker processes of the `jobs` variant")
    args = p.parse_args()
    settings = {"rounds": 1, "epochs_per_round": args.epochs}
    if args.quick:
        args.folds, args.pairs = 2, 1
        settings = {"rounds": 1, "epochs_per_round": 1, "n_train": 48, "n_val": 16, "n_test": 16, "hidden": 8}
        settings["svm"] = False
    settings["folds"] = str(args.folds)
    h.set_threads(args.threads)
    with h.scratch("cv"):
        measure(settings, args.folds, args.pairs, args.jobs)


def measure(settings: dict, k: int, pairs: int, jobs: int) -> None:
    import aqtrack
    from aqtrack.jobs import crossval, pipeline

    spent = h.Spent()
    pipeline.fit = spent.wrap("fit", pipeline.fit)  # each fold's epoch loop
    crossval.train_fold = spent.wrap("fold", crossval.train_fold)  # each fold's whole run

    def cv() -> float:
        start = time.perf_counter()
        aqtrack.cross_validate(**settings)
        return time.perf_counter() - start

    def in_workers() -> float:
        start = time.perf_counter()
        aqtrack.cross_validate(**settings, jobs=jobs)
        return time.perf_counter() - start

    flags = [f"--{key.replace('_', '-')}={value}" for key, value in settings.items() if key != "svm"]
    flags += ["--no-svm"] if settings.get("svm") is False else []

    def separate() -> float:
        start = time.perf_counter()
        for fold in range(1, k + 1):
            command = [sys.executable, "-m", "aqtrack", "train", *flags, f"--fold={fold}", "-q"]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=os.environ)
        return time.perf_counter() - start

    def cv_timed() -> float:
        spent.clear()
        wall = cv()
        parts.append({"wall": wall, "loops": spent.seconds["fit"], "folds": spent.seconds["fold"]})
        return wall

    parts: list[dict[str, float]] = []
    rows = h.alternate({"cv": cv_timed, "separate": separate, "jobs": in_workers}, pairs)
    for row, part in zip(rows, parts, strict=True):
        row |= {"loops": part["loops"], "folds": part["folds"]}
    wall, loops, folds = (h.median(parts, key) for key in ("wall", "loops", "folds"))
    print(f"\n{k} folds x {settings['epochs_per_round']} epochs, {pairs} pairs; cv (medians): {wall:.1f} s =")
    print(
        f"  epoch loops {loops:.1f} s + the rest of the fold runs {folds - loops:.1f} s + parent "
        f"{wall - folds:.1f} s"
    )
    over_loops = h.median_ratio(rows, "cv", "loops")
    over_folds = h.median_ratio(rows, "cv", "folds")
    over_separate = h.median_ratio(rows, "cv", "separate")
    jobs_over_cv = h.median_ratio(rows, "jobs", "cv")
    for label, ratio, (a, b) in (
        ("cv / (K x one fold's training loop)", over_loops, ("cv", "loops")),
        ("cv / its K fold runs", over_folds, ("cv", "folds")),
        ("cv / separate processes", over_separate, ("cv", "separate")),
        (f"jobs {jobs} / cv", jobs_over_cv, ("jobs", "cv")),
    ):
        print(f"{label + ':':<38} (pairs {h.ratio_range(rows, a, b)}) {ratio:.3f}x")
    h.result(
        k=k,
        cv_over_loops=over_loops,
        cv_over_fold_runs=over_folds,
        cv_over_separate=over_separate,
        jobs_over_cv=jobs_over_cv,
    )


if __name__ == "__main__":
    main()
