"""The SVM stage: on by default at the end of training, off with --no-svm, refit by `aqtrack svm RUN_ID`."""

from __future__ import annotations

from pathlib import Path

import mlflow.sklearn
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

import aqtrack
from aqtrack.cli import main
from aqtrack.data.dataset import load_data
from aqtrack.names import BEST, SVM_MODEL, SVM_VAL_ACC, SVM_VAL_F1, TAG_SVM
from aqtrack.outputs.svm import fit_svm
from aqtrack.training.model import ModelSpec, build_model, embed


def best_features(run_id: str, tiny: dict, tmp_path: Path) -> dict[str, np.ndarray]:
    """The best checkpoint's features of each split, computed here independently of aqtrack.jobs.finish."""
    path = MlflowClient().download_artifacts(run_id, f"checkpoints/{BEST}", str(tmp_path / "best"))
    best = torch.load(path, weights_only=True)
    network = build_model(ModelSpec(**best["model_spec"]))
    network.load_state_dict(best["model"])
    data = load_data("synthetic", n_train=tiny["n_train"], n_val=tiny["n_val"], val_fraction=0.2, seed=0)
    return {
        "x_train": embed(network, data.x_train)[0],
        "y_train": data.y_train,
        "x_val": embed(network, data.x_val)[0],
        "y_val": data.y_val,
    }


def test_fit_svm_scales_and_scores_on_the_validation_split() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(80) % 2
    x = rng.normal(0, 1, (80, 3)) + 1000.0 * y[:, None]  # separable, and far from unit scale
    result = fit_svm(x[:60], y[:60], x[60:], y[60:], c=1.0, kernel="rbf")
    assert result.val_acc == 1.0 and result.val_f1 == 1.0
    assert [name for name, _ in result.pipeline.steps] == ["scale", "svc"]
    assert result.pipeline.named_steps["svc"].C == 1.0


def test_training_fits_the_svm_on_the_best_features_and_logs_it_once(tiny_full, tmp_path):
    result = aqtrack.train(**tiny_full)

    client = MlflowClient()
    assert client.get_run(result.run_id).data.params["svm"] == "true"  # a bool param as typed
    acc, f1 = (client.get_metric_history(result.run_id, k) for k in (SVM_VAL_ACC, SVM_VAL_F1))
    assert [m.step for m in acc] == [4] and [m.step for m in f1] == [4]
    f = best_features(result.run_id, tiny_full, tmp_path)
    pipeline = mlflow.sklearn.load_model(f"runs:/{result.run_id}/{SVM_MODEL}")
    predicted = pipeline.predict(f["x_val"])
    assert acc[0].value == pytest.approx(float((predicted == f["y_val"]).mean()))
    expected = fit_svm(f["x_train"], f["y_train"], f["x_val"], f["y_val"], c=1.0, kernel="rbf")
    assert (acc[0].value, f1[0].value) == pytest.approx((expected.val_acc, expected.val_f1))
    assert client.get_run(result.run_id).data.tags[TAG_SVM] == "kernel=rbf C=1"


def test_no_svm_leaves_the_svm_out_and_aqtrack_svm_fits_it_later_as_a_nested_run(tiny, tmp_path, capsys):
    result = aqtrack.train(**{**tiny, "svm": False})
    client = MlflowClient()
    assert client.get_metric_history(result.run_id, SVM_VAL_ACC) == []
    experiment_id = client.get_run(result.run_id).info.experiment_id
    assert list(client.search_logged_models([experiment_id], f"name = '{SVM_MODEL}'")) == []
    before = client.get_run(result.run_id).data

    assert main(["svm", result.run_id, "--svm-kernel", "linear", "--svm-c", "0.5"]) == 0

    f = best_features(result.run_id, tiny, tmp_path)
    expected = fit_svm(f["x_train"], f["y_train"], f["x_val"], f["y_val"], c=0.5, kernel="linear")
    (refit,) = refits_of(result.run_id)
    assert refit.info.status == "FINISHED" and refit.info.run_name == "svm-linear-C0.5"
    assert refit.data.tags["mlflow.parentRunId"] == result.run_id  # nested under it in the MLflow UI
    best_epoch = torch.load(
        MlflowClient().download_artifacts(result.run_id, f"checkpoints/{BEST}", str(tmp_path / "b")),
        weights_only=True,
    )["epoch"]
    assert refit.data.params == {"svm_c": "0.5", "svm_kernel": "linear", "best_epoch": str(best_epoch)}
    (acc,) = client.get_metric_history(refit.info.run_id, SVM_VAL_ACC)
    (f1,) = client.get_metric_history(refit.info.run_id, SVM_VAL_F1)
    assert acc.step == f1.step == 4  # the training run's final epoch
    assert (acc.value, f1.value) == pytest.approx((expected.val_acc, expected.val_f1))
    assert capsys.readouterr().out.strip() == (
        f"run {result.run_id}: SVM refit (kernel=linear, C=0.5) logged as nested run {refit.info.run_id}: "
        f"svm_val_acc {expected.val_acc:.4f}, svm_val_f1 {expected.val_f1:.4f}"
    )
    assert refit.data.tags[TAG_SVM] == "kernel=linear C=0.5"
    pipeline = mlflow.sklearn.load_model(f"runs:/{refit.info.run_id}/{SVM_MODEL}")
    assert pipeline.named_steps["svc"].kernel == "linear"
    after = client.get_run(result.run_id).data  # the training run itself is untouched
    assert (after.metrics, after.params) == (before.metrics, before.params)


def test_refits_never_stack_points_at_one_step_and_each_says_what_made_it(tiny_full):
    result = aqtrack.train(**tiny_full)  # its own SVM stage: rbf, C=1
    client = MlflowClient()
    for c in (0.5, 2.0, 0.5):
        aqtrack.fit_svm(result.run_id, c=c, kernel="linear")

    (own,) = client.get_metric_history(result.run_id, SVM_VAL_ACC)  # still one point at its step
    assert own.step == 4
    refits = refits_of(result.run_id)
    assert [(r.data.params["svm_kernel"], r.data.params["svm_c"]) for r in refits] == [
        ("linear", "0.5"),
        ("linear", "2.0"),
        ("linear", "0.5"),
    ]
    for refit in refits:
        for key in (SVM_VAL_ACC, SVM_VAL_F1):
            assert [m.step for m in client.get_metric_history(refit.info.run_id, key)] == [4], key
    assert aqtrack.runs_table()["run_id"].tolist() == [result.run_id]  # refits listed with their run


def refits_of(run_id: str) -> list:
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    runs = client.search_runs([experiment_id], f"tags.`aqtrack.refit_of` = '{run_id}'")
    return sorted(runs, key=lambda r: r.info.start_time)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["svm", "nope"], "aqtrack: error: svm 'nope': not a run id (32 lowercase hex characters)"),
        (["svm", "0" * 32], f"aqtrack: error: svm {'0' * 32}: no such run in "),
    ],
)
def test_aqtrack_svm_with_a_bad_run_id_says_so_in_one_line(capsys, args, error):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(error), err


def test_aqtrack_svm_of_a_run_without_checkpoints_says_so(capsys):
    client = MlflowClient()
    run = client.create_run(client.create_experiment("empty"))
    client.set_terminated(run.info.run_id)
    assert main(["svm", run.info.run_id, "--svm-c", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"aqtrack: error: svm {run.info.run_id}: no verified best checkpoint "
        "(the run has none: it stopped before its first epoch ended)"
    )
