"""aqtrack.data's contract: Split and ActionQualityData (with the old x_train/... names), stats() keys,
pad_sequences and lengths_of."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aqtrack.data.dataset import ActionQualityData, Split, lengths_of, pad_sequences


def _split(lengths, y, subjects=None, t_max=None) -> Split:
    seqs = [np.full((n, 2), float(i)) for i, n in enumerate(lengths)]
    x, lengths = pad_sequences(seqs)
    if t_max is not None:
        x = np.concatenate([x, np.full((len(x), t_max - x.shape[1], 2), np.nan, np.float32)], axis=1)
    return Split(
        x=x,
        y=np.asarray(y, dtype=np.int64),
        lengths=lengths,
        sample_ids=np.array([f"id{i}" for i in range(len(y))]),
        subjects=None if subjects is None else np.asarray(subjects),
        metadata={"side": np.array(["l", "r"] * (len(y) // 2))},
    )


def test_pad_sequences_pads_with_nan_after_each_sequence_and_returns_lengths():
    x, lengths = pad_sequences([np.ones((3, 2)), np.zeros((5, 2), dtype=np.float64)])
    assert x.shape == (2, 5, 2) and x.dtype == np.float32
    assert lengths.dtype == np.int64 and lengths.tolist() == [3, 5]
    assert np.isnan(x[0, 3:]).all() and (x[0, :3] == 1).all() and (x[1] == 0).all()


@pytest.mark.parametrize("seqs", [[], [np.ones(3)], [np.ones((3, 2)), np.ones((3, 4))]])
def test_pad_sequences_refuses_what_it_cannot_pad(seqs):
    with pytest.raises(ValueError, match="pad_sequences"):
        pad_sequences(seqs)


def test_lengths_of_counts_frames_up_to_the_last_with_any_value():
    x = np.full((4, 6, 2), np.nan)
    x[0, :6] = 1.0  # full length
    x[1, :2] = 1.0  # padded after 2
    x[2, 0, 0] = x[2, 4, 1] = 1.0  # NaN inside (missing, not padding): real up to frame 4
    assert lengths_of(x).tolist() == [6, 2, 5, 0]  # sample 3: NaN throughout
    assert lengths_of(x).dtype == np.int64


def test_lengths_of_inverts_pad_sequences():
    seqs = [np.random.default_rng(i).normal(size=(n, 3)) for i, n in enumerate([4, 9, 2, 7])]
    x, lengths = pad_sequences(seqs)
    np.testing.assert_array_equal(lengths_of(x), lengths)


def test_split_refuses_per_sample_arrays_of_the_wrong_length():
    good = _split([3, 4], [0, 1])
    with pytest.raises(ValueError, match="y has 3"):
        Split(good.x, np.array([0, 1, 1]), good.lengths, good.sample_ids, None)


def test_split_select_keeps_every_per_sample_array_aligned():
    split = _split([2, 3, 4, 5], [0, 1, 0, 1], subjects=["a", "a", "b", "b"])
    part = split.select(np.array([3, 1]))
    assert part.x[:, 0, 0].tolist() == [3.0, 1.0]
    assert part.lengths.tolist() == [5, 3] and part.y.tolist() == [1, 1]
    assert part.sample_ids.tolist() == ["id3", "id1"] and part.subjects.tolist() == ["b", "a"]
    assert part.metadata["side"].tolist() == ["r", "r"] and len(part) == 2
    assert part.x.flags.c_contiguous


def _data(test: Split | None) -> ActionQualityData:
    return ActionQualityData(
        train=_split([3, 5, 4, 2], [0, 1, 0, 1], subjects=["b", "a", "b", "a"], t_max=6),
        val=_split([6, 2], [1, 0], subjects=["c", "c"]),
        test=test,
        class_names=("good", "bad"),
        channel_names=("hip", "knee"),
        source="file.csv",
        filled_values=7,
        notes=("a note",),
        missing_policy="interpolate",
        split_info={"method": "grouped-stratified", "test_fraction": 0.2, "val_fraction": 0.2, "seed": 0},
    )


def test_the_old_array_names_and_shapes_still_work():
    data = _data(test=None)
    assert data.x_train is data.train.x and data.y_val is data.val.y
    assert data.y_train.tolist() == [0, 1, 0, 1] and data.x_val.shape == (2, 6, 2)
    assert (data.num_classes, data.channels, data.seq_len) == (2, 2, 6)
    assert list(data.splits) == ["train", "val"]


def test_stats_keep_the_old_keys_and_add_lengths_subjects_missing_notes_and_split():
    stats = _data(test=_split([2, 4], [0, 1], subjects=["d", "e"])).stats()
    json.dumps(stats)  # JSON-ready: plain types only
    assert {k: stats[k] for k in ("source", "num_classes", "class_names", "seq_len", "channels")} == {
        "source": "file.csv",
        "num_classes": 2,
        "class_names": ["good", "bad"],
        "seq_len": 6,
        "channels": 2,
    }
    assert stats["channel_names"] == ["hip", "knee"]
    assert stats["train"] == {
        "total": 4,
        "per_class": {"good": 2, "bad": 2},
        "length": {"min": 2, "median": 3.5, "max": 5},
        "subjects": ["a", "b"],
    }
    assert stats["val"]["subjects"] == ["c"] and stats["test"]["total"] == 2
    assert stats["missing"] == {"policy": "interpolate", "filled_values": 7}
    assert stats["notes"] == ["a note"]
    assert stats["split"]["method"] == "grouped-stratified"


def test_stats_leave_out_test_and_subjects_when_there_are_none():
    data = _data(test=None)
    plain = _split([3, 4], [0, 1])
    no_subjects = ActionQualityData(
        plain, plain, None, class_names=("a", "b"), channel_names=("x", "y"), source="s"
    )
    assert "test" not in data.stats()
    assert "subjects" not in no_subjects.stats()["train"]
    assert no_subjects.stats()["missing"] == {"policy": "interpolate", "filled_values": 0}
