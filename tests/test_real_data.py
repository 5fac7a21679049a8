"""Real recordings in, honest numbers out, end to end on a real store: subject-wise splits, a held-out
test split evaluated once, balanced accuracy and macro F1 every epoch, --select-by, --class-weight, and
a file of variable-length recordings with lost frames, string labels, subjects and metadata."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.utils.class_weight import compute_class_weight

import aqtrack
from aqtrack import names
from aqtrack.config import Config
from aqtrack.data.dataset import load_configured
from aqtrack.errors import ResumeError
from aqtrack.names import (
    BEST,
    LAST,
    METRIC_KEYS,
    NETWORK_MODEL,
    PER_CLASS_ARTIFACT,
    SVM_TEST_ACC,
    TAG_BEST_EPOCH,
    TEST_CONFUSION_ARTIFACT,
    TEST_KEYS,
    VAL_BALANCED_ACC,
    VAL_F1_MACRO,
)
from aqtrack.training.loop import class_weights
from aqtrack.training.model import ModelSpec, build_model, embed


def history(run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, key)}


def artifact_json(run_id: str, path: str, tmp: Path) -> dict:
    return json.loads(Path(MlflowClient().download_artifacts(run_id, path, str(tmp))).read_text())


def network_of(run_id: str, name: str, tmp: Path):
    state = torch.load(
        MlflowClient().download_artifacts(run_id, f"checkpoints/{name}", str(tmp / name)), weights_only=True
    )
    network = build_model(ModelSpec(**state["model_spec"]))
    network.load_state_dict(state["model"])
    return network.eval(), state


def test_the_default_data_is_split_by_subject_and_the_test_split_is_evaluated_once(tiny_full, tmp_path):
    result = aqtrack.train(**tiny_full)  # the SVM stage on: it scores the test split once too
    run_id, client = result.run_id, MlflowClient()

    stats = artifact_json(run_id, names.DATASET_STATS_ARTIFACT, tmp_path)
    subjects = {split: set(stats[split]["subjects"]) for split in ("train", "val", "test")}
    assert all(subjects.values())
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"])
    assert not subjects["val"] & subjects["test"]
    assert stats["test"]["total"] == 32 and stats["test"]["length"] == {
        "min": 100,
        "median": 100.0,
        "max": 100,
    }
    # once, at the final step, from the best checkpoint (chosen on validation)
    for key in TEST_KEYS:
        assert list(history(run_id, key)) == [4], key
    network, best = network_of(run_id, BEST, tmp_path)
    data = load_configured(Config.from_dict(tiny_full).data)
    predicted = embed(network, data.test.x, data.test.lengths)[1].argmax(axis=1)
    assert history(run_id, "test_acc")[4] == pytest.approx(float((predicted == data.test.y).mean()))
    assert history(run_id, "test_balanced_acc")[4] == pytest.approx(
        balanced_accuracy_score(data.test.y, predicted)
    )
    assert result.test_scores["test_f1_macro"] == pytest.approx(
        f1_score(data.test.y, predicted, average="macro", zero_division=0)
    )
    table = artifact_json(run_id, PER_CLASS_ARTIFACT, tmp_path)
    assert table["columns"] == ["class", "precision", "recall", "f1", "support"]
    assert [row[0] for row in table["data"]] == list(data.class_names)
    assert sum(row[4] for row in table["data"]) == 32
    plots = {f.path for f in client.list_artifacts(run_id, "plots")}
    assert TEST_CONFUSION_ARTIFACT in plots
    assert list(history(run_id, SVM_TEST_ACC)) == [4]
    contexts = {
        (d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"])
        for d in client.get_run(run_id).inputs.dataset_inputs
    }
    assert contexts == {
        ("synthetic-train", "training"),
        ("synthetic-val", "validation"),
        ("synthetic-test", "testing"),
    }
    assert best["class_names"] == list(data.class_names)


def test_balanced_accuracy_and_macro_f1_are_logged_every_epoch_as_sklearn_computes_them(tiny, tmp_path):
    result = aqtrack.train(**{**tiny, "svm": False})
    for key in METRIC_KEYS:
        assert list(history(result.run_id, key)) == [1, 2, 3, 4], key
    network, _ = network_of(result.run_id, LAST, tmp_path)  # the network after epoch 4
    data = load_configured(Config.from_dict(tiny).data)
    predicted = embed(network, data.val.x, data.val.lengths)[1].argmax(axis=1)
    assert history(result.run_id, VAL_BALANCED_ACC)[4] == pytest.approx(
        balanced_accuracy_score(data.val.y, predicted)
    )
    assert history(result.run_id, VAL_F1_MACRO)[4] == pytest.approx(
        f1_score(data.val.y, predicted, average="macro", zero_division=0)
    )


def test_select_by_chooses_the_best_epoch_by_that_validation_metric(tiny, tmp_path):
    result = aqtrack.train(
        **{**tiny, "rounds": 1, "epochs_per_round": 6, "select_by": "val_f1_macro", "log_model": True}
    )
    f1 = history(result.run_id, VAL_F1_MACRO)
    expected = min(e for e, v in f1.items() if v == max(f1.values()))
    assert result.best_epoch == expected and result.best_score == f1[expected]
    _, best = network_of(result.run_id, BEST, tmp_path)
    assert best["epoch"] == expected
    (model,) = [
        m
        for m in MlflowClient().search_logged_models(
            [MlflowClient().get_run(result.run_id).info.experiment_id]
        )
        if m.name == NETWORK_MODEL
    ]
    assert model.tags[TAG_BEST_EPOCH] == str(expected)
    assert aqtrack.runs_table().set_index("run_id").loc[result.run_id, "best_epoch"] == expected


def imbalanced_file(tmp_path: Path) -> Path:
    """80 / 10 / 10 % of three classes."""
    rng = np.random.default_rng(0)
    y = np.array([0] * 96 + [1] * 12 + [2] * 12)
    x = rng.normal(size=(len(y), 30, 3)).astype(np.float32) + y[:, None, None]
    path = tmp_path / "imbalanced.npz"
    np.savez(path, X=x, y=y)
    return path


def test_class_weight_balanced_weights_the_loss_as_scikit_learn_balances_classes(tiny, tmp_path):
    path = imbalanced_file(tmp_path)
    settings = {**tiny, "data": str(path), "svm": False, "rounds": 1}
    plain = aqtrack.train(**settings)
    weighted = aqtrack.train(**settings, class_weight="balanced")

    data = load_configured(Config.from_dict(settings).data)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=data.train.y)
    got = class_weights("balanced", data.train.y, 3, torch.device("cpu"))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert class_weights("none", data.train.y, 3, torch.device("cpu")) is None
    assert history(plain.run_id, "train_loss")[1] != history(weighted.run_id, "train_loss")[1]
    assert MlflowClient().get_run(weighted.run_id).data.params["class_weight"] == "balanced"


def recordings_file(tmp_path: Path) -> Path:
    """What real users' files look like: 24 recordings of 12-40 frames from 8 subjects, frames numbered
    from 1 with one skipped, a lost (NaN) value, string labels, a per-sample `side` column."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(24):
        label = ("good_form", "knee_valgus")[i % 2]
        length = int(rng.integers(12, 41))
        frames = [f for f in range(1, length + 1) if not (i == 3 and f == 5)]  # frame 5 of s3 lost
        for f in frames:
            value = np.sin(f / 3) + (0.8 if label == "knee_valgus" else 0) + rng.normal(0, 0.1)
            rows.append(
                {
                    "sample_id": f"s{i}",
                    "frame": f,
                    "label": label,
                    "subject": f"p{i // 3}",
                    "side": ("left", "right")[i % 3 == 0],
                    "ch_knee": value,
                    "ch_hip": np.nan if (i == 5 and f == 7) else 0.5 * value,
                }
            )
    path = tmp_path / "sessions.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_file_of_real_looking_recordings_trains_end_to_end(tiny, tmp_path):
    path = recordings_file(tmp_path)
    result = aqtrack.train(**{**tiny, "data": str(path), "log_model": True, "batch_size": 4})
    run = MlflowClient().get_run(result.run_id)

    stats = artifact_json(result.run_id, names.DATASET_STATS_ARTIFACT, tmp_path)
    assert stats["class_names"] == ["good_form", "knee_valgus"] and stats["channel_names"] == ["knee", "hip"]
    lengths = [stats[s]["length"] for s in ("train", "val", "test") if s in stats]
    assert min(x["min"] for x in lengths) >= 11 and max(x["max"] for x in lengths) <= 40
    assert stats["missing"] == {"policy": "interpolate", "filled_values": 3}  # a lost frame (2 values), a NaN
    assert run.data.tags[names.TAG_FILLED_VALUES] == "3"
    subjects = [set(stats[s]["subjects"]) for s in ("train", "val", "test") if s in stats]
    assert sum(len(s) for s in subjects) == len(set().union(*subjects)) == 8  # no subject on two sides
    # The logged model takes any length and says which class each logit is.
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/{NETWORK_MODEL}")
    assert model.metadata.metadata["class_names"] == ["good_form", "knee_valgus"]
    batch = np.full((2, 60, 2), np.nan, dtype=np.float32)
    batch[0, :13], batch[1, :60] = 0.5, 0.1
    assert model.predict(batch).shape == (2, 2)


def test_resuming_with_data_whose_classes_changed_is_refused(tiny, tmp_path):
    path = recordings_file(tmp_path)
    first = aqtrack.train(**{**tiny, "data": str(path), "svm": False, "rounds": 1, "batch_size": 4})
    table = pd.read_csv(path)
    table["label"] = table["label"].replace({"knee_valgus": "valgus"})
    table.to_csv(path, index=False)

    with pytest.raises(ResumeError, match=r"is not what the run trained on \(its content changed since"):
        aqtrack.train(resume=first.run_id, rounds=2)
    assert list(history(first.run_id, "val_acc")) == [1, 2]


def test_a_resume_finds_its_data_by_content_wherever_the_file_now_is(tiny, tmp_path, monkeypatch):
    path = recordings_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    first = aqtrack.train(**{**tiny, "data": path.name, "svm": False, "rounds": 1, "batch_size": 4})
    assert MlflowClient().get_run(first.run_id).data.params["data"] == str(path)  # recorded whole

    moved = tmp_path / "elsewhere" / "sessions-copy.csv"
    moved.parent.mkdir()
    path.rename(moved)
    with pytest.raises(ResumeError, match=f"its data file {path} is not here; pass --data PATH"):
        aqtrack.train(resume=first.run_id, rounds=2)
    monkeypatch.chdir(moved.parent)  # another directory, a relative path: the same content
    resumed = aqtrack.train(resume=first.run_id, rounds=2, data=moved.name)

    assert resumed.epochs == 4 and list(history(first.run_id, "val_acc")) == [1, 2, 3, 4]
