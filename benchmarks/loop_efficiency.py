"""How close is aqtrack's epoch to the bare compute it has to do? Median ratio over alternating pairs.

Two variants train the same seeded model (default model and data, built by `loop.build_trainer`):
  aqtrack  `loop.train_one_epoch` + `loop.evaluate` + the scheduler step, as `loop.fit` calls them
           (DataLoader batches, per-epoch metrics accumulated on the device, batch losses kept)
  bound    a minimal hand-written loop on the same tensors: per batch, index the training tensors,
           forward, cross-entropy, zero_grad, backward, clip_grad_norm_, optimizer step; then forward
           passes over the validation tensors in inference mode and the scheduler step. Nothing is
           measured or kept: this is the lower bound of any loop that trains this model on this data.

Each pair runs one epoch of each (fine-grained, so a burst of load from another process hits few
pairs), alternating which goes first. It prints bound / aqtrack (target: `TARGETS` in run_all.py),
and, to show where a gap would come from, the time of iterating aqtrack's loaders alone.

    python benchmarks/loop_efficiency.py [--epochs 1] [--pairs 31] [--quick]
"""

from __future__ import annotations

import time

import _harness as h
import torch
import torch.nn.functional as F


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--epochs", type=int, default=1, help="epochs of each variant per pair")
    p.add_argument("--pairs", type=int, default=31)
    args = p.parse_args()
    h.set_threads(args.threads)
    settings: dict = {}
    if args.quick:
        args.epochs, args.pairs, settings = 1, 1, {"n_train": 64, "n_val": 32}
    with h.scratch("loop"):
        measure(settings, args.epochs, args.pairs)


def measure(settings: dict, epochs: int, pairs: int) -> None:
    from aqtrack.config import Config
    from aqtrack.data.dataset import load_configured
    from aqtrack.training.loop import build_trainer, evaluate, train_one_epoch

    cfg = Config.from_dict(settings)
    data = load_configured(cfg.data)
    cpu = torch.device("cpu")
    aq, bound = build_trainer(cfg, data, cpu), build_trainer(cfg, data, cpu)
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_val = torch.from_numpy(data.x_val)
    batch, val_batch, clip = cfg.train.batch_size, max(cfg.train.batch_size, 256), cfg.train.max_grad_norm
    order = torch.Generator().manual_seed(cfg.train.seed)

    def aqtrack_epochs() -> float:
        start = time.perf_counter()
        for _ in range(epochs):
            train_one_epoch(aq)
            evaluate(aq.model, aq.val_loader, aq.device)
            aq.scheduler.step()
        return time.perf_counter() - start

    def bound_epochs() -> float:
        model, optimizer = bound.model, bound.optimizer
        start = time.perf_counter()
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(len(y_train), generator=order)
            for i in range(0, len(perm), batch):
                idx = perm[i : i + batch]
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
            model.eval()
            with torch.inference_mode():
                for i in range(0, len(x_val), val_batch):
                    model(x_val[i : i + val_batch])
            bound.scheduler.step()
        return time.perf_counter() - start

    def loaders_only() -> float:
        start = time.perf_counter()
        for _ in range(epochs):
            for _batch in aq.train_loader:
                pass
            for _batch in aq.val_loader:
                pass
        return time.perf_counter() - start

    aqtrack_epochs()  # warm-up: first-call allocations and kernel selection
    bound_epochs()
    rows = h.alternate({"aqtrack": aqtrack_epochs, "bound": bound_epochs, "loaders": loaders_only}, pairs)

    print(f"\n{epochs} epochs per variant x {pairs} alternating pairs, default model and data")
    print(f"aqtrack epoch (median): {h.median(rows, 'aqtrack') / epochs * 1000:.1f} ms")
    print(f"bound epoch   (median): {h.median(rows, 'bound') / epochs * 1000:.1f} ms")
    print(f"aqtrack's loaders alone, per epoch (median): {h.median(rows, 'loaders') / epochs * 1000:.2f} ms")
    loaders = h.median_ratio(rows, "loaders", "aqtrack")
    print(f"loaders alone / aqtrack epoch: {loaders:.3f}x")
    r = h.median_ratio(rows, "bound", "aqtrack")
    print(f"bound / aqtrack (pairs {h.ratio_range(rows, 'bound', 'aqtrack')}): {r:.3f}x")
    h.result(
        bound_over_aqtrack=r,
        loaders_over_aqtrack=loaders,
        epoch_ms_aqtrack=h.median(rows, "aqtrack") / epochs * 1000,
        epoch_ms_bound=h.median(rows, "bound") / epochs * 1000,
    )


if __name__ == "__main__":
    main()
