"""The missing-frame policy: NaN values inside a recording's real length are filled or refused.

Training and prediction must treat missing values identically, so this is one public function that the
loaders and prediction on new recordings both call.
"""

from __future__ import annotations

import numpy as np

from aqtrack.config import MISSING_POLICIES
from aqtrack.errors import DataError

_SHOW = 3  # how many samples/channels a message names before "..."


def fill_missing(
    x: np.ndarray,
    lengths: np.ndarray,
    policy: str,
    *,
    sample_ids: np.ndarray | None = None,
    channel_names: tuple[str, ...] | None = None,
    refuse_fix: str = "fill them in the file or use --missing interpolate",
) -> tuple[np.ndarray, int]:
    """Fill (or refuse) the NaN values of float [N, T, C] `x` inside each sample's `lengths` [N] frames.

    "interpolate": per sample and channel, linear interpolation over the frame index; values before the
    first / after the last observed value of a channel take the nearest observed value. "refuse": any
    missing value raises (its message ends with `refuse_fix`: what the user can do about it). Frames at
    or past a sample's length (its padding) are left as they are.

    Returns (a filled copy of x, number of values filled). Raises DataError (one line, without a file
    name: callers add their own) when a sample has a channel with no observed value at all, or when the
    policy is "refuse" and a value is missing; ValueError for an unknown policy.
    """
    if policy not in MISSING_POLICIES:
        raise ValueError(f"missing-value policy must be one of {', '.join(MISSING_POLICIES)}, got {policy!r}")
    t = x.shape[1]
    inside = np.arange(t)[None, :] < np.asarray(lengths)[:, None]  # [N, T]: the real frames
    missing = np.isnan(x) & inside[:, :, None]  # [N, T, C]
    count = int(missing.sum())
    if count == 0:
        return x, 0

    observed = (~np.isnan(x) & inside[:, :, None]).any(axis=1)  # [N, C]
    empty = np.argwhere(~observed)  # (sample, channel) pairs with nothing to interpolate from
    if len(empty):
        pairs = ", ".join(
            f"{_sample(int(i), sample_ids)} channel {_channel(int(j), channel_names)}"
            for i, j in empty[:_SHOW]
        )
        more = ", ..." if len(empty) > _SHOW else ""
        raise DataError(
            f"{len(np.unique(empty[:, 0]))} sample(s) have a channel with no value at all ({pairs}{more}); "
            "record the channel or drop those samples"
        )

    gappy = missing.any(axis=1)  # [N, C]
    if policy == "refuse":
        samples = np.flatnonzero(gappy.any(axis=1))
        raise DataError(
            f"{count} missing value(s) (NaN or skipped frames) in {len(samples)} sample(s), first in "
            f"{_sample(int(samples[0]), sample_ids)}; {refuse_fix}"
        )

    filled = x.copy()
    frames = np.arange(t, dtype=np.float64)
    # One np.interp call per incomplete series (sample, channel); complete series are not touched.
    for i, j in np.argwhere(gappy):
        n_real = int(lengths[i])
        series = filled[i, :n_real, j]  # a view: assigning into it fills `filled`
        known = ~np.isnan(series)
        series[~known] = np.interp(frames[:n_real][~known], frames[:n_real][known], series[known])
    return filled, count


def _sample(i: int, sample_ids: np.ndarray | None) -> str:
    if sample_ids is None:
        return f"sample {i}"
    return f"sample_id {_short(sample_ids[i])!r}"


def _channel(j: int, channel_names: tuple[str, ...] | None) -> str:
    return repr(_short(channel_names[j])) if channel_names is not None else str(j)


def _short(value, limit: int = 24) -> str:
    text = str(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
