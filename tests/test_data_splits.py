"""aqtrack.data.splits through load_file: test split first, then validation; stratified by class; grouped
by subject so no subject is in two splits; a file's own split used as given; every decision noted."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aqtrack.data.files import load_file
from aqtrack.errors import DataError

T, C = 4, 2


def _npz(tmp_path: Path, y, **arrays) -> Path:
    """X[i, 0, 0] == i so every sample can be traced into its split."""
    y = np.asarray(y)
    x = np.zeros((len(y), T, C), dtype=np.float32)
    x[:, 0, 0] = np.arange(len(y))
    path = tmp_path / "data.npz"
    np.savez(path, X=x, y=y, **arrays)
    return path


def _load(path: Path, **settings):
    return load_file(path, **{"val_fraction": 0.25, "test_fraction": 0.2, "seed": 0, **settings})


def _ids(split) -> set[int]:
    return set(split.x[:, 0, 0].astype(int).tolist())


def _subjects_data(n_subjects=10, per_subject=8, classes=4, seed=0):
    """Every subject records every class (per_subject / classes times each), in shuffled order."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([rng.permutation(np.arange(per_subject) % classes) for _ in range(n_subjects)])
    subjects = np.repeat([f"p{i:02d}" for i in range(n_subjects)], per_subject)
    return y, subjects


# --- without subjects: stratified ---------------------------------------------------------------------


def test_without_a_split_test_comes_first_then_val_from_the_rest_stratified(tmp_path):
    y = np.repeat([0, 1, 2, 3], 25)
    data = _load(_npz(tmp_path, y), test_fraction=0.2, val_fraction=0.25)

    assert (len(data.train), len(data.val), len(data.test)) == (60, 20, 20)
    for split in data.splits.values():
        counts = np.bincount(split.y, minlength=4)
        assert counts.max() - counts.min() <= 1, counts
    ids = [_ids(s) for s in data.splits.values()]
    assert set.union(*ids) == set(range(100)) and sum(map(len, ids)) == 100
    assert data.stats()["split"] == {
        "method": "stratified",
        "test_fraction": 0.2,
        "val_fraction": 0.25,
        "seed": 0,
    }
    assert data.notes[0].startswith("no 'split' given: made a stratified split")


def test_split_is_deterministic_for_a_seed_and_differs_for_another(tmp_path):
    path = _npz(tmp_path, np.repeat([0, 1], 20))
    a, b, c = _load(path, seed=3), _load(path, seed=3), _load(path, seed=4)
    assert [_ids(s) for s in a.splits.values()] == [_ids(s) for s in b.splits.values()]
    assert _ids(a.test) != _ids(c.test)


def test_test_fraction_zero_makes_no_test_split(tmp_path):
    data = _load(_npz(tmp_path, np.repeat([0, 1], 10)), test_fraction=0.0)
    assert data.test is None and "test" not in data.stats()
    assert len(data.train) + len(data.val) == 20


def test_classes_too_small_for_a_test_split_stay_out_of_it_with_a_note(tmp_path):
    data = _load(_npz(tmp_path, [0] * 10 + [1] * 10 + [2] * 2), test_fraction=0.2)
    assert 2 not in data.test.y and 2 in data.train.y
    assert any("'class_2' have fewer than 3 samples: none of them in test" in n for n in data.notes)


def test_too_few_samples_for_any_test_split_skips_it_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="aqtrack.data"):
        data = _load(_npz(tmp_path, [0, 0, 1, 1]), test_fraction=0.2)
    assert data.test is None and (len(data.train), len(data.val)) == (2, 2)
    assert any(n.startswith("no test split made (--test-fraction 0.2): too few samples") for n in data.notes)
    assert any("no test split made" in r.getMessage() for r in caplog.records)


# --- subjects: grouped and stratified --------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_subjects_make_every_split_grouped_no_subject_in_two_splits(tmp_path, seed):
    y, subjects = _subjects_data()
    data = _load(_npz(tmp_path, y, subject=subjects), seed=seed)

    sets = {name: set(split.subjects.tolist()) for name, split in data.splits.items()}
    assert set(sets) == {"train", "val", "test"}
    assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
    assert set.union(*sets.values()) == set(subjects.tolist())
    for name, split in data.splits.items():
        assert set(split.y.tolist()) == {0, 1, 2, 3}, name  # every subject records every class
        np.testing.assert_array_equal(split.subjects, subjects[split.x[:, 0, 0].astype(int)])
    stats = data.stats()
    assert stats["split"]["method"] == "grouped-stratified"
    assert stats["test"]["subjects"] == sorted(sets["test"])
    assert len(sets["test"]) == 2  # 1 of round(1 / 0.2) = 5 folds of 10 subjects


def test_grouped_split_is_deterministic_for_a_seed(tmp_path):
    y, subjects = _subjects_data()
    path = _npz(tmp_path, y, subject=subjects)
    a, b = _load(path, seed=5), _load(path, seed=5)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a.splits[name].sample_ids, b.splits[name].sample_ids)


def test_subject_column_of_a_table_groups_the_splits(tmp_path):
    y, subjects = _subjects_data(n_subjects=6, per_subject=4, classes=2)
    rows = [
        {"sample_id": i, "frame": f, "label": int(y[i]), "subject": subjects[i], "ch_x": float(i)}
        for i in range(len(y))
        for f in range(3)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "data.csv", index=False)
    data = _load(tmp_path / "data.csv")
    seen = [set(s.subjects.tolist()) for s in data.splits.values()]
    assert sum(map(len, seen)) == len(set.union(*seen)) == 6


def test_with_two_subjects_there_is_no_test_split_and_val_is_one_subject(tmp_path):
    data = _load(_npz(tmp_path, [0, 0, 1, 1], subject=np.array(["a", "b", "a", "b"])))
    assert data.test is None
    assert {tuple(data.train.subjects), tuple(data.val.subjects)} == {("a", "a"), ("b", "b")}
    assert any("no test split made" in n and "too few subjects" in n for n in data.notes)


def test_a_class_left_without_a_training_sample_is_refused_naming_it(tmp_path):
    # Two subjects: whichever is held out for validation takes the only samples of its own class.
    path = _npz(tmp_path, [0, 1, 1, 0, 2, 2], subject=np.array(["a", "a", "a", "b", "b", "b"]))
    with pytest.raises(DataError, match=r"class\(es\) 'class_[12]' have no training sample after the split"):
        _load(path)


# --- the file's own split --------------------------------------------------------------------------------


def test_a_split_with_test_gives_a_test_split_used_as_given(tmp_path):
    split = np.array(["train", "val", "test", "train"] * 5)
    data = _load(_npz(tmp_path, np.tile([0, 1], 10), split=split))
    for name in ("train", "val", "test"):
        assert _ids(data.splits[name]) == set(np.flatnonzero(split == name).tolist())
    assert data.stats()["split"] == {"method": "file"}


def test_a_split_without_test_has_no_test_split(tmp_path):
    data = _load(_npz(tmp_path, np.tile([0, 0, 1, 1], 2), split=np.array(["train", "val"] * 4)))
    assert data.test is None


def test_a_split_without_val_takes_validation_from_train_and_says_so(tmp_path):
    split = np.array(["train"] * 16 + ["test"] * 4)
    data = _load(_npz(tmp_path, np.tile([0, 1], 10), split=split), val_fraction=0.25)
    assert _ids(data.test) == set(range(16, 20))
    assert _ids(data.train) | _ids(data.val) == set(range(16)) and len(data.val) == 4
    assert data.stats()["split"] == {
        "method": "file",
        "val_from_train": "stratified",
        "val_fraction": 0.25,
        "seed": 0,
    }
    assert any("the 'split' marks no sample 'val': took 4 of its 'train' samples" in n for n in data.notes)


def test_a_split_without_val_and_too_little_train_is_refused(tmp_path):
    path = _npz(tmp_path, [0, 0, 1, 1], split=np.array(["train", "test", "train", "test"]))
    with pytest.raises(DataError, match="marks no sample 'val' and its 'train' samples are too few"):
        _load(path)


def test_a_split_that_puts_a_subject_on_two_sides_warns_naming_it_but_loads(tmp_path, caplog):
    split = np.array(["train", "train", "val", "val", "test", "test"])
    subjects = np.array(["a", "a", "b", "c", "c", "d"])  # c is in val and test
    with caplog.at_level(logging.WARNING, logger="aqtrack.data"):
        data = _load(_npz(tmp_path, [0, 1] * 3, split=split, subject=subjects))
    assert len(data.test) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 subject(s) in more than one split ('c')" in w for w in warnings)
    assert any("1 subject(s) in more than one split ('c')" in n for n in data.notes)


def test_a_split_leaving_a_class_out_of_train_is_refused_naming_it(tmp_path):
    path = _npz(tmp_path, [0, 1, 2, 0, 1, 2], split=np.array(["train", "train", "val", "val", "val", "test"]))
    with pytest.raises(DataError) as info:
        _load(path)
    assert (
        "class(es) 'class_2' have no training sample after the split; mark some of its samples 'train'"
        in str(info.value)
    )


def test_metadata_and_subjects_follow_their_samples_into_the_splits(tmp_path):
    y, subjects = _subjects_data(n_subjects=5, per_subject=4, classes=2)
    side = np.where(np.arange(len(y)) % 3 == 0, "left", "right")
    data = _load(
        _npz(tmp_path, y, subject=subjects, side=side, session=np.arange(len(y)) * 10), test_fraction=0
    )
    for split in data.splits.values():
        idx = split.x[:, 0, 0].astype(int)
        np.testing.assert_array_equal(split.metadata["side"], side[idx])
        np.testing.assert_array_equal(split.metadata["session"], idx * 10)
        np.testing.assert_array_equal(split.sample_ids, idx.astype(str))
