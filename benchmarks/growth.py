"""Does tracking get slower as a run grows? Per-epoch cost early vs late, and upload time vs file size.

1. Per-epoch tracking cost at epoch ~10 and at epoch ~3000, on sqlite and over HTTP (a real
   `mlflow server` on 127.0.0.1, artifacts proxied). Training 3000 real epochs would take 15 minutes,
   so a run is brought to epoch E cheaply and honestly labelled as such: one real epoch of the default
   model and data is measured, its metrics and 25 batch losses are repeated E times into a `TrainState`
   history (what the checkpoint and the legacy report carry), and the same E points per metric key are
   logged to a fresh MLflow run with `log_batch`. Then `loop.fit` trains 10 real epochs (E+1..E+10) of
   a freshly built default model, with the full tracking `aqtrack.train` uses (metrics, checkpoint
   uploads at the default policy, checkpoint-epoch tag, legacy report, within the publishing budget;
   before the timed epochs, untimed, the report of epochs 1..E is written and published, as a run's
   earlier publishes would have left it). E = 5 ("early") and E = 2995
   ("late") alternate. Timed inside those epochs: MLflow calls, checkpoint writes and the report, so the
   late / early ratio of that per-epoch cost is free of compute noise (target: `TARGETS` in run_all.py).
2. Checkpoint upload time (`MlflowClient.log_artifact`) vs file size (1, 10, 100 MB of random bytes), on
   sqlite (its local artifact store) and over HTTP, against a plain `shutil.copyfile` of the same file
   into the same file system, alternating. Uploads should scale linearly and stay close to a copy.

    python benchmarks/growth.py [--late 2995] [--epochs 10] [--pairs 5] [--sizes 1,10,100]
                               [--only epochs|upload] [--quick]
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import _harness as h
import torch

MB = 1_000_000


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--early", type=int, default=5, help="epochs already in the run, early")
    p.add_argument("--late", type=int, default=2995, help="epochs already in the run, late")
    p.add_argument("--epochs", type=int, default=10, help="real epochs trained and timed after them")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument(
        "--publish-interval", type=float, default=None, help="seconds (default: aqtrack's, 0: every epoch)"
    )
    p.add_argument("--sizes", default="1,10,100", help="checkpoint sizes in MB for the upload part")
    p.add_argument("--only", choices=("epochs", "upload"), help="run only part 1 (epochs) or 2 (upload)")
    args = p.parse_args()
    h.set_threads(args.threads)
    if args.publish_interval is None:
        from aqtrack.config import Config

        args.publish_interval = Config().run.publish_interval
    settings: dict = {}
    if args.quick:
        args.late, args.epochs, args.pairs, args.sizes = 30, 2, 1, "1,2"
        settings = {"n_train": 64, "n_val": 32}
    sizes = [int(s) for s in args.sizes.split(",")]
    figures: dict[str, float] = {}
    with h.scratch("growth") as tmp, h.mlflow_server(tmp / "server") as url:
        from mlflow import MlflowClient

        clients = {"sqlite": MlflowClient(h.sqlite_uri(tmp)), "http": MlflowClient(url)}
        if args.only in (None, "epochs"):
            for store, client in clients.items():
                figures |= per_epoch_growth(client, store, settings, args, tmp / store)
        if args.only in (None, "upload"):
            for store, client in clients.items():
                figures |= upload_vs_size(client, store, sizes, args.pairs, tmp / f"upload-{store}")
    h.result(**figures)


def per_epoch_growth(client, store: str, settings: dict, args, tmp: Path) -> dict[str, float]:
    """Prints the early and late windows' per-epoch tracking cost; returns the RESULT figures."""
    from mlflow.entities import Metric

    from aqtrack.config import Config
    from aqtrack.data.dataset import load_configured
    from aqtrack.names import LAST, REPORT_FILE
    from aqtrack.outputs import report
    from aqtrack.tracking import store as tracking
    from aqtrack.training import loop
    from aqtrack.training.checkpoint import History, TrainState

    data = load_configured(Config.from_dict(settings).data)
    stats = data.stats()
    experiment = tracking.get_or_create_experiment(client, "growth")
    probe = loop.build_trainer(Config.from_dict(settings), data, torch.device("cpu"))
    metrics, batch_losses = loop.train_one_epoch(probe)  # the one real epoch that is repeated
    metrics.update(loop.evaluate(probe.model, probe.val_loader, probe.device).metrics("val"))
    spent = {"early": h.Spent(), "late": h.Spent()}
    current = [spent["early"]]
    sizes: dict[str, dict[str, float]] = {}

    # Local work of the tracked loop, timed into whichever window is running.
    write_checkpoints, write_report, build_report = (
        loop.write_checkpoints,
        report.write_report,
        report.build_report,
    )
    loop.write_checkpoints = lambda *a: current[0].wrap("local: write checkpoints", write_checkpoints)(*a)
    report.write_report = lambda *a: current[0].wrap("local: build+write report", write_report)(*a)
    report.build_report = lambda *a, **kw: current[0].wrap("local: build+write report", build_report)(
        *a, **kw
    )

    def window(name: str, before: int) -> float:
        cfg = Config.from_dict({**settings, "rounds": 1, "epochs_per_round": before + args.epochs})
        trainer = loop.build_trainer(cfg, data, torch.device("cpu"))
        history = History()
        for _ in range(before):
            history.append(metrics, batch_losses)
        state = TrainState(
            config=cfg.to_dict(), model_spec=trainer.spec.to_dict(), epoch=before, history=history
        )
        state.best_score, state.best_epoch = metrics["val_acc"], before
        run_id = client.create_run(experiment).info.run_id
        points = [Metric(k, v, 0, step) for k, vs in history.metrics.items() for step, v in enumerate(vs, 1)]
        for i in range(0, len(points), tracking.MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=points[i : i + tracking.MAX_METRICS_PER_BATCH])
        out = tmp / run_id
        timed = h.TimedClient(client, h.Spent())
        current[0] = timed.spent
        tracker = tracking.MlflowTracker(timed, run_id, interval=args.publish_interval)
        hook = report.report_writer(tracker, out, stats, run_id)
        # Where a run at epoch E stands: its report published with epochs 1..E (the report's encoder has
        # seen them), its last publish just now. Not timed.
        hook.write(state)
        tracker.flush(force=True)
        current[0] = timed.spent = spent[name]
        before_tracking = _tracking(spent[name])
        start = time.perf_counter()
        loop.fit(trainer, state, tracker, out / "checkpoints", on_epoch_end=[hook])
        tracker.drain()
        elapsed = time.perf_counter() - start
        client.set_terminated(run_id)
        spent[name].add("wall", elapsed)
        sizes[name] = {
            "checkpoint": (out / "checkpoints" / LAST).stat().st_size / MB,
            "report": (out / REPORT_FILE).stat().st_size / MB,
        }
        return _tracking(spent[name]) - before_tracking

    window("early", args.early)  # warm-up
    for s in spent.values():
        s.clear()
    print(
        f"\n[{store}] per-epoch tracking cost, epochs {args.early + 1}..{args.early + args.epochs} vs "
        f"{args.late + 1}..{args.late + args.epochs}"
    )
    rows = h.alternate(
        {"early": lambda: window("early", args.early), "late": lambda: window("late", args.late)}, args.pairs
    )
    per = args.pairs * args.epochs
    for name in ("early", "late"):
        s = spent[name]
        print(
            f"[{store}] {name:<5}: tracking {h.median(rows, name) / args.epochs * 1000:6.1f} ms per epoch of "
            f"{s.seconds['wall'] / per * 1000:6.1f} ms; last.pt {sizes[name]['checkpoint']:.2f} MB, "
            f"report {sizes[name]['report']:.2f} MB"
        )
        for line in h.breakdown(s, per, "epoch", "mlflow.") + h.breakdown(s, per, "epoch", "local:"):
            print(line)
    r = h.median_ratio(rows, "late", "early")
    spread = h.ratio_range(rows, "late", "early")
    print(f"[{store}] tracking cost per epoch, late / early (pairs {spread}): {r:.2f}x")
    wall = spent["late"].seconds["wall"] / spent["early"].seconds["wall"]
    print(f"[{store}] epoch wall time, late / early: {wall:.2f}x")
    return {
        f"{store}_late_over_early": r,
        f"{store}_tracking_ms_early": h.median(rows, "early") / args.epochs * 1000,
        f"{store}_tracking_ms_late": h.median(rows, "late") / args.epochs * 1000,
    }


def _tracking(spent: h.Spent) -> float:
    """Seconds in MLflow calls, checkpoint writes and the report so far."""
    return spent.total("mlflow.") + spent.total("local:")


def upload_vs_size(client, store: str, sizes: list[int], pairs: int, tmp: Path) -> dict[str, float]:
    """Prints upload and copy times per size; returns the RESULT figures (upload / copy per size)."""
    tmp.mkdir(parents=True)
    run_id = client.create_run(client.create_experiment(f"upload-{store}")).info.run_id
    print(f"\n[{store}] log_artifact vs shutil.copyfile, by file size")
    results = {}
    for size in sizes:
        src = tmp / f"checkpoint-{size}mb.pt"
        with open(src, "wb") as f:
            for _ in range(size):
                f.write(os.urandom(MB))

        def copy(src: Path = src) -> float:
            # Overwrites the same file each time, as repeated uploads of a checkpoint do (and unlinking
            # a fresh copy would drop its dirty pages unwritten, flattering the copy).
            start = time.perf_counter()
            shutil.copyfile(src, tmp / "copy.pt")
            return time.perf_counter() - start

        def upload(src: Path = src) -> float:
            start = time.perf_counter()
            client.log_artifact(run_id, str(src), "checkpoints")  # same name each time: overwrites
            return time.perf_counter() - start

        copy(), upload()  # warm-up: page cache, connection
        rows = h.alternate({"copy": copy, "log_artifact": upload}, pairs)
        results[size] = rows
        src.unlink()
    client.set_terminated(run_id)
    figures = {}
    for size, rows in results.items():
        up, cp = h.median(rows, "log_artifact"), h.median(rows, "copy")
        r = h.median_ratio(rows, "log_artifact", "copy")
        figures[f"{store}_upload_over_copy_{size}mb"] = r
        print(
            f"[{store}] {size:>4} MB: log_artifact {up * 1000:7.1f} ms ({size / up:6.0f} MB/s), copyfile "
            f"{cp * 1000:7.1f} ms ({size / cp:6.0f} MB/s); log_artifact / copy: {r:.2f}x"
        )
    small, big = sizes[0], sizes[-1]
    scale = h.median(results[big], "log_artifact") / h.median(results[small], "log_artifact")
    linear = big / small
    print(f"[{store}] log_artifact time {big} MB / {small} MB: {scale:.1f}x  (linear would be {linear:.0f}x)")
    return figures


if __name__ == "__main__":
    main()
