"""Soak test: kill one training run over and over at random points, resume it each time, and check
that it ends exactly as an uninterrupted run (weights, every metric, the legacy report, FINISHED).

Each attempt either dies at a random point of scripts/kill_at.py (a random visit of a random point)
or is SIGKILLed from outside after a random delay (anywhere at all, including imports and set-up).
Attempts resume in the same output directory or in a fresh one (as on another machine) at random.

    python scripts/soak.py [--kills 40] [--seed 0] [--quick]

Exit status 0 only when every check passed. Runs in a temp dir with its own sqlite store.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aqtrack.crash_points import TRAIN_POINTS

HERE = Path(__file__).resolve().parent

SETTINGS = {
    "n_train": 256,
    "n_val": 64,
    "hidden": 16,
    "rounds": 2,
    "epochs_per_round": 10,
    "batch_size": 32,
    "checkpoint_interval": 3,
}
# How often a run reaches a kill point: once per epoch, but per batch and only once ("reopened").
VISITS = {
    "batch": SETTINGS["epochs_per_round"] * 2 * SETTINGS["n_train"] // SETTINGS["batch_size"],
    "reopened": 1,
    "model-uploaded": 2,  # the network's model, then the SVM's
}
QUICK = {**SETTINGS, "n_train": 64, "n_val": 32, "hidden": 8, "epochs_per_round": 3, "batch_size": 16}


def flags(settings: dict) -> list[str]:
    return [part for key, value in settings.items() for part in (f"--{key.replace('_', '-')}", str(value))]


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--kills", type=int, default=40, help="how many kills to survive")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--quick", action="store_true", help="a tiny run with 3 kills")
    args = parser.parse_args()
    settings = QUICK if args.quick else SETTINGS
    kills = 3 if args.quick else args.kills
    with tempfile.TemporaryDirectory(prefix="aqtrack-soak-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        return soak(Path(tmp), settings, kills, random.Random(args.seed))


def soak(tmp: Path, settings: dict, kills: int, rng: random.Random) -> int:
    epochs = settings["rounds"] * settings["epochs_per_round"]
    start = time.monotonic()
    reference = run(
        tmp, ["train", *flags({**settings, "experiment": "reference", "output_dir": tmp / "ref"})]
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    full_time = time.monotonic() - start

    survived = attempts = finished = 0
    problems: list[str] = []
    run_id, out, seen = None, tmp / "out0", {None}
    while survived < kills or run_id:  # the last run is taken to its end, without more kills
        attempts += 1
        if run_id and _published(run_id) and rng.random() < 0.5:
            out = tmp / f"out{attempts}"  # as on another machine: only the run's artifacts can help
        if run_id:
            args = ["train", "--resume", run_id, "--output-dir", out]
        else:
            out = tmp / f"out{attempts}"
            args = ["train", *flags({**settings, "experiment": "soak", "output_dir": out})]
        if survived >= kills:
            how, done = "to the end", run(tmp, args)
        elif rng.random() < 0.7:
            point = rng.choice(TRAIN_POINTS)
            count = rng.randint(1, VISITS.get(point, epochs))
            how, done = f"kill_at {point}:{count}", run(tmp, args, kill_at=f"{point}:{count}")
        else:
            delay = rng.uniform(0.5, full_time)
            how, done = f"SIGKILL after {delay:.1f} s", run(tmp, args, kill_after=delay)
        run_id = run_id or _new_run_id(seen)
        seen.add(run_id)
        killed = done.returncode == -signal.SIGKILL
        survived += killed
        last = (done.stderr.strip().splitlines() or [""])[-1][:100]
        print(f"attempt {attempts:3d} ({how}): {'killed' if killed else f'exit {done.returncode}'} {last}")
        if done.returncode == 0 or (killed and _finished(run_id)):  # done: check it, then start another
            found = compare(tmp, _run_id("reference"), run_id, out, tmp / "ref", epochs)
            print(
                f"run {run_id}: " + ("identical to the uninterrupted run" if not found else "; ".join(found))
            )
            problems += found
            finished, run_id = finished + 1, None
        elif not killed:
            if not (run_id and "checkpoint" in last and not _published(run_id)):
                print(f"FAILED: unexpected exit {done.returncode}:\n{done.stderr[-3000:]}")
                return 1
            run_id = None  # killed before its first checkpoint: a new run is all a user can do
    print(f"\n{survived} kills survived in {attempts} attempts over {finished} runs")
    print(
        "result: " + ("every run identical to the uninterrupted one" if not problems else "; ".join(problems))
    )
    return 1 if problems else 0


def _finished(run_id: str | None) -> bool:
    """Killed after the run was marked FINISHED, on its way out: nothing left to resume."""
    from mlflow import MlflowClient

    return run_id is not None and MlflowClient().get_run(run_id).info.status == "FINISHED"


def _published(run_id: str) -> bool:
    """Whether the run ever published a whole checkpoint (so its artifacts alone can resume it)."""
    from mlflow import MlflowClient

    from aqtrack.names import CHECKPOINT_EPOCH_TAG

    return CHECKPOINT_EPOCH_TAG in MlflowClient().get_run(run_id).data.tags


def run(tmp: Path, args: list[str], kill_at: str | None = None, kill_after: float | None = None):
    prefix = [str(HERE / "kill_at.py"), kill_at, "--"] if kill_at else ["-m", "aqtrack"]
    command = [sys.executable, *prefix, *[str(a) for a in args]]
    process = subprocess.Popen(command, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        out, err = process.communicate()
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def _new_run_id(seen: set[str | None]) -> str | None:
    """The run the last attempt created, if it got that far."""
    from mlflow import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name("soak")
    runs = client.search_runs([found.experiment_id]) if found else []
    return next((r.info.run_id for r in runs if r.info.run_id not in seen), None)


def _run_id(experiment: str) -> str | None:
    from mlflow import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"]) if found else []
    return runs[0].info.run_id if runs else None


def compare(tmp: Path, ref_id: str, run_id: str, out: Path, ref_out: Path, epochs: int) -> list[str]:
    import torch
    from mlflow import MlflowClient

    from aqtrack.names import METRIC_KEYS, REPORT_FILE

    client, problems = MlflowClient(), []
    for key in METRIC_KEYS:
        got = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        if [s for s, _ in got] != list(range(1, epochs + 1)):
            problems.append(f"{key}: steps {[s for s, _ in got]}")
        elif got != sorted((m.step, m.value) for m in client.get_metric_history(ref_id, key)):
            problems.append(f"{key}: values differ")
    weights = [
        torch.load(client.download_artifacts(r, "checkpoints/last.pt", str(tmp / r)), weights_only=True)[
            "model"
        ]
        for r in (run_id, ref_id)
    ]
    if any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[1]):
        problems.append("final weights differ")
    reports = [json.loads((d / r / REPORT_FILE).read_text()) for d, r in ((out, run_id), (ref_out, ref_id))]
    for report in reports:
        report.pop("timestamp"), report.pop("run_id")
    if reports[0] != reports[1]:
        problems.append("legacy reports differ")
    if client.get_run(run_id).info.status != "FINISHED":
        problems.append(f"status {client.get_run(run_id).info.status}")
    return problems


if __name__ == "__main__":
    sys.exit(main())
