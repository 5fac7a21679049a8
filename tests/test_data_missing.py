"""aqtrack.data.missing and the loaders' missing-frame policy: NaN values and skipped frames are filled
by linear interpolation (or refused), padding is never filled, and every fill is counted and noted."""

from __future__ import annotations

import logging
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


# --- through the loaders --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_nan_values_in_a_table_are_interpolated_counted_noted_and_logged(tmp_path, suffix, caplog):
    df = _table()
    hole = (df["sample_id"] == "s2") & df["frame"].isin([2, 3])
    df.loc[hole, ["ch_a", "ch_b"]] = np.nan
    df.loc[(df["sample_id"] == "s0") & (df["frame"] == 5), "ch_b"] = np.nan  # after the last value
    path = tmp_path / f"data{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path, index=False)

    with caplog.at_level(logging.INFO, logger="aqtrack.data"):
        data = _load(path)

    samples = _every_sample(data)
    np.testing.assert_array_equal(samples["s2"][0][:, 0], np.arange(6))
    np.testing.assert_array_equal(samples["s0"][0][:, 1], [0, 10, 20, 30, 40, 40])
    assert data.filled_values == 5
    assert data.stats()["missing"] == {"policy": "interpolate", "filled_values": 5}
    assert any("filled 5 missing value(s)" in note for note in data.notes)
    assert sum("filled 5 missing value(s)" in r.getMessage() for r in caplog.records) == 1


def test_skipped_frame_numbers_are_missing_frames_filled_over_the_gap(tmp_path):
    df = _table(start=1)  # frames 1..6, not 0..5
    df = df[~((df["sample_id"] == "s1") & df["frame"].isin([3, 4]))]
    df.to_csv(tmp_path / "gaps.csv", index=False)

    data = _load(tmp_path / "gaps.csv")

    x, n = _every_sample(data)["s1"]
    assert n == 6
    np.testing.assert_array_equal(x[:, 0], np.arange(6))
    np.testing.assert_array_equal(x[:, 1], 10.0 * np.arange(6))
    assert data.filled_values == 4  # 2 frames x 2 channels
    assert any("2 skipped frame number(s) in 1 sample(s) are missing frames" in note for note in data.notes)


def test_skipped_frames_with_missing_refuse_are_refused_naming_file_count_and_sample(tmp_path):
    df = _table()
    df = df[~((df["sample_id"] == "s3") & (df["frame"] == 2))]
    path = tmp_path / "gaps.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError) as info:
        _load(path, missing="refuse")
    message = str(info.value)
    assert message.startswith(f"{path}: 2 missing value(s)")
    assert "first in sample_id 's3'" in message and "--missing interpolate" in message


def test_frame_numbers_that_skip_more_than_they_list_are_refused_as_not_frame_counts(tmp_path):
    df = _table()
    df["frame"] = df["frame"] * 33  # milliseconds, not frames
    path = tmp_path / "times.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"skip more frames than they list .*'frame' must count frames"):
        _load(path)


def test_trailing_nan_rows_of_a_table_are_real_frames_filled_with_the_last_value(tmp_path):
    df = _table()
    df.loc[(df["sample_id"] == "s1") & (df["frame"] >= 4), ["ch_a", "ch_b"]] = np.nan
    df.to_csv(tmp_path / "tail.csv", index=False)
    x, n = _every_sample(_load(tmp_path / "tail.csv"))["s1"]
    assert n == 6  # every listed frame is real, even with no value
    np.testing.assert_array_equal(x[:, 0], [0, 1, 2, 3, 3, 3])


def test_npz_trailing_nan_frames_are_padding_and_inner_nan_frames_are_missing(tmp_path):
    x = np.arange(4 * 6 * 2, dtype=np.float64).reshape(4, 6, 2)
    x[0, 4:] = np.nan  # padding: sample 0 has 4 frames
    x[1, 2] = np.nan  # a lost frame inside sample 1
    x[2, 5, 0] = np.nan  # one value missing in the last frame: the frame is real (channel 1 has a value)
    np.savez(tmp_path / "data.npz", X=x, y=np.array([0, 0, 1, 1]))

    data = _load(tmp_path / "data.npz")

    samples = _every_sample(data)
    assert [samples[str(i)][1] for i in range(4)] == [4, 6, 6, 6]
    assert np.isnan(samples["0"][0][4:]).all()
    np.testing.assert_array_equal(samples["1"][0][2], (x[1, 1] + x[1, 3]) / 2)
    assert samples["2"][0][5, 0] == x[2, 4, 0]  # nearest observed value
    assert data.filled_values == 3


def test_npz_lengths_ignore_whatever_lies_past_each_sample(tmp_path):
    x = np.random.default_rng(0).normal(size=(4, 6, 2))
    x[0, 3:] = 0.0  # zero padding
    x[1, 5:] = np.inf  # junk padding
    lengths = np.array([3, 5, 6, 6])
    np.savez(tmp_path / "data.npz", X=x, y=np.array([0, 0, 1, 1]), lengths=lengths)

    data = _load(tmp_path / "data.npz")

    samples = _every_sample(data)
    for i, n in enumerate(lengths):
        got, length = samples[str(i)]
        assert length == n
        np.testing.assert_array_equal(got[:n], x[i, :n].astype(np.float32))
        assert np.isnan(got[n:]).all()
    assert data.filled_values == 0
