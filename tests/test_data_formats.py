"""aqtrack.data.files on real users' shapes of data: variable length in every format, string labels and
class names, per-sample metadata, aeon .ts files, and one-line refusals of files that are not data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aqtrack.data.dataset import pad_sequences
from aqtrack.data.files import UNLABELLED, load_file, read_recordings
from aqtrack.errors import DataError

REPO = Path(__file__).resolve().parents[1]
LENGTHS = (5, 8, 3, 6, 7, 4)  # one per sample
LABELS = (0, 1, 0, 1, 0, 1)


def _load(path: Path, **settings):
    return load_file(path, **{"val_fraction": 0.5, "seed": 0, "test_fraction": 0.0, **settings})


def _sequences(c: int = 2) -> list[np.ndarray]:
    """Sample i is [LENGTHS[i], c] with values 100 * i + frame (+ 0.5 * channel), all distinct."""
    return [100.0 * i + np.arange(n)[:, None] + 0.5 * np.arange(c)[None, :] for i, n in enumerate(LENGTHS)]


def _long_table(seqs: list[np.ndarray], labels=LABELS, start: int = 0) -> pd.DataFrame:
    rows = [
        {
            "sample_id": f"s{i}",
            "frame": start + f,
            "label": labels[i],
            **{f"ch_{j}": v for j, v in enumerate(row)},
        }
        for i, seq in enumerate(seqs)
        for f, row in enumerate(seq)
    ]
    return pd.DataFrame(rows)


def _all(data) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, y, lengths and sample_ids of every split, in sample_id order (to compare loaders)."""
    splits = list(data.splits.values())
    ids = np.concatenate([s.sample_ids for s in splits])
    order = np.argsort(ids, kind="stable")
    x = np.concatenate([s.x for s in splits])[order]
    y = np.concatenate([s.y for s in splits])[order]
    return x, y, np.concatenate([s.lengths for s in splits])[order], ids[order]


def _assert_refused(path: Path, expected: str, **settings) -> str:
    with pytest.raises(DataError) as info:
        _load(path, **settings)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and len(message) < 300, message
    assert expected in message, message
    return message


# --- variable length ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_variable_length_table_gives_nan_padded_samples_and_their_lengths(tmp_path, suffix):
    table = _long_table(_sequences(), start=1).sample(frac=1.0, random_state=0)  # any row order
    path = tmp_path / f"data{suffix}"
    table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path, index=False)

    data = _load(path)

    x, y, lengths, ids = _all(data)
    expected, _ = pad_sequences(_sequences())
    np.testing.assert_array_equal(x, expected)  # NaN after each sample's end, as pad_sequences does
    np.testing.assert_array_equal(lengths, LENGTHS)
    np.testing.assert_array_equal(y, LABELS)
    assert list(ids) == [f"s{i}" for i in range(6)]
    assert data.seq_len == max(LENGTHS) and data.x_train.shape[1] == data.x_val.shape[1] == max(LENGTHS)
    assert data.channel_names == ("0", "1")
    assert data.stats()["train"]["length"]["max"] <= max(LENGTHS)


def test_npz_with_nan_padding_and_npz_with_lengths_load_like_the_table(tmp_path):
    padded, _ = pad_sequences(_sequences())
    junk = np.where(np.isnan(padded), -1.0, padded)  # padding that is not NaN: only `lengths` says where
    np.savez(tmp_path / "nan.npz", X=padded, y=np.array(LABELS))
    np.savez(tmp_path / "lengths.npz", X=junk, y=np.array(LABELS), lengths=np.array(LENGTHS))
    _long_table(_sequences()).to_csv(tmp_path / "table.csv", index=False)

    from_table = _all(_load(tmp_path / "table.csv"))
    for name in ("nan.npz", "lengths.npz"):
        x, y, lengths, ids = _all(_load(tmp_path / name))
        np.testing.assert_array_equal(x, from_table[0], err_msg=name)
        np.testing.assert_array_equal(y, from_table[1])
        np.testing.assert_array_equal(lengths, from_table[2])
        assert list(ids) == [str(i) for i in range(6)]


def test_npz_with_a_ragged_object_array_is_refused_pointing_to_padding_or_lengths(tmp_path):
    ragged = np.empty(len(LENGTHS), dtype=object)
    ragged[:] = _sequences()
    np.savez(tmp_path / "ragged.npz", X=ragged, y=np.array(LABELS))
    message = _assert_refused(tmp_path / "ragged.npz", "X is an object array")
    assert "NaN after each sample's end" in message and "'lengths'" in message


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        (np.array([5, 8, 3, 6, 7]), "lengths must be 6 integers"),
        (np.array([5.0, 8, 3, 6, 7, 4]), "lengths must be 6 integers"),
        (np.array([5, 8, 3, 6, 7, 9]), "lengths has 1 value(s) beyond T, first 9 (sample 5)"),
        (np.array([5, 8, 1, 6, 7, 4]), "1 sample(s) have fewer than 2 real frames, first sample 2 (1)"),
    ],
)
def test_npz_with_bad_lengths_is_refused(tmp_path, lengths, expected):
    padded, _ = pad_sequences(_sequences())
    np.savez(tmp_path / "data.npz", X=padded, y=np.array(LABELS), lengths=lengths)
    _assert_refused(tmp_path / "data.npz", expected)


def test_a_sample_with_one_frame_in_a_table_is_refused_naming_it(tmp_path):
    table = _long_table(_sequences())
    table = table[~((table["sample_id"] == "s3") & (table["frame"] > 0))]
    table.to_csv(tmp_path / "data.csv", index=False)
    _assert_refused(
        tmp_path / "data.csv", "1 sample(s) have fewer than 2 real frames, first sample_id 's3' (1)"
    )


# --- labels and class names ---------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
def test_string_labels_become_classes_in_sorted_order(tmp_path, suffix):
    names = np.array(["Standing", "Running"])[list(LABELS)]
    path = tmp_path / f"data{suffix}"
    if suffix == ".npz":
        np.savez(path, X=pad_sequences(_sequences())[0], y=names)
    else:
        table = _long_table(_sequences(), labels=names)
        table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path, index=False)

    data = _load(path)

    assert data.class_names == ("Running", "Standing")
    _, y, _, _ = _all(data)
    np.testing.assert_array_equal(y, [1, 0, 1, 0, 1, 0])
    assert data.stats()["train"]["per_class"].keys() == {"Running", "Standing"}


def test_npz_class_names_give_the_order_of_string_labels_and_may_list_an_empty_class(tmp_path):
    x = pad_sequences(_sequences())[0]
    np.savez(
        tmp_path / "data.npz",
        X=x,
        y=np.array(["b", "c", "b", "c", "b", "c"]),
        class_names=np.array(["c", "b", "a"]),
    )
    data = _load(tmp_path / "data.npz")
    assert data.class_names == ("c", "b", "a")
    np.testing.assert_array_equal(_all(data)[1], [1, 0, 1, 0, 1, 0])
    assert any("class_names lists class(es) 'a' with no sample" in n for n in data.notes)


def test_integer_labels_from_1_are_refused_naming_class_0_unless_class_names_lists_it(tmp_path):
    x = pad_sequences(_sequences())[0]
    y = np.array(LABELS) + 1
    np.savez(tmp_path / "from1.npz", X=x, y=y)
    message = _assert_refused(tmp_path / "from1.npz", "no sample has label 0 (class_0)")
    assert "found 1..2" in message and "renumber from 0" in message

    np.savez(tmp_path / "listed.npz", X=x, y=y, class_names=np.array(["unused", "good", "bad"]))
    data = _load(tmp_path / "listed.npz")
    assert data.class_names == ("unused", "good", "bad") and data.num_classes == 3
    assert any("'unused' with no sample" in n for n in data.notes)


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        (1.5, "labels must be integers, found 1.5 in sample_id 's2'"),
        (np.nan, "1 of 6 samples have no label (sample_id(s) 's2')"),  # samples, not its 3 rows
    ],
)
def test_labels_that_are_neither_integers_nor_strings_are_refused(tmp_path, label, expected):
    table = _long_table(_sequences(), labels=[float(v) for v in LABELS])
    table.loc[table["sample_id"] == "s2", "label"] = label
    table.to_csv(tmp_path / "data.csv", index=False)
    _assert_refused(tmp_path / "data.csv", expected)


def test_npz_nan_label_is_refused_naming_the_sample(tmp_path):
    y = np.array(LABELS, dtype=np.float64)
    y[4] = np.nan
    np.savez(tmp_path / "data.npz", X=pad_sequences(_sequences())[0], y=y)
    message = _assert_refused(tmp_path / "data.npz", "1 of 6 samples have no label (sample(s) 4)")
    assert "training needs a label on every sample" in message


# --- metadata -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_columns_constant_within_each_sample_are_kept_as_metadata(tmp_path, suffix):
    table = _long_table(_sequences())
    number = table["sample_id"].str[1:].astype(int)
    table["side"] = np.where(number % 2 == 0, "left", "right")
    table["session"] = number * 10
    path = tmp_path / f"data{suffix}"
    table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path, index=False)

    data = _load(path)

    for split in data.splits.values():
        idx = np.array([int(s[1:]) for s in split.sample_ids])
        np.testing.assert_array_equal(split.metadata["side"], np.where(idx % 2 == 0, "left", "right"))
        np.testing.assert_array_equal(split.metadata["session"], idx * 10)
    assert data.channel_names == ("0", "1")  # metadata never becomes a channel
    assert any("kept per-sample column(s) 'side', 'session' as metadata" in n for n in data.notes)


def test_npz_arrays_that_are_not_one_value_per_sample_are_ignored_with_a_note(tmp_path):
    x = pad_sequences(_sequences())[0]
    np.savez(tmp_path / "data.npz", X=x, y=np.array(LABELS), weights=np.ones((3, 3)), camera=np.arange(6))
    data = _load(tmp_path / "data.npz")
    assert "weights" not in data.train.metadata and "camera" in data.train.metadata
    assert any("ignored array(s) 'weights'" in n for n in data.notes)


def test_npz_channel_names_name_the_channels(tmp_path):
    x = pad_sequences(_sequences())[0]
    np.savez(tmp_path / "named.npz", X=x, y=np.array(LABELS), channel_names=np.array(["hip", "knee"]))
    assert _load(tmp_path / "named.npz").channel_names == ("hip", "knee")
    np.savez(tmp_path / "default.npz", X=x, y=np.array(LABELS))
    assert _load(tmp_path / "default.npz").channel_names == ("ch_0", "ch_1")


# --- aeon .ts -------------------------------------------------------------------------------------------


def _ts_file(path: Path, seqs: list[np.ndarray], labels: list[str] | None, equal: bool) -> Path:
    """A .ts file of `seqs`; labels None: `@classLabel false` (recordings to score)."""
    classes = "false" if labels is None else f"true {' '.join(dict.fromkeys(labels))}"
    header = [
        "@problemName tiny",
        "@timeStamps false",
        "@missing false",
        f"@univariate {'true' if seqs[0].shape[1] == 1 else 'false'}",
        f"@dimensions {seqs[0].shape[1]}",
        f"@equalLength {'true' if equal else 'false'}",
        *([f"@seriesLength {len(seqs[0])}"] if equal else []),
        f"@classLabel {classes}",
        "@data",
    ]
    lines = [
        ":".join(",".join(f"{v:.6f}" for v in s[:, j]) for j in range(s.shape[1]))
        + ("" if lab is None else f":{lab}")
        for s, lab in zip(seqs, labels or [None] * len(seqs), strict=True)
    ]
    path.write_text("\n".join(header + lines) + "\n")
    return path


@pytest.mark.parametrize("equal", [True, False])
def test_ts_files_are_read_with_aeon_equal_and_unequal_length(tmp_path, equal):
    import aeon  # noqa: F401  (in the test extra: a missing aeon fails, it never skips)

    seqs = [s[:3] for s in _sequences()] if equal else _sequences()
    labels = ["Walk", "Run", "Walk", "Run", "Walk", "Run"]  # aeon lowercases them; their case comes back
    data = _load(_ts_file(tmp_path / "tiny.ts", seqs, labels, equal))

    x, y, lengths, ids = _all(data)
    np.testing.assert_allclose(x, pad_sequences(seqs)[0], rtol=0, atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(lengths, [len(s) for s in seqs])
    assert data.class_names == ("Walk", "Run")  # the header's order
    np.testing.assert_array_equal(y, [0, 1, 0, 1, 0, 1])
    assert data.channel_names == ("ch_0", "ch_1") and list(ids) == [str(i) for i in range(6)]


def test_broken_ts_file_is_refused_in_one_line(tmp_path):
    import aeon  # noqa: F401  (in the test extra: a missing aeon fails, it never skips)

    path = tmp_path / "broken.ts"
    path.write_text("@classLabel true a b\n@data\n1,2,3:4,5:a\n" + "9," * 5000 + "x:a\n")
    _assert_refused(path, "not a readable .ts file")


def test_ts_file_without_aeon_is_refused_naming_the_extra(tmp_path):
    path = _ts_file(tmp_path / "tiny.ts", _sequences(), ["a", "b"] * 3, equal=False)
    code = (
        "import sys; sys.modules['aeon'] = None\n"
        "from aqtrack.data.files import load_file\n"
        "from aqtrack.errors import DataError\n"
        "try:\n"
        f"    load_file({str(path)!r}, val_fraction=0.5, seed=0)\n"
        "except DataError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert (
        out.stdout.strip()
        == f"{path}: reading .ts files needs aeon, an optional extra: pip install 'aqtrack[ts]'"
    )


# --- files that are not data: one short line, no data echoed --------------------------------------------


def _wide_rows(n_rows: int = 4, n_values: int = 300) -> list[list[str]]:
    rng = np.random.default_rng(0)
    return [[str(k % 2 + 1)] + [f"{v:.8f}" for v in rng.normal(size=n_values)] for k in range(n_rows)]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "ucr.csv",
            "\n".join("\t".join(r) for r in _wide_rows()),
            "is tab-separated, not comma-separated, with no sample_id",
        ),
        ("headerless.csv", "\n".join(",".join(r) for r in _wide_rows()), "has no header row"),
        ("semicolons.csv", "sample_id;frame;label;ch_a\ns1;0;0;1.5\n", "is semicolon-separated, not comma"),
        (
            "huge_cell.csv",
            "sample_id,frame,label,ch_a\n1,0,0," + "7" * 100_000 + "\n1,1,0,1\n",
            "non-numeric values in channel column(s) 'ch_a'",
        ),
        ("binary.csv", bytes(range(256)) * 40, "cannot read file"),
        ("binary.parquet", bytes(range(256)) * 40, "cannot read file"),
        ("binary.npz", b"PK\x03\x04" + bytes(range(256)) * 40, "not a readable .npz archive"),
        (
            "long_header.csv",
            ",".join(f"column_with_a_rather_long_name_{i}" for i in range(400))
            + "\n"
            + ",".join("1" * 400)
            + "\n",
            "missing required column(s) 'sample_id', 'frame', 'label'",
        ),
    ],
)
def test_a_file_that_is_not_a_long_table_is_refused_in_one_short_line_without_its_data(
    tmp_path, name, content, expected
):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    message = _assert_refused(path, expected)
    assert "0.1" not in message and "777777" not in message  # no values from the file
    assert not any(len(word) > 60 for word in message[len(str(path)) :].split())


def test_many_problems_are_reported_together_and_kept_short(tmp_path):
    table = _long_table(_sequences())
    table["label"] = table["label"].astype(float)
    table.loc[table["sample_id"] == "s1", "label"] = -1.0
    table.loc[table["sample_id"] == "s0", "ch_0"] = np.inf
    table.to_csv(tmp_path / "data.csv", index=False)
    message = _assert_refused(tmp_path / "data.csv", "infinite value(s)")
    assert "negative label(s)" in message


# --- recordings to score (read_recordings) -------------------------------------------------------------

RUN = {"channel_names": ("0", "1"), "class_names": ("walk", "run"), "missing": "interpolate"}


def _write(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, index=False) if path.suffix == ".csv" else table.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz", ".ts"])
def test_recordings_to_score_need_no_labels_in_any_format(tmp_path, suffix):
    seqs, path = _sequences(), tmp_path / f"new{suffix}"
    if suffix == ".npz":
        np.savez(path, X=pad_sequences(seqs)[0])
    elif suffix == ".ts":
        pytest.importorskip("aeon")
        _ts_file(path, seqs, None, equal=False)
    else:
        _write(_long_table(seqs).drop(columns="label"), path)

    recordings = read_recordings(path, **RUN)

    assert recordings.y is None and len(recordings) == len(seqs)
    np.testing.assert_allclose(recordings.x, pad_sequences(seqs)[0], atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(recordings.lengths, LENGTHS)
    expected_ids = (
        [f"s{i}" for i in range(6)] if suffix in (".csv", ".parquet") else [str(i) for i in range(6)]
    )
    assert recordings.sample_ids.tolist() == expected_ids


def test_recordings_labels_name_or_index_the_runs_classes(tmp_path):
    by_name = _write(_long_table(_sequences(), labels=["run", "walk"] * 3), tmp_path / "names.csv")
    assert read_recordings(by_name, **RUN).y.tolist() == [1, 0] * 3  # the run's order, not sorted
    by_index = _write(_long_table(_sequences(), labels=(1, 0) * 3), tmp_path / "indices.csv")
    assert read_recordings(by_index, **RUN).y.tolist() == [1, 0] * 3
    np.savez(tmp_path / "named.npz", X=pad_sequences(_sequences())[0], y=[0] * 6, class_names=["run", "x"])
    assert read_recordings(tmp_path / "named.npz", **RUN).y.tolist() == [1] * 6  # the file's names


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (
            ["walk", "jog"] * 3,
            "label(s) 'jog' are not classes of the run ('walk', 'run'); fix them (3 sample(s), first "
            "sample_id 's1') or empty them to score those unlabelled",
        ),
        ((0, 2) * 3, "label 2 (sample_id 's1') is out of range for the run's 2 classes ('walk', 'run')"),
    ],
)
def test_recordings_with_a_label_the_run_does_not_know_are_refused_naming_it(tmp_path, labels, expected):
    path = _write(_long_table(_sequences(), labels=labels), tmp_path / "new.csv")
    with pytest.raises(DataError) as info:
        read_recordings(path, **RUN)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and len(message) < 300, message


def test_recordings_channels_are_put_in_the_runs_order_by_name(tmp_path):
    table = _long_table(_sequences()).rename(columns={"ch_0": "ch_knee", "ch_1": "ch_hip"})
    path = _write(table, tmp_path / "new.csv")  # columns: knee, hip

    recordings = read_recordings(path, **{**RUN, "channel_names": ("hip", "knee")})

    np.testing.assert_array_equal(recordings.x, pad_sequences(_sequences())[0][:, :, ::-1])
    assert "channels put in the run's order" in recordings.notes


@pytest.mark.parametrize(
    ("run_channels", "expected"),
    [
        (("0", "1", "2"), "channel columns do not match the run's; rename or drop them: missing 'ch_2'"),
        (("0", "9"), "missing 'ch_9'; not the run's 'ch_1'"),
        (("ch_0", "ch_1", "ch_2"), "has 2 channel(s), the run was trained on 3"),  # an unnamed run: count
    ],
)
def test_recordings_whose_channels_are_not_the_runs_are_refused_naming_them(tmp_path, run_channels, expected):
    path = _write(_long_table(_sequences()), tmp_path / "new.csv")
    with pytest.raises(DataError, match=re.escape(expected)):
        read_recordings(path, **{**RUN, "channel_names": run_channels, "class_names": ("class_0", "class_1")})


def test_recordings_missing_values_follow_the_runs_policy(tmp_path):
    table = _long_table(_sequences())
    table.loc[(table["sample_id"] == "s1") & (table["frame"] == 3), "ch_0"] = np.nan
    path = _write(table.drop(columns="label"), tmp_path / "new.csv")

    recordings = read_recordings(path, **RUN)
    assert recordings.filled == 1 and recordings.x[1, 3, 0] == pytest.approx(103.0)  # between 102 and 104
    with pytest.raises(DataError, match=r"missing value\(s\).*\(--missing refuse\): fill them in the file"):
        read_recordings(path, **{**RUN, "missing": "refuse"})


def test_recordings_keep_subject_split_and_other_per_sample_columns(tmp_path):
    table = _long_table(_sequences())
    number = table["sample_id"].str[1:].astype(int)
    table["subject"], table["side"] = "p" + (number // 2).astype(str), np.where(number % 2, "R", "L")
    table["split"] = "test"  # means nothing when scoring: kept as it is
    recordings = read_recordings(_write(table, tmp_path / "new.csv"), **RUN)
    assert recordings.subjects.tolist() == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert recordings.metadata["side"].tolist() == ["L", "R"] * 3
    assert recordings.metadata["split"].tolist() == ["test"] * 6


# --- empty per-sample values: unlabelled recordings, unknown subjects ------------------------------------


def _partly_labelled(path: Path, kind: str = "strings") -> Path:
    """The six samples, s1 and s4 without a label: a table whose label is empty on all their rows, or an
    .npz whose y holds '' (class names) or NaN (class indices) for them."""
    names = ["walk", None, "run", "walk", None, "run"]
    if path.suffix == ".npz":
        y = [n or "" for n in names] if kind == "strings" else [0, np.nan, 1, 0, np.nan, 1]
        np.savez(path, X=pad_sequences(_sequences())[0], y=np.array(y))
        return path
    return _write(_long_table(_sequences(), labels=names), path)


@pytest.mark.parametrize(
    ("suffix", "kind"), [(".csv", "strings"), (".parquet", "strings"), (".npz", "strings"), (".npz", "nan")]
)
def test_recordings_whose_label_is_empty_are_unlabelled_and_the_others_keep_theirs(tmp_path, suffix, kind):
    recordings = read_recordings(_partly_labelled(tmp_path / f"new{suffix}", kind), **RUN)

    assert recordings.y.tolist() == [0, UNLABELLED, 1, 0, UNLABELLED, 1]
    assert recordings.labelled.tolist() == [True, False, True, True, False, True]
    assert len(recordings) == 6


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_training_refuses_unlabelled_samples_counting_samples_not_rows(tmp_path, suffix):
    path = _partly_labelled(tmp_path / f"data{suffix}")
    which = "sample_id(s) 's1', 's4'" if suffix == ".csv" else "sample(s) 1, 4"
    message = _assert_refused(path, f"2 of 6 samples have no label ({which}); training needs a label")
    assert "row" not in message and "fill them" not in message


def test_a_label_empty_on_some_rows_of_a_sample_is_refused_naming_it_for_training_and_scoring(tmp_path):
    table = _long_table(_sequences(), labels=["walk", "run"] * 3)
    table.loc[(table["sample_id"] == "s3") & (table["frame"] >= 2), "label"] = None
    path = _write(table, tmp_path / "data.csv")
    expected = "label is empty on some rows of sample_id(s) 's3' and set on others"

    message = _assert_refused(path, expected)
    with pytest.raises(DataError) as info:
        read_recordings(path, **RUN)

    assert "changes within" not in message
    assert expected in str(info.value) and "or on none to score it unlabelled" in str(info.value)


def test_empty_subjects_and_splits_are_refused_for_training_counting_samples_and_kept_empty_to_score(
    tmp_path,
):
    table = _long_table(_sequences())
    number = table["sample_id"].str[1:].astype(int)
    table["subject"] = np.where(number == 2, None, "p" + (number // 2).astype(str))
    table["split"] = np.where(number == 5, None, np.where(number % 2, "val", "train"))
    table["side"] = np.where(number == 0, None, np.where(number % 2, "right", "left"))  # may be empty
    path = _write(table, tmp_path / "data.csv")

    message = _assert_refused(path, "subject is empty for 1 of 6 samples (sample_id(s) 's2')")
    recordings = read_recordings(path, **RUN)

    assert "split is empty for 1 of 6 samples (sample_id(s) 's5')" in message
    assert "row" not in message and "fill them" not in message
    assert recordings.subjects.tolist() == ["p0", "p0", "", "p1", "p2", "p2"]
    assert recordings.metadata["split"].tolist() == ["train", "val", "train", "val", "train", ""]
    # Not 'nan', and the others whole (pandas 3 cuts strings to one character beside an NA).
    assert recordings.metadata["side"].tolist() == ["", "right", "left", "right", "left", "right"]


def test_a_per_sample_column_empty_on_some_rows_of_a_sample_is_refused_as_such(tmp_path):
    table = _long_table(_sequences()).assign(side="L")
    table.loc[(table["sample_id"] == "s2") & (table["frame"] == 1), "side"] = None
    message = _assert_refused(_write(table, tmp_path / "data.csv"), "column 'side' is empty on some rows")
    assert "sample_id(s) 's2'" in message and "ch_side" not in message  # not a channel that changes

    table = _long_table(_sequences()).assign(subject="p1")
    table.loc[(table["sample_id"] == "s4") & (table["frame"] > 2), "subject"] = None
    with pytest.raises(DataError, match=re.escape("subject is empty on some rows of sample_id(s) 's4' and")):
        read_recordings(_write(table, tmp_path / "new.csv"), **RUN)


@pytest.mark.parametrize(("suffix", "where"), [(".csv", "first on line 9"), (".parquet", "first at row 7")])
def test_an_empty_frame_or_sample_id_is_refused_naming_its_sample_or_where_it_is(tmp_path, suffix, where):
    table = _long_table(_sequences())
    table["frame"] = table["frame"].astype(float)
    table.loc[[3, 4], "frame"] = np.nan  # rows of s0 (5 frames: rows 0-4)
    table.loc[7, "sample_id"] = None  # a row of s1: line 9 of the CSV, under its header

    message = _assert_refused(_write(table, tmp_path / f"data{suffix}"), "'frame' is empty on 2 row(s) of")

    assert "sample_id(s) 's0'" in message and "give every row its frame number" in message
    assert f"'sample_id' is empty on 1 row(s), {where}" in message
