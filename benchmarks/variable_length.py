"""What do variable-length sequences cost an epoch? Median ratio over alternating pairs.

The default synthetic recordings, repeated along time to 360 frames, then each cut to a length drawn
uniformly from 30..360 frames (NaN after it: the padding convention of a variable-length split). Two
variants train the default model on them (built by `loop.build_trainer`, the same seed):
  variable  the variable-length split as it is: every batch cut to its longest sequence, the masked
            network (BatchNorm statistics, convolutions and pooling on real frames only)
  fixed     the same recordings all cropped to one length, the mean real length of the variable
            split: the same number of real frames, no padding, the plain network

One epoch of each per pair (`loop.train_one_epoch` + `loop.evaluate` + the scheduler step), alternating
which goes first. It prints the padded-frame fraction of the variable split's batches (padded frames
over all frames the network computes on, training and validation; and, for comparison, what padding
every sequence to 360 would give), the per-epoch times, variable / fixed, and what the padding alone
would predict for that ratio (1 / (1 - padded fraction)); what is left above that is the masking.
Sequences keep the sampler's order (part of an exact resume), so batches are not bucketed by length.

    python benchmarks/variable_length.py [--pairs 7] [--quick]
"""

from __future__ import annotations

import dataclasses
import time

import _harness as h
import numpy as np
import torch

FRAMES, SHORTEST = 360, 30


def main() -> None:
    p = h.parser(__doc__)
    p.add_argument("--pairs", type=int, default=7)
    args = p.parse_args()
    h.set_threads(args.threads)
    settings: dict = {}
    if args.quick:
        args.pairs, settings = 1, {"n_train": 64, "n_val": 32}
    with h.scratch("varlen"):
        measure(settings, args.pairs)


def both_splits(data, seed: int = 0):
    """(variable, fixed): `data` repeated along time to FRAMES frames, each sequence then cut to a
    length in SHORTEST..FRAMES (NaN after it); and the same recordings all cropped to the mean length."""
    rng = np.random.default_rng(seed)
    splits = {"train": data.train, "val": data.val}
    long = {name: np.tile(s.x, (1, -(-FRAMES // s.x.shape[1]), 1))[:, :FRAMES] for name, s in splits.items()}
    lengths = {name: rng.integers(SHORTEST, FRAMES + 1, len(x)) for name, x in long.items()}
    mean_length = round(float(np.concatenate(list(lengths.values())).mean()))
    cut, cropped = {}, {}
    for name, x in long.items():
        x = x.copy()
        x[np.arange(FRAMES) >= lengths[name][:, None]] = np.nan
        cut[name] = dataclasses.replace(splits[name], x=x, lengths=lengths[name])
        fixed = np.full(len(x), mean_length)
        cropped[name] = dataclasses.replace(splits[name], x=long[name][:, :mean_length], lengths=fixed)
    return dataclasses.replace(data, test=None, **cut), dataclasses.replace(data, test=None, **cropped)


def padded_fraction(loaders) -> float:
    """Padded frames / all frames of the batches the loaders build (one epoch each)."""
    padded = total = 0
    for loader in loaders:
        for x, _, lengths in loader:
            total += x.shape[0] * x.shape[1]
            padded += 0 if lengths is None else int((x.shape[1] - lengths).sum())
    return padded / total


def measure(settings: dict, pairs: int) -> None:
    from aqtrack.config import Config
    from aqtrack.data.dataset import load_configured
    from aqtrack.training.loop import build_trainer, evaluate, train_one_epoch

    cfg = Config.from_dict(settings)
    variable, fixed = both_splits(load_configured(cfg.data))
    lengths = np.concatenate([variable.train.lengths, variable.val.lengths])
    mean_length = fixed.seq_len
    cpu = torch.device("cpu")
    trainers = {"variable": build_trainer(cfg, variable, cpu), "fixed": build_trainer(cfg, fixed, cpu)}
    epochs = dict.fromkeys(trainers, 0)

    def one_epoch(name: str):
        def run() -> float:
            trainer, epochs[name] = trainers[name], epochs[name] + 1
            trainer.train_batches.set_epoch(epochs[name])
            start = time.perf_counter()
            train_one_epoch(trainer)
            evaluate(trainer.model, trainer.val_loader, trainer.device)
            trainer.scheduler.step()
            return time.perf_counter() - start

        return run

    v = trainers["variable"]
    v.train_batches.set_epoch(1)
    fraction = padded_fraction([v.train_loader, v.val_loader])
    whole = 1 - lengths.mean() / FRAMES
    for name in trainers:  # warm-up: first-call allocations and kernel selection
        one_epoch(name)()
    rows = h.alternate({"variable": one_epoch("variable"), "fixed": one_epoch("fixed")}, pairs)
    report(rows, fraction, whole, mean_length, len(variable.y_train))


def report(rows: list[dict[str, float]], fraction: float, whole: float, mean_length: int, n: int) -> None:
    print(f"\n{len(rows)} pairs of 1 epoch, default model, {n} training sequences of {SHORTEST}..{FRAMES}")
    print(f"fixed variant: every sequence cropped to {mean_length} frames (the mean real length)")
    print(f"padded-frame fraction, batches cut to their longest: {fraction:.3f}")
    print(f"padded-frame fraction if every sequence were padded to {FRAMES}: {whole:.3f}")
    print(f"variable epoch (median): {h.median(rows, 'variable') * 1000:.1f} ms")
    print(f"fixed epoch    (median): {h.median(rows, 'fixed') * 1000:.1f} ms")
    print(f"padding alone would predict variable / fixed: {1 / (1 - fraction):.3f}x")
    ratio = h.median_ratio(rows, "variable", "fixed")
    print(f"variable / fixed (pairs {h.ratio_range(rows, 'variable', 'fixed')}): {ratio:.3f}x")
    h.result(
        padded_fraction=fraction,
        epoch_time_ratio=ratio,
        epoch_ms_variable=h.median(rows, "variable") * 1000,
        epoch_ms_fixed=h.median(rows, "fixed") * 1000,
    )


if __name__ == "__main__":
    main()
