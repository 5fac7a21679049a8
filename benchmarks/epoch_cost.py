"""What does tracking cost per epoch? Ratios from one run, median over alternating pairs.

Three variants of the same seeded training on the default model and data (alternating, so drift and
noise hit all three alike), plus the share of the tracked run's wall time spent inside checkpoint writes
and inside MLflow calls (timed in the same run, so machine noise cancels out):
  compute  train_one_epoch + evaluate + scheduler step, nothing else (the loop's own work)
  null     aqtrack's fit() with a NullTracker: adds last.pt (and periodic/best) written every epoch
  tracked  fit() with MLflow on an embedded sqlite store: adds per-epoch metrics, checkpoint uploads,
           the run tag, and the legacy report written and uploaded every epoch

    python benchmarks/epoch_cost.py [--epochs 10] [--pairs 7] [--threads 1] [--quick]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import _harness as h
import torch


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--pairs", type=int, default=7)
    args = p.parse_args()
    h.set_threads(args.threads)
    settings = {"rounds": 1, "epochs_per_round": args.epochs}
    if args.quick:
        args.pairs, settings = 1, {"rounds": 1, "epochs_per_round": 2, "n_train": 64, "n_val": 32}
    with h.scratch("epoch") as tmp:
        measure(settings, args.pairs, tmp)


def measure(settings: dict, pairs: int, tmp: Path) -> None:
    from aqtrack.config import Config
    from aqtrack.data.dataset import load_configured
    from aqtrack.names import LAST
    from aqtrack.outputs.report import report_writer
    from aqtrack.tracking import store
    from aqtrack.training import loop
    from aqtrack.training.checkpoint import TrainState
    from aqtrack.training.loop import build_trainer, evaluate, fit, train_one_epoch

    cfg = Config.from_dict(settings)
    data = load_configured(cfg.data)
    client = store.connect()
    experiment = store.get_or_create_experiment(client, "bench")

    def compute() -> float:
        trainer = build_trainer(cfg, data, torch.device("cpu"))
        start = time.perf_counter()
        for _ in range(cfg.train.total_epochs):
            train_one_epoch(trainer)
            evaluate(trainer.model, trainer.val_loader, trainer.device)
            trainer.scheduler.step()
        return time.perf_counter() - start

    spent = {"checkpoint": 0.0, "tracked_checkpoint": 0.0, "mlflow": 0.0, "tracked_total": 0.0}

    def timed(key: str, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start

        return wrapper

    loop.write_checkpoints = timed("checkpoint", loop.write_checkpoints)

    def run_fit(tracked: bool) -> float:
        trainer = build_trainer(cfg, data, torch.device("cpu"))
        state = TrainState(config=cfg.to_dict(), model_spec={})
        out = Path(tempfile.mkdtemp(dir=tmp))
        hooks, tracker = [], loop.NullTracker()
        if tracked:
            run_id = client.create_run(experiment).info.run_id
            tracker = store.MlflowTracker(client, run_id, interval=cfg.run.publish_interval)
            for method in ("log_metrics", "log_artifact", "set_tags", "flush"):
                setattr(tracker, method, timed("mlflow", getattr(tracker, method)))
            hooks = [report_writer(tracker, out, data.stats(), run_id)]
        checkpoint_before, start = spent["checkpoint"], time.perf_counter()
        fit(trainer, state, tracker, out / "checkpoints", on_epoch_end=hooks)
        elapsed = time.perf_counter() - start
        if tracked:
            tracker.drain()
            client.set_terminated(run_id)
            spent["tracked_total"] += elapsed
            spent["tracked_checkpoint"] += spent["checkpoint"] - checkpoint_before
        run_fit.checkpoint_mb = (out / "checkpoints" / LAST).stat().st_size / 1e6
        return elapsed

    compute()  # warm-up: first-call allocations and kernel selection
    rows = []
    for i in range(pairs):
        order = ["compute", "null", "tracked"] if i % 2 == 0 else ["tracked", "null", "compute"]
        t = {name: compute() if name == "compute" else run_fit(name == "tracked") for name in order}
        rows.append(t)
        print(f"pair {i + 1}: " + ", ".join(f"{k} {v:.3f}s" for k, v in t.items()), flush=True)

    def median_ratio(a: str, b: str) -> float:
        return statistics.median(r[a] / r[b] for r in rows)

    epochs = cfg.train.total_epochs
    print(f"\n{epochs} epochs x {pairs} pairs, default model, checkpoint {run_fit.checkpoint_mb:.2f} MB")
    per_epoch_ms = statistics.median(r["compute"] for r in rows) / epochs * 1000
    print(f"compute per epoch (median): {per_epoch_ms:.1f} ms")
    ratios = {
        "null_over_compute": median_ratio("null", "compute"),
        "tracked_over_null": median_ratio("tracked", "null"),
        "tracked_over_compute": median_ratio("tracked", "compute"),
    }
    print(f"null / compute    (checkpoint files every epoch): {ratios['null_over_compute']:.3f}x")
    print(f"tracked / null    (MLflow metrics, uploads, report): {ratios['tracked_over_null']:.3f}x")
    print(f"tracked / compute (everything aqtrack adds):        {ratios['tracked_over_compute']:.3f}x")
    total = spent["tracked_total"]
    shares = {
        "checkpoint_share": spent["tracked_checkpoint"] / total,
        "mlflow_share": spent["mlflow"] / total,
    }
    print(f"share of tracked wall time in checkpoint writes: {shares['checkpoint_share']:.1%}")
    print(f"share of tracked wall time in MLflow calls:      {shares['mlflow_share']:.1%}")
    h.result(**ratios, **shares, epoch_ms_compute=per_epoch_ms)


if __name__ == "__main__":
    main()
