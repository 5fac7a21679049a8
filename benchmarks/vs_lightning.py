"""aqtrack against PyTorch Lightning on the same job: wall-time ratio and what each one logged.

Both train aqtrack's `ActionQualityNet` (built by `aqtrack.training.model.build_model`, normalised from the
training split) on the default synthetic data, seeded alike, for 3 rounds x 10 epochs: AdamW, a cosine
schedule restarting every 10 epochs (CosineAnnealingWarmRestarts, stepped per epoch), gradient clipping
at norm 1.0, batches of 32 (aqtrack's own loader; for Lightning a plain torch DataLoader of whole
batches, indexed the same way). Both track into a sqlite store in a temp dir and
keep the same checkpoints: last every epoch, periodic every 10 epochs, best on val_acc.
  aqtrack    `aqtrack.train(...)`: everything it does by default (params, tags, metrics per epoch,
             checkpoint uploads, legacy report, and the finishing stage: the model export, the test
             split, figures, the SVM); with `--lean`, without the SVM and the model export
             (`--no-svm --no-log-model`), which Lightning has no counterpart of
  lightning  `Trainer.fit` with `MLFlowLogger(log_model="all")` (checkpoints uploaded as they are
             written), two `ModelCheckpoint`s (best on val_acc + last, and every 10 epochs),
             `LearningRateMonitor`, and train/val loss and accuracy plus the pre-clip total grad norm
             (`lightning.pytorch.utilities.grad_norm` in `on_before_optimizer_step`, mean and max per
             epoch) logged with `self.log(..., on_epoch=True)`. No sanity-check batches, no progress bar.
Each variant is timed from the call to its return, data generation included, in one process after
imports, alternating which goes first. Prints aqtrack / lightning (target: `TARGETS` in run_all.py)
and, per framework, the metric keys x points and the artifacts (files, MB) in its run.

Needs the `bench` extra: pip install -e '.[bench]' (lightning; it does not change torch).

    python benchmarks/vs_lightning.py [--rounds 3] [--epochs-per-round 10] [--pairs 9] [--lean] [--quick]
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import _harness as h
import torch
import torch.nn.functional as F


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs-per-round", type=int, default=10)
    p.add_argument("--pairs", type=int, default=9)
    p.add_argument("--lean", action="store_true", help="aqtrack with --no-svm --no-log-model")
    args = p.parse_args()
    h.set_threads(args.threads)
    settings = {"rounds": args.rounds, "epochs_per_round": args.epochs_per_round}
    if args.quick:
        args.pairs = 1
        settings = {"rounds": 2, "epochs_per_round": 1, "checkpoint_interval": 1, "n_train": 64, "n_val": 32}
    if args.lean:
        settings |= h.LEAN
    with h.scratch("lightning") as tmp:
        measure(settings, args.pairs, tmp)


def batched(x, y, batch_size: int, generator: torch.Generator | None, num_workers: int):
    """A plain torch loader of whole batches (x [B, T, C], y [B]) indexed at once, as aqtrack's own
    loader reads them; shuffled by `generator` when one is given."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    order = RandomSampler(data, generator=generator) if generator is not None else SequentialSampler(data)
    sampler = BatchSampler(order, batch_size, drop_last=False)
    return DataLoader(data, sampler=sampler, batch_size=None, num_workers=num_workers, generator=generator)


def lightning_fit(settings: dict, uri: str, out: Path) -> str:
    """Train like `aqtrack.train(**settings)` does, the Lightning way; returns the MLflow run id."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.utilities import grad_norm

    from aqtrack.config import Config
    from aqtrack.data.dataset import load_configured
    from aqtrack.training.loop import seed_everything
    from aqtrack.training.model import ModelSpec, build_model

    cfg = Config.from_dict(settings)
    t = cfg.train
    data = load_configured(cfg.data)

    class LitActionQuality(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            spec = ModelSpec(data.channels, data.num_classes, cfg.model.hidden, cfg.model.dropout)
            self.model = build_model(spec)
            self.model.set_normalization(torch.from_numpy(data.x_train))

        def _step(self, batch, split: str) -> torch.Tensor:
            x, y = batch  # fixed-length data: no lengths
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            acc = (logits.argmax(dim=1) == y).float().mean()
            self.log(f"{split}_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
            self.log(f"{split}_acc", acc, on_step=False, on_epoch=True, batch_size=len(y))
            return loss

        def training_step(self, batch, batch_idx):
            return self._step(batch, "train")

        def validation_step(self, batch, batch_idx):
            self._step(batch, "val")

        def on_before_optimizer_step(self, optimizer) -> None:
            total = grad_norm(self, norm_type=2)["grad_2.0_norm_total"]  # before clipping
            self.log("grad_norm", total, on_step=False, on_epoch=True)
            self.log("grad_norm_max", total, on_step=False, on_epoch=True, reduce_fx="max")

        def configure_optimizers(self):
            optimizer_cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
            optimizer = optimizer_cls(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                optimizer, T_0=t.t0 or t.epochs_per_round, T_mult=t.t_mult, eta_min=t.min_lr
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    seed_everything(t.seed)
    module = LitActionQuality()
    generator = torch.Generator().manual_seed(t.seed)
    train_loader = batched(data.x_train, data.y_train, t.batch_size, generator, t.num_workers)
    val_loader = batched(data.x_val, data.y_val, max(t.batch_size, 256), None, t.num_workers)
    logger = MLFlowLogger(experiment_name="lightning", tracking_uri=uri, log_model="all")
    checkpoints = out / "checkpoints"
    callbacks = [
        ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val_acc", mode="max", save_last=True),
        ModelCheckpoint(
            dirpath=checkpoints,
            filename="periodic-{epoch}",
            every_n_epochs=t.checkpoint_interval,
            save_top_k=-1,
        ),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    trainer = L.Trainer(
        max_epochs=t.total_epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        gradient_clip_val=t.max_grad_norm,
        gradient_clip_algorithm="norm",
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out,
    )
    trainer.fit(module, train_loader, val_loader)
    return logger.run_id


def logged(client, run_id: str) -> str:
    """'K metric keys x P points (N total), F artifact files (M MB)' for one run."""
    keys = sorted(client.get_run(run_id).data.metrics)
    points = {k: len(client.get_metric_history(run_id, k)) for k in keys}
    files = _artifacts(client, run_id, None)
    per_key = ", ".join(f"{k}:{n}" for k, n in points.items())
    size = sum(f.file_size or 0 for f in files) / 1e6
    return (
        f"{len(keys)} metric keys, {sum(points.values())} points ({per_key}); "
        f"{len(files)} artifact files, {size:.1f} MB"
    )


def _artifacts(client, run_id: str, path: str | None) -> list:
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, f.path) if f.is_dir else [f]
    return out


def measure(settings: dict, pairs: int, tmp: Path) -> None:
    import lightning  # noqa: F401 - before quieting its loggers: importing it sets their levels
    from mlflow import MlflowClient

    import aqtrack

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    uri = h.sqlite_uri(tmp)
    runs: dict[str, str] = {}
    count = [0]

    def run_aqtrack() -> float:
        count[0] += 1
        start = time.perf_counter()
        runs["aqtrack"] = aqtrack.train(
            **settings, experiment="aqtrack", output_dir=str(tmp / f"aq{count[0]}")
        ).run_id
        return time.perf_counter() - start

    def run_lightning() -> float:
        count[0] += 1
        start = time.perf_counter()
        runs["lightning"] = lightning_fit(settings, uri, tmp / f"pl{count[0]}")
        return time.perf_counter() - start

    run_aqtrack()  # warm-up: imports, first-call allocations, store migrations
    run_lightning()
    rows = h.alternate({"aqtrack": run_aqtrack, "lightning": run_lightning}, pairs)

    epochs = settings["rounds"] * settings["epochs_per_round"]
    client = MlflowClient(uri)
    print(f"\n{epochs} epochs x {pairs} alternating pairs, default model and data, sqlite store")
    print(f"aqtrack run (median):   {h.median(rows, 'aqtrack'):.2f} s")
    print(f"lightning run (median): {h.median(rows, 'lightning'):.2f} s")
    r = h.median_ratio(rows, "aqtrack", "lightning")
    print(f"aqtrack / lightning (pairs {h.ratio_range(rows, 'aqtrack', 'lightning')}): {r:.3f}x")
    print(f"aqtrack logged:   {logged(client, runs['aqtrack'])}")
    print(f"lightning logged: {logged(client, runs['lightning'])}")
    h.result(
        aqtrack_over_lightning=r,
        lean=int(h.LEAN.items() <= settings.items()),
        run_s_aqtrack=h.median(rows, "aqtrack"),
        run_s_lightning=h.median(rows, "lightning"),
    )


if __name__ == "__main__":
    main()
