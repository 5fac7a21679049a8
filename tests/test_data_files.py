"""aqtrack.data.files: .npz / .csv / .parquet loading, validation messages and the seeded stratified split.

Most tests here load with test_fraction=0 (train and val only, as before the test split existed); the
test split, subjects, missing values and the newer formats have their own test_data_*.py files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aqtrack.data.dataset import load_data
from aqtrack.data.files import load_file
from aqtrack.errors import DataError

T, C = 5, 3


def _arrays(class_sizes=(4, 4, 4), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved labels; X[i, 0, 0] == i so a sample can be traced through the split."""
    y = np.concatenate([np.full(n, k) for k, n in enumerate(class_sizes)])
    y = y[np.random.default_rng(seed).permutation(len(y))].astype(np.int64)
    x = np.random.default_rng(seed + 1).normal(size=(len(y), T, C)).astype(np.float32)
    x[:, 0, 0] = np.arange(len(y))
    return x, y


def _npz(tmp_path: Path, name: str = "data.npz", **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _long_table(x: np.ndarray, y: np.ndarray, split: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (sample, frame), as a user would export it."""
    n, t, c = x.shape
    columns: dict[str, object] = {
        "sample_id": np.repeat([f"s{i:02d}" for i in range(n)], t),
        "frame": np.tile(np.arange(t), n),
        "label": np.repeat(y, t),
    }
    if split is not None:
        columns["split"] = np.repeat(split, t)
    for j in range(c):
        columns[f"ch_{j}"] = x[:, :, j].reshape(-1)
    return pd.DataFrame(columns)


def _write_table(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


def _load(path: Path, val_fraction: float = 0.25, seed: int = 0, **settings):
    return load_file(path, val_fraction=val_fraction, seed=seed, **{"test_fraction": 0.0, **settings})


def _assert_refused(path: Path, expected: str, val_fraction: float = 0.25, **settings) -> str:
    with pytest.raises(DataError) as info:
        _load(path, val_fraction=val_fraction, **settings)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    assert len(message) < 300, message
    assert expected in message
    return message


def _ids(x: np.ndarray) -> np.ndarray:
    return x[:, 0, 0].astype(int)


# --- .npz ---------------------------------------------------------------------------------------------


def test_npz_round_trip_keeps_values_dtypes_class_names_and_explicit_split(tmp_path):
    x, y = _arrays()
    split = np.array(["train", "val"] * (len(y) // 2))
    names = np.array(["bad", "ok", "good"])
    path = _npz(tmp_path, X=x.astype(np.float64), y=y.astype(np.int32), split=split, class_names=names)

    data = _load(path)

    train, val = split == "train", split == "val"
    np.testing.assert_array_equal(data.x_train, x[train])
    np.testing.assert_array_equal(data.x_val, x[val])
    np.testing.assert_array_equal(data.y_train, y[train])
    np.testing.assert_array_equal(data.y_val, y[val])
    assert data.x_train.dtype == np.float32 and data.x_train.flags.c_contiguous
    assert data.x_val.dtype == np.float32 and data.x_val.flags.c_contiguous
    assert data.y_train.dtype == np.int64 and data.y_val.dtype == np.int64
    assert data.class_names == ("bad", "ok", "good")
    assert (data.seq_len, data.channels, data.num_classes) == (T, C, 3)
    assert data.source == str(path)


def test_npz_without_class_names_gets_class_k_names_from_max_label(tmp_path):
    x, y = _arrays(class_sizes=(3, 3, 3, 3))
    data = _load(_npz(tmp_path, X=x, y=y))
    assert data.class_names == ("class_0", "class_1", "class_2", "class_3")


def test_npz_integer_class_without_samples_is_refused_naming_it(tmp_path):
    # Was accepted as an empty class_2; an empty phantom class is now an error unless class_names lists it.
    x, y = _arrays(class_sizes=(3, 3, 0, 3))
    message = _assert_refused(_npz(tmp_path, X=x, y=y), "no sample has label 2 (class_2)")
    assert "renumber from 0" in message


def test_npz_float_labels_that_are_whole_numbers_are_accepted(tmp_path):
    x, y = _arrays()
    data = _load(_npz(tmp_path, X=x, y=y.astype(np.float64)))
    assert data.y_train.dtype == np.int64
    np.testing.assert_array_equal(np.sort(np.concatenate([data.y_train, data.y_val])), np.sort(y))


# --- seeded stratified split ---------------------------------------------------------------------------


def test_stratified_split_is_deterministic_for_a_seed(tmp_path):
    x, y = _arrays(class_sizes=(10, 10, 10))
    path = _npz(tmp_path, X=x, y=y)
    first, second = _load(path, seed=7), _load(path, seed=7)
    np.testing.assert_array_equal(first.x_val, second.x_val)
    np.testing.assert_array_equal(first.y_train, second.y_train)


def test_stratified_split_differs_for_another_seed(tmp_path):
    x, y = _arrays(class_sizes=(10, 10, 10))
    path = _npz(tmp_path, X=x, y=y)
    assert set(_ids(_load(path, seed=0).x_val)) != set(_ids(_load(path, seed=1).x_val))


@pytest.mark.parametrize(
    ("class_sizes", "val_fraction", "expected_val"),
    [
        ((10, 6, 3), 0.3, (3, 2, 1)),  # round(3.0), round(1.8), round(0.9)
        ((10, 5, 5), 0.1, (1, 1, 1)),  # at least one per class: sklearn needs a held sample per class
        ((4, 2), 0.9, (3, 1)),  # never the whole class
        ((5, 5, 1), 0.4, (2, 2, 0)),  # a lone sample stays in train
    ],
)
def test_stratified_split_respects_val_fraction_per_class(tmp_path, class_sizes, val_fraction, expected_val):
    x, y = _arrays(class_sizes=class_sizes)
    data = _load(_npz(tmp_path, X=x, y=y), val_fraction=val_fraction)
    val_counts = np.bincount(data.y_val, minlength=len(class_sizes))
    train_counts = np.bincount(data.y_train, minlength=len(class_sizes))
    assert tuple(val_counts) == expected_val
    assert tuple(train_counts + val_counts) == class_sizes
    assert all(train_counts > 0)


def test_stratified_split_keeps_every_class_in_both_splits_and_file_order_within_each(tmp_path):
    x, y = _arrays(class_sizes=(8, 5, 3))
    data = _load(_npz(tmp_path, X=x, y=y), val_fraction=0.3, seed=3)
    assert set(data.y_train) == set(data.y_val) == {0, 1, 2}
    train_ids, val_ids = _ids(data.x_train), _ids(data.x_val)
    assert list(train_ids) == sorted(train_ids) and list(val_ids) == sorted(val_ids)
    assert sorted([*train_ids, *val_ids]) == list(range(len(y)))
    np.testing.assert_array_equal(data.y_val, y[val_ids])


def test_split_with_too_few_samples_for_validation_is_refused(tmp_path):
    x, y = _arrays(class_sizes=(1, 1))
    _assert_refused(_npz(tmp_path, X=x, y=y), "too few samples")


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_outside_open_unit_interval_is_refused(tmp_path, val_fraction):
    x, y = _arrays()
    _assert_refused(_npz(tmp_path, X=x, y=y), "val_fraction must be in (0, 1)", val_fraction=val_fraction)


# --- .csv / .parquet long format ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize("with_split", [False, True])
def test_long_table_with_shuffled_rows_gives_the_same_arrays_as_npz(tmp_path, suffix, with_split):
    x, y = _arrays()
    split = np.array(["val", "train", "train"] * (len(y) // 3)) if with_split else None
    table = _long_table(x, y, split)
    table = table.sample(frac=1.0, random_state=0)  # row order in the file must not matter
    from_table = _load(_write_table(table, tmp_path / f"data{suffix}"))
    arrays = {"X": x, "y": y} if split is None else {"X": x, "y": y, "split": split}
    from_npz = _load(_npz(tmp_path, **arrays))

    for field in ("x_train", "y_train", "x_val", "y_val"):
        np.testing.assert_array_equal(getattr(from_table, field), getattr(from_npz, field))
        assert getattr(from_table, field).dtype == getattr(from_npz, field).dtype
    assert from_table.class_names == from_npz.class_names == ("class_0", "class_1", "class_2")
    assert from_table.x_train.flags.c_contiguous


def test_long_table_orders_samples_by_id_and_channels_by_file_column_order(tmp_path):
    x, y = _arrays()
    table = _long_table(x, y).rename(columns={"ch_0": "ch_z", "ch_1": "ch_a", "ch_2": "ch_m"})
    table = table[["ch_m", "label", "ch_z", "sample_id", "frame", "ch_a"]]
    table["sample_id"] = table["sample_id"].map(lambda s: f"id{99 - int(s[1:]):03d}")  # reverses the order
    from_table = _load(_write_table(table, tmp_path / "data.csv"))
    # Expected: samples in reverse, channels as they appear in the file (ch_m, ch_z, ch_a).
    from_npz = _load(_npz(tmp_path, X=x[::-1][:, :, [2, 0, 1]], y=y[::-1]))
    for field in ("x_train", "y_train", "x_val", "y_val"):
        np.testing.assert_array_equal(getattr(from_table, field), getattr(from_npz, field))


# --- malformed files ---------------------------------------------------------------------------------


def _malformed_npz(case: str) -> dict[str, np.ndarray]:
    x, y = _arrays()
    n = len(y)
    nan_x = x.copy()
    nan_x[3, 1, 2] = np.nan  # missing: filled, not refused
    nan_x[7, 0, 1] = np.inf
    return {
        "missing X": {"y": y},
        "missing y": {"X": x},
        "X not 3-D": {"X": x[:, :, 0], "y": y},
        "y not 1-D": {"X": x, "y": y[:, None]},
        "N mismatch": {"X": x, "y": y[:-1]},
        "split N mismatch": {"X": x, "y": y, "split": np.array(["train", "val"] * (n // 2 - 1))},
        "non-numeric X": {"X": x.astype(str), "y": y},
        "NaN and Inf": {"X": nan_x, "y": y},
        "fractional label": {"X": x, "y": np.where(np.arange(n) == 2, 1.5, y)},
        "string label": {"X": x, "y": np.array(["good"] * n)},
        "negative label": {"X": x, "y": np.where(np.arange(n) == 4, -1, y)},
        "label beyond class_names": {"X": x, "y": y, "class_names": np.array(["a", "b"])},
        "one class": {"X": x, "y": np.zeros(n, dtype=np.int64)},
        "one class name": {"X": x, "y": np.zeros(n, dtype=np.int64), "class_names": np.array(["a"])},
        "bad split value": {"X": x, "y": y, "split": np.array(["train", "holdout"] * (n // 2))},
        "no train in split": {"X": x, "y": y, "split": np.array(["val"] * n)},
        "zero samples": {"X": np.zeros((0, T, C), np.float32), "y": np.zeros(0, np.int64)},
        "T of 1": {"X": x[:, :1], "y": y},
        "C of 0": {"X": x[:, :, :0], "y": y},
        "pickled object array": {"X": x, "y": np.array([int(v) for v in y], dtype=object)},
    }[case]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing X", "missing array(s) X"),
        ("missing y", "missing array(s) y"),
        ("X not 3-D", "expected a 3-D array"),
        ("y not 1-D", "expected a 1-D array"),
        ("N mismatch", "X has 12 samples but y has 11"),
        ("split N mismatch", "split has shape (10,) but there are 12 samples"),
        ("non-numeric X", "X must be numeric"),
        ("NaN and Inf", "X has 1 infinite value(s) (or too large for float32), first in sample 7"),
        ("fractional label", "labels must be integers, found 1.5 in sample 2"),
        ("string label", "only one class ('good') has samples"),
        ("negative label", "1 negative label(s), first -1 in sample 4"),
        ("label beyond class_names", "out of range for 2 class_names"),
        ("one class", "only one class"),
        ("one class name", "1 class_names given"),
        ("bad split value", "split values must be 'train', 'val' or 'test', found 'holdout'"),
        ("no train in split", "split has no train samples"),
        ("zero samples", "no samples"),
        ("T of 1", "12 sample(s) have fewer than 2 real frames, first sample 0 (1)"),
        ("C of 0", "C=0 channels"),
        ("pickled object array", "array 'y' cannot be read (Object arrays cannot be loaded"),
    ],
)
def test_malformed_npz_is_refused_naming_file_and_problem(tmp_path, case, expected):
    _assert_refused(_npz(tmp_path, **_malformed_npz(case)), expected)


@pytest.mark.filterwarnings("error")
def test_npz_values_too_large_for_float32_are_refused_as_inf_without_warnings(tmp_path):
    x, y = _arrays()
    x = x.astype(np.float64)
    x[6, 4, 2] = 1e39
    _assert_refused(
        _npz(tmp_path, X=x, y=y), "X has 1 infinite value(s) (or too large for float32), first in sample 6"
    )


def test_npz_with_several_problems_reports_them_all_on_one_line(tmp_path):
    x, y = _arrays()
    x[5, 2, 0] = np.inf
    message = _assert_refused(_npz(tmp_path, X=x, y=np.where(np.arange(len(y)) == 0, -2, y)), "negative")
    assert "infinite value(s)" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "not a readable .npz archive"),
        (b"this is not a zip file at all", "not a readable .npz archive"),
        (b"PK\x03\x04 truncated zip", "not a readable .npz archive"),
    ],
)
def test_corrupt_npz_is_refused_naming_file(tmp_path, content, expected):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    _assert_refused(path, expected)


def test_npz_member_that_is_not_npy_data_is_refused(tmp_path):
    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", b"garbage")
        archive.writestr("y.npy", b"garbage")
    _assert_refused(path, "array 'X' cannot be read")


def test_single_npy_array_saved_as_npz_is_refused(tmp_path):
    path = tmp_path / "array.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros((2, T, C)))
    _assert_refused(path, "single .npy array")


def _valid_table() -> tuple[pd.DataFrame, int]:
    """A well-formed long table with a split, and the row of sample 's01', frame 1 (the one to break)."""
    x, y = _arrays()
    df = _long_table(x, y, np.array(["train", "val"] * (len(y) // 2)))
    return df, int(df.index[(df["sample_id"] == "s01") & (df["frame"] == 1)][0])


def _with(df: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    """`df` with one cell changed; an integer column is widened to float first when the value needs it."""
    df = df.copy()
    if isinstance(value, float) and df[column].dtype.kind in "iu":
        df[column] = df[column].astype(float)
    df.loc[row, column] = value
    return df


def _in_s01(df: pd.DataFrame) -> np.ndarray:
    return (df["sample_id"] == "s01").to_numpy()


# case -> (edit of a valid table given the row to break, substring the error message must contain)
_TABLE_CASES = {
    "missing label column": (
        lambda df, row: df.drop(columns="label"),
        "missing required column(s) 'label'",
    ),
    "per-frame column": (
        lambda df, row: df.assign(timestamp=df["frame"] * 0.1, notes="x"),
        "column(s) 'timestamp' change within a sample; rename to ch_timestamp to use as a channel, or drop",
    ),
    "no channel columns": (
        lambda df, row: df.drop(columns=["ch_0", "ch_1", "ch_2"]),
        "no channel columns",
    ),
    "zero rows": (lambda df, row: df.iloc[0:0], "no rows (zero samples)"),
    "duplicate frame": (
        lambda df, row: _with(df, row, "frame", 0),
        "sample_id(s) 's01' have duplicate frame numbers",
    ),
    "fractional frame": (
        lambda df, row: _with(df, row, "frame", 0.5),
        "column 'frame' must hold integers",
    ),
    "missing frame value": (
        lambda df, row: _with(df, row, "frame", np.nan),
        "'frame' is empty on 1 row(s) of sample_id(s) 's01'; give every row its frame number",
    ),
    "T of 1": (
        lambda df, row: df[df["frame"] == 0],
        "12 sample(s) have fewer than 2 real frames, first sample_id 's00' (1)",
    ),
    "label changes": (
        lambda df, row: _with(df, row, "label", (df.loc[row, "label"] + 1) % 3),
        "label changes within sample_id(s) 's01'",
    ),
    "split changes": (
        lambda df, row: _with(df, row, "split", "train" if df.loc[row, "split"] == "val" else "val"),
        "split changes within sample_id(s) 's01'",
    ),
    "bad split value": (
        lambda df, row: df.assign(split=df["split"].replace("val", "validation")),
        "split values must be 'train', 'val' or 'test', found 'validation'",
    ),
    "fractional label": (
        lambda df, row: df.assign(label=np.where(_in_s01(df), 1.5, df["label"])),
        "labels must be integers, found 1.5 in sample_id 's01'",
    ),
    "negative label": (
        lambda df, row: df.assign(label=np.where(_in_s01(df), -1, df["label"])),
        "negative label(s), first -1 in sample_id 's01'",
    ),
    "one class": (lambda df, row: df.assign(label=0), "only one class"),
    "non-numeric channel": (
        lambda df, row: _with(df.astype({"ch_1": str}), row, "ch_1", "left knee occluded"),
        "non-numeric values in channel column(s) 'ch_1'",
    ),
    "NaN channel with missing=refuse": (
        lambda df, row: _with(df, row, "ch_2", np.nan),
        "1 missing value(s) (NaN or skipped frames) in 1 sample(s), first in sample_id 's01'",
    ),
}


@pytest.mark.parametrize(("edit", "expected"), list(_TABLE_CASES.values()), ids=list(_TABLE_CASES))
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_malformed_long_table_is_refused_naming_file_and_problem(tmp_path, edit, expected, suffix):
    df, row = _valid_table()
    _assert_refused(_write_table(edit(df, row), tmp_path / f"data{suffix}"), expected, missing="refuse")


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.csv", b"", "file is empty"),
        ("header_only.csv", b"sample_id,frame,label,ch_a\n", "no rows (zero samples)"),
        ("garbage.parquet", b"not parquet", "cannot read file"),
        ("data.json", b"{}", "unsupported file type '.json'"),
    ],
)
def test_unreadable_or_unsupported_file_is_refused_naming_file(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    message = _assert_refused(path, expected)
    assert "non-numeric" not in message  # an empty table is reported as empty, not as bad columns


def test_load_data_with_missing_path_raises_data_error(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataError, match="data file not found") as info:
        load_data(str(missing), n_train=8, n_val=4, val_fraction=0.25, seed=0)
    assert "\n" not in str(info.value)
    assert str(missing) in str(info.value)


def test_importing_the_loader_does_not_import_pandas_torch_or_sklearn():
    code = (
        "import sys, aqtrack.data, aqtrack.data.files, aqtrack.data.missing, aqtrack.data.splits, "
        "aqtrack.data.synthetic; print(sorted({'pandas', 'torch', 'sklearn', 'aeon'} & set(sys.modules)))"
    )
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
