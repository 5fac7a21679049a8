"""What does MLflow tracking cost a training run? Ratios from one process, median over alternating pairs.

Three variants of the same seeded training (default model and data, 30 epochs by default), built alike
and timed from the first epoch to the end of the run:
  null    aqtrack's loop (`loop.fit`) with a `NullTracker`: checkpoint files every epoch, no tracking
  sqlite  the same loop tracked in an embedded sqlite store: the run's params, tags and dataset stats,
          then, within aqtrack's publishing budget (`--publish-interval`), the epochs' metrics batches,
          the checkpoint uploads of the default policy (last.pt, best on improvement, periodic every 10),
          the checkpoint-epoch tag and the legacy report (written locally every epoch); closed at the end
  http    the same against a real `mlflow server` on 127.0.0.1 (own sqlite store, artifacts proxied)

It prints tracked/null ratios (targets: `TARGETS` in run_all.py) and, timed inside the tracked runs
themselves (so machine noise cancels out), the share of wall time spent in MLflow calls, with a
breakdown per call.

    python benchmarks/tracking_overhead.py [--epochs 30] [--pairs 7] [--quick]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _harness as h
import torch


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument(
        "--publish-interval", type=float, default=None, help="seconds (default: aqtrack's, 0: every epoch)"
    )
    args = p.parse_args()
    h.set_threads(args.threads)
    settings = {"rounds": 1, "epochs_per_round": args.epochs}
    if args.quick:
        args.pairs, settings = 1, {"rounds": 1, "epochs_per_round": 2, "n_train": 64, "n_val": 32}
    if args.publish_interval is not None:
        settings["publish_interval"] = args.publish_interval
    with h.scratch("tracking") as tmp, h.mlflow_server(tmp / "server") as url:
        measure(settings, args.pairs, tmp, url)


def measure(settings: dict, pairs: int, tmp: Path, url: str) -> None:
    from mlflow import MlflowClient

    from aqtrack import names
    from aqtrack.config import Config
    from aqtrack.data.dataset import load_configured
    from aqtrack.outputs import report
    from aqtrack.tracking import store
    from aqtrack.training import loop
    from aqtrack.training.checkpoint import TrainState

    cfg = Config.from_dict(settings)
    data = load_configured(cfg.data)
    stats = data.stats()
    spent = {name: h.Spent() for name in ("null", "sqlite", "http")}
    clients = {"sqlite": MlflowClient(h.sqlite_uri(tmp)), "http": MlflowClient(url)}
    experiments = {name: store.get_or_create_experiment(c, "bench") for name, c in clients.items()}
    current: list[h.Spent] = [spent["null"]]  # where the aqtrack-side timers below add up

    # Local work done by the loop whatever the tracker: checkpoint files, and the report file.
    write_checkpoints, write_report = loop.write_checkpoints, report.write_report
    loop.write_checkpoints = lambda *a: _timed(current[0], "local: write checkpoints", write_checkpoints, *a)
    report.write_report = lambda *a: _timed(current[0], "local: build+write report", write_report, *a)
    build_report = report.build_report
    report.build_report = lambda *a, **kw: _timed(
        current[0], "local: build+write report", build_report, *a, **kw
    )

    def run(name: str) -> float:
        trainer = loop.build_trainer(cfg, data, torch.device("cpu"))  # identical seeded start every time
        state = TrainState(config=cfg.to_dict(), model_spec=trainer.spec.to_dict())
        out = Path(tempfile.mkdtemp(dir=tmp))
        current[0] = spent[name]
        start = time.perf_counter()
        if name == "null":
            loop.fit(trainer, state, loop.NullTracker(), out / "checkpoints")
        else:
            client = h.TimedClient(clients[name], spent[name])
            run_id = client.create_run(experiments[name]).info.run_id
            tracker = store.MlflowTracker(client, run_id, interval=cfg.run.publish_interval)
            tracker.log_params(cfg.to_dict())
            tracker.set_tags({names.TAG_DATA_SOURCE: data.source, names.TAG_ROUNDS: str(cfg.train.rounds)})
            tracker.log_json(stats, names.DATASET_STATS_ARTIFACT)
            hook = report.report_writer(tracker, out, stats, run_id)
            loop.fit(trainer, state, tracker, out / "checkpoints", on_epoch_end=[hook])
            tracker.drain()
            client.set_terminated(run_id)
        elapsed = time.perf_counter() - start
        spent[name].add("wall", elapsed)
        return elapsed

    run("null")  # warm-up: first-call allocations, kernel selection, MLflow imports
    run("sqlite")
    run("http")
    for s in spent.values():
        s.clear()
    rows = h.alternate({name: lambda name=name: run(name) for name in ("null", "sqlite", "http")}, pairs)

    epochs = cfg.train.total_epochs
    print(f"\n{epochs} epochs x {pairs} alternating triples, default model and data")
    print(f"null run (no tracking), median: {h.median(rows, 'null') / epochs * 1000:.1f} ms per epoch")
    figures = {}
    for name in ("sqlite", "http"):
        r = h.median_ratio(rows, name, "null")
        s = spent[name]
        mlflow_share = s.total("mlflow.") / s.seconds["wall"]
        figures |= {f"{name}_over_null": r, f"{name}_mlflow_share": mlflow_share}
        spread = h.ratio_range(rows, name, "null")
        print(f"\n[{name}] tracked / null (pairs {spread}): {r:.3f}x")
        print(f"[{name}] share of tracked wall time inside MLflow calls: {mlflow_share:.1%}")
        print(f"[{name}] estimate from that share, wall / (wall - MLflow): {1 / (1 - mlflow_share):.3f}x")
        runs = s.calls["wall"]
        print(f"[{name}] where the tracked run's time goes, per epoch (over {runs} runs):")
        for line in h.breakdown(s, runs * epochs, "epoch", "mlflow.") + h.breakdown(
            s, runs * epochs, "epoch", "local:"
        ):
            print(line)
    per_epoch = {f"epoch_ms_{name}": h.median(rows, name) / epochs * 1000 for name in rows[0]}
    h.result(**figures, **per_epoch)


def _timed(spent: h.Spent, key: str, fn, *args, **kwargs):
    start = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        spent.add(key, time.perf_counter() - start)


if __name__ == "__main__":
    main()
