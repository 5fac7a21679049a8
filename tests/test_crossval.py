"""aqtrack.cross_validate / `aqtrack cv`: one parent run, one nested run per fold (a normal aqtrack run that
tests on its own fold), the parent aggregating only what finished folds measured, resumable as a whole,
the same results with worker processes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from mlflow import MlflowClient
from stores import own_store

import aqtrack
from aqtrack import names
from aqtrack.cli import main
from aqtrack.errors import ConfigError, DataError, ResumeError
from aqtrack.jobs import crossval
from aqtrack.names import (
    CHECKPOINT_EPOCH_TAG,
    CV_FOLDS_FINISHED,
    CV_MEAN,
    CV_OOF_ACC,
    CV_OOF_BALANCED_ACC,
    CV_OOF_F1_MACRO,
    CV_STD,
    LAST,
    METRIC_KEYS,
    TEST_KEYS,
)
from aqtrack.tracking import exports, store
from aqtrack.tracking.browse import format_runs, runs_table, show_run

# 80 synthetic sequences of 9 subjects in 3 folds; 2 epochs per fold.
SETTINGS = {
    "folds": "3",
    "n_train": 48,
    "n_val": 16,
    "n_test": 16,
    "hidden": 8,
    "rounds": 1,
    "epochs_per_round": 2,
    "batch_size": 16,
    "checkpoint_interval": 2,
    "svm": False,
    "log_model": False,  # the folds' models are a fold run's own (tests/test_exports.py)
}
K = 3


def settings(out: Path) -> dict:
    return {**SETTINGS, "output_dir": str(out)}


def fold_runs(parent_id: str, client: MlflowClient | None = None) -> dict[int, object]:
    client = client or MlflowClient()
    return store.cv_folds(client, client.get_run(parent_id))


def outcome(parent_id: str, tmp: Path, client: MlflowClient | None = None) -> dict:
    """Everything a cross-validation measured, by fold (no run ids): each fold run's metric points and
    final weights, and the parent's aggregate metrics, per-fold table and out-of-fold predictions."""
    client = client or MlflowClient()
    folds = {}
    for fold, run in fold_runs(parent_id, client).items():
        run_id = run.info.run_id
        points = {
            k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
            for k in (*METRIC_KEYS, *TEST_KEYS)
        }
        path = client.download_artifacts(run_id, f"checkpoints/{LAST}", str(tmp / run_id))
        folds[fold] = (run.info.status, points, torch.load(path, weights_only=True)["model"])
    parent = client.get_run(parent_id)
    aggregate = {
        k: sorted((m.step, m.value) for m in client.get_metric_history(parent_id, k))
        for k in parent.data.metrics
    }
    table = exports.read_table(client, parent_id, names.CV_FOLDS_TABLE, tmp / "table")
    table.pop("run_id")
    oof = Path(client.download_artifacts(parent_id, names.CV_PREDICTIONS, str(tmp / "oof"))).read_text()
    return {"folds": folds, "aggregate": aggregate, "table": table, "oof": oof, "status": parent.info.status}


def assert_same(a: dict, b: dict) -> None:
    assert a["folds"].keys() == b["folds"].keys() == set(range(1, K + 1))
    for fold in a["folds"]:
        (status_a, points_a, weights_a), (status_b, points_b, weights_b) = a["folds"][fold], b["folds"][fold]
        assert status_a == status_b == "FINISHED"
        assert points_a == points_b, fold
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), fold
    assert a["aggregate"] == b["aggregate"]
    assert a["table"] == b["table"] and a["oof"] == b["oof"] and a["status"] == b["status"] == "FINISHED"


@pytest.fixture(scope="module")
def cv(tmp_path_factory: pytest.TempPathFactory, empty_store: Path):
    """A cross-validation as `mlflow run -e cv` makes one: MLFLOW_RUN_ID names an empty run, which
    becomes the parent. In its own store; torch at 1 thread (see test_workers_...)."""
    root = tmp_path_factory.mktemp("cv")
    threads = torch.get_num_threads()
    with own_store(root, empty_store) as uri, pytest.MonkeyPatch.context() as mp:
        client = MlflowClient()
        empty = client.create_run(store.get_or_create_experiment(client, "action-quality")).info.run_id
        mp.setenv("MLFLOW_RUN_ID", empty)
        torch.set_num_threads(1)
        try:
            result = aqtrack.cross_validate(**settings(root / "outputs"))
        finally:
            torch.set_num_threads(threads)
        return result, uri, empty, outcome(result.run_id, root / "read", client)


@pytest.fixture
def in_cv_store(cv, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cv[1])
    return cv[0]


def test_mlflow_run_id_becomes_the_parent_and_each_fold_a_normal_run_nested_under_it(in_cv_store, cv):
    result, empty = in_cv_store, cv[2]
    client = MlflowClient()
    parent = client.get_run(result.run_id)

    assert result.run_id == empty  # the run `mlflow run` made; no fold ever takes it
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags[names.TAG_CV] == "3" and tags[names.TAG_CV_PLANNED] == tags[names.TAG_CV_FINISHED] == "3"
    assert "fold" not in parent.data.params and parent.data.params["folds"] == "3"
    folds = fold_runs(result.run_id)
    assert sorted(folds) == [1, 2, 3]
    for fold, run in folds.items():
        assert run.info.run_id != empty and run.info.status == "FINISHED"
        assert run.data.tags[names.PARENT_RUN_TAG] == result.run_id  # nested in the MLflow UI
        assert run.data.tags[names.TAG_CV_FOLD] == str(fold) and run.info.run_name == f"fold-{fold}-of-3"
        assert (run.data.params["folds"], run.data.params["fold"]) == ("3", str(fold))
        for key in METRIC_KEYS:  # per-epoch metrics, one point per epoch
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2]
        files = {f.path for f in client.list_artifacts(run.info.run_id, "checkpoints")}
        assert {"checkpoints/last.pt", "checkpoints/best_action_quality_model.pt"} <= files
        tested = {f.path for f in client.list_artifacts(run.info.run_id, names.TEST_DIR)}
        assert names.TEST_PREDICTIONS_ARTIFACT in tested  # what the parent pools


def test_each_fold_tests_on_its_own_fold_and_the_fold_of_every_sample_is_recorded(in_cv_store, tmp_path):
    client = MlflowClient()
    path = client.download_artifacts(in_cv_store.run_id, names.CV_ASSIGNMENT, str(tmp_path))
    assignment = pd.read_csv(path)
    assert len(assignment) == 80 and sorted(assignment["fold"].unique()) == [1, 2, 3]
    assert assignment.groupby("subject")["fold"].nunique().max() == 1  # a subject is in one fold
    for fold, run in fold_runs(in_cv_store.run_id).items():
        stats = client.download_artifacts(
            run.info.run_id, names.DATASET_STATS_ARTIFACT, str(tmp_path / str(fold))
        )
        test = pd.read_json(stats, typ="series")["test"]
        held_out = assignment[assignment["fold"] == fold]
        assert test["total"] == len(held_out) and test["subjects"] == sorted(held_out["subject"].unique())


def test_the_parent_aggregates_what_each_fold_measured(in_cv_store):
    result = in_cv_store
    client = MlflowClient()
    folds = fold_runs(result.run_id)
    parent = client.get_run(result.run_id).data.metrics
    assert parent[CV_FOLDS_FINISHED] == 3
    for key in TEST_KEYS:
        measured = np.array([folds[f].data.metrics[key] for f in sorted(folds)])
        assert parent[CV_MEAN[key]] == pytest.approx(measured.mean(), abs=1e-12)
        assert parent[CV_STD[key]] == pytest.approx(measured.std(ddof=1), abs=1e-12)  # sample std
        assert [getattr(f, key) for f in result.folds] == list(measured)
    for key in (CV_MEAN[TEST_KEYS[0]], CV_OOF_ACC):  # logged once, at step = the folds aggregated
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == [3]
    for f in result.folds:  # the epoch its validation chose
        val_acc = [
            m.value for m in sorted(client.get_metric_history(f.run_id, "val_acc"), key=lambda m: m.step)
        ]
        assert f.best_epoch == 1 + int(np.argmax(val_acc))


def test_out_of_fold_predictions_hold_every_sample_once_with_its_fold(in_cv_store, tmp_path):
    result = in_cv_store
    client = MlflowClient()
    oof = pd.read_csv(client.download_artifacts(result.run_id, names.CV_PREDICTIONS, str(tmp_path)))
    assignment = pd.read_csv(client.download_artifacts(result.run_id, names.CV_ASSIGNMENT, str(tmp_path)))

    assert list(oof.columns[:5]) == ["sample_id", "subject", "fold", "label", "predicted"]
    assert [c for c in oof.columns if c.startswith("p_")] == [
        "p_good_form", "p_shallow_depth", "p_asymmetric", "p_knee_valgus",
    ]  # fmt: skip
    assert oof[["sample_id", "subject", "fold", "label"]].equals(
        assignment[["sample_id", "subject", "fold", "label"]]
    )
    assert np.allclose(oof.filter(like="p_").sum(axis=1), 1.0)
    for f in result.folds:  # each fold's predictions are the ones its test_acc counts
        mine = oof[oof["fold"] == f.fold]
        assert (mine["label"] == mine["predicted"]).mean() == pytest.approx(f.test_acc, abs=1e-12)
    metrics = client.get_run(result.run_id).data.metrics
    assert metrics[CV_OOF_ACC] == pytest.approx((oof["label"] == oof["predicted"]).mean(), abs=1e-12)
    assert {CV_OOF_BALANCED_ACC, CV_OOF_F1_MACRO} <= metrics.keys()
    artifacts = {f.path for f in client.list_artifacts(result.run_id, names.CV_DIR)}
    assert {names.CV_CONFUSION, names.CV_FOLDS_FIGURE, names.CV_FOLDS_TABLE} <= artifacts
    table = exports.read_table(client, result.run_id, names.CV_FOLDS_TABLE, tmp_path / "t")
    assert table["fold"] == [1, 2, 3] and table["n"] == [f.n for f in result.folds]
    assert table["subjects"] == [",".join(f.subjects) for f in result.folds]


def test_runs_shows_the_parent_with_its_folds_and_aggregate_and_show_lists_the_folds(in_cv_store):
    result = in_cv_store
    table = runs_table()
    assert list(table["run_id"]) == [result.run_id]  # the folds are nested under it, not listed
    (row,) = table.to_dict("records")
    assert (row["folds_finished"], row["folds_planned"]) == (3, 3)
    assert row["test_acc"] == result.scores[CV_MEAN[TEST_KEYS[0]]]
    assert row["resumable"] == "finished" and row["origin"] == "cross-validation, 3 folds"
    line = format_runs(table).splitlines()[1]
    assert " 3/3 " in line and f"{row['test_acc']:.4f}±{row['test_acc_std']:.4f}" in line
    shown = show_run(result.run_id)
    assert "cross-validation, 3 of 3 folds finished; resumable: finished" in shown
    for f in result.folds:
        assert f"fold {f.fold}: {f.run_id} 'fold-{f.fold}-of-3' FINISHED: test_acc={f.test_acc:.4f}" in shown


def test_a_fold_trained_alone_is_the_same_run_as_in_the_cross_validation(cv, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the cross-validation trained
    try:
        result = aqtrack.train(**settings(tmp_path / "out"), fold=2)
    finally:
        torch.set_num_threads(threads)
    client = MlflowClient()
    points = {
        k: sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, k))
        for k in (*METRIC_KEYS, *TEST_KEYS)
    }
    assert names.TAG_CV_PARENT not in client.get_run(result.run_id).data.tags
    assert points == cv[3]["folds"][2][1]


def test_a_failed_fold_is_left_out_of_the_aggregate_and_a_resume_trains_it(tiny, tmp_path, monkeypatch):
    real = crossval.train_fold

    def failing(nest, resume=None, **given):
        if nest.tags[names.TAG_CV_FOLD] == "2":
            raise RuntimeError("out of memory")
        return real(nest, resume=resume, **given)

    monkeypatch.setattr(crossval, "train_fold", failing)
    result = aqtrack.cross_validate(**settings(tmp_path / "out"))

    client = MlflowClient()
    parent = client.get_run(result.run_id)
    assert result.failed == {2: "RuntimeError: out of memory"}
    assert [f.fold for f in result.folds] == [1, 3] and result.folds_finished == 2
    assert (
        parent.info.status == "FAILED"
        and "fold 2: RuntimeError: out of memory" in parent.data.tags["aqtrack.error"]
    )
    assert parent.data.tags[names.TAG_CV_FINISHED] == "2"
    assert [m.step for m in client.get_metric_history(result.run_id, CV_MEAN[TEST_KEYS[0]])] == [2]
    assert parent.data.metrics[CV_MEAN[TEST_KEYS[0]]] == np.mean([f.test_acc for f in result.folds])
    assert "2 of 3 folds finished (only those are aggregated)" in parent.data.tags["mlflow.note.content"]

    monkeypatch.setattr(crossval, "train_fold", real)
    # As under `mlflow run -e cv -P resume_run_id=...`: MLflow's new run is left empty, the parent goes on.
    made = client.create_run(parent.info.experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", made)
    again = aqtrack.cross_validate(resume=result.run_id)

    assert again.run_id == result.run_id and not again.failed
    left = client.get_run(made)
    assert not left.data.metrics and names.TAG_CV not in left.data.tags
    assert (
        left.data.tags["mlflow.note.content"] == f"Continued the cross-validation in run `{result.run_id}`."
    )
    assert [f.fold for f in again.folds] == [1, 2, 3]
    assert [f.run_id for f in again.folds if f.fold != 2] == [f.run_id for f in result.folds]  # kept
    finished = client.get_run(result.run_id)
    assert finished.info.status == "FINISHED" and "aqtrack.error" not in finished.data.tags
    assert [m.step for m in client.get_metric_history(result.run_id, CV_MEAN[TEST_KEYS[0]])] == [2, 3]
    table = exports.read_table(client, result.run_id, names.CV_FOLDS_TABLE, tmp_path / "t")
    assert sorted(table["fold"]) == [1, 2, 3]  # each fold's row once


def test_a_resume_refuses_what_it_cannot_continue(in_cv_store, cv):
    result = in_cv_store
    with pytest.raises(ResumeError, match="all 3 folds finished; there is nothing to resume"):
        aqtrack.cross_validate(resume=result.run_id)
    fold = result.folds[0].run_id
    with pytest.raises(ResumeError, match=f"cv --resume {fold}: not a cross-validation run"):
        aqtrack.cross_validate(resume=fold)
    with pytest.raises(ResumeError, match=f"`aqtrack cv --resume {result.run_id}`"):
        aqtrack.train(resume=result.run_id)
    with pytest.raises(
        ConfigError, match=r"cannot change --rounds=2 \(the run has 1\) when resuming a cross"
    ):
        aqtrack.cross_validate(resume=result.run_id, rounds=2)


def test_a_resume_refuses_data_that_now_makes_other_folds(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(4), 12)  # 6 subjects x 8 recordings, every class twice each
    subjects = np.repeat([f"p{i}" for i in range(6)], 8)
    path = tmp_path / "sessions.npz"
    np.savez(path, X=rng.normal(size=(48, 20, 2)).astype(np.float32), y=y, subject=subjects)
    real = crossval.train_fold
    monkeypatch.setattr(
        crossval,
        "train_fold",
        lambda nest, resume=None, **s: (
            real(nest, resume=resume, **s)
            if nest.tags[names.TAG_CV_FOLD] == "1"
            else (_ for _ in ()).throw(RuntimeError("stop"))
        ),
    )
    cv = aqtrack.cross_validate(**{**settings(tmp_path / "out"), "data": str(path), "folds": "2"})
    assert cv.failed and cv.folds_finished == 1
    np.savez(path, X=rng.normal(size=(40, 20, 2)).astype(np.float32), y=y[:40], subject=subjects[:40])

    with pytest.raises(DataError, match="makes other folds than the cross-validation started with"):
        aqtrack.cross_validate(resume=cv.run_id)
    assert MlflowClient().get_run(cv.run_id).info.status == "FAILED"  # untouched


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"folds": ""}, "cv needs --folds K"),
        ({"fold": 1}, "cv trains every fold; --fold is for `aqtrack train"),
        ({"folds": "20"}, "--folds 20: the data has only 9 subjects"),
    ],
)
def test_a_cross_validation_that_cannot_run_is_refused_before_any_run_exists(tmp_path, change, message):
    with pytest.raises((ConfigError, DataError), match=message):
        aqtrack.cross_validate(**{**settings(tmp_path / "out"), **change})
    assert MlflowClient().get_experiment_by_name("action-quality") is None


def test_cv_command_prints_the_folds_and_the_aggregate(tmp_path, capsys):
    args = [f"--{k.replace('_', '-')}={v}" for k, v in settings(tmp_path / "out").items() if k != "svm"]
    assert main(["cv", *args, "--no-svm", "-q", "--folds", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["fold", "run_id", "n_subjects"] and len(out) == 4
    assert out[-1].startswith("cv ") and ": 2 of 2 folds; test_acc " in out[-1]
    assert "(mean ± sample std over the folds)" in out[-1]


def test_workers_give_the_same_cross_validation_as_one_process(cv, tmp_path):
    # A fold's numbers depend on its torch thread count: the reference trained at 1 thread, and 2 workers
    # here get 2 // 2 = 1 each.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = aqtrack.cross_validate(**settings(tmp_path / "out"), jobs=2)
    finally:
        torch.set_num_threads(threads)
    assert_same(outcome(result.run_id, tmp_path), cv[3])


def test_cv_help_lists_jobs_resume_and_every_setting(capsys):
    with pytest.raises(SystemExit):
        main(["cv", "--help"])
    out = capsys.readouterr().out
    assert "--jobs N" in out and "--resume RUN_ID" in out and "--n-train" in out and "--folds" in out


def test_jobs_must_be_a_whole_number_of_at_least_one(tmp_path):
    with pytest.raises(ConfigError, match="--jobs must be a whole number >= 1"):
        aqtrack.cross_validate(**settings(tmp_path), jobs=0)


def test_out_of_fold_csv_has_the_data_order(in_cv_store, tmp_path):
    oof = MlflowClient().download_artifacts(in_cv_store.run_id, names.CV_PREDICTIONS, str(tmp_path))
    ids = pd.read_csv(io.StringIO(Path(oof).read_text()))["sample_id"].tolist()
    assert ids == [f"train-{i}" for i in range(48)] + [f"val-{i}" for i in range(16)] + [
        f"test-{i}" for i in range(16)
    ]
    assert os.path.getsize(oof) > 0


def test_sigterm_to_cv_with_workers_stops_every_fold_in_flight_and_leaves_no_process(tmp_path, mlflow_store):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings(tmp_path / "out").items() if k != "svm"]
    command = [
        sys.executable,
        "-m",
        "aqtrack",
        "cv",
        *flags,
        "--epochs-per-round=5000",
        "--no-svm",
        "--jobs=2",
    ]
    cv = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            experiment = MlflowClient().get_experiment_by_name("action-quality")
            runs = MlflowClient().search_runs([experiment.experiment_id]) if experiment else []
            if sum(CHECKPOINT_EPOCH_TAG in r.data.tags for r in runs) == 2:  # both workers train a fold
                break
            time.sleep(0.5)
        children = psutil.Process(cv.pid).children()
        workers = [p for p in children if "spawn_main" in " ".join(p.cmdline())]  # not the resource tracker
        assert len(workers) == 2
        cv.send_signal(signal.SIGTERM)
        _, err = cv.communicate(timeout=120)
    finally:
        if cv.poll() is None:
            cv.kill()
    assert cv.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("action-quality").experiment_id])
    assert sorted(r.info.status for r in runs) == ["KILLED"] * 3  # the parent and the two folds in flight
    assert f"continue it with `aqtrack cv --resume {result_id(runs)}`" in err


def result_id(runs) -> str:
    (parent,) = [r for r in runs if names.TAG_CV in r.data.tags]
    return parent.info.run_id
