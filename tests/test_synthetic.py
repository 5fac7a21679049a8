"""aqtrack.data.synthetic: the embedded default dataset is seeded, well-formed, balanced, made of subjects
that no two splits share, and learnable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aqtrack.config import Config
from aqtrack.data.dataset import load_data
from aqtrack.data.synthetic import CHANNELS, CLASS_NAMES, SEQ_LEN, generate
from aqtrack.training.loop import build_trainer, evaluate, train_one_epoch

ARRAYS = ("x_train", "y_train", "x_val", "y_val")


def test_generate_is_deterministic_for_a_seed() -> None:
    a, b = generate(40, 20, seed=3, n_test=20), generate(40, 20, seed=3, n_test=20)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for split in ("train", "val", "test"):
        for field in ("x", "y", "sample_ids", "subjects"):
            np.testing.assert_array_equal(getattr(a.splits[split], field), getattr(b.splits[split], field))


def test_generate_differs_for_another_seed() -> None:
    a, b = generate(40, 20, seed=3), generate(40, 20, seed=4)
    assert not np.array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_val, b.x_val)


def test_load_data_synthetic_is_generate() -> None:
    data = load_data("synthetic", n_train=12, n_val=8, val_fraction=0.5, seed=5)
    np.testing.assert_array_equal(data.x_train, generate(12, 8, seed=5).x_train)


def test_load_data_synthetic_passes_n_test_and_records_the_missing_policy() -> None:
    data = load_data("synthetic", n_train=12, n_val=8, n_test=4, val_fraction=0.5, seed=5, missing="refuse")
    np.testing.assert_array_equal(data.test.x, generate(12, 8, seed=5, n_test=4).test.x)
    stats = data.stats()
    assert stats["missing"] == {"policy": "refuse", "filled_values": 0}
    assert stats["split"] == {
        "method": "synthetic",
        "n_train": 12,
        "n_val": 8,
        "n_test": 4,
        "sequences_per_subject": 10,
        "seed": 5,
    }
    assert load_data("synthetic", n_train=12, n_val=8, n_test=0, val_fraction=0.5, seed=5).test is None


def test_a_split_does_not_change_with_the_sizes_of_the_others() -> None:
    small, large = generate(40, 20, seed=2, n_test=0), generate(40, 60, seed=2, n_test=100)
    np.testing.assert_array_equal(small.x_train, large.x_train)
    np.testing.assert_array_equal(small.train.subjects, large.train.subjects)
    np.testing.assert_array_equal(small.x_val, generate(40, 20, seed=2, n_test=100).x_val)


def test_subjects_record_about_ten_sequences_each_and_no_subject_is_in_two_splits() -> None:
    data = generate(400, 100, seed=0, n_test=100)
    seen = {}
    for name, split in data.splits.items():
        subjects, counts = np.unique(split.subjects, return_counts=True)
        assert set(counts.tolist()) == {10}, name
        seen[name] = set(subjects.tolist())
        assert list(split.sample_ids[:2]) == [f"{name}-0", f"{name}-1"]
        assert split.lengths.tolist() == [SEQ_LEN] * len(split)
    assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])
    assert data.stats()["test"]["subjects"] == sorted(seen["test"])


def test_a_subject_s_sequences_resemble_each_other_more_than_other_subjects_sequences() -> None:
    # Subject traits (posture offsets, depth, noise) are shared: per-channel means cluster by subject. With
    # independent sequences the between-subject variance of those means would be ~1/10 of the within.
    split = generate(400, 4, seed=0).train
    means = split.x.mean(axis=1)  # [N, C]
    groups = [means[split.subjects == s] for s in np.unique(split.subjects)]
    within = np.mean([g.var(axis=0) for g in groups], axis=0)
    between = np.var([g.mean(axis=0) for g in groups], axis=0)
    assert (between / within).mean() > 1.0, between / within


def test_arrays_have_the_documented_shapes_dtypes_and_are_finite() -> None:
    data = generate(40, 20, seed=0)
    assert data.x_train.shape == (40, SEQ_LEN, len(CHANNELS)) == (40, 100, 8)
    assert data.x_val.shape == (20, 100, 8)
    assert data.y_train.shape == (40,) and data.y_val.shape == (20,)
    assert data.x_train.dtype == data.x_val.dtype == np.float32
    assert data.y_train.dtype == data.y_val.dtype == np.int64
    assert np.isfinite(data.x_train).all() and np.isfinite(data.x_val).all()
    assert (data.seq_len, data.channels, data.source) == (100, 8, "synthetic")


@pytest.mark.parametrize(("n_train", "n_val"), [(40, 20), (42, 21), (7, 3)])
def test_classes_are_balanced_within_each_split(n_train: int, n_val: int) -> None:
    data = generate(n_train, n_val, seed=1, n_test=n_val + 1)
    for y in (data.y_train, data.y_val, data.test.y):
        counts = np.bincount(y, minlength=len(CLASS_NAMES))
        assert len(counts) == len(CLASS_NAMES)  # no label outside the class names
        assert counts.max() - counts.min() <= 1, counts


def test_four_class_names_with_good_form_first() -> None:
    data = generate(8, 4, seed=0)
    assert len(data.class_names) == data.num_classes == 4
    assert data.class_names[0] == "good_form"
    assert len(set(data.class_names)) == 4


def test_default_model_learns_the_data_over_epochs_but_not_in_the_first() -> None:
    # The default data is 800 + 200; 400 training sequences keep this under ~5 s on 2 CPU cores and show
    # the same picture (epoch 1 ~0.5-0.6, epoch 12 ~0.75-0.8 for seeds 0 and 1).
    cfg = Config.from_dict({"n_train": 400})
    data = generate(cfg.data.n_train, cfg.data.n_val, seed=cfg.data.data_seed)
    trainer = build_trainer(cfg, data, torch.device("cpu"))

    accuracies = []
    for _ in range(12):
        train_one_epoch(trainer)
        accuracies.append(
            evaluate(trainer.model, trainer.val_loader, trainer.device).metrics("val")["val_acc"]
        )

    assert accuracies[0] < 0.85, f"trivial: the first epoch already reaches {accuracies[0]:.3f}"
    assert accuracies[-1] > 0.6, accuracies
    assert accuracies[-1] >= accuracies[0] + 0.1, accuracies
