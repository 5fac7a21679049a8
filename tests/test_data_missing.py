"""aqtrack.data.missing: NaN values inside a recording are filled by linear interpolation (or refused),
padding is never filled, and every fill is counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aqtrack.data.files import load_file
from aqtrack.data.missing import fill_missing
from aqtrack.errors import DataError


def _load(path: Path, **settings):
    return load_file(path, **{"val_fraction": 0.5, "seed": 0, "test_fraction": 0.0, **settings})


def _every_sample(data) -> dict[str, tuple[np.ndarray, int]]:
    """sample_id -> (x, length) over all splits, so tests need not know where the split put a sample."""
    out = {}
    for split in data.splits.values():
        for x, n, sid in zip(split.x, split.lengths, split.sample_ids, strict=True):
            out[str(sid)] = (x, int(n))
    return out


def _table(lengths=(6, 6, 6, 6), labels=(0, 0, 1, 1), start: int = 0) -> pd.DataFrame:
    """Long table; ch_a counts frames (0, 1, 2, ...) and ch_b = 10 * ch_a, so fills are easy to predict."""
    rows = []
    for i, (n, label) in enumerate(zip(lengths, labels, strict=True)):
        for f in range(n):
            rows.append(
                {"sample_id": f"s{i}", "frame": start + f, "label": label, "ch_a": f, "ch_b": 10.0 * f}
            )
    return pd.DataFrame(rows)


# --- fill_missing --------------------------------------------------------------------------------------


def test_fill_interpolates_linearly_over_frames_and_takes_the_nearest_value_at_the_ends():
    x = np.array([[np.nan, 1.0, np.nan, np.nan, 4.0, np.nan]], dtype=np.float32)[:, :, None]  # [1, 6, 1]
    filled, count = fill_missing(x, np.array([6]), "interpolate")
    np.testing.assert_array_equal(filled[0, :, 0], [1.0, 1.0, 2.0, 3.0, 4.0, 4.0])
    assert count == 4
    assert filled.dtype == np.float32
    assert np.isnan(x).sum() == 4  # the input is left as it was


def test_fill_works_per_channel_and_leaves_padding_and_complete_series_alone():
    x = np.full((2, 5, 2), np.nan, dtype=np.float32)
    x[0, :, 0] = [0, np.nan, 2, 3, 4]
    x[0, :, 1] = [5, 5, 5, 5, 5]
    x[1, :3, 0] = [1, np.nan, 3]  # length 3: frames 3 and 4 are padding
    x[1, :3, 1] = [7, 8, 9]
    filled, count = fill_missing(x, np.array([5, 3]), "interpolate")
    np.testing.assert_array_equal(filled[0, :, 0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(filled[1, :3, 0], [1, 2, 3])
    np.testing.assert_array_equal(filled[1, :3, 1], [7, 8, 9])
    assert np.isnan(filled[1, 3:]).all()
    assert count == 2


def test_fill_without_missing_values_returns_the_array_and_zero():
    x = np.ones((2, 4, 3), dtype=np.float32)
    filled, count = fill_missing(x, np.array([4, 4]), "refuse")
    assert filled is x and count == 0


def test_refuse_names_the_count_and_the_first_sample():
    x = np.ones((3, 4, 2), dtype=np.float32)
    x[1, 2, 0] = x[2, 0, 1] = x[2, 1, 1] = np.nan
    with pytest.raises(DataError, match=r"3 missing value\(s\) .* in 2 sample\(s\), first in sample_id 'b'"):
        fill_missing(x, np.array([4, 4, 4]), "refuse", sample_ids=np.array(["a", "b", "c"]))


@pytest.mark.parametrize("policy", ["interpolate", "refuse"])
def test_a_channel_with_no_value_in_a_sample_is_refused_naming_sample_and_channel(policy):
    x = np.ones((2, 4, 2), dtype=np.float32)
    x[1, :, 1] = np.nan
    with pytest.raises(
        DataError,
        match=r"1 sample\(s\) have a channel with no value at all \(sample 1 channel 'knee'\); record",
    ):
        fill_missing(x, np.array([4, 4]), policy, channel_names=("hip", "knee"))


def test_unknown_policy_is_a_value_error():
    with pytest.raises(ValueError, match="interpolate, refuse"):
        fill_missing(np.ones((1, 2, 1)), np.array([2]), "zeros")
