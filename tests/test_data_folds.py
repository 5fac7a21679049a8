"""Cross-validation folds (`--folds K|loso`, `--fold i`): every sample in the test split of exactly one
fold, no subject on two sides, validation carved from the other folds, the same folds for the same seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aqtrack.config import Config, DataConfig
from aqtrack.data.dataset import fold_plan, load_configured
from aqtrack.errors import ConfigError, DataError

TINY = {"n_train": 48, "n_val": 16, "n_test": 16}  # 80 synthetic sequences of 9 subjects


def _npz(tmp_path: Path, y, **arrays) -> Path:
    """X[i, 0, 0] == i, so every sample can be traced into its split."""
    y = np.asarray(y)
    x = np.zeros((len(y), 4, 2), dtype=np.float32)
    x[:, 0, 0] = np.arange(len(y))
    path = tmp_path / "data.npz"
    np.savez(path, X=x, y=y, **arrays)
    return path


def _subjects(n_subjects: int, per_subject: int = 8, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.permutation(np.arange(per_subject) % classes) for _ in range(n_subjects)])
    return y, np.repeat([f"p{i:02d}" for i in range(n_subjects)], per_subject)


def test_synthetic_folds_use_every_sequence_once_and_keep_subjects_whole():
    plan = fold_plan(DataConfig(**TINY, folds="3"))

    assert plan.k == 3 and plan.method == "grouped"
    assert len(plan.pool.samples) == 80  # n_train + n_val + n_test
    assert sorted(np.concatenate(plan.tests).tolist()) == list(range(80))
    subjects = plan.pool.samples.subjects
    owner = {}
    for fold, test in enumerate(plan.tests, 1):
        for subject in set(subjects[test]):
            assert owner.setdefault(subject, fold) == fold  # a subject's sequences are all in one fold


@pytest.mark.parametrize("fold", [1, 2, 3])
def test_a_fold_tests_on_its_own_samples_and_validates_on_other_subjects(fold):
    cfg = DataConfig(**TINY, folds="3", fold=fold)
    data = load_configured(cfg)
    plan = fold_plan(cfg)

    np.testing.assert_array_equal(data.test.sample_ids, plan.pool.samples.sample_ids[plan.tests[fold - 1]])
    ids = [set(s.sample_ids) for s in data.splits.values()]
    assert sum(map(len, ids)) == 80 and len(set.union(*ids)) == 80  # a partition of every sample
    subjects = [set(s.subjects) for s in data.splits.values()]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    assert data.split_info["method"] == "cv-grouped"
    assert (data.split_info["folds"], data.split_info["fold"]) == (3, fold)
    assert data.notes[0].startswith(f"cross-validation fold {fold} of 3 (grouped stratified k-fold")


def test_folds_are_the_same_for_a_seed_and_change_with_it():
    a, b = fold_plan(DataConfig(**TINY, folds="3")), fold_plan(DataConfig(**TINY, folds="3"))
    other = fold_plan(DataConfig(**TINY, folds="3", data_seed=1))
    assert all(np.array_equal(x, y) for x, y in zip(a.tests, b.tests, strict=True))
    assert not np.array_equal(a.fold_of(), other.fold_of())


def test_loso_makes_one_fold_per_subject_in_sorted_order(tmp_path):
    y, subjects = _subjects(5)
    plan = fold_plan(DataConfig(data=str(_npz(tmp_path, y, subject=subjects)), folds="loso"))

    assert plan.k == 5 and plan.method == "loso"
    assert [set(subjects[t]) for t in plan.tests] == [{f"p{i:02d}"} for i in range(5)]


def test_without_subjects_folds_are_stratified_by_class(tmp_path):
    path = _npz(tmp_path, np.repeat([0, 1, 2, 3], 10))
    plan = fold_plan(DataConfig(data=str(path), folds="5"))

    assert plan.method == "stratified"
    for test in plan.tests:
        assert np.bincount(plan.pool.samples.y[test], minlength=4).tolist() == [2, 2, 2, 2]
    data = load_configured(DataConfig(data=str(path), folds="5", fold=2))
    assert "not grouped by subject" in data.notes[0]


def test_a_files_own_split_is_not_used_and_that_is_noted(tmp_path, caplog):
    y, subjects = _subjects(6)
    split = np.where(np.arange(len(y)) < 40, "train", "test")
    path = _npz(tmp_path, y, subject=subjects, split=split)

    data = load_configured(DataConfig(data=str(path), folds="3", fold=1))

    assert sum(len(s) for s in data.splits.values()) == len(y)
    assert any("'split' is not used" in note for note in data.notes)
    assert "'split' is not used" in caplog.text


@pytest.mark.parametrize(
    ("folds", "message"),
    [
        ("loso", "--folds loso leaves one subject out, and the data has no subjects"),
        ("50", "--folds 50: the data has only 40 samples; use --folds 40 or fewer"),
    ],
)
def test_folds_the_data_cannot_make_are_one_line_naming_the_file(tmp_path, folds, message):
    path = _npz(tmp_path, np.repeat([0, 1, 2, 3], 10))
    with pytest.raises(DataError, match=message) as info:
        fold_plan(DataConfig(data=str(path), folds=folds))
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_more_folds_than_subjects_points_to_loso(tmp_path):
    y, subjects = _subjects(4)
    with pytest.raises(DataError, match=r"only 4 subjects; use --folds 4 or fewer \(or --folds loso\)"):
        fold_plan(DataConfig(data=str(_npz(tmp_path, y, subject=subjects)), folds="5"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"folds": "1"}, "--folds must be '', a whole number >= 2 or loso"),
        ({"folds": "five"}, "--folds must be"),
        ({"fold": 2}, "--fold must be 0 without --folds"),
        ({"folds": "3", "fold": 4}, r"--fold must be <= --folds \(3\)"),
        ({"folds": "3", "fold": -1}, "--fold must be >= 0"),
    ],
)
def test_fold_settings_are_checked_naming_the_flag(settings, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(settings)


def test_folds_without_a_fold_to_train_points_to_aqtrack_cv():
    with pytest.raises(ConfigError, match=r"--folds 3 needs --fold N.*`aqtrack cv` trains every fold"):
        load_configured(DataConfig(**TINY, folds="3"))


def test_a_fold_past_the_last_subject_of_loso_is_refused(tmp_path):
    y, subjects = _subjects(3)
    path = _npz(tmp_path, y, subject=subjects)
    with pytest.raises(DataError, match=r"--fold 4: the data makes 3 folds; pick one of 1\.\.3"):
        load_configured(DataConfig(data=str(path), folds="loso", fold=4))
