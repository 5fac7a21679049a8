"""Variable-length test data: sequences that end in NaN frames (the UCR / tslearn padding convention)."""

from __future__ import annotations

import dataclasses

import numpy as np

from aqtrack.data.dataset import ActionQualityData


def pad_with_nan(x: np.ndarray, lengths: np.ndarray, frames: int | None = None) -> np.ndarray:
    """x [N, T, C] cut to `lengths` [N] real frames each and NaN after them, over `frames` (default T)."""
    frames = x.shape[1] if frames is None else frames
    out = np.full((len(x), frames, x.shape[2]), np.nan, dtype=x.dtype)
    for i, n in enumerate(lengths):
        out[i, :n] = x[i, :n]
    return out


def random_lengths(n: int, low: int, high: int, seed: int) -> np.ndarray:
    """n lengths uniform in low..high (both included), the first one `high` so the split keeps its T."""
    lengths = np.random.default_rng(seed).integers(low, high + 1, n)
    lengths[0] = high
    return lengths


def variable_length(data: ActionQualityData, low: int, seed: int = 0) -> ActionQualityData:
    """`data` with every sequence cut to a random length in low..T, NaN after it (lengths to match)."""
    frames = data.train.x.shape[1]

    def cut(split, seed: int):
        lengths = random_lengths(len(split), low, frames, seed)
        return dataclasses.replace(split, x=pad_with_nan(split.x, lengths), lengths=lengths)

    test = None if data.test is None else cut(data.test, seed + 2)
    return dataclasses.replace(data, train=cut(data.train, seed), val=cut(data.val, seed + 1), test=test)
